from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import bindparam, func, insert, select, text
from sqlalchemy.orm import Session

from aggregator.config import DigestSettings, FeedConfig
from aggregator.database import create_db_engine, migrate
from aggregator.dedup import BANDS, add_band_keys, nearest_stored, text_profile, url_key
from aggregator.digest import build_digest
from aggregator.errors import StorageError
from aggregator.models import FetchRecord, NewArticle, Seen
from aggregator.schema import Article, ArticleBand, Base, Feed, RecentBands
from aggregator.storage import Store
from aggregator.storage.articles import stored_candidates
from aggregator.storage.bands import BandIndex, IndexProbe, RecentIndex, pack_keys, unpack_keys

from .conftest import free_port

NOW = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)
LONG_TEXT = " ".join(f"word{i}" for i in range(80))
DEDUP_DOCS = Path(__file__).parent / "data" / "dedup" / "docs"
FEED_A, FEED_B, FEED_C = "https://a.example/feed", "https://b.example/feed", "https://c.example/feed"


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


def test_links_are_seen_whether_or_not_they_are_the_article_url(store: Store) -> None:
    """A link that is the article's own URL is kept once (its key is the URL's); one that differs
    (the page named another canonical URL) is kept as the link. Both are seen."""
    feed = "https://a.example/feed"
    same = replace(article("k1", "https://a.example/1"), link_key=url_key("https://a.example/1"))
    moved = replace(article("k2", "https://a.example/canonical/2"), link_key=url_key("https://a.example/2"))
    assert store_batch(store, feed, [same, moved]) == (2, 0)
    with Session(store.engine) as session:
        stored = dict(session.execute(select(Article.entry_key, Article.link_key)).all())
    assert stored == {"k1": None, "k2": url_key("https://a.example/2")}
    links = [url_key("https://a.example/1"), url_key("https://a.example/2"), url_key("https://a.example/3")]
    seen = store.seen(feed, ["k1", "k2"], links)
    assert seen.feed_links == seen.any_links == set(links[:2])
    assert store.seen("https://other.example/feed", [], links).any_links == set(links[:2])


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


# -- near-duplicate texts (layer 4) ----------------------------------------------------------


def story(name: str) -> str:
    """A text of the labelled near-duplicate set (tests/data/dedup/docs)."""
    return (DEDUP_DOCS / f"{name}.txt").read_text(encoding="utf-8")


def copy(key: str, name: str, feed: str, text: str | None = None) -> NewArticle:
    """An article of ``feed`` at its own URL carrying the text ``name`` (or ``text``)."""
    host = feed.split("/")[2]
    return article(key, f"https://{host}/{key}", story(name) if text is None else text, feed=feed)


def by_key(store: Store) -> dict[str, int | None]:
    """Return url path -> duplicate_of, and url path + '#id' -> id, of every stored article."""
    found: dict[str, int | None] = {}
    for stored in store.list_articles():
        key = stored.url.rsplit("/", 1)[1]
        found[key], found[key + "#id"] = stored.duplicate_of, stored.id
    return found


