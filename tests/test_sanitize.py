from __future__ import annotations

import re

from aggregator.sanitize import clean_html, html_to_text, text_to_html


def test_dangerous_markup_is_removed() -> None:
    dirty = (
        '<p onclick="steal()">Hello <a href="javascript:alert(1)">x</a>'
        '<a href="/rel">rel</a><script>alert(1)</script><style>p{}</style>'
        '<iframe src="https://evil.example"></iframe><img src="data:image/png;base64,AAA">'
        '<img src="https://t.example/pixel.gif" width="1" height="1">'
        '<img src="https://cdn.example/photo.jpg" alt="Photo"></p>'
    )
    clean = clean_html(dirty, "https://site.example/post/")
    for bad in ("onclick", "javascript:", "<script", "alert(1)", "<style", "<iframe", "data:", "pixel.gif"):
        assert bad not in clean
    assert 'href="https://site.example/rel"' in clean
    assert 'src="https://cdn.example/photo.jpg"' in clean


def test_table_cells_are_not_glued_together() -> None:
    from aggregator.sanitize import clean_html_to_text

    html = "<table><tr><th>Team</th><th>Points</th></tr><tr><td>Reds</td><td>12</td></tr></table>"
    assert html_to_text(html) == "Team Points\n\nReds 12"
    assert clean_html_to_text(clean_html(html)) == html_to_text(html)


def test_html_to_text_keeps_paragraphs() -> None:
    text = html_to_text("<p>One <b>two</b></p><p>Three</p><ul><li>a</li><li>b</li></ul><script>x()</script>")
    assert text == "One two\n\nThree\n\na\n\nb"


def test_text_to_html_escapes() -> None:
    assert text_to_html("a < b\n\nc") == "<p>a &lt; b</p><p>c</p>"


def test_clean_html_to_text_agrees_with_html_to_text() -> None:
    from aggregator.sanitize import clean_html_to_text

    samples = [
        "<p>One <b>two</b></p><p>Three &amp; four</p><ul><li>a</li><li>b</li></ul>",
        "<div>x<div>y</div></div> tail &lt;tag&gt;<script>hidden()</script>",
        "Plain text, no markup at all",
        "<h2>Head</h2>line one<br>line two<table><tr><td>c1</td><td>c2</td></tr></table>",
        "<p>a\u00a0b</p>\n\n\n<p>  spaced   out  </p>",
    ]
    for html in samples:
        assert clean_html_to_text(clean_html(html)) == html_to_text(html), html


def test_feed_images_get_absolute_https_urls_or_go() -> None:
    html = (
        '<p>Text<img src="/media/a.jpg" alt="A"><img src="http://cdn.example/b.jpg">'
        '<img src="//cdn.example/c.jpg"><img src="data:image/gif;base64,R0lGOD">'
        '<img src="ftp://files.example/d.jpg"><img src="https://t.example/p.gif" height="1px"></p>'
    )
    clean = clean_html(html, "http://site.example/post/")
    assert re.findall(r"<img[^>]*>", clean) == [
        '<img src="https://site.example/media/a.jpg" alt="A">',
        '<img src="https://cdn.example/b.jpg">',
        '<img src="https://cdn.example/c.jpg">',
    ]


def test_block_elements_end_a_line() -> None:
    from aggregator.sanitize import clean_html_to_text

    for tag in ("h2", "aside", "main", "nav", "address", "details", "summary", "dl", "center", "form"):
        html = f"<{tag}>Heading</{tag}>Text follows"
        assert html_to_text(html) == "Heading\n\nText follows", tag
        assert clean_html_to_text(clean_html(html)) == "Heading\n\nText follows", tag
