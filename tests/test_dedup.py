from __future__ import annotations

import pytest

from aggregator.dedup import canonical_url, entry_key, repeated_guids, text_hash
from aggregator.models import ParsedEntry


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("HTTPS://Example.COM:443/a/b?utm_source=rss&utm_medium=rss#top", "https://example.com/a/b"),
        ("http://example.com:80/x?b=2&a=1&fbclid=abc", "http://example.com/x?a=1&b=2"),
        ("https://example.com/x?id=5&gclid=1&mc_cid=2", "https://example.com/x?id=5"),
        ("https://example.com", "https://example.com/"),
    ],
)
def test_canonical_url(url: str, canonical: str) -> None:
    assert canonical_url(url) == canonical


def entry(guid: str | None, url: str | None, title: str = "T") -> ParsedEntry:
    return ParsedEntry(guid, url, title, "", "", None, None, None)


def test_entry_key_prefers_guid_then_url_then_content() -> None:
    assert entry_key(entry("g1", "https://a/1")) == entry_key(entry("g1", "https://a/2"))
    assert entry_key(entry(None, "https://a/1?utm_source=x")) == entry_key(entry(None, "https://a/1"))
    assert entry_key(entry(None, None, "A")) != entry_key(entry(None, None, "B"))


def test_feed_repeating_one_guid_falls_back_to_links() -> None:
    entries = (entry("same", "https://a/1"), entry("same", "https://a/2"))
    repeated = repeated_guids(entries)
    assert repeated == {"same"}
    assert entry_key(entries[0], repeated) != entry_key(entries[1], repeated)


def test_text_hash_ignores_case_spacing_and_punctuation_but_not_short_texts() -> None:
    words = " ".join(f"word{i}" for i in range(60))
    assert text_hash(words) == text_hash("  " + words.upper().replace(" ", " ,\n "))
    assert text_hash(words) != text_hash(words + " extra")
    assert text_hash("Read more on our site") is None
