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

Which article represents which is decided here too (``choose_representatives``, ``story_leads``),
from what the store read: the store fetches the candidates and writes the answer down.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import chain, repeat
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from aggregator.models import ParsedEntry
from aggregator.words import find_words

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

# numpy and courlan are imported when first used (_hashing, canonical_url): together they were a
# third of a second of every command's start-up, and the service's own process of a refresh with
# worker processes needs neither.

# Texts shorter than this are too generic ("Read more", a headline) to merge on text alone.
MIN_WORDS_FOR_TEXT_MATCH = 50


# How long before we first saw an entry its feed's date is still believed for the lead: an honest
# original reaches us at most a poll interval late (fetch.max_interval: 24 h by default), with a
# day's margin for a slow feed; a date older than that is a claim only the feed makes.
BACKDATE_TRUST = timedelta(days=2)
# Copies first seen this soon after a story's first copy came in with it (one pass over feeds
# added together, their backlogs old): those with unbelieved dates are ordered by them among
# themselves, and after every copy with a believed one.
SEEN_TOGETHER = timedelta(hours=1)

LeadKey = tuple[datetime, int, datetime, int]


def lead_order(
    published: datetime | None, first_seen: datetime, article_id: int, story_seen: datetime
) -> LeadKey:
    """Sort key of a story's copies, first the one that represents it: the earliest published
    (usually the original publisher's, whichever feed was stored first), then the earliest
    stored. The store's ``duplicate_of`` and the digest's lead both follow it. ``story_seen``
    is the earliest ``first_seen`` of the story's copies.

    A copy's date is believed from BACKDATE_TRUST before we first saw it to that sighting. A date
    further back counts as the story's first sighting for a copy seen with the story's first
    (SEEN_TOGETHER), else as the copy's own: a copy backdated to 1990 cannot displace a story we
    already hold, and the old backlogs of feeds added together keep their publishers' order."""
    claimed = published or first_seen
    if claimed >= first_seen - BACKDATE_TRUST:
        return (min(claimed, first_seen), 0, claimed, article_id)
    counted = story_seen if first_seen - story_seen <= SEEN_TOGETHER else first_seen
    return (counted, 1, claimed, article_id)


# A refresh asks for the same URL's canonical form several times (entry identity, link key, article
# URL) and for the same text's words twice (exact hash, then shingles): pure functions, cached.
# Every poll of a changed feed asks again for all its entries' links: the cache holds those of
# some 1,600 feeds of 20 entries.
@functools.lru_cache(maxsize=32_768)
def canonical_url(url: str) -> str:
    """Return ``url`` with tracking parameters, fragment and default port removed, query sorted."""
    url = url.strip()
    plain = _PLAIN_URL.fullmatch(url)
    if plain and _plain_is_canonical(plain):
        # What the cleaning below returns for such a URL, in a twentieth of its time: a full pass
        # of new entries asks for every link once.
        return f"{plain['scheme']}://{plain['netloc']}{plain['path'] or '/'}"
    return _cleaned_url(url)


def _cleaned_url(url: str) -> str:
    import courlan

    try:
        cleaned = courlan.normalize_url(url, strict=False)
    except (ValueError, AttributeError):
        cleaned = url
    parts = urlsplit(cleaned)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", parts.query, ""))


# A URL that courlan's normalize_url and the rebuild below leave as it is, but for an empty path:
# lower-case http(s), a lower-case ASCII host and maybe a port, a path of characters that
# urllib.parse.quote keeps (courlan quotes the path with safe="/%!=:,-"; "%" is left out, so an
# escape is never in question), no query, no fragment, no user name. Anything else, and a path
# courlan would change ("//", a leading "/.."), a default port or a punycode host, goes to courlan.
_PLAIN_URL = re.compile(
    r"(?P<scheme>https?)://(?P<netloc>(?P<host>[a-z0-9.-]+)(?::(?P<port>[1-9][0-9]{0,4}))?)"
    r"(?P<path>/[A-Za-z0-9_.~!=:,/-]*)?"
)


def _plain_is_canonical(plain: re.Match[str]) -> bool:
    path, port = plain["path"] or "", plain["port"]
    if "//" in path or path.startswith("/..") or "xn--" in plain["host"]:
        return False
    return port is None or (int(port) <= 65535 and port != ("80" if plain["scheme"] == "http" else "443"))


