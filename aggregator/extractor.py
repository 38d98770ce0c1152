"""Full text of an article page (trafilatura). Pure: takes HTML, makes no network calls."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import trafilatura
from lxml import etree

from aggregator.models import ExtractedPage
from aggregator.sanitize import clean_html, text_to_html

log = logging.getLogger(__name__)


def extract_page(html: str | bytes, url: str | None = None) -> ExtractedPage | None:
    """Return the article found in ``html``, or None when there is no article text."""
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
    text = document.text.strip()
    return ExtractedPage(
        text=text,
        html=_render_html(document, text, url),
        title=(document.title or "").strip() or None,
        author=(document.author or "").strip() or None,
        published=_date(document.date),
        canonical_url=document.url or None,
        language=document.language or None,
        site_name=document.sitename or None,
        image=document.image or None,
    )


def _render_html(document: trafilatura.settings.Document, text: str, url: str | None) -> str:
    body = getattr(document, "body", None)
    if body is not None and len(body):
        try:
            from trafilatura.htmlprocessing import convert_to_html

            rendered = etree.tostring(convert_to_html(body), encoding="unicode", method="html")
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
