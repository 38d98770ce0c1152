"""Turn fetched feed bytes into a ParsedFeed (RSS 0.9x/1.0/2.0 and Atom, through feedparser)."""

from __future__ import annotations

import calendar
import time
from datetime import UTC, datetime
from typing import Any

import feedparser

from aggregator.errors import FetchError
from aggregator.models import FetchResult, ParsedEntry, ParsedFeed

# Bozo exceptions that still leave a usable feed (wrong declared encoding and the like).
_BENIGN = (
    feedparser.CharacterEncodingOverride,
    feedparser.NonXMLContentType,
)


def parse_feed(result: FetchResult) -> ParsedFeed:
    """Return the feed in ``result``; raise FetchError("not_a_feed" | "parse") when there is none."""
    # Bytes plus headers only: given a str, feedparser may treat it as a path or URL to open.
    parsed = feedparser.parse(
        result.body,
        response_headers={
            "content-location": result.final_url,
            "content-type": result.content_type or "application/xml",
        },
        sanitize_html=True,
        resolve_relative_uris=True,
    )
    warnings: list[str] = []
    version = parsed.get("version") or ""
    if parsed.get("bozo"):
        problem = parsed.get("bozo_exception")
        if not parsed.entries and not version:
            if _looks_like_html(result):
                raise FetchError("not_a_feed", "the URL returned an HTML page, not a feed")
            raise FetchError("parse", f"not a valid feed: {problem}")
        if not isinstance(problem, _BENIGN):
            warnings.append(f"feed is malformed but readable: {problem}")
    elif not version and not parsed.entries:
        raise FetchError("not_a_feed", "the document is not an RSS or Atom feed")
    feed = parsed.get("feed", {})
    entries = tuple(_entry(e) for e in parsed.entries)
    return ParsedFeed(
        title=_text(feed.get("title")) or "",
        site_url=feed.get("link"),
        entries=entries,
        warnings=tuple(warnings),
    )


def _entry(raw: Any) -> ParsedEntry:
    content = ""
    for part in raw.get("content") or ():
        if part.get("value") and len(part["value"]) > len(content):
            content = part["value"]
    summary = raw.get("summary") or ""
    return ParsedEntry(
        guid=(raw.get("id") or "").strip() or None,
        url=_link(raw),
        title=_text(raw.get("title")) or "",
        summary_html=summary,
        content_html=content,
        # dict.get: FeedParserDict.get maps a missing key to another one, with a warning.
        published=_date(dict.get(raw, "published_parsed")) or _date(dict.get(raw, "updated_parsed")),
        updated=_date(dict.get(raw, "updated_parsed")),
        author=_text(raw.get("author")) or None,
    )


def _link(raw: Any) -> str | None:
    link = raw.get("link")
    if link:
        return str(link).strip()
    for candidate in raw.get("links") or ():
        if candidate.get("rel", "alternate") == "alternate" and candidate.get("href"):
            return str(candidate["href"]).strip()
    return None


def _date(value: time.struct_time | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromtimestamp(calendar.timegm(value), tz=UTC)
    except (OverflowError, ValueError, OSError):
        return None


def _text(value: Any) -> str:
    return " ".join(str(value).split()) if value else ""


def _looks_like_html(result: FetchResult) -> bool:
    head = result.body[:2048].lstrip().lower()
    return "html" in result.content_type.lower() or head.startswith((b"<!doctype html", b"<html"))
