"""Near-duplicate lookup and insertion cost with 10k, 100k and 1M stored articles.

    python -m benchmarks.dedup_scale [--max N] [--databases sqlite,postgresql] [--postgres URL]
                                     [--dir DIR] [--probes N] [--workers N] [--json]

The database is filled with synthetic articles (about 200 words each, drawn from a Zipf-like
vocabulary of 30,000 made-up words, so two texts share few shingles, as two real stories do).
Filling goes straight to the tables, in transactions of 5,000 articles (COPY on PostgreSQL,
executemany on SQLite; same schema, same indexes; both databases written at once with the same
articles), so that a million articles take minutes, not the hour the product path would. MinHash
is the costly part (2 ms an article), so only a sample computes it: one article in ``SAMPLE``
(50) is a story with its real ``dedup.text_profile`` band keys and one a near-duplicate of such
a story (a paragraph dropped, a sentence added, a few words changed), computed in ``--workers``
processes. The others are fillers: one of 5,000 stories' texts, and 32 pseudo-random 64-bit band
keys, which is what the keys of unrelated texts are (uniform hashes); so the index has its real
size and shape. PostgreSQL's tables are then vacuumed and analysed, as autovacuum keeps a
database that grew over months (after a bulk COPY the visibility map is empty, every index-only
lookup visits the table, and autovacuum would run its first pass over the whole table during the
measurement). At each size up to ``--max`` (10k, 100k, 1M; or ``--max`` itself when smaller):

- lookup: the time of the near-duplicate lookup of one new article, as ``Articles.insert`` runs
  it (``storage.articles.stored_candidates``: the band-key query, the recent keys in the
  process's ``RecentIndex``, caught up once as a refresh's probe keeps it, the candidates' texts;
  then ``dedup.nearest_stored``, the verification), for ``--probes`` articles, half
  near-duplicates of stored ones (of the sample with real keys) and half new stories; p50, p95
  and p99 in milliseconds, and how many probes found their story;
- insertion: ``Store.store_refresh`` of batches of 10 new articles (half near-duplicates), the
  whole write transaction, in milliseconds per article (mean and p95 per batch);
- size: band-key rows, and the on-disk size of the ``article_bands`` table with its index (SQLite:
  its pages in ``dbstat``; PostgreSQL: ``pg_total_relation_size``).

PostgreSQL runs in a schema of its own in the database at ``--postgres`` (default:
``$AGGREGATOR_TEST_POSTGRES_URL``), dropped at the end; SQLite in a file under ``--dir``
(default: a temporary folder), deleted at the end.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from aggregator import dedup
from aggregator.models import FetchRecord, NewArticle
from aggregator.schema import Article, ArticleBand, Feed
from aggregator.storage import Store
from aggregator.storage.articles import stored_candidates
from aggregator.storage.bands import BandIndex

SIZES = (10_000, 100_000, 1_000_000)
VOCABULARY = 30_000
FEEDS = 200
CHUNK = 5_000
# One article in SAMPLE is a story with real band keys, one a near-copy of such a story; the
# others are fillers: pseudo-random band keys and one of FILLERS texts.
SAMPLE = 50
FILLERS = 5_000
NOW = datetime(2026, 11, 28, tzinfo=UTC)


class Corpus:
    """Deterministic synthetic articles: article ``n`` is the same text in every run."""

    def __init__(self, seed: int = 20261128) -> None:
        rng = random.Random(seed)
        letters = "abcdefghijklmnopqrstuvwxyz"
        words: set[str] = set()
        while len(words) < VOCABULARY:
            words.add("".join(rng.choice(letters) for _ in range(rng.randint(2, 10))))
        self.words = sorted(words)
        self.weights = list(itertools.accumulate(1 / (rank + 10) for rank in range(VOCABULARY)))
        self.seed = seed

    def story(self, number: int) -> str:
        """Return a new story of 3 to 6 paragraphs."""
        rng = random.Random(self.seed * 1_000_003 + number)
        return "\n\n".join(
            " ".join(rng.choices(self.words, cum_weights=self.weights, k=rng.randint(30, 60)))
            for _ in range(rng.randint(3, 6))
        )

    def near_copy(self, original: str, number: int) -> str:
        """Return ``original`` with a paragraph dropped (if it has four), a line added, words changed."""
        rng = random.Random(self.seed * 7_000_003 + number)
        paragraphs = original.split("\n\n")
        if len(paragraphs) > 3:
            del paragraphs[rng.randrange(1, len(paragraphs))]
        words = " ".join(paragraphs).split(" ")
        for _ in range(3):
            words[rng.randrange(len(words))] = rng.choice(self.words)
        extra = " ".join(rng.choices(self.words, cum_weights=self.weights, k=12))
        return " ".join(words) + "\n\n" + extra

    def text(self, number: int) -> str:
        """Return article ``number``: every tenth nearly copies an earlier sampled one."""
        if number % SAMPLE == SAMPLE - 1 and number > SAMPLE:
            return self.near_copy(self.story(original_of(number)), number)
        return self.story(number)


def original_of(copy: int) -> int:
    """Return the sampled story that near-copy ``copy`` copies (up to 96 stories back)."""
    return (copy - 1 - copy % 97) // SAMPLE * SAMPLE


def has_real_keys(number: int) -> bool:
    """Whether article ``number`` is filled with its real band keys (a sampled story or a copy)."""
    return number % SAMPLE in (0, SAMPLE - 1)


_corpus: Corpus | None = None


def _profiles(numbers: range) -> list[tuple[int, str, str, str | None, tuple[int, ...]]]:
    """Return (number, url key, text, text hash, band keys) of each article, for filling."""
    global _corpus
    _corpus = _corpus or Corpus()
    out = []
    for number in numbers:
        if has_real_keys(number):
            body = _corpus.text(number)
            profile = dedup.text_profile(body)
            keys = tuple(dict.fromkeys(profile.band_keys)) if profile else ()
            digest = dedup.text_hash(body)
        else:
            # A story of the filler pool, with a hash of its own: no article is an exact copy.
            body = _filler(number)
            rng = random.Random(number)
            keys = tuple(rng.getrandbits(64) - 2**63 for _ in range(dedup.BANDS))
            digest = dedup.key_of_canonical(f"filler:{number}")
        # The URL is canonical already: courlan need not run a million times.
        page_key = dedup.key_of_canonical(_url(number))
        out.append((number, page_key, body, digest, keys))
    return out


_fillers: dict[int, str] = {}


def _filler(number: int) -> str:
    """Return the text of a filler article: one of FILLERS stories, made once per process."""
    slot = number % FILLERS
    if slot not in _fillers:
        _fillers[slot] = (_corpus or Corpus()).story(-1 - slot)
    return _fillers[slot]


def _url(number: int) -> str:
    return f"https://bench.example/{number}"


def _ranges(start: int, stop: int, size: int) -> Iterator[range]:
    for first in range(start, stop, size):
        yield range(first, min(first + size, stop))


def fill(stores: list[Store], start: int, stop: int, pool: ProcessPoolExecutor) -> None:
    """Store articles ``start`` to ``stop - 1`` with their band keys in each of ``stores``,
    straight into the tables; the articles are made once for all of them."""
    feeds, next_ids = [], []
    for store in stores:
        with Session(store.engine) as session, session.begin():
            feed_ids = list(session.scalars(select(Feed.id).order_by(Feed.id)))
            if not feed_ids:
                rows = [{"url": f"https://f{i}.bench.example/feed", "created_at": NOW} for i in range(FEEDS)]
                feed_ids = list(
                    session.scalars(insert(Feed).returning(Feed.id, sort_by_parameter_order=True), rows)
                )
            feeds.append(feed_ids)
            # Explicit ids, so that band keys are written without reading ids back.
            next_ids.append((session.scalar(select(func.max(Article.id))) or 0) + 1)

    # The workers make the next chunks while this process writes one; a few ahead bound memory.
    def submit(chunk: range) -> list[Future[list[tuple[int, str, str, str | None, tuple[int, ...]]]]]:
        return [pool.submit(_profiles, part) for part in _ranges(chunk.start, chunk.stop, 250)]

    chunks = _ranges(start, stop, CHUNK)
    with ThreadPoolExecutor(max(1, len(stores))) as writers:
        pending = deque(submit(chunk) for chunk in itertools.islice(chunks, 3))
        while pending:
            made = [row for future in pending.popleft() for row in future.result()]
            following = next(chunks, None)
            if following is not None:
                pending.append(submit(following))
            # The databases write at once: SQLite and the PostgreSQL server release the GIL.
            list(writers.map(_write, stores, feeds, next_ids, [made] * len(stores)))
            next_ids = [next_id + len(made) for next_id in next_ids]
            if (made[-1][0] + 1) % 100_000 == 0:
                print(f"  filled {made[-1][0] + 1:,}", file=sys.stderr, flush=True)
    for store, next_id in zip(stores, next_ids, strict=True):
        if store.engine.dialect.name == "postgresql" and next_id > 1:
            with store.engine.begin() as connection:
                connection.execute(
                    text("SELECT setval(pg_get_serial_sequence('articles', 'id'), :last)"),
                    {"last": next_id - 1},
                )


def _write(
    store: Store,
    feed_ids: list[int],
    next_id: int,
    made: list[tuple[int, str, str, str | None, tuple[int, ...]]],
) -> None:
    """Write one chunk of made articles and their band keys in one transaction."""
    articles = [
        (
            next_id + index,
            feed_ids[number % FEEDS],
            f"e{number}",
            _url(number),
            page_key,
            f"Story {number}",
            body,
            digest,
        )
        for index, (number, page_key, body, digest, _) in enumerate(made)
    ]
    bands = sorted((key, next_id + index) for index, (*_, keys) in enumerate(made) for key in keys)
    raw = store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        if store.engine.dialect.name == "postgresql":
            _copy_postgres(cursor, articles, bands)
        else:
            _insert_sqlite(cursor, articles, bands)
        raw.commit()
    finally:
        raw.close()


_ARTICLE_COLUMNS = "id, feed_id, entry_key, url, url_key, title, text, content_hash"


def _copy_postgres(cursor: Any, articles: list[tuple[object, ...]], bands: list[tuple[int, int]]) -> None:
    first_seen = NOW.isoformat()
    # The rows are consistent by construction: skip the per-row foreign-key triggers.
    cursor.execute("SET LOCAL session_replication_role = replica")
    with cursor.copy(
        f"COPY articles ({_ARTICLE_COLUMNS}, first_seen, summary, html, extraction) FROM STDIN"
    ) as copy:
        for row in articles:
            copy.write_row((*row, first_seen, "", "", "page"))
    with cursor.copy("COPY article_bands (band_key, article_id) FROM STDIN") as copy:
        for row in bands:
            copy.write_row(row)


def _insert_sqlite(cursor: Any, articles: list[tuple[object, ...]], bands: list[tuple[int, int]]) -> None:
    # SQLAlchemy's SQLite DateTime stores this text form (what UTCDateTime hands it: naive UTC).
    first_seen = NOW.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    # The rows are consistent by construction: skip the per-row foreign-key checks.
    cursor.execute("PRAGMA foreign_keys = OFF")
    cursor.execute("BEGIN IMMEDIATE")
    cursor.executemany(
        f"INSERT INTO articles ({_ARTICLE_COLUMNS}, first_seen, summary, html, extraction) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '', '', 'page')",
        [(*row, first_seen) for row in articles],
    )
    cursor.executemany("INSERT INTO article_bands (band_key, article_id) VALUES (?, ?)", bands)
    cursor.execute("COMMIT")
    cursor.execute("PRAGMA foreign_keys = ON")


@dataclass
class Measured:
    database: str
    size: int
    lookup_p50: float
    lookup_p95: float
    lookup_p99: float
    lookup_cpu_p95: float  # CPU time of this process only: on PostgreSQL the server's is not in it
    found: str
    insert_ms_per_article: float
    insert_batch_p95: float
    band_rows: int
    disk_mb: float
    load: float  # the machine's 1-minute load average when measured (2 cores, shared)

    def row(self) -> str:
        return (
            f"| {self.database} | {self.size:,} | {self.lookup_p50:.2f} | {self.lookup_p95:.2f} | "
            f"{self.lookup_p99:.2f} | {self.lookup_cpu_p95:.2f} | {self.found} | "
            f"{self.insert_ms_per_article:.2f} | "
            f"{self.insert_batch_p95:.1f} | {self.band_rows:,} | {self.disk_mb:,.0f} | {self.load:.1f} |"
        )


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def measure(store: Store, database: str, size: int, probes: int, corpus: Corpus, batch_base: int) -> Measured:
    """Time lookups and insertions against the ``size`` articles stored."""
    rng = random.Random(size)
    cases = []
    for index in range(probes):
        if index % 2:
            original = rng.randrange(size // SAMPLE) * SAMPLE
            cases.append((corpus.near_copy(corpus.text(original), 10**9 + index), True))
        else:
            cases.append((corpus.story(2 * 10**9 + size + index), False))
    timings, cpu_times, found = [], [], 0
    # The process's copy of the recent band keys, as a refresh has it: caught up once (here, in
    # the warm-up), not read afresh by every lookup, as a lookup without one does.
    bands = BandIndex(store.engine)

    def lookup(profile: dedup.TextProfile | None) -> int | None:
        """The stored story ``profile`` nearly duplicates: the candidates read, then verified."""
        (candidates,) = stored_candidates(session.connection(), [profile], bands)
        return dedup.nearest_stored(profile, "", candidates) if profile else None

    with Session(store.engine) as session:
        lookup(dedup.text_profile(cases[0][0]))  # warm-up
        for body, is_copy in cases:
            profile = dedup.text_profile(body)
            # The refresh looks up inside its write transaction, on a connection it holds: the
            # checkout (PostgreSQL's pre-ping) and BEGIN, a round trip each, are not the lookup's.
            session.execute(text("SELECT 1"))
            started, cpu = time.perf_counter(), time.thread_time()
            representative = lookup(profile)
            timings.append(1000 * (time.perf_counter() - started))
            cpu_times.append(1000 * (time.thread_time() - cpu))
            found += is_copy and representative is not None
            session.rollback()
    batches = []
    feed = "https://new.bench.example/feed"
    for batch in range(20):
        articles = []
        for index in range(10):
            number = batch_base + batch * 10 + index
            body = (
                corpus.near_copy(corpus.text(rng.randrange(size // SAMPLE) * SAMPLE), number)
                if index % 2
                else corpus.story(number)
            )
            url = f"https://new.bench.example/{number}"
            articles.append(
                NewArticle(
                    feed, f"n{number}", url, "t", None, NOW, "", body, "", "page", dedup.text_hash(body)
                )
            )
        record = FetchRecord(200, None, None, "Bench", None, NOW, NOW)
        started = time.perf_counter()
        store.store_refresh(feed, articles, record)
        batches.append(1000 * (time.perf_counter() - started))
    with Session(store.engine) as session:
        rows = session.scalar(select(func.count()).select_from(ArticleBand)) or 0
        if database == "sqlite":
            disk = session.scalar(text("SELECT sum(pgsize) FROM dbstat WHERE name = 'article_bands'")) or 0
        else:
            disk = session.scalar(text("SELECT pg_total_relation_size('article_bands')")) or 0
    return Measured(
        database,
        size,
        statistics.median(timings),
        _percentile(timings, 0.95),
        _percentile(timings, 0.99),
        _percentile(cpu_times, 0.95),
        f"{found}/{probes // 2}",
        statistics.fmean(batches) / 10,
        _percentile(batches, 0.95),
        rows,
        disk / 2**20,
        os.getloadavg()[0],
    )


def _postgres_schema(admin_url: str) -> tuple[str, str]:
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in admin_url else "?"
    return schema, f"{admin_url}{separator}options=-csearch_path%3D{schema}"


def _drop_schema(admin_url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


def run(
    sizes: list[int], databases: list[str], postgres: str | None, folder: Path, probes: int, workers: int
) -> list[Measured]:
    """Fill the databases to each size in turn (the same articles in each) and measure there."""
    corpus = Corpus()
    results = []
    opened: list[tuple[str, Store]] = []
    schema = None
    try:
        for database in databases:
            if database == "sqlite":
                opened.append((database, Store.open(f"sqlite:///{folder / f'dedup-scale-{os.getpid()}.db'}")))
            elif not postgres:
                print("skipping PostgreSQL: no --postgres URL", file=sys.stderr)
            else:
                schema, url = _postgres_schema(postgres)
                opened.append((database, Store.open(url)))
        stored = 0
        with ProcessPoolExecutor(workers) as pool:
            for size in sizes:
                started = time.perf_counter()
                fill([store for _, store in opened], stored, size, pool)
                names = " and ".join(name for name, _ in opened)
                print(
                    f"{names}: filled to {size:,} in {time.perf_counter() - started:.0f} s", file=sys.stderr
                )
                stored = size  # plus the 200 that each measurement inserts
                for database, store in opened:
                    if database == "postgresql":
                        # VACUUM runs outside a transaction. Its own tables only: a database-wide
                        # VACUUM waits on other sessions' locks.
                        autocommit = store.engine.execution_options(isolation_level="AUTOCOMMIT")
                        with autocommit.connect() as connection:
                            connection.execute(text("VACUUM ANALYZE articles"))
                            connection.execute(text("VACUUM ANALYZE article_bands"))
                    results.append(measure(store, database, size, probes, corpus, 3 * 10**9 + size))
                    print(results[-1].row(), file=sys.stderr)
    finally:
        for database, store in opened:
            store.close()
            if database == "sqlite":
                for suffix in ("", "-wal", "-shm", ".write-lock"):
                    Path(str(store.engine.url.database) + suffix).unlink(missing_ok=True)
        if schema and postgres:
            _drop_schema(postgres, schema)
    return results


def table(results: list[Measured]) -> str:
    """Return the results as a Markdown table."""
    lines = [
        "| database | stored | lookup p50 ms | p95 ms | p99 ms | p95 CPU ms | copies found "
        "| insert ms/article | batch p95 ms | band rows | article_bands MiB | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    return "\n".join([*lines, *(m.row() for m in results)]) + "\n"


def report(largest: int, probes: int = 400, databases: tuple[str, ...] = ("sqlite", "postgresql")) -> str:
    """Measure up to ``largest`` articles on SQLite and (with $AGGREGATOR_TEST_POSTGRES_URL)
    PostgreSQL; return the block for docs/PERFORMANCE.md: the table, the growth of the lookup's
    p95 and the command."""
    postgres = os.environ.get("AGGREGATOR_TEST_POSTGRES_URL")
    sizes = [size for size in SIZES if size <= largest] or [largest]
    with tempfile.TemporaryDirectory() as folder:
        results = run(sizes, list(databases), postgres, Path(folder), probes, os.cpu_count() or 1)
    lines = [table(results)]
    for database in ("sqlite", "postgresql"):
        rows = [m for m in results if m.database == database]
        if len(rows) > 1:
            lines.append(
                f"{database}: lookup p95 {rows[0].lookup_p95:.2f} ms at {rows[0].size:,}, "
                f"{rows[-1].lookup_p95:.2f} ms at {rows[-1].size:,} "
                f"(x{rows[-1].lookup_p95 / rows[0].lookup_p95:.2f} "
                f"for x{rows[-1].size // rows[0].size:,} the articles)."
            )
    lines.append(
        f"\n`python -m benchmarks.dedup_scale --max {largest} --probes {probes}`, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dedup_scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--max", type=int, default=SIZES[-1], help="largest size (default: %(default)s)")
    parser.add_argument("--databases", default="sqlite,postgresql", help="default: %(default)s")
    parser.add_argument("--postgres", default=os.environ.get("AGGREGATOR_TEST_POSTGRES_URL"))
    parser.add_argument("--dir", type=Path, default=None, help="folder for the SQLite file")
    parser.add_argument("--probes", type=int, default=400, help="lookups timed per size")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for filling")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    sizes = [size for size in SIZES if size <= args.max] or [args.max]
    databases = [name.strip() for name in args.databases.split(",") if name.strip()]
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        results = run(sizes, databases, args.postgres, Path(folder), args.probes, args.workers)
    if args.json:
        print(json.dumps([vars(m) for m in results], indent=2))
    else:
        print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
