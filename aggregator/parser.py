"""Turn fetched feed bytes into a ParsedFeed: RSS 0.9x/1.0/2.0 and Atom through feedparser,
JSON Feed 1.0/1.1 with the standard library. Also finds the feeds an HTML page links to."""

from __future__ import annotations

import calendar
import io
import json
import re
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import feedparser
import lxml.html
from lxml import etree

from aggregator.controls import clean_text
from aggregator.errors import FetchError
from aggregator.internals.feeds import loose_date
from aggregator.links import safe_link
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
# A feed is data, never instructions to the parser: no network, no external entities, no DTD,
# no huge trees. Entities the document declares itself (``<!ENTITY copy "&#169;">``) are
# expanded: libxml2 refuses a document whose entities expand past a fixed factor of its size
# (billion laughs, quadratic blow-up) or refer to themselves, and that refusal is final.
_XML = etree.XMLParser(
    resolve_entities="internal",
    no_network=True,
    huge_tree=False,
    remove_comments=True,
    remove_pis=True,
    load_dtd=False,
)


# libxml2's and expat's words for a document whose entities expand without bound.
_ENTITY_BOMB = "amplification"
_ENTITY_BOMB_MESSAGE = "the document's XML entities expand without bound (an XML bomb); refused"
# Entry ids longer than this are cut: they are only hashed, and no real one comes close.
MAX_GUID = 2048


class _BadEntry(ValueError):
    """An entry that cannot be read, for the reason given."""


class _Problems:
    """What was wrong with some entries of a feed that is read all the same."""

    def __init__(self) -> None:
        self.skipped: list[str] = []
        self.bad_links = 0
        self.empty = 0

    def link(self, value: str | None, base: str | None) -> str | None:
        """``value`` as a safe link (``links.safe_link``); a link that is none is counted."""
        if not value or not value.strip():
            return None
        url = safe_link(value, base)
        if url is None:
            self.bad_links += 1
        return url

    def warnings(self) -> tuple[str, ...]:
        found = []
        if self.skipped:
            count = len(self.skipped)
            found.append(f"{_entries_word(count)} skipped ({'; '.join(self.skipped[:3])})")
        if self.bad_links:
            found.append(
                f"{_entries_word(self.bad_links)} kept without a link that is not a usable http(s) URL"
            )
        if self.empty:
            found.append(f"{_entries_word(self.empty)} with no link, id, title or text ignored")
        return tuple(found)


def _entries_word(count: int) -> str:
    return f"{count} {'entry' if count == 1 else 'entries'}"


def _entries(
    items: Iterable[Any], convert: Callable[[Any], ParsedEntry], problems: _Problems
) -> tuple[ParsedEntry, ...]:
    """Convert each item on its own: one malformed entry never costs the feed its others."""
    kept = []
    for index, item in enumerate(items):
        try:
            entry = convert(item)
        except _BadEntry as exc:
            problems.skipped.append(f"entry {index + 1}: {exc}")
            continue
        except Exception as exc:  # anything a hostile entry makes our code raise, by design
            problems.skipped.append(f"entry {index + 1}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        if not (
            entry.url or entry.guid or entry.title or entry.content_html.strip() or entry.summary_html.strip()
        ):
            problems.empty += 1  # a truncated feed's empty <item>: nothing to show or to link to
            continue
        kept.append(entry)
    return tuple(kept)


