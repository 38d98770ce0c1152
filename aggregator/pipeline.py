"""Refreshing feeds: fetch, parse, keep only new entries, pull full text, store. Nothing else.

The network half runs here, on the event loop; the CPU-bound half (parsing, HTML work,
database writes, extraction) runs in the worker processes (``worker.py``), one per core.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aggregator import metrics
from aggregator.bounds import Refused
from aggregator.config import FeedConfig, Settings
from aggregator.errors import FetchError, StorageError
from aggregator.fetcher import PAGE_ACCEPT, Fetcher
from aggregator.logs import fields
from aggregator.models import ExtractedPage, FeedLocation, FeedState, FetchResult, NotModified, RefreshOutcome
from aggregator.parser import find_feed_links, looks_like_html
from aggregator.polling import PollLimits, cache_max_age, poll_interval, retry_after
from aggregator.storage import Store
from aggregator.worker import FeedJob, Ingested, extract, finish, ingest, init_worker
from aggregator.workers import WorkerPool

log = logging.getLogger(__name__)

# A permanent redirect seen on this many polls in a row is adopted as the feed's new URL.
MOVE_AFTER = 3
# How often the write-ahead log of SQLite is checkpointed during a refresh (see _checkpoints).
CHECKPOINT_EVERY = 1.0
# A host whose pages time out (or kill their worker) this often in a pass gets no more
# extractions in it: its other pages get their feed's text at once.
STRIKES = 2
T = TypeVar("T")


class _Struck(Exception):
    """A page whose host was struck out (``STRIKES``) while it waited for a worker."""


@dataclass
class Pipeline:
    """The collaborators a refresh needs, passed in so tests can change the edges."""

    settings: Settings
    store: Store
    fetcher: Fetcher
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # Worker processes started already (start_workers); the pipeline owns and closes them.
    workers: WorkerPool | None = None
    _running: WorkerPool | None = field(default=None, init=False)  # the pool in use
    _unchanged: list[NotModified] = field(default_factory=list, init=False)
    _bounds: dict[str, asyncio.Semaphore] = field(default_factory=dict, init=False)
    _host_bounds: dict[str, asyncio.Semaphore] = field(default_factory=dict, init=False)
    _strikes: dict[str, int] = field(default_factory=dict, init=False)  # host -> timeouts
    _host_extractions: dict[str, asyncio.Semaphore] = field(default_factory=dict, init=False)
    _passes: int = field(default=0, init=False)  # refresh_all calls running (the service overlaps them)

    def __post_init__(self) -> None:
        self._running = self.workers

    def close(self) -> None:
        if self._running is not None:
            self._running.shutdown(wait=True)
            self._running = None

    async def refresh_all(
        self,
        feeds: Sequence[FeedConfig],
        on_done: Callable[[RefreshOutcome], None] | None = None,
    ) -> list[RefreshOutcome]:
        """Refresh every feed concurrently; one feed's failure never stops the others."""
        urls = [f.url for f in feeds]
        await asyncio.to_thread(self.store.ensure_feeds, urls, self.clock())
        states = await asyncio.to_thread(self.store.feed_states, urls)

        async def one(feed: FeedConfig) -> RefreshOutcome:
            outcome = await self._refresh_one(feed, states.get(feed.url))
            kind = (
                "not_modified"
                if outcome.not_modified
                else ("ok" if outcome.ok else outcome.error_kind or "error")
            )
            metrics.count("aggregator_fetches_total", outcome=kind)
            metrics.count("aggregator_articles_stored_total", outcome.new_articles)
            metrics.count("aggregator_duplicates_total", outcome.duplicates)
            if on_done is not None:
                on_done(outcome)
            return outcome

        # Only the worker processes' commits leave checkpoints to us; asking _pool() here would
        # start the workers for a pass of 304s that needs none.
        workers = self.settings.extract.workers != 0
        checkpoints = asyncio.ensure_future(self._checkpoints()) if workers else None
        self._passes += 1
        try:
            return list(await asyncio.gather(*(one(feed) for feed in feeds)))
        finally:
            self._passes -= 1
            if not self._passes:
                self._strikes.clear()  # the next pass tries every host again
            await self._record_unchanged()
            if checkpoints is not None:
                checkpoints.cancel()
                await asyncio.gather(checkpoints, return_exceptions=True)
                await self._checkpoint()

    async def _checkpoints(self) -> None:
        """Checkpoint SQLite's log every CHECKPOINT_EVERY while the workers write.

        Their commits do not (database.create_db_engine(checkpoints=False)): a checkpoint inside
        a commit held the writers' lock for its copy and two syncs, a third of the time the
        other worker spent waiting for it.
        """
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY)
            await self._checkpoint()

    async def _checkpoint(self) -> None:
        try:
            await asyncio.to_thread(self.store.checkpoint)
        except StorageError as exc:  # the next one may succeed; the writers carry on
            log.warning("%s", exc)

    async def _record_unchanged(self) -> None:
        batch, self._unchanged = self._unchanged, []
        await asyncio.to_thread(self.store.record_not_modified, batch)

    async def _refresh_one(self, feed: FeedConfig, state: FeedState | None) -> RefreshOutcome:
        """Fetch one feed and store its new articles; failures are recorded on the feed."""
        try:
            if state is None:
                state = await asyncio.to_thread(self.store.feed_state, feed.url)
            return await self._refresh(feed, state)
        except StorageError:
            raise
        except FetchError as exc:
            return await self._failed(feed, exc)
        except Exception as exc:  # a bug must not stop the other feeds; it is recorded
            log.exception("refresh crashed", extra=fields(feed=feed.url))
            return await self._failed(feed, FetchError("internal", f"{type(exc).__name__}: {exc}"))

    async def _refresh(self, feed: FeedConfig, state: FeedState) -> RefreshOutcome:
        # Feeds are fetched faster than the workers parse them: at most fetch.concurrency
        # fetched documents wait for a worker (10,000 feeds held 600 MB of bodies otherwise).
        # A feed keeps its slot until its articles are stored, pages included: feeds are
        # fetched far faster than their pages are extracted, and every waiting feed held its
        # parsed entries (200 feeds with full text: the service's process peaked at 137 MB,
        # now 109 MB).
        async with self._slots("feeds"):
            fetched = await self._fetch_and_ingest(feed, state)
            if isinstance(fetched, RefreshOutcome):
                return fetched
            result, ingested = fetched
            added, duplicates = ingested.added, ingested.duplicates
            if not ingested.done:
                pages = await self._pages(feed, ingested)
                limit = self._feed_limit()
                added, duplicates = await self._in_worker(finish, feed.url, ingested, pages, limit)
        for warning in ingested.warnings:
            log.warning(warning, extra=fields(feed=feed.url))
        # A poll that brought nothing new is routine: the pass summary counts it.
        log.log(
            logging.INFO if added else logging.DEBUG,
            "refreshed",
            extra=fields(feed=feed.url, entries=ingested.entries, new=added, duplicates=duplicates),
        )
        return RefreshOutcome(
            feed.url,
            ok=True,
            status=result.status,
            new_articles=added,
            duplicates=duplicates,
            warnings=ingested.warnings,
        )

    async def _fetch_and_ingest(
        self, feed: FeedConfig, state: FeedState
    ) -> RefreshOutcome | tuple[FetchResult, Ingested]:
        """Fetch the feed and hand it to a worker: the outcome of a 304, or what was ingested."""
        result = await self.fetcher.fetch(
            state.fetch_url or feed.url,
            etag=state.etag,
            last_modified=state.last_modified,
            credentials=feed.credentials,
        )
        location = _follow_moves(state, result)
        if result.not_modified:
            return await self._not_modified(feed, state, result, location)
        now = self.clock()
        try:
            ingested = await self._in_worker(ingest, self._job(feed, result, now, location))
        except FetchError as exc:
            if exc.kind != "not_a_feed" or not looks_like_html(result):
                raise
            # Autodiscovery: the URL is a web page; poll the feed it advertises from now on.
            links = find_feed_links(result.body, result.final_url)
            if not links:
                raise FetchError("not_a_feed", "an HTML page that advertises no feed") from None
            result = await self.fetcher.fetch(links[0], credentials=feed.credentials)
            location = FeedLocation(links[0], "discovered", None, 0)
            ingested = await self._in_worker(ingest, self._job(feed, result, now, location))
            log.info("discovered the feed of a web page", extra=fields(feed=feed.url, at=links[0]))
        return result, ingested

    def _job(self, feed: FeedConfig, result: FetchResult, now: datetime, location: FeedLocation) -> FeedJob:
        return FeedJob(
            feed_url=feed.url,
            result=result,
            now=now,
            max_entries=self.settings.fetch.max_entries,
            full_text=self.settings.full_text_for(feed),
            limits=self._limits(feed),
            location=location,
            limit=self._feed_limit(),
        )

    async def _pages(
        self, feed: FeedConfig, ingested: Ingested
    ) -> dict[str, tuple[ExtractedPage | None, str]]:
        wanted = set(ingested.pages)
        items = [item for item in ingested.new if item.key in wanted]
        fetched = await asyncio.gather(
            *(
                self._fetch_and_extract(item.entry.url or feed.url, feed.selector, item.feed_has(), feed.url)
                for item in items
            )
        )
        return {item.key: page for item, page in zip(items, fetched, strict=True)}

    async def _fetch_and_extract(
        self,
        url: str,
        selector: str | None = None,
        feed_has: tuple[str, ...] = (),
        feed_url: str | None = None,
    ) -> tuple[ExtractedPage | None, str]:
        """Fetch a page and extract it, at most ``fetch.concurrency`` pages at once from fetch
        to extraction: pages are fetched faster than they are extracted, and without a bound
        every fetched body of a large pass waited in memory for a worker (4,000 pages: 570 MB).

        One host's pages hold at most twice ``fetch.per_host`` of those places (as many being
        fetched, as many waiting for a worker): the places were taken before the fetcher's host
        limit, so the pages of one slow site, queued for its host, held them all and the other
        sites' pages waited behind it.

        Pages wait for a worker a feed at a time, in turn (``feed_url``), behind the feeds'
        parsing and storing: one feed's slow pages hold up no other feed for long."""
        async with self._host_pages(url), self._slots("pages"):
            try:
                return await self._fetch_and_extract_now(url, selector, feed_has, feed_url)
            except StorageError:
                raise
            except Exception:  # a page no rule foresaw costs its entry the page, not the feed
                log.exception("page not extracted", extra=fields(url=url))
                return None, url

    def _host_pages(self, url: str) -> asyncio.Semaphore:
        host = urlsplit(url).hostname or ""
        if host not in self._host_bounds:
            self._host_bounds[host] = asyncio.Semaphore(2 * self.settings.fetch.per_host)
        return self._host_bounds[host]

    async def _fetch_and_extract_now(
        self, url: str, selector: str | None, feed_has: tuple[str, ...], feed_url: str | None = None
    ) -> tuple[ExtractedPage | None, str]:
        host = urlsplit(url).hostname or ""
        if self._struck(host, url):
            return None, url
        try:
            result = await self.fetcher.fetch(url, accept=PAGE_ACCEPT)
        except FetchError as exc:
            log.info("page not fetched", extra=fields(url=url, kind=exc.kind, error=str(exc)))
            return None, url
        content_type = result.content_type.lower()
        if content_type and "html" not in content_type:
            log.info("page is not HTML", extra=fields(url=url, content_type=content_type))
            return None, result.final_url
        limit = self.settings.extract.timeout.total_seconds()
        started = time.monotonic()
        try:
            # The worker gives up at the limit itself; this one is the backstop for a worker
            # stuck in C code, where its alarm cannot reach it: the pool kills that worker and
            # starts another, and the other workers carry on.
            page = await self._extract(
                host,
                result.body,
                result.final_url,
                selector,
                limit,
                feed_has,
                timeout=limit * 2 + 5,
                group=feed_url or url,
            )
        except _Struck:
            self._struck(host, url)
            return None, result.final_url
        except Refused as exc:
            log.info("page not extracted", extra=fields(url=url, reason=str(exc)))
            metrics.count("aggregator_extractions_total", result="refused")
            return None, result.final_url
        except TimeoutError:
            log.warning("extraction timed out", extra=fields(url=url, limit=timedelta(seconds=limit)))
            metrics.count("aggregator_extractions_total", result="timeout")
            self._strike(host)
            return None, result.final_url
        except BrokenProcessPool:
            log.warning("extraction killed its worker process twice", extra=fields(url=url))
            metrics.count("aggregator_extractions_total", result="crashed")
            self._strike(host)
            return None, result.final_url
        finally:
            metrics.count("aggregator_extraction_seconds_total", time.monotonic() - started)
        metrics.count("aggregator_extractions_total", result="page" if page else "none")
        if page is None:
            log.info("no article text extracted", extra=fields(url=url))
        return page, result.final_url

    async def _extract(self, host: str, *args: Any, timeout: float, group: str) -> ExtractedPage | None:
        """``worker.extract`` in the pool, with at most twice as many of ``host``'s pages in it
        (running or waiting) as there are workers: enough to keep them busy, few enough that
        once the host is struck out (``STRIKES``) the pages behind are not extracted.

        Raises _Struck for a page that waited while its host was struck out.
        """
        if host not in self._host_extractions:
            workers = self.settings.extract.workers or os.cpu_count() or 1
            self._host_extractions[host] = asyncio.Semaphore(2 * workers)
        async with self._host_extractions[host]:
            if self._strikes.get(host, 0) >= STRIKES:
                raise _Struck
            return await self._cpu(extract, *args, timeout=timeout, group=group)

    def _struck(self, host: str, url: str) -> bool:
        """Whether ``host``'s pages time out too often this pass to be tried (STRIKES)."""
        if self._strikes.get(host, 0) < STRIKES:
            return False
        log.debug("page not extracted", extra=fields(url=url, reason="its host's pages timed out"))
        metrics.count("aggregator_extractions_total", result="skipped")
        return True

    def _strike(self, host: str) -> None:
        self._strikes[host] = self._strikes.get(host, 0) + 1
        if self._strikes[host] == STRIKES:
            log.warning("no more extractions this pass", extra=fields(host=host, timeouts=STRIKES))

    async def _not_modified(
        self, feed: FeedConfig, state: FeedState, result: FetchResult, location: FeedLocation
    ) -> RefreshOutcome:
        # A 304 costs no parsing: keep the interval decided from the last full response.
        limits = self._limits(feed)
        interval = timedelta(seconds=state.poll_interval) if state.poll_interval else poll_interval(limits)
        max_age = cache_max_age(result.cache_control)
        if max_age and limits.per_feed is None:
            interval = min(max(interval, max_age), limits.maximum)
        now = self.clock()
        # Recorded in batches: one transaction per few hundred unchanged feeds, not per feed.
        self._unchanged.append(NotModified(feed.url, now, now + interval, location))
        if len(self._unchanged) >= 500:
            await self._record_unchanged()
        log.debug("not modified", extra=fields(feed=feed.url))
        return RefreshOutcome(feed.url, ok=True, status=304, not_modified=True)

    async def _in_worker(self, function: Callable[..., T], *args: Any) -> T:
        """Run a worker.py step on one feed: in a worker process, ahead of the pages waiting for
        one, or in a thread given our own Store.

        The worker interrupts its own parsing at extract.feed_timeout (FetchError "timeout");
        past twice that and 5 s (stuck in C code, or in the database) it is killed and the feed
        fails the same way. A killed worker's transaction dies with its connection.
        """
        backstop = self._feed_limit() * 2 + 5
        pool = self._pool()
        try:
            if pool is None:
                async with asyncio.timeout(backstop):  # a thread is only no longer waited for
                    return await asyncio.to_thread(functools.partial(function, *args, store=self.store))
            return await self._in_pool(pool, functools.partial(function, *args), backstop, urgent=True)
        except TimeoutError:
            raise FetchError("timeout", f"the feed's worker job ran over {backstop:g}s") from None

    def _feed_limit(self) -> float:
        return self.settings.extract.feed_timeout.total_seconds()

    async def _cpu(
        self,
        function: Callable[..., T],
        *args: Any,
        timeout: float | None = None,
        group: str | None = None,
    ) -> T:
        """Run a pure CPU-bound function in the worker processes (or a thread), given up with
        TimeoutError after ``timeout`` seconds of running; waiting jobs of a ``group`` take
        turns with the other groups'."""
        pool = self._pool()
        call = functools.partial(function, *args)
        if pool is None:
            # A thread cannot be stopped: it is only no longer waited for.
            async with asyncio.timeout(timeout):
                return await asyncio.to_thread(call)
        return await self._in_pool(pool, call, timeout, group=group)

    async def _in_pool(
        self,
        pool: WorkerPool,
        call: Callable[[], T],
        timeout: float | None = None,
        *,
        urgent: bool = False,
        group: str | None = None,
    ) -> T:
        try:
            return await pool.run(call, timeout=timeout, urgent=urgent, group=group)
        except BrokenProcessPool:
            # Its worker died running it (killed, out of memory, a crash in C code), and the
            # pool replaced that worker; or the pool gave up after its workers kept dying, and
            # a new one takes over. The job runs once more: one that kills its worker a second
            # time fails for good.
            if pool.broken:
                self._discard(pool)
                new = self._pool()
                assert new is not None
                pool = new
            return await pool.run(call, timeout=timeout, urgent=urgent, group=group)

    def _discard(self, pool: WorkerPool) -> None:
        """Stop using ``pool``, which gave up; the next job starts another."""
        if self._running is pool:
            self._running = None
            log.warning("worker processes replaced: they kept dying")
        # The jobs its other workers still hold fail with BrokenProcessPool, and run again in
        # the new pool.
        pool.shutdown(wait=False)

    def _pool(self) -> WorkerPool | None:
        workers = self.settings.extract.workers
        if workers == 0:
            return None
        if self._running is None:
            self._running = start_workers(self.settings)
        return self._running

    def _slots(self, stage: str) -> asyncio.Semaphore:
        """The bound on documents of ``stage`` between their fetch and their worker."""
        if stage not in self._bounds:
            self._bounds[stage] = asyncio.Semaphore(self.settings.fetch.concurrency)
        return self._bounds[stage]

    def _limits(self, feed: FeedConfig) -> PollLimits:
        fetch = self.settings.fetch
        return PollLimits(fetch.interval, feed.interval, fetch.min_interval, fetch.max_interval)

    async def _failed(self, feed: FeedConfig, exc: FetchError) -> RefreshOutcome:
        now = self.clock()
        message = str(exc)
        if exc.status == 410:
            await asyncio.to_thread(self.store.record_gone, feed.url, now=now, message=message)
            log.warning("feed is gone (410): no longer polled", extra=fields(feed=feed.url))
            return RefreshOutcome(feed.url, ok=False, status=410, error_kind="gone", error=message)
        state = await asyncio.to_thread(self.store.feed_state, feed.url)
        cap = self.settings.fetch.max_backoff
        delay = retry_delay(self.settings.interval_for(feed), state.consecutive_failures + 1, cap)
        asked = retry_after(exc.retry_after, now)
        if asked is not None:
            delay = max(delay, min(asked, cap))
        await asyncio.to_thread(
            self.store.record_failure,
            feed.url,
            kind=exc.kind,
            message=message,
            status=exc.status,
            now=now,
            next_fetch=now + delay,
        )
        # Each thing once: the status is in an HTTP error's message already.
        shown = message.removeprefix(f"HTTP {exc.status}").strip() if exc.status else message
        log.warning(
            "fetch failed",
            extra=fields(
                feed=feed.url,
                kind=None if exc.kind == "http" else exc.kind,
                status=exc.status,
                retry_in=delay,
                error=shown or None,
            ),
        )
        return RefreshOutcome(feed.url, ok=False, status=exc.status, error_kind=exc.kind, error=message)


