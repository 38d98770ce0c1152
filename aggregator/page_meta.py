"""The page metadata the pipeline reads: title, author, date, canonical URL, site name, language, image.

``trafilatura.extract_metadata`` also looks for categories, tags and a licence, which the pipeline
never reads and which take about a third of its time on real news pages (the categories and tags
walk every link of the page twice). :func:`page_metadata` runs the rest of its steps, in its order,
with its own functions; ``tests/test_extractor.py`` checks that every field we read comes out the
same as ``extract_metadata``'s, so a trafilatura release that changes those steps fails the suite
rather than quietly changing what is stored.
"""

from __future__ import annotations

import contextlib
import warnings

import lxml.html

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="SOCKS support in urllib3")
    from courlan import extract_domain
    from htmldate import find_date
    from trafilatura import metadata as _meta
    from trafilatura.settings import Document, set_date_params

# The fields ExtractedPage takes from the page; the test compares exactly these.
FIELDS = ("title", "author", "date", "url", "sitename", "language", "image")


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
        document.author = _meta.extract_author(tree)
    if not document.url:
        document.url = _meta.extract_url(tree, url)
    if document.url:
        document.hostname = extract_domain(document.url, fast=True)
    if find_dates:
        dates = set_date_params(True)
        dates["url"] = document.url
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
