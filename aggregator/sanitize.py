"""Make feed- and page-provided HTML safe to store and to put in an email (nh3), and plain."""

from __future__ import annotations

import functools
import logging
import re
from contextvars import ContextVar
from html import escape
from html import unescape as _unescape

import lxml.html
import nh3
from lxml import etree

from aggregator import bounds
from aggregator.links import safe_link

log = logging.getLogger(__name__)

_TAGS = {
    "a",
    "article",
    "aside",
    "div",
    "footer",
    "header",
    "main",
    "section",
    "span",
    "abbr",
    "b",
    "blockquote",
    "br",
    "caption",
    "code",
    "dd",
    "del",
    "dl",
    "dt",
    "em",
    "figcaption",
    "figure",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "ins",
    "li",
    "ol",
    "p",
    "pre",
    "q",
    "s",
    "small",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "u",
    "ul",
}
_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan", "scope"},
    "abbr": {"title"},
}
# Elements that end a line of text: every HTML block (and <br>), so that a heading, a caption or
# a form's legend never runs into the text after it ("HeadingText").
_BLOCKS = {
    "address",
    "aside",
    "caption",
    "center",
    "details",
    "dialog",
    "dl",
    "fieldset",
    "form",
    "hgroup",
    "legend",
    "main",
    "menu",
    "nav",
    "summary",
    "p",
    "div",
    "br",
    "li",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "blockquote",
    "pre",
    "tr",
    "table",
    "ul",
    "ol",
    "section",
    "article",
    "figure",
    "figcaption",
    "header",
    "footer",
    "hr",
    "dt",
    "dd",
}
_SPACES = re.compile(r"[ \t\u00a0\r\f\v]+")
_BLOCK_TAG = re.compile(r"</?(?:" + "|".join(sorted(_BLOCKS)) + r")\b[^>]*>", re.IGNORECASE)
_ANY_TAG = re.compile(r"<[^>]*>")
# Blocks that nh3 strips (their text stays): a <br> in their place keeps them on a line of their own.
# (No lookahead: a pattern that starts with "<" lets the engine skip to the next "<".)
_STRIPPED_BLOCK_TAG = re.compile(r"</?(?:" + "|".join(sorted(_BLOCKS - _TAGS)) + r")\b", re.IGNORECASE)
_IMAGE_WITHOUT_SOURCE = re.compile(r"<img\b(?![^>]*\ssrc=\")[^>]*>")
_CELLS = {"td", "th"}
_CELL_END = re.compile(r"</t[dh]\s*>", re.IGNORECASE)
# For HTML over the bounds, which is not parsed: each try stops at the next "<", so that a "<"
# without its ">" is not read to the end of the text again and again.
_RAW_BLOCK_TAG = re.compile(r"</?(?:" + "|".join(sorted(_BLOCKS)) + r")\b[^<>]*>", re.IGNORECASE)
_RAW_TAG = re.compile(r"<[^<>]*>")
_IMAGE_TAG = re.compile(r"<img\b[^>]*>")
_IMAGE_SOURCE = re.compile(r'\ssrc="([^"]*)"')


def clean_html(html: str, base_url: str | None = None) -> str:
    """Return ``html`` with only safe tags and attributes, links absolute, no tracking pixels."""
    if not html.strip():
        return ""
    html = _bounded(html, base_url)
    token = _BASE_URL.set(base_url)
    try:
        cleaned = _cleaner().clean(_STRIPPED_BLOCK_TAG.sub(r"<br>\g<0>", html))
    finally:
        _BASE_URL.reset(token)
    return _drop_pixels(cleaned, html)


def _bounded(html: str, url: str | None) -> str:
    """Return ``html`` as nh3 may parse it in bounded time (``bounds``): its tags cut after
    ``bounds.MAX_ATTRIBUTES`` attributes; over the other bounds, its text in paragraphs."""
    reason = bounds.fragment_refusal(html)
    if reason is None:
        return bounds.cap_attributes(html)
    log.info("feed HTML reduced to its text url=%s reason=%s", url, reason)
    return text_to_html(_unparsed_text(html))


def _unparsed_text(html: str) -> str:
    """Return the text of HTML over the bounds without parsing it: its tags dropped (blocks
    end a line), its entities decoded."""
    return _tidy_lines(_unescape(_RAW_TAG.sub("", _RAW_BLOCK_TAG.sub("\n\n", html))))


# The URL that links in the fragment being cleaned are relative to, for _keep_attribute: the
# cleaner is made once, and its filter cannot be given arguments.
_BASE_URL: ContextVar[str | None] = ContextVar("base_url", default=None)


