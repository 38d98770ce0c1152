"""Bounds on hostile HTML, checked before the expensive step: scans in C (``str.count``, a
compiled regular expression), never a parse.

- An article page (``extractor.extract_page``, before lxml and trafilatura) over
  ``MAX_PAGE_CHARS`` characters or ``MAX_PAGE_TAGS`` tags is refused (``page_refusal``): it is
  not extracted, and the feed's own text is used. libxml2 stops at 256 levels of nesting itself.
- Feed HTML (``sanitize.clean_html``, ``html_to_text``: before nh3 and lxml) over
  ``MAX_FRAGMENT_TAGS`` tags, or nested more than ``MAX_DEPTH`` deep, is reduced to its text
  (``fragment_refusal``). html5ever, nh3's parser, has no depth limit, and its work for each
  element grows with the depth: 100,000 nested ``<div>`` took a minute. The nesting is read
  (``nesting_depth``, a Python step for each tag) only when the HTML has more start tags
  than ``MAX_DEPTH``: it can be no deeper otherwise.
- Every tag of either keeps its first ``MAX_ATTRIBUTES`` attributes only (``cap_attributes``):
  libxml2 and html5ever compare each attribute with all the element's others (300,000 took
  minutes).

The limits leave a wide margin over real pages: the 110 news pages of the extraction dev set
have at most 3,163 tags, 1,584 elements, 50 levels of nesting and 23 attributes on an element.
"""

from __future__ import annotations

import re
import string

# Feed HTML: ten times the deepest dev page (50), twice libxml2's own limit for pages (256).
MAX_DEPTH = 512
MAX_PAGE_CHARS = 10_000_000
# Counted as "<" characters: about twice the elements (3,163 for 1,584 on the largest dev page).
MAX_PAGE_TAGS = 200_000
MAX_FRAGMENT_TAGS = 100_000
MAX_ATTRIBUTES = 256


class Refused(Exception):
    """A document over one of the bounds (the message says which): it is not extracted."""


def page_refusal(text: str) -> str | None:
    """Return why the decoded page ``text`` is not to be extracted, or None."""
    if len(text) > MAX_PAGE_CHARS:
        return f"{len(text):,} characters (the bound is {MAX_PAGE_CHARS:,})"
    tags = text.count("<")
    if tags > MAX_PAGE_TAGS:
        return f"{tags:,} tags (the bound is {MAX_PAGE_TAGS:,})"
    return None


def fragment_refusal(html: str) -> str | None:
    """Return why the feed HTML ``html`` is to be reduced to its text, or None."""
    tags = html.count("<")
    if tags > MAX_FRAGMENT_TAGS:
        return f"{tags:,} tags (the bound is {MAX_FRAGMENT_TAGS:,})"
    # No deeper than it has start tags: at most every "<" but those of end tags and of the
    # commonest void elements (such a "<" opens nothing, whether or not it starts a tag).
    if tags <= MAX_DEPTH:  # the common case stops here
        return None
    starts = tags - html.count("</") - html.count("<br>") - html.count("<br/>") - html.count("<br ")
    if starts - html.count("<img ") <= MAX_DEPTH:
        return None
    depth = nesting_depth(html, MAX_DEPTH)
    if depth is None:
        return "svg, math or a script with a comment in it, in HTML too large to check them"
    if depth > MAX_DEPTH:
        return f"elements nested over {MAX_DEPTH} deep"
    return None


_SPACE = "\\t\\n\\f\\r "  # the HTML tokenizer's whitespace (a lone CR is read as a newline)
# An attribute as the HTML tokenizer reads one: a name (its first character may be "=" or "<"),
# then perhaps "=" and a value, quoted or not. Here a name or an unquoted value also stops at
# "<", which then starts a name of its own: a count never lower than the tokenizer's, and a
# search never reads past the next tag before it is tried from there.
_ATTRIBUTE = (
    f"[^{_SPACE}/>][^{_SPACE}/>=<]*+(?:[{_SPACE}]*+=[{_SPACE}]*+(?>\"[^\"]*+\"|'[^']*+'|[^{_SPACE}<>]*+))?"
)
# A start or end tag (html5ever reads an end tag's attributes too) with MAX_ATTRIBUTES of them.
# Tried from every "<" and a letter, wherever it is (in a script, a comment, a quoted value):
# a tag the parser reads is never missed, and one it does not read is harmless to cut. Each
# try stops at MAX_ATTRIBUTES or at a ">": 0.5 ms a dev page; a 10 MB page crafted to have the
# same attributes read from many starts took 6 s.
_MANY_ATTRIBUTES = re.compile(
    f"</?[A-Za-z][^{_SPACE}/><]*+(?>[{_SPACE}/]*+{_ATTRIBUTE}){{{MAX_ATTRIBUTES}}}", re.ASCII
)
# The rest of the attributes, up to the tag's ">" (or the end of the text).
_MORE_ATTRIBUTES = re.compile(f"(?>[{_SPACE}/]*+{_ATTRIBUTE})*+", re.ASCII)


