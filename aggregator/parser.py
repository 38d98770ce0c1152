"""Turn fetched feed bytes into a ParsedFeed: RSS 0.9x/1.0/2.0 and Atom through feedparser,
JSON Feed 1.0/1.1 with the standard library. Also finds the feeds an HTML page links to."""

from __future__ import annotations

import calendar
import json
import re
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin

import feedparser
import lxml.html
from lxml import etree

from aggregator.errors import FetchError
from aggregator.models import FetchResult, ParsedEntry, ParsedFeed
from aggregator.sanitize import html_to_text

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
_ATOM = "{http://www.w3.org/2005/Atom}"
_CONTENT = "{http://purl.org/rss/1.0/modules/content/}"
_DC = "{http://purl.org/dc/elements/1.1/}"
_SY = "{http://purl.org/rss/1.0/modules/syndication/}"
# No entities, no network, no huge trees: a feed is data, never instructions to the parser.
_XML = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    huge_tree=False,
    remove_comments=True,
    remove_pis=True,
    load_dtd=False,
)


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
    fast = _fast_parse(result, head)
    if fast is not None:
        return fast
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


def _fast_parse(result: FetchResult, head: bytes) -> ParsedFeed | None:
    """Parse well-formed RSS 2.0 or Atom 1.0 with lxml, about ten times faster than feedparser.

    Returns None for anything else (RSS 1.0, xml:base, a document lxml will not take as it is),
    which feedparser then reads with all its leniency. The two agree on what they both read
    (tests/test_parser.py compares them); HTML is sanitised later, before it is stored.
    """
    if b"xml:base" in head:
        return None
    try:
        root = etree.fromstring(result.body, _XML)
    except (etree.XMLSyntaxError, ValueError):
        return None
    base = result.final_url
    if root.tag == "rss" and root.get("version", "2.0") in ("2.0", "0.91", "0.92", "0.93", "0.94"):
        channel = root.find("channel")
        if channel is None:
            return None
        entries = tuple(_rss_item(item, base) for item in channel.iter("item"))
        return ParsedFeed(
            title=_plain(channel.findtext("title")),
            site_url=_url(base, channel.findtext("link")),
            entries=entries,
            ttl=_strip(channel.findtext("ttl")),
            update_period=_strip(channel.findtext(f"{_SY}updatePeriod")),
            update_frequency=_strip(channel.findtext(f"{_SY}updateFrequency")),
            skip_hours=_listed(_SKIP_HOURS, _HOUR, head),
            skip_days=_listed(_SKIP_DAYS, _DAY, head),
        )
    if root.tag == f"{_ATOM}feed":
        feed_author = _atom_author(root)
        entries = tuple(_atom_entry(e, base, feed_author) for e in root.iter(f"{_ATOM}entry"))
        return ParsedFeed(
            title=_atom_text(root.find(f"{_ATOM}title")),
            site_url=_atom_link(root, base),
            entries=entries,
        )
    return None


def _rss_item(item: etree._Element, base: str) -> ParsedEntry:
    # The item's first child of each tag, found in one walk: what find() and findtext() give,
    # where each of their nine calls walked the children again through lxml's ElementPath.
    children: dict[object, etree._Element] = {}
    for child in item:
        children.setdefault(child.tag, child)

    def text(tag: str) -> str | None:
        element = children.get(tag)
        return None if element is None else element.text or ""

    guid_element = children.get("guid")
    guid = _strip(guid_element.text if guid_element is not None else None)
    link = _url(base, text("link"))
    permalink = guid_element is not None and guid_element.get("isPermaLink", "true").lower() == "true"
    if link is None and guid and permalink and "://" in guid:
        link = _url(base, guid)
    published = _rss_date(text("pubDate")) or _rss_date(text(f"{_DC}date"))
    author = _plain(text(f"{_DC}creator")) or _plain(text("author"))
    return ParsedEntry(
        guid=guid,
        url=link,
        title=_plain(text("title")),
        summary_html=text("description") or "",
        content_html=text(f"{_CONTENT}encoded") or "",
        published=published,
        updated=None,
        author=author or None,
    )


def _atom_entry(entry: etree._Element, base: str, feed_author: str | None) -> ParsedEntry:
    published = _rfc3339(entry.findtext(f"{_ATOM}published") or "")
    updated = _rfc3339(entry.findtext(f"{_ATOM}updated") or "")
    content = entry.find(f"{_ATOM}content")
    return ParsedEntry(
        guid=_strip(entry.findtext(f"{_ATOM}id")),
        url=_atom_link(entry, base),
        title=_atom_text(entry.find(f"{_ATOM}title")),
        summary_html=_atom_html(entry.find(f"{_ATOM}summary")),
        content_html="" if content is None or content.get("src") else _atom_html(content),
        published=published or updated,
        updated=updated,
        author=_atom_author(entry) or feed_author,
    )


def _atom_link(element: etree._Element, base: str) -> str | None:
    for link in element.findall(f"{_ATOM}link"):
        if link.get("rel", "alternate") == "alternate" and link.get("href"):
            return _url(base, link.get("href"))
    return None


def _atom_author(element: etree._Element) -> str | None:
    names = [_plain(a.findtext(f"{_ATOM}name")) for a in element.findall(f"{_ATOM}author")]
    return ", ".join(n for n in names if n) or None


def _atom_html(element: etree._Element | None) -> str:
    """Return an Atom text construct as HTML."""
    if element is None:
        return ""
    kind = element.get("type", "text")
    if kind == "xhtml":
        div = element.find("{http://www.w3.org/1999/xhtml}div")
        if div is None:
            return ""
        etree.cleanup_namespaces(div)
        inner = (div.text or "") + "".join(
            etree.tostring(child, encoding="unicode", method="html") for child in div
        )
        return inner.replace(' xmlns="http://www.w3.org/1999/xhtml"', "")
    text = element.text or ""
    return text if kind in ("html", "text/html") else _escape(text)


def _atom_text(element: etree._Element | None) -> str:
    if element is None:
        return ""
    if element.get("type", "text") in ("html", "xhtml", "text/html"):
        return _text(html_to_text(_atom_html(element)))
    return _text(element.text)


def _plain(value: str | None) -> str:
    """Titles and names: entities are decoded by the XML parser; markup in them is dropped."""
    if not value:
        return ""
    return _text(html_to_text(value) if "<" in value else value)


def _rss_date(value: str | None) -> datetime | None:
    if not value or not value.strip():
        return None
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        parsed = None
    if parsed is None:
        return _rfc3339(value) or _date(_feedparser_date(value))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def _feedparser_date(value: str) -> time.struct_time | None:
    # feedparser knows dozens of broken date formats seen in the wild; ask it last.
    try:
        return feedparser.datetimes._parse_date(value)  # type: ignore[attr-defined, no-any-return]
    except (AttributeError, ValueError, TypeError, OverflowError):
        return None


def _url(base: str, value: str | None) -> str | None:
    value = _strip(value)
    return urljoin(base, value) if value else None


def _strip(value: str | None) -> str | None:
    return value.strip() or None if value else None


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
