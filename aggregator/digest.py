"""Build the digest: pick the articles not yet sent, group them, render text + HTML into an email."""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path
from urllib.parse import quote

import css_inline
from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    select_autoescape,
)

from aggregator.config import DigestSettings, FeedConfig, feed_label
from aggregator.controls import clean_text, shorten
from aggregator.dedup import lead_order
from aggregator.links import safe_link
from aggregator.models import StoredArticle

SUMMARY_WORDS = 60
# What a story shows at most, in characters: one absurd field (a 100,000-character title, a
# "word" of 10,000 letters) shortens that story, not the room every other story has.
SHOWN_TITLE = 250
SHOWN_NAME = 80
SHOWN_SUMMARY = 600
WORDS_PER_MINUTE = 230
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")
# A line of up to this many words without sentence punctuation at its end is a heading.
_HEADING_WORDS = 12
_ENDS_SENTENCE = re.compile(r"[.!?…:;,\"'”’)\]]$")
_HEADER_UNSAFE = re.compile(r"[\r\n\x00-\x1f\x7f]+")
# Inline styles win over a <style> block, so dark mode goes in after inlining, with !important.
_DARK_MODE = """<style>
@media (prefers-color-scheme: dark) {
  body, .wrap { background: #161513 !important; color: #e8e4dc !important; }
  .card { background: #22201d !important; }
  h1, h3 a, .summary { color: #ece7de !important; }
  .meta, .also, .also a, .lede, .kicker, .footer, .footer a, .toc a, .more { color: #a9a194 !important; }
  h2 { color: #e0a97e !important; }
  .masthead, .item { border-color: #3a3631 !important; }
}
</style>"""