def parse_feed(result: FetchResult) -> ParsedFeed:
    """Return the feed in ``result``; raise FetchError("not_a_feed" | "parse") when there is none."""
    if not result.body.strip():
        raise FetchError("parse", "the response body is empty")
    if _looks_like_json(result):
        return parse_json_feed(result.body, result.final_url)
    head = result.body[:65536]
    fast = _fast_parse(result, head)
    if fast is not None:
        return fast
    # A stream, never bytes or str: feedparser tries to open() bytes as a file name and a str as
    # a URL or path, so a body of b"/etc/passwd" would have it read that file as the feed.
    parsed = feedparser.parse(
        io.BytesIO(result.body),
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
        if _ENTITY_BOMB in str(problem):
            raise FetchError("parse", _ENTITY_BOMB_MESSAGE)
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
    problems = _Problems()
    entries = _entries(parsed.entries, lambda raw: _entry(raw, problems), problems)
    return ParsedFeed(
        title=_text(feed.get("title")) or "",
        site_url=safe_link(feed.get("link")),
        entries=entries,
        warnings=(*warnings, *problems.warnings()),
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
    except etree.XMLSyntaxError as exc:
        if "amplification" in str(exc) or "entity reference loop" in str(exc):
            raise FetchError("parse", _ENTITY_BOMB_MESSAGE) from None
        return None
    except ValueError:
        return None
    base = result.final_url
    problems = _Problems()
    if root.tag == "rss" and root.get("version", "2.0") in ("2.0", "0.91", "0.92", "0.93", "0.94"):
        channel = root.find("channel")
        if channel is None:
            return None
        entries = _entries(channel.iter("item"), lambda item: _rss_item(item, base, problems), problems)
        return ParsedFeed(
            title=_plain(channel.findtext("title")),
            site_url=safe_link(channel.findtext("link"), base),
            entries=entries,
            warnings=problems.warnings(),
            ttl=_strip(channel.findtext("ttl")),
            update_period=_strip(channel.findtext(f"{_SY}updatePeriod")),
            update_frequency=_strip(channel.findtext(f"{_SY}updateFrequency")),
            skip_hours=_listed(_SKIP_HOURS, _HOUR, head),
            skip_days=_listed(_SKIP_DAYS, _DAY, head),
        )
    if root.tag == f"{_ATOM}feed":
        feed_author = _atom_author(root)
        entries = _entries(
            root.iter(f"{_ATOM}entry"), lambda e: _atom_entry(e, base, feed_author, problems), problems
        )
        return ParsedFeed(
            title=_atom_text(root.find(f"{_ATOM}title")),
            site_url=_atom_link(root, base),
            entries=entries,
            warnings=problems.warnings(),
        )
    return None


def _rss_item(item: etree._Element, base: str, problems: _Problems) -> ParsedEntry:
    # The item's first child of each tag, found in one walk: what find() and findtext() give,
    # where each of their nine calls walked the children again through lxml's ElementPath.
    children: dict[object, etree._Element] = {}
    for child in item:
        children.setdefault(child.tag, child)

    def text(tag: str) -> str | None:
        element = children.get(tag)
        return None if element is None else element.text or ""

    guid_element = children.get("guid")
    guid = _guid(guid_element.text if guid_element is not None else None)
    link = problems.link(text("link"), base)
    permalink = guid_element is not None and guid_element.get("isPermaLink", "true").lower() == "true"
    if link is None and guid and permalink and "://" in guid:
        link = safe_link(guid, base)
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


def _atom_entry(
    entry: etree._Element, base: str, feed_author: str | None, problems: _Problems
) -> ParsedEntry:
    published = _rfc3339(entry.findtext(f"{_ATOM}published") or "")
    updated = _rfc3339(entry.findtext(f"{_ATOM}updated") or "")
    content = entry.find(f"{_ATOM}content")
    return ParsedEntry(
        guid=_guid(entry.findtext(f"{_ATOM}id")),
        url=_atom_link(entry, base, problems),
        title=_atom_text(entry.find(f"{_ATOM}title")),
        summary_html=_atom_html(entry.find(f"{_ATOM}summary")),
        content_html="" if content is None or content.get("src") else _atom_html(content),
        published=published or updated,
        updated=updated,
        author=_atom_author(entry) or feed_author,
    )


def _atom_link(element: etree._Element, base: str, problems: _Problems | None = None) -> str | None:
    for link in element.findall(f"{_ATOM}link"):
        if link.get("rel", "alternate") == "alternate" and link.get("href"):
            href = link.get("href")
            return problems.link(href, base) if problems is not None else safe_link(href, base)
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
        if parsed is not None:
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (TypeError, ValueError, IndexError, OverflowError):
        pass
    return _rfc3339(value) or _date(loose_date(value))  # feedparser's many formats, last


def _strip(value: str | None) -> str | None:
    return value.strip() or None if value else None


def _guid(value: str | None) -> str | None:
    """An entry's id, as text a database takes and of a sane length (it is only hashed)."""
    return _strip(clean_text(value, MAX_GUID)) if value else None


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
    problems = _Problems()
    feed_authors = _json_authors(document)
    entries = _entries(items, lambda item: _json_item(item, base_url, feed_authors, problems), problems)
    return ParsedFeed(
        title=_text(_json_str(document, "title")),
        site_url=safe_link(_json_str(document, "home_page_url"), base_url),
        entries=entries,
        warnings=problems.warnings(),
    )


def _json_item(item: Any, base_url: str, feed_authors: str | None, problems: _Problems) -> ParsedEntry:
    if not isinstance(item, dict):
        raise _BadEntry("not an object")
    if not isinstance(item.get("id"), str | int) or isinstance(item.get("id"), bool):
        raise _BadEntry("no id")
    url = problems.link(_json_str(item, "url") or _json_str(item, "external_url"), base_url)
    content = _json_str(item, "content_html")
    if not content and _json_str(item, "content_text"):
        content = "".join(f"<p>{_escape(p)}</p>" for p in _json_str(item, "content_text").split("\n\n"))
    published = _rfc3339(_json_str(item, "date_published"))
    updated = _rfc3339(_json_str(item, "date_modified"))
    return ParsedEntry(
        guid=_guid(str(item["id"])),
        url=url,
        title=_text(_json_str(item, "title")),
        summary_html=_escape(_json_str(item, "summary")),
        content_html=content,
        published=published or updated,
        updated=updated,
        author=_json_authors(item) or feed_authors,
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
            url = safe_link(href, base_url)
            if url is not None and url not in found:
                found.append(url)
    return found


def looks_like_html(result: FetchResult) -> bool:
    head = result.body[:2048].lstrip().lower()
    return "html" in result.content_type.lower() or head.startswith((b"<!doctype html", b"<html"))


def _looks_like_json(result: FetchResult) -> bool:
    kind = result.content_type.lower()
    return "json" in kind or result.body[:64].lstrip().startswith(b"{")


def _entry(raw: Any, problems: _Problems) -> ParsedEntry:
    content = ""
    for part in raw.get("content") or ():
        if part.get("value") and len(part["value"]) > len(content):
            content = part["value"]
    summary = raw.get("summary") or ""
    return ParsedEntry(
        guid=_guid(raw.get("id")),
        url=problems.link(_link(raw), None),
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
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


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
    """One line of text: whitespace collapsed, controls a database or terminal refuses removed."""
    return " ".join(clean_text(str(value)).split()) if value else ""
