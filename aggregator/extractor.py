"""Full text of an article page (trafilatura). Pure: takes HTML, makes no network calls."""

from __future__ import annotations

import logging
import warnings
from datetime import UTC, datetime

import lxml.html
from lxml import etree

from aggregator.models import ExtractedPage
from aggregator.sanitize import clean_html, text_to_html

# trafilatura's downloader imports urllib3's SOCKS support, which warns when PySocks is absent;
# we never download through trafilatura, so that warning is only noise on a user's stderr.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="SOCKS support in urllib3")
    import trafilatura

log = logging.getLogger(__name__)


def extract_page(
    html: str | bytes, url: str | None = None, *, selector: str | None = None
) -> ExtractedPage | None:
    """Return the article found in ``html``, or None when there is no article text.

    ``selector``, a CSS selector, names the article body on sites the generic extractor gets
    wrong: only that element (and the page's <head>, for the metadata) is extracted from.
    """
    if not html:
        return None
    if selector:
        html = _select(html, selector)
        if not html:
            return None
    try:
        document = trafilatura.bare_extraction(
            html,
            url=url,
            with_metadata=True,
            include_comments=False,
            include_tables=True,
            include_images=False,
            include_links=False,
            # Never on: its cache makes a result depend on every page seen before.
            deduplicate=False,
        )
    except (ValueError, TypeError, etree.LxmlError) as exc:
        log.info("extraction failed url=%s error=%s", url, exc)
        return None
    if document is None or not (document.text or "").strip():
        return None
    text = _without_headline(document.text.strip(), document.title)
    if not text:
        return None
    return ExtractedPage(
        text=text,
        html=_render_html(document, text, url, document.title),
        title=(document.title or "").strip() or None,
        author=(document.author or "").strip() or None,
        published=_date(document.date),
        canonical_url=document.url or None,
        language=document.language or None,
        site_name=document.sitename or None,
        image=document.image or None,
    )


def _select(html: str | bytes, selector: str) -> str | None:
    """Return a page holding only <head> and the first element ``selector`` matches."""
    from lxml.cssselect import CSSSelector, SelectorError

    try:
        root = lxml.html.document_fromstring(html)
        matches = CSSSelector(selector)(root)
    except (etree.LxmlError, SelectorError, ValueError) as exc:
        log.info("selector not applied selector=%s error=%s", selector, exc)
        return None
    if not matches:
        log.info("selector matched nothing selector=%s", selector)
        return None
    head = root.find("head")
    head_html = etree.tostring(head, encoding="unicode", method="html") if head is not None else ""
    body = etree.tostring(matches[0], encoding="unicode", method="html", with_tail=False)
    return f"<html>{head_html}<body>{body}</body></html>"


def _without_headline(text: str, title: str | None) -> str:
    """Drop a first line that only repeats the headline (kept when it sits in the body)."""
    first, _, rest = text.partition("\n")
    if title and (_same_words(first, title) or _same_words(first, title.rsplit(" - ", 1)[0])):
        return rest.strip()
    return text


def _same_words(a: str, b: str) -> bool:
    def words(value: str) -> list[str]:
        return "".join(c if c.isalnum() else " " for c in value.casefold()).split()

    return bool(words(a)) and words(a) == words(b)


def _render_html(
    document: trafilatura.settings.Document, text: str, url: str | None, title: str | None
) -> str:
    body = getattr(document, "body", None)
    if body is not None and len(body):
        try:
            from trafilatura.htmlprocessing import convert_to_html

            tree = convert_to_html(body)
            content = tree.find("body")
            content = tree if content is None else content
            first = next(iter(content), None)
            if (
                first is not None
                and first.tag in ("h1", "h2", "h3")
                and not _without_headline("".join(first.itertext()), title)
            ):
                content.remove(first)
            rendered = etree.tostring(tree, encoding="unicode", method="html")
            cleaned = clean_html(rendered, url)
            if cleaned.strip():
                return cleaned
        except (ImportError, ValueError, TypeError, etree.LxmlError):
            pass
    return text_to_html(text)


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