@functools.cache
def _environment(folder: Path | None) -> Environment:
    """Jinja2 with the shipped templates, or a user's folder whose files take precedence."""
    shipped = PackageLoader("aggregator", "templates")
    loader = shipped if folder is None else ChoiceLoader([FileSystemLoader(str(folder)), shipped])
    return Environment(
        loader=loader,
        autoescape=select_autoescape(["html", "html.j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@dataclass(frozen=True, slots=True)
class OtherCopy:
    source: str
    url: str  # an http(s) URL, or "" when the copy has none (shown without a link)


@dataclass(frozen=True, slots=True)
class DigestItem:
    article_id: int
    title: str
    url: str  # an http(s) URL, or "" when the story has none (shown without a link)
    source: str
    published: datetime | None
    published_label: str
    author: str | None
    reading_minutes: int
    summary: str
    also_in: tuple[OtherCopy, ...]
    copy_ids: tuple[int, ...]  # the lead and every duplicate shown with it
    compact: bool = False  # shown as a title link only (the size budget ran out)
    feed_url: str = ""  # the lead's feed: sources are counted by feed, not by name
    summary_source: tuple[str, str] = ("", "")  # (full text, feed summary) to summarise


@dataclass(frozen=True, slots=True)
class DigestGroup:
    name: str
    anchor: str
    items: tuple[DigestItem, ...]
    more: int = 0  # items past the size budget, only counted


@dataclass(frozen=True, slots=True)
class Digest:
    name: str
    title: str
    date_label: str
    subject: str
    run_key: str
    groups: tuple[DigestGroup, ...]
    # Every article this digest covers (marked sent with it), duplicates included; once laid
    # out (``fit``), not those of the stories only counted ("and N more"): they wait for the next.
    article_ids: tuple[int, ...]
    duplicates: int
    schedule_label: str
    templates: Path | None = None  # a folder whose templates replace the shipped ones
    public_url: str = ""  # service.public_url, ending in "/", or "" when not set

    @property
    def browser_url(self) -> str:
        """This digest's page on the site `aggregator run` serves, or "" without a public URL."""
        return f"{self.public_url}digests/{quote(self.run_key, safe=':')}" if self.public_url else ""

    @property
    def count(self) -> int:
        return sum(len(g.items) + g.more for g in self.groups)

    @property
    def source_count(self) -> int:
        return len({i.feed_url or i.source for g in self.groups for i in g.items})

    @property
    def reading_minutes(self) -> int:
        return sum(i.reading_minutes for g in self.groups for i in g.items)


def build_digest(
    articles: Sequence[StoredArticle],
    already_sent: set[int],
    feeds: Sequence[FeedConfig],
    settings: DigestSettings,
    now: datetime,
    public_url: str | None = None,
) -> Digest | None:
    """Return the digest of ``articles`` (unsent ones), or None when there is nothing to send.

    ``public_url``: where the site `aggregator run` serves is reached; the digest then links to
    its page there, and with ``digest.link_to: reader`` story titles to their reader view.

    Duplicates fold into their representative as "Also in" links; a duplicate whose
    representative was sent in an earlier digest is covered but not shown again.
    """
    titles = {a.feed_url: a.feed_name for a in articles}
    names = {f.url: f.label(titles.get(f.url)) for f in feeds}
    for url, title in titles.items():
        names.setdefault(url, feed_label(url, title=title))  # a feed no longer configured
    stories: dict[int, list[StoredArticle]] = {}
    covered: list[int] = []
    wanted = _filter(feeds, settings)
    for article in articles:
        root = article.duplicate_of or article.id
        if root in already_sent or not wanted(article):
            # The story went out before (never send it twice), or this digest's filters leave
            # it out for good: covered, so that it is not considered again every day.
            covered.append(article.id)
            continue
        stories.setdefault(root, []).append(article)
    zone = settings.zone
    items: list[tuple[str, DigestItem]] = []
    for copies in stories.values():
        # The story is led by its earliest published copy: the representative its copies'
        # duplicate_of points at, unless the story went out before that copy arrived.
        seen = min(c.first_seen for c in copies)
        lead = min(copies, key=lambda c: lead_order(c.published, c.first_seen, c.id, seen))
        others = [c for c in copies if c.id != lead.id]
        item = _item(lead, others, names, zone)
        if public_url and settings.link_to == "reader":
            item = replace(item, url=f"{public_url}articles/{lead.id}")
        items.append((lead.feed_url, item))
    if not items and not settings.send_empty:
        return None
    order = _group_order(feeds, names)
    groups: dict[str, list[DigestItem]] = {}
    for feed_url, item in items:
        groups.setdefault(_group_of(feed_url, feeds, names), []).append(item)
    ordered = sorted(groups.items(), key=lambda kv: order.get(kv[0], len(order)))
    built = []
    for name, group_items in ordered:
        group_items.sort(key=lambda i: i.published.timestamp() if i.published else 0, reverse=True)
        built.append(DigestGroup(name, _anchor(name), tuple(group_items)))
    if settings.max_items is not None:
        built = _cap(built, settings.max_items)
    shown = [i for g in built for i in g.items]
    covered.extend(cid for item in shown for cid in item.copy_ids)
    duplicates = sum(len(i.copy_ids) - 1 for i in shown)
    local_now = now.astimezone(zone)
    date_label = f"{local_now:%A} {local_now.day} {local_now:%B %Y}"
    count = sum(len(g.items) for g in built)
    subject = _header_safe(
        settings.subject.format(
            name=settings.name,
            date=f"{local_now.day} {local_now:%b %Y}",
            count=count,
            items=f"{count} {'story' if count == 1 else 'stories'}",
        )
    )
    ids = tuple(sorted(set(covered)))
    fingerprint = hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]
    return Digest(
        name=settings.name,
        title=f"Your {settings.name} digest",
        date_label=date_label,
        subject=subject,
        run_key=f"{settings.name}:{local_now:%Y-%m-%d}:{fingerprint}",
        groups=tuple(built),
        article_ids=ids,
        duplicates=duplicates,
        schedule_label=settings.schedule_label,
        templates=settings.templates,
        public_url=public_url or "",
    )


def render_text(digest: Digest) -> str:
    return _environment(digest.templates).get_template("digest.txt.j2").render(digest=digest)


def render_html(digest: Digest) -> str:
    html = _environment(digest.templates).get_template("digest.html.j2").render(digest=digest)
    inlined = css_inline.inline(html)
    return inlined.replace("</head>", _DARK_MODE + "</head>", 1)


def fit(digest: Digest, budget: int) -> tuple[Digest, str]:
    """Return the digest laid out so its HTML stays under ``budget`` bytes, and that HTML.

    Items keep their summaries while they fit; then the later ones become title links; then
    the last are only counted ("and N more"), and stay unsent for the next digest.
    """
    count = sum(len(group.items) for group in digest.groups)
    # Start near the answer: a full item takes at least ~500 bytes of inlined HTML and a title
    # link ~150, so more than that never fits; each try below renders the whole message.
    full, shown = min(count, budget // 500), min(count, max(1, budget // 150))
    while True:
        laid_out = _layout(digest, full, shown)
        html = render_html(laid_out)
        # At least one story is always shown (as a title link), however small the budget: a
        # digest that only counted its stories would mark none sent, and the next one too.
        if len(html.encode("utf-8")) <= budget or shown <= min(count, 1):
            return laid_out, html
        if full > 0:
            full = full * 3 // 4 if full > 8 else full - 1
        else:
            shown = shown * 3 // 4 if shown > 8 else shown - 1


def _layout(digest: Digest, full: int, shown: int) -> Digest:
    groups = []
    position = 0
    waiting: set[int] = set()  # the copies of stories only counted: not sent with this digest
    for group in digest.groups:
        kept: list[DigestItem] = []
        more = group.more
        for item in group.items:
            if position < full:
                summary = item.summary or _summary(item.summary_source)
                kept.append(replace(item, compact=False, summary=summary))
            elif position < shown:
                kept.append(replace(item, compact=True))
            else:
                more += 1
                waiting.update(item.copy_ids)
            position += 1
        groups.append(DigestGroup(group.name, group.anchor, tuple(kept), more))
    ids = tuple(i for i in digest.article_ids if i not in waiting) if waiting else digest.article_ids
    return replace(digest, groups=tuple(groups), article_ids=ids)


def _summary(sources: tuple[str, str]) -> str:
    return shorten(summarise(sources[0]) or summarise(sources[1]), SHOWN_SUMMARY)


def render_message(digest: Digest, settings: DigestSettings, now: datetime) -> EmailMessage:
    """Return the multipart/alternative email (text/plain + text/html) for ``digest``."""
    return compose(digest, settings, now)[1]


def compose(digest: Digest, settings: DigestSettings, now: datetime) -> tuple[Digest, EmailMessage]:
    """Return ``digest`` laid out within the size budget (``fit``), whose ``article_ids`` are
    what this email covers, and the multipart/alternative email (text/plain + text/html)."""
    laid_out, html = fit(digest, settings.max_html_bytes)
    message = EmailMessage()
    message["Subject"] = digest.subject
    message["From"] = settings.from_
    message["To"] = ", ".join(settings.to)
    message["Date"] = format_datetime(now)
    message["Message-ID"] = message_id(digest.run_key, settings.from_)
    message["List-Id"] = f"{_header_safe(settings.name)} digest <{_slug(settings.name)}.digest.aggregator>"
    if settings.list_unsubscribe:
        message["List-Unsubscribe"] = _header_safe(settings.list_unsubscribe)
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    message.set_content(render_text(laid_out))
    message.add_alternative(html, subtype="html")
    return laid_out, message


def message_id(run_key: str, sender: str) -> str:
    """Return a Message-ID that is the same every time the same run is rendered."""
    domain = parseaddr(sender)[1].rpartition("@")[2] or "aggregator.invalid"
    digest = hashlib.sha256(run_key.encode()).hexdigest()[:32]
    return f"<digest.{digest}@{domain}>"


def _item(
    lead: StoredArticle,
    others: Sequence[StoredArticle],
    names: dict[str, str],
    zone: object,
) -> DigestItem:
    published = lead.published or lead.first_seen
    local = published.astimezone(zone)  # type: ignore[arg-type]
    words = lead.text.count(" ") + 1 if lead.text else 0  # a word count, cheaply
    url = safe_link(lead.url) or ""
    return DigestItem(
        article_id=lead.id,
        title=_shown(lead.title, SHOWN_TITLE) or url or "(untitled)",
        url=url,
        source=_shown(names[lead.feed_url], SHOWN_NAME),
        published=published,
        published_label=f"{local:%a} {local.day} {local:%b}, {local:%H:%M}",
        author=_shown(lead.author, SHOWN_NAME) or None,
        reading_minutes=max(1, math.ceil(words / WORDS_PER_MINUTE)),
        summary="",  # made in _layout, only for the items shown with one
        summary_source=(lead.text, lead.summary),
        also_in=tuple(
            OtherCopy(_shown(names[o.feed_url], SHOWN_NAME), safe_link(o.url) or "") for o in others
        ),
        copy_ids=(lead.id, *(o.id for o in others)),
        feed_url=lead.feed_url,
    )


def _shown(value: str | None, limit: int) -> str:
    """One line of stored text as a story shows it: no controls (rows stored before they were
    removed), whitespace collapsed, at most ``limit`` characters."""
    if not value:
        return ""
    return shorten(" ".join(clean_text(value).split()), limit)


def summarise(text: str, max_words: int = SUMMARY_WORDS) -> str:
    """Return the first sentences of ``text`` up to about ``max_words`` words, whole sentences.

    Headings are not sentences: those before the first paragraph are skipped and the next one
    ends the summary, so that "Heading" and "Text." never read as "Heading Text.".
    """
    text = " ".join(_lead_paragraphs(text).split())
    if not text:
        return ""
    words = text.split(" ")
    if len(words) <= max_words:
        return text
    summary = ""
    for sentence in _SENTENCE_END.split(text):
        candidate = f"{summary} {sentence}".strip()
        if len(candidate.split(" ")) > max_words:
            break
        summary = candidate
    if not summary:  # a first sentence longer than the budget: cut at a word, mark it
        summary = " ".join(words[:max_words]).rstrip(",;:") + " …"
    return summary


def _lead_paragraphs(text: str) -> str:
    """Return ``text`` from its first paragraph of prose up to the next heading (one per line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    kept: list[str] = []
    for line in lines:
        if not _is_heading(line):
            kept.append(line)
        elif kept:
            break
    return "\n".join(kept) if kept else text


def _is_heading(line: str) -> bool:
    return len(line.split()) <= _HEADING_WORDS and not _ENDS_SENTENCE.search(line)


def _filter(feeds: Sequence[FeedConfig], settings: DigestSettings) -> Callable[[StoredArticle], bool]:
    """Return the test an article must pass to be in this digest (tags and keywords)."""
    tagged = {f.url for f in feeds if set(f.tags) & set(settings.tags)}
    include = [k.casefold() for k in settings.include]
    exclude = [k.casefold() for k in settings.exclude]

    def wanted(article: StoredArticle) -> bool:
        if settings.tags and article.feed_url not in tagged:
            return False
        if not include and not exclude:
            return True
        haystack = f"{article.title}\n{article.text or article.summary}".casefold()
        if include and not any(k in haystack for k in include):
            return False
        return not any(k in haystack for k in exclude)

    return wanted


def _group_of(feed_url: str, feeds: Sequence[FeedConfig], names: dict[str, str]) -> str:
    for feed in feeds:
        if feed.url == feed_url:
            return feed.tags[0].capitalize() if feed.tags else _shown(names[feed.url], SHOWN_NAME)
    return "Other"


def _group_order(feeds: Sequence[FeedConfig], names: dict[str, str]) -> dict[str, int]:
    order: dict[str, int] = {}
    for feed in feeds:
        key = feed.tags[0].capitalize() if feed.tags else _shown(names[feed.url], SHOWN_NAME)
        order.setdefault(key, len(order))
    return order


def _cap(groups: list[DigestGroup], limit: int) -> list[DigestGroup]:
    capped = []
    left = limit
    for group in groups:
        if left <= 0:
            break
        capped.append(DigestGroup(group.name, group.anchor, group.items[:left]))
        left -= len(capped[-1].items)
    return capped


def _anchor(name: str) -> str:
    return "g-" + (_slug(name) or "group")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _header_safe(value: str) -> str:
    return _HEADER_UNSAFE.sub(" ", value).strip()
