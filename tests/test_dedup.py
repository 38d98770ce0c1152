from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from aggregator.dedup import (
    _PLAIN_URL,
    BACKDATE_TRUST,
    BANDS,
    MIN_STORY_WORDS,
    MIN_WORDS_FOR_TEXT_MATCH,
    PERMUTATIONS,
    SEEN_TOGETHER,
    TEMPLATE_GAP_WORDS,
    Candidate,
    Incoming,
    StoredCopies,
    _cleaned_url,
    add_band_keys,
    band_keys,
    canonical_url,
    choose_representatives,
    containment,
    entry_key,
    is_near_duplicate,
    jaccard,
    lead_order,
    minhash,
    nearest_stored,
    normalise_words,
    rank_candidates,
    repeated_guids,
    shared_run,
    shingles,
    site_of,
    story_leads,
    strip_template,
    tells_one_story,
    text_hash,
    text_profile,
    text_shingles,
    url_key,
)
from aggregator.models import ParsedEntry


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("HTTPS://Example.COM:443/a/b?utm_source=rss&utm_medium=rss#top", "https://example.com/a/b"),
        ("http://example.com:80/x?b=2&a=1&fbclid=abc", "http://example.com/x?a=1&b=2"),
        ("https://example.com/x?id=5&gclid=1&mc_cid=2", "https://example.com/x?id=5"),
        ("https://example.com", "https://example.com/"),
    ],
)
def test_canonical_url(url: str, canonical: str) -> None:
    assert canonical_url(url) == canonical


def test_plain_urls_skip_courlan_with_the_same_result() -> None:
    """The fast path for plain URLs gives what courlan's cleaning gives, on URLs made to sit on
    either side of its conditions (ports, case, escapes, dots, slashes, queries, punycode)."""
    rng = random.Random(11)
    pieces = {
        "scheme": ["http", "https", "HTTP", "Https", "ftp"],
        "host": [
            "example.com",
            "Example.com",
            "127.0.0.1",
            "a-b.example",
            "xn--bcher-kva.example",
            "host",
            "a..b",
            "[::1]",
            "user@host",
            "ex_ample.com",
            "EXAMPLE.COM.",
        ],
        "port": ["", ":80", ":443", ":8080", ":08", ":0", ":65535", ":65536", ":99999", ":", ":x"],
        "path": [
            "",
            "/",
            "/a/b",
            "/a//b",
            "//a",
            "/../a",
            "/..",
            "/..a",
            "/a/../b",
            "/./a",
            "/a/",
            "/~u/p,q:r=s!t",
            "/%7Eu",
            "/a b",
            "/é",
            "/a;b",
            "/a&amp;b",
            "/a+b",
            "/a'b",
            "/a(b)",
            "/A_B.C-D",
            "/a*b",
            "/a$b",
            "/a@b",
        ],
        "tail": ["", "", "", "?", "?a=1", "?utm_source=x", "#", "#top", "?b=2&a=1#f", " ", "\t"],
    }
    urls = [
        "".join(
            rng.choice(pieces[part]) if part != "scheme" else rng.choice(pieces[part]) + "://"
            for part in ("scheme", "host", "port", "path", "tail")
        )
        for _ in range(20_000)
    ]
    urls += ["http://127.0.0.1:40759/page/3/0-1.html", "https://example.com", " https://example.com/a "]
    plain = 0
    for url in urls:
        fast = canonical_url.__wrapped__(url)
        assert fast == _cleaned_url(url.strip()), url
        plain += _PLAIN_URL.fullmatch(url.strip()) is not None
    assert plain > 400  # the fast path was taken, often


def entry(guid: str | None, url: str | None, title: str = "T") -> ParsedEntry:
    return ParsedEntry(guid, url, title, "", "", None, None, None)


def test_entry_key_prefers_guid_then_url_then_content() -> None:
    assert entry_key(entry("g1", "https://a/1")) == entry_key(entry("g1", "https://a/2"))
    assert entry_key(entry(None, "https://a/1?utm_source=x")) == entry_key(entry(None, "https://a/1"))
    assert entry_key(entry(None, None, "A")) != entry_key(entry(None, None, "B"))


