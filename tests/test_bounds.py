"""The bounds on hostile HTML (bounds.py), checked against the parsers they protect: lxml
(libxml2) for pages, nh3 (html5ever) for feed HTML; and the sanitiser's own linear-time paths."""

from __future__ import annotations

import re
import time
from pathlib import Path

import lxml.html
import nh3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator import bounds
from aggregator.extractor import _PARSER
from aggregator.sanitize import clean_html, html_to_text

from .conftest import SHARED

DEV_PAGES = sorted((SHARED / "data" / "extraction" / "dev" / "html").glob("*.html"))
FEEDS = Path(__file__).parent / "data" / "feeds"

# -- attributes ------------------------------------------------------------------------------

_STYLES = {
    "bare": "a{}",
    "unquoted": "a{}=v",
    "double": 'a{}="v>&lt;"',  # a quoted ">" does not end the tag
    "single": "a{}='<b c d>'",  # nor does a quoted "<": no tag inside
    "after-quote": 'a{}=""',  # html5ever reads a{}=""a{}="" as two attributes
    "starts-with-lt": "<a{}",
    "starts-with-equals": "=a{}",
    "glued": "a{}=x<y",  # an unquoted value holds "<"
}
_NOISE = [
    "text",
    "<p>",
    "</p>",
    "<!--",
    "-->",
    "<!x>",
    "<?x>",
    "</ x>",
    "<script>",
    "</script>",
    '"',
    "'",
    "<",
    ">",
    "/",
    "=",
]


@st.composite
def many_attributes(draw: st.DrawFn) -> str:
    """Tags with a few hundred distinct attributes each, written every way the tokenizer
    accepts, among stray quotes, comments and script tags."""
    parts = []
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.booleans()):
            parts.append(draw(st.sampled_from(_NOISE)))
            continue
        style = _STYLES[draw(st.sampled_from(sorted(_STYLES)))]
        separator = draw(st.sampled_from([" ", "\n", "/", " / ", ""]))
        tag = draw(st.sampled_from(["div", "A", "x-y", "p", "script", "/div", "img"]))
        count = draw(st.integers(bounds.MAX_ATTRIBUTES - 5, bounds.MAX_ATTRIBUTES + 200))
        names = (style.format(f"{len(parts)}n{i}") for i in range(count))
        parts.append(f"<{tag} " + separator.join(names) + draw(st.sampled_from([">", "", " >", "/>"])))
    return "".join(parts)


def most_attributes(html: str) -> int:
    root = lxml.html.document_fromstring("<html><body>" + html, parser=_PARSER)
    return max(len(element.attrib) for element in root.iter() if isinstance(element.tag, str))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(many_attributes())
def test_no_element_keeps_more_than_the_bound_of_attributes(html: str) -> None:
    assert most_attributes(bounds.cap_attributes(html)) <= bounds.MAX_ATTRIBUTES


def test_a_tag_keeps_its_first_attributes_and_the_text_after_it() -> None:
    html = "<div " + " ".join(f"a{i}=x" for i in range(300_000)) + ">after</div><p>more</p>"
    started = time.monotonic()
    capped = bounds.cap_attributes(html)
    assert time.monotonic() - started < 2
    root = lxml.html.fragment_fromstring(capped, create_parent="section")
    div = root[0]
    assert list(div.attrib) == [f"a{i}" for i in range(bounds.MAX_ATTRIBUTES)]
    assert div.text == "after" and root[1].text == "more"
    assert bounds.cap_attributes("<p class=a>few</p>") == "<p class=a>few</p>"


# -- nesting ---------------------------------------------------------------------------------

_TAGS = [
    "div", "p", "b", "i", "a", "span", "table", "tr", "td", "tbody", "ul", "li", "em", "br", "img",
    "hr", "h1", "pre", "blockquote", "select", "option", "form", "button", "caption", "col",
    "colgroup", "dd", "dt", "nobr", "font", "u", "code", "textarea", "title", "xmp", "script",
    "style", "body", "html", "template", "object", "plaintext", "image", "frame", "ruby", "rt",
    "X", "Div", "B",
]  # fmt: skip
# Everything the strategy writes is allowed, so that nh3's output keeps html5ever's elements;
# not the raw-text ones, whose content nh3 would print as it is.
_ALLOWED = {t.lower() for t in _TAGS} - {
    "script", "style", "textarea", "title", "xmp", "plaintext", "html", "body", "image", "frame", "template",
}  # fmt: skip
_VOID = {"br", "img", "hr", "col"}
_NOISE_PIECES = (
    "x", " ", "<!--", "-->", "<!-- c -->", "'", '"', "<", ">", "=", "/", "</", '<a title="', '">',
    "<!x>", "<?x>", "<br/>", "<p/>", "&lt;", '<b title="</b>">', "<i>x</I>", "<xÄ></xä>",
)  # fmt: skip
_PIECE = st.one_of(
    st.sampled_from(_TAGS).map(lambda name: f"<{name}>"),
    st.sampled_from(_TAGS).map(lambda name: f"</{name}>"),
    st.tuples(st.sampled_from(_TAGS), st.integers(0, 3)).map(lambda t: f'<{t[0]} id="{t[1]}">'),
    st.sampled_from(_NOISE_PIECES),
)


