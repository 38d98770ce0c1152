"""The part of a refresh that runs in the worker processes: parse a fetched feed, decide which
entries are new, store them; extract article pages.

The service's own process keeps the network and the schedule; parsing, HTML work and database
writes, all CPU-bound, run here on every core. Each worker process opens its own connection
to the database (``init_worker``); with ``extract.workers: 0`` the same functions run in threads of the
service, given the service's Store.

Each job has a time limit, enforced with SIGALRM in a worker process's main thread, so that the
worker survives it: an extraction gives up (TimeoutError), and a feed's parsing fails with
FetchError("timeout"). Only the CPU work is interrupted, never a database call: a store stuck
past the pool's backstop has its worker killed, and its transaction dies with it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from aggregator.bounds import Refused
from aggregator.database import create_db_engine
from aggregator.errors import FetchError
from aggregator.models import ExtractedPage, FeedLocation, FetchRecord, FetchResult
from aggregator.polling import PollLimits, feed_hints, poll_interval, skip_to_allowed
from aggregator.prepare import IdentifiedEntry, PreparedEntry, build_article, identify_feed, prepare_entries
from aggregator.storage import Store

_store: Store | None = None  # this worker process's own connection (see init_worker)


def init_worker(database_url: str) -> None:
    """Open the worker process's database connection (the pool's initializer)."""
    global _store
    # The pipeline checkpoints SQLite's log, mostly outside the writers' lock (Pipeline._checkpoints).
    _store = Store(create_db_engine(database_url, checkpoints=False))


@dataclass(frozen=True)
class FeedJob:
    """A fetched feed to parse and store."""

    feed_url: str
    result: FetchResult
    now: datetime
    max_entries: int
    full_text: bool
    limits: PollLimits
    location: FeedLocation
    limit: float | None = None  # seconds for the parsing (extract.feed_timeout)


@dataclass(frozen=True)
class Ingested:
    """The outcome of ``ingest``: stored, or waiting for ``pages`` to be fetched first."""

    entries: int
    added: int = 0
    duplicates: int = 0
    warnings: tuple[str, ...] = ()
    # When pages must be fetched: the new entries, those whose page is wanted, the record.
    new: tuple[PreparedEntry, ...] = ()
    pages: tuple[str, ...] = ()
    record: FetchRecord | None = None

    @property
    def done(self) -> bool:
        return self.record is None


def ingest(job: FeedJob, store: Store | None = None) -> Ingested:
    """Parse the feed; store its new entries now, or say which pages to fetch first.

    Raises FetchError("not_a_feed" | "parse") when the document is no feed, FetchError("timeout")
    when its parsing takes longer than ``job.limit``.
    """
    store = store or _store
    assert store is not None, "init_worker() was not called"
    deadline = _deadline(job.limit)
    with _feed_limit(deadline, job.limit):
        identified = identify_feed(job.result, job.max_entries, job.now)
    parsed = identified.feed
    fresh, known_links = _new_entries(store, job.feed_url, identified.entries)
    with _feed_limit(deadline, job.limit):
        new = prepare_entries(fresh, job.result.final_url)
    hints = feed_hints(
        job.result.cache_control,
        parsed.ttl,
        parsed.update_period,
        parsed.update_frequency,
        parsed.skip_hours,
        parsed.skip_days,
    )
    dates = [p.entry.published for p in identified.entries if p.entry.published]
    interval = poll_interval(job.limits, hints, dates)
    record = FetchRecord(
        status=job.result.status,
        etag=job.result.etag,
        last_modified=job.result.last_modified,
        title=parsed.title,
        site_url=parsed.site_url,
        now=job.now,
        next_fetch=skip_to_allowed(job.now + interval, hints.skip_hours, hints.skip_days),
        poll_interval=interval.total_seconds(),
        location=job.location,
        warning="; ".join(parsed.warnings) or None,
    )
    # Check duplicates by URL before the costly step: a page stored already is not fetched.
    pages = tuple(
        item.key
        for item in new
        if job.full_text and item.link_key is not None and item.link_key not in known_links
    )
    if pages:
        return Ingested(
            len(identified.entries), warnings=parsed.warnings, new=tuple(new), pages=pages, record=record
        )
    articles = [build_article(job.feed_url, item, None, item.entry.url) for item in new]
    added, duplicates = store.store_refresh(job.feed_url, articles, record)
    return Ingested(len(identified.entries), added, duplicates, parsed.warnings)


def finish(
    feed_url: str,
    ingested: Ingested,
    pages: dict[str, tuple[ExtractedPage | None, str]],
    limit: float | None = None,
    store: Store | None = None,
) -> tuple[int, int]:
    """Store the new entries of ``ingested`` merged with their extracted pages.

    Raises FetchError("timeout") when merging them takes longer than ``limit`` seconds.
    """
    store = store or _store
    assert store is not None and ingested.record is not None
    articles = []
    with _feed_limit(_deadline(limit), limit):
        for item in ingested.new:
            page, final_url = pages.get(item.key, (None, item.entry.url))
            articles.append(build_article(feed_url, item, page, final_url))
    return store.store_refresh(feed_url, articles, ingested.record)


class _Overran(BaseException):
    """Raised by SIGALRM in a job past its time limit; BaseException so no broad except eats it."""


def _on_alarm(signum: int, frame: object) -> None:
    raise _Overran


def _deadline(limit: float | None) -> float | None:
    return None if limit is None else time.monotonic() + limit


@contextmanager
def _time_limit(deadline: float | None) -> Iterator[None]:
    """Raise _Overran in the code inside at ``deadline`` (``time.monotonic()``), at once if it
    has passed. Only in a worker process's main thread, where SIGALRM is delivered; in a thread
    (``extract.workers: 0``) the caller's own timeout is the only limit."""
    if deadline is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _Overran
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, remaining)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def _feed_limit(deadline: float | None, limit: float | None) -> Iterator[None]:
    """``_time_limit`` for a feed's parsing, which then fails as FetchError("timeout"); one that
    runs out of the memory a worker may use fails as FetchError("too_large")."""
    try:
        with _time_limit(deadline):
            yield
    except _Overran:
        raise FetchError("timeout", f"parsing the feed took longer than {limit:g}s") from None
    except MemoryError:
        raise FetchError("too_large", "parsing the feed took more memory than a worker may use") from None


