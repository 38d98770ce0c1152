"""The band index: which stored articles share a MinHash band key with a new text.

A new article's band keys are appended as one row to ``article_bands_recent`` (``add_recent``)
and merged into the indexed ``article_bands`` in key order every ``MERGE_EVERY`` article ids
(``merge``); each process holds the recent rows' keys in memory (``RecentIndex``). A refresh
probes both before the writers' lock (``BandIndex.probe``) and under it reads only what changed
since (``BandIndex.candidates``). See docs/ARCHITECTURE.md, "Decisions".
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, bindparam, delete, select, update
from sqlalchemy.engine import Connection

from aggregator.dedup import TextProfile, rank_candidates, text_profiles
from aggregator.schema import Article, ArticleBand, BandMerges, RecentBands
from aggregator.storage.sql import DriverQuery, in_one_value, marker, one_value

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = [
    "BAND_LOOKUP",
    "MERGE_EVERY",
    "MERGE_ROWS",
    "RECENT_SINCE",
    "BandIndex",
    "IndexProbe",
    "RecentIndex",
    "add_recent",
    "delete_keys",
    "merge",
    "merge_if_crossed",
    "pack_keys",
    "unpack_keys",
]

# Recent articles' band keys are merged into the band index when the article ids cross a multiple
# of this (about half a million keys, which each process holds in memory).
MERGE_EVERY = 16_384
# Rows of the band index a merge inserts in one statement: many rows a statement cost far less
# a row than one.
MERGE_ROWS = 250


def pack_keys(keys: Iterable[int]) -> bytes:
    """The band keys of one article as ``schema.RecentBands`` stores them."""
    keys = tuple(keys)
    return struct.pack(f"<{len(keys)}q", *keys)


def unpack_keys(blob: bytes) -> tuple[int, ...]:
    """The band keys ``pack_keys`` packed."""
    return struct.unpack(f"<{len(blob) // 8}q", blob)


class RecentIndex:
    """This process's copy of ``article_bands_recent``: band key -> the recent articles holding it.

    Kept up to date by reading only the rows added since the last look (``catch_up``): rows are
    appended in article id order, and deleted only by a merge (or by retention, which merges),
    which counts itself in ``article_band_merges``; when the count moves, the table is read
    afresh. Reading another writer's few rows costs far less than inserting every article's keys
    into an index under the writers' lock and probing it there.

    The keys are held in runs: pairs of numpy arrays (keys sorted, the article of each), far
    smaller than a dict of them and taken in without sorting a dict. Each catch-up's rows become a
    run; a run is merged with the one before it while it is at least a quarter of its size, so
    that a lookup searches a handful of runs and each key is merged a few times in all.
    ``lock`` keeps the threads of one process (``extract.workers: 0``) out of each other's way.
    """

    __slots__ = ("epoch", "lock", "merges", "runs", "seen")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.epoch = 0  # moves whenever what the index holds is read afresh
        self.merges: int | None = None
        self.seen = 0  # the last article id taken in
        self.runs: list[tuple[NDArray[Any], NDArray[Any]]] = []  # (keys sorted, articles), largest first
        self._reset(None)

    def _reset(self, merges: int | None) -> None:
        self.epoch += 1
        self.merges, self.seen = merges, 0
        self.runs = []

    def catch_up(self, connection: Connection, consolidate: bool = True) -> None:
        """Read the rows added since the last look (all of them after a merge); with
        ``consolidate``, merge the runs that have grown. Called with ``lock`` held."""
        merges, rows = _recent_since(connection, self.seen)
        if merges != self.merges:
            self._reset(merges)
            merges, rows = _recent_since(connection, self.seen)
        if rows:
            self.add_rows(rows)
        if consolidate:
            self.merge_runs()

    def add_rows(self, rows: list[tuple[int, bytes]]) -> None:
        """Take in rows of ``article_bands_recent`` (article id, packed keys), in id order, as one run."""
        import numpy as np

        blobs = [bytes(blob) for _, blob in rows]
        keys = np.frombuffer(b"".join(blobs), dtype="<i8").astype(np.int64)
        ids = np.repeat(
            np.array([article_id for article_id, _ in rows], dtype=np.int64), [len(b) // 8 for b in blobs]
        )
        order = np.argsort(keys, kind="stable")
        self.runs.append((keys[order], ids[order]))
        self.seen = rows[-1][0]

    def merge_runs(self) -> None:
        """Merge each run into the one before while it is at least a quarter of its size."""
        import numpy as np

        runs = self.runs
        while len(runs) > 1 and 4 * len(runs[-1][0]) >= len(runs[-2][0]):
            (last_keys, last_ids), (keys, ids) = runs.pop(), runs.pop()
            keys, ids = np.concatenate((keys, last_keys)), np.concatenate((ids, last_ids))
            order = np.argsort(keys, kind="stable")  # two sorted runs: merged in one pass
            runs.append((keys[order], ids[order]))

    def peek(self, connection: Connection, wanted: frozenset[int]) -> dict[int, list[int]] | None:
        """The rows added since the last look that hold any of ``wanted``, key by key, leaving
        this copy as it is (the next catch-up takes them in, outside the writers' lock); None
        when a merge came since."""
        merges, rows = _recent_since(connection, self.seen)
        if merges != self.merges:
            return None
        found: dict[int, list[int]] = {}
        for article_id, blob in rows:
            for key in wanted.intersection(unpack_keys(bytes(blob))):
                found.setdefault(key, []).append(article_id)
        return found

    def hits(self, wanted: Sequence[int], into: dict[int, list[int]]) -> None:
        """Add the recent articles holding each of ``wanted`` (sorted, distinct) to ``into``."""
        if not self.runs:
            return
        import numpy as np

        probe = np.array(wanted, dtype=np.int64)
        for keys, ids in self.runs:
            low = np.searchsorted(keys, probe)
            # A key of the probe is in the run where the first key not below it equals it.
            found = np.flatnonzero(keys[np.minimum(low, len(keys) - 1)] == probe).tolist()
            if not found:
                continue
            high = np.searchsorted(keys, probe[found], "right").tolist()
            for index, end in zip(found, high, strict=True):
                into.setdefault(wanted[index], []).extend(ids[low[index] : end].tolist())


@dataclass(frozen=True, slots=True)
class IndexProbe:
    """The band index's articles for some keys, read before the write (``BandIndex.probe``),
    and the count of merges then: only a merge changes the index. With them, the recent articles
    holding those keys in this process's ``RecentIndex`` then, and where that index stood."""

    merges: int | None
    keys: frozenset[int]
    hits: dict[int, list[int]]
    recent: dict[int, list[int]] | None = None
    recent_at: tuple[int, int] | None = None  # RecentIndex.epoch and .seen
    # The keys sorted, and how many profiles had them: the write looks up a subset of those
    # profiles, and when it is as many, it is all of them and the same keys.
    wanted: list[int] | None = None
    profiled: int = 0


class BandIndex:
    """One process's lookups in the band index, with its copy of the recent keys (``recent``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.recent = RecentIndex()

    def probe(self, profiles: Sequence[TextProfile | None]) -> IndexProbe | None:
        """Look the band keys of ``profiles`` up in the band index, outside the writers' lock;
        bring this process's copy of the recent keys up to date first, so that the write reads
        only what was committed in between. None when no profile has keys."""
        wanted = _wanted_keys(profiles)
        if not wanted:
            return None
        recent: dict[int, list[int]] = {}
        with self.engine.connect() as connection:
            with self.recent.lock:
                self.recent.catch_up(connection)  # reads the count of merges too
                self.recent.hits(wanted, recent)
                merges, at = self.recent.merges, (self.recent.epoch, self.recent.seen)
            hits = _index_hits(connection, wanted)
            return IndexProbe(merges, frozenset(wanted), hits, recent, at, wanted, _profiled(profiles))

    def candidates(
        self,
        connection: Connection,
        profiles: Sequence[TextProfile | None],
        probe: IndexProbe | None = None,
    ) -> list[list[int]]:
        """Return, for each profile, the stored articles sharing its band keys, ranked
        (``dedup.rank_candidates``): the batch's keys looked up in the index (``probe``, unless a
        merge came since) and among the recent articles, as of ``connection``'s transaction."""
        found: list[list[int]] = [[] for _ in profiles]
        if probe is not None and probe.wanted is not None and probe.profiled == _profiled(profiles):
            wanted = probe.wanted
        else:
            wanted = _wanted_keys(profiles)
        if not wanted:
            return found
        recent = self.recent
        with recent.lock:
            hits = _probed_hits(connection, recent, probe, wanted)
            if hits is None:
                # Sorting the arrays is left to the next catch-up before the lock (``probe``).
                recent.catch_up(connection, consolidate=probe is None)
                if probe is not None and probe.merges == recent.merges and probe.keys.issuperset(wanted):
                    hits = {key: list(ids) for key, ids in probe.hits.items()}
                else:
                    hits = _index_hits(connection, wanted)
                recent.hits(wanted, hits)
        if not hits:
            return found
        return [rank_candidates(profile.band_keys, hits) if profile else [] for profile in profiles]


