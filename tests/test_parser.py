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
    assert "<em>text</em>" in first.content_html  # as given: sanitised before it is stored
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


JSON_FEED = b"""{"version": "https://jsonfeed.org/version/1.1", "title": "J",
 "home_page_url": "https://j.example/", "authors": [{"name": "Feed Author"}],
 "items": [
  {"id": "1", "url": "/posts/1", "title": "One", "content_html": "<p>Hi</p>",
   "date_published": "2017-08-15T10:00:00+02:00", "authors": [{"name": "Ann"}]},
  {"id": 2, "external_url": "https://elsewhere.example/2", "content_text": "Para one.\\n\\nPara <two>"},
  {"title": "no id"}
 ]}"""


def test_json_feed() -> None:
    feed = parse_feed(result(JSON_FEED, "application/feed+json", "https://j.example/feed.json"))
    assert feed.title == "J" and feed.site_url == "https://j.example/"
    first, second = feed.entries
    assert (first.guid, first.url, first.author) == ("1", "https://j.example/posts/1", "Ann")
    assert first.published == datetime(2017, 8, 15, 8, 0, tzinfo=UTC)
    assert second.guid == "2" and second.author == "Feed Author"
    assert second.content_html == "<p>Para one.</p><p>Para &lt;two&gt;</p>"
    assert feed.warnings == ("1 entry skipped (entry 3: no id)",)


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b'{"title": "no version", "items": []}', "not_a_feed"),
        (b"{broken", "parse"),
        (b'["a list"]', "parse"),
        (b'{"version": "https://jsonfeed.org/version/1", "title": "x"}', "parse"),
    ],
)
def test_bad_json_feeds(body: bytes, kind: str) -> None:
    with pytest.raises(FetchError) as caught:
        parse_feed(result(body, "application/json"))
    assert caught.value.kind == kind


def test_polling_hints_are_read() -> None:
    rss = RSS.replace(
        "<link>https://site.example/</link>",
        "<link>https://site.example/</link><ttl>90</ttl><skipHours><hour>1</hour><hour>2</hour>"
        "</skipHours><skipDays><day>Sunday</day></skipDays>",
    )
    feed = parse_feed(result(rss))
    assert feed.ttl == "90"
    assert feed.skip_hours == ("1", "2") and feed.skip_days == ("Sunday",)


def test_find_feed_links() -> None:
    from aggregator.parser import find_feed_links

    page = b"""<html><head><link rel="stylesheet" href="/s.css">
    <link rel="alternate" type="application/rss+xml" href="/feed/">
    <link rel="alternate" type="application/atom+xml" href="https://other.example/atom">
    <link rel="alternate" type="text/html" hreflang="fr" href="/fr/">
    <link rel="alternate" type="application/rss+xml" href="javascript:alert(1)"></head></html>"""
    assert find_feed_links(page, "https://blog.example/post/") == [
        "https://blog.example/feed/",
        "https://other.example/atom",
    ]
    assert find_feed_links(b"", "https://x.example/") == []


@pytest.mark.parametrize("name", ["gazette.rss", "wire.atom", "full-content.rss"])
def test_fast_path_agrees_with_feedparser(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from aggregator import parser
    from aggregator.sanitize import html_to_text

    from .conftest import fixture_text

    body = fixture_text(f"feeds/{name}", "http://127.0.0.1:8000").encode()
    fast = parse_feed(result(body, "application/xml", "http://127.0.0.1:8000/feed"))
    monkeypatch.setattr(parser, "_fast_parse", lambda *_: None)
    slow = parse_feed(result(body, "application/xml", "http://127.0.0.1:8000/feed"))
    assert (fast.title, fast.site_url) == (slow.title, slow.site_url)
    assert len(fast.entries) == len(slow.entries) > 0
    for a, b in zip(fast.entries, slow.entries, strict=True):
        assert (a.guid, a.url, a.title, a.published, a.author) == (
            b.guid,
            b.url,
            b.title,
            b.published,
            b.author,
        )
        # feedparser sanitises as it parses; the fast path leaves that to the store step
        for mine, theirs in ((a.summary_html, b.summary_html), (a.content_html, b.content_html)):
            assert html_to_text(clean(mine)) == html_to_text(clean(theirs))


def clean(html: str) -> str:
    from aggregator.sanitize import clean_html

    return clean_html(html, "http://127.0.0.1:8000/")


def test_fast_path_declines_what_it_does_not_know() -> None:
    from aggregator.parser import _fast_parse

    rdf = b"""<?xml version="1.0"?><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
      xmlns="http://purl.org/rss/1.0/"><channel><title>R</title></channel>
      <item><title>x</title><link>http://r.example/x</link></item></rdf:RDF>"""
    assert _fast_parse(result(rdf), rdf) is None
    assert parse_feed(result(rdf)).entries[0].url == "http://r.example/x"
    broken = RSS.replace("</channel></rss>", "<item><title>Unclosed")
    assert _fast_parse(result(broken), broken.encode()) is None


def test_fast_path_reads_the_first_of_each_child_and_skips_comments() -> None:
    """The fast path finds an item's children in one walk: comments and processing
    instructions are passed over, an empty element is empty text, and of a repeated child the
    first counts, as ElementPath's find() gives it."""
    from aggregator.parser import _fast_parse

    body = b"""<?xml version="1.0"?>
<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:content="http://purl.org/rss/1.0/modules/content/"><channel><title>T</title>
<item><!-- a comment --><title>A &amp; B</title><link> https://x.example/a </link>
  <guid isPermaLink="false">g1</guid><description/><pubDate>Fri, 27 Nov 2026 03:00:00 GMT</pubDate></item>
<item><title>Two</title><link>https://x.example/first</link><link>https://x.example/second</link>
  <dc:creator>Ann</dc:creator><dc:creator>Bea</dc:creator><author>bob@x.example</author>
  <guid>https://x.example/p2</guid></item>
<item><?pi x?><title/><guid isPermaLink="true">https://x.example/p3</guid>
  <content:encoded><![CDATA[<p>Body</p>]]></content:encoded><dc:date>2026-11-27T01:00:00Z</dc:date></item>
</channel></rss>"""
    parsed = _fast_parse(result(body), body)
    assert parsed is not None
    first, second, third = parsed.entries
    assert (first.title, first.url, first.guid, first.summary_html) == (
        "A & B",
        "https://x.example/a",
        "g1",
        "",
    )
    assert first.published == datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    assert (second.url, second.author, second.guid) == (
        "https://x.example/first",
        "Ann",
        "https://x.example/p2",
    )
    assert (third.title, third.url, third.content_html) == ("", "https://x.example/p3", "<p>Body</p>")
    assert third.published == datetime(2026, 11, 27, 1, 0, tzinfo=UTC)