def test_feed_repeating_one_guid_falls_back_to_links() -> None:
    entries = (entry("same", "https://a/1"), entry("same", "https://a/2"))
    repeated = repeated_guids(entries)
    assert repeated == {"same"}
    assert entry_key(entries[0], repeated) != entry_key(entries[1], repeated)


def test_text_hash_ignores_case_spacing_and_punctuation_but_not_short_texts() -> None:
    words = " ".join(f"word{i}" for i in range(60))
    assert text_hash(words) == text_hash("  " + words.upper().replace(" ", " ,\n "))
    assert text_hash(words) != text_hash(words + " extra")
    assert text_hash("Read more on our site") is None


def test_words_are_those_the_unicode_word_pattern_finds() -> None:
    """The ASCII fast path and the NFKC quick check give what the plain definition gives."""

    def defined(text: str) -> tuple[str, ...]:
        return tuple(re.findall(r"\w+", unicodedata.normalize("NFKC", text).casefold()))

    rng = random.Random(7)
    ascii_chars = "".join(map(chr, range(128)))
    mixed = "aZ_09 \t\n.,;-'\"\x00\x1f\x7f’“”—…ßİıﬁ①²\u00a0\u2003\u200b\u0301éΩ日本😀"
    texts = [
        "Don't stop: it's 2026, e-mail_me at A.B@example.com!",
        "Le “président” a déclaré — à l’Élysée — qu’il n’y aurait pas…",
        "ﬁnal Straße ①②",
    ]
    for alphabet in (ascii_chars, mixed):
        texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(500)]
    for text in texts:
        normalise_words.cache_clear()
        assert normalise_words(text) == defined(text), repr(text)


# -- layer 4: near-duplicate texts -----------------------------------------------------------

DEDUP = Path(__file__).parent / "data" / "dedup"


def doc(name: str) -> str:
    return (DEDUP / "docs" / f"{name}.txt").read_text(encoding="utf-8")


def test_shingles_are_overlapping_word_runs() -> None:
    assert shingles(["a", "b", "c", "d", "e", "f"], 5) == {"a b c d e", "b c d e f"}
    assert shingles(["a", "b"], 5) == {"a b"}
    assert shingles([], 5) == frozenset()


def test_containment_and_jaccard() -> None:
    small, large = frozenset("ab"), frozenset("abcd")
    assert containment(small, large) == containment(large, small) == 1.0
    assert jaccard(small, large) == 0.5
    assert containment(frozenset(), large) == jaccard(frozenset(), frozenset()) == 0.0


def test_texts_under_the_word_minimum_have_no_profile() -> None:
    assert text_profile(" ".join(f"w{i}" for i in range(MIN_WORDS_FOR_TEXT_MATCH - 1))) is None
    assert text_shingles(doc("brief-shares-up")) is None
    profile = text_profile(" ".join(f"w{i}" for i in range(MIN_WORDS_FOR_TEXT_MATCH)))
    assert profile is not None and len(profile.band_keys) == BANDS


