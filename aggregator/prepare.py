"""The CPU-bound half of a refresh, run in the worker processes: parse the fetched feed, then for
each entry work out its identity and the feed's own text and safe HTML.

Keeping all of it in one call means one round trip to a worker per feed, and the service's event
loop is left with I/O and the database.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from aggregator.dedup import entry_key, repeated_guids, text_hash, url_key
from aggregator.models import FetchResult, ParsedEntry, ParsedFeed
from aggregator.parser import parse_feed
from aggregator.sanitize import clean_html, html_to_text

# Entry dates further ahead than this are a publisher's mistake: they become "now".
FUTURE_SLACK = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class PreparedEntry:
    entry: ParsedEntry
    key: str  # dedup.entry_key
    link_key: str | None  # dedup.url_key of the entry's link
    text: str  # the feed's own text (content, else summary)
    html: str  # the feed's own HTML, sanitised
    text_hash: str | None
    summary: str  # the summary as text


@dataclass(frozen=True, slots=True)
class PreparedFeed:
    feed: ParsedFeed
    entries: tuple[PreparedEntry, ...]


def prepare_feed(result: FetchResult, max_entries: int, now: datetime) -> PreparedFeed:
    """Return the parsed feed with its first ``max_entries`` entries prepared.

    Raises FetchError("not_a_feed" | "parse") like parser.parse_feed.
    """
    parsed = parse_feed(result)
    entries = sane_dates(parsed.entries[:max_entries], now)
    repeated = repeated_guids(entries)
    prepared = []
    for entry in entries:
        feed_html = entry.content_html or entry.summary_html
        text = html_to_text(feed_html)
        base = entry.url or result.final_url
        prepared.append(
            PreparedEntry(
                entry=entry,
                key=entry_key(entry, repeated),
                link_key=url_key(entry.url) if entry.url else None,
                text=text,
                html=clean_html(feed_html, base) if text else "",
                text_hash=text_hash(text),
                summary=html_to_text(entry.summary_html) if entry.content_html else text,
            )
        )
    return PreparedFeed(parsed, tuple(prepared))


def sane_dates(entries: tuple[ParsedEntry, ...], now: datetime) -> tuple[ParsedEntry, ...]:
    """Entries without a date get the time first seen; absurd future dates are clamped."""
    fixed = []
    for entry in entries:
        if entry.published is None or entry.published > now + FUTURE_SLACK:
            entry = replace(entry, published=now)
        fixed.append(entry)
    return tuple(fixed)