def add_recent(connection: Connection, keyed: Sequence[tuple[int, Sequence[int]]]) -> None:
    """Write the band keys of new articles (id, keys), one row an article, through the driver's
    executemany: SQLAlchemy's per-row parameter processing cost more than SQLite's inserts."""
    if not keyed:
        return
    rows = [(article_id, pack_keys(dict.fromkeys(keys))) for article_id, keys in keyed]
    mark = marker(connection)
    connection.exec_driver_sql(
        f"INSERT INTO article_bands_recent (article_id, band_keys) VALUES ({mark}, {mark})", rows
    )


def merge_if_crossed(connection: Connection, first_id: int, last_id: int) -> None:
    """``merge`` when the new article ids ``first_id`` to ``last_id`` crossed a multiple of
    MERGE_EVERY."""
    if (first_id - 1) // MERGE_EVERY != last_id // MERGE_EVERY:
        merge(connection)


def merge(connection: Connection) -> None:
    """Move the recent articles' band keys into the band index, in key order, which writes each
    page of the index once; those of deleted articles are dropped. Counted in
    ``article_band_merges``, so that every process reads the recent keys afresh."""
    import numpy as np

    rows = connection.execute(_RECENT_KEPT).all()
    if rows:
        keys = np.frombuffer(b"".join(bytes(blob) for _, blob in rows), dtype="<i8")
        ids = np.repeat(
            np.array([article_id for article_id, _ in rows], dtype=np.int64),
            [len(blob) // 8 for _, blob in rows],
        )
        order = np.lexsort((ids, keys))
        # (key, id) pairs side by side, in key order: each statement takes MERGE_ROWS of them.
        pairs = np.empty(2 * len(keys), dtype=np.int64)
        pairs[0::2], pairs[1::2] = keys[order], ids[order]
        mark = marker(connection)

        def insert(rows: int) -> str:
            values = ", ".join([f"({mark}, {mark})"] * rows)
            return f"INSERT INTO article_bands (band_key, article_id) VALUES {values}"

        step = 2 * MERGE_ROWS
        for start in range(0, len(pairs), 100_000):  # bounded memory: the values are Python ints
            chunk = pairs[start : start + 100_000].tolist()
            whole = len(chunk) - len(chunk) % step
            if whole:
                connection.exec_driver_sql(
                    insert(MERGE_ROWS), [tuple(chunk[i : i + step]) for i in range(0, whole, step)]
                )
            if whole < len(chunk):
                connection.exec_driver_sql(insert((len(chunk) - whole) // 2), tuple(chunk[whole:]))
    connection.execute(delete(RecentBands))
    connection.execute(update(BandMerges).values(merges=BandMerges.merges + 1))


def delete_keys(connection: Connection, ids: Sequence[int]) -> None:
    """Delete the band keys of the articles ``ids`` from the band index (merge first), computed
    again from their texts: the index has no entry by article (``schema.ArticleBand``)."""
    rows = connection.execute(select(Article.id, Article.text).where(Article.id.in_(ids))).all()
    pairs = [
        (key, article_id)
        for (article_id, _), profile in zip(
            rows, text_profiles([body or "" for _, body in rows]), strict=True
        )
        if profile is not None
        for key in dict.fromkeys(profile.band_keys)
    ]
    if pairs:
        mark = marker(connection)
        connection.exec_driver_sql(
            f"DELETE FROM article_bands WHERE band_key = {mark} AND article_id = {mark}", pairs
        )


def _profiled(profiles: Sequence[TextProfile | None]) -> int:
    """How many of ``profiles`` there are (texts too short have none)."""
    return sum(profile is not None for profile in profiles)


def _wanted_keys(profiles: Sequence[TextProfile | None]) -> list[int]:
    """The distinct band keys of ``profiles``, sorted."""
    return sorted({key for profile in profiles if profile for key in profile.band_keys})


def _index_hits(connection: Connection, wanted: list[int]) -> dict[int, list[int]]:
    hits: dict[int, list[int]] = {}
    postgresql = connection.dialect.name == "postgresql"
    for key, article_id in BAND_LOOKUP[postgresql].rows(connection, {"keys": one_value(wanted, postgresql)}):
        hits.setdefault(key, []).append(article_id)
    return hits


def _probed_hits(
    connection: Connection, recent: RecentIndex, probe: IndexProbe | None, wanted: list[int]
) -> dict[int, list[int]] | None:
    """The probe's hits and those of the recent rows committed since, when the probe still holds:
    no merge came, and this process's copy of the recent keys is where the probe left it (no
    other thread of the process moved it). None otherwise. Called with ``recent.lock`` held."""
    if (
        probe is None
        or probe.recent is None
        or probe.recent_at != (recent.epoch, recent.seen)
        or probe.merges != recent.merges
        or not probe.keys.issuperset(wanted)
    ):
        return None
    since = recent.peek(connection, probe.keys)
    if since is None:
        return None
    hits = {key: list(ids) for key, ids in probe.hits.items()}
    for found in (probe.recent, since):
        for key, ids in found.items():
            hits.setdefault(key, []).extend(ids)
    return hits


def _recent_since(connection: Connection, seen: int) -> tuple[int | None, list[tuple[int, bytes]]]:
    """The count of merges, and the recent rows (article id, band keys) added after ``seen``."""
    rows = RECENT_SINCE.rows(connection, {"seen": seen})
    if not rows:
        return None, []
    return rows[0][0], [(article_id, blob) for _, article_id, blob in rows if article_id is not None]


# The statements, built once per dialect: constructing them on every lookup cost as much CPU as
# running them. Public for the test that checks them against Core.
BAND_LOOKUP = {
    postgresql: DriverQuery(
        select(ArticleBand.band_key, ArticleBand.article_id).where(
            in_one_value(ArticleBand.band_key, "keys", postgresql)
        )
    )
    for postgresql in (False, True)
}
# The count of merges and the recent rows after "seen", in one statement (one snapshot): the
# merges' one row, joined with those rows if any.
RECENT_SINCE = DriverQuery(
    select(BandMerges.merges, RecentBands.article_id, RecentBands.band_keys)
    .outerjoin(RecentBands, RecentBands.article_id > bindparam("seen"))
    .where(BandMerges.id == 1)
    .order_by(RecentBands.article_id)
)
# Rows of deleted articles are left behind (RecentBands has no foreign key).
_RECENT_KEPT = select(RecentBands.article_id, RecentBands.band_keys).join(
    Article, Article.id == RecentBands.article_id
)
