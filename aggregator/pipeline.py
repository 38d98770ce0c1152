"""Refreshing feeds: fetch, parse, keep only new entries, pull full text, store. Nothing else."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import random
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from aggregator.config import FeedConfig, Settings
from aggregator.dedup import canonical_url, entry_key, repeated_guids, text_hash, url_key
from aggregator.errors import FetchError, StorageError
from aggregator.extractor import extract_page
from aggregator.fetcher import PAGE_ACCEPT, Fetcher
from aggregator.models import ExtractedPage, NewArticle, ParsedEntry, RefreshOutcome
from aggregator.parser import parse_feed
from aggregator.sanitize import clean_html, html_to_text, text_to_html
from aggregator.store import Store

log = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(hours=24)


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
            return await self._failed(feed, exc.kind, str(exc), exc.status)
        except Exception as exc:  # a bug must not stop the other feeds; it is recorded
            log.exception("refresh crashed feed=%s", feed.url)
            return await self._failed(feed, "internal", f"{type(exc).__name__}: {exc}", None)

    async def _refresh(self, feed: FeedConfig) -> RefreshOutcome:
        state = await asyncio.to_thread(self.store.feed_state, feed.url)
        result = await self.fetcher.fetch(feed.url, etag=state.etag, last_modified=state.last_modified)
        now = self.clock()
        next_fetch = now + self.settings.interval_for(feed)
        if result.not_modified:
            await asyncio.to_thread(self.store.record_not_modified, feed.url, now=now, next_fetch=next_fetch)
            log.info("not modified feed=%s", feed.url)
            return RefreshOutcome(feed.url, ok=True, status=304, not_modified=True)
        parsed = parse_feed(result)
        repeated = repeated_guids(parsed.entries)
        keyed: dict[str, ParsedEntry] = {}
        for entry in parsed.entries:
            keyed.setdefault(entry_key(entry, repeated), entry)
        known = await asyncio.to_thread(self.store.known_entry_keys, feed.url, keyed)
        new = {key: entry for key, entry in keyed.items() if key not in known}
        # Check duplicates by URL before the costly step: a page stored already is not fetched.
        stored_urls = await asyncio.to_thread(
            self.store.known_url_keys, [url_key(e.url) for e in new.values() if e.url]
        )
        full_text = self.settings.full_text_for(feed)
        articles = await asyncio.gather(
            *(
                self._article(
                    feed,
                    key,
                    entry,
                    full_text and bool(entry.url) and url_key(entry.url or "") not in stored_urls,
                )
                for key, entry in new.items()
            )
        )
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
            next_fetch=next_fetch,
        )
        for warning in parsed.warnings:
            log.warning("%s feed=%s", warning, feed.url)
        log.info(
            "refreshed feed=%s entries=%d new=%d duplicates=%d",
            feed.url,
            len(parsed.entries),
            added,
            duplicates,
        )
        return RefreshOutcome(
            feed.url,
            ok=True,
            status=result.status,
            new_articles=added,
            duplicates=duplicates,
            warnings=parsed.warnings,
        )

    async def _article(self, feed: FeedConfig, key: str, entry: ParsedEntry, fetch_page: bool) -> NewArticle:
        url = entry.url or feed.url
        page: ExtractedPage | None = None
        final_url = url
        if fetch_page:
            page, final_url = await self._fetch_and_extract(url)
        feed_html = entry.content_html or entry.summary_html
        feed_text = html_to_text(feed_html)
        if page is not None and len(page.text.split()) >= len(feed_text.split()):
            text, html, extraction = page.text, page.html, "page"
        elif feed_text:
            text, html, extraction = feed_text, clean_html(feed_html, url), "feed"
        else:
            text, html, extraction = "", "", "none"
        article_url = _article_url(final_url, page.canonical_url if page else None)
        return NewArticle(
            feed_url=feed.url,
            entry_key=key,
            url=article_url,
            # The feed's headline is the publisher's own, without the "- Site Name" of <title>.
            title=entry.title or (page_title(page) if page else "") or article_url,
            author=(page.author if page and page.author else None) or entry.author,
            published=entry.published or (page.published if page else None),
            summary=html_to_text(entry.summary_html),
            text=text,
            html=html or text_to_html(text),
            extraction=extraction,
            content_hash=text_hash(text),
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
        loop = asyncio.get_running_loop()
        page = await loop.run_in_executor(
            self._extraction_executor(), extract_page, result.body, result.final_url
        )
        return page, result.final_url

    def _extraction_executor(self) -> Executor | None:
        workers = self.settings.extract.workers
        if workers == 0:
            return None  # the loop's default thread pool
        if self._executor is None:
            # spawn: forking a process that runs an event loop and threads is unsafe.
            self._executor = ProcessPoolExecutor(
                max_workers=workers or os.cpu_count() or 1,
                mp_context=multiprocessing.get_context("spawn"),
            )
        return self._executor

    async def _failed(self, feed: FeedConfig, kind: str, message: str, status: int | None) -> RefreshOutcome:
        now = self.clock()
        state = await asyncio.to_thread(self.store.feed_state, feed.url)
        delay = retry_delay(self.settings.interval_for(feed), state.consecutive_failures + 1)
        await asyncio.to_thread(
            self.store.record_failure,
            feed.url,
            kind=kind,
            message=message,
            status=status,
            now=now,
            next_fetch=now + delay,
        )
        log.warning("fetch failed feed=%s kind=%s status=%s error=%s", feed.url, kind, status, message)
        return RefreshOutcome(feed.url, ok=False, status=status, error_kind=kind, error=message)


def retry_delay(interval: timedelta, failures: int, rng: random.Random | None = None) -> timedelta:
    """Return the wait before the next try after ``failures`` failures in a row.

    Exponential from the feed's interval, capped at 24 h, with ±10 % jitter so feeds that
    failed together do not retry together.
    """
    base = min(interval * (2 ** max(0, failures - 1)), MAX_BACKOFF)
    jitter = (rng or random).uniform(0.9, 1.1)
    return min(base * jitter, MAX_BACKOFF)


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
