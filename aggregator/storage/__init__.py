"""Storage: every read and write of the database, named for what callers want.

``Store`` opens the parts on one engine and answers for them:

- ``feeds``: feed rows, their polling state, claims and leases, poll outcomes, statuses;
- ``articles``: which entries are stored, a refresh's insert, listing, retention;
- ``digests``: digest runs and their items, the lock that lets one process send a digest;
- ``bands``: the band index of near-duplicate texts, with this process's recent keys;
- ``writers``: sessions, SQLite's write lock and checkpoints, PostgreSQL's advisory locks.

One transaction per unit of work: a feed's new articles are written with the feed's fetch
record, and a digest run is recorded with its items before the email leaves. Which article
represents which is decided in ``dedup`` (pure); storage reads the candidates and writes the
answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta

from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from aggregator.database import create_db_engine, has_schema, migrate, redact
from aggregator.errors import StorageError
from aggregator.models import (
    FeedState,
    FeedStatus,
    FetchRecord,
    NewArticle,
    NotModified,
    PendingRun,
    Seen,
    StoredArticle,
)
from aggregator.storage.articles import Articles
from aggregator.storage.bands import BandIndex
from aggregator.storage.digests import Digests
from aggregator.storage.feeds import Feeds
from aggregator.storage.writers import Writers

__all__ = ["Store"]


class Store:
    """The database of one engine, through its parts; each method is one unit of work."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.writers = Writers(engine)
        self.feeds = Feeds(self.writers)
        self.bands = BandIndex(engine)
        self.articles = Articles(self.writers, self.feeds, self.bands)
        self.digests = Digests(self.writers, self.articles)

    @classmethod
    def open(cls, database_url: str, *, create: bool = True) -> Store:
        """Connect, apply pending migrations and return a Store; raise StorageError if unreachable.

        ``create=False`` (commands that only read): a database that does not exist yet, or holds
        no tables of ours, is a StorageError saying so, instead of a new empty one.
        """
        engine = create_db_engine(database_url, create=create)
        if not create and not has_schema(engine):
            engine.dispose()
            raise StorageError(
                f"the database {redact(database_url)} has no aggregator tables yet: nothing was "
                "fetched there (`aggregator fetch` or `aggregator run` creates them)"
            )
        migrate(engine)
        return cls(engine)

    def close(self) -> None:
        """Close the engine's connections and this process's lock file."""
        self.engine.dispose()
        self.writers.close()

    @property
    def shared(self) -> bool:
        """True when several processes may use this database at once (PostgreSQL)."""
        return self.engine.dialect.name == "postgresql"

    def ping(self) -> None:
        """Raise StorageError unless the database answers."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except OperationalError as exc:
            raise StorageError(f"database unreachable: {exc.orig}") from None

    def checkpoint(self) -> None:
        """Copy SQLite's write-ahead log into the database (``Writers.checkpoint``)."""
        self.writers.checkpoint()

    # -- feeds ------------------------------------------------------------------------------

    def ensure_feeds(self, urls: Iterable[str], now: datetime) -> None:
        """Create a row for each configured feed that has none (``Feeds.ensure``)."""
        self.feeds.ensure(urls, now)

    def feed_state(self, url: str) -> FeedState:
        """Return the feed's polling state (a blank one if it has no row)."""
        return self.feeds.states([url]).get(url) or FeedState(None, None, 0)

    def feed_states(self, urls: Sequence[str]) -> dict[str, FeedState]:
        """Return the polling state of each of ``urls`` that has a row."""
        return self.feeds.states(urls)

    def due_feeds(self, urls: Sequence[str], now: datetime) -> list[str]:
        """Return those of ``urls`` whose next fetch time has come (``Feeds.due``)."""
        return self.feeds.due(urls, now)

    def claim_due_feeds(self, urls: Sequence[str], now: datetime, owner: str, lease: timedelta) -> list[str]:
        """Claim those of ``urls`` that are due and unclaimed (``Feeds.claim_due``)."""
        return self.feeds.claim_due(urls, now, owner, lease)

    def renew_claims(self, owner: str, until: datetime) -> int:
        """Extend the leases of the feeds ``owner`` is refreshing now; return how many."""
        return self.feeds.renew_claims(owner, until)

    def release_claims(self, dead: Callable[[str], bool]) -> int:
        """End the claims of owners ``dead`` says are gone; return how many feeds were released."""
        return self.feeds.release_claims(dead)

    def record_not_modified(self, records: Sequence[NotModified]) -> None:
        """Record polls answered 304, many in one transaction."""
        self.feeds.record_not_modified(records)

    def record_gone(self, feed_url: str, *, now: datetime, message: str) -> None:
        """Record 410 Gone: the feed is not polled again until fetched explicitly."""
        self.feeds.record_gone(feed_url, now=now, message=message)

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
        return self.feeds.record_failure(
            feed_url, kind=kind, message=message, status=status, now=now, next_fetch=next_fetch
        )

    def feed_statuses(self, feeds: Sequence[tuple[str, str]]) -> list[FeedStatus]:
        """Return the status of each (url, name) in order, whether or not it was ever fetched."""
        return self.feeds.statuses(feeds)

    def health(self, urls: Sequence[str]) -> tuple[int, datetime | None]:
        """Return (feeds of ``urls`` failing now, the last successful fetch of any feed)."""
        return self.feeds.health(urls)

    def first_feed_added(self) -> datetime | None:
        """When the service first knew a feed: nothing can have been missed before that."""
        return self.feeds.first_added()

    # -- articles ---------------------------------------------------------------------------

    def seen(self, feed_url: str, entry_keys: Iterable[str], link_keys: Iterable[str]) -> Seen:
        """Return which entries and links are stored already."""
        return self.articles.seen(feed_url, entry_keys, link_keys)

    def store_refresh(
        self, feed_url: str, articles: Sequence[NewArticle], record: FetchRecord
    ) -> tuple[int, int]:
        """Store new articles and the successful fetch in one transaction; return (articles
        added, of which duplicates of an article already stored)."""
        return self.articles.store_refresh(feed_url, articles, record)

    def list_articles(
        self, *, since: datetime | None = None, feed_url: str | None = None, limit: int | None = None
    ) -> list[StoredArticle]:
        """Return stored articles, newest published first (``Articles.newest``)."""
        return self.articles.newest(since=since, feed_url=feed_url, limit=limit)

    def delete_old_articles(self, before: datetime, digest_names: Sequence[str]) -> int:
        """Delete articles first seen before ``before`` that no digest waits for; return how many."""
        return self.articles.delete_old(before, digest_names)

    # -- digests ----------------------------------------------------------------------------

    def unsent_articles(self, digest_name: str, *, since: datetime | None = None) -> list[StoredArticle]:
        """Return articles no delivered run of this digest included, oldest first."""
        return self.digests.unsent_articles(digest_name, since=since)

    def sent_article_ids(self, digest_name: str, ids: Iterable[int]) -> set[int]:
        """Return which of ``ids`` a delivered run of this digest already included."""
        return self.digests.sent_article_ids(digest_name, ids)

    def begin_digest_run(
        self,
        digest_name: str,
        run_key: str,
        message_id: str,
        article_ids: Sequence[int],
        now: datetime,
        html: str | None = None,
    ) -> int:
        """Record a run about to be delivered with its items (``Digests.begin_run``)."""
        return self.digests.begin_run(digest_name, run_key, message_id, article_ids, now, html)

    def finish_digest_run(self, run_id: int, now: datetime) -> None:
        """Mark a run delivered: its articles count as sent."""
        self.digests.finish_run(run_id, now)

    def fail_digest_run(self, run_id: int, error: str) -> None:
        """Mark a run failed for good: its articles wait for the next run."""
        self.digests.fail_run(run_id, error)

    def note_digest_error(self, run_id: int, error: str) -> None:
        """Record a temporary delivery failure; the run stays pending."""
        self.digests.note_error(run_id, error)

    def note_digest_checked(self, digest_name: str, now: datetime) -> None:
        """Record that this digest's time came and found nothing to send."""
        self.digests.note_checked(digest_name, now)

    def pending_digest_run(self, digest_name: str) -> PendingRun | None:
        """Return the newest run of this digest recorded but never delivered, or None."""
        return self.digests.pending_run(digest_name)

    def last_digest_failure(self, digest_name: str) -> tuple[datetime, str] | None:
        """Return when and why the newest undelivered run of this digest failed, if it did."""
        return self.digests.last_failure(digest_name)

    def last_digest_handled(self, digest_name: str) -> datetime | None:
        """When this digest last went out, or last found nothing to send at its time."""
        return self.digests.last_handled(digest_name)

    def last_digest_sent(self, digest_name: str) -> datetime | None:
        """When this digest last went out, or None."""
        return self.digests.last_sent(digest_name)

    def digest_lock(self, digest_name: str) -> AbstractContextManager[bool]:
        """Hold the right to send this digest; yields False when another process holds it."""
        return self.digests.send_lock(digest_name)