def test_signature_is_a_fixed_hash_family() -> None:
    # Band keys are stored: they must not change between runs, processes or machines (the
    # salted hash() would). A change here orphans every stored key: bump MINHASH_VERSION instead.
    grams = shingles(["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "again"])
    signature = minhash(grams)
    assert len(signature) == PERMUTATIONS and all(0 <= value < 2**32 for value in signature)
    assert signature[:4] == (846_370_884, 762_188_898, 1_732_101_181, 1_034_218_637)
    keys = band_keys(signature)
    assert all(-(2**63) <= key < 2**63 for key in keys) and len(set(keys)) == BANDS
    assert keys[0] == -5_935_118_930_647_900_815


@pytest.mark.parametrize(
    "text",
    [
        "plain ascii words of a story told again " * 12,
        "Ünïcödé wörds — naïve café, straße and ﬁne ligatures " * 10,
        "日本語 の テキスト と 混ざった English words " * 12,
        "emoji 😀 between words 🎉 and more words here " * 12,
        "repeat repeat repeat repeat repeat repeat " * 20,
    ],
    ids=["ascii", "accents", "cjk", "emoji", "repeats"],
)
def test_profile_band_keys_are_the_signature_of_its_shingles(text: str) -> None:
    # text_profile hashes shingles from their words' hashes without making each shingle's string:
    # the keys must be exactly those of minhash over the shingle set, or every stored key is
    # orphaned.
    profile = text_profile(text)
    assert profile is not None
    grams = text_shingles(text)
    assert grams is not None
    assert profile.band_keys == band_keys(minhash(grams))
    assert profile.shingles == grams


def test_profiles_agree_across_processes_with_other_hash_seeds() -> None:
    text = doc("haftar-wire")
    script = "import sys; from aggregator import dedup; print(dedup.text_profile(sys.stdin.read()).band_keys)"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script],
            input=text,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    profile = text_profile(text)
    assert profile is not None and outputs == {str(profile.band_keys)}


@pytest.mark.parametrize(
    ("first", "second", "duplicate"),
    [
        ("haftar-wire", "haftar-herald", True),  # lead rewritten, paragraph dropped, credit added
        ("fire-wire", "fire-metro", True),  # lead rewritten, cut to five paragraphs
        ("flood-herald", "flood-metro", True),
        ("probe-ledger", "probe-corrected", True),
        ("fire-wire", "fire-updated", True),
        ("fire-wire", "fire-other", False),  # same city, fire chief and background, other story
        ("trial-wire", "trial-followup", False),  # quotes the first story
        ("earnings-brightwave", "earnings-halvorsen", False),  # one template, other company
        ("brief-quake-north", "brief-quake-south", False),
    ],
)
def test_near_duplicate_texts(first: str, second: str, duplicate: bool) -> None:
    a, b = text_profile(doc(first)), text_profile(doc(second))
    assert a is not None and b is not None
    found = bool(set(a.band_keys) & set(b.band_keys)) and is_near_duplicate(a.shingles, b.shingles)
    assert found is duplicate


def test_labelled_pairs_meet_the_targets() -> None:
    from benchmarks.dedup_quality import evaluate

    results = evaluate(DEDUP)
    overall = results["splits"]["all"]
    assert overall["pairs"] >= 200
    assert overall["precision"] >= 0.99, results["wrong"]
    assert overall["recall"] >= 0.95, results["wrong"]


def test_scale_benchmark_runs_on_a_small_database(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from benchmarks.dedup_scale import main

    argv = ["--max", "300", "--databases", "sqlite", "--probes", "10", "--workers", "1"]
    assert main([*argv, "--dir", str(tmp_path)]) == 0
    assert "| sqlite | 300 |" in capsys.readouterr().out


def test_profiles_of_a_batch_are_those_of_each_text() -> None:
    # A feed's texts go through MinHash together: no shingle may run from one text into the
    # next, and a text longer than a chunk of the matrix is taken on its own.
    from aggregator.dedup import _CHUNK, text_profiles

    story = "the council voted on the budget for the harbour after a long night of talks " * 5
    texts = [
        story,
        "too short to trust",
        story.upper() + " and more",
        "word " * 60,
        story * (_CHUNK // 60 + 2),
    ]
    batch = text_profiles(texts)
    assert batch[1] is None
    for text, profile in zip(texts, batch, strict=True):
        alone = text_profile(text)
        assert (profile is None) == (alone is None)
        if profile is not None and alone is not None:
            assert profile.band_keys == alone.band_keys
            grams = text_shingles(text)
            assert grams is not None and profile.band_keys == band_keys(minhash(grams))


# -- a backdated copy does not take the lead (lead_order) -----------------------------------------

SEEN = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("published", "counted"),
    [
        (None, SEEN),
        (SEEN - timedelta(hours=5), SEEN - timedelta(hours=5)),  # an original polled late
        (SEEN - timedelta(hours=30), SEEN - timedelta(hours=30)),  # a feed polled once a day
        (SEEN - BACKDATE_TRUST, SEEN - BACKDATE_TRUST),
        (SEEN - BACKDATE_TRUST - timedelta(seconds=1), SEEN),
        (datetime(1990, 1, 1, tzinfo=UTC), SEEN),
        (SEEN + timedelta(minutes=10), SEEN),  # not published after we saw it
    ],
)
def test_a_date_far_before_the_entry_was_first_seen_counts_as_that_sighting(
    published: datetime | None, counted: datetime
) -> None:
    assert lead_order(published, SEEN, 7, SEEN)[0] == counted


def lead(*copies: tuple[datetime | None, datetime]) -> int:
    """The position of the copy (published, first seen) that leads, ids in the order given."""
    seen = min(first_seen for _, first_seen in copies)
    return min(range(len(copies)), key=lambda n: lead_order(*copies[n], n, seen))


def test_copies_seen_together_with_old_dates_keep_their_publishers_order() -> None:
    # Two feeds added today carry one story of 2017: the earlier published leads, whichever
    # feed answered first; a copy with a believed date still comes first.
    wire, gazette = datetime(2017, 8, 15, 11, tzinfo=UTC), datetime(2017, 8, 15, 9, 30, tzinfo=UTC)
    assert lead((wire, SEEN), (gazette, SEEN + timedelta(seconds=3))) == 1
    assert lead((gazette, SEEN), (wire, SEEN + timedelta(seconds=3))) == 0
    assert lead((wire, SEEN), (SEEN - timedelta(hours=1), SEEN + timedelta(seconds=3))) == 1
    # Seen later than SEEN_TOGETHER after the story: counted as seen, whatever it claims.
    later = SEEN + SEEN_TOGETHER + timedelta(seconds=1)
    assert lead((wire, SEEN), (datetime(1990, 1, 1, tzinfo=UTC), later)) == 0


moments = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
delays = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3650))


