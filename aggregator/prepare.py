"""The CPU-bound half of a refresh, run in the worker processes: parse the fetched feed and work
out each entry's identity (``identify_feed``); then, for the entries the store lacks, the feed's
own text and safe HTML (``prepare_entries``).

Keeping all of it in one call means one round trip to a worker per feed, and the service's event
loop is left with I/O and the database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from aggregator.controls import clean_text
from aggregator.dedup import (
    canonical_url,
    entry_key,
    key_of_canonical,
    linkless_key,
    repeated_guids,
    text_hash,
    url_key,
)
from aggregator.links import safe_link
from aggregator.models import ExtractedPage, FetchResult, NewArticle, ParsedEntry, ParsedFeed
from aggregator.parser import parse_feed
from aggregator.sanitize import clean_html, clean_html_to_text, html_to_text, text_to_html

# Entry dates further ahead than this are a publisher's mistake: they become "now".
FUTURE_SLACK = timedelta(days=1)
# The longest text of each kind an article keeps (characters; "…" marks a cut). A title or a
# byline longer than a few lines is an attack or a mistake; the text of the longest real
# article is a tenth of MAX_TEXT.
MAX_TITLE = 400
MAX_AUTHOR = 200
MAX_SUMMARY = 20_000
MAX_TEXT = 500_000


# No slots: these cross process boundaries, and slotted dataclasses pickle several times slower.
@dataclass(frozen=True)
class PreparedEntry:
    entry: ParsedEntry
    key: str  # dedup.entry_key
    link_key: str | None  # dedup.url_key of the entry's link
    text: str  # the feed's own text (content, else summary)
    html: str  # the feed's own HTML, sanitised
    text_hash: str | None
    summary: str  # the summary as text
    # The feed gave the entry a plausible date (sane_dates did not have to supply one).
    dated: bool = True

    def feed_has(self) -> tuple[str, ...]:
        """What the page need not be searched for (``extractor.extract_page``'s ``feed_has``)."""
        return tuple(name for name, given in (("author", self.entry.author), ("date", self.dated)) if given)


@dataclass(frozen=True)
class IdentifiedEntry:
    """An entry with its identity worked out, before the costly part of ``prepare_entries``."""

    entry: ParsedEntry
    key: str  # dedup.entry_key
    link_key: str | None  # dedup.url_key of the entry's link
    dated: bool  # as PreparedEntry.dated


@dataclass(frozen=True)
class IdentifiedFeed:
    feed: ParsedFeed
    entries: tuple[IdentifiedEntry, ...]


def identify_feed(result: FetchResult, max_entries: int, now: datetime) -> IdentifiedFeed:
    """Return the parsed feed with the identity of its first ``max_entries`` entries: enough to
    ask the store which are new, so that only those are sanitised and hashed
    (``prepare_entries``). A feed that changed since the last poll usually has one or two new
    entries among twenty.

    Raises FetchError("not_a_feed" | "parse") like parser.parse_feed.
    """
    parsed = parse_feed(result)
    given = parsed.entries[:max_entries]
    entries = sane_dates(given, now)
    repeated = repeated_guids(entries)
    return IdentifiedFeed(
        parsed,
        tuple(
            IdentifiedEntry(
                entry=entry,
                key=entry_key(entry, repeated),
                link_key=url_key(entry.url) if entry.url else None,
                dated=entry.published == original.published,
            )
            for original, entry in zip(given, entries, strict=True)
        ),
    )


def prepare_entries(entries: Iterable[IdentifiedEntry], feed_url: str) -> list[PreparedEntry]:
    """Return each entry with the feed's own text and safe HTML (links made absolute against the
    entry's link, else ``feed_url``: the URL the feed was fetched from)."""
    prepared = []
    for item in entries:
        entry = item.entry
        html = clean_html(entry.content_html or entry.summary_html, entry.url or feed_url)
        text = clean_html_to_text(html)
        prepared.append(
            PreparedEntry(
                entry=entry,
                key=item.key,
                link_key=item.link_key,
                text=text,
                html=html if text else "",
                text_hash=text_hash(text),
                # Without separate content the summary is the text: not stored twice.
                summary=html_to_text(entry.summary_html) if entry.content_html else "",
                dated=item.dated,
            )
        )
    return prepared


def sane_dates(entries: tuple[ParsedEntry, ...], now: datetime) -> tuple[ParsedEntry, ...]:
    """Entries without a date get the time first seen; absurd future dates are clamped."""
    fixed = []
    for entry in entries:
        if entry.published is None or entry.published > now + FUTURE_SLACK:
            entry = replace(entry, published=now)
        fixed.append(entry)
    return tuple(fixed)


def build_article(
    feed_url: str, item: PreparedEntry, page: ExtractedPage | None, final_url: str | None
) -> NewArticle:
    """Merge a feed entry with what its page gave (if anything) into the article to store.

    The page's text wins when it is at least as long as the feed's own; the feed's headline
    and date win (the page <title> carries "- Site Name", and pages often give only a date),
    and the page's date replaces only the time first seen given to an undated entry; the
    page's byline wins over the feed's author, which fills in when the page has none (when the
    feed has an author, the page was read for a machine-readable one only: ``PreparedEntry.feed_has``).

    ``final_url`` is where the page was fetched from in the end (the entry's link when it was
    not fetched); an entry without a link makes an article without one (``url`` empty), with
    a URL key of its own so that it is never taken for a copy of another link-less entry.
    Every text is stored without control characters and cut to its MAX_ length.
    """
    entry = item.entry
    if page is not None and len(page.text.split()) >= len(item.text.split()):
        text, html, extraction, content_hash = page.text, page.html, "page", text_hash(page.text)
    elif item.text:
        text, html, extraction, content_hash = item.text, item.html, "feed", item.text_hash
    else:
        text, html, extraction, content_hash = "", "", "none", None
    if len(text) > MAX_TEXT:
        text = clean_text(text, MAX_TEXT)
        html = text_to_html(text)  # markup cut anywhere is no longer markup
    url = article_url(final_url, page.canonical_url if page else None) if final_url else ""
    title = entry.title or (page_title(page) if page else "") or url or _first_words(text)
    author = (page.author if page and page.author else None) or entry.author
    return NewArticle(
        feed_url=feed_url,
        entry_key=item.key,
        url=url,
        title=clean_text(title, MAX_TITLE),
        author=clean_text(author, MAX_AUTHOR) if author else None,
        published=(page.published if page and page.published and not item.dated else None) or entry.published,
        summary=clean_text(item.summary, MAX_SUMMARY),
        text=clean_text(text),
        html=clean_text(html or text_to_html(text)),
        extraction=extraction,
        content_hash=content_hash,
        link_key=item.link_key,
        url_key=key_of_canonical(url) if url else linkless_key(feed_url, item.key),
    )


def _first_words(text: str, words: int = 12) -> str:
    """A title for an entry that has none and no link: the start of its text."""
    first = text.split(maxsplit=words)
    return " ".join(first[:words]) + (" …" if len(first) > words else "")


def page_title(page: ExtractedPage) -> str:
    """Return the page's title without a trailing " - Site Name" or " | Site Name"."""
    title = page.title or ""
    if page.site_name:
        for separator in (" - ", " | ", " – ", " — ", " :: "):
            suffix = separator + page.site_name
            if title.endswith(suffix) and len(title) > len(suffix):
                return title[: -len(suffix)].strip()
    return title


def article_url(final_url: str, canonical: str | None) -> str:
    """Return the canonical form of the page's URL, or of its rel=canonical on the same site;
    "" when neither is a safe http(s) link (``links.safe_link``)."""
    canonical = safe_link(canonical)
    final_url = safe_link(final_url) or ""
    if not final_url:
        return ""
    if canonical:
        page_host = (urlsplit(final_url).hostname or "").removeprefix("www.")
        canonical_host = (urlsplit(canonical).hostname or "").removeprefix("www.")
        if page_host and page_host == canonical_host:
            return canonical_url(canonical)
    return canonical_url(final_url)