def will_parse(state: FeedState | None) -> bool:
    """True when the feed's next poll is sure to bring a document to parse: it was never
    fetched, or it keeps no validators for a conditional request."""
    return state is None or not (state.etag or state.last_modified)


def start_workers(settings: Settings, *, fork: bool = False) -> WorkerPool | None:
    """Start the worker processes (``extract.workers``; none for 0) and return their pool.

    ``fork=True`` is for a caller that holds no database connection (``aggregator fetch``,
    before its pass): when this process also runs no other thread, on Linux, the workers are
    forked. They start at once with every module this process imported, instead of each
    starting an interpreter and importing it all again (about 0.5 s of CPU a worker, and the
    pass waited that long for its first feed). Otherwise they are spawned: a forked child
    inherits the locks other threads hold and SQLite's record of the locks this process holds.
    """
    workers = settings.extract.workers
    if workers == 0:
        return None
    fork = fork and sys.platform == "linux" and threading.active_count() == 1
    if fork:
        _import_worker_modules()
    count = workers or os.cpu_count() or 1
    method = "fork" if fork else "spawn"
    pool = WorkerPool(
        count,
        method=method,
        initializer=init_worker,
        initargs=(settings.database_url,),
        max_memory=settings.extract.max_worker_memory,
    )
    log.debug("started worker", extra=fields(processes=count, method=method))
    return pool


