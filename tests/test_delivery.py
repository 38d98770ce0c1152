"""Delivering the digest: retries, failures, filters, size budget, headers — on real SMTP."""

from __future__ import annotations

import email
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from email.policy import default
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiosmtpd.controller import Controller
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.config import DigestSettings, FeedConfig, Settings, load_settings
from aggregator.delivery import send_digest
from aggregator.digest import build_digest, render_html, render_message
from aggregator.errors import DeliveryError
from aggregator.models import FetchRecord, NewArticle, StoredArticle
from aggregator.scheduler import last_slot
from aggregator.storage import Store

from .conftest import ConfigWriter, SmtpSink, free_port

NOW = datetime(2026, 11, 28, 7, 0, tzinfo=UTC)


def body(tag: str) -> str:
    """A text of 120 words of its own: distinct texts, so none is a near-duplicate of another."""
    return " ".join(f"{tag}{i}" for i in range(120))


class Flaky:
    """An SMTP handler that answers each DATA with the next of ``answers``, then accepts."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = list(answers)
        self.accepted: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.answers:
            return self.answers.pop(0)
        self.accepted.append(envelope)
        return "250 OK"


@pytest.fixture
def flaky_smtp() -> Any:
    def start(answers: list[str]) -> tuple[Flaky, int]:
        handler = Flaky(answers)
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port)
        controller.start()
        started.append(controller)
        return handler, port

    started: list[Controller] = []
    yield start
    for controller in started:
        controller.stop()


def seeded_settings(write_config: ConfigWriter, port: int, **digest: Any) -> Settings:
    config = write_config(
        feeds=[
            {"url": "https://a.example/feed", "name": "Alpha", "tags": ["world"]},
            {"url": "https://b.example/feed", "name": "Beta", "tags": ["tech"]},
        ],
        smtp={"host": "127.0.0.1", "port": port, "starttls": False, "retries": 3, "retry_wait": "10ms"},
        digest=digest,
    )
    settings = load_settings(config, environ={})
    store = Store.open(settings.database_url)
    record = FetchRecord(200, None, None, "Feed", None, NOW, NOW)
    store.store_refresh(
        "https://a.example/feed",
        [
            NewArticle(
                "https://a.example/feed",
                "a1",
                "https://a.example/1",
                "Election results in",
                None,
                NOW,
                "",
                f"Voters went to the polls. {body('vote')}",
                "<p>x</p>",
                "feed",
                None,
            ),
            NewArticle(
                "https://a.example/feed",
                "a2",
                "https://a.example/2",
                "Football final",
                None,
                NOW,
                "",
                f"The final whistle blew. {body('ball')} sport",
                "<p>x</p>",
                "feed",
                None,
            ),
        ],
        record,
    )
    store.store_refresh(
        "https://b.example/feed",
        [
            NewArticle(
                "https://b.example/feed",
                "b1",
                "https://b.example/1",
                "New phone launched",
                None,
                NOW,
                "",
                f"A phone. {body('phone')}",
                "<p>x</p>",
                "feed",
                None,
            ),
        ],
        record,
    )
    store.close()
    return settings


def deliver(settings: Settings) -> Any:
    store = Store.open(settings.database_url)
    try:
        return send_digest(store, settings, NOW, sleep=lambda _: None)
    finally:
        store.close()


def unsent(settings: Settings) -> int:
    store = Store.open(settings.database_url)
    try:
        return len(store.unsent_articles(settings.digest.name))
    finally:
        store.close()


def test_temporary_failures_are_retried(flaky_smtp: Any, write_config: ConfigWriter) -> None:
    handler, port = flaky_smtp(["451 4.3.0 try again later", "451 4.3.0 try again later"])
    settings = seeded_settings(write_config, port)
    report = deliver(settings)
    assert report.digest is not None and len(handler.accepted) == 1
    assert unsent(settings) == 0


def test_permanent_failure_keeps_articles_and_is_reported(
    flaky_smtp: Any, write_config: ConfigWriter
) -> None:
    handler, port = flaky_smtp(["550 5.7.1 rejected"])
    settings = seeded_settings(write_config, port)
    with pytest.raises(DeliveryError, match="550") as caught:
        deliver(settings)
    assert not caught.value.temporary and handler.accepted == []
    assert unsent(settings) == 3
    store = Store.open(settings.database_url)
    failure = store.last_digest_failure(settings.digest.name)
    store.close()
    assert failure is not None and "550" in failure[1]
    report = deliver(settings)  # the next run delivers them
    assert report.digest is not None and len(handler.accepted) == 1


def test_temporary_failure_past_retries_keeps_the_run_pending(
    flaky_smtp: Any, write_config: ConfigWriter
) -> None:
    handler, port = flaky_smtp(["421 4.3.2 shutting down"] * 4)
    settings = seeded_settings(write_config, port)
    with pytest.raises(DeliveryError) as caught:
        deliver(settings)
    assert caught.value.temporary
    assert unsent(settings) == 3
    deliver(settings)
    (envelope,) = handler.accepted
    first_id = email.message_from_bytes(envelope.content, policy=default)["Message-ID"]
    # the same run, retried, keeps its Message-ID
    assert first_id.startswith("<digest.")


def test_filters_tags_and_keywords(smtp_server: SmtpSink, write_config: ConfigWriter) -> None:
    settings = seeded_settings(write_config, smtp_server.port, tags=["world"], exclude=["sport"])
    report = deliver(settings)
    assert report.digest is not None
    titles = [i.title for g in report.digest.groups for i in g.items]
    assert titles == ["Election results in"]
    assert unsent(settings) == 0  # filtered out for good, not waiting forever
    feeds = [FeedConfig(url="https://a.example/feed", name="Alpha")]
    only_phones = DigestSettings(include=["PHONE"])
    articles = [stored(1), replace(stored(2), title="A new phone")]
    digest = build_digest(articles, set(), feeds, only_phones, NOW)
    assert digest is not None
    assert [i.title for g in digest.groups for i in g.items] == ["A new phone"]


def test_empty_digest_only_when_asked(smtp_server: SmtpSink, write_config: ConfigWriter) -> None:
    settings = seeded_settings(write_config, smtp_server.port, send_empty=True)
    deliver(settings)
    deliver(settings)  # nothing new: an empty digest is sent as asked
    assert len(smtp_server.messages) == 2
    assert (
        "Nothing new since the last digest"
        in smtp_server.messages[1].get_body(preferencelist=("plain",)).get_content()
    )


def stored(index: int, feed: str = "https://a.example/feed", words: int = 200) -> StoredArticle:
    text = " ".join(f"Sentence {index} word{i}." for i in range(words // 3))
    return StoredArticle(
        index,
        feed,
        "Alpha",
        f"https://a.example/{index}",
        f"Story {index}",
        None,
        NOW,
        NOW,
        "",
        text,
        "",
        "feed",
        None,
    )


def test_size_budget_turns_items_into_links_then_counts() -> None:
    feeds = [FeedConfig(url="https://a.example/feed", name="Alpha")]
    digest_settings = DigestSettings(max_html_bytes="30KB", list_unsubscribe="<mailto:u@x.org>")
    digest = build_digest([stored(i) for i in range(1, 400)], set(), feeds, digest_settings, NOW)
    assert digest is not None
    message = render_message(digest, digest_settings, NOW)
    html = message.get_body(preferencelist=("html",)).get_content()
    assert len(html.encode()) <= 30_000
    assert "and " in html and " more stories in Alpha" in html
    assert message["List-Unsubscribe"] == "<mailto:u@x.org>"
    assert len(digest.article_ids) == 399  # all covered by the run
    small = build_digest([stored(1)], set(), feeds, digest_settings, NOW)
    assert small is not None and "more stories" not in render_html(small)


def test_templates_can_be_overridden(tmp_path: Path) -> None:
    (tmp_path / "digest.txt.j2").write_text("CUSTOM {{ digest.count }}\n")
    feeds = [FeedConfig(url="https://a.example/feed", name="Alpha")]
    digest_settings = DigestSettings(templates=tmp_path)
    digest = build_digest([stored(1)], set(), feeds, digest_settings, NOW)
    assert digest is not None
    message = render_message(digest, digest_settings, NOW)
    assert message.get_body(preferencelist=("plain",)).get_content() == "CUSTOM 1\n"
    assert "Story 1" in message.get_body(preferencelist=("html",)).get_content()  # shipped html


@pytest.mark.parametrize(
    ("zone", "now", "expected"),
    [
        # Berlin: 07:00 is 06:00 UTC in winter, 05:00 UTC in summer
        ("Europe/Berlin", datetime(2026, 3, 28, 12, tzinfo=UTC), datetime(2026, 3, 28, 6, tzinfo=UTC)),
        ("Europe/Berlin", datetime(2026, 3, 29, 12, tzinfo=UTC), datetime(2026, 3, 29, 5, tzinfo=UTC)),
        ("Europe/Berlin", datetime(2026, 10, 25, 12, tzinfo=UTC), datetime(2026, 10, 25, 6, tzinfo=UTC)),
        # New York: 07:00 EST is 12:00 UTC, EDT 11:00 UTC; DST starts 8 Mar, ends 1 Nov 2026
        ("America/New_York", datetime(2026, 3, 7, 18, tzinfo=UTC), datetime(2026, 3, 7, 12, tzinfo=UTC)),
        ("America/New_York", datetime(2026, 3, 8, 18, tzinfo=UTC), datetime(2026, 3, 8, 11, tzinfo=UTC)),
        ("America/New_York", datetime(2026, 11, 1, 18, tzinfo=UTC), datetime(2026, 11, 1, 12, tzinfo=UTC)),
    ],
)
def test_send_time_across_dst(zone: str, now: datetime, expected: datetime) -> None:
    slot = last_slot(now, time(7, 0), ZoneInfo(zone))
    assert slot == expected
    assert slot.astimezone(ZoneInfo(zone)).time() == time(7, 0)
    assert now - slot < timedelta(days=1)


hostile_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=80
) | st.sampled_from(
    [
        "A\r\nBcc: victim@example.com",
        "<script>alert(1)</script>",
        "\x00\n\r",
        "=?utf-8?q?x?=",
        "</title><img src=x onerror=alert(1)>",
    ]
)


@settings(max_examples=60, deadline=None)
@given(title=hostile_text, author=hostile_text, feed_name=hostile_text)
def test_no_feed_text_breaks_headers_or_markup(title: str, author: str, feed_name: str) -> None:
    feeds = [FeedConfig(url="https://a.example/feed", name=feed_name)]
    digest_settings = DigestSettings(subject="{name}: {items}")
    article = StoredArticle(
        1,
        "https://a.example/feed",
        feed_name,
        "https://a.example/1",
        title,
        author,
        NOW,
        NOW,
        "",
        f"{title} {author}",
        "",
        "feed",
        None,
    )
    digest = build_digest([article], set(), feeds, digest_settings, NOW)
    assert digest is not None
    message = render_message(digest, digest_settings, NOW)
    parsed = email.message_from_bytes(message.as_bytes(), policy=default)
    assert parsed["Bcc"] is None and parsed["To"] == "reader@example.com"
    assert sorted(set(parsed.keys())) == sorted(set(message.keys()))
    html = parsed.get_body(preferencelist=("html",)).get_content()
    lowered = html.lower()
    assert "<script" not in lowered and "<img" not in lowered  # feed text stays text


def test_several_digests_each_with_its_own_filters(
    write_config: ConfigWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aggregator.cli import main

    config = write_config(
        feeds=[
            {"url": "https://a.example/feed", "name": "Alpha", "tags": ["world"]},
            {"url": "https://b.example/feed", "name": "Beta", "tags": ["tech"]},
        ],
        digests=[
            {"name": "world", "to": ["w@example.com"], "tags": ["world"]},
            {
                "name": "tech",
                "to": ["t@example.com"],
                "tags": ["tech"],
                "schedule": "weekly",
                "day": "friday",
            },
        ],
    )
    settings = load_settings(config, environ={})
    assert [d.name for d in settings.all_digests] == ["world", "tech"]
    store = Store.open(settings.database_url)
    record = FetchRecord(200, None, None, "Feed", None, NOW, NOW)
    for feed, key in (("https://a.example/feed", "a"), ("https://b.example/feed", "b")):
        store.store_refresh(
            feed,
            [
                NewArticle(
                    feed, key, f"{feed}/{key}", f"Story {key}", None, NOW, "", body(key), "", "feed", None
                )
            ],
            record,
        )
    store.close()
    assert main(["digest", "--name", "tech", "--config", str(config)]) == 0
    assert "Story b" in capsys.readouterr().out
    assert main(["digest", "--send", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "sent world digest with 1 story" in out and "sent tech digest with 1 story" in out
    messages = sorted((tmp_path / "outbox").glob("*.eml"))
    assert len(messages) == 2
    parsed = [email.message_from_bytes(m.read_bytes(), policy=default) for m in messages]
    assert sorted(m["To"] for m in parsed) == ["t@example.com", "w@example.com"]
    assert main(["digest", "--send", "--config", str(config)]) == 0
    assert "world digest: nothing new to send" in capsys.readouterr().out
    assert main(["digest", "--name", "nope", "--config", str(config)]) == 2


@pytest.mark.parametrize(
    ("settings_given", "message"),
    [
        ({"digest": {"name": "a"}, "digests": [{"name": "b"}]}, "not both"),
        ({"digests": [{"name": "a"}, {"name": "a"}]}, "its own name"),
        ({"digest": {"schedule": "weekly", "day": "funday"}}, "day of the week"),
    ],
)
def test_digest_config_errors(
    write_config: ConfigWriter, settings_given: dict[str, Any], message: str
) -> None:
    from aggregator.errors import ConfigError

    config = write_config(**settings_given)
    with pytest.raises(ConfigError, match=message):
        load_settings(config, environ={})


def arrived_after() -> NewArticle:
    """A story that arrives after a digest run was recorded."""
    return NewArticle(
        "https://b.example/feed",
        "b2",
        "https://b.example/2",
        "Arrived after",
        None,
        NOW,
        "",
        f"Later. {body('later')}",
        "",
        "feed",
        None,
    )


def test_a_run_left_pending_is_resent_as_it_was(smtp_server: SmtpSink, write_config: ConfigWriter) -> None:
    from aggregator.delivery import prepare_digest
    from aggregator.digest import message_id

    settings = seeded_settings(write_config, smtp_server.port)
    store = Store.open(settings.database_url)
    # A crash after the server accepted the message but before it was marked sent: the run
    # stays pending with its three articles.
    crashed = prepare_digest(store, settings, NOW - timedelta(hours=1))
    assert crashed is not None
    store.begin_digest_run(
        crashed.name, crashed.run_key, "<x@y>", crashed.article_ids, NOW - timedelta(hours=1)
    )
    later = FetchRecord(200, None, None, "Feed", None, NOW, NOW)
    store.store_refresh(
        "https://b.example/feed",
        [arrived_after()],
        later,
    )
    store.close()
    report = deliver(settings)
    first, second = smtp_server.messages
    # the pending run again, unchanged: same Message-ID, the same three stories only
    assert first["Message-ID"] == message_id(crashed.run_key, settings.digest.from_)
    assert (
        "3 stories" in first["Subject"]
        and "Arrived after" not in first.get_body(preferencelist=("plain",)).get_content()
    )
    # then a new digest with what came since
    assert report.digest is not None and "1 story" in second["Subject"]
    assert unsent(settings) == 0
    deliver(settings)
    assert len(smtp_server.messages) == 2


def test_a_digest_sent_for_its_slot_is_not_sent_again_for_it(
    smtp_server: SmtpSink, write_config: ConfigWriter
) -> None:
    """Several processes: one whose job fires after another delivered sends nothing, even
    with articles that arrived since; the next slot, or a send asked for by hand, sends them."""
    settings = seeded_settings(write_config, smtp_server.port)
    slot = last_slot(NOW, settings.digest.send_at, settings.digest.zone)
    store = Store.open(settings.database_url)
    try:
        assert send_digest(store, settings, NOW, slot=slot).digest is not None
        store.store_refresh(
            "https://b.example/feed",
            [arrived_after()],
            FetchRecord(200, None, None, "Feed", None, NOW, NOW),
        )
        later = NOW + timedelta(seconds=2)
        assert send_digest(store, settings, later, slot=slot).digest is None
        assert len(smtp_server.messages) == 1
        tomorrow = NOW + timedelta(days=1)
        next_slot = last_slot(tomorrow, settings.digest.send_at, settings.digest.zone)
        assert send_digest(store, settings, tomorrow, slot=next_slot).digest is not None
    finally:
        store.close()
    assert len(smtp_server.messages) == 2 and "1 story" in smtp_server.messages[1]["Subject"]
