"""Refreshing feeds: fetch, parse, keep only new entries, pull full text, store. Nothing else."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aggregator.config import FeedConfig, Settings
from aggregator.dedup import canonical_url, key_of_canonical, text_hash
from aggregator.errors import FetchError, StorageError
from aggregator.extractor import extract_page
from aggregator.fetcher import PAGE_ACCEPT, Fetcher
from aggregator.models import (
    ExtractedPage,
    FetchResult,
    NewArticle,
    RefreshOutcome,
)
from aggregator.parser import find_feed_links, looks_like_html
from aggregator.polling import (
    PollLimits,
    cache_max_age,
    feed_hints,
    poll_interval,
    retry_after,
    skip_to_allowed,
)
from aggregator.prepare import PreparedEntry, PreparedFeed, prepare_feed
from aggregator.sanitize import text_to_html
from aggregator.store import FeedLocation, FeedState, Store

log = logging.getLogger(__name__)

# A permanent redirect seen on this many polls in a row is adopted as the feed's new URL.
MOVE_AFTER = 3
T = TypeVar("T")


@dataclass
class Pipeline:
    """The collaborators a refresh needs, passed in so tests can change the edges."""

    settings: Settings
    store: Store
    fetcher: Fetcher
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _executor: Executor | None = field(default=None, init=False)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    async def refresh_all(
        self,
        feeds: Sequence[FeedConfig],
        on_done: Callable[[RefreshOutcome], None] | None = None,
    ) -> list[RefreshOutcome]:
        """Refresh every feed concurrently; one feed's failure never stops the others."""
        await asyncio.to_thread(self.store.ensure_feeds, [f.url for f in feeds], self.clock())

        async def one(feed: FeedConfig) -> RefreshOutcome:
            outcome = await self.refresh_feed(feed)
            if on_done is not None:
                on_done(outcome)
            return outcome

        return list(await asyncio.gather(*(one(feed) for feed in feeds)))

    async def refresh_feed(self, feed: FeedConfig) -> RefreshOutcome:
        """Fetch one feed and store its new articles; failures are recorded on the feed."""
        try:
            return await self._refresh(feed)
        except StorageError:
            raise
        except FetchError as exc:
            return await self._failed(feed, exc)
        except Exception as exc:  # a bug must not stop the other feeds; it is recorded
            log.exception("refresh crashed feed=%s", feed.url)
            return await self._failed(feed, FetchError("internal", f"{type(exc).__name__}: {exc}"))

    async def _refresh(self, feed: FeedConfig) -> RefreshOutcome:
        state = await asyncio.to_thread(self.store.feed_state, feed.url)
        result = await self.fetcher.fetch(
            state.fetch_url or feed.url, etag=state.etag, last_modified=state.last_modified
        )
        location = _follow_moves(state, result)
        if result.not_modified:
            return await self._not_modified(feed, state, result, location)
        now = self.clock()
        prepared, result, location = await self._parse_or_discover(result, location, now)
        parsed = prepared.feed
        new = await self._new_entries(feed, prepared.entries)
        # Check duplicates by URL before the costly step: a page stored already is not fetched.
        stored_links = await asyncio.to_thread(
            self.store.known_url_keys, [p.link_key for p in new if p.link_key]
        )
        full_text = self.settings.full_text_for(feed)
        articles = await asyncio.gather(
            *(
                self._article(
                    feed,
                    item,
                    full_text and item.link_key is not None and item.link_key not in stored_links,
                )
                for item in new
            )
        )
        entries = [p.entry for p in prepared.entries]
        hints = feed_hints(
            result.cache_control,
            parsed.ttl,
            parsed.update_period,
            parsed.update_frequency,
            parsed.skip_hours,
            parsed.skip_days,
        )
        interval = poll_interval(self._limits(feed), hints, [e.published for e in entries if e.published])
        added, duplicates = await asyncio.to_thread(
            self.store.store_refresh,
            feed.url,
            articles,
            status=result.status,
            etag=result.etag,
            last_modified=result.last_modified,
            title=parsed.title,
            site_url=parsed.site_url,
            now=self.clock(),
            next_fetch=skip_to_allowed(now + interval, hints.skip_hours, hints.skip_days),
            poll_interval=interval.total_seconds(),
            location=location,
            warning="; ".join(parsed.warnings) or None,
        )
        for warning in parsed.warnings:
            log.warning("%s feed=%s", warning, feed.url)
        log.info(
            "refreshed feed=%s entries=%d new=%d duplicates=%d next_in=%s",
            feed.url,
            len(parsed.entries),
            added,
            duplicates,
            interval,
        )
        return RefreshOutcome(
            feed.url,
            ok=True,
            status=result.status,
            new_articles=added,
            duplicates=duplicates,
            warnings=parsed.warnings,
        )

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
        await asyncio.to_thread(
            self.store.record_not_modified,
            feed.url,
            now=now,
            next_fetch=now + interval,
            location=location,
        )
        log.info("not modified feed=%s", feed.url)
        return RefreshOutcome(feed.url, ok=True, status=304, not_modified=True)

    async def _parse_or_discover(
        self, result: FetchResult, location: FeedLocation, now: datetime
    ) -> tuple[PreparedFeed, FetchResult, FeedLocation]:
        """Parse the feed; for an HTML page, follow the feed it advertises (autodiscovery)."""
        limit = self.settings.fetch.max_entries
        try:
            return await self._cpu(prepare_feed, result, limit, now), result, location
        except FetchError as exc:
            if exc.kind != "not_a_feed" or not looks_like_html(result):
                raise
        links = find_feed_links(result.body, result.final_url)
        if not links:
            raise FetchError("not_a_feed", "an HTML page that advertises no feed")
        discovered = await self.fetcher.fetch(links[0])
        prepared = await self._cpu(prepare_feed, discovered, limit, now)
        log.info("discovered feed=%s at=%s", result.url, links[0])
        return prepared, discovered, FeedLocation(links[0], "discovered", None, 0)

    async def _new_entries(self, feed: FeedConfig, entries: tuple[PreparedEntry, ...]) -> list[PreparedEntry]:
        keyed: dict[str, PreparedEntry] = {}
        for item in entries:
            keyed.setdefault(item.key, item)
        known = await asyncio.to_thread(self.store.known_entry_keys, feed.url, keyed)
        candidates = [item for key, item in keyed.items() if key not in known]
        # Feeds that mint new GUIDs on every poll: an entry whose link this feed stored already
        # is not new. Links shared by several entries of this poll prove nothing and are skipped.
        link_count = Counter(item.link_key for item in candidates if item.link_key)
        unique = {key for key, count in link_count.items() if count == 1}
        seen = await asyncio.to_thread(self.store.known_feed_url_keys, feed.url, unique)
        return [item for item in candidates if item.link_key not in seen]

    async def _article(self, feed: FeedConfig, item: PreparedEntry, fetch_page: bool) -> NewArticle:
        entry = item.entry
        url = entry.url or feed.url
        page: ExtractedPage | None = None
        final_url = url
        if fetch_page:
            page, final_url = await self._fetch_and_extract(url)
        if page is not None and len(page.text.split()) >= len(item.text.split()):
            text, html, extraction = page.text, page.html, "page"
            content_hash = text_hash(text)
        elif item.text:
            text, html, extraction, content_hash = item.text, item.html, "feed", item.text_hash
        else:
            text, html, extraction, content_hash = "", "", "none", None
        article_url = _article_url(final_url, page.canonical_url if page else None)
        return NewArticle(
            feed_url=feed.url,
            entry_key=item.key,
            url=article_url,
            # The feed's headline is the publisher's own, without the "- Site Name" of <title>.
            title=entry.title or (page_title(page) if page else "") or article_url,
            author=(page.author if page and page.author else None) or entry.author,
            published=entry.published or (page.published if page else None),
            summary=item.summary,
            text=text,
            html=html or text_to_html(text),
            extraction=extraction,
            content_hash=content_hash,
            link_key=item.link_key,
            url_key=key_of_canonical(article_url),
        )

    async def _fetch_and_extract(self, url: str) -> tuple[ExtractedPage | None, str]:
        try:
            result = await self.fetcher.fetch(url, accept=PAGE_ACCEPT)
        except FetchError as exc:
            log.info("page not fetched url=%s kind=%s error=%s", url, exc.kind, exc)
            return None, url
        content_type = result.content_type.lower()
        if content_type and "html" not in content_type:
            log.info("page is not HTML url=%s content_type=%s", url, content_type)
            return None, result.final_url
        page = await self._cpu(extract_page, result.body, result.final_url)
        return page, result.final_url

    async def _cpu(self, function: Callable[..., T], *args: Any) -> T:
        """Run CPU-bound ``function`` in the worker processes (or a thread when workers is 0)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool(), function, *args)

    def _pool(self) -> Executor | None:
        workers = self.settings.workers
        if workers == 0:
            return None  # the loop's default thread pool
        if self._executor is None:
            # spawn: forking a process that runs an event loop and threads is unsafe.
            self._executor = ProcessPoolExecutor(
                max_workers=workers or os.cpu_count() or 1,
                mp_context=multiprocessing.get_context("spawn"),
            )
        return self._executor

    def _limits(self, feed: FeedConfig) -> PollLimits:
        fetch = self.settings.fetch
        return PollLimits(fetch.interval, feed.interval, fetch.min_interval, fetch.max_interval)

    async def _failed(self, feed: FeedConfig, exc: FetchError) -> RefreshOutcome:
        now = self.clock()
        message = str(exc)
        if exc.status == 410:
            await asyncio.to_thread(self.store.record_gone, feed.url, now=now, message=message)
            log.warning("feed is gone (410): no longer polled feed=%s", feed.url)
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
        log.warning(
            "fetch failed feed=%s kind=%s status=%s retry_in=%s error=%s",
            feed.url,
            exc.kind,
            exc.status,
            delay,
            message,
        )
        return RefreshOutcome(feed.url, ok=False, status=exc.status, error_kind=exc.kind, error=message)


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
        log.warning("feed moved permanently feed=%s to=%s", result.url, target)
        return FeedLocation(target, "moved", None, 0)
    return FeedLocation(fetch_url, reason, target, count)


def page_title(page: ExtractedPage) -> str:
    """Return the page's title without a trailing " - Site Name" or " | Site Name"."""
    title = page.title or ""
    if page.site_name:
        for separator in (" - ", " | ", " – ", " — ", " :: "):
            suffix = separator + page.site_name
            if title.endswith(suffix) and len(title) > len(suffix):
                return title[: -len(suffix)].strip()
    return title


def _article_url(final_url: str, canonical: str | None) -> str:
    """Prefer the page's canonical URL when it is on the same site as the page itself."""
    if canonical:
        page_host = (urlsplit(final_url).hostname or "").removeprefix("www.")
        canonical_host = (urlsplit(canonical).hostname or "").removeprefix("www.")
        if page_host and page_host == canonical_host:
            return canonical_url(canonical)
    return canonical_url(final_url)
