from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aggregator.errors import FetchError
from aggregator.models import FetchResult
from aggregator.parser import parse_feed


def result(
    body: str | bytes, content_type: str = "application/xml", url: str = "https://site.example/feed/"
) -> FetchResult:
    data = body.encode("utf-8") if isinstance(body, str) else body
    return FetchResult(url, url, 200, data, content_type, None, None, datetime.now(UTC))


RSS = """<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:content="http://purl.org/rss/1.0/modules/content/">
<channel><title>Example  News</title><link>https://site.example/</link>
<item><title>First &amp; foremost</title><link>/2024/first</link>
  <guid isPermaLink="false">site-1</guid><pubDate>Tue, 15 Aug 2017 09:30:00 +0200</pubDate>
  <dc:creator>Jane Doe</dc:creator><description>Short &lt;b&gt;excerpt&lt;/b&gt;</description>
  <content:encoded><![CDATA[<p>Full <em>text</em> here.</p><script>alert(1)</script>]]></content:encoded>
</item>
<item><title>No guid</title><link>https://site.example/2024/second</link></item>
</channel></rss>"""

ATOM = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Atom Site</title>
<link href="https://atom.example/"/><id>urn:x</id><updated>2017-08-15T11:00:00Z</updated>
<entry><title type="html">An &lt;i&gt;entry&lt;/i&gt;</title>
<link rel="alternate" href="https://atom.example/e1"/><id>tag:atom.example,2017:1</id>
<updated>2017-08-15T11:00:00Z</updated><author><name>Wire Staff</name></author>
<summary>Summary text</summary></entry></feed>"""


def test_rss_entries() -> None:
    feed = parse_feed(result(RSS))
    assert feed.title == "Example News"
    first, second = feed.entries
    assert first.guid == "site-1"
    assert first.url == "https://site.example/2024/first"  # relative link resolved
    assert first.title == "First & foremost"
    assert first.author == "Jane Doe"
    assert first.published == datetime(2017, 8, 15, 7, 30, tzinfo=UTC)
    assert "<em>text</em>" in first.content_html and "script" not in first.content_html
    assert second.guid is None and second.published is None


def test_atom_entries() -> None:
    feed = parse_feed(result(ATOM, "application/atom+xml"))
    (entry,) = feed.entries
    assert entry.url == "https://atom.example/e1"
    assert entry.guid == "tag:atom.example,2017:1"
    assert entry.author == "Wire Staff"
    assert entry.published == datetime(2017, 8, 15, 11, 0, tzinfo=UTC)


def test_html_page_is_not_a_feed() -> None:
    with pytest.raises(FetchError) as caught:
        parse_feed(result("<!DOCTYPE html><html><body><p>Hello</p></body></html>", "text/html"))
    assert caught.value.kind == "not_a_feed"


@pytest.mark.parametrize("body", [b"", b"\x00\x01garbage", b"just some text, no markup at all"])
def test_garbage_is_a_parse_error(body: bytes) -> None:
    with pytest.raises(FetchError) as caught:
        parse_feed(result(body))
    assert caught.value.kind in ("parse", "not_a_feed")


def test_malformed_but_readable_feed_gives_entries_and_a_warning() -> None:
    broken = RSS.replace("</channel></rss>", "<item><title>Unclosed</title>")
    feed = parse_feed(result(broken))
    assert len(feed.entries) >= 2
    assert feed.warnings
