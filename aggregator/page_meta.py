"""The page metadata the pipeline reads: title, author, date, canonical URL, site name, language, image.

``trafilatura.extract_metadata`` also looks for categories, tags and a licence, which the pipeline
never reads and which take about a third of its time on real news pages (the categories and tags
walk every link of the page twice). :func:`page_metadata` runs the rest of its steps, in its order,
with its own functions, except the search of the page for a byline, which runs trafilatura's
steps with its XPath expressions written as Python tests (:func:`search_byline`, a third of the time).
``tests/test_extractor.py`` checks that every field we read comes out the same as
``extract_metadata``'s, so a trafilatura release that changes those steps fails the suite rather
than quietly changing what is stored.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from copy import deepcopy

import lxml.html
from courlan import extract_domain
from htmldate import find_date
from lxml import etree

from aggregator.internals.trafilatura import (
    AUTHOR_DISCARD_XPATHS,
    Document,
    normalize_authors,
    prune_unwanted_nodes,
    set_date_params,
)
from aggregator.internals.trafilatura import metadata as _meta

# The fields ExtractedPage takes from the page; the test compares exactly these.
FIELDS = ("title", "author", "date", "url", "sitename", "language", "image")

Elements = Callable[[lxml.html.HtmlElement], list[lxml.html.HtmlElement]]


def page_metadata(
    tree: lxml.html.HtmlElement,
    url: str | None = None,
    *,
    search_author: bool = True,
    find_dates: bool = True,
) -> Document:
    """Return the metadata of the parsed page ``tree`` (left intact) found at ``url``.

    ``search_author=False`` reads only a machine-readable author (meta tags, JSON-LD), without
    trafilatura's search of the page for a byline; ``find_dates=False`` leaves the date out.
    Those two searches are half of this function's time on real news pages, and the pipeline
    skips them when the feed entry has an author or a date of its own (``extract_page``).
    """
    document = _meta.examine_meta(tree)
    # A one-word "author" from a meta tag is a site or a handle, not a byline (trafilatura's rule).
    if document.author and " " not in document.author:
        document.author = None
    # trafilatura's JSON-LD reader raises on odd documents; extract_metadata ignores that too.
    with contextlib.suppress(Exception):
        document = _meta.extract_meta_json(tree, document)
    if not document.title:
        document.title = _meta.extract_title(tree)
    if not document.author and search_author:
        document.author = search_byline(tree)
    if not document.url:
        document.url = _meta.extract_url(tree, url)
    if document.url:
        document.hostname = extract_domain(document.url, fast=True)
    if find_dates:
        dates = set_date_params(True)
        dates["url"] = document.url
        # The time of day and the zone too, where the page gives them ("22:04Z", not the day).
        dates["outputformat"] = "%Y-%m-%dT%H:%M:%S%z"
        document.date = find_date(tree, **dates)
        document.filedate = dates.get("max_date")
    if not document.sitename:
        document.sitename = _meta.extract_sitename(tree)
    if document.sitename:
        document.sitename = document.sitename.lstrip("@")
        if document.sitename and "." not in document.sitename and not document.sitename[0].isupper():
            document.sitename = document.sitename.title()
    elif document.url:
        found = _meta.META_URL.match(document.url)
        if found:
            document.sitename = found[1]
    document.clean_and_trim()
    return document


def search_byline(tree: lxml.html.HtmlElement) -> str | None:
    """Return the byline found in the page's elements, as ``trafilatura.metadata.extract_author``.

    The same steps, with trafilatura's XPath expressions (``AUTHOR_XPATHS`` and the first of
    ``AUTHOR_DISCARD_XPATHS``) written as tests of each element's attributes, one walk of the tree
    each: libxml2 evaluates each predicate of an expression for every element, 2–3 ms an
    expression on a news page, and the search runs up to four of them: 9 ms a search on the dev
    pages, more than the rest of the metadata; 3 ms this way. ``tests/test_extractor.py``
    checks, on every dev page and on a page holding every branch, that each test selects the
    elements its expression selects, and that trafilatura's expressions are still the ones
    translated here (``BYLINE_XPATHS_SHA256``).
    """
    subtree = prune_unwanted_nodes(deepcopy(tree), [_not_byline, AUTHOR_DISCARD_XPATHS[1]])
    author = _meta.extract_metainfo(subtree, list(BYLINE_SEARCHES), len_limit=120)
    return normalize_authors(None, author) if author else None


def restore_initials(author: str | None, page: str | bytes) -> str | None:
    """Return ``author`` with the dots trafilatura's normalisation took from initials and
    abbreviations ("J Smith" for "J. Smith", "Dr Anna Weiss"), as ``page`` (its HTML) writes the
    name; unchanged when the page does not hold it so."""
    if not author:
        return author
    names = []
    for name in author.split("; "):
        tokens = name.split()
        if not any(len(token) <= 3 for token in tokens):
            names.append(name)
            continue
        # A dot may follow a short token (an initial, "Dr", "Jr"), never a long one.
        pattern = (
            "".join(
                re.escape(token)
                + (r"\.?" if len(token) <= 3 else "")
                + (r"\s*" if len(token) <= 3 else r"\s+")
                for token in tokens[:-1]
            )
            + re.escape(tokens[-1])
            + (r"\.?" if len(tokens[-1]) <= 3 else "")
        )
        if isinstance(page, bytes):  # decoded only for a name that may have lost a dot
            page = page.decode("utf-8", "replace")
        found = re.search(rf"(?<![\w.]){pattern}(?!\w)", page)
        names.append(" ".join(found.group().split()) if found else name)
    return "; ".join(names)


# The SHA-256 of the whitespace-normalised sources of trafilatura's AUTHOR_XPATHS and of the first
# of its AUTHOR_DISCARD_XPATHS, the expressions translated below (trafilatura 2.3.1).
BYLINE_XPATHS_SHA256 = "880811a475268a65d7c2232bfc5ce8963967d4b308b9d6a4a0e0ce9e9e0109ec"

# The expressions' re:test() patterns, searched only in attributes that are there: an absent one
# is an empty string to re:test() and contains(), and none of these matches an empty string.
_BYLINE_CLASS = re.compile("author-?name|AuthorName|authorName")
_AUTHORISH_ID = re.compile("author|zuozhe|bianji|xiaobian")
_AUTHORISH_CLASS = re.compile(
    "author|channel-name|zuozhe|bianji|xiaobian|submitted-by|posted-by|journalist-name"
)
_ANY_AUTHOR_ID = re.compile("[Aa]uthor")
_ANY_AUTHOR_CLASS = re.compile("[Aa]uthor|screenname|writer|[Bb]yline")
_NOT_BYLINE_ID = re.compile("^comments|comment-?list|ProductReviews")
_NOT_BYLINE_CLASS = re.compile(
    "^[Cc]omments|commentlist|comments-list|sidebar|is-hidden|quote|embedly-instagram"
    "|article-(?:share|support)|print|category|meta-date|meta-reviewer"
)
_SPECIFIC_TAGS = frozenset({"a", "address", "div", "link", "p", "span", "strong"})
_GENERIC_TAGS = frozenset({"a", "div", "h3", "h4", "p", "span"})
_DISCARD_TAGS = frozenset({"a", "div", "section", "span"})


def _walk(
    test: Callable[[lxml.html.HtmlElement], bool], tags: frozenset[str] = frozenset(), *, root: bool = True
) -> Elements:
    """The elements of a tree with one of ``tags`` (any, if none) that pass ``test``, in document
    order: ``//*[test]``, or ``.//*[test]`` from the root element without ``root``."""
    names = sorted(tags) or [etree.Element]  # iter() filters tags in C

    def select(tree: lxml.html.HtmlElement) -> list[lxml.html.HtmlElement]:
        found = [element for element in tree.iter(*names) if test(element)]
        if not root and found and found[0] is tree:
            found.pop(0)
        return found

    return select


