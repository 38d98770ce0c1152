"""Feed rows: their polling state, claims and leases, the outcome of each poll, and their status."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, Update, bindparam, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from aggregator.controls import clean_text
from aggregator.models import FeedLocation, FeedState, FeedStatus, FetchRecord, NotModified
from aggregator.schema import Article, Feed
from aggregator.storage.sql import DriverQuery, chunks, first
from aggregator.storage.writers import Writers

__all__ = ["MAX_FEED_TITLE", "MAX_MESSAGE", "Feeds", "stored_message"]

# Longest stored feed title and error or warning message (characters).
MAX_FEED_TITLE = 400
MAX_MESSAGE = 2000


class Feeds:
    """The ``feeds`` table: one row a configured feed, made when it is first seen."""

    def __init__(self, writers: Writers) -> None:
        self._writers = writers
        self._postgresql = writers.engine.dialect.name == "postgresql"

    def ensure(self, urls: Iterable[str], now: datetime) -> None:
        """Create a row for each of ``urls`` that has none; a new feed is due at once.

        Idempotent when several processes add the same feeds at once (PostgreSQL shared by
        `aggregator run` processes): a row another one inserted first is left as it is.
        """
        wanted = list(dict.fromkeys(urls))
        with self._writers.writing() as session:
            for chunk in chunks(wanted):
                present = set(session.scalars(select(Feed.url).where(Feed.url.in_(chunk))))
                missing = [url for url in chunk if url not in present]
                if missing:
                    _insert_feeds(session, missing, now)

    def states(self, urls: Sequence[str]) -> dict[str, FeedState]:
        """Return the polling state of each of ``urls`` that has a row."""
        states: dict[str, FeedState] = {}
        with self._writers.session() as session:
            for chunk in chunks(list(urls)):
                for feed in session.scalars(select(Feed).where(Feed.url.in_(chunk))):
                    states[feed.url] = FeedState(
                        feed.etag,
                        feed.last_modified,
                        feed.consecutive_failures,
                        feed.fetch_url,
                        feed.fetch_url_reason,
                        feed.moved_to,
                        feed.moved_count or 0,
                        feed.gone_at is not None,
                        feed.poll_interval,
                    )
        return states

    def due(self, urls: Sequence[str], now: datetime) -> list[str]:
        """Return those of ``urls`` whose next fetch time has come (never fetched: due).

        A feed that answered 410 Gone is never due.
        """
        with self._writers.session() as session:
            rows = session.execute(
                select(Feed.url, Feed.next_fetch_at, Feed.gone_at).where(Feed.url.in_(list(urls)))
            ).all()
        known = {url: (due, gone) for url, due, gone in rows}
        due = []
        for url in urls:
            next_at, gone = known.get(url, (None, None))
            if gone is None and (next_at is None or next_at <= now):
                due.append(url)
        return due

    def claim_due(self, urls: Sequence[str], now: datetime, owner: str, lease: timedelta) -> list[str]:
        """Claim those of ``urls`` that are due and not claimed under a live lease.

        On PostgreSQL the rows are taken FOR UPDATE SKIP LOCKED, so processes sharing the
        database never claim the same feed; one that dies loses its claims when their lease
        ends. A claim ends when the poll's outcome is recorded.
        """
        claimed: list[str] = []
        with self._writers.writing() as session:
            for chunk in chunks(list(dict.fromkeys(urls))):
                query = select(Feed).where(
                    Feed.url.in_(chunk),
                    Feed.gone_at.is_(None),
                    or_(Feed.next_fetch_at.is_(None), Feed.next_fetch_at <= now),
                    or_(Feed.lease_until.is_(None), Feed.lease_until <= now),
                )
                if self._postgresql:
                    query = query.with_for_update(skip_locked=True)
                for feed in session.scalars(query):
                    feed.claimed_by, feed.lease_until = owner[:200], now + lease
                    claimed.append(feed.url)
        return claimed

    def renew_claims(self, owner: str, until: datetime) -> int:
        """Extend the leases of the feeds ``owner`` is refreshing now; return how many.

        A refresh that outlives its lease (a slow site, many pages to extract) would otherwise
        be taken over and fetched a second time by another process.
        """
        with self._writers.writing() as session:
            result = session.execute(
                update(Feed)
                .where(Feed.claimed_by == owner[:200], Feed.lease_until.is_not(None))
                .values(lease_until=until)
            )
            return _rowcount(result)

    def release_claims(self, dead: Callable[[str], bool]) -> int:
        """End the claims of owners ``dead`` says are gone (a killed process on this host);
        return how many feeds were released."""
        with self._writers.writing() as session:
            owners = set(session.scalars(select(Feed.claimed_by).where(Feed.claimed_by.is_not(None))))
            gone = [owner for owner in owners if owner and dead(owner)]
            if not gone:
                return 0
            result = session.execute(
                update(Feed).where(Feed.claimed_by.in_(gone)).values(claimed_by=None, lease_until=None)
            )
            return _rowcount(result)

    def record_fetched(self, session: Session, feed_url: str, record: FetchRecord) -> int:
        """Record a successful full poll in ``session``'s transaction (its claim ends); return
        the feed's id, making its row if it has none."""
        values: dict[str, object] = {
            "feed_url": feed_url,
            "etag": record.etag,
            "last_modified": record.last_modified,
            "title": clean_text(record.title, MAX_FEED_TITLE) or None if record.title else None,
            "site_url": record.site_url,
            "now": record.now,
            "status": record.status,
            "next_fetch": record.next_fetch,
            "poll_interval": record.poll_interval,
            "warning": stored_message(record.warning) if record.warning else None,
        }
        if record.location is not None:
            values.update(record.location.values())
        statement = _FEED_SUCCESS[record.location is not None]
        feed_id = first(statement.rows(session.connection(), values))
        if feed_id is None:  # not made by ``ensure``: make the row, then update it
            _feed_row(session, feed_url, record.now)
            feed_id = first(statement.rows(session.connection(), values))
        return int(feed_id)

    def record_not_modified(self, records: Sequence[NotModified]) -> None:
        """Record polls answered 304, many in one transaction (a pass is mostly these)."""
        if not records:
            return
        # One executemany per shape of row (with a location or without) instead of a statement
        # per feed: this runs in a thread of the event loop's process, where every statement
        # holds the GIL.
        shapes: dict[bool, list[dict[str, object]]] = {False: [], True: []}
        for record in records:
            row: dict[str, object] = {
                "feed_url": record.feed_url,
                "now": record.now,
                "next_fetch": record.next_fetch,
            }
            if record.location is not None:
                row.update(record.location.values())
            shapes[record.location is not None].append(row)
        with self._writers.writing() as session:
            connection = session.connection()
            for located, rows in shapes.items():
                if rows:
                    connection.execute(_FEED_NOT_MODIFIED[located], rows)

    def record_gone(self, feed_url: str, *, now: datetime, message: str) -> None:
        """Record 410 Gone: the feed is not polled again until fetched explicitly."""
        with self._writers.writing() as session:
            feed = _feed_row(session, feed_url, now)
            feed.last_fetch_at = feed.gone_at = now
            feed.last_status, feed.error_kind, feed.last_error = 410, "gone", stored_message(message)
            feed.next_fetch_at = None
            feed.claimed_by = feed.lease_until = None

    def record_failure(
        self,
        feed_url: str,
        *,
        kind: str,
        message: str,
        status: int | None,
        now: datetime,
        next_fetch: datetime,
    ) -> int:
        """Record a failed poll on the feed; return its consecutive failure count."""
        with self._writers.writing() as session:
            feed = _feed_row(session, feed_url, now)
            feed.last_fetch_at = now
            feed.last_status = status
            feed.error_kind, feed.last_error = kind, stored_message(message)
            feed.consecutive_failures = (feed.consecutive_failures or 0) + 1
            feed.next_fetch_at = next_fetch
            feed.claimed_by = feed.lease_until = None
            return feed.consecutive_failures

    def statuses(self, feeds: Sequence[tuple[str, str]]) -> list[FeedStatus]:
        """Return the status of each (url, name) in order, whether or not it was ever fetched."""
        urls = [url for url, _ in feeds]
        with self._writers.session() as session:
            rows = {f.url: f for f in session.scalars(select(Feed).where(Feed.url.in_(urls)))}
            counts: dict[str, int] = {
                url: count
                for url, count in session.execute(
                    select(Feed.url, func.count(Article.id))
                    .join(Article, Article.feed_id == Feed.id)
                    .where(Feed.url.in_(urls))
                    .group_by(Feed.url)
                )
            }
        result = []
        for url, name in feeds:
            row = rows.get(url)
            result.append(
                FeedStatus(
                    url=url,
                    name=name,
                    last_fetch=row.last_fetch_at if row else None,
                    last_status=row.last_status if row else None,
                    last_error=row.last_error if row else None,
                    error_kind=row.error_kind if row else None,
                    consecutive_failures=row.consecutive_failures if row else 0,
                    next_fetch=row.next_fetch_at if row else None,
                    article_count=counts.get(url, 0),
                    fetch_url=row.fetch_url if row else None,
                    fetch_url_reason=row.fetch_url_reason if row else None,
                    moved_to=row.moved_to if row else None,
                    gone=bool(row and row.gone_at),
                    poll_interval=row.poll_interval if row else None,
                    last_warning=row.last_warning if row else None,
                    title=row.title if row else None,
                )
            )
        return result

    def health(self, urls: Sequence[str]) -> tuple[int, datetime | None]:
        """Return (feeds of ``urls`` failing now, the last successful fetch of any feed)."""
        with self._writers.session() as session:
            failing = session.scalar(
                select(func.count(Feed.id)).where(Feed.url.in_(list(urls)), Feed.consecutive_failures > 0)
            )
            last = session.scalar(select(func.max(Feed.last_success_at)))
        return int(failing or 0), last

    def first_added(self) -> datetime | None:
        """When the service first knew a feed: nothing can have been missed before that."""
        with self._writers.session() as session:
            return session.scalar(select(func.min(Feed.created_at)))


