"""The repository: every read and write of the database, named for what callers want.

One transaction per unit of work: a feed's new articles are written together with the
feed's fetch record, and a digest run is recorded with its items before the email leaves.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Engine,
    Insert,
    any_,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, aliased, sessionmaker
from sqlalchemy.sql.expression import Executable

from aggregator.controls import clean_text
from aggregator.database import create_db_engine, has_schema, migrate, redact
from aggregator.dedup import (
    Candidate,
    Incoming,
    StoredCopies,
    StoryCopy,
    TextProfile,
    choose_representatives,
    rank_candidates,
    story_leads,
    text_profiles,
    url_key,
)
from aggregator.errors import StorageError
from aggregator.models import (
    FeedLocation,
    FeedState,
    FeedStatus,
    FetchRecord,
    NewArticle,
    NotModified,
    PendingRun,
    Seen,
    StoredArticle,
)
from aggregator.schema import Article, ArticleBand, BandMerges, DigestItem, DigestRun, Feed, RecentBands

if TYPE_CHECKING:
    import numpy as np

T = TypeVar("T")
# Recent articles' band keys are merged into the band index when the article ids cross a multiple
# of this (about half a million keys; each process holds them in memory, 8 MB): see
# schema.RecentBands and RecentIndex.
MERGE_EVERY = 16_384
# Rows of the band index a merge inserts in one statement: SQLite ran the half-million one-row
# inserts of a merge at 0.7 µs a row, the statements of 250 rows at 0.3 µs.
MERGE_ROWS = 250
# Longest stored feed title and error or warning message (characters).
MAX_FEED_TITLE = 400
MAX_MESSAGE = 2000
# Any constant shared by all processes (database.py's migration lock is another).
_INSERT_LOCK = 7_262_042


class Store:
    """Thin repository over one SQLAlchemy engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._write_lock = threading.Lock() if engine.dialect.name == "sqlite" else None
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        on_disk = database not in (None, "", ":memory:")
        self._lock_path = f"{database}.write-lock" if on_disk else None
        self._lock_fd: int | None = None
        self._lock_pid = 0
        self._write_sessions = sessionmaker(
            engine.execution_options(sqlite_immediate=True), expire_on_commit=False
        )
        self._recent = RecentIndex()

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
        self.engine.dispose()
        if self._lock_fd is not None and self._lock_pid == os.getpid():
            os.close(self._lock_fd)
            self._lock_fd = None

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

    def _session(self) -> Session:
        return self._sessions()

    # -- feeds -----------------------------------------------------------------------------

    def ensure_feeds(self, urls: Iterable[str], now: datetime) -> None:
        """Create a row for each configured feed that has none; a new feed is due at once.

        Idempotent when several processes add the same feeds at once (PostgreSQL shared by
        `aggregator run` processes): a row another one inserted first is left as it is.
        """
        wanted = list(dict.fromkeys(urls))
        with self._writing() as session:
            for chunk in _chunks(wanted):
                present = set(session.scalars(select(Feed.url).where(Feed.url.in_(chunk))))
                missing = [url for url in chunk if url not in present]
                if missing:
                    _insert_feeds(session, missing, now)

    def feed_state(self, url: str) -> FeedState:
        return self.feed_states([url]).get(url) or FeedState(None, None, 0)

    def feed_states(self, urls: Sequence[str]) -> dict[str, FeedState]:
        """Return the polling state of each of ``urls`` that has a row."""
        states: dict[str, FeedState] = {}
        with self._session() as session:
            for chunk in _chunks(list(urls)):
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

    def due_feeds(self, urls: Sequence[str], now: datetime) -> list[str]:
        """Return those of ``urls`` whose next fetch time has come (never fetched: due).

        A feed that answered 410 Gone is never due.
        """
        with self._session() as session:
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

    def claim_due_feeds(self, urls: Sequence[str], now: datetime, owner: str, lease: timedelta) -> list[str]:
        """Claim those of ``urls`` that are due and not claimed under a live lease.

        On PostgreSQL the rows are taken FOR UPDATE SKIP LOCKED, so processes sharing the
        database never claim the same feed; one that dies loses its claims when their lease
        ends. A claim ends when the poll's outcome is recorded.
        """
        claimed: list[str] = []
        with self._writing() as session:
            for chunk in _chunks(list(dict.fromkeys(urls))):
                query = select(Feed).where(
                    Feed.url.in_(chunk),
                    Feed.gone_at.is_(None),
                    or_(Feed.next_fetch_at.is_(None), Feed.next_fetch_at <= now),
                    or_(Feed.lease_until.is_(None), Feed.lease_until <= now),
                )
                if self.engine.dialect.name == "postgresql":
                    query = query.with_for_update(skip_locked=True)
                for feed in session.scalars(query):
                    feed.claimed_by, feed.lease_until = owner[:200], now + lease
                    claimed.append(feed.url)
        return claimed

    def checkpoint(self) -> None:
        """Copy SQLite's write-ahead log into the database, most of it without waiting for any
        reader or writer (PASSIVE), then the rest in the writers' lock, so that the next writer
        starts the log afresh; nothing to do on PostgreSQL.

        A checkpoint that runs beside the writers never catches up with them: the log grew by
        every commit of a pass (360 MB in a 1,000-feed pass), and every page a statement read
        was looked for in a longer index of it, and every commit wrote further into a growing
        file. The second copy is of the frames written during the first: 15–35 ms, once a
        second, against 0.5 ms of a feed's commit saved.
        """
        if self.engine.dialect.name != "sqlite":
            return
        try:
            with self.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").all()
                with self._write_lock or nullcontext(), self._file_lock():
                    connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").all()
        except OperationalError as exc:
            raise StorageError(f"checkpoint of the database failed: {exc}") from None

    def renew_claims(self, owner: str, until: datetime) -> int:
        """Extend the leases of the feeds ``owner`` is refreshing now; return how many.

        A refresh that outlives its lease (a slow site, many pages to extract) would otherwise
        be taken over and fetched a second time by another process.
        """
        with self._writing() as session:
            result = session.execute(
                update(Feed)
                .where(Feed.claimed_by == owner[:200], Feed.lease_until.is_not(None))
                .values(lease_until=until)
            )
            return int(result.rowcount or 0)

    def release_claims(self, dead: Callable[[str], bool]) -> int:
        """End the claims of owners ``dead`` says are gone (a killed process on this host);
        return how many feeds were released."""
        with self._writing() as session:
            owners = set(session.scalars(select(Feed.claimed_by).where(Feed.claimed_by.is_not(None))))
            gone = [owner for owner in owners if owner and dead(owner)]
            if not gone:
                return 0
            result = session.execute(
                update(Feed).where(Feed.claimed_by.in_(gone)).values(claimed_by=None, lease_until=None)
            )
            return int(result.rowcount or 0)

    def seen(self, feed_url: str, entry_keys: Iterable[str], link_keys: Iterable[str]) -> Seen:
        """Return which entries and links are stored already, in two queries."""
        entry_keys, link_keys = list(dict.fromkeys(entry_keys)), list(dict.fromkeys(link_keys))
        known_entries: set[str] = set()
        feed_links: set[str] = set()
        any_links: set[str] = set()
        # A Connection, not a Session: these reads need none of the ORM's state.
        with self.engine.connect() as connection:
            for chunk in _chunks(entry_keys):
                rows = _SEEN_ENTRIES.rows(connection, {"feed_url": feed_url, "keys": chunk})
                known_entries.update(entry for (entry,) in rows)
            for chunk in _chunks(link_keys):
                wanted = set(chunk)
                for page_key, link_key, owner in _SEEN_LINKS.rows(connection, {"keys": chunk}):
                    for key in (page_key, link_key):
                        if key in wanted:
                            any_links.add(key)
                            if owner == feed_url:
                                feed_links.add(key)
        return Seen(known_entries, feed_links, any_links)

    def store_refresh(
        self,
        feed_url: str,
        articles: Sequence[NewArticle],
        record: FetchRecord,
    ) -> tuple[int, int]:
        """Store new articles and the successful fetch in one transaction.

        Returns (articles added, of which duplicates of an article already stored).
        """
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
            "warning": _message(record.warning) if record.warning else None,
        }
        if record.location is not None:
            values.update(record.location.values())
        # Shingles and MinHash are CPU work: done before the write transaction, not inside it.
        profiles = text_profiles([a.text for a in articles])
        # So is probing the band index: it changes only at a merge, which the write sees.
        probe = self._probe_index(profiles)
        statement = _FEED_SUCCESS[record.location is not None]
        with self._writing() as session:
            # Built once and run on the driver (_DriverQuery), not the ORM's bulk update.
            feed_id = _first(statement.rows(session.connection(), values))
            if feed_id is None:  # not created by ensure_feeds: make the row, then update it
                self._feed_row(session, feed_url, record.now)
                feed_id = _first(statement.rows(session.connection(), values))
            added = self._insert_articles(session, feed_id, articles, record.now, profiles, probe)
            if added[1]:
                _lead_with_earliest_published(session, feed_id, record.now)
            return added

    def _insert_articles(
        self,
        session: Session,
        feed_id: int,
        articles: Sequence[NewArticle],
        now: datetime,
        profiles: Sequence[TextProfile | None] | None = None,
        probe: IndexProbe | None = None,
    ) -> tuple[int, int]:
        """Insert the articles this feed lacks, each pointing at the earliest stored copy of
        its story if any; return (added, of which duplicates).

        A copy is the same URL, the same text (``content_hash``), or nearly the same text
        (``profiles``: ``dedup.text_profile`` of each article's text, computed here if not given).
        """
        if not articles:
            return 0, 0
        if self.engine.dialect.name == "postgresql":
            # Copies of one story often arrive at once, through feeds refreshed in different
            # processes: each transaction would miss the other's uncommitted copy, and both would
            # become representatives. Inserts queue here (on SQLite all writers queue anyway),
            # so each one sees the copies committed before it.
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _INSERT_LOCK})
        if profiles is None:
            profiles = text_profiles([a.text for a in articles])
        url_keys = [_url_key(a) for a in articles]
        keys = set(url_keys)
        hashes = {a.content_hash for a in articles if a.content_hash}
        entry_keys = {a.entry_key for a in articles}
        by_url: dict[str, int] = {}
        by_hash: dict[str, int] = {}
        present: set[str] = set()
        # One query finds the entries this feed has and the earliest copy of each story.
        rows = _STORED_COPIES.rows(
            session.connection(),
            {
                "url_keys": sorted(keys),
                "entry_keys": sorted(entry_keys),
                "feed_id": feed_id,
                "hashes": sorted(hashes),
            },
        )
        for article_id, duplicate_of, key, digest, entry, owner in rows:
            root = duplicate_of or article_id
            if key in keys:
                by_url.setdefault(key, root)
            if digest in hashes:
                by_hash.setdefault(digest, root)
            if owner == feed_id and entry in entry_keys:
                present.add(entry)
        batch: list[NewArticle] = []
        incoming: list[Incoming] = []
        for article, key, profile in zip(articles, url_keys, profiles, strict=True):
            if article.entry_key not in present:
                present.add(article.entry_key)
                batch.append(article)
                incoming.append(Incoming(key, article.content_hash, article.url, profile))
        if not batch:
            return 0, 0
        stored = StoredCopies(by_url, by_hash)
        # Near-duplicate text is looked for only when neither the URL nor the exact text matched.
        unmatched = [item.profile if stored.representative(item) is None else None for item in incoming]
        candidates = _stored_candidates(session, unmatched, self._recent, probe)
        decision = choose_representatives(incoming, stored, candidates, feed_id)
        values = [
            {
                "feed_id": feed_id,
                "entry_key": article.entry_key,
                "url": article.url,
                "url_key": item.url_key,
                # Most entries' link is the article's URL: the index holds only links that differ.
                "link_key": article.link_key if article.link_key != item.url_key else None,
                "title": article.title,
                "author": article.author,
                "published": article.published,
                "first_seen": now,
                "summary": article.summary,
                "text": article.text,
                "html": article.html,
                "extraction": article.extraction,
                "content_hash": article.content_hash,
                "duplicate_of": representative,
            }
            for article, item, representative in zip(batch, incoming, decision.representatives, strict=True)
        ]
        # On the driver, through executemany (_DriverQuery): the ORM's bulk path, and Core's
        # processing of each row's parameters, cost more than the insert itself here.
        connection = session.connection()
        _ARTICLE_INSERT.execute_many(connection, values)
        if not decision.twins and not decision.banded:
            return len(values), decision.duplicates
        # The ids by the (feed, entry) key that is unique: one query, where INSERT … RETURNING
        # with the rows' order kept runs one statement per row on SQLite.
        keyed = dict(
            _ENTRY_IDS.rows(connection, {"feed_id": feed_id, "entry_keys": [v["entry_key"] for v in values]})
        )
        ids = [keyed[v["entry_key"]] for v in values]
        copies: dict[int, list[int]] = {}
        for position, twin in decision.twins.items():
            copies.setdefault(twin, []).append(ids[position])
        for twin, copy_ids in copies.items():
            session.execute(update(Article).where(Article.id.in_(copy_ids)).values(duplicate_of=ids[twin]))
        recent = [
            (ids[position], pack_keys(dict.fromkeys(incoming[position].profile.band_keys)))  # type: ignore[union-attr]
            for position in decision.banded
        ]
        if recent:
            # One row an article, through the driver's executemany: SQLAlchemy's per-row
            # parameter processing cost more than SQLite's inserts.
            marker = _marker(connection)
            connection.exec_driver_sql(
                f"INSERT INTO article_bands_recent (article_id, band_keys) VALUES ({marker}, {marker})",
                recent,
            )
        if (ids[0] - 1) // MERGE_EVERY != ids[-1] // MERGE_EVERY:
            _merge_recent_bands(session)
        return len(values), decision.duplicates

    def _probe_index(self, profiles: Sequence[TextProfile | None]) -> IndexProbe | None:
        """Look the band keys of ``profiles`` up in the band index, outside the writers' lock; bring
        this process's copy of the recent keys up to date first (``RecentIndex``), so that the
        write reads only what was committed in between."""
        wanted = _wanted_keys(profiles)
        if not wanted:
            return None
        recent: dict[int, list[int]] = {}
        with self.engine.connect() as connection:
            with self._recent.lock:
                self._recent.catch_up(connection)  # reads the count of merges too
                self._recent.hits(wanted, recent)
                merges, at = self._recent.merges, (self._recent.epoch, self._recent.seen)
            hits = _index_hits(connection, wanted)
            return IndexProbe(merges, frozenset(wanted), hits, recent, at, wanted, _profiled(profiles))

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        """A session in a write transaction.

        On SQLite (one writer at a time) the transaction starts IMMEDIATE, taking the write lock
        at once so that it never fails halfway on a lock another process took; and writers,
        threads of this process and the worker processes alike, queue on locks that wake the
        next one as soon as the lock is free, instead of sleeping in SQLite's busy handler.
        """
        with (
            self._write_lock or nullcontext(),
            self._file_lock(),
            self._write_sessions() as session,
            session.begin(),
        ):
            yield session

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        if self._lock_path is None:
            yield
            return
        if self._lock_fd is None or self._lock_pid != os.getpid():
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            self._lock_pid = os.getpid()
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def record_not_modified(self, records: Sequence[NotModified]) -> None:
        """Record polls answered 304, many in one transaction (a pass is mostly these)."""
        if not records:
            return
        # One executemany per shape of row (with a location or without) instead of a statement
        # per feed: this runs in a thread of the event loop's process, and every statement held
        # the GIL it needs.
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
        with self._writing() as session:
            connection = session.connection()
            for located, rows in shapes.items():
                if rows:
                    connection.execute(_FEED_NOT_MODIFIED[located], rows)

    def record_gone(self, feed_url: str, *, now: datetime, message: str) -> None:
        """Record 410 Gone: the feed is not polled again until fetched explicitly."""
        with self._writing() as session:
            feed = self._feed_row(session, feed_url, now)
            feed.last_fetch_at = feed.gone_at = now
            feed.last_status, feed.error_kind, feed.last_error = 410, "gone", _message(message)
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
        with self._writing() as session:
            feed = self._feed_row(session, feed_url, now)
            feed.last_fetch_at = now
            feed.last_status = status
            feed.error_kind, feed.last_error = kind, _message(message)
            feed.consecutive_failures = (feed.consecutive_failures or 0) + 1
            feed.next_fetch_at = next_fetch
            feed.claimed_by = feed.lease_until = None
            return feed.consecutive_failures

    @staticmethod
    def _feed_row(session: Session, url: str, now: datetime) -> Feed:
        feed = session.scalar(select(Feed).where(Feed.url == url))
        if feed is None:
            _insert_feeds(session, [url], now)
            feed = session.scalars(select(Feed).where(Feed.url == url)).one()
        return feed

    def feed_statuses(self, feeds: Sequence[tuple[str, str]]) -> list[FeedStatus]:
        """Return the status of each (url, name) in order, whether or not it was ever fetched."""
        urls = [url for url, _ in feeds]
        with self._session() as session:
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

    # -- articles --------------------------------------------------------------------------

    def list_articles(
        self,
        *,
        since: datetime | None = None,
        feed_url: str | None = None,
        limit: int | None = None,
    ) -> list[StoredArticle]:
        """Return stored articles, newest published first (an undated one by when first seen),
        ``since`` by that same time."""
        shown = func.coalesce(Article.published, Article.first_seen)
        query = _article_query()
        if since is not None:
            query = query.where(shown >= since)
        if feed_url is not None:
            query = query.where(Feed.url == feed_url)
        query = query.order_by(shown.desc(), Article.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with self._session() as session:
            return [_to_stored(row) for row in session.execute(query)]

    def unsent_articles(self, digest_name: str, *, since: datetime | None = None) -> list[StoredArticle]:
        """Return articles no delivered run of this digest included, oldest first."""
        sent = (
            select(DigestItem.article_id)
            .join(DigestRun, DigestRun.id == DigestItem.run_id)
            .where(DigestRun.digest_name == digest_name, DigestRun.status == "sent")
            .where(DigestItem.article_id == Article.id)
        )
        query = _article_query().where(~exists(sent))
        if since is not None:
            query = query.where(Article.first_seen >= since)
        query = query.order_by(Article.first_seen, Article.id)
        with self._session() as session:
            return [_to_stored(row) for row in session.execute(query)]

    def sent_article_ids(self, digest_name: str, ids: Iterable[int]) -> set[int]:
        """Return which of ``ids`` a delivered run of this digest already included."""
        ids = list(ids)
        if not ids:
            return set()
        with self._session() as session:
            return set(
                session.scalars(
                    select(DigestItem.article_id)
                    .join(DigestRun, DigestRun.id == DigestItem.run_id)
                    .where(
                        DigestRun.digest_name == digest_name,
                        DigestRun.status == "sent",
                        DigestItem.article_id.in_(ids),
                    )
                )
            )

    # -- digest runs -----------------------------------------------------------------------

    def begin_digest_run(
        self,
        digest_name: str,
        run_key: str,
        message_id: str,
        article_ids: Sequence[int],
        now: datetime,
    ) -> int:
        """Record a run about to be delivered with its items; reuse a pending run of the same key."""
        with self._writing() as session:
            run = session.scalar(select(DigestRun).where(DigestRun.run_key == run_key))
            if run is None:
                run = DigestRun(
                    digest_name=digest_name,
                    run_key=run_key,
                    message_id=message_id,
                    status="pending",
                    created_at=now,
                )
                session.add(run)
                session.flush()
            elif run.status == "sent":
                raise StorageError(f"digest run {run_key} was already delivered")
            session.query(DigestItem).filter(DigestItem.run_id == run.id).delete()
            session.add_all(DigestItem(run_id=run.id, article_id=i) for i in set(article_ids))
            run.status, run.item_count, run.error = "pending", len(set(article_ids)), None
            return run.id

    def finish_digest_run(self, run_id: int, now: datetime) -> None:
        with self._writing() as session:
            run = session.get(DigestRun, run_id)
            if run is not None:
                run.status, run.sent_at = "sent", now

    def delete_old_articles(self, before: datetime, digest_names: Sequence[str]) -> int:
        """Delete articles first seen before ``before``; return how many.

        Kept: articles still waiting for one of the digests (no delivered run of it covers
        them), and the representatives of copies that are kept (a deleted representative would
        make a copy look like a new story).
        """

        def delivered(name: str):  # type: ignore[no-untyped-def]
            return (
                select(DigestItem.article_id)
                .join(DigestRun, DigestRun.id == DigestItem.run_id)
                .where(DigestRun.digest_name == name, DigestRun.status == "sent")
            )

        kept_copy = aliased(Article)
        doomed = (
            select(Article.id)
            .where(Article.first_seen < before)
            .where(*(Article.id.in_(delivered(name)) for name in digest_names))
            .where(
                ~exists(
                    select(kept_copy.id).where(
                        kept_copy.duplicate_of == Article.id, kept_copy.first_seen >= before
                    )
                )
            )
        )
        with self._writing() as session:
            _merge_recent_bands(session)  # so that every band key is in the index, to be deleted
            ids = list(session.scalars(doomed))
            for numbers in _chunks(ids):
                # Copies of a deleted representative that are deleted too go in the same
                # statement.
                session.execute(
                    update(Article).where(Article.duplicate_of.in_(numbers)).values(duplicate_of=None)
                )
                session.execute(delete(DigestItem).where(DigestItem.article_id.in_(numbers)))
                _delete_band_keys(session, numbers)
                session.execute(delete(Article).where(Article.id.in_(numbers)))
        return len(ids)

    def health(self, urls: Sequence[str]) -> tuple[int, datetime | None]:
        """Return (feeds of ``urls`` failing now, the last successful fetch of any feed)."""
        with self._session() as session:
            failing = session.scalar(
                select(func.count(Feed.id)).where(Feed.url.in_(list(urls)), Feed.consecutive_failures > 0)
            )
            last = session.scalar(select(func.max(Feed.last_success_at)))
        return int(failing or 0), last

    @contextmanager
    def digest_lock(self, digest_name: str) -> Iterator[bool]:
        """Hold the right to send this digest; yields False when another process holds it.

        On PostgreSQL a session advisory lock, so that however many `aggregator run` processes
        share the database, one sends each digest. SQLite serves one process: always True.
        """
        if self.engine.dialect.name != "postgresql":
            yield True
            return
        key = int.from_bytes(
            hashlib.blake2b(f"digest:{digest_name}".encode(), digest_size=8).digest(),
            "big",
            signed=True,
        )
        with self.engine.connect() as connection:
            got = bool(connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
            connection.commit()
            try:
                yield got
            finally:
                if got:
                    connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    connection.commit()

    def pending_digest_run(self, digest_name: str) -> PendingRun | None:
        """Return the newest run of this digest recorded but never delivered (a crash or an
        outage in between), with its articles, or None."""
        with self._session() as session:
            run = session.scalars(
                select(DigestRun)
                .where(DigestRun.digest_name == digest_name, DigestRun.status == "pending")
                .order_by(DigestRun.id.desc())
                .limit(1)
            ).first()
            if run is None:
                return None
            ids = list(session.scalars(select(DigestItem.article_id).where(DigestItem.run_id == run.id)))
            articles = [
                _to_stored(row) for row in session.execute(_article_query().where(Article.id.in_(ids)))
            ]
        return PendingRun(run.id, run.run_key, run.created_at, articles)

    def note_digest_error(self, run_id: int, error: str) -> None:
        """Record a temporary delivery failure; the run stays pending."""
        with self._writing() as session:
            run = session.get(DigestRun, run_id)
            if run is not None:
                run.error = _message(error)

    def last_digest_failure(self, digest_name: str) -> tuple[datetime, str] | None:
        """Return when and why the newest undelivered run of this digest failed, if it did."""
        with self._session() as session:
            run = session.scalars(
                select(DigestRun)
                .where(DigestRun.digest_name == digest_name)
                .order_by(DigestRun.id.desc())
                .limit(1)
            ).first()
        if run is None or run.status == "sent" or not run.error:
            return None
        return run.created_at, run.error

    def fail_digest_run(self, run_id: int, error: str) -> None:
        with self._writing() as session:
            run = session.get(DigestRun, run_id)
            if run is not None:
                run.status, run.error = "failed", _message(error)

    def note_digest_checked(self, digest_name: str, now: datetime) -> None:
        """Record that this digest's scheduled time came and found nothing to send (a run with
        status "empty" and no items): a restart then knows the time was not missed."""
        with self._writing() as session:
            session.add(
                DigestRun(
                    digest_name=digest_name,
                    run_key=f"{digest_name}:checked:{now.isoformat()}:{os.getpid()}"[:300],
                    message_id="",
                    status="empty",
                    created_at=now,
                    sent_at=now,
                    item_count=0,
                )
            )

    def last_digest_handled(self, digest_name: str) -> datetime | None:
        """When this digest last went out, or last found nothing to send at its time."""
        with self._session() as session:
            return session.scalar(
                select(func.max(DigestRun.sent_at)).where(
                    DigestRun.digest_name == digest_name, DigestRun.status.in_(("sent", "empty"))
                )
            )

    def first_feed_added(self) -> datetime | None:
        """When the service first knew a feed: nothing can have been missed before that."""
        with self._session() as session:
            return session.scalar(select(func.min(Feed.created_at)))

    def last_digest_sent(self, digest_name: str) -> datetime | None:
        with self._session() as session:
            return session.scalar(
                select(func.max(DigestRun.sent_at)).where(
                    DigestRun.digest_name == digest_name, DigestRun.status == "sent"
                )
            )


def _insert_feeds(session: Session, urls: Sequence[str], now: datetime) -> None:
    """Insert feed rows, skipping any URL another process inserted meanwhile (ON CONFLICT DO
    NOTHING: without it the slower process failed its whole refresh round on uq_feeds_url)."""
    insert_for = postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(
        insert_for(Feed)
        .values([{"url": url, "created_at": now, "consecutive_failures": 0} for url in urls])
        .on_conflict_do_nothing(index_elements=["url"])
    )


def _message(text: str) -> str:
    """An error or warning as stored: a server's reason phrase or reply may carry anything."""
    return clean_text(text, MAX_MESSAGE)


def _url_key(article: NewArticle) -> str:
    return article.url_key or url_key(article.url)


def _marker(connection: Connection) -> str:
    """The driver's placeholder, for statements handed to its executemany."""
    return "?" if connection.dialect.paramstyle == "qmark" else "%s"


def _profiled(profiles: Sequence[TextProfile | None]) -> int:
    """How many of ``profiles`` there are (texts too short have none)."""
    return sum(profile is not None for profile in profiles)


def _wanted_keys(profiles: Sequence[TextProfile | None]) -> list[int]:
    """The distinct band keys of ``profiles``, sorted."""
    return sorted({key for profile in profiles if profile for key in profile.band_keys})


def pack_keys(keys: Iterable[int]) -> bytes:
    """The band keys of one article as ``schema.RecentBands`` stores them."""
    keys = tuple(keys)
    return struct.pack(f"<{len(keys)}q", *keys)


def unpack_keys(blob: bytes) -> tuple[int, ...]:
    return struct.unpack(f"<{len(blob) // 8}q", blob)


class RecentIndex:
    """This process's copy of ``article_bands_recent``: band key -> the recent articles holding it.

    Brought up to date under the writers' lock (``catch_up``), where every writer's commits are
    visible, by reading only the rows added since the last look: rows are appended in article id
    order, and deleted only by a merge (or by retention, which merges), which counts itself in
    ``article_band_merges``; when the count moves, the table is read afresh. Reading another
    writer's 20 rows costs far less than inserting 640 keys into an index and probing it: those
    B-tree operations were most of a feed's time under the lock.

    The keys are held in runs: pairs of numpy arrays (keys sorted, the article of each), 16
    bytes a key (the ``MERGE_EVERY`` articles' half-million keys take 8 MB, where a dict would
    take 50). Each catch-up's rows become a run; a run is merged with the one before it while it
    is at least a quarter of its size, so that the runs shrink fourfold from the first and a
    lookup searches a handful of them, and each key is merged a few times in all. Every process
    takes in every writer's rows: with a dict of keys, taking them in and sorting the dict into
    arrays every 65,536 keys was a tenth of a refresh worker's CPU.

    A refresh catches up once before the lock too (``Store._probe_index``), merging the runs
    there: under the lock only the rows committed in between are left to read, and no writer
    waits for a merge. ``lock`` keeps the threads of one process (``extract.workers: 0``) out
    of each other's way, now that one of them may catch up outside the writers' lock.
    """

    __slots__ = ("epoch", "lock", "merges", "runs", "seen")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.epoch = 0  # moves whenever what the index holds is read afresh
        self._reset(None)

    def _reset(self, merges: int | None) -> None:
        self.epoch += 1
        self.merges, self.seen = merges, 0
        # (keys sorted, the article of each), largest first
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []

    def catch_up(self, connection: Connection, consolidate: bool = True) -> None:
        """Read the rows added since the last look (all of them after a merge); with
        ``consolidate``, merge the runs that have grown. Called with ``lock`` held."""
        merges, rows = _recent_since(connection, self.seen)
        if merges != self.merges:
            self._reset(merges)
            merges, rows = _recent_since(connection, self.seen)
        if rows:
            self._add_rows(rows)
        if consolidate:
            self._merge_runs()

    def _add_rows(self, rows: list[tuple[int, bytes]]) -> None:
        """Take in rows read by ``_recent_since`` as one run."""
        import numpy as np

        blobs = [bytes(blob) for _, blob in rows]
        keys = np.frombuffer(b"".join(blobs), dtype="<i8").astype(np.int64)
        ids = np.repeat(
            np.array([article_id for article_id, _ in rows], dtype=np.int64), [len(b) // 8 for b in blobs]
        )
        order = np.argsort(keys, kind="stable")
        self.runs.append((keys[order], ids[order]))
        self.seen = rows[-1][0]

    def _merge_runs(self) -> None:
        import numpy as np

        runs = self.runs
        while len(runs) > 1 and 4 * len(runs[-1][0]) >= len(runs[-2][0]):
            (last_keys, last_ids), (keys, ids) = runs.pop(), runs.pop()
            keys, ids = np.concatenate((keys, last_keys)), np.concatenate((ids, last_ids))
            order = np.argsort(keys, kind="stable")  # two sorted runs: merged in one pass
            runs.append((keys[order], ids[order]))

    def peek(self, connection: Connection, wanted: frozenset[int]) -> dict[int, list[int]] | None:
        """The rows added since the last look that hold any of ``wanted``, key by key, leaving
        this copy as it is (the next catch-up takes them in, outside the writers' lock); None
        when a merge came since."""
        merges, rows = _recent_since(connection, self.seen)
        if merges != self.merges:
            return None
        found: dict[int, list[int]] = {}
        for article_id, blob in rows:
            for key in wanted.intersection(unpack_keys(bytes(blob))):
                found.setdefault(key, []).append(article_id)
        return found

    def hits(self, wanted: Sequence[int], into: dict[int, list[int]]) -> None:
        """Add the recent articles holding each of ``wanted`` (sorted, distinct) to ``into``."""
        if not self.runs:
            return
        import numpy as np

        probe = np.array(wanted, dtype=np.int64)
        for keys, ids in self.runs:
            low = np.searchsorted(keys, probe)
            # A key of the probe is in the run where the first key not below it equals it.
            found = np.flatnonzero(keys[np.minimum(low, len(keys) - 1)] == probe).tolist()
            if not found:
                continue
            high = np.searchsorted(keys, probe[found], "right").tolist()
            for index, end in zip(found, high, strict=True):
                into.setdefault(wanted[index], []).extend(ids[low[index] : end].tolist())


@dataclass(frozen=True, slots=True)
class IndexProbe:
    """The band index's articles for some keys, read before the write (``Store._probe_index``),
    and the count of merges then: only a merge changes the index. With them, the recent articles
    holding those keys in this process's ``RecentIndex`` then, and where that index stood."""

    merges: int | None
    keys: frozenset[int]
    hits: dict[int, list[int]]
    recent: dict[int, list[int]] | None = None
    recent_at: tuple[int, int] | None = None  # RecentIndex.epoch and .seen
    # The keys sorted, and how many profiles had them: the write looks up a subset of those
    # profiles, and when it is as many, it is all of them and the same keys.
    wanted: list[int] | None = None
    profiled: int = 0


def _index_hits(connection: Connection, wanted: list[int]) -> dict[int, list[int]]:
    hits: dict[int, list[int]] = {}
    postgresql = connection.dialect.name == "postgresql"
    for key, article_id in _BAND_LOOKUP[postgresql].rows(
        connection, {"keys": _one_value(wanted, postgresql)}
    ):
        hits.setdefault(key, []).append(article_id)
    return hits


def _stored_candidates(
    session: Session,
    profiles: Sequence[TextProfile | None],
    recent: RecentIndex | None = None,
    probe: IndexProbe | None = None,
) -> list[list[Candidate]]:
    """Return, for each profile, the stored articles sharing its band keys (ranked, as
    ``dedup.rank_candidates`` ranks them) with their texts: the band keys of the whole batch
    looked up in the index (``probe``, unless a merge came since) and among the recent articles
    in memory, then one query for the candidates' texts."""
    found: list[list[Candidate]] = [[] for _ in profiles]
    if probe is not None and probe.wanted is not None and probe.profiled == _profiled(profiles):
        wanted = probe.wanted
    else:
        wanted = _wanted_keys(profiles)
    if not wanted:
        return found
    connection = session.connection()
    recent = recent or RecentIndex()  # one made here reads the whole table
    with recent.lock:
        hits = _probed_hits(connection, recent, probe, wanted)
        if hits is None:
            # Sorting the arrays is left to the next catch-up before the lock (Store._probe_index).
            recent.catch_up(connection, consolidate=probe is None)
            if probe is not None and probe.merges == recent.merges and probe.keys.issuperset(wanted):
                hits = {key: list(ids) for key, ids in probe.hits.items()}
            else:
                hits = _index_hits(connection, wanted)
            recent.hits(wanted, hits)
    if not hits:
        return found
    ranked = [rank_candidates(profile.band_keys, hits) if profile else [] for profile in profiles]
    ids = sorted({c for each in ranked for c in each})
    postgresql = connection.dialect.name == "postgresql"
    stored = {
        article_id: Candidate(article_id, duplicate_of or article_id, owner, url, body)
        for article_id, duplicate_of, body, owner, url in connection.execute(
            _CANDIDATE_TEXTS[postgresql], {"ids": _one_value(ids, postgresql)}
        )
    }
    return [[stored[c] for c in each if c in stored] for each in ranked]


def _probed_hits(
    connection: Connection, recent: RecentIndex, probe: IndexProbe | None, wanted: list[int]
) -> dict[int, list[int]] | None:
    """The probe's hits and those of the recent rows committed since, when the probe still holds:
    no merge came, and this process's copy of the recent keys is where the probe left it (no
    other thread of the process moved it). None otherwise. Called with ``recent.lock`` held."""
    if (
        probe is None
        or probe.recent is None
        or probe.recent_at != (recent.epoch, recent.seen)
        or probe.merges != recent.merges
        or not probe.keys.issuperset(wanted)
    ):
        return None
    since = recent.peek(connection, probe.keys)
    if since is None:
        return None
    hits = {key: list(ids) for key, ids in probe.hits.items()}
    for found in (probe.recent, since):
        for key, ids in found.items():
            hits.setdefault(key, []).extend(ids)
    return hits


def _delete_band_keys(session: Session, ids: Sequence[int]) -> None:
    """Delete the band keys of the articles ``ids``, computed again from their texts: the band
    index has no entry by article (schema.ArticleBand). About 0.2 ms an article."""
    connection = session.connection()
    rows = connection.execute(select(Article.id, Article.text).where(Article.id.in_(ids))).all()
    pairs = [
        (key, article_id)
        for (article_id, _), profile in zip(
            rows, text_profiles([body or "" for _, body in rows]), strict=True
        )
        if profile is not None
        for key in dict.fromkeys(profile.band_keys)
    ]
    if pairs:
        marker = _marker(connection)
        connection.exec_driver_sql(
            f"DELETE FROM article_bands WHERE band_key = {marker} AND article_id = {marker}", pairs
        )


def _merge_recent_bands(session: Session) -> None:
    """Move the recent articles' band keys into the band index, in key order (see
    schema.RecentBands); those of deleted articles are dropped."""
    import numpy as np

    connection = session.connection()
    rows = connection.execute(_RECENT_KEPT).all()
    if rows:
        keys = np.frombuffer(b"".join(bytes(blob) for _, blob in rows), dtype="<i8")
        ids = np.repeat(
            np.array([article_id for article_id, _ in rows], dtype=np.int64),
            [len(blob) // 8 for _, blob in rows],
        )
        order = np.lexsort((ids, keys))
        # (key, id) pairs side by side, in key order: each statement takes MERGE_ROWS of them.
        pairs = np.empty(2 * len(keys), dtype=np.int64)
        pairs[0::2], pairs[1::2] = keys[order], ids[order]
        marker = _marker(connection)

        def insert(rows: int) -> str:
            values = ", ".join([f"({marker}, {marker})"] * rows)
            return f"INSERT INTO article_bands (band_key, article_id) VALUES {values}"

        step = 2 * MERGE_ROWS
        for start in range(0, len(pairs), 100_000):  # bounded memory: the values are Python ints
            chunk = pairs[start : start + 100_000].tolist()
            whole = len(chunk) - len(chunk) % step
            if whole:
                connection.exec_driver_sql(
                    insert(MERGE_ROWS), [tuple(chunk[i : i + step]) for i in range(0, whole, step)]
                )
            if whole < len(chunk):
                connection.exec_driver_sql(insert((len(chunk) - whole) // 2), tuple(chunk[whole:]))
    connection.execute(delete(RecentBands))
    connection.execute(update(BandMerges).values(merges=BandMerges.merges + 1))


def _lead_with_earliest_published(session: Session, feed_id: int, now: datetime) -> None:
    """Make the earliest published copy (``dedup.lead_order``) the representative of each story
    that this feed's copies stored at ``now`` joined: a copy published earlier than the first
    one stored takes its place, and the other copies point at it.

    A story that a digest run has included (sent or about to be) keeps its representative: the
    late copy is covered by it and never sent, and the digest's record stays true.

    Core statements on the session's connection, the moves of all stories in two executemany
    calls: the ORM's bulk UPDATE prepared its session synchronisation for each statement, and
    this function was two fifths of storing a feed's pages when most were copies.
    """
    connection = session.connection()
    joined = select(Article.duplicate_of).where(
        Article.feed_id == feed_id, Article.first_seen == now, Article.duplicate_of.is_not(None)
    )
    roots = sorted(set(connection.scalars(joined)))
    stories: dict[int, list[StoryCopy]] = {}
    for chunk in _chunks(roots):
        rows = connection.execute(
            select(Article.id, Article.duplicate_of, Article.published, Article.first_seen).where(
                or_(Article.id.in_(chunk), Article.duplicate_of.in_(chunk))
            )
        )
        for article_id, duplicate_of, published, first_seen in rows:
            stories.setdefault(duplicate_of or article_id, []).append((published, first_seen, article_id))
    moves = story_leads(stories)
    if not moves:
        return
    moved_ids = [article_id for root in moves for _, _, article_id in stories[root]]
    included: set[int] = set()
    for chunk in _chunks(moved_ids):
        included.update(
            connection.scalars(
                select(DigestItem.article_id)
                .join(DigestRun, DigestRun.id == DigestItem.run_id)
                .where(DigestRun.status.in_(("sent", "pending")), DigestItem.article_id.in_(chunk))
            )
        )
    # Each story's copies are its own (members is keyed by story), so the moves are independent.
    leads = [
        {"root": root, "lead": lead}
        for root, lead in moves.items()
        if not any(article_id in included for _, _, article_id in stories[root])
    ]
    if leads:
        connection.execute(_POINT_AT_LEAD, leads)
        connection.execute(_LEAD_STANDS_ALONE, leads)


def _in_one_value(column: ColumnElement[int], name: str, postgresql: bool) -> ColumnElement[bool]:
    """``column`` is one of the list bound as the single parameter ``name`` (``_one_value``):
    an array on PostgreSQL, a JSON list read by json_each on SQLite. A feed's articles look up
    640 band keys: as many bound parameters cost more to render than the indexed lookup itself."""
    if postgresql:
        return column == any_(bindparam(name, type_=ARRAY(column.type)))
    values = func.json_each(bindparam(name)).table_valued("value")
    return column.in_(select(values.c.value))


def _one_value(values: list[int], postgresql: bool) -> object:
    """The value to bind for ``_in_one_value``."""
    return values if postgresql else json.dumps(values)


class _DriverQuery:
    """One of the refresh's statements, run on the driver's own cursor.

    SQLAlchemy's work around each execution (the compiled cache's key, the IN lists rendered
    again, the parameters and rows processed) cost a refresh worker more CPU than SQLite's own
    work for these statements. The SQL is still the Core statement's, compiled once per dialect
    and per length of its list parameters; each parameter goes through its type's own bind
    processor (a datetime to UTC and, on SQLite, to its text), as SQLAlchemy would send it, and
    rows come back as the driver gives them: plain tuples, for columns of strings, integers and
    bytes. In a transaction of the connection the statement is part of it; outside one it runs
    as the driver runs it.
    """

    MAX_PLANS = 1024

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._expanding: dict[str, tuple[str, ...]] = {}  # dialect -> the list parameters
        # (dialect, the lists' lengths) -> the SQL, and each parameter's source: (its name in the
        # SQL, the caller's parameter, the index in that list or -1, its bind processor) or (its
        # name, None, its value, None)
        self._plans: dict[tuple[str, tuple[int, ...]], tuple[str, tuple[tuple[str, Any, Any, Any], ...]]] = {}

    def rows(self, connection: Connection, params: dict[str, Any]) -> list[Any]:
        """Execute with ``params``; return the rows."""
        sql, sources = self._plan_for(connection, params)
        return self._run(connection, sql, self._bound(connection, sources, params), many=False)

    def execute_many(self, connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Execute once for each of ``rows`` (the same keys in each), through executemany."""
        sql, sources = self._plan_for(connection, rows[0])
        self._run(connection, sql, [self._bound(connection, sources, row) for row in rows], many=True)

    def _plan_for(self, connection: Connection, params: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
        dialect = connection.dialect
        expanding = self._expanding.get(dialect.name)
        if expanding is None:
            compiled = self.statement.compile(dialect=dialect)
            expanding = tuple(name for name, bind in compiled.binds.items() if bind.expanding)
            self._expanding[dialect.name] = expanding
        key = (dialect.name, tuple(len(params[name]) for name in expanding))
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= self.MAX_PLANS:  # lengths vary with the feeds: bound the memory
                self._plans.clear()
            plan = self._plans[key] = self._plan(dialect, params)
        return plan

    @staticmethod
    def _bound(connection: Connection, sources: tuple[Any, ...], params: dict[str, Any]) -> Any:
        values = []
        for _, name, where, process in sources:
            value = where if name is None else params[name] if where < 0 else params[name][where]
            values.append(value if process is None else process(value))
        if connection.dialect.paramstyle in ("qmark", "format", "numeric"):
            return values
        return {source[0]: value for source, value in zip(sources, values, strict=True)}

    @staticmethod
    def _run(connection: Connection, sql: str, bound: Any, *, many: bool) -> list[Any]:
        dialect = connection.dialect
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        error = dialect.loaded_dbapi.Error
        try:
            if many:
                cursor.executemany(sql, bound)
                return []
            cursor.execute(sql, bound)
            return cursor.fetchall() if cursor.description is not None else []
        except error as exc:  # as SQLAlchemy raises it (OperationalError...), without the values
            raise DBAPIError.instance(sql, None, exc, error, hide_parameters=True, dialect=dialect) from exc
        finally:
            cursor.close()

    def _plan(
        self, dialect: Any, params: dict[str, Any]
    ) -> tuple[str, tuple[tuple[str, Any, Any, Any], ...]]:
        # An INSERT names the columns it is given, as executing it with these values would.
        columns = {"column_keys": list(params)} if isinstance(self.statement, Insert) else {}
        compiled = self.statement.compile(dialect=dialect, **columns)
        state = compiled.construct_expanded_state(params)
        origin = {
            expanded: (name, index)
            for name, names in state.parameter_expansion.items()
            for index, expanded in enumerate(names)
        }
        order = state.positiontup if state.positiontup is not None else list(state.parameters)
        sources: list[tuple[str, Any, Any, Any]] = []
        for expanded in order:
            name, where = origin.get(expanded, (expanded, -1))
            if name not in params:  # a value written into the statement, such as BandMerges.id == 1
                sources.append((expanded, None, state.parameters[expanded], None))
                continue
            kind = compiled.binds[name].type
            sources.append((expanded, name, where, kind.dialect_impl(dialect).bind_processor(dialect)))
        return state.statement, tuple(sources)


def _first(rows: list[Any]) -> Any:
    """The first column of the first row, or None: what ``Connection.scalar`` gives."""
    return rows[0][0] if rows else None


# The near-duplicate lookup's two statements, built once per dialect: constructing them on every
# lookup cost as much CPU as running them.
_BAND_LOOKUP = {
    postgresql: _DriverQuery(
        select(ArticleBand.band_key, ArticleBand.article_id).where(
            _in_one_value(ArticleBand.band_key, "keys", postgresql)
        )
    )
    for postgresql in (False, True)
}
# The count of merges and the recent rows after "seen", in one statement (one snapshot, one
# round of SQLAlchemy's per-statement work): the merges' one row, joined with those rows if any.
_RECENT_SINCE = _DriverQuery(
    select(BandMerges.merges, RecentBands.article_id, RecentBands.band_keys)
    .outerjoin(RecentBands, RecentBands.article_id > bindparam("seen"))
    .where(BandMerges.id == 1)
    .order_by(RecentBands.article_id)
)


def _recent_since(connection: Connection, seen: int) -> tuple[int | None, list[tuple[int, bytes]]]:
    """The count of merges, and the recent rows (article id, band keys) added after ``seen``."""
    rows = _RECENT_SINCE.rows(connection, {"seen": seen})
    if not rows:
        return None, []
    return rows[0][0], [(article_id, blob) for _, article_id, blob in rows if article_id is not None]


# Rows of deleted articles are left behind (RecentBands has no foreign key).
_RECENT_KEPT = select(RecentBands.article_id, RecentBands.band_keys).join(
    Article, Article.id == RecentBands.article_id
)
# The feed and URL tell whether a candidate is of the new article's site (dedup.tells_one_story).
_CANDIDATE_TEXTS = {
    postgresql: select(Article.id, Article.duplicate_of, Article.text, Article.feed_id, Article.url).where(
        _in_one_value(Article.id, "ids", postgresql)
    )
    for postgresql in (False, True)
}

# The statements a refresh runs for every feed, built once with their values as bound parameters:
# building a statement (columns coerced, IN lists expanded, its cache key computed) cost a few ms
# of CPU a feed, more than SQLite took to run them.
_SEEN_ENTRIES = _DriverQuery(
    select(Article.entry_key)
    .join(Feed, Feed.id == Article.feed_id)
    .where(Feed.url == bindparam("feed_url"), Article.entry_key.in_(bindparam("keys", expanding=True)))
)
_SEEN_LINKS = _DriverQuery(
    select(Article.url_key, Article.link_key, Feed.url)
    .join(Feed, Feed.id == Article.feed_id)
    .where(
        or_(
            Article.url_key.in_(bindparam("keys", expanding=True)),
            Article.link_key.in_(bindparam("keys", expanding=True)),
        )
    )
)
_STORED_COPIES = _DriverQuery(
    select(
        Article.id,
        Article.duplicate_of,
        Article.url_key,
        Article.content_hash,
        Article.entry_key,
        Article.feed_id,
    )
    .where(
        or_(
            Article.url_key.in_(bindparam("url_keys", expanding=True)),
            Article.entry_key.in_(bindparam("entry_keys", expanding=True))
            & (Article.feed_id == bindparam("feed_id")),
            Article.content_hash.in_(bindparam("hashes", expanding=True)),
        )
    )
    .order_by(Article.id)
)
_ENTRY_IDS = _DriverQuery(
    select(Article.entry_key, Article.id).where(
        Article.feed_id == bindparam("feed_id"),
        Article.entry_key.in_(bindparam("entry_keys", expanding=True)),
    )
)


def _feed_fetched(*, location: bool, modified: bool) -> Executable:
    """The update of a feed's row after a successful fetch: a new document (``modified``,
    returning the feed's id) or a 304; ``location``: with where the feed is polled."""
    feeds = Feed.__table__
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


# Keyed by "with a location": the two shapes of each.
_FEED_SUCCESS = {
    located: _DriverQuery(_feed_fetched(location=located, modified=True)) for located in (False, True)
}
_FEED_NOT_MODIFIED = {located: _feed_fetched(location=located, modified=False) for located in (False, True)}
_articles = Article.__table__
_ARTICLE_INSERT = _DriverQuery(_articles.insert())
# A story's new representative (_lead_with_earliest_published): the story's copies, and its old
# representative, point at :lead, which stands alone.
_POINT_AT_LEAD = (
    update(_articles)
    .where(
        or_(_articles.c.id == bindparam("root"), _articles.c.duplicate_of == bindparam("root")),
        _articles.c.id != bindparam("lead"),
    )
    .values(duplicate_of=bindparam("lead"))
)
_LEAD_STANDS_ALONE = update(_articles).where(_articles.c.id == bindparam("lead")).values(duplicate_of=None)


def _chunks(items: Sequence[T], size: int = 500) -> Iterator[Sequence[T]]:
    """Yield slices small enough for any database's limit on bound parameters."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _article_query():  # type: ignore[no-untyped-def]
    return select(Article, Feed.url, Feed.title).join(Feed, Feed.id == Article.feed_id)


def _to_stored(row: object) -> StoredArticle:
    article, feed_url, feed_title = row  # type: ignore[misc]
    return StoredArticle(
        id=article.id,
        feed_url=feed_url,
        feed_name=feed_title or "",  # the feed's own title; config.feed_label names it
        url=article.url,
        title=article.title,
        author=article.author,
        published=article.published,
        first_seen=article.first_seen,
        summary=article.summary,
        text=article.text,
        html=article.html,
        extraction=article.extraction,
        duplicate_of=article.duplicate_of,
    )