def _specific(element: lxml.html.HtmlElement) -> bool:
    get = element.get
    css = get("class")
    return (
        get("rel") == "author"
        or get("id") == "author"
        or css == "author"
        or get("itemprop") == "author name"
        or get("data-testid") in ("AuthorCard", "AuthorURL")
        or (css is not None and _BYLINE_CLASS.search(css) is not None)
    )


def _specific_or_author(tree: lxml.html.HtmlElement) -> list[lxml.html.HtmlElement]:
    """``//*[tags][tests or rel='me']|//author``: ``rel='me'`` is a child element <rel> whose
    text is "me", looked for once rather than among every element's children."""
    rel_me = {rel.getparent() for rel in tree.iter("rel") if rel.xpath("string()") == "me"}
    return [
        element
        for element in tree.iter(*_SPECIFIC_TAGS, "author")
        if element.tag == "author" or _specific(element) or element in rel_me
    ]


def _generic(element: lxml.html.HtmlElement) -> bool:
    get = element.get
    css, key, prop = get("class"), get("id"), get("itemprop")
    return (
        css in ("byline", "username", "byl", "BBL")
        or (prop is not None and "author" in prop)
        or (key is not None and _AUTHORISH_ID.search(key) is not None)
        or (css is not None and _AUTHORISH_CLASS.search(css) is not None)
    )


def _last_resort(element: lxml.html.HtmlElement) -> bool:
    get = element.get
    component, prop, key, css = get("data-component"), get("itemprop"), get("id"), get("class")
    return (
        (component is not None and "Byline" in component)
        or (prop is not None and "author" in prop)
        or (key is not None and _ANY_AUTHOR_ID.search(key) is not None)
        or (css is not None and _ANY_AUTHOR_CLASS.search(css) is not None)
    )


def _discarded(element: lxml.html.HtmlElement) -> bool:
    get = element.get
    key, css, component = get("id"), get("class"), get("data-component")
    return (
        key == "comments"
        or css in ("comments", "title", "date")
        or (key is not None and _NOT_BYLINE_ID.search(key) is not None)
        or (css is not None and _NOT_BYLINE_CLASS.search(css) is not None)
        or (component is not None and "Figure" in component)
    )


# In the order of trafilatura's AUTHOR_XPATHS: specific, generic, any element.
BYLINE_SEARCHES: tuple[Elements, ...] = (
    _specific_or_author,
    _walk(_generic, _GENERIC_TAGS),
    _walk(_last_resort),
)
_not_byline = _walk(_discarded, _DISCARD_TAGS, root=False)