@settings(max_examples=300, deadline=None)
@given(held_published=st.none() | moments, held_seen=moments, copy_published=moments, later=delays)
def test_a_backdated_copy_never_displaces_a_story_held_before_it(
    held_published: datetime | None, held_seen: datetime, copy_published: datetime, later: timedelta
) -> None:
    # Whatever date a later copy claims beyond BACKDATE_TRUST before it was seen, the story's
    # first copy keeps the lead: always when its own date is believed, and when it is not, unless
    # the two came in together (then their dates order them).
    copy_seen = held_seen + later
    assume(copy_published < copy_seen - BACKDATE_TRUST)
    held_believed = held_published is None or held_published >= held_seen - BACKDATE_TRUST
    assume(held_believed or later > SEEN_TOGETHER)
    assert lead((held_published, held_seen), (copy_published, copy_seen)) == 0


@settings(max_examples=300, deadline=None)
@given(
    original=moments,
    lag=st.timedeltas(min_value=timedelta(0), max_value=BACKDATE_TRUST),
    head_start=st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=30)),
    copy_lag=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30)),
)
def test_an_original_seen_late_but_published_first_takes_the_lead(
    original: datetime, lag: timedelta, head_start: timedelta, copy_lag: timedelta
) -> None:
    # The copy was published after the original, and seen before it (its feed polled first) or
    # after it; the original reaches us at most BACKDATE_TRUST after its publication.
    copy_published = original + head_start
    copy = (copy_published, copy_published + copy_lag)
    assert lead(copy, (original, original + lag)) == 1


# -- one site's template is not evidence (tells_one_story) ----------------------------------------


@pytest.mark.parametrize(
    ("url", "site"),
    [
        ("https://www.Example.COM/a", "example.com"),
        ("http://news.example.com:8080/a?b", "news.example.com"),
        ("https://example.com", "example.com"),
        ("https://[::1]:8000/x", "::1"),
        ("http://[bad/x", ""),
        ("", ""),
        ("/relative/path", ""),
    ],
)
def test_site_of(url: str, site: str) -> None:
    assert site_of(url) == site


def words_of(name: str) -> tuple[str, ...]:
    return normalise_words(doc(name))


