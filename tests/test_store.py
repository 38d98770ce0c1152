from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from aggregator.database import create_db_engine, migrate
from aggregator.dedup import url_key
from aggregator.errors import StorageError
from aggregator.models import NewArticle
from aggregator.schema import Base
from aggregator.store import FetchRecord, Seen, Store

from .conftest import free_port

NOW = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)
LONG_TEXT = " ".join(f"word{i}" for i in range(80))


def article(key: str, url: str, text: str = "", feed: str = "https://a.example/feed") -> NewArticle:
    return NewArticle(
        feed,
        key,
        url,
        f"Title {key}",
        "Author",
        NOW,
        "summary",
        text,
        f"<p>{text}</p>",
        "page" if text else "none",
        None if not text else __import__("aggregator.dedup").dedup.text_hash(text),
    )


def store_batch(store: Store, feed: str, articles: list[NewArticle]) -> tuple[int, int]:
    record = FetchRecord(200, '"e"', None, "Feed", None, NOW, NOW)
    return store.store_refresh(feed, articles, record)


@pytest.fixture
def store(database_url: str) -> Store:
    opened = Store.open(database_url)
    yield opened
    opened.close()


def test_head_revision_constant_is_alembics_head() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from aggregator.database import HEAD_REVISION, MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD_REVISION


def test_migrations_match_the_models(database_url: str) -> None:
    engine = create_db_engine(database_url)
    migrate(engine)
    migrate(engine)  # a second start applies nothing and fails nothing
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == []


def test_articles_are_stored_once_per_entry(store: Store) -> None:
    feed = "https://a.example/feed"
    assert store_batch(store, feed, [article("k1", "https://a.example/1")]) == (1, 0)
    assert store_batch(
        store, feed, [article("k1", "https://a.example/1"), article("k2", "https://a.example/2")]
    ) == (1, 0)
    seen = store.seen(
        feed, ["k1", "k2", "k3"], [url_key("https://a.example/2"), url_key("https://b.example/")]
    )
    assert seen.entry_keys == {"k1", "k2"}
    assert seen.feed_links == seen.any_links == {url_key("https://a.example/2")}
    assert store.seen("https://other.example/feed", ["k1"], [url_key("https://a.example/2")]) == (
        Seen(set(), set(), {url_key("https://a.example/2")})
    )
    assert len(store.list_articles()) == 2


def test_same_url_or_same_text_in_another_feed_is_a_duplicate(store: Store) -> None:
    first = store_batch(
        store, "https://a.example/feed", [article("a1", "https://news.example/story?utm_source=a", LONG_TEXT)]
    )
    assert first == (1, 0)
    second = store_batch(
        store,
        "https://b.example/feed",
        [
            article("b1", "https://news.example/story", feed="https://b.example/feed"),
            article("b2", "https://other.example/copy", LONG_TEXT.upper(), feed="https://b.example/feed"),
            article("b3", "https://other.example/unrelated", feed="https://b.example/feed"),
        ],
    )
    assert second == (3, 2)
    by_url = {a.url: a for a in store.list_articles()}
    original = by_url["https://news.example/story?utm_source=a"]
    assert original.duplicate_of is None
    assert by_url["https://news.example/story"].duplicate_of == original.id
    assert by_url["https://other.example/copy"].duplicate_of == original.id
    assert by_url["https://other.example/unrelated"].duplicate_of is None


def test_failures_count_up_and_success_resets(store: Store) -> None:
    feed = "https://a.example/feed"
    store.ensure_feeds([feed], NOW)
    assert store.due_feeds([feed], NOW) == [feed]
    for expected in (1, 2):
        count = store.record_failure(
            feed, kind="http", message="HTTP 503", status=503, now=NOW, next_fetch=NOW + timedelta(hours=1)
        )
        assert count == expected
    assert store.due_feeds([feed], NOW) == []
    (status,) = store.feed_statuses([(feed, "A")])
    assert (status.consecutive_failures, status.last_status, status.error_kind) == (2, 503, "http")
    store_batch(store, feed, [])
    (status,) = store.feed_statuses([(feed, "A")])
    assert (status.consecutive_failures, status.last_error) == (0, None)
    assert store.feed_state(feed).etag == '"e"'


def test_digest_runs_mark_articles_sent_only_when_finished(store: Store) -> None:
    store_batch(
        store,
        "https://a.example/feed",
        [article("k1", "https://a.example/1"), article("k2", "https://a.example/2")],
    )
    ids = [a.id for a in store.unsent_articles("daily")]
    assert len(ids) == 2
    run = store.begin_digest_run("daily", "daily:run1", "<m1@x>", ids, NOW)
    store.fail_digest_run(run, "SMTP down")
    assert len(store.unsent_articles("daily")) == 2  # a failed delivery sends them again later
    run = store.begin_digest_run("daily", "daily:run1", "<m1@x>", ids, NOW)
    store.finish_digest_run(run, NOW)
    assert store.unsent_articles("daily") == []
    assert len(store.unsent_articles("weekly")) == 2  # another digest has its own state
    assert store.last_digest_sent("daily") == NOW
    with pytest.raises(StorageError, match="already delivered"):
        store.begin_digest_run("daily", "daily:run1", "<m1@x>", ids, NOW)


def test_unreachable_database_is_a_storage_error() -> None:
    with pytest.raises(StorageError, match="database unreachable"):
        Store.open(f"postgresql://nobody@127.0.0.1:{free_port()}/none?connect_timeout=2")


def test_bad_database_url_is_a_storage_error() -> None:
    with pytest.raises(StorageError):
        Store.open("not a url at all")
