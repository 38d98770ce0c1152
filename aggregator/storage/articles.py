"""Articles: which entries are stored already, the insert of a refresh's new articles (each
pointing at its story's representative), listing, and retention."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, bindparam, delete, exists, func, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased

from aggregator.dedup import (
    Candidate,
    Incoming,
    StoredCopies,
    StoryCopy,
    TextProfile,
    choose_representatives,
    story_leads,
    text_profiles,
    url_key,
)
from aggregator.models import FetchRecord, NewArticle, Seen, StoredArticle
from aggregator.schema import Article, DigestItem, Feed
from aggregator.storage.bands import BandIndex, IndexProbe, add_recent, delete_keys, merge, merge_if_crossed
from aggregator.storage.digests import delivered
from aggregator.storage.feeds import Feeds
from aggregator.storage.sql import DriverQuery, chunks, in_one_value, one_value
from aggregator.storage.writers import Writers

__all__ = [
    "ARTICLE_INSERT",
    "ENTRY_IDS",
    "SEEN_ENTRIES",
    "SEEN_LINKS",
    "STORED_COPIES",
    "Articles",
    "stored_candidates",
]


class Articles:
    """The ``articles`` table; a refresh's insert also writes its feed's row and band keys."""

    def __init__(self, writers: Writers, feeds: Feeds, bands: BandIndex) -> None:
        self._writers = writers
        self._feeds = feeds
        self._bands = bands

    def seen(self, feed_url: str, entry_keys: Iterable[str], link_keys: Iterable[str]) -> Seen:
        """Return which entries and links are stored already, in two queries."""
        entry_keys, link_keys = list(dict.fromkeys(entry_keys)), list(dict.fromkeys(link_keys))
        known_entries: set[str] = set()
        feed_links: set[str] = set()
        any_links: set[str] = set()
        # A Connection, not a Session: these reads need none of the ORM's state.
        with self._writers.engine.connect() as connection:
            for chunk in chunks(entry_keys):
                rows = SEEN_ENTRIES.rows(connection, {"feed_url": feed_url, "keys": chunk})
                known_entries.update(entry for (entry,) in rows)
            for chunk in chunks(link_keys):
                wanted = set(chunk)
                for page_key, link_key, owner in SEEN_LINKS.rows(connection, {"keys": chunk}):
                    for key in (page_key, link_key):
                        if key in wanted:
                            any_links.add(key)
                            if owner == feed_url:
                                feed_links.add(key)
        return Seen(known_entries, feed_links, any_links)

    def store_refresh(
        self, feed_url: str, articles: Sequence[NewArticle], record: FetchRecord
    ) -> tuple[int, int]:
        """Store new articles and the successful fetch in one transaction.

        Returns (articles added, of which duplicates of an article already stored).
        """
        # Shingles and MinHash are CPU work: done before the write transaction, not inside it.
        profiles = text_profiles([a.text for a in articles])
        # So is probing the band index: it changes only at a merge, which the write sees.
        probe = self._bands.probe(profiles)
        with self._writers.writing() as session:
            feed_id = self._feeds.record_fetched(session, feed_url, record)
            added = self.insert(session, feed_id, articles, record.now, profiles, probe)
            if added[1]:
                _lead_with_earliest_published(session.connection(), feed_id, record.now)
            return added

    def insert(
        self,
        session: Session,
        feed_id: int,
        articles: Sequence[NewArticle],
        now: datetime,
        profiles: Sequence[TextProfile | None] | None = None,
        probe: IndexProbe | None = None,
    ) -> tuple[int, int]:
        """Insert, in ``session``'s write transaction, the articles this feed lacks, each pointing
        at the representative of its story if one is stored (``dedup.choose_representatives``);
        return (added, of which duplicates).

        ``profiles``: ``dedup.text_profiles`` of the articles' texts, computed here if not given;
        ``probe``: the band index probed before the transaction (``BandIndex.probe``).
        """
        if not articles:
            return 0, 0
        self._writers.insert_lock(session)
        if profiles is None:
            profiles = text_profiles([a.text for a in articles])
        url_keys = [a.url_key or url_key(a.url) for a in articles]
        keys = set(url_keys)
        hashes = {a.content_hash for a in articles if a.content_hash}
        entry_keys = {a.entry_key for a in articles}
        by_url: dict[str, int] = {}
        by_hash: dict[str, int] = {}
        present: set[str] = set()
        connection = session.connection()
        # One query finds the entries this feed has and the earliest copy of each story.
        rows = STORED_COPIES.rows(
            connection,
            {
                "url_keys": sorted(keys),
                "entry_keys": sorted(entry_keys),
                "feed_id": feed_id,
                "hashes": sorted(hashes),
            },
        )
        for article_id, duplicate_of, key, digest, entry, owner in rows:
            root = duplicate_of or article_id
            if key in keys:
                by_url.setdefault(key, root)
            if digest in hashes:
                by_hash.setdefault(digest, root)
            if owner == feed_id and entry in entry_keys:
                present.add(entry)
        batch: list[NewArticle] = []
        incoming: list[Incoming] = []
        for article, key, profile in zip(articles, url_keys, profiles, strict=True):
            if article.entry_key not in present:
                present.add(article.entry_key)
                batch.append(article)
                incoming.append(Incoming(key, article.content_hash, article.url, profile))
        if not batch:
            return 0, 0
        stored = StoredCopies(by_url, by_hash)
        # Near-duplicate text is looked for only when neither the URL nor the exact text matched.
        unmatched = [item.profile if stored.representative(item) is None else None for item in incoming]
        candidates = stored_candidates(connection, unmatched, self._bands, probe)
        decision = choose_representatives(incoming, stored, candidates, feed_id)
        values = [
            {
                "feed_id": feed_id,
                "entry_key": article.entry_key,
                "url": article.url,
                "url_key": item.url_key,
                # Most entries' link is the article's URL: the index holds only links that differ.
                "link_key": article.link_key if article.link_key != item.url_key else None,
                "title": article.title,
                "author": article.author,
                "published": article.published,
                "first_seen": now,
                "summary": article.summary,
                "text": article.text,
                "html": article.html,
                "extraction": article.extraction,
                "content_hash": article.content_hash,
                "duplicate_of": representative,
            }
            for article, item, representative in zip(batch, incoming, decision.representatives, strict=True)
        ]
        # On the driver (DriverQuery), through executemany: the ORM's bulk path, and Core's
        # processing of each row's parameters, cost more than the insert itself here.
        ARTICLE_INSERT.execute_many(connection, values)
        if not decision.twins and not decision.banded:
            return len(values), decision.duplicates
        # The ids by the (feed, entry) key that is unique: one query, where INSERT … RETURNING
        # with the rows' order kept runs one statement per row on SQLite.
        keyed = dict(
            ENTRY_IDS.rows(connection, {"feed_id": feed_id, "entry_keys": [v["entry_key"] for v in values]})
        )
        ids = [keyed[v["entry_key"]] for v in values]
        copies: dict[int, list[int]] = {}
        for position, twin in decision.twins.items():
            copies.setdefault(twin, []).append(ids[position])
        for twin, copy_ids in copies.items():
            session.execute(update(Article).where(Article.id.in_(copy_ids)).values(duplicate_of=ids[twin]))
        add_recent(connection, [(ids[p], _band_keys(incoming[p])) for p in decision.banded])
        merge_if_crossed(connection, ids[0], ids[-1])
        return len(values), decision.duplicates

    def matching(
        self,
        session: Session,
        *where: ColumnElement[bool],
        order_by: Sequence[ColumnElement[Any] | InstrumentedAttribute[Any]] = (),
        limit: int | None = None,
    ) -> list[StoredArticle]:
        """Return the stored articles meeting ``where`` (with their feed), in ``order_by``."""
        query = (
            select(Article, Feed.url, Feed.title)
            .join(Feed, Feed.id == Article.feed_id)
            .where(*where)
            .order_by(*order_by)
        )
        if limit is not None:
            query = query.limit(limit)
        return [_to_stored(article, feed_url, title) for article, feed_url, title in session.execute(query)]

    def story_of(self, article_id: int) -> list[StoredArticle]:
        """The article ``article_id`` and every copy of its story (empty when there is no such
        article), earliest stored first."""
        with self._writers.session() as session:
            root = session.scalar(
                select(func.coalesce(Article.duplicate_of, Article.id)).where(Article.id == article_id)
            )
            if root is None:
                return []
            return self.matching(
                session, or_(Article.id == root, Article.duplicate_of == root), order_by=(Article.id,)
            )

    def newest(
        self, *, since: datetime | None = None, feed_url: str | None = None, limit: int | None = None
    ) -> list[StoredArticle]:
        """Return stored articles, newest published first (an undated one by when first seen),
        ``since`` by that same time."""
        shown = func.coalesce(Article.published, Article.first_seen)
        where: list[ColumnElement[bool]] = []
        if since is not None:
            where.append(shown >= since)
        if feed_url is not None:
            where.append(Feed.url == feed_url)
        with self._writers.session() as session:
            return self.matching(session, *where, order_by=(shown.desc(), Article.id.desc()), limit=limit)

    def delete_old(self, before: datetime, digest_names: Sequence[str]) -> int:
        """Delete articles first seen before ``before``; return how many.

        Kept: articles still waiting for one of the digests (no delivered run of it covers
        them), and the representatives of copies that are kept (a deleted representative would
        make a copy look like a new story).
        """
        kept_copy = aliased(Article)
        doomed = (
            select(Article.id)
            .where(Article.first_seen < before)
            .where(*(Article.id.in_(delivered(name)) for name in digest_names))
            .where(
                ~exists(
                    select(kept_copy.id).where(
                        kept_copy.duplicate_of == Article.id, kept_copy.first_seen >= before
                    )
                )
            )
        )
        with self._writers.writing() as session:
            connection = session.connection()
            merge(connection)  # so that every band key is in the index, to be deleted
            ids = list(session.scalars(doomed))
            for numbers in chunks(ids):
                # Copies of a deleted representative that are deleted too go in the same
                # statement.
                session.execute(
                    update(Article).where(Article.duplicate_of.in_(numbers)).values(duplicate_of=None)
                )
                session.execute(delete(DigestItem).where(DigestItem.article_id.in_(numbers)))
                delete_keys(connection, numbers)
                session.execute(delete(Article).where(Article.id.in_(numbers)))
        return len(ids)


def stored_candidates(
    connection: Connection,
    profiles: Sequence[TextProfile | None],
    bands: BandIndex,
    probe: IndexProbe | None = None,
) -> list[list[Candidate]]:
    """Return, for each profile, the stored articles sharing its band keys (``BandIndex.candidates``,
    ranked), with their texts, read in one query, for ``dedup`` to verify."""
    ranked = bands.candidates(connection, profiles, probe)
    ids = sorted({candidate for each in ranked for candidate in each})
    if not ids:
        return [[] for _ in ranked]
    postgresql = connection.dialect.name == "postgresql"
    stored = {
        article_id: Candidate(article_id, duplicate_of or article_id, owner, url, body)
        for article_id, duplicate_of, body, owner, url in connection.execute(
            _CANDIDATE_TEXTS[postgresql], {"ids": one_value(ids, postgresql)}
        )
    }
    return [[stored[c] for c in each if c in stored] for each in ranked]


def _band_keys(item: Incoming) -> Sequence[int]:
    assert item.profile is not None  # banded: it has a profile
    return item.profile.band_keys


def _lead_with_earliest_published(connection: Connection, feed_id: int, now: datetime) -> None:
    """Make the earliest published copy (``dedup.story_leads``) the representative of each story
    that this feed's copies stored at ``now`` joined: the other copies point at it.

    A story that a digest run has included (sent or about to be) keeps its representative: the
    late copy is covered by it and never sent, and the digest's record stays true. Core
    statements, all stories' moves in two executemany calls: the ORM's bulk UPDATE cost more
    than the moves.
    """
    joined = select(Article.duplicate_of).where(
        Article.feed_id == feed_id, Article.first_seen == now, Article.duplicate_of.is_not(None)
    )
    roots = sorted({root for root in connection.scalars(joined) if root is not None})
    stories: dict[int, list[StoryCopy]] = {}
    for chunk in chunks(roots):
        rows = connection.execute(
            select(Article.id, Article.duplicate_of, Article.published, Article.first_seen).where(
                or_(Article.id.in_(chunk), Article.duplicate_of.in_(chunk))
            )
        )
        for article_id, duplicate_of, published, first_seen in rows:
            stories.setdefault(duplicate_of or article_id, []).append((published, first_seen, article_id))
    moves = story_leads(stories)
    if not moves:
        return
    moved_ids = [article_id for root in moves for _, _, article_id in stories[root]]
    included: set[int] = set()
    for chunk in chunks(moved_ids):
        included.update(
            connection.scalars(delivered(pending_too=True).where(DigestItem.article_id.in_(chunk)))
        )
    # Each story's copies are its own (stories is keyed by story), so the moves are independent.
    leads = [
        {"root": root, "lead": lead}
        for root, lead in moves.items()
        if not any(article_id in included for _, _, article_id in stories[root])
    ]
    if leads:
        connection.execute(_POINT_AT_LEAD, leads)
        connection.execute(_LEAD_STANDS_ALONE, leads)


def _to_stored(article: Article, feed_url: str, feed_title: str | None) -> StoredArticle:
    return StoredArticle(
        id=article.id,
        feed_url=feed_url,
        feed_name=feed_title or "",  # the feed's own title; config.feed_label names it
        url=article.url,
        title=article.title,
        author=article.author,
        published=article.published,
        first_seen=article.first_seen,
        summary=article.summary,
        text=article.text,
        html=article.html,
        extraction=article.extraction,
        duplicate_of=article.duplicate_of,
    )


# The statements a refresh runs for every feed, built once with their values as bound parameters
# and run on the driver (DriverQuery): building a statement costs more CPU than running it.
# Public for the test that checks them against Core.
SEEN_ENTRIES = DriverQuery(
    select(Article.entry_key)
    .join(Feed, Feed.id == Article.feed_id)
    .where(Feed.url == bindparam("feed_url"), Article.entry_key.in_(bindparam("keys", expanding=True)))
)
SEEN_LINKS = DriverQuery(
    select(Article.url_key, Article.link_key, Feed.url)
    .join(Feed, Feed.id == Article.feed_id)
    .where(
        or_(
            Article.url_key.in_(bindparam("keys", expanding=True)),
            Article.link_key.in_(bindparam("keys", expanding=True)),
        )
    )
)
STORED_COPIES = DriverQuery(
    select(
        Article.id,
        Article.duplicate_of,
        Article.url_key,
        Article.content_hash,
        Article.entry_key,
        Article.feed_id,
    )
    .where(
        or_(
            Article.url_key.in_(bindparam("url_keys", expanding=True)),
            Article.entry_key.in_(bindparam("entry_keys", expanding=True))
            & (Article.feed_id == bindparam("feed_id")),
            Article.content_hash.in_(bindparam("hashes", expanding=True)),
        )
    )
    .order_by(Article.id)
)
ENTRY_IDS = DriverQuery(
    select(Article.entry_key, Article.id).where(
        Article.feed_id == bindparam("feed_id"),
        Article.entry_key.in_(bindparam("entry_keys", expanding=True)),
    )
)
_articles = cast(Table, Article.__table__)
ARTICLE_INSERT = DriverQuery(_articles.insert())
# The feed and URL tell whether a candidate is of the new article's site (dedup.tells_one_story).
_CANDIDATE_TEXTS = {
    postgresql: select(Article.id, Article.duplicate_of, Article.text, Article.feed_id, Article.url).where(
        in_one_value(Article.id, "ids", postgresql)
    )
    for postgresql in (False, True)
}
# A story's new representative: the story's copies, and its old representative, point at :lead,
# which stands alone.
_POINT_AT_LEAD = (
    update(_articles)
    .where(
        or_(_articles.c.id == bindparam("root"), _articles.c.duplicate_of == bindparam("root")),
        _articles.c.id != bindparam("lead"),
    )
    .values(duplicate_of=bindparam("lead"))
)
_LEAD_STANDS_ALONE = update(_articles).where(_articles.c.id == bindparam("lead")).values(duplicate_of=None)
