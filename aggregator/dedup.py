"""Identity of entries and articles: pure functions, no I/O.

Layers, cheapest first (see docs/DUPLICATES.md):
1. the same entry of the same feed -> ``entry_key`` (guid, else link, else title+content hash);
2. the same page reached by another URL -> ``canonical_url`` (tracking parameters, fragments and
   default ports dropped, query sorted: courlan does the cleaning);
3. the same text -> ``text_hash`` of the normalised full text;
4. nearly the same text (one wire story in several outlets' wrappers, a lead rewritten, a paragraph
   dropped or added, a correction appended) -> ``text_profile``: the text's word shingles and the
   band keys of their MinHash signature (locality-sensitive hashing). Texts sharing a band key are
   candidates, stored in the database and looked up by key; ``is_near_duplicate`` then decides on
   the exact shingle sets.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
import zlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from itertools import accumulate
from types import SimpleNamespace
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from aggregator.models import ParsedEntry

if TYPE_CHECKING:
    import numpy as np

# numpy and courlan are imported when first used (_hashing, canonical_url): together they were a
# third of a second of every command's start-up, and the service's own process of a refresh with
# worker processes needs neither.

_WORDS = re.compile(r"\w+", re.UNICODE)
# Texts shorter than this are too generic ("Read more", a headline) to merge on text alone.
MIN_WORDS_FOR_TEXT_MATCH = 50


def lead_order(published: datetime | None, first_seen: datetime, article_id: int) -> tuple[datetime, int]:
    """Sort key of a story's copies, first the one that represents it: the earliest published
    (usually the original publisher's, whichever feed was stored first), then the earliest
    stored. The store's ``duplicate_of`` and the digest's lead both follow it."""
    return (published or first_seen, article_id)


# A refresh asks for the same URL's canonical form several times (entry identity, link key, article
# URL) and for the same text's words twice (exact hash, then shingles): pure functions, cached.
@functools.lru_cache(maxsize=4096)
def canonical_url(url: str) -> str:
    """Return ``url`` with tracking parameters, fragment and default port removed, query sorted."""
    import courlan

    url = url.strip()
    try:
        cleaned = courlan.normalize_url(url, strict=False)
    except (ValueError, AttributeError):
        cleaned = url
    parts = urlsplit(cleaned)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", parts.query, ""))


def url_key(url: str) -> str:
    """Return a fixed-length key for the canonical form of ``url`` (indexed in the database)."""
    return key_of_canonical(canonical_url(url))


def key_of_canonical(canonical: str) -> str:
    """Return url_key for a URL that canonical_url() already returned."""
    return _sha(canonical)


def entry_key(entry: ParsedEntry, repeated_guids: frozenset[str] = frozenset()) -> str:
    """Return a stable identity for an entry within its feed.

    Some feeds give every item the same guid (or the feed's own URL): ``repeated_guids`` lists
    the guids seen more than once in this fetch, and those fall back to the link.
    """
    if entry.guid and entry.guid not in repeated_guids:
        return _sha("guid:" + entry.guid.strip())
    if entry.url:
        return _sha("url:" + canonical_url(entry.url))
    return _sha("content:" + entry.title + "\n" + (entry.content_html or entry.summary_html))


def repeated_guids(entries: tuple[ParsedEntry, ...]) -> frozenset[str]:
    """Return the guids used by more than one entry of the same feed."""
    seen: set[str] = set()
    repeated: set[str] = set()
    for entry in entries:
        if entry.guid:
            (repeated if entry.guid in seen else seen).add(entry.guid)
    return frozenset(repeated)


@functools.lru_cache(maxsize=64)
def normalise_words(text: str) -> tuple[str, ...]:
    """Return the lower-cased word tokens of ``text`` after Unicode normalisation."""
    if not text.isascii():  # NFKC is the costly part, and ASCII needs none
        text = unicodedata.normalize("NFKC", text)
    return tuple(_WORDS.findall(text.casefold()))


def text_hash(text: str) -> str | None:
    """Return a hash of the normalised words, or None when the text is too short to trust."""
    words = normalise_words(text)
    if len(words) < MIN_WORDS_FOR_TEXT_MATCH:
        return None
    return _sha(" ".join(words))


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


# -- layer 4: near-duplicate texts ---------------------------------------------------------------
#
# A text becomes the set of its overlapping SHINGLE_WORDS-word shingles (normalised words). Its
# MinHash signature holds, for each of PERMUTATIONS hash functions, the least hash of any shingle:
# two texts agree on one entry with probability equal to the Jaccard similarity of their sets.
# The signature is cut into BANDS bands of ROWS entries, each hashed to a 64-bit band key; texts
# sharing any band key are candidates (probability 1 - (1 - J**ROWS) ** BANDS: 0.95 at J = 0.3,
# 0.9999 at J = 0.5, 0.03 at J = 0.03). A candidate is a duplicate when at least MIN_CONTAINMENT
# of the shorter text's shingles are in the longer one: a copy cut to half the story, or with a
# lead rewritten and paragraphs added, has a low Jaccard similarity but a high containment.
# Figures: benchmarks/dedup_quality.py.

SHINGLE_WORDS = 5
PERMUTATIONS = 64
BANDS = 32
ROWS = PERMUTATIONS // BANDS
# Share of the shorter text's shingles that the longer must hold (tuned on the dev pairs of
# tests/data/dedup, see benchmarks/dedup_quality.py).
MIN_CONTAINMENT = 0.45
# Changing the hash family, SHINGLE_WORDS, PERMUTATIONS or BANDS changes every band key: bump
# MINHASH_VERSION; the migration that follows rebuilds the stored keys (article_bands).
# v1 drew 64 lanes of SHAKE-128 per shingle: 1.5 ms of CPU for a 300-word text, most of a
# feed's refresh. v2 hashes each shingle once (CRC-32, mixed) and permutes in numpy: ~0.1 ms.
MINHASH_VERSION = 2
_SEED = b"aggregator/minhash/v2"
# Rows of the (shingles x permutations) matrix computed at once: bounds memory on huge texts.
_CHUNK = 4096


@functools.cache
def _hashing() -> SimpleNamespace:
    """numpy and the hash functions' fixed constants, made on first use."""
    import numpy as np

    def constants(name: bytes, count: int) -> np.ndarray:
        """``count`` fixed pseudo-random 64-bit constants, the same on every machine and run."""
        digest = hashlib.shake_128(_SEED + name).digest(8 * count)
        return np.frombuffer(digest, dtype="<u8").astype(np.uint64)

    # Hash function i of a shingle hash x: the high 32 bits of a_i * x + b_i (mod 2**64), a_i
    # odd: the multiply-shift family, universal and one vector operation for all 64 at once.
    return SimpleNamespace(
        np=np,
        a=constants(b"/a", PERMUTATIONS) | np.uint64(1),
        b=constants(b"/b", PERMUTATIONS),
        band_salt=constants(b"/band", BANDS),
        row_salt=constants(b"/row", ROWS),
        shingle_salt=constants(b"/shingle", 1)[0],
        shift=np.uint64(32),
        uint64_max=np.uint64(2**64 - 1),
        mask32=np.uint64(0xFFFFFFFF),
        mix=(
            np.uint64(30),
            np.uint64(0xBF58476D1CE4E5B9),
            np.uint64(27),
            np.uint64(0x94D049BB133111EB),
            np.uint64(31),
        ),
    )


class TextProfile:
    """A text as near-duplicate detection sees it: its band keys, and its shingles for the check.

    The shingles (a set of strings) are made on first use: most texts meet no candidate, and
    making the set was a third of a profile's CPU.
    """

    __slots__ = ("_shingles", "band_keys", "words")

    def __init__(self, words: tuple[str, ...], band_keys: tuple[int, ...]) -> None:
        self.words = words
        self.band_keys = band_keys
        self._shingles: frozenset[str] | None = None

    @property
    def shingles(self) -> frozenset[str]:
        if self._shingles is None:
            self._shingles = shingles(self.words)
        return self._shingles


def text_profile(text: str) -> TextProfile | None:
    """Return the band keys (and shingles) of ``text``, or None when it is too short to trust."""
    words = normalise_words(text)
    if len(words) < MIN_WORDS_FOR_TEXT_MATCH:
        return None
    return TextProfile(words, band_keys(_signature(_shingle_codes(words))))


def text_shingles(text: str) -> frozenset[str] | None:
    """Return the set of word shingles of ``text``, or None below MIN_WORDS_FOR_TEXT_MATCH words."""
    words = normalise_words(text)
    if len(words) < MIN_WORDS_FOR_TEXT_MATCH:
        return None
    return shingles(words)


def shingles(words: Sequence[str], size: int = SHINGLE_WORDS) -> frozenset[str]:
    """Return the overlapping ``size``-word shingles of ``words`` (a shorter text is one shingle)."""
    if len(words) <= size:
        return frozenset([" ".join(words)]) if words else frozenset()
    return frozenset(map(" ".join, zip(*(words[i:] for i in range(size)), strict=False)))


def minhash(grams: Iterable[str]) -> tuple[int, ...]:
    """Return the MinHash signature of a non-empty set of shingles: PERMUTATIONS 32-bit minima.

    Each shingle is hashed once (CRC-32 of its UTF-8, then SplitMix64's finaliser with a fixed
    salt: the same in every process, run and machine, unlike the salted hash()); the
    PERMUTATIONS hash functions are derived from that by multiply-shift, all at once in numpy.
    CRC-32 is the one hash in the standard library cheap enough to call per shingle (a fifth of
    BLAKE2b's cost); two shingles of the texts compared share a CRC by chance with odds of about
    1 in 50,000 for 300-shingle texts, which moves no estimate. Raises ValueError for an empty set.
    """
    grams = list(grams)
    if not grams:
        raise ValueError("minhash of an empty set")
    # Shingles are words and spaces: NUL separates them in one encoding, one split.
    encoded = "\x00".join(grams).encode("utf-8", "surrogatepass").split(b"\x00")
    return _signature(list(map(zlib.crc32, encoded)))


def _shingle_codes(words: Sequence[str], size: int = SHINGLE_WORDS) -> list[int]:
    """Return the CRC-32 that ``minhash`` takes of each of the ``size``-word shingles of
    ``words`` (repeats included, which change no minimum), from one encoding of the text: each
    shingle is a slice of the words joined by spaces, so no string is made per shingle."""
    joined = " ".join(words)
    data = memoryview(joined.encode("utf-8", "surrogatepass"))
    if len(words) <= size:  # a shorter text is one shingle (``shingles``)
        return [zlib.crc32(data)]
    if len(data) == len(joined):  # ASCII: a character is a byte
        lengths: Iterable[int] = map(len, words)
    else:
        lengths = (len(word.encode("utf-8", "surrogatepass")) for word in words)
    # starts[i]: where word i begins, as if a space followed every word (the last included).
    starts = [0, *accumulate(length + 1 for length in lengths)]
    return [zlib.crc32(data[starts[i] : starts[i + size] - 1]) for i in range(len(words) - size + 1)]


def _signature(codes: Sequence[int]) -> tuple[int, ...]:
    """The MinHash signature of the shingles whose CRC-32 are ``codes`` (see ``minhash``)."""
    h = _hashing()
    np = h.np
    hashes = _mix(np.fromiter(codes, dtype=np.uint64, count=len(codes)) ^ h.shingle_salt)
    minima = np.full(PERMUTATIONS, h.uint64_max, dtype=np.uint64)
    for start in range(0, len(hashes), _CHUNK):
        values = hashes[start : start + _CHUNK, None] * h.a
        values += h.b
        values >>= h.shift
        np.minimum(minima, values.min(axis=0), out=minima)
    return tuple(minima.tolist())


def band_keys(signature: Sequence[int]) -> tuple[int, ...]:
    """Return one signed 64-bit key per band of ``signature`` (the band's number is mixed in)."""
    h = _hashing()
    rows = h.np.asarray(signature, dtype=h.np.uint64).reshape(BANDS, ROWS)
    keys = h.band_salt.copy()
    for row in range(ROWS):
        keys = _mix(keys ^ ((rows[:, row] & h.mask32) * h.row_salt[row]))
    return tuple(keys.view(h.np.int64).tolist())


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of 64-bit words that spreads every input bit."""
    s1, m1, s2, m2, s3 = _hashing().mix
    x = (x ^ (x >> s1)) * m1
    x = (x ^ (x >> s2)) * m2
    return x ^ (x >> s3)


def containment(a: frozenset[str], b: frozenset[str]) -> float:
    """Return the share of the smaller set's shingles that the other holds (0.0 if one is empty)."""
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    if not small:
        return 0.0
    return len(small & large) / len(small)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """Return |a & b| / |a | b| (0.0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def is_near_duplicate(a: frozenset[str], b: frozenset[str]) -> bool:
    """Return whether two texts' shingle sets (``text_shingles``) tell one story."""
    return containment(a, b) >= MIN_CONTAINMENT