@functools.cache
def _cleaner() -> nh3.Cleaner:
    """nh3 with our rules, made once: ``nh3.clean`` builds them again from the Python sets on
    every call, three quarters of its time on a feed entry (17 against 4 µs)."""
    return nh3.Cleaner(
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https"},
        attribute_filter=_keep_attribute,
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


def _keep_attribute(tag: str, name: str, value: str) -> str | None:
    if name in ("href", "src"):
        # Only http(s) links leave our code (links.safe_link): not mailto:, not javascript:.
        link = safe_link(value, _BASE_URL.get())
        if link is None:
            return None
        if tag == "img":
            return https_url(link)
        return link
    if tag == "img" and name in ("width", "height") and value.strip() in ("0", "1", "1px"):
        return None
    return value


def https_url(value: str | None, base_url: str | None = None) -> str | None:
    """Return ``value`` as an absolute https URL (http upgraded), or None for any other scheme.

    Images in an email or a feed reader served over https are blocked or warned about when they
    come over http; most sites serve the same file over both.
    """
    if not value or not value.strip():
        return None
    value = value.strip()
    if value.startswith("//"):
        value = "https:" + value
    link = safe_link(value, base_url)
    if link is None:
        return None
    return "https://" + link.removeprefix("http://") if link.startswith("http://") else link


def _drop_pixels(cleaned: str, original: str) -> str:
    # nh3 keeps <img> without its size once a 1x1 width/height was filtered: find the
    # pixel's src in the original and drop that image.
    if "<img" not in cleaned:
        return cleaned
    # An image whose src was refused (data:, javascript:, relative without a base) is left
    # by nh3 as a bare <img>: nothing to show.
    cleaned = _IMAGE_WITHOUT_SOURCE.sub("", cleaned)
    # [^<>]: a try stops at the next tag, so that "<img width=1" repeated without a ">" is not
    # read to its end from each "<img" (20,000 of them took two minutes).
    pixels = set(
        re.findall(
            r"<img\b(?=[^<>]*\b(?:width|height)\s*=\s*[\"']?(?:0|1)(?:px)?[\"'\s>/])"
            r"[^<>]*\bsrc\s*=\s*[\"']([^\"']+)",
            original,
            re.IGNORECASE,
        )
    )
    if not pixels:
        return cleaned
    # The images whose source ends in a pixel's file name, in one pass: a substitution for each
    # pixel read the whole text once a pixel (4,000 of them: 5 s).
    names = {escape(src.split("/")[-1], quote=True) for src in pixels}

    def keep(image: re.Match[str]) -> str:
        source = _IMAGE_SOURCE.search(image.group())
        return "" if source and source.group(1).rsplit("/", 1)[-1] in names else image.group()

    return _IMAGE_TAG.sub(keep, cleaned)


def html_to_text(html: str) -> str:
    """Return the readable text of an HTML fragment: one paragraph per line, blank-line separated."""
    if not html.strip():
        return ""
    if bounds.fragment_refusal(html) is not None:
        return _unparsed_text(html)
    try:
        root = lxml.html.fragment_fromstring(bounds.cap_attributes(html), create_parent="div")
    except (etree.ParserError, ValueError):
        return _SPACES.sub(" ", _RAW_TAG.sub(" ", html)).strip()
    for bad in root.xpath("//script|//style|//noscript|//template"):
        bad.drop_tree()
    parts: list[str] = []

    def walk(element: etree._Element) -> None:
        tag = element.tag if isinstance(element.tag, str) else ""
        if tag in _BLOCKS:
            parts.append("\n\n")
        if element.text and tag:
            parts.append(element.text)
        for child in element:
            walk(child)
        if tag in _BLOCKS:
            parts.append("\n\n")
        elif tag in _CELLS:
            parts.append(" ")  # table cells side by side, not glued together
        if element.tail:
            parts.append(element.tail)

    walk(root)
    return _tidy_lines("".join(parts))


def clean_html_to_text(cleaned: str) -> str:
    """Return the text of HTML that clean_html() produced, faster than html_to_text().

    Only for clean_html's output: well-formed, without comments, scripts or styles, so that
    a tag is always a tag and regular expressions can take it apart.
    """
    if not cleaned:
        return ""
    text = _CELL_END.sub(" ", cleaned)
    text = _BLOCK_TAG.sub("\n\n", text)
    return _tidy_lines(_unescape(_ANY_TAG.sub("", text)))


def _tidy_lines(text: str) -> str:
    """Return ``text`` with spaces collapsed, lines trimmed and blank lines kept single.

    str.split() does in C what three regular expressions did: this runs on every entry of
    every feed, and a substitution at each space cost more than the rest of the conversion.
    """
    lines: list[str] = []
    blank = False
    for line in text.split("\n"):
        words = line.split()
        if not words:
            blank = True
            continue
        if blank and lines:
            lines.append("")
        lines.append(" ".join(words))
        blank = False
    return "\n".join(lines)


def text_to_html(text: str) -> str:
    """Return paragraphs of escaped text, for articles that have only plain text."""
    return "".join(f"<p>{escape(p.strip())}</p>" for p in re.split(r"\n\s*\n|\n", text) if p.strip())