def url_key(url: str) -> str:
    """Return a fixed-length key for the canonical form of ``url`` (indexed in the database)."""
    return key_of_canonical(canonical_url(url))


def key_of_canonical(canonical: str) -> str:
    """Return url_key for a URL that canonical_url() already returned."""
    return _sha(canonical)


def linkless_key(feed_url: str, entry_key: str) -> str:
    """Return the URL key of an article without a link: its own, so that link-less entries are
    never taken for copies of each other (they share no page)."""
    return _sha(f"no link:{feed_url}\n{entry_key}")


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
    r"""Return the lower-cased word tokens of ``text`` after Unicode normalisation: the ``\w+``
    words (``words.find_words``) of its NFKC form, case-folded."""
    if text.isascii():  # casefold() is lower() there, and NFKC changes nothing
        return tuple(find_words(text.lower()))
    # The quick check answers for most text at once; normalising takes as long as the search.
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    return tuple(find_words(text.casefold()))


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
# MINHASH_VERSION; the migration that follows rebuilds the stored keys (article_bands). v3 hashes
# each distinct word once, makes a shingle's hash from its words' in numpy, and takes the texts
# of a feed together (its cost: docs/PERFORMANCE.md).
MINHASH_VERSION = 3
_SEED = b"aggregator/minhash/v3"
# Rows of the (shingles x permutations) matrix computed at once: bounds memory on huge texts.
_CHUNK = 8192
# Words whose hash is remembered, at most (then forgotten all at once): about 100 bytes each.
_WORD_CACHE = 100_000


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
        word_salt=constants(b"/word", 1)[0],
        # A shingle's hash: the sum of its words' hashes, word j times position[j] (odd).
        position=constants(b"/position", SHINGLE_WORDS) | np.uint64(1),
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
    return text_profiles([text])[0]


def text_profiles(texts: Sequence[str]) -> list[TextProfile | None]:
    """``text_profile`` of each of ``texts``, the MinHash of all of them computed together (a
    feed's 20 texts cost about what 3 cost one at a time)."""
    words = [normalise_words(text) for text in texts]
    usable = [index for index, each in enumerate(words) if len(each) >= MIN_WORDS_FOR_TEXT_MATCH]
    profiles: list[TextProfile | None] = [None] * len(texts)
    if not usable:
        return profiles
    signatures = _signatures([_word_codes(words[index]) for index in usable])
    for index, keys in zip(usable, _band_keys(signatures), strict=True):
        profiles[index] = TextProfile(words[index], keys)
    return profiles


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

    A shingle's hash is made from its words' (``_word_codes``: CRC-32 of the UTF-8, the same in
    every process, run and machine, unlike the salted hash()), each mixed by SplitMix64's
    finaliser, times a fixed odd constant for its position, summed and mixed again; the
    PERMUTATIONS hash functions are derived from that by multiply-shift, all at once in numpy.
    Two distinct words share a CRC-32 with odds of 1 in 4 billion, which moves no estimate.
    ``text_profiles`` computes the same from the text's words without making the shingles.
    Raises ValueError for an empty set.
    """
    grams = list(grams)
    if not grams:
        raise ValueError("minhash of an empty set")
    h = _hashing()
    np = h.np
    hashes = []
    for gram in grams:
        words = _mix(np.array(_word_codes(gram.split(" ")), dtype=np.uint64) ^ h.word_salt)
        hashes.append(int((words * h.position[: len(words)]).sum(dtype=np.uint64)))
    minima = _minima(_mix(np.array(hashes, dtype=np.uint64) ^ h.shingle_salt))
    return tuple(minima.tolist())


_word_cache: dict[str, int] = {}


def _word_codes(words: Sequence[str]) -> list[int]:
    """The CRC-32 of each word's UTF-8, each distinct word hashed once (and remembered)."""
    cache = _word_cache
    try:
        return list(map(cache.__getitem__, words))
    except KeyError:
        if len(cache) > _WORD_CACHE:
            cache.clear()
        for word in set(words).difference(cache):
            cache[word] = zlib.crc32(word.encode("utf-8", "surrogatepass"))
        return list(map(cache.__getitem__, words))


