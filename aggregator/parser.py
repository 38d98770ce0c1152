"""Turn fetched feed bytes into a ParsedFeed: RSS 0.9x/1.0/2.0 and Atom through feedparser,
JSON Feed 1.0/1.1 with the standard library. Also finds the feeds an HTML page links to."""

from __future__ import annotations

import calendar
import json
import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin

import feedparser
import lxml.html
from lxml import etree

from aggregator.errors import FetchError
from aggregator.models import FetchResult, ParsedEntry, ParsedFeed

# Bozo exceptions that still leave a usable feed (wrong declared encoding and the like).
_BENIGN = (
    feedparser.CharacterEncodingOverride,
    feedparser.NonXMLContentType,
)
_FEED_TYPES = (
    "application/rss+xml",
    "application/atom+xml",
    "application/feed+json",
    "application/json",
    "application/rdf+xml",
)
_JSON_FEED_VERSION = re.compile(r"^https?://jsonfeed\.org/version/1(\.1)?/?$")
_SKIP_HOURS = re.compile(rb"<skipHours\b[^>]*>(.*?)</skipHours>", re.S | re.I)
_SKIP_DAYS = re.compile(rb"<skipDays\b[^>]*>(.*?)</skipDays>", re.S | re.I)
_HOUR = re.compile(rb"<hour>\s*(\d{1,2})\s*</hour>", re.I)
_DAY = re.compile(rb"<day>\s*([A-Za-z]+)\s*</day>", re.I)


def parse_feed(result: FetchResult) -> ParsedFeed:
    """Return the feed in ``result``; raise FetchError("not_a_feed" | "parse") when there is none."""
    if not result.body.strip():
        raise FetchError("parse", "the response body is empty")
    if _looks_like_json(result):
        return parse_json_feed(result.body, result.final_url)
    head = result.body[:65536]
    if b"<!ENTITY" in head:
        # Internal DTD entities are how XML bombs expand; no real feed needs them.
        raise FetchError("parse", "the document declares XML entities; refused as unsafe")
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
            if looks_like_html(result):
                raise FetchError("not_a_feed", "the URL returned an HTML page, not a feed")
            if not result.body.strip():
                raise FetchError("parse", "the response body is empty")
            raise FetchError("parse", f"not a valid feed: {problem}")
        if not isinstance(problem, _BENIGN):
            warnings.append(f"feed is malformed but readable: {problem}")
    elif not version and not parsed.entries:
        if looks_like_html(result):
            raise FetchError("not_a_feed", "the URL returned an HTML page, not a feed")
        raise FetchError("not_a_feed", "the document is not an RSS or Atom feed")
    feed = parsed.get("feed", {})
    entries = tuple(_entry(e) for e in parsed.entries)
    return ParsedFeed(
        title=_text(feed.get("title")) or "",
        site_url=feed.get("link"),
        entries=entries,
        warnings=tuple(warnings),
        ttl=feed.get("ttl"),
        update_period=feed.get("sy_updateperiod"),
        update_frequency=feed.get("sy_updatefrequency"),
        skip_hours=_listed(_SKIP_HOURS, _HOUR, head),
        skip_days=_listed(_SKIP_DAYS, _DAY, head),
    )


def parse_json_feed(body: bytes, base_url: str) -> ParsedFeed:
    """Return a JSON Feed 1.0/1.1 document as a ParsedFeed; raise FetchError("parse") if invalid."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise FetchError("parse", f"not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise FetchError("parse", "a JSON Feed must be an object")
    version = document.get("version")
    if not isinstance(version, str) or not _JSON_FEED_VERSION.match(version):
        raise FetchError("not_a_feed", "JSON without a jsonfeed.org version: not a JSON Feed")
    items = document.get("items")
    if not isinstance(items, list):
        raise FetchError("parse", "JSON Feed without an items list")
    warnings: list[str] = []
    entries = []
    feed_authors = _json_authors(document)
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str | int):
            warnings.append(f"JSON Feed item {index} has no id; skipped")
            continue
        url = _json_str(item, "url") or _json_str(item, "external_url")
        content = _json_str(item, "content_html")
        if not content and _json_str(item, "content_text"):
            content = "".join(f"<p>{_escape(p)}</p>" for p in _json_str(item, "content_text").split("\n\n"))
        published = _rfc3339(_json_str(item, "date_published"))
        updated = _rfc3339(_json_str(item, "date_modified"))
        entries.append(
            ParsedEntry(
                guid=str(item["id"]),
                url=urljoin(base_url, url) if url else None,
                title=_text(_json_str(item, "title")),
                summary_html=_escape(_json_str(item, "summary")),
                content_html=content,
                published=published or updated,
                updated=updated,
                author=_json_authors(item) or feed_authors,
            )
        )
    home = _json_str(document, "home_page_url")
    return ParsedFeed(
        title=_text(_json_str(document, "title")),
        site_url=urljoin(base_url, home) if home else None,
        entries=tuple(entries),
        warnings=tuple(warnings),
    )


def find_feed_links(html: bytes, base_url: str) -> list[str]:
    """Return the feed URLs an HTML page advertises with <link rel="alternate" type=...>."""
    try:
        root = lxml.html.document_fromstring(html)
    except (etree.ParserError, ValueError):
        return []
    found: list[str] = []
    for link in root.iter("link"):
        rel = (link.get("rel") or "").lower().split()
        kind = (link.get("type") or "").lower().split(";")[0].strip()
        href = (link.get("href") or "").strip()
        if "alternate" in rel and kind in _FEED_TYPES and href:
            url = urljoin(base_url, href)
            if url.lower().startswith(("http://", "https://")) and url not in found:
                found.append(url)
    return found


def looks_like_html(result: FetchResult) -> bool:
    head = result.body[:2048].lstrip().lower()
    return "html" in result.content_type.lower() or head.startswith((b"<!doctype html", b"<html"))


def _looks_like_json(result: FetchResult) -> bool:
    kind = result.content_type.lower()
    return "json" in kind or result.body[:64].lstrip().startswith(b"{")


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


def _rfc3339(value: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def _json_str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    return value if isinstance(value, str) else ""


def _json_authors(obj: dict[str, Any]) -> str | None:
    names: list[str] = []
    authors = obj.get("authors")
    if isinstance(authors, list):
        names = [a["name"] for a in authors if isinstance(a, dict) and isinstance(a.get("name"), str)]
    author = obj.get("author")
    if not names and isinstance(author, dict) and isinstance(author.get("name"), str):
        names = [author["name"]]
    return ", ".join(_text(n) for n in names if n.strip()) or None


def _listed(block: re.Pattern[bytes], item: re.Pattern[bytes], head: bytes) -> tuple[str, ...]:
    match = block.search(head)
    if not match:
        return ()
    return tuple(v.decode("ascii", "ignore") for v in item.findall(match.group(1)))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _text(value: Any) -> str:
    return " ".join(str(value).split()) if value else ""
