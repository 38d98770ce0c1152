"""Identity of entries and articles: pure functions, no I/O.

Layers, cheapest first (see docs/DUPLICATES.md):
1. the same entry of the same feed -> ``entry_key`` (guid, else link, else title+content hash);
2. the same page reached by another URL -> ``canonical_url`` (tracking parameters, fragments and
   default ports dropped, query sorted: courlan does the cleaning);
3. the same text -> ``text_hash`` of the normalised full text.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from urllib.parse import urlsplit, urlunsplit

import courlan

from aggregator.models import ParsedEntry

_WORDS = re.compile(r"\w+", re.UNICODE)
# Texts shorter than this are too generic ("Read more", a headline) to merge on text alone.
MIN_WORDS_FOR_TEXT_MATCH = 50


def canonical_url(url: str) -> str:
    """Return ``url`` with tracking parameters, fragment and default port removed, query sorted."""
    url = url.strip()
    try:
        cleaned = courlan.normalize_url(url, strict=False)
    except (ValueError, AttributeError):
        cleaned = url
    parts = urlsplit(cleaned)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", parts.query, ""))


def url_key(url: str) -> str:
    """Return a fixed-length key for the canonical form of ``url`` (indexed in the database)."""
    return key_of_canonical(canonical_url(url))


def key_of_canonical(canonical: str) -> str:
    """Return url_key for a URL that canonical_url() already returned."""
    return _sha(canonical)


def entry_key(entry: ParsedEntry, repeated_guids: frozenset[str] = frozenset()) -> str:
    """Return a stable identity for an entry within its feed.

    Some feeds give every item the same guid (or the feed's own URL): ``repeated_guids`` lists
    the guids seen more than once in this fetch, and those fall back to the link.
    """
    if entry.guid and entry.guid not in repeated_guids:
        return _sha("guid:" + entry.guid.strip())
    if entry.url:
        return _sha("url:" + canonical_url(entry.url))
    return _sha("content:" + entry.title + "\n" + (entry.content_html or entry.summary_html))


def repeated_guids(entries: tuple[ParsedEntry, ...]) -> frozenset[str]:
    """Return the guids used by more than one entry of the same feed."""
    seen: set[str] = set()
    repeated: set[str] = set()
    for entry in entries:
        if entry.guid:
            (repeated if entry.guid in seen else seen).add(entry.guid)
    return frozenset(repeated)


def normalise_words(text: str) -> list[str]:
    """Return the lower-cased word tokens of ``text`` after Unicode normalisation."""
    if not text.isascii():  # NFKC is the costly part, and ASCII needs none
        text = unicodedata.normalize("NFKC", text)
    return _WORDS.findall(text.casefold())


def text_hash(text: str) -> str | None:
    """Return a hash of the normalised words, or None when the text is too short to trust."""
    words = normalise_words(text)
    if len(words) < MIN_WORDS_FOR_TEXT_MATCH:
        return None
    return _sha(" ".join(words))


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