def html5ever_depth(html: str) -> int:
    """How deep the tree html5ever builds from ``html`` nests: nh3 prints it back whole."""
    printed = nh3.clean(html, tags=_ALLOWED | {"xÄ"}, attributes={}, strip_comments=True, link_rel=None)
    depth = deepest = 0
    for closing, name in re.findall(r"<(/?)([^\s/>]+)[^>]*>", printed):
        if name in _VOID:
            continue
        depth += -1 if closing else 1
        deepest = max(deepest, depth)
    return deepest


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_PIECE, max_size=60).map("".join))
def test_nesting_is_never_counted_below_half_of_html5evers(html: str) -> None:
    depth = bounds.nesting_depth(html, 10**6)
    if depth is not None:
        # Tables: html5ever adds tbody and tr, so <table><td> is four deep.
        assert html5ever_depth(html) <= 2 * depth + 1


@pytest.mark.parametrize(
    "html",
    [
        '<div title="</div>">' * 600,  # an end tag in a quoted value is no end tag
        "<div><!--</div>-->" * 600,  # nor one in a comment
        "<div></span>" * 600,  # an end tag that names another element closes nothing
        "".join(f"<div><b id={i}></div>" for i in range(600)),  # html5ever reopens each b
        "<XÄ></xä>" * 600,  # names differ beyond ASCII case
        "<textarea></div></textarea><div>" * 600,
    ],
    ids=["quoted", "comment", "other-name", "reopened", "non-ascii", "raw-text"],
)
def test_deep_nesting_is_seen_through_what_does_not_close_it(html: str) -> None:
    assert bounds.fragment_refusal(html) is not None
    assert html5ever_depth(html) > bounds.MAX_DEPTH  # what the check stands in for


def test_what_cannot_be_followed_cheaply_is_refused_only_when_large() -> None:
    small = "<svg><g>" + "<p>x</p>" * 10
    assert bounds.fragment_refusal(small) is None
    assert bounds.fragment_refusal("<svg>" + "<p>x</p>" * 600) is not None
    assert bounds.fragment_refusal("<script><!--</script>" + "<p>x</p>" * 600) is not None
    assert bounds.fragment_refusal("<script>a < b</script>" + "<p>x</p>" * 600) is None
    # Counted, not read: no deeper than its start tags, whatever its end tags.
    assert bounds.fragment_refusal("<svg><g>" + "x<br>" * 600 + "</p>" * 600) is None


# -- calibration: real pages and entries pass ------------------------------------------------


@pytest.mark.skipif(not DEV_PAGES, reason="../shared/data/extraction/dev is absent")
def test_no_real_page_is_refused() -> None:
    for page in DEV_PAGES:
        text = page.read_text(encoding="utf-8", errors="replace")
        assert bounds.page_refusal(text) is None, page.name
        # A wide margin: the largest dev page has 3,163 tags and 23 attributes on an element.
        assert text.count("<") * 50 < bounds.MAX_PAGE_TAGS, page.name
        assert most_attributes(text) * 10 < bounds.MAX_ATTRIBUTES, page.name


def test_no_real_entry_is_reduced() -> None:
    for feed in FEEDS.glob("*.*"):
        for content in re.findall(r"<(?:description|content:encoded|content)[^>]*>(.*?)</", feed.read_text()):
            assert bounds.fragment_refusal(content) is None, feed.name
    long_post = "<p>A <a href='/x'>paragraph</a> of a <em>long</em> post.</p>\n" * 2000
    assert bounds.fragment_refusal(long_post) is None


def test_pages_over_the_bounds_are_refused() -> None:
    assert bounds.page_refusal("<p>a b</p>" * 900_000) == "1,800,000 tags (the bound is 200,000)"
    assert "characters" in (bounds.page_refusal("x" * (bounds.MAX_PAGE_CHARS + 1)) or "")


# -- the sanitiser on hostile feed HTML: linear time, and the text kept ----------------------


@pytest.mark.parametrize(
    ("html", "kept"),
    [
        ("<div>" * 100_000 + "deep" + "</div>" * 100_000, "deep"),  # 54 s in nh3 before
        ("<p>x</p><div " + " ".join(f"a{i}=x" for i in range(300_000)) + ">hi</div>", "hi"),
        ("".join(f'<b id="{i}">' for i in range(4_000)) + "<p>x</p>" * 4_000, "x"),
        ("<" * 1_000_000 + "end", "end"),
    ],
    ids=["nested", "attributes", "reopened", "lone-lt"],
)
def test_hostile_feed_html_is_sanitised_in_bounded_time(html: str, kept: str) -> None:
    started = time.monotonic()
    cleaned = clean_html(html, "https://example.org/post")
    text = html_to_text(html)
    assert time.monotonic() - started < 5
    assert kept in cleaned and kept in text
    assert len(cleaned) < 6 * len(html)


def test_pixels_are_found_in_linear_time() -> None:
    # "<img width=1" without ">", again and again: each try read to the end (2 minutes at 20,000).
    started = time.monotonic()
    assert clean_html('<img src="https://a.example/b.png">' + "<img width=1" * 5_000).startswith(
        '<img src="https://a.example/b.png">'
    )
    assert time.monotonic() - started < 2
    # Thousands of pixels: one pass, where a substitution a pixel read the text each time.
    pixels = "".join(
        f'<p>x</p><img width="1" height="1" src="https://a.example/p/{i}.gif">' for i in range(3_000)
    )
    started = time.monotonic()
    cleaned = clean_html(pixels + '<img src="https://a.example/photo.jpg">')
    assert time.monotonic() - started < 2
    assert "<img" not in cleaned.replace('<img src="https://a.example/photo.jpg">', "")
    assert cleaned.endswith('<img src="https://a.example/photo.jpg">')