def _signatures(texts: Sequence[list[int]], size: int = SHINGLE_WORDS) -> np.ndarray:
    """The MinHash signatures (one row each) of texts given by their words' ``_word_codes``,
    each text at least ``size`` words long; texts together in one pass of numpy while their
    shingles fit a chunk."""
    h = _hashing()
    np = h.np
    rows: NDArray[Any] = np.empty((len(texts), PERMUTATIONS), dtype=np.uint64)
    start = 0
    while start < len(texts):
        # Texts [start, stop) whose shingles fit _CHUNK (one long text alone is chunked below).
        stop, count = start + 1, len(texts[start]) - size + 1
        while stop < len(texts) and count + len(texts[stop]) - size + 1 <= _CHUNK:
            count += len(texts[stop]) - size + 1
            stop += 1
        group = texts[start:stop]
        words = _mix(np.fromiter(chain.from_iterable(group), dtype=np.uint64) ^ h.word_salt)
        span = len(words) - size + 1
        shingle = words[:span] * h.position[0]
        for offset in range(1, size):
            shingle += words[offset : offset + span] * h.position[offset]
        # A text's shingles start at its first word and end with its last: drop those that
        # run across into the next text.
        ends = np.cumsum([len(text) for text in group])
        keep = np.ones(span, dtype=bool)
        for end in ends[:-1].tolist():
            keep[end - size + 1 : end] = False
        hashes = _mix(shingle[keep] ^ h.shingle_salt)
        if stop - start == 1:
            rows[start] = _minima(hashes)
        else:
            counts = [len(text) - size + 1 for text in group]
            firsts = np.concatenate(([0], np.cumsum(counts)[:-1]))
            # Permutations by rows, shingles along them: reduceat along the contiguous axis
            # took a quarter of the time of the other layout. The shift to the high 32 bits
            # keeps the order, so it is made on the minima, not on every value.
            values = h.a[:, None] * hashes[None, :]
            values += h.b[:, None]
            rows[start:stop] = (np.minimum.reduceat(values, firsts, axis=1) >> h.shift).T
        start = stop
    return rows


def _minima(hashes: np.ndarray) -> np.ndarray:
    """The PERMUTATIONS minima over one set of shingle hashes, _CHUNK rows of the matrix at once."""
    h = _hashing()
    np = h.np
    minima = np.full(PERMUTATIONS, h.uint64_max, dtype=np.uint64)
    for start in range(0, len(hashes), _CHUNK):
        values = h.a[:, None] * hashes[None, start : start + _CHUNK]
        values += h.b[:, None]
        np.minimum(minima, values.min(axis=1), out=minima)
    least: NDArray[Any] = minima >> h.shift  # the high 32 bits of the least: the least of the high 32 bits
    return least


def band_keys(signature: Sequence[int]) -> tuple[int, ...]:
    """Return one signed 64-bit key per band of ``signature`` (the band's number is mixed in)."""
    h = _hashing()
    return _band_keys(h.np.asarray([signature], dtype=h.np.uint64))[0]


