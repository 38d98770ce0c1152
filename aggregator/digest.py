"""Build the digest: pick the articles not yet sent, group them, render text + HTML into an email."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

import css_inline
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from aggregator.config import DigestSettings, FeedConfig
from aggregator.models import StoredArticle

SUMMARY_WORDS = 60
WORDS_PER_MINUTE = 230
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")
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

_templates = Environment(
    loader=PackageLoader("aggregator", "templates"),
    autoescape=select_autoescape(["html", "html.j2"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True, slots=True)
class OtherCopy:
    source: str
    url: str


@dataclass(frozen=True, slots=True)
class DigestItem:
    article_id: int
    title: str
    url: str
    source: str
    published: datetime | None
    published_label: str
    author: str | None
    reading_minutes: int
    summary: str
    also_in: tuple[OtherCopy, ...]
    copy_ids: tuple[int, ...]  # the lead and every duplicate shown with it


@dataclass(frozen=True, slots=True)
class DigestGroup:
    name: str
    anchor: str
    items: tuple[DigestItem, ...]


@dataclass(frozen=True, slots=True)
class Digest:
    name: str
    title: str
    date_label: str
    subject: str
    run_key: str
    groups: tuple[DigestGroup, ...]
    article_ids: tuple[int, ...]  # every article this digest covers, duplicates included
    duplicates: int
    schedule_label: str

    @property
    def count(self) -> int:
        return sum(len(g.items) for g in self.groups)

    @property
    def source_count(self) -> int:
        return len({i.source for g in self.groups for i in g.items})

    @property
    def reading_minutes(self) -> int:
        return sum(i.reading_minutes for g in self.groups for i in g.items)


def build_digest(
    articles: Sequence[StoredArticle],
    already_sent: set[int],
    feeds: Sequence[FeedConfig],
    settings: DigestSettings,
    now: datetime,
) -> Digest | None:
    """Return the digest of ``articles`` (unsent ones), or None when there is nothing to send.

    Duplicates fold into their representative as "Also in" links; a duplicate whose
    representative was sent in an earlier digest is covered but not shown again.
    """
    names = {f.url: f.display_name for f in feeds}
    by_id = {a.id: a for a in articles}
    stories: dict[int, list[StoredArticle]] = {}
    covered: list[int] = []
    for article in articles:
        root = article.duplicate_of or article.id
        if root in already_sent:
            covered.append(article.id)  # the story went out before: never send it twice
            continue
        stories.setdefault(root, []).append(article)
    zone = settings.zone
    items: list[tuple[str, DigestItem]] = []
    for root, copies in stories.items():
        lead = by_id.get(root) or copies[0]
        others = [c for c in copies if c.id != lead.id]
        items.append((lead.feed_url, _item(lead, others, names, zone)))
    if not items:
        return None
    order = _group_order(feeds)
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
        schedule_label=f"every day at {settings.send_at:%H:%M} {settings.timezone}",
    )


def render_text(digest: Digest) -> str:
    return _templates.get_template("digest.txt.j2").render(digest=digest)


def render_html(digest: Digest) -> str:
    html = _templates.get_template("digest.html.j2").render(digest=digest)
    inlined = css_inline.inline(html)
    return inlined.replace("</head>", _DARK_MODE + "</head>", 1)


def render_message(digest: Digest, settings: DigestSettings, now: datetime) -> EmailMessage:
    """Return the multipart/alternative email (text/plain + text/html) for ``digest``."""
    message = EmailMessage()
    message["Subject"] = digest.subject
    message["From"] = settings.from_
    message["To"] = ", ".join(settings.to)
    message["Date"] = format_datetime(now)
    message["Message-ID"] = message_id(digest.run_key, settings.from_)
    message["List-Id"] = f"{_header_safe(settings.name)} digest <{_slug(settings.name)}.digest.aggregator>"
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    message.set_content(render_text(digest))
    message.add_alternative(render_html(digest), subtype="html")
    return message


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
    words = len(lead.text.split())
    return DigestItem(
        article_id=lead.id,
        title=lead.title,
        url=lead.url,
        source=names.get(lead.feed_url, lead.feed_name),
        published=published,
        published_label=f"{local:%a} {local.day} {local:%b}, {local:%H:%M}",
        author=lead.author,
        reading_minutes=max(1, math.ceil(words / WORDS_PER_MINUTE)),
        summary=summarise(lead.text) or summarise(lead.summary),
        also_in=tuple(OtherCopy(names.get(o.feed_url, o.feed_name), o.url) for o in others),
        copy_ids=(lead.id, *(o.id for o in others)),
    )


def summarise(text: str, max_words: int = SUMMARY_WORDS) -> str:
    """Return the first sentences of ``text`` up to about ``max_words`` words, whole sentences."""
    text = " ".join(text.split())
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


def _group_of(feed_url: str, feeds: Sequence[FeedConfig], names: dict[str, str]) -> str:
    for feed in feeds:
        if feed.url == feed_url:
            return feed.tags[0].capitalize() if feed.tags else feed.display_name
    return "Other"


def _group_order(feeds: Sequence[FeedConfig]) -> dict[str, int]:
    order: dict[str, int] = {}
    for feed in feeds:
        key = feed.tags[0].capitalize() if feed.tags else feed.display_name
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