def extract(
    body: bytes, url: str, selector: str | None, limit: float, feed_has: tuple[str, ...] = ()
) -> ExtractedPage | None:
    """Extract a page (``extractor.extract_page``), giving up with TimeoutError after ``limit``
    seconds (the worker then takes the next job).

    Raises ``bounds.Refused`` for a page over the bounds, or one whose extraction took more
    memory than a worker may use.
    """
    from aggregator.extractor import extract_page  # trafilatura: imported where it is used

    try:
        with _time_limit(time.monotonic() + limit):
            return extract_page(body, url, selector=selector, feed_has=feed_has)
    except _Overran:
        raise TimeoutError(f"the extraction took longer than {limit:g}s") from None
    except MemoryError:
        raise Refused("its extraction took more memory than a worker may use") from None


def _new_entries(
    store: Store, feed_url: str, entries: tuple[IdentifiedEntry, ...]
) -> tuple[list[IdentifiedEntry], set[str]]:
    """Return the entries not stored yet, and the link keys stored by any feed."""
    keyed: dict[str, IdentifiedEntry] = {}
    for item in entries:
        keyed.setdefault(item.key, item)
    links = [item.link_key for item in keyed.values() if item.link_key]
    seen = store.seen(feed_url, keyed, links)
    candidates = [item for key, item in keyed.items() if key not in seen.entry_keys]
    # Feeds that mint new GUIDs on every poll: an entry whose link this feed stored already is
    # not new. Links shared by several entries of this poll prove nothing and are skipped.
    link_count = Counter(item.link_key for item in candidates if item.link_key)
    new = [
        item
        for item in candidates
        if not (item.link_key in seen.feed_links and link_count[item.link_key] == 1)
    ]
    return new, seen.any_links
