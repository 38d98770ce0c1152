"""Full text of an article page (trafilatura). Pure: takes HTML, makes no network calls.

Strategy (measured with ``python -m benchmarks.extraction_quality``; dev set F1 0.981, precision
0.979, against 0.952 and 0.929 for bare trafilatura, at about 1.1 times its time per page): the
page is parsed once (``load_html``: trafilatura's loader with a faster parser) and an article
body split into several same-class containers (ads between them) is
joined, because trafilatura reads only the first container it finds. Metadata is read once, then
the ``favor_precision`` pass runs: trafilatura's rules alone first, and only when they kept less
than a short article (``_ENOUGH_WORDS``) its whole cascade (the comparison with readability and
jusText), then, if that too kept little, a fast balanced pass; the precision pass is cleaner, so it
wins unless it lost half of the balanced pass's prose (it sometimes keeps only a footer). The
chosen body is then trimmed by rules about page furniture in general, never about sites: leading
headings (headline, standfirst, kicker), "Label: link" lines and runs of link-only lines (related
stories), and at the end link lists, calls to action (subscribe, follow us, copyright) and the
labels they leave behind. The article's images go into the HTML rendering only, after the text is
read (see _add_images), so that the text never depends on them.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from itertools import pairwise

import lxml.html
from lxml import etree

from aggregator import bounds
from aggregator.internals.trafilatura import (
    DEFAULT_CONFIG,
    decode_file,
    is_dubious_html,
    is_image_file,
    repair_faulty_html,
    trafilatura,
    xmltotxt,
)
from aggregator.logs import fields
from aggregator.models import ExtractedPage
from aggregator.page_meta import page_metadata, restore_initials
from aggregator.sanitize import clean_html, https_url, text_to_html
from aggregator.words import find_words

log = logging.getLogger(__name__)

_MAX_FILE_SIZE = DEFAULT_CONFIG.getint("DEFAULT", "MAX_FILE_SIZE")
# trafilatura's parser settings (trafilatura.utils.HTML_PARSER), with one change: every element is
# an lxml.html.HtmlElement, chosen in C. lxml.html's own lookup, which gives forms and inputs
# their own classes, is Python code called for each element proxy lxml creates, and trafilatura
# walks the tree many times: the lookup was a fifth of the extraction's CPU on the dev pages.
_PARSER = lxml.html.HTMLParser(
    collect_ids=False, default_doctype=False, encoding="utf-8", remove_comments=True, remove_pis=True
)
_PARSER.set_element_class_lookup(
    etree.ElementDefaultClassLookup(
        element=lxml.html.HtmlElement,
        comment=lxml.html.HtmlComment,
        pi=lxml.html.HtmlProcessingInstruction,
        entity=lxml.html.HtmlEntity,
    )
)
# The precision pass is dropped when it kept less than this share of the balanced pass's prose.
_MIN_PROSE_KEPT = 0.5
# A precision pass that kept this many words kept an article, not a footer: the balanced pass,
# there to catch the footer case, is skipped (on the dev set the one page it rescues kept 24
# words; skipping it above 150 leaves every dev page's text unchanged and saves a third of the
# extraction time).
_ENOUGH_WORDS = 150
_PROSE_LINE_TOKENS = 12

# Text between two parts of a split body: ads, a caption or a "read more" box, not a whole section.
_MAX_TEXT_BETWEEN_PARTS = 1000
_NOT_TEXT = {"script", "style", "noscript", "template"}
_ALNUM = re.compile(r"[^\W_]+")  # runs of str.isalnum() characters
# A class naming an article body: "article-body", "story__content", "entry-content", "body-text"...
_BODY_CLASS = re.compile(
    r"(article|story|entry|post|main)[-_]*(body|content|text)|body[-_]*(text|copy)", re.I
)
# "Related: <link>", "READ MORE: <link>", "See also - <link>": a short label, then a link.
_LINK_LABEL = re.compile(r"^\W*(\w+\W+){0,3}?\w+\s*[:|»›–—-]\s+(?=\S)")
# Lines that ask the reader to do something rather than tell the story; only short lines at the end.
_CALL_TO_ACTION = re.compile(
    r"\b(subscrib\w*|sign up|click here|download (the|our) (\w+ ){0,3}app|have a (news )?tip"
    r"|follow (us|me|him|her|them) (on|at|@)"
    r"|follow .{0,40}?\bon (twitter|facebook|instagram|youtube|linkedin)"
    r"|(email|write to|contact) .{0,40}?\bat\s+\S+@|copyright\s*(©|\(c\)|\d{4})|all rights reserved)\b|©",
    re.I,
)
_CALL_TO_ACTION_TOKENS = 60
# A bare label: a few words, no sentence punctuation ("Comments", "You may also like", "Tags").
_LABEL_TOKENS = 5
# Labels of what follows an article: dropped at its end even when nothing was trimmed after them.
_END_LABEL_TOKENS = 6
_END_LABEL = re.compile(
    r"^\W*(\d+\s+)?(comments?|leave a (comment|reply)|tell us what you think|tags?"
    r"|share( this( article| story)?)?|related( (posts?|articles?|stories|coverage))?"
    r"|you (may|might) also like|more from .*|popular on .*|read more|recommended|advertisement"
    r"|explore further)\W*$",
    re.I,
)
_SENTENCE_END = re.compile(r"[.!?\"”'’)]\s*$")
_PIXEL_SIZES = {"0", "1", "0px", "1px"}
# How far above an article paragraph an image and that paragraph may meet: the paragraph's
# container (a figure between paragraphs) or the one around it, not the page's wrapper.
_IMAGE_REACH = 2
# Images looked at on a page: a bound for pages made of thumbnails.
_MAX_IMAGES = 300


def extract_page(
    html: str | bytes,
    url: str | None = None,
    *,
    selector: str | None = None,
    feed_has: Collection[str] = (),
) -> ExtractedPage | None:
    """Return the article found in ``html``, or None when there is no article text.

    ``selector``, a CSS selector, names the article body on sites the generic extractor gets
    wrong: only that element (and the page's <head>, for the metadata) is extracted from.
    ``feed_has`` names what the feed entry gives already, so that the page is not searched for
    it (``prepare.build_article`` prefers the feed's): "author" (a machine-readable author in
    the page's meta tags or JSON-LD is still read; the search of the page for a byline is
    skipped), "date" (no date is read).

    Raises ``bounds.Refused`` for a page over the bounds (``bounds.page_refusal``), before it
    is parsed.
    """
    if not html:
        return None
    # Decoded (and decompressed) first, as load_html would: the bounds are on the text parsed.
    html = decode_file(html, _MAX_FILE_SIZE)
    reason = bounds.page_refusal(html)
    if reason is not None:
        raise bounds.Refused(reason)
    html = bounds.cap_attributes(html)
    if selector:
        selected = _select(html, selector)
        if not selected:
            return None
        html = selected
    try:
        tree = load_html(html)
        if tree is None:
            return None
        metadata = page_metadata(
            tree, url, search_author="author" not in feed_has, find_dates="date" not in feed_has
        )
        _join_split_bodies(tree)
        precise, balanced = _passes(tree, url)
    except (ValueError, TypeError, etree.LxmlError) as exc:
        log.info("extraction failed", extra=fields(url=url, error=str(exc)))
        return None
    document = _choose(precise, balanced)
    if document is None:
        return None
    title = metadata.title
    text = _without_headline(_trim(document.body, _Links(tree)), title)
    if not text:
        return None
    _add_images(document.body, tree, url)
    return ExtractedPage(
        text=text,
        html=_render_html(document, text, url, title),
        title=(title or "").strip() or None,
        author=restore_initials((metadata.author or "").strip(), html) or None,
        published=_date(metadata.date),
        canonical_url=metadata.url or None,
        language=metadata.language or None,
        site_name=metadata.sitename or None,
        image=https_url(metadata.image, url),
    )


def load_html(html: str | bytes) -> lxml.html.HtmlElement | None:
    """Parse a page as ``trafilatura.load_html`` does, step for step, with ``_PARSER``.

    ``tests/test_extractor.py`` checks that the trees are the same as trafilatura's own.
    """
    text = decode_file(html, _MAX_FILE_SIZE)
    beginning = text[:50].lower()
    dubious = is_dubious_html(beginning)
    text = repair_faulty_html(text, beginning)
    tree: lxml.html.HtmlElement | None = None
    as_bytes = False
    try:
        tree = lxml.html.fromstring(text, parser=_PARSER)
    except ValueError:  # a str with an encoding declaration: lxml wants bytes
        as_bytes = True
    except etree.LxmlError as exc:
        log.info("page not parsed", extra=fields(error=str(exc)))
    if as_bytes or tree is None or len(tree) < 1:
        try:
            tree = lxml.html.fromstring(text.encode("utf-8", "surrogatepass"), parser=_PARSER)
        except (ValueError, etree.LxmlError) as exc:
            log.info("page not parsed", extra=fields(error=str(exc)))
            tree = None
    if tree is not None and dubious and len(tree) < 2:
        return None
    return tree


def _select(html: str | bytes, selector: str) -> str | None:
    """Return a page holding only <head> and the first element ``selector`` matches."""
    from lxml.cssselect import CSSSelector, SelectorError

    try:
        # lxml alone decodes bytes as Latin-1 when <meta charset> comes late (after <title>).
        root = lxml.html.document_fromstring(decode_file(html) if isinstance(html, bytes) else html)
        matches = CSSSelector(selector)(root)
    except (etree.LxmlError, SelectorError, ValueError) as exc:
        log.info("selector not applied", extra=fields(selector=selector, error=str(exc)))
        return None
    if not matches:
        log.info("selector matched nothing", extra=fields(selector=selector))
        return None
    head = root.find("head")
    head_html = etree.tostring(head, encoding="unicode", method="html") if head is not None else ""
    body = etree.tostring(matches[0], encoding="unicode", method="html", with_tail=False)
    return f"<html>{head_html}<body>{body}</body></html>"


def _join_split_bodies(tree: lxml.html.HtmlElement) -> None:
    """Move the parts of an article body split into same-class containers into the first one.

    Pages put ads or "read more" boxes between parts of the body, each part in its own
    ``<div class="article-body">``; trafilatura reads only the first container it matches.
    """
    groups: dict[tuple[str, str], list[lxml.html.HtmlElement]] = defaultdict(list)
    for element in tree.iter("div", "section", "article", "main"):
        css_class = element.get("class") or ""
        named = _may_name_body(css_class) and _BODY_CLASS.search(css_class)
        if named or element.get("itemprop") == "articleBody":
            groups[(element.tag, css_class)].append(element)
    for members in groups.values():
        if len(members) < 2:
            continue
        parts = [member for member in members if _holds_prose(member)]
        parts = [part for part in parts if not any(a in parts for a in part.iterancestors())]
        if len(parts) < 2:
            continue
        # Only parts close to each other: a same-class teaser far below (related posts) stays out.
        order = {element: index for index, element in enumerate(tree.iter())}
        elements = list(order)
        gaps = [_text_between(elements, order, one, other) for one, other in pairwise(parts)]
        for part, gap in zip(parts[1:], gaps, strict=True):
            if gap > _MAX_TEXT_BETWEEN_PARTS:
                break
            parts[0].extend(list(part))
            part.drop_tree()


def _may_name_body(css_class: str) -> bool:
    """Whether ``css_class`` holds a word every ``_BODY_CLASS`` match holds: most classes do
    not, and three substring tests cost a tenth of the pattern's search."""
    if not css_class.isascii():  # case-insensitive matching of other scripts: leave it to re
        return bool(css_class)
    lowered = css_class.lower()
    return "body" in lowered or "content" in lowered or "text" in lowered


def _holds_prose(element: lxml.html.HtmlElement) -> bool:
    paragraphs = [text for text in (p.text_content() for p in element.iter("p")) if text.strip()]
    return len(paragraphs) >= 2 and sum(map(len, paragraphs)) >= 200


def _text_between(
    elements: list[lxml.html.HtmlElement],
    order: dict[lxml.html.HtmlElement, int],
    first: lxml.html.HtmlElement,
    second: lxml.html.HtmlElement,
) -> int:
    """Return how many characters of text lie between the end of ``first`` and ``second``."""
    end = max(order[element] for element in first.iter())
    between = [first, *elements[end + 1 : order[second]]]
    return sum(
        len((element.tail or "").strip())
        + (len((element.text or "").strip()) if element is not first and _holds_text(element) else 0)
        for element in between
    )


def _holds_text(element: lxml.html.HtmlElement) -> bool:
    return isinstance(element.tag, str) and element.tag not in _NOT_TEXT


def _passes(
    tree: lxml.html.HtmlElement, url: str | None
) -> tuple[trafilatura.settings.Document | None, trafilatura.settings.Document | None]:
    """Return the precision pass and, when it fell short, the balanced pass (else None).

    The precision pass runs trafilatura's own rules first (``fast``); only when they kept less
    than ``_ENOUGH_WORDS`` does it run again with trafilatura's whole cascade, which compares
    the rules' result with readability's and jusText's. That comparison was a fifth of the
    extraction's time, and on the dev set it changed the text of no page on which the rules
    alone had kept an article (it rescues pages where they kept nothing or a fragment).
    """
    precise = _extract_body(tree, url, precision=True, fast=True)
    if _enough(precise):
        return precise, None
    precise = _extract_body(tree, url, precision=True, fast=False)
    if _enough(precise):
        return precise, None
    return precise, _extract_body(tree, url, precision=False, fast=True)


def _enough(document: trafilatura.settings.Document | None) -> bool:
    return document is not None and len((document.text or "").split()) >= _ENOUGH_WORDS


def _extract_body(
    tree: lxml.html.HtmlElement, url: str | None, *, precision: bool, fast: bool
) -> trafilatura.settings.Document | None:
    """Return trafilatura's document for ``tree`` (left intact), or None when it found no text.

    ``precision`` favours precision, else a balanced pass; ``fast`` skips trafilatura's
    comparison with its external extractors.
    """
    document = trafilatura.bare_extraction(
        tree,
        url=url,
        fast=fast,
        favor_precision=precision,
        include_comments=False,
        include_tables=True,
        include_images=False,
        include_links=False,
        # Never on: its cache makes a result depend on every page seen before.
        deduplicate=False,
    )
    if not isinstance(document, trafilatura.settings.Document) or not (document.text or "").strip():
        return None
    return document


def _choose(
    precise: trafilatura.settings.Document | None, balanced: trafilatura.settings.Document | None
) -> trafilatura.settings.Document | None:
    """Return the precision pass unless it lost most of the balanced pass's prose."""
    if precise is None or balanced is None:
        return precise or balanced
    precise_text, balanced_text = precise.text or "", balanced.text or ""
    if precise_text == balanced_text:
        return precise
    lines = balanced_text.split("\n")
    prose = _shingles(line for line in lines if _count_words(line) >= _PROSE_LINE_TOKENS) or _shingles(lines)
    kept = len(prose & _shingles([precise_text])) / len(prose) if prose else 1.0
    return precise if kept >= _MIN_PROSE_KEPT else balanced


def _shingles(lines: Iterable[str]) -> set[tuple[str, ...]]:
    """Return the distinct 4-word shingles of ``lines`` (a line of 1-3 words is one shingle)."""
    found: set[tuple[str, ...]] = set()
    for line in lines:
        words = find_words(line)
        if words:
            found.update(tuple(words[i : i + 4]) for i in range(max(1, len(words) - 3)))
    return found


def _count_words(text: str) -> int:
    return len(find_words(text))


def _words(text: str) -> str:
    return " ".join(find_words(text))


class _Links:
    """The texts of a page's links, to tell how much of a line is link text.

    Also the words of the lines the trims look at: they ask about most lines more than once (in
    the body, then at its end), so both answers are kept.
    """

    def __init__(self, tree: lxml.html.HtmlElement) -> None:
        self._tree = tree
        self._texts: set[str] | None = None  # every link's words, joined by one space
        # Links of two words or more by their first word, padded with a space each side, and
        # their number of words: the ones that count inside a longer line.
        self._long: dict[str, list[tuple[str, int]]] = {}
        self._shares: dict[str, float] = {}
        self._words: dict[str, list[str]] = {}

    def _index(self) -> set[str]:
        if self._texts is None:
            # Most links hold only text: then .text is their text_content(), without its XPath
            # evaluation (the parser drops comments, so no child means no markup). Menus and
            # share bars repeat link texts: each distinct text is split once.
            raw = {
                anchor.text_content() if len(anchor) else anchor.text or "" for anchor in self._tree.iter("a")
            }
            self._texts = texts = {words for words in map(_words, raw) if words}
            for words in texts:
                first, space, _ = words.partition(" ")
                if space:
                    self._long.setdefault(first, []).append((f" {words} ", words.count(" ") + 1))
        return self._texts

    def words(self, text: str) -> list[str]:
        """``find_words(text)``, kept."""
        known = self._words.get(text)
        if known is None:
            known = self._words[text] = find_words(text)
        return known

    def count(self, text: str) -> int:
        return len(self.words(text))

    def share(self, text: str) -> float:
        """Return the share of the words of ``text`` that are the text of some link.

        Inside a longer line only links of two words or more count: one-word menu links
        ("World", "Video") would otherwise make ordinary sentences look like links.
        """
        known = self._shares.get(text)
        if known is None:
            known = self._shares[text] = self._share(text)
        return known

    def _share(self, text: str) -> float:
        tokens = self.words(text)
        if not tokens:
            return 0.0
        words = " ".join(tokens)
        if words in self._index():
            return 1.0
        padded = f" {words} "
        long = self._long
        linked = sum(count for first in set(tokens) for link, count in long.get(first, ()) if link in padded)
        return min(1.0, linked / len(tokens))


def _block_text(block: etree._Element) -> str:
    return xmltotxt(block, False).strip()


def _is_link_line(text: str, links: _Links) -> bool:
    return links.count(text) > 0 and links.share(text) >= 0.8


def _is_link_list(block: etree._Element, links: _Links) -> bool:
    """A list whose items all hold a link and are short: related stories, a link roll."""
    if block.tag != "list":
        return False
    items = [text for text in (_block_text(item) for item in block) if links.count(text)]
    return (
        bool(items)
        and all(links.share(text) > 0 for text in items)
        and sum(map(links.count, items)) <= 25 * len(items)
    )


def _is_label(block: etree._Element, text: str, links: _Links) -> bool:
    words = links.count(text)
    return 0 < words <= _LABEL_TOKENS and (block.tag == "head" or not _SENTENCE_END.search(text))


def _is_labelled_link(text: str, links: _Links) -> bool:
    """ "Related: <headline>", "READ MORE: <headline>": a short label and then a link."""
    label = _LINK_LABEL.match(text)
    return (
        label is not None
        and links.count(text[label.end() :]) >= 3
        and _is_link_line(text[label.end() :], links)
    )


def _trim(body: etree._Element, links: _Links) -> str:
    """Remove page furniture from trafilatura's ``body`` in place (see the module docstring);
    return the text of what is left, a line for each block.

    The blocks' texts are read here anyway, to judge them: the article's text is theirs,
    stripped, rather than a second serialisation of the whole body (the same lines, less the
    spaces some blocks began or ended with).
    """
    blocks = list(body)
    texts = {id(block): _block_text(block) for block in blocks}
    drop: set[int] = set()
    # Leading headings: the headline, a standfirst or a kicker, never the body's first paragraph.
    for block in blocks:
        if block.tag != "head" and links.count(texts[id(block)]):
            break
        drop.add(id(block))
    if len(drop) == len(blocks):
        drop.clear()
    # Related stories inside the body: "Label: link" lines and runs of two or more link-only lines.
    run: list[int] = []
    for index, block in enumerate([*blocks, None]):
        text = texts[id(block)] if block is not None else ""
        if block is not None and _is_labelled_link(text, links):
            drop.add(id(block))
            if index + 1 < len(blocks) and _is_link_list(blocks[index + 1], links):
                drop.add(id(blocks[index + 1]))
        if block is not None and (_is_link_line(text, links) or _is_link_list(block, links)):
            run.append(index)
            continue
        if len(run) >= 2:
            drop.update(id(blocks[i]) for i in run)
            if run[0] > 0 and _is_label(blocks[run[0] - 1], texts[id(blocks[run[0] - 1])], links):
                drop.add(id(blocks[run[0] - 1]))
        run = []
    # The end: link lists, calls to action and the labels left without their section.
    trimmed = False
    for block in reversed(blocks):
        text = texts[id(block)]
        if id(block) in drop or not links.count(text):
            drop.add(id(block))
            continue
        if (
            _is_link_line(text, links)
            or _is_link_list(block, links)
            or (links.count(text) <= _CALL_TO_ACTION_TOKENS and _CALL_TO_ACTION.search(text))
            or (links.count(text) <= _END_LABEL_TOKENS and _END_LABEL.match(text))
            or (trimmed and _is_label(block, text, links))
        ):
            drop.add(id(block))
            trimmed = True
            continue
        break
    if len(drop) >= len(blocks):
        drop.clear()
    for block in blocks:
        if id(block) in drop:
            body.remove(block)
    lines = [(body.text or "").strip()] + [texts[id(block)] for block in blocks if id(block) not in drop]
    return "\n".join(line for line in lines if line)


def _add_images(body: etree._Element, tree: lxml.html.HtmlElement, url: str | None) -> None:
    """Put the page's article images into ``body`` after the paragraphs they follow on the page.

    The text passes run without images: with them trafilatura also keeps captions, credits and
    image-led teasers, which cost precision (dev set F1 0.981 to 0.976). So an image goes in after
    the extracted paragraph just before it when both sit in that paragraph's container. Sidebars
    and teaser grids are further away; linked images (teasers, ads, share buttons), sources
    that do not name an image file and tracking pixels stay out.
    """
    blocks: dict[str, etree._Element] | None = None  # the body's paragraphs by their words, once asked
    placed: set[str] = set()
    # One walk in document order: the paragraphs met so far are what precedes each image.
    paragraphs: list[lxml.html.HtmlElement] = []
    images = 0
    for element in tree.iter("p", "img"):
        if element.tag == "p":
            paragraphs.append(element)
            continue
        images += 1
        if images > _MAX_IMAGES:
            break
        # Cheapest tests first: most of a page's images are icons, logos and teasers far from the text.
        if _is_pixel(element):
            continue
        ancestors = set(element.iterancestors())
        paragraph = _paragraph_before(_last_not_in(paragraphs, ancestors), ancestors)
        if paragraph is None:
            continue
        if blocks is None:
            blocks = {_words("".join(block.itertext())): block for block in body if block.tag == "p"}
            blocks.pop("", None)
        block = blocks.get(_words(paragraph.text_content()))
        if block is None:
            continue
        # Lazy-loading pages put a placeholder in src and the picture in data-src.
        source = https_url(element.get("data-src") or element.get("src"), url)
        if source is None or source in placed or not is_image_file(source):
            continue
        if any(not is_image_file(link.get("href")) for link in element.iterancestors("a")):
            continue
        graphic = etree.Element("graphic", src=source)
        if alt := (element.get("alt") or "").strip():
            graphic.set("alt", alt)
        graphic.tail, block.tail = block.tail, None
        block.addnext(graphic)
        placed.add(source)


def _paragraph_before(
    paragraph: lxml.html.HtmlElement | None, ancestors: set[lxml.html.HtmlElement]
) -> lxml.html.HtmlElement | None:
    """Return ``paragraph``, the one just before an image, if both sit in one close container
    (``ancestors``: the image's)."""
    if paragraph is None:
        return None
    container = paragraph
    for _ in range(_IMAGE_REACH):
        container = container.getparent()
        if container is None:
            return None
        if container in ancestors:
            return paragraph
    return None


def _last_not_in(
    paragraphs: list[lxml.html.HtmlElement], ancestors: set[lxml.html.HtmlElement]
) -> lxml.html.HtmlElement | None:
    """Return what XPath's ``preceding::p[1]`` selects for an element with these ``ancestors``,
    given ``paragraphs``, every ``<p>`` that starts before it in document order: the last one
    that is not its ancestor (that one holds the element; every other ends before it).

    Images used to look back through the tree one by one, each a walk over the paragraphs'
    earlier siblings; libxml2's own evaluation of the expression went over the whole preceding
    part of the document for each.
    """
    for paragraph in reversed(paragraphs):
        if paragraph not in ancestors:
            return paragraph
    return None


def _is_pixel(image: lxml.html.HtmlElement) -> bool:
    return any((image.get(side) or "").strip().lower() in _PIXEL_SIZES for side in ("width", "height"))


def _without_headline(text: str, title: str | None) -> str:
    """Drop a first line that only repeats the headline (kept when it sits in the body)."""
    first, _, rest = text.partition("\n")
    if title and (_same_words(first, title) or _same_words(first, title.rsplit(" - ", 1)[0])):
        return rest.strip()
    return text


def _same_words(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` hold the same letters and digits, in the same words, case aside."""
    words = _ALNUM.findall(a.casefold())
    return bool(words) and words == _ALNUM.findall(b.casefold())


def _render_html(
    document: trafilatura.settings.Document, text: str, url: str | None, title: str | None
) -> str:
    body = getattr(document, "body", None)
    if body is not None and len(body):
        try:
            from aggregator.internals.trafilatura import convert_to_html

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
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        return None