def staged_and_merged(store: Store) -> tuple[int, int]:
    """Band keys of recent articles (schema.RecentBands) and in the index (ArticleBand)."""
    with store.engine.connect() as connection:
        recent = sum(len(blob) // 8 for blob in connection.execute(select(RecentBands.band_keys)).scalars())
        merged = connection.execute(select(func.count()).select_from(ArticleBand)).scalar_one()
    return recent, int(merged)


def band_rows(store: Store) -> int:
    """Band keys stored, staged or in the index."""
    return sum(staged_and_merged(store))


def test_near_duplicate_in_another_feed_points_at_the_first_copy(database_url: str) -> None:
    store = Store.open(database_url)
    assert store_batch(store, FEED_A, [copy("a1", "haftar-wire", FEED_A)]) == (1, 0)
    # A rewritten lead, a paragraph dropped and a credit line added; and another Haftar story.
    added = store_batch(
        store, FEED_B, [copy("b1", "haftar-herald", FEED_B), copy("b2", "haftar-other", FEED_B)]
    )
    assert added == (2, 1)
    store.close()
    # The band keys are in the database: a new process finds the story as well.
    store = Store.open(database_url)
    store_batch(store, FEED_C, [copy("c1", "haftar-metro", FEED_C), copy("c2", "haftar-followup", FEED_C)])
    seen = by_key(store)
    store.close()
    assert seen["a1"] is None
    assert seen["b1"] == seen["c1"] == seen["a1#id"]
    assert seen["b2"] is None and seen["c2"] is None  # same subject and names, other stories


def test_near_duplicates_within_one_batch_point_at_the_first(store: Store) -> None:
    batch = [
        copy("1", "fire-wire", FEED_A),
        copy("2", "fire-other", FEED_A),
        copy("3", "fire-herald", FEED_A),
        copy("4", "fire-metro", FEED_A),
        copy("5", "flood-wire", FEED_A),
    ]
    assert store_batch(store, FEED_A, batch) == (5, 2)
    seen = by_key(store)
    assert seen["3"] == seen["4"] == seen["1#id"]
    assert seen["1"] is seen["2"] is seen["5"] is None


def test_a_copy_in_the_batch_follows_the_first_copy_to_its_stored_story(store: Store) -> None:
    # The first article's URL is stored already (with the feed's short text); the second carries
    # nearly the first's text, not the stored one's: both belong to the stored story.
    store_batch(store, FEED_A, [article("a1", "https://wire.example/flood", "Floods in the Vessel valley.")])
    stored = store.list_articles()[0].id
    full = article("b1", "https://wire.example/flood", story("flood-wire"), feed=FEED_B)
    again = article("b2", "https://wire.example/flood?utm_source=x", story("flood-wire"), feed=FEED_B)
    assert store_batch(store, FEED_B, [full, copy("b3", "flood-herald", FEED_B), again]) == (3, 3)
    seen = by_key(store)
    assert seen["b3"] == stored
    assert {a.duplicate_of for a in store.list_articles() if a.id != stored} == {stored}


def test_the_earliest_story_is_the_representative(store: Store) -> None:
    paragraphs = story("fire-wire").split("\n\n")
    first_half, second_half = "\n\n".join(paragraphs[:5]), "\n\n".join(paragraphs[5:])
    store_batch(store, FEED_A, [copy("a1", "", FEED_A, first_half), copy("a2", "", FEED_A, second_half)])
    seen = by_key(store)
    assert seen["a1"] is seen["a2"] is None  # two halves: two stories
    # The whole text holds both: it joins the earlier.
    store_batch(store, FEED_B, [copy("b1", "fire-wire", FEED_B)])
    assert by_key(store)["b1"] == seen["a1#id"]


def test_short_texts_are_never_merged_on_text_alone(store: Store) -> None:
    brief = story("brief-shares-up")
    store_batch(store, FEED_A, [copy("a1", "", FEED_A, brief)])
    store_batch(store, FEED_B, [copy("b1", "", FEED_B, brief.replace("4 percent", "4.2 percent"))])
    assert [a.duplicate_of for a in store.list_articles()] == [None, None]
    assert band_rows(store) == 0


def test_band_keys_are_kept_for_each_text_but_not_for_exact_copies(store: Store) -> None:
    store_batch(store, FEED_A, [copy("a1", "mine-wire", FEED_A), copy("a2", "mine-wire", FEED_A)])
    assert band_rows(store) == BANDS
    store_batch(store, FEED_B, [copy("b1", "mine-wire", FEED_B), copy("b2", "mine-ledger", FEED_B)])
    assert band_rows(store) == 2 * BANDS
    seen = by_key(store)
    assert seen["a2"] == seen["b1"] == seen["b2"] == seen["a1#id"]


def test_recent_band_keys_are_merged_and_found_in_both_places(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aggregator.storage.bands

    # A merge each time the article ids cross a multiple of 4.
    monkeypatch.setattr(aggregator.storage.bands, "MERGE_EVERY", 4)
    store_batch(store, FEED_A, [copy("a1", "haftar-wire", FEED_A), copy("a2", "fire-wire", FEED_A)])
    assert staged_and_merged(store) == (2 * BANDS, 0)  # ids 1 and 2: staged only
    store_batch(store, FEED_A, [copy("a3", "flood-wire", FEED_A), copy("a4", "mine-wire", FEED_A)])
    assert staged_and_merged(store) == (0, 4 * BANDS)  # id 4 crossed: all merged, in order
    store_batch(store, FEED_A, [copy("a5", "summit-wire", FEED_A)])
    assert staged_and_merged(store) == (BANDS, 4 * BANDS)
    # Copies of a merged story and of a staged one are both found.
    store_batch(store, FEED_B, [copy("b1", "haftar-herald", FEED_B), copy("b2", "summit-metro", FEED_B)])
    seen = by_key(store)
    assert seen["b1"] == seen["a1#id"] and seen["b2"] == seen["a5#id"]


def test_recent_rows_in_runs_are_found_as_in_a_dict() -> None:
    """``RecentIndex`` keeps the rows it takes in as sorted runs, merging them as they grow: a
    lookup finds for each key the articles a dict of every row's keys gives, keys shared by
    several articles and runs merged or not."""
    import random

    rng = random.Random(5)
    for wide in (False, True):  # keys from a small pool (shared by many articles) or a large one
        pool = range(-(10**18), 10**18) if wide else range(-15, 15)
        index, expected = RecentIndex(), {}
        article_id = 0
        for batch in range(60):
            rows = []
            for _ in range(rng.randint(1, 30)):
                article_id += 1
                keys = list(dict.fromkeys(rng.choice(pool) for _ in range(8)))
                rows.append((article_id, pack_keys(keys)))
                add_band_keys(expected, tuple(keys), article_id)
            index.add_rows(rows)
            if batch % 3:  # the catch-up before the lock merges; the one under it does not
                index.merge_runs()
            assert index.seen == article_id
            wanted = sorted({*rng.sample(sorted(expected), 10), *rng.sample(pool, 10)})
            found: dict[int, list[int]] = {}
            index.hits(wanted, found)
            assert {key: sorted(ids) for key, ids in found.items()} == {
                key: sorted(expected[key]) if isinstance(expected[key], list) else [expected[key]]
                for key in wanted
                if key in expected
            }
        assert 1 < len(index.runs) < 12  # merged, into a few runs
        assert wide or any(isinstance(held, list) for held in expected.values())


@pytest.mark.parametrize("rows", [3, 250])
def test_a_merge_moves_every_recent_key_into_the_index(
    store: Store, monkeypatch: pytest.MonkeyPatch, rows: int
) -> None:
    """Several statements of ``rows`` pairs and a shorter last one (3), or one short one (250)."""
    import aggregator.storage.bands

    monkeypatch.setattr(aggregator.storage.bands, "MERGE_EVERY", 4)
    monkeypatch.setattr(aggregator.storage.bands, "MERGE_ROWS", rows)
    names = ["haftar-wire", "fire-wire", "flood-wire", "mine-wire"]
    with store.engine.connect() as connection:
        before = connection.execute(select(func.count()).select_from(ArticleBand)).scalar_one()
    assert before == 0
    store_batch(store, FEED_A, [copy(f"a{i}", name, FEED_A) for i, name in enumerate(names)])
    with store.engine.connect() as connection:
        merged = {
            tuple(row) for row in connection.execute(select(ArticleBand.band_key, ArticleBand.article_id))
        }
    seen = by_key(store)
    expected = {
        (key, seen[f"a{i}#id"])
        for i, name in enumerate(names)
        for key in set(text_profile(story(name)).band_keys)
    }
    assert merged == expected and staged_and_merged(store) == (0, len(expected))


def test_each_process_sees_the_recent_keys_and_merges_of_the_others(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aggregator.storage.bands

    # Two Stores on one database stand for two worker processes: each keeps its own copy of the
    # recent keys, brought up to date from the table before it looks.
    monkeypatch.setattr(aggregator.storage.bands, "MERGE_EVERY", 4)
    one, two = Store.open(database_url), Store.open(database_url)
    try:
        store_batch(one, FEED_A, [copy("a1", "haftar-wire", FEED_A)])
        assert store_batch(two, FEED_B, [copy("b1", "haftar-herald", FEED_B)]) == (1, 1)
        store_batch(two, FEED_B, [copy("b2", "fire-wire", FEED_B)])
        assert staged_and_merged(one) == (3 * BANDS, 0)
        # Ids 4 and 5 cross a multiple of 4: "one" merges what "two" holds in memory.
        store_batch(one, FEED_A, [copy("a2", "flood-wire", FEED_A), copy("a3", "mine-wire", FEED_A)])
        assert staged_and_merged(one) == (0, 5 * BANDS)
        batch = [copy("c1", "fire-herald", FEED_C), copy("c2", "mine-ledger", FEED_C)]
        assert store_batch(two, FEED_C, batch) == (2, 2)
        # Id 8 crosses the next multiple: "two" merges, and "one" finds the merged key.
        store_batch(two, FEED_B, [copy("b3", "summit-wire", FEED_B)])
        assert staged_and_merged(one) == (0, 8 * BANDS)
        # A probe of the index made before the last merge is not trusted: it is made again.
        profile = text_profile(story("summit-metro"))
        assert profile is not None
        stale = IndexProbe(merges=1, keys=frozenset(profile.band_keys), hits={})
        with Session(one.engine) as session:
            (candidates,) = stored_candidates(session.connection(), [profile], BandIndex(one.engine), stale)
            assert nearest_stored(profile, "", candidates) == by_key(one)["b3#id"]
        assert store_batch(one, FEED_A, [copy("a4", "summit-metro", FEED_A)]) == (1, 1)
        seen = by_key(one)
        assert seen["b1"] == seen["a1#id"]
        assert (seen["c1"], seen["c2"], seen["a4"]) == (seen["b2#id"], seen["a3#id"], seen["b3#id"])
    finally:
        one.close()
        two.close()


def test_a_copy_committed_between_the_probe_and_the_write_is_found(database_url: str) -> None:
    """The probe before the lock holds this process's recent keys; under the lock only the rows
    committed since are read, without taking them into that copy (the next probe does)."""
    one, two = Store.open(database_url), Store.open(database_url)
    try:
        store_batch(one, FEED_A, [copy("a1", "fire-wire", FEED_A)])
        profile = text_profile(story("haftar-herald"))
        assert profile is not None
        probe = one.bands.probe([profile])
        assert probe is not None and probe.recent == {}
        seen = one.bands.recent.seen
        store_batch(two, FEED_B, [copy("b1", "haftar-wire", FEED_B)])  # after the probe
        with one.writers.writing() as session:
            (candidates,) = stored_candidates(session.connection(), [profile], one.bands, probe)
            found = nearest_stored(profile, "", candidates)
        assert found == by_key(two)["b1#id"]
        assert one.bands.recent.seen == seen  # read under the lock, not taken in
        assert store_batch(one, FEED_A, [copy("a2", "haftar-metro", FEED_A)]) == (1, 1)
        assert one.bands.recent.seen > seen
    finally:
        one.close()
        two.close()


def test_recent_keys_of_deleted_articles_are_dropped(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import aggregator.storage.bands

    monkeypatch.setattr(aggregator.storage.bands, "MERGE_EVERY", 3)
    old = NOW - timedelta(days=100)
    body = story("haftar-wire")
    gone = NewArticle(FEED_A, "old", "https://a.example/old", "old", None, old, "", body, "", "page", "h1")
    store.store_refresh(FEED_A, [gone], FetchRecord(200, None, None, "F", None, old, old))
    run = store.begin_digest_run("daily", "daily:r", "<m@x>", [a.id for a in store.list_articles()], NOW)
    store.finish_digest_run(run, NOW)
    assert staged_and_merged(store) == (BANDS, 0)
    # Retention merges first, so the database's cascade deletes the merged keys with the article.
    assert store.delete_old_articles(NOW - timedelta(days=90), ["daily"]) == 1
    assert staged_and_merged(store) == (0, 0)
    # A recent row whose article is gone (written by hand here) is dropped at the next merge.
    with store.engine.begin() as connection:
        connection.execute(insert(RecentBands).values(article_id=0, band_keys=pack_keys([1])))
    batch = [copy(f"b{n}", name, FEED_B) for n, name in enumerate(("fire-wire", "flood-wire", "mine-wire"))]
    store_batch(store, FEED_B, batch)  # three new ids: one is a multiple of 3
    assert staged_and_merged(store) == (0, 3 * BANDS)
    assert store_batch(store, FEED_C, [copy("c1", "haftar-herald", FEED_C)]) == (1, 0)


def test_a_story_carried_by_many_feeds_is_found_past_the_candidate_limit(store: Store) -> None:
    names = ["wire", "ledger", "herald", "metro", "corrected", "updated"]
    for number in range(3):  # 18 stored copies of one story, each with its band keys
        feed = f"https://f{number}.example/feed"
        batch = [
            copy(f"{number}-{name}", "", feed, story(f"summit-{name}") + f" Carried by outlet {number}.")
            for name in names
        ]
        store_batch(store, feed, batch)
    assert band_rows(store) == 18 * BANDS
    store_batch(store, FEED_A, [copy("late", "summit-metro", FEED_A)])
    seen = by_key(store)
    first = seen["0-wire#id"]
    assert seen["late"] == first
    assert sum(value == first for key, value in seen.items() if "#" not in key) == 18


def test_copies_stored_at_once_by_two_processes_are_one_story(database_url: str) -> None:
    # Two connections, as two worker processes have: the second copy's transaction waits for
    # the first's, then sees its band keys.
    first, second = Store.open(database_url), Store.open(database_url)
    outcome: list[tuple[int, int]] = []

    def store_second() -> None:
        outcome.append(store_batch(second, FEED_B, [copy("b1", "mine-herald", FEED_B)]))

    thread = threading.Thread(target=store_second)
    try:
        with first.writers.writing() as session:
            feed_id = first.feeds.record_fetched(
                session, FEED_A, FetchRecord(200, None, None, "F", None, NOW, NOW)
            )
            assert first.articles.insert(session, feed_id, [copy("a1", "mine-wire", FEED_A)], NOW) == (1, 0)
            thread.start()
            thread.join(0.5)
            assert thread.is_alive()  # waiting for the first transaction
        thread.join(30)
        assert outcome == [(1, 1)]
    finally:
        first.close()
        second.close()


def test_retention_keeps_what_waits_for_a_digest(store: Store) -> None:
    from aggregator.dedup import text_hash as hash_of

    old, recent = NOW - timedelta(days=100), NOW
    text = " ".join(f"wire{i}" for i in range(80))

    def batch(feed: str, key: str, url: str, when: datetime, body: str = "") -> None:
        article = NewArticle(
            feed, key, url, key, None, when, "", body, "", "feed", hash_of(body) if body else None
        )
        store.store_refresh(feed, [article], FetchRecord(200, None, None, "F", None, when, when))

    batch("https://a.example/feed", "sent-old", "https://a.example/1", old)
    batch("https://a.example/feed", "unsent-old", "https://a.example/2", old)
    batch("https://a.example/feed", "rep-old", "https://a.example/3", old, text)
    batch("https://b.example/feed", "copy-new", "https://b.example/3", recent, text)
    batch("https://a.example/feed", "sent-new", "https://a.example/4", recent)
    by_title = {a.title: a for a in store.list_articles()}
    assert by_title["copy-new"].duplicate_of == by_title["rep-old"].id
    sent = [by_title[t].id for t in ("sent-old", "rep-old", "sent-new")]
    run = store.begin_digest_run("daily", "daily:r", "<m@x>", sent, NOW)
    store.finish_digest_run(run, NOW)

    # a second digest that has not delivered them keeps them all
    assert store.delete_old_articles(NOW - timedelta(days=90), ["daily", "weekly"]) == 0
    assert store.delete_old_articles(NOW - timedelta(days=90), ["daily"]) == 1
    left = {a.title for a in store.list_articles()}
    # the sent old one goes; the unsent one waits for a digest; the old representative of a
    # kept copy stays (else the copy would look like a new story)
    assert left == {"unsent-old", "rep-old", "copy-new", "sent-new"}
    assert store.delete_old_articles(NOW - timedelta(days=90), ["daily"]) == 0


def test_one_process_at_a_time_sends_a_digest(database_url: str) -> None:
    first, second = Store.open(database_url), Store.open(database_url)
    try:
        with first.digest_lock("daily") as mine:
            assert mine
            with second.digest_lock("daily") as theirs:
                # PostgreSQL: another connection (another process) is refused while it is held
                assert theirs is (first.engine.dialect.name != "postgresql")
            with second.digest_lock("weekly") as other_digest:
                assert other_digest
        with second.digest_lock("daily") as after:
            assert after
    finally:
        first.close()
        second.close()


def test_processes_sharing_the_database_claim_disjoint_feeds(database_url: str) -> None:
    urls = [f"https://feeds{i}.example/rss" for i in range(20)]
    first, second = Store.open(database_url), Store.open(database_url)
    try:
        first.ensure_feeds(urls, NOW)
        lease = timedelta(minutes=15)
        mine = first.claim_due_feeds(urls[:12], NOW, "host-a:1", lease)
        theirs = second.claim_due_feeds(urls, NOW, "host-b:2", lease)
        assert sorted(mine + theirs) == sorted(urls)  # every feed claimed once
        assert not set(mine) & set(theirs)
        # nothing is claimed twice while the lease lasts...
        assert second.claim_due_feeds(urls, NOW + timedelta(minutes=5), "host-b:2", lease) == []
        # ...a recorded poll ends the claim and moves the next poll on...
        first.record_failure(
            mine[0], kind="http", message="503", status=503, now=NOW, next_fetch=NOW + timedelta(minutes=1)
        )
        assert second.claim_due_feeds(urls, NOW + timedelta(minutes=2), "host-b:2", lease) == [mine[0]]
        # ...and the claims of a process that died expire with their lease.
        later = second.claim_due_feeds(urls, NOW + timedelta(minutes=16), "host-b:2", lease)
        assert sorted(later) == sorted(set(urls) - {mine[0]})
    finally:
        first.close()
        second.close()


def test_concurrent_claims_on_postgresql_skip_locked_rows(database_url: str) -> None:
    import threading

    if not database_url.startswith("postgresql"):
        pytest.skip("SKIP LOCKED is PostgreSQL's")
    urls = [f"https://race{i}.example/rss" for i in range(200)]
    stores = [Store.open(database_url) for _ in range(4)]
    stores[0].ensure_feeds(urls, NOW)
    results: list[list[str]] = [[] for _ in stores]

    def claim(index: int) -> None:
        results[index] = stores[index].claim_due_feeds(urls, NOW, f"p{index}", timedelta(minutes=5))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for store in stores:
        store.close()
    claimed = [url for result in results for url in result]
    assert sorted(claimed) == sorted(urls)  # each feed exactly once across the processes


def test_a_live_process_renews_the_leases_of_feeds_it_is_refreshing(store: Store) -> None:
    urls = ["https://slow.example/rss", "https://done.example/rss"]
    store.ensure_feeds(urls, NOW)
    lease = timedelta(minutes=1)
    assert sorted(store.claim_due_feeds(urls, NOW, "host-a:1", lease)) == sorted(urls)
    store.record_failure(urls[1], kind="http", message="503", status=503, now=NOW, next_fetch=NOW)
    # Renewed at 50 s: the slow feed's lease runs to 1 min 50 s; the finished feed has no claim.
    assert store.renew_claims("host-a:1", NOW + timedelta(seconds=110)) == 1
    assert store.claim_due_feeds(urls, NOW + timedelta(seconds=90), "host-b:2", lease) == [urls[1]]
    # A process that stops renewing (killed) loses the feed when the renewed lease ends.
    assert store.claim_due_feeds(urls, NOW + timedelta(seconds=111), "host-b:2", lease) == [urls[0]]


def test_claims_of_a_dead_process_are_released(store: Store) -> None:
    urls = ["https://a.example/rss", "https://b.example/rss"]
    store.ensure_feeds(urls, NOW)
    store.claim_due_feeds(urls[:1], NOW, "host:111", timedelta(minutes=15))
    store.claim_due_feeds(urls[1:], NOW, "host:222", timedelta(minutes=15))
    assert store.release_claims(lambda owner: owner == "host:111") == 1
    assert store.claim_due_feeds(urls, NOW, "host:333", timedelta(minutes=15)) == urls[:1]


def published_at(new: NewArticle, hour: int) -> NewArticle:
    return replace(new, published=NOW.replace(hour=hour))


def test_the_earliest_published_copy_is_the_representative_and_the_digest_lead(store: Store) -> None:
    # The original publisher's copy arrives last but was published first: it represents the story
    # in duplicate_of and leads the digest; the copies stored before it point at it.
    store_batch(store, FEED_A, [published_at(copy("a1", "haftar-herald", FEED_A), 9)])
    store_batch(store, FEED_B, [published_at(copy("b1", "haftar-metro", FEED_B), 10)])
    seen = by_key(store)
    assert seen["a1"] is None and seen["b1"] == seen["a1#id"]  # published later: still a copy
    assert store_batch(store, FEED_C, [published_at(copy("c1", "haftar-wire", FEED_C), 5)]) == (1, 1)
    seen = by_key(store)
    assert seen["c1"] is None
    assert seen["a1"] == seen["b1"] == seen["c1#id"]
    feeds = [FeedConfig(url=url) for url in (FEED_A, FEED_B, FEED_C)]
    digest = build_digest(store.unsent_articles("daily"), set(), feeds, DigestSettings(to=["r@x"]), NOW)
    assert digest is not None
    (item,) = [item for group in digest.groups for item in group.items]
    assert item.article_id == seen["c1#id"]
    assert sorted(item.copy_ids) == sorted([seen["a1#id"], seen["b1#id"], seen["c1#id"]])


def test_one_batch_moves_the_representatives_of_several_stories_at_once(store: Store) -> None:
    # Two stories, each with two copies stored; one feed then brings an earlier copy of each,
    # and of a third story whose only copy was sent: both unsent stories change representative
    # in the same transaction, the sent one keeps its own.
    store_batch(store, FEED_A, [published_at(copy("a1", "haftar-herald", FEED_A), 9)])
    store_batch(store, FEED_A, [published_at(copy("a2", "flood-herald", FEED_A), 9)])
    store_batch(store, FEED_A, [published_at(copy("a3", "fire-herald", FEED_A), 9)])
    sent = [a.id for a in store.list_articles() if a.url.endswith("/a3")]
    store.finish_digest_run(store.begin_digest_run("daily", "daily:r", "<m@x>", sent, NOW), NOW)
    store_batch(
        store,
        FEED_B,
        [
            published_at(copy("b1", "haftar-metro", FEED_B), 10),
            published_at(copy("b2", "flood-metro", FEED_B), 10),
        ],
    )
    later = [
        published_at(copy("c1", "haftar-wire", FEED_C), 5),
        published_at(copy("c2", "flood-wire", FEED_C), 6),
        published_at(copy("c3", "fire-wire", FEED_C), 4),
    ]
    assert store_batch(store, FEED_C, later) == (3, 3)
    seen = by_key(store)
    assert seen["c1"] is None and seen["a1"] == seen["b1"] == seen["c1#id"]
    assert seen["c2"] is None and seen["a2"] == seen["b2"] == seen["c2#id"]
    assert seen["a3"] is None and seen["c3"] == seen["a3#id"]  # sent: kept


def test_a_story_already_sent_keeps_its_representative(store: Store) -> None:
    store_batch(store, FEED_A, [published_at(copy("a1", "haftar-herald", FEED_A), 9)])
    sent = [a.id for a in store.list_articles()]
    store.finish_digest_run(store.begin_digest_run("daily", "daily:r", "<m@x>", sent, NOW), NOW)
    store_batch(store, FEED_C, [published_at(copy("c1", "haftar-wire", FEED_C), 5)])
    seen = by_key(store)
    assert seen["a1"] is None and seen["c1"] == seen["a1#id"]  # not made a new story again
    roots = {a.duplicate_of for a in store.unsent_articles("daily") if a.duplicate_of}
    feeds = [FeedConfig(url=url) for url in (FEED_A, FEED_C)]
    late = build_digest(
        store.unsent_articles("daily"),
        store.sent_article_ids("daily", roots),
        feeds,
        DigestSettings(to=["r@x"]),
        NOW,
    )
    assert late is None  # the late copy is covered by the sent story, not sent again


def test_articles_stored_before_band_keys_are_found_after_the_upgrade(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import insert

    from aggregator.database import MIGRATIONS
    from aggregator.dedup import text_hash
    from aggregator.schema import Article, Feed

    engine = create_db_engine(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:  # a database of a version before near-duplicate detection
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
    old = story("haftar-wire")
    with engine.begin() as connection:
        feed_id = connection.execute(
            insert(Feed).values(url=FEED_A, created_at=NOW).returning(Feed.id)
        ).scalar_one()
        stored = [
            {"entry_key": key, "url": f"https://a.example/{key}", "text": body}
            for key, body in (("a1", old), ("a2", story("flood-wire")), ("a3", old), ("a4", "Too short."))
        ]
        for row in stored:
            connection.execute(
                insert(Article).values(
                    feed_id=feed_id,
                    url_key=url_key(row["url"]),
                    title="t",
                    first_seen=NOW,
                    html="",
                    extraction="page",
                    content_hash=text_hash(row["text"]),
                    **row,
                )
            )
    migrate(engine)
    store = Store(engine)
    try:
        with engine.connect() as connection:
            keyed = set(connection.execute(select(ArticleBand.article_id).distinct()).scalars())
        ids = {a.url.rsplit("/", 1)[1]: a.id for a in store.list_articles()}
        # a3 is an exact copy of a1 (whose keys find it) and a4 too short to match on its text
        assert keyed == {ids["a1"], ids["a2"]}
        assert store_batch(store, FEED_B, [copy("b1", "haftar-herald", FEED_B)]) == (1, 1)
        assert by_key(store)["b1"] == ids["a1"]
        migrate(engine)  # nothing left to do at the next start
    finally:
        store.close()


def test_band_keys_of_the_old_minhash_version_are_rebuilt(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import insert

    from aggregator.database import MIGRATIONS
    from aggregator.dedup import text_hash, text_profile
    from aggregator.schema import Article, Feed

    engine = create_db_engine(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:  # keys written by MinHash v1 (0003, 0004)
        config.attributes["connection"] = connection
        command.upgrade(config, "0004")
        feed_id = connection.execute(
            insert(Feed).values(url=FEED_A, created_at=NOW).returning(Feed.id)
        ).scalar_one()
        body = story("haftar-wire")
        article_id = connection.execute(
            insert(Article)
            .values(
                feed_id=feed_id,
                entry_key="a1",
                url="https://a.example/a1",
                url_key=url_key("https://a.example/a1"),
                title="t",
                first_seen=NOW,
                text=body,
                html="",
                extraction="page",
                content_hash=text_hash(body),
            )
            .returning(Article.id)
        ).scalar_one()
        connection.execute(
            insert(ArticleBand), [{"band_key": k, "article_id": article_id} for k in range(1, 33)]
        )
    migrate(engine)
    store = Store(engine)
    try:
        with engine.connect() as connection:
            keys = set(connection.execute(select(ArticleBand.band_key)).scalars())
        profile = text_profile(body)
        assert profile is not None and keys == set(profile.band_keys)
        assert store_batch(store, FEED_B, [copy("b1", "haftar-herald", FEED_B)]) == (1, 1)
        assert by_key(store)["b1"] == article_id
    finally:
        store.close()


def test_staged_band_keys_move_into_the_index_and_back(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from aggregator.database import MIGRATIONS

    engine = create_db_engine(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:  # a store of version 0006, its keys staged
        config.attributes["connection"] = connection
        command.upgrade(config, "0006")
    store = Store(engine)
    try:
        body = story("haftar-wire")
        profile = text_profile(body)
        assert profile is not None
        store.ensure_feeds([FEED_A], NOW)
        with engine.begin() as connection:
            feed_id = connection.execute(select(Feed.id)).scalar_one()
            values = {"feed_id": feed_id, "entry_key": "a1", "url": "https://a.example/a1", "title": "t"}
            values |= {"url_key": url_key(values["url"]), "first_seen": NOW, "text": body}
            values |= {"html": "", "extraction": "page", "content_hash": "h1"}
            article_id = connection.execute(insert(Article).values(values).returning(Article.id)).scalar_one()
            connection.execute(
                text("INSERT INTO article_bands_staged (band_key, article_id) VALUES (:k, :a)"),
                [{"k": key, "a": article_id} for key in profile.band_keys],
            )
        migrate(engine)
        assert staged_and_merged(store) == (0, BANDS)
        assert store_batch(store, FEED_B, [copy("b1", "haftar-herald", FEED_B)]) == (1, 1)
        assert staged_and_merged(store) == (BANDS, BANDS)
        with engine.begin() as connection:  # back to 0006: the recent keys are staged again
            config.attributes["connection"] = connection
            command.downgrade(config, "0006")
            staged = connection.execute(text("SELECT count(*) FROM article_bands_staged")).scalar_one()
        assert staged == BANDS
    finally:
        store.close()


def test_a_checkpoint_beside_a_busy_writer_lets_the_log_start_afresh(tmp_path: Path) -> None:
    """While a worker process writes without pause, the pipeline's checkpoints keep SQLite's
    write-ahead log short: the rest of each copy is made in the writers' lock, so that the next
    writer starts the log from its beginning instead of writing on at its end."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    Store.open(url).close()
    checkpointer = Store(create_db_engine(url))
    writer = Store(create_db_engine(url, checkpoints=False))  # as worker.init_worker makes it
    with writer.writers.writing() as session:
        session.execute(text("CREATE TABLE scratch (body BLOB)"))
    block, writes = b"x" * 8192, 3000
    done = threading.Event()

    def write() -> None:
        try:
            for _ in range(writes):
                with writer.writers.writing() as session:
                    session.execute(text("INSERT INTO scratch VALUES (:body)"), {"body": block})
        finally:
            done.set()

    thread = threading.Thread(target=write)
    thread.start()
    frames: list[int] = []
    with checkpointer.engine.connect() as connection:
        for _ in range(10_000):  # bounded; the writer is done in a few seconds
            if done.wait(0.005):  # the pipeline checkpoints once a second, between the writes
                break
            checkpointer.checkpoint()
            frames.append(connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").all()[0][1])
    thread.join(60)
    assert not thread.is_alive()
    # The frame count falls when the log starts afresh; written on at its end, it only grows.
    restarts = sum(later < earlier for earlier, later in pairwise(frames))
    assert restarts >= 2, frames
    checkpointer.close()
    writer.close()


def test_the_driver_queries_give_what_core_gives(store: Store) -> None:
    """The refresh's SELECTs run on the driver's cursor (``storage.sql.DriverQuery``) return the rows
    SQLAlchemy returns for the same Core statement: lists of any length (empty too, and one
    list used twice), values written into the statement, in a transaction and outside one."""
    from aggregator.storage.articles import ENTRY_IDS, SEEN_ENTRIES, SEEN_LINKS, STORED_COPIES
    from aggregator.storage.bands import BAND_LOOKUP, RECENT_SINCE
    from aggregator.storage.sql import one_value

    def plain(rows: object) -> list[tuple[object, ...]]:
        return sorted(tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in rows)

    feed = "https://a.example/feed"
    articles = [article(f"k{i}", f"https://a.example/{i}", f"{LONG_TEXT} story{i}") for i in range(6)]
    store_batch(store, feed, articles)
    stored = [url_key(a.url) for a in articles]
    with store.engine.connect() as connection:
        (feed_id,) = connection.execute(select(Feed.id).where(Feed.url == feed)).one()
        blobs = connection.execute(select(RecentBands.band_keys)).scalars().all()
        keys = [*[key for blob in blobs for key in unpack_keys(bytes(blob))][:50], 12345]
        # In the transaction the insert begins: the first round reads inside it, the second
        # (after the rollback, without these rows) outside any.
        connection.execute(insert(ArticleBand), [{"band_key": k, "article_id": 1} for k in keys[:5]])
        postgresql = connection.dialect.name == "postgresql"
        entry_keys = [a.entry_key for a in articles]
        cases = [  # (query, parameters, rows expected in the first round)
            (SEEN_ENTRIES, {"feed_url": feed, "keys": [*entry_keys, "none"]}, True),
            (SEEN_ENTRIES, {"feed_url": feed, "keys": []}, False),
            (SEEN_LINKS, {"keys": [*stored[:3], "none"]}, True),
            (ENTRY_IDS, {"feed_id": feed_id, "entry_keys": entry_keys[:2]}, True),
            (
                STORED_COPIES,
                {"url_keys": stored[2:], "entry_keys": ["k0"], "feed_id": feed_id, "hashes": []},
                True,
            ),
            (RECENT_SINCE, {"seen": 0}, True),
            (RECENT_SINCE, {"seen": 10**9}, True),  # the count of merges alone
            (BAND_LOOKUP[postgresql], {"keys": one_value(keys, postgresql)}, True),
        ]
        for first in (True, False):
            for query, params, rows in cases:
                mine = plain(query.rows(connection, params))
                assert mine == plain(connection.execute(query.statement, params)), (query.statement, params)
                assert bool(mine) == rows or not first
            connection.rollback()


def test_the_driver_queries_keep_a_bounded_number_of_plans(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plan is kept for each length of a query's lists, which vary with the feeds: the cache
    is emptied when full, and the query still answers."""
    from aggregator.storage.sql import DriverQuery

    query = DriverQuery(select(Article.id).where(Article.url_key.in_(bindparam("keys", expanding=True))))
    monkeypatch.setattr(DriverQuery, "MAX_PLANS", 5)
    with store.engine.connect() as connection:
        for length in range(12):
            assert query.rows(connection, {"keys": [f"k{i}" for i in range(length)]}) == []
            assert query.plans <= 5


def test_rows_written_on_the_driver_are_those_core_writes(store: Store) -> None:
    """The refresh's feed update and article insert run on the driver (``storage.sql.DriverQuery``),
    each value through its type's bind processor: the stored values, datetimes of any zone
    included, are those SQLAlchemy writes for the same statement."""
    from datetime import timezone

    from aggregator.storage.articles import ARTICLE_INSERT

    paris = timezone(timedelta(hours=1))
    published = datetime(2026, 11, 28, 7, 30, 15, 123456, tzinfo=paris)
    record = FetchRecord(
        200,
        '"e1"',
        "Sat, 28 Nov 2026 06:00:00 GMT",
        "Feed A",
        "https://a.example/",
        NOW,
        NOW + timedelta(minutes=45),
        poll_interval=2700.0,
        warning="bozo",
    )
    mine = replace(article("k1", "https://a.example/1", LONG_TEXT), published=published)
    store.store_refresh(FEED_A, [mine], record)
    with store.engine.connect() as connection:
        feed = connection.execute(select(Feed).where(Feed.url == FEED_A)).one()
        assert (feed.last_fetch_at, feed.next_fetch_at, feed.etag, feed.poll_interval) == (
            NOW,
            NOW + timedelta(minutes=45),
            '"e1"',
            2700.0,
        )
        assert (
            feed.title,
            feed.last_status,
            feed.last_warning,
        ) == ("Feed A", 200, "bozo")
        # The same article written by Core for another feed: the stored columns are alike.
        (feed_id,) = connection.execute(select(Feed.id).where(Feed.url == FEED_A)).one()
        row = connection.execute(select(Article.__table__).where(Article.feed_id == feed_id)).one()._asdict()
        assert row["published"] == published and row["first_seen"] == NOW
        copy = {**{k: v for k, v in row.items() if k != "id"}, "entry_key": "core-copy"}
        connection.execute(Article.__table__.insert(), [copy])
        raw = select(Article.published, Article.first_seen, Article.url_key, Article.extraction)
        stored = connection.execute(
            raw.where(Article.entry_key.in_(["core-copy", row["entry_key"]])).order_by(Article.id)
        )
        if connection.dialect.name == "sqlite":  # the text SQLite holds, compared as it is
            stored = connection.exec_driver_sql(
                "SELECT published, first_seen, url_key, extraction FROM articles ORDER BY id"
            )
        first, second = stored.all()
        assert tuple(first) == tuple(second)
    assert ARTICLE_INSERT.plans  # the insert did go through the driver