def cap_attributes(html: str) -> str:
    """Return ``html`` without the attributes after the first MAX_ATTRIBUTES of any tag that
    has more."""
    found = _MANY_ATTRIBUTES.search(html)
    if found is None:
        return html
    pieces = []
    start = 0
    while found is not None:
        pieces.append(html[start : found.end()])
        rest = _MORE_ATTRIBUTES.match(html, found.end())
        start = found.end() if rest is None else rest.end()
        found = _MANY_ATTRIBUTES.search(html, start)
    pieces.append(html[start:])
    return "".join(pieces)


# The HTML tokenizer's tokens that matter for nesting, each read whole so that no "<" inside
# one is taken for a tag: a comment (it ends at the first "-->" or "--!>"; "<!-->" is one),
# a doctype or bogus comment (the first ">"), an element whose content is text up to its end
# tag (groups 1 and 2: its name, its content), and a tag with its attributes, whose quoted
# values may hold ">" and "<" (groups 3 and 4: "/" for an end tag, its name). Each character
# is read once, in C; only the tokens come back to Python.
_ATTRIBUTES = (
    f"(?:[{_SPACE}/]++"
    f"|[^{_SPACE}/>][^{_SPACE}/>=]*+(?:[{_SPACE}]*+=[{_SPACE}]*+(?>\"[^\"]*+\"|'[^']*+'|[^{_SPACE}>]*+))?)*+>?"
)
# Their content is text up to their end tag (noscript too: html5ever parses with scripting on).
_RAW_TEXT = "script|style|textarea|title|xmp|iframe|noembed|noframes|noscript"
_TOKENS = re.compile(
    # One "<" before the alternatives: the search then skips from "<" to "<" in C.
    "<(?:!--(?:-?>|.*?(?:--!?>|\\Z))"
    "|[!?][^>]*+>?"
    "|/(?![A-Za-z])[^>]*+>?"
    f"|((?i:{_RAW_TEXT}))(?![^{_SPACE}/>]){_ATTRIBUTES}(.*?)(?:</(?i:\\1)(?=[{_SPACE}/>])|\\Z)"
    f"|(/?)([A-Za-z][^{_SPACE}/>]*+){_ATTRIBUTES})",
    re.ASCII | re.DOTALL,
)
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
)
# Inside these, void elements may nest and CDATA sections hide tags: not followed here.
_FOREIGN = frozenset({"svg", "math"})
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def nesting_depth(html: str, limit: int) -> int | None:
    """Return how deep elements nest in ``html`` as read here: never less than half the depth
    html5ever builds (it adds tbody and tr to tables), stopping once past ``limit``.

    An end tag closes an element only when it names the innermost one, as it does for html5ever,
    which closes more on its own (an unclosed <p>, a <li> before the next): that only makes the
    count here higher. None for what is not followed here: svg or math, and a script holding
    "<!--" (where "</script>" may not end it).
    """
    stack: list[str] = []
    deepest = 0
    for raw, content, closing, name in _TOKENS.findall(html):
        if raw:  # an element of text: one level, for as long as it lasts
            if "<!--" in content and raw.lower() == "script":
                return None
            deepest = max(deepest, len(stack) + 1)
            continue
        if not name:  # a comment, a doctype
            continue
        # html5ever lowercases ASCII letters only: "</xä>" does not close "<XÄ>".
        name = name.lower() if name.isascii() else name.translate(_ASCII_LOWER)
        if closing:
            if stack and stack[-1] == name:
                stack.pop()
        elif name in _VOID:
            continue
        elif name in _FOREIGN:
            return None
        elif name == "plaintext":  # all that follows is text
            return max(deepest, len(stack) + 1)
        else:
            stack.append(name)
            if len(stack) > deepest:
                deepest = len(stack)
                if deepest > limit:
                    break
    return deepest