@pytest.mark.parametrize(
    ("first", "second", "one_story"),
    [
        # Two short stories (24 and 27 words) under one 70-word footer: 0.73 of the shorter's
        # shingles are the footer's.
        ("harbour-bike-lanes", "harbour-bakery", False),
        ("harbour-bike-lanes", "harbour-ferry", False),  # the footer's date differs
        ("harbour-bike-lanes", "harbour-bike-lanes-corrected", True),  # a correction added
        ("harbour-ferry", "harbour-ferry-updated", True),  # a paragraph added, another date
        ("fire-wire", "fire-corrected", True),
        ("fire-wire", "fire-updated", True),  # new paragraphs after the lead, a figure changed
        ("fire-wire", "fire-herald", True),
        ("fire-wire", "fire-metro", True),
    ],
)
def test_one_sites_template_is_not_evidence_of_one_story(first: str, second: str, one_story: bool) -> None:
    a, b = words_of(first), words_of(second)
    assert is_near_duplicate(shingles(a), shingles(b))  # what merged them before
    assert tells_one_story(a, shingles(a), b, shingles(b), same_site=True) is one_story
    assert tells_one_story(b, shingles(b), a, shingles(a), same_site=True) is one_story
    # Across sites the shared text is the evidence: decided on the whole texts, as before.
    assert tells_one_story(a, shingles(a), b, shingles(b), same_site=False)


def test_footer_is_stripped_to_the_stories_past_a_changed_date() -> None:
    own_a, own_b = strip_template(words_of("harbour-bike-lanes"), words_of("harbour-bakery"))
    assert " ".join(own_a) == " ".join(normalise_words(doc("harbour-bike-lanes").split("\n\n")[0]))
    assert " ".join(own_b) == " ".join(normalise_words(doc("harbour-bakery").split("\n\n")[0]))
    own_a, own_b = strip_template(words_of("harbour-bakery"), words_of("harbour-ferry"))
    assert len(own_a) == 27 and len(own_b) == 26


def test_a_wire_story_retold_with_another_lead_is_one_story_across_sites_only() -> None:
    # Two outlets' copies of one wire story share its whole body as their end: that is the
    # evidence across sites. On one site, a lead of its own over a shared end is what two stories
    # under one footer look like: kept apart (the price: a site republishing a story under a new
    # lead, URL and guid shows it twice).
    paragraphs = doc("fire-wire").split("\n\n")
    lead = "Hundreds of people fled their homes overnight as a fast-moving blaze swept through dry hills."
    retold = normalise_words("\n\n".join([lead, *paragraphs[1:]]))
    wire = words_of("fire-wire")
    assert tells_one_story(wire, shingles(wire), retold, shingles(retold), same_site=False)
    assert not tells_one_story(wire, shingles(wire), retold, shingles(retold), same_site=True)


