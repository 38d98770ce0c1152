"""Plain values passed between the pipeline's stages. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class FetchResult:
    """One HTTP response, already size-capped and fully read."""

    url: str
    final_url: str
    status: int
    body: bytes
    content_type: str
    etag: str | None
    last_modified: str | None
    fetched_at: datetime
    cache_control: str | None = None
    # The final URL when every redirect on the way was permanent (301/308), else None.
    permanent_redirect: str | None = None

    @property
    def not_modified(self) -> bool:
        return self.status == 304


@dataclass(frozen=True)  # no slots: sent between processes, and slots pickle slowly
class ParsedEntry:
    """One feed item as the feed describes it."""

    guid: str | None
    url: str | None
    title: str
    summary_html: str
    content_html: str
    published: datetime | None
    updated: datetime | None
    author: str | None


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    title: str
    site_url: str | None
    entries: tuple[ParsedEntry, ...]
    warnings: tuple[str, ...] = ()
    # Publisher hints about polling, raw (see polling.feed_hints).
    ttl: str | None = None
    update_period: str | None = None
    update_frequency: str | None = None
    skip_hours: tuple[str, ...] = ()
    skip_days: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ExtractedPage:
    """What the full-text extractor found on an article page."""

    text: str
    html: str
    title: str | None
    author: str | None
    published: datetime | None
    canonical_url: str | None
    language: str | None
    site_name: str | None = None
    image: str | None = None


@dataclass(frozen=True, slots=True)
class NewArticle:
    """An article ready to be stored."""

    feed_url: str
    entry_key: str
    url: str
    title: str
    author: str | None
    published: datetime | None
    summary: str
    text: str
    html: str
    extraction: str  # "page" | "feed" | "none"
    content_hash: str | None
    link_key: str | None = None  # dedup.url_key of the entry's own link
    url_key: str | None = None  # dedup.url_key(url), when the caller computed it already


@dataclass(frozen=True, slots=True)
class StoredArticle:
    id: int
    feed_url: str
    feed_name: str  # the feed's own title, "" until known (config.feed_label names the feed)
    url: str
    title: str
    author: str | None
    published: datetime | None
    first_seen: datetime
    summary: str
    text: str
    html: str
    extraction: str
    duplicate_of: int | None


@dataclass(frozen=True, slots=True)
class FeedStatus:
    """What `aggregator feeds` shows for one configured feed."""

    url: str
    name: str
    last_fetch: datetime | None
    last_status: int | None
    last_error: str | None
    error_kind: str | None
    consecutive_failures: int
    next_fetch: datetime | None
    article_count: int
    fetch_url: str | None = None  # polled instead of url: discovered feed or accepted move
    fetch_url_reason: str | None = None  # "discovered" | "moved"
    moved_to: str | None = None  # a permanent redirect seen, not yet adopted
    gone: bool = False  # 410 Gone: no longer polled
    poll_interval: float | None = None  # seconds between polls, as last decided
    last_warning: str | None = None  # a malformed but readable feed says so here
    title: str | None = None  # the feed's own title, once fetched


@dataclass(frozen=True, slots=True)
class RefreshOutcome:
    """The result of refreshing one feed."""

    feed_url: str
    ok: bool
    status: int | None = None
    new_articles: int = 0
    duplicates: int = 0
    not_modified: bool = False
    error_kind: str | None = None
    error: str | None = None
    warnings: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class FeedLocation:
    """Where a feed is polled: the URL in use and a permanent move being watched."""

    fetch_url: str | None
    fetch_url_reason: str | None
    moved_to: str | None
    moved_count: int

    def values(self) -> dict[str, object]:
        """The feed row's columns that hold this location."""
        return {
            "fetch_url": self.fetch_url,
            "fetch_url_reason": self.fetch_url_reason,
            "moved_to": self.moved_to,
            "moved_count": self.moved_count,
        }


@dataclass(frozen=True, slots=True)
class FeedState:
    """What a refresh needs to know from the feed's last polls."""

    etag: str | None
    last_modified: str | None
    consecutive_failures: int
    fetch_url: str | None = None
    fetch_url_reason: str | None = None
    moved_to: str | None = None
    moved_count: int = 0
    gone: bool = False
    poll_interval: float | None = None


@dataclass(frozen=True)
class FetchRecord:
    """A successful full poll of a feed, stored with its new articles."""

    status: int
    etag: str | None
    last_modified: str | None
    title: str | None
    site_url: str | None
    now: datetime
    next_fetch: datetime
    poll_interval: float | None = None
    location: FeedLocation | None = None
    warning: str | None = None


@dataclass(frozen=True)
class NotModified:
    """A poll answered 304 Not Modified."""

    feed_url: str
    now: datetime
    next_fetch: datetime
    location: FeedLocation | None = None


@dataclass(frozen=True, slots=True)
class Seen:
    """What the database knows of a poll's entries (``Store.seen``)."""

    entry_keys: set[str]  # entry keys this feed has stored
    feed_links: set[str]  # link keys this feed has stored, as a page URL or an entry link
    any_links: set[str]  # link keys any feed has stored


@dataclass(frozen=True)
class SentRun:
    """A digest delivered: what the archive site lists."""

    id: int
    digest_name: str
    run_key: str
    sent_at: datetime
    stories: int  # articles it covered, duplicates included
    has_html: bool  # sent since the HTML is kept (migration 0009)


@dataclass(frozen=True, slots=True)
class PendingRun:
    """A digest run recorded before sending and not delivered yet."""

    id: int
    run_key: str
    created_at: datetime
    articles: list[StoredArticle]