def _import_worker_modules() -> None:
    """Import what the workers' refreshes import on first use, so that forked workers inherit
    it. Not trafilatura: every process of the tree would count its pages in the peak RSS of
    the end-to-end benchmark (386 against 376-380 MB), for 0.1 s of CPU a worker."""
    import courlan  # noqa: F401
    import numpy  # noqa: F401


def retry_delay(
    interval: timedelta,
    failures: int,
    cap: timedelta = timedelta(hours=24),
    rng: random.Random | None = None,
) -> timedelta:
    """Return the wait before the next try after ``failures`` failures in a row.

    Exponential from the feed's interval, capped, with ±10 % jitter so feeds that failed
    together do not retry together.
    """
    base = min(interval * (2 ** min(max(0, failures - 1), 30)), cap)
    jitter = (rng or random).uniform(0.9, 1.1)
    return min(base * jitter, cap)


def _follow_moves(state: FeedState, result: FetchResult) -> FeedLocation:
    """Count polls that end in the same permanent redirect; adopt the target after MOVE_AFTER."""
    fetch_url, reason = state.fetch_url, state.fetch_url_reason
    target = result.permanent_redirect
    if target is None:
        return FeedLocation(fetch_url, reason, None, 0)
    count = state.moved_count + 1 if target == state.moved_to else 1
    if count >= MOVE_AFTER:
        log.warning("feed moved permanently", extra=fields(feed=result.url, to=target))
        return FeedLocation(target, "moved", None, 0)
    return FeedLocation(fetch_url, reason, target, count)
