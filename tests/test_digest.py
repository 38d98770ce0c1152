from __future__ import annotations

import email
import os
from datetime import UTC, datetime, time
from email.policy import default
from pathlib import Path

from aggregator.config import DigestSettings, FeedConfig
from aggregator.digest import build_digest, render_html, render_message, render_text, summarise
from aggregator.models import StoredArticle

NOW = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)
FEEDS = [
    FeedConfig(url="https://a.example/feed", name="Alpha Daily", tags=["world"]),
    FeedConfig(url="https://b.example/feed", name="Beta Wire", tags=["world"]),
    FeedConfig(url="https://c.example/feed", name="Gamma Tech"),
]
SETTINGS = DigestSettings(to=["reader@example.com"], send_at=time(7, 0), timezone="Europe/Paris")


def stored(
    id: int, feed: str, title: str, text: str = "Body text.", duplicate_of: int | None = None, hour: int = 5
) -> StoredArticle:
    when = datetime(2026, 11, 28, hour, 0, tzinfo=UTC)
    return StoredArticle(
        id,
        feed,
        "feed title",
        f"https://x.example/{id}",
        title,
        "Ann Author",
        when,
        when,
        "Feed summary.",
        text,
        f"<p>{text}</p>",
        "page",
        duplicate_of,
    )


def test_groups_follow_feeds_yaml_and_duplicates_fold_in() -> None:
    articles = [
        stored(1, "https://c.example/feed", "Tech story"),
        stored(2, "https://a.example/feed", "World story", hour=4),
        stored(3, "https://b.example/feed", "World story (wire copy)", duplicate_of=2),
        stored(4, "https://b.example/feed", "Later world story", hour=5),
    ]
    digest = build_digest(articles, set(), FEEDS, SETTINGS, NOW)
    assert digest is not None
    assert [g.name for g in digest.groups] == ["World", "Gamma Tech"]
    world = digest.groups[0]
    assert [i.title for i in world.items] == ["Later world story", "World story"]  # newest first
    assert [(o.source, o.url) for o in world.items[1].also_in] == [("Beta Wire", "https://x.example/3")]
    assert digest.count == 3 and digest.duplicates == 1
    assert digest.article_ids == (1, 2, 3, 4)
    assert world.items[1].published_label == "Sat 28 Nov, 05:00"  # Europe/Paris


def test_story_already_sent_is_not_sent_again() -> None:
    late_copy = stored(9, "https://b.example/feed", "Copy", duplicate_of=2)
    assert build_digest([late_copy], {2}, FEEDS, SETTINGS, NOW) is None


def test_nothing_to_send() -> None:
    assert build_digest([], set(), FEEDS, SETTINGS, NOW) is None


def test_max_items_leaves_the_rest_unsent() -> None:
    articles = [stored(i, "https://c.example/feed", f"S{i}", hour=i) for i in range(1, 6)]
    capped = DigestSettings(to=["r@example.com"], max_items=2)
    digest = build_digest(articles, set(), FEEDS, capped, NOW)
    assert digest is not None and digest.count == 2
    assert digest.article_ids == (4, 5)


def test_summary_cuts_at_a_sentence() -> None:
    sentence = "This sentence has exactly eight words in it. "
    text = sentence * 20
    summary = summarise(text)
    assert summary.endswith("in it.")
    assert len(summary.split()) <= 60
    assert summarise("Short text.") == "Short text."
    long_one = " ".join(["word"] * 100)
    assert summarise(long_one).endswith("…")


def test_hostile_feed_text_is_escaped() -> None:
    evil = stored(
        1,
        "https://c.example/feed",
        '<script>alert("x")</script>Title\r\nBcc: x@evil',
        text='<img src=x onerror="alert(1)"> text',
    )
    digest = build_digest([evil], set(), FEEDS, SETTINGS, NOW)
    assert digest is not None
    html = render_html(digest)
    assert "<script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;" in html
    message = render_message(digest, SETTINGS, NOW)
    parsed = email.message_from_bytes(message.as_bytes(), policy=default)
    assert parsed["Bcc"] is None


def test_message_is_two_part_with_stable_id() -> None:
    articles = [stored(1, "https://a.example/feed", "Hello & welcome")]
    digest = build_digest(articles, set(), FEEDS, SETTINGS, NOW)
    assert digest is not None
    message = render_message(digest, SETTINGS, NOW)
    assert message.get_content_type() == "multipart/alternative"
    kinds = [part.get_content_type() for part in message.iter_parts()]
    assert kinds == ["text/plain", "text/html"]
    again = render_message(build_digest(articles, set(), FEEDS, SETTINGS, NOW), SETTINGS, NOW)  # type: ignore[arg-type]
    assert message["Message-ID"] == again["Message-ID"]
    assert message["Message-ID"].endswith("@example.com>")
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Subject"] == "Your daily digest, 28 Nov 2026: 1 story"
    text = render_text(digest)
    assert "Hello & welcome" in text and "https://x.example/1" in text
    html = render_html(digest)
    assert "Hello &amp; welcome" in html and 'style="' in html  # CSS inlined
    assert "prefers-color-scheme: dark" in html


GOLDEN = Path(__file__).parent / "data" / "digests"


def test_text_part_matches_the_golden_file() -> None:
    """The plain-text part, byte for byte; UPDATE_GOLDEN=1 rewrites the file."""
    articles = [
        stored(1, "https://c.example/feed", "Tech story", text="A gadget was released. " * 30),
        stored(2, "https://a.example/feed", "World story", text="Leaders met today. " * 40, hour=4),
        stored(3, "https://b.example/feed", "World story (wire copy)", duplicate_of=2),
    ]
    digest = build_digest(articles, set(), FEEDS, SETTINGS, NOW)
    assert digest is not None
    message = render_message(digest, SETTINGS, NOW)
    text = message.get_body(preferencelist=("plain",)).get_content()
    golden = GOLDEN / "basic.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")
    headers = {k: v for k, v in message.items() if k not in ("Date", "Message-ID", "Content-Type")}
    assert headers["Subject"] == "Your daily digest, 28 Nov 2026: 2 stories"
    assert headers["List-Id"] == "daily digest <daily.digest.aggregator>"


def test_summary_does_not_run_a_heading_into_the_first_sentence() -> None:
    from aggregator.sanitize import html_to_text

    text = html_to_text(
        "<h2>Storm warning</h2><p>The coast guard closed the harbour. Boats stay in.</p>"
        "<h3>What comes next</h3><p>Forecasters expect calmer weather on Sunday.</p>"
    )
    assert summarise(text) == "The coast guard closed the harbour. Boats stay in."
    # Only headings: nothing better to show than they are.
    assert summarise("Storm warning\n\nWhat comes next") == "Storm warning What comes next"