def stored_message(text: str) -> str:
    """An error or warning as stored: a server's reason phrase or reply may carry anything."""
    return clean_text(text, MAX_MESSAGE)


def _rowcount(result: object) -> int:
    return int(result.rowcount or 0) if isinstance(result, CursorResult) else 0


def _feed_row(session: Session, url: str, now: datetime) -> Feed:
    """The feed's row, made if it has none."""
    feed = session.scalar(select(Feed).where(Feed.url == url))
    if feed is None:
        _insert_feeds(session, [url], now)
        feed = session.scalars(select(Feed).where(Feed.url == url)).one()
    return feed


def _insert_feeds(session: Session, urls: Sequence[str], now: datetime) -> None:
    """Insert feed rows, skipping any URL another process inserted meanwhile (ON CONFLICT DO
    NOTHING: without it the slower process failed its whole refresh round on uq_feeds_url)."""
    insert_for = postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(
        insert_for(Feed)
        .values([{"url": url, "created_at": now, "consecutive_failures": 0} for url in urls])
        .on_conflict_do_nothing(index_elements=["url"])
    )


def _feed_fetched(*, location: bool, modified: bool) -> Update:
    """The update of a feed's row after a successful fetch: a new document (``modified``,
    returning the feed's id) or a 304; ``location``: with where the feed is polled."""
    feeds = cast(Table, Feed.__table__)
    values: dict[str, object] = {
        "last_fetch_at": bindparam("now"),
        "last_success_at": bindparam("now"),
        "last_status": bindparam("status") if modified else 304,
        "last_error": None,
        "error_kind": None,
        "consecutive_failures": 0,
        "next_fetch_at": bindparam("next_fetch"),
        "gone_at": None,
        "claimed_by": None,
        "lease_until": None,
    }
    if modified:
        values.update(
            etag=bindparam("etag"),
            last_modified=bindparam("last_modified"),
            title=func.coalesce(bindparam("title"), feeds.c.title),
            site_url=func.coalesce(bindparam("site_url"), feeds.c.site_url),
            poll_interval=bindparam("poll_interval"),
            last_warning=bindparam("warning"),
        )
    if location:
        values.update({name: bindparam(name) for name in FeedLocation(None, None, None, 0).values()})
    statement = update(feeds).where(feeds.c.url == bindparam("feed_url")).values(**values)
    return statement.returning(feeds.c.id) if modified else statement


# Keyed by "with a location": the two shapes of each. The update of a new document runs on the
# driver (DriverQuery), with its values as bound parameters: building a statement costs more CPU
# than running it.
_FEED_SUCCESS = {
    located: DriverQuery(_feed_fetched(location=located, modified=True)) for located in (False, True)
}
_FEED_NOT_MODIFIED = {located: _feed_fetched(location=located, modified=False) for located in (False, True)}