def _band_keys(signatures: np.ndarray) -> list[tuple[int, ...]]:
    """``band_keys`` of each row of ``signatures``, all at once."""
    h = _hashing()
    rows = signatures.reshape(len(signatures), BANDS, ROWS)
    keys = h.np.broadcast_to(h.band_salt, (len(signatures), BANDS)).copy()
    for row in range(ROWS):
        keys = _mix(keys ^ ((rows[:, :, row] & h.mask32) * h.row_salt[row]))
    return [tuple(each) for each in keys.view(h.np.int64).tolist()]


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of 64-bit words that spreads every input bit."""
    s1, m1, s2, m2, s3 = _hashing().mix
    x = (x ^ (x >> s1)) * m1
    x = (x ^ (x >> s2)) * m2
    mixed: NDArray[Any] = x ^ (x >> s3)
    return mixed


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


# -- template text of one site -------------------------------------------------------------------
#
# Two texts of one site (or one feed) share its template: the header, the footer, the newsletter
# box, the disclaimer. A short story with a long footer shares most of its shingles with any other
# story of the site, so what the two share at their start and at their end is not evidence there:
# it is stripped, and they are one story only if what remains of each is too short to be a story
# of its own (one text is the other with a word changed or a paragraph added) or still nearly
# the same. Not applied across sites: two outlets retelling one wire story share its whole body
# at their end, under leads of their own, and must stay one story.

# A remainder this long is a story of its own (a one-sentence brief); shorter, it is an edit.
MIN_STORY_WORDS = 10
# A run shared by both texts goes on past a change of at most this many words on each side (a
# date, a number or a link's slug in a footer) when at least SHINGLE_WORDS shared words follow.
TEMPLATE_GAP_WORDS = 3
# The gaps tried, the smallest first: (words skipped in the first text, in the second).
_GAPS = sorted(
    ((x, y) for x in range(TEMPLATE_GAP_WORDS + 1) for y in range(TEMPLATE_GAP_WORDS + 1) if x or y),
    key=lambda gap: (gap[0] + gap[1], gap),
)


def site_of(url: str) -> str:
    """Return the host of ``url``, lower case and without a leading "www." ('' if it has none)."""
    try:
        host = urlsplit(url.strip()).hostname or ""
    except ValueError:  # a malformed netloc ("http://[x"): no site
        return ""
    return host.removeprefix("www.")


def shared_run(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[int, int]:
    """Return how many words at the start of ``a`` and of ``b`` form the run both begin with,
    going on past gaps of up to TEMPLATE_GAP_WORDS words followed by SHINGLE_WORDS shared ones.
    O(len) word comparisons: each gap is paid for by the shared words after it."""
    i = j = 0
    while True:
        while i < len(a) and j < len(b) and a[i] == b[j]:
            i += 1
            j += 1
        for skip_a, skip_b in _GAPS:
            x, y = i + skip_a, j + skip_b
            resumed = a[x : x + SHINGLE_WORDS]
            if len(resumed) == SHINGLE_WORDS and resumed == b[y : y + SHINGLE_WORDS]:
                i, j = x, y
                break
        else:
            return i, j


def strip_template(a: Sequence[str], b: Sequence[str]) -> tuple[Sequence[str], Sequence[str]]:
    """Return the words of ``a`` and of ``b`` left once the runs they share at their start and
    at their end (``shared_run``) are taken off: each text's own part."""
    a, b = tuple(a), tuple(b)  # a list's slice never equals a tuple's
    head_a, head_b = shared_run(a, b)
    rest_a, rest_b = a[head_a:], b[head_b:]
    tail_a, tail_b = shared_run(rest_a[::-1], rest_b[::-1])
    return rest_a[: len(rest_a) - tail_a], rest_b[: len(rest_b) - tail_b]


def tells_one_story(
    a_words: Sequence[str],
    a_shingles: frozenset[str],
    b_words: Sequence[str],
    b_shingles: frozenset[str],
    *,
    same_site: bool,
) -> bool:
    """Return whether two texts (their normalised words and shingles) tell one story:
    ``is_near_duplicate``; and for two texts of one site or feed (``same_site``), still so once
    their shared template is taken off (``strip_template``): not when each keeps a story of its
    own (MIN_STORY_WORDS or more) that the other does not nearly tell."""
    if not is_near_duplicate(a_shingles, b_shingles):
        return False
    if not same_site:
        return True
    own_a, own_b = strip_template(a_words, b_words)
    if min(len(own_a), len(own_b)) < MIN_STORY_WORDS:  # one is the other, edited or added to
        return True
    if len(own_a) == len(a_words) and len(own_b) == len(b_words):  # no template: decided above
        return True
    return is_near_duplicate(shingles(own_a), shingles(own_b))


# -- which copy represents which -----------------------------------------------------------------
#
# A new article points at the representative of its story: the earliest stored copy (stored ids
# follow the order of first sightings), or an earlier article of its own batch. The store reads the
# stored copies with the batch's URL keys and text hashes (``StoredCopies``) and the stored texts
# sharing band keys with a new one (``Candidate``), and writes ``choose_representatives``'s answer.
# ``story_leads`` then gives a story to its earliest published copy.

# Candidates verified per new article at most: those sharing the most band keys. It bounds the
# work when a band key is common (a story carried by many outlets, boilerplate).
MAX_CANDIDATES = 8