def one_site_story(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    return tells_one_story(a, shingles(a), b, shingles(b), same_site=True)


def vocabulary(prefix: str) -> st.SearchStrategy[str]:
    """Words of their own: texts drawn from two vocabularies share no shingle by chance."""
    return st.integers(min_value=0, max_value=400).map(lambda n: f"{prefix}{n}")


@settings(max_examples=200, deadline=None)
@given(
    header=st.lists(vocabulary("t"), max_size=40),
    footer=st.lists(vocabulary("t"), max_size=200),
    first=st.lists(vocabulary("a"), min_size=MIN_STORY_WORDS, max_size=120),
    second=st.lists(vocabulary("b"), min_size=MIN_STORY_WORDS, max_size=120),
)
def test_stories_of_their_own_under_any_template_are_two_stories_on_one_site(
    header: list[str], footer: list[str], first: list[str], second: list[str]
) -> None:
    a, b = tuple(header + first + footer), tuple(header + second + footer)
    assert not one_site_story(a, b)
    # Across sites the template counts, as it always did.
    assert tells_one_story(a, shingles(a), b, shingles(b), same_site=False) is is_near_duplicate(
        shingles(a), shingles(b)
    )


unique_words = st.lists(
    st.integers(min_value=0, max_value=10**6), min_size=60, max_size=300, unique=True
).map(lambda numbers: tuple(f"w{n}" for n in numbers))


@settings(max_examples=200, deadline=None)
@given(
    story=unique_words,
    edit=st.sampled_from(["append", "insert", "replace", "drop"]),
    where=st.floats(min_value=0, max_value=1),
    size=st.integers(min_value=1, max_value=60),
    footer=st.lists(vocabulary("t"), max_size=80),
)
def test_a_story_edited_on_one_site_stays_one_story(
    story: tuple[str, ...], edit: str, where: float, size: int, footer: list[str]
) -> None:
    at = int(where * len(story))
    added = tuple(f"new{n}" for n in range(size))
    if edit == "append":
        edited = story + added
    elif edit == "insert":
        edited = story[:at] + added + story[at:]
    elif edit == "replace":  # a date, a figure, a name corrected
        edited = story[:at] + added[:TEMPLATE_GAP_WORDS] + story[at + TEMPLATE_GAP_WORDS :]
    else:  # a paragraph cut
        edited = story[:at] + story[at + size :]
    a, b = story + tuple(footer), edited + tuple(footer)
    assume(is_near_duplicate(shingles(a), shingles(b)))
    assert one_site_story(a, b)
    assert one_site_story(b, a)


@settings(max_examples=300, deadline=None)
@given(
    a=st.lists(st.sampled_from("xyz"), max_size=300).map(tuple),
    b=st.lists(st.sampled_from("xyz"), max_size=300).map(tuple),
)
def test_the_shared_runs_are_within_both_texts_whatever_the_words(
    a: tuple[str, ...], b: tuple[str, ...]
) -> None:
    # Hostile texts of a three-word alphabet resync everywhere: the runs stay within the texts,
    # and what is left of each is one piece of it.
    head_a, head_b = shared_run(a, b)
    assert 0 <= head_a <= len(a) and 0 <= head_b <= len(b)
    own_a, own_b = strip_template(a, b)
    assert tuple(own_a) == a[head_a : head_a + len(own_a)]
    assert tuple(own_b) == b[head_b : head_b + len(own_b)]
    if a == b:
        assert len(own_a) == len(own_b) == 0


def test_template_stripping_of_huge_hostile_texts_is_linear() -> None:
    # A run resuming after every one-word change: each gap is tried once, and paid for by the five
    # shared words after it.
    blocks = 20_000
    a = tuple(word for k in range(blocks) for word in (f"w{k}", "b", "c", "d", "e", "left"))
    b = tuple(word for k in range(blocks) for word in (f"w{k}", "b", "c", "d", "e", "right"))
    started = time.perf_counter()
    own_a, own_b = strip_template(a, b)  # 120,000 words each
    assert time.perf_counter() - started < 2.0
    assert (own_a, own_b) == (("left",), ("right",))  # the last change: no run after it


# -- which copy represents which (choose_representatives, story_leads) ----------------------------


def incoming(name: str, url: str, text: str | None = None) -> Incoming:
    """A new article at ``url`` with the labelled text ``name`` (or ``text``)."""
    body = doc(name) if text is None else text
    return Incoming(url_key(url), text_hash(body), url, text_profile(body))


def candidate(article_id: int, name: str, *, root: int | None = None, feed_id: int = 9) -> Candidate:
    return Candidate(
        article_id, root or article_id, feed_id, f"https://stored{feed_id}.example/{article_id}", doc(name)
    )


NO_COPIES = StoredCopies({}, {})


def test_a_batchs_band_keys_rank_as_lists_of_positions_would() -> None:
    """``add_band_keys`` keeps one position per key where it can; ``rank_candidates`` ranks the same."""
    rng = random.Random(3)
    pool = list(range(40))  # few keys, so that articles share them, and some repeat one
    by_band: dict[int, int | list[int]] = {}
    lists: dict[int, list[int]] = {}
    for position in range(60):
        keys = tuple(rng.choice(pool) for _ in range(rng.randint(1, 6)))
        query = tuple(rng.choice(pool) for _ in range(6))
        assert rank_candidates(query, by_band) == rank_candidates(query, lists)
        add_band_keys(by_band, keys, position)
        for key in keys:
            lists.setdefault(key, []).append(position)
    assert {key: [held] if isinstance(held, int) else held for key, held in by_band.items()} == lists


def test_candidates_past_the_limit_are_not_ranked() -> None:
    holders = {key: list(range(20)) for key in range(3)} | {3: [5, 7], 4: 7}
    assert rank_candidates(range(5), holders) == [7, 5, 0, 1, 2, 3, 4, 6]


def test_a_stored_copy_with_the_url_or_the_text_represents_the_article() -> None:
    batch = [
        incoming("fire-wire", "https://a.example/fire"),
        incoming("flood-wire", "https://a.example/flood"),
        incoming("haftar-wire", "https://a.example/haftar"),
    ]
    stored = StoredCopies({batch[0].url_key: 11}, {batch[1].content_hash or "": 12})
    decision = choose_representatives(batch, stored, [[], [], []], feed_id=1)
    assert decision.representatives == [11, 12, None]
    assert decision.duplicates == 2 and decision.twins == {}
    # An exact copy's band keys are stored with the copy it repeats; a copy by URL keeps its own.
    assert decision.banded == [0, 2]


def test_the_earliest_stored_story_among_the_candidates_represents_a_near_duplicate() -> None:
    (item,) = batch = [incoming("fire-herald", "https://b.example/fire")]
    ranked = [
        candidate(30, "fire-other", feed_id=3),
        candidate(21, "fire-metro", root=4),
        candidate(5, "fire-wire"),
    ]
    assert choose_representatives(batch, NO_COPIES, [ranked], feed_id=1).representatives == [4]
    assert item.profile is not None and nearest_stored(item.profile, item.url, ranked, 1) == 4
    # Another story on the same subject is no candidate that passes.
    assert choose_representatives(batch, NO_COPIES, [ranked[:1]], feed_id=1).representatives == [None]


def test_a_candidate_of_the_same_feed_or_site_must_tell_the_story_beyond_the_template() -> None:
    (item,) = batch = [incoming("harbour-bakery", "https://harbour.example/bakery")]
    other_feed = candidate(7, "harbour-bike-lanes", feed_id=3)
    assert choose_representatives(batch, NO_COPIES, [[other_feed]], feed_id=1).representatives == [7]
    same_feed = candidate(7, "harbour-bike-lanes", feed_id=1)
    assert choose_representatives(batch, NO_COPIES, [[same_feed]], feed_id=1).representatives == [None]
    same_site = Candidate(7, 7, 3, "https://www.harbour.example/bike-lanes", doc("harbour-bike-lanes"))
    assert choose_representatives(batch, NO_COPIES, [[same_site]], feed_id=1).representatives == [None]
    assert item.profile is not None and nearest_stored(item.profile, "", [same_site]) == 7


def test_copies_within_a_batch_point_at_the_first_or_at_its_stored_story() -> None:
    batch = [
        incoming("fire-wire", "https://a.example/fire"),
        incoming("fire-corrected", "https://a.example/fire-corrected"),
        incoming("flood-herald", "https://a.example/flood"),
        incoming("flood-metro", "https://a.example/flood-metro"),
        incoming("fire-wire", "https://a.example/fire"),  # the same URL twice
    ]
    flood = [candidate(40, "flood-wire")]
    decision = choose_representatives(batch, NO_COPIES, [[], [], flood, [], []], feed_id=1)
    # The flood story is stored: its copies point at it; the fire story is new: its copies are
    # twins of its first article, which points nowhere.
    assert decision.representatives == [None, None, 40, 40, None]
    assert decision.twins == {1: 0, 4: 0}
    assert decision.duplicates == 4
    assert decision.banded == [0, 1, 2, 3]  # the same text again adds no keys


def test_texts_too_short_to_trust_are_never_near_duplicates() -> None:
    short = "Shares rose 4 percent in early trading."
    batch = [incoming("", "https://a.example/1", short), incoming("", "https://a.example/2", short + " Up.")]
    decision = choose_representatives(batch, NO_COPIES, [[], []], feed_id=1)
    assert decision.representatives == [None, None] and decision.twins == {} and decision.banded == []


def test_the_earliest_published_copy_leads_its_story() -> None:
    hour = timedelta(hours=1)
    stories = {
        1: [(SEEN, SEEN, 1), (SEEN - 3 * hour, SEEN + hour, 2), (SEEN - hour, SEEN + hour, 3)],
        4: [(SEEN - hour, SEEN, 4), (SEEN, SEEN + hour, 5)],  # its representative leads already
        # Backdated to 1990 and seen a day after the story: counted as published when seen.
        6: [(SEEN, SEEN, 6), (datetime(1990, 1, 1, tzinfo=UTC), SEEN + 24 * hour, 7)],
    }
    assert story_leads(stories) == {1: 2}
