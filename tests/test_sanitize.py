from __future__ import annotations

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


def test_html_to_text_keeps_paragraphs() -> None:
    text = html_to_text("<p>One <b>two</b></p><p>Three</p><ul><li>a</li><li>b</li></ul><script>x()</script>")
    assert text == "One two\n\nThree\n\na\n\nb"


def test_text_to_html_escapes() -> None:
    assert text_to_html("a < b\n\nc") == "<p>a &lt; b</p><p>c</p>"