# A band key -> the article (an id, or a position in a batch) holding it, or the list of them.
BandHolders = Mapping[int, int | list[int]]


# Incoming and Candidate are named tuples: made for every article and candidate of a lookup, where
# a frozen dataclass's __init__ cost a few per cent of the lookup.
class Incoming(NamedTuple):
    """A new article of one feed's batch, as the decision sees it."""

    url_key: str
    content_hash: str | None
    url: str
    profile: TextProfile | None


class Candidate(NamedTuple):
    """A stored article sharing band keys with a new one: its story's representative (``root``),
    and its feed, URL and text, which the template rule reads."""

    id: int
    root: int
    feed_id: int
    url: str
    text: str


@dataclass(frozen=True, slots=True)
class StoredCopies:
    """The stored articles with a batch's URL keys and text hashes: the representative of the
    earliest of each."""

    by_url: Mapping[str, int]
    by_hash: Mapping[str, int]

    def representative(self, item: Incoming) -> int | None:
        """The representative of the stored copy with ``item``'s URL, else with its text, or None."""
        return self.by_url.get(item.url_key) or (
            self.by_hash.get(item.content_hash) if item.content_hash else None
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """Which article represents which, for a batch in its order."""

    representatives: list[int | None]  # each article's stored representative (None: none stored)
    twins: dict[int, int]  # position -> the earlier position it copies, when that one is new
    banded: list[int]  # positions whose band keys are stored: texts with a profile, not exact copies
    duplicates: int  # copies of a stored story or of an earlier article of the batch


def rank_candidates(band_keys: Iterable[int], holders: BandHolders) -> list[int]:
    """Return the articles (ids or positions) sharing a band key: most keys shared first, then
    earliest; at most MAX_CANDIDATES."""
    counts: Counter[int] = Counter()
    for key in band_keys:
        held = holders.get(key)
        if isinstance(held, int):
            counts[held] += 1
        elif held:
            counts.update(held)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [article for article, _ in ranked[:MAX_CANDIDATES]]


def add_band_keys(holders: dict[int, int | list[int]], keys: Sequence[int], holder: int) -> None:
    """Record in ``holders`` that ``holder`` has ``keys``: each key maps to its one holder, or to a
    list when several have it. A key another article holds is rare (the two tell one story), so the
    dict's own update, in C, does the rest; keys that repeat count each time, as
    ``rank_candidates`` expects."""
    held = {key: holders[key] for key in holders.keys() & keys}
    if len(set(keys)) != len(keys):
        for key in keys:
            earlier = held.get(key, holders.get(key))
            held[key] = holders[key] = _with(earlier, holder)
        return
    holders.update(zip(keys, repeat(holder)))
    for key, earlier in held.items():
        holders[key] = _with(earlier, holder)


def _with(earlier: int | list[int] | None, holder: int) -> int | list[int]:
    if earlier is None:
        return holder
    return [*earlier, holder] if isinstance(earlier, list) else [earlier, holder]


def nearest_stored(
    profile: TextProfile, url: str, candidates: Sequence[Candidate], feed_id: int | None = None
) -> int | None:
    """Return the earliest representative among ``candidates`` (ranked) whose text ``profile``
    nearly duplicates, or None. A candidate of the same feed (``feed_id``) or site (that of
    ``url``, the new article's) must tell the story beyond their shared template."""
    return _nearest_stored(profile, url, candidates, feed_id, {})


_Shingled = tuple[tuple[str, ...], frozenset[str]] | None


def _nearest_stored(
    profile: TextProfile,
    url: str,
    candidates: Sequence[Candidate],
    feed_id: int | None,
    shingled: dict[int, _Shingled],
) -> int | None:
    """``nearest_stored``, remembering each candidate's words and shingles in ``shingled``."""
    best: int | None = None
    site = site_of(url) if url and candidates else ""
    for candidate in candidates:
        # Copies of a story share its root: a candidate whose root cannot lower the one found
        # need not be verified (shingling a stored text is most of the lookup's CPU).
        if best is not None and candidate.root >= best:
            continue
        if candidate.id not in shingled:
            words = normalise_words(candidate.text)
            shingled[candidate.id] = (
                (words, shingles(words)) if len(words) >= MIN_WORDS_FOR_TEXT_MATCH else None
            )
        theirs = shingled[candidate.id]
        if theirs is None:
            continue
        same_site = candidate.feed_id == feed_id or (bool(site) and site_of(candidate.url) == site)
        if tells_one_story(profile.words, profile.shingles, *theirs, same_site=same_site):
            best = candidate.root
    return best


def choose_representatives(
    batch: Sequence[Incoming],
    stored: StoredCopies,
    candidates: Sequence[Sequence[Candidate]],
    feed_id: int | None = None,
) -> Decision:
    """Decide which article represents each of one feed's new articles (``feed_id``'s).

    An article copies the stored story with its URL or its text (``stored``), else the earliest
    stored story among its ``candidates`` (ranked, as ``rank_candidates`` ranks them) whose text
    it nearly duplicates, else the first earlier article of the batch with its URL, its text or a
    text it nearly duplicates (of one feed: beyond their template), a stored story's copy first.
    """
    first_by_url: dict[str, int] = {}
    first_by_hash: dict[str, int] = {}
    by_band: dict[int, int | list[int]] = {}  # band key -> the position(s) in the batch holding it
    banded: dict[int, TextProfile] = {}  # position -> its profile, when its band keys are stored
    representatives: list[int | None] = []
    twins: dict[int, int] = {}
    shingled: dict[int, _Shingled] = {}
    duplicates = 0
    for position, item in enumerate(batch):
        key, digest, profile = item.url_key, item.content_hash, item.profile
        representative = stored.representative(item)
        if representative is None and profile is not None and candidates[position]:
            representative = _nearest_stored(profile, item.url, candidates[position], feed_id, shingled)
        if representative is None:
            earlier = first_by_url.get(key)
            if earlier is None and digest:
                earlier = first_by_hash.get(digest)
            if earlier is None and profile is not None:
                earlier = _batch_near_duplicate(profile, by_band, banded, representatives, twins)
            if earlier is not None:
                representative = representatives[earlier]
                if representative is None:
                    twins[position] = twins.get(earlier, earlier)
        exact_copy = digest is not None and (digest in stored.by_hash or digest in first_by_hash)
        first_by_url.setdefault(key, position)
        if digest:
            first_by_hash.setdefault(digest, position)
        if profile is not None and not exact_copy:  # an exact copy's keys are stored already
            banded[position] = profile
            add_band_keys(by_band, profile.band_keys, position)
        representatives.append(representative)
        duplicates += representative is not None or position in twins
    return Decision(representatives, twins, list(banded), duplicates)


def _batch_near_duplicate(
    profile: TextProfile,
    by_band: BandHolders,
    banded: Mapping[int, TextProfile],
    representatives: Sequence[int | None],
    twins: Mapping[int, int],
) -> int | None:
    """Return the position of the earlier article of the batch whose text ``profile`` nearly
    duplicates and whose story came first (a stored representative before a new one). The batch
    is one feed's: the texts must tell the story beyond their shared template."""
    if by_band.keys().isdisjoint(profile.band_keys):  # most articles: nothing to rank
        return None
    best: tuple[int, int, int] | None = None  # (stored? 0 : 1, id or root position, position)
    for position in rank_candidates(profile.band_keys, by_band):
        other = banded[position]
        if not tells_one_story(profile.words, profile.shingles, other.words, other.shingles, same_site=True):
            continue
        representative = representatives[position]
        root = twins.get(position, position)
        order = (0, representative, position) if representative else (1, root, position)
        best = order if best is None else min(best, order)
    return None if best is None else best[2]


# A story's copies as the store reads them: (published, first seen, id).
StoryCopy = tuple[datetime | None, datetime, int]


def story_leads(stories: Mapping[int, Sequence[StoryCopy]]) -> dict[int, int]:
    """Return the stories (by their representative's id) whose earliest published copy
    (``lead_order``) is not their representative, each with that copy's id."""
    moves: dict[int, int] = {}
    for root, copies in stories.items():
        seen = min(first_seen for _, first_seen, _ in copies)
        lead = min(lead_order(published, first, article, seen) for published, first, article in copies)[3]
        if lead != root:
            moves[root] = lead
    return moves
