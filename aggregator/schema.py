"""SQLAlchemy tables. Schema changes go through an Alembic migration in migrations/versions/."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC and always hands back timezone-aware datetimes (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use UTC-aware values")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        stored: datetime = value
        return stored.replace(tzinfo=UTC) if stored.tzinfo is None else stored.astimezone(UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Feed(Base):
    __tablename__ = "feeds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(2048), unique=True)
    title: Mapped[str | None] = mapped_column(Text)
    site_url: Mapped[str | None] = mapped_column(Text)
    etag: Mapped[str | None] = mapped_column(Text)
    last_modified: Mapped[str | None] = mapped_column(Text)
    last_fetch_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    error_kind: Mapped[str | None] = mapped_column(String(32))
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    next_fetch_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Polled instead of url: a feed found by autodiscovery, or a permanent move adopted.
    fetch_url: Mapped[str | None] = mapped_column(Text)
    fetch_url_reason: Mapped[str | None] = mapped_column(String(16))
    # A permanent redirect seen on moved_count polls in a row, adopted at MOVE_AFTER.
    moved_to: Mapped[str | None] = mapped_column(Text)
    moved_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    gone_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    poll_interval: Mapped[float | None] = mapped_column(Float)
    # A recoverable problem of the last successful poll (a malformed but readable feed).
    last_warning: Mapped[str | None] = mapped_column(Text)
    # The service process refreshing it now, until when (several processes share PostgreSQL).
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Article(Base):
    __tablename__ = "articles"
    __table_args__ = (
        UniqueConstraint("feed_id", "entry_key", name="uq_articles_feed_entry"),
        Index("ix_articles_feed_first_seen", "feed_id", "first_seen"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    feed_id: Mapped[int] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"))
    entry_key: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    url_key: Mapped[str] = mapped_column(String(64), index=True)
    # The canonical key of the feed entry's own link (before redirects and rel=canonical), or NULL
    # when it is the article's url_key: most entries' link is, and the index then holds only the
    # links that differ (Store.seen looks in both).
    link_key: Mapped[str | None] = mapped_column(String(64), index=True)
    title: Mapped[str] = mapped_column(Text)
    author: Mapped[str | None] = mapped_column(Text)
    published: Mapped[datetime | None] = mapped_column(UTCDateTime)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    summary: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[str] = mapped_column(Text, default="")
    extraction: Mapped[str] = mapped_column(String(8))
    content_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    duplicate_of: Mapped[int | None] = mapped_column(
        ForeignKey("articles.id", ondelete="SET NULL"), index=True
    )


class ArticleBand(Base):
    """One LSH band key of an article's text (dedup.text_profile): finds near-duplicates by index.

    Kept for every article whose text can be matched, except exact copies of a stored text. The
    primary key (band_key, article_id) is the lookup index; on SQLite the table is WITHOUT ROWID,
    so that index is the whole table. No foreign key and no index by article (migration 0007):
    a merge's half-million sorted keys paid for a check of the article and a random insert into
    that index each, three times the merge's own work. Retention deletes an article's keys by
    computing them again from its text (``Store.delete_old_articles``).
    """

    __tablename__ = "article_bands"
    __table_args__ = ({"sqlite_with_rowid": False},)

    band_key: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    article_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)


class RecentBands(Base):
    """The band keys of a recent article, one row an article, not yet merged into ``article_bands``.

    New keys are written here, 32 to a row, and merged into ``article_bands`` in key order when
    the article ids cross a multiple of ``storage.bands.MERGE_EVERY``. Each process holds these
    rows' keys in memory (``storage.bands.RecentIndex``) and reads only the rows added since it
    last looked: 32 random keys inserted into an index for every article each dirtied a page of
    it, and the commit wrote them all to SQLite's log, while these rows are appended, and a sorted
    merge writes each page of the big index once. No foreign key (its check would scan this table for
    every article deleted): a row whose article is gone is dropped at the merge, and retention
    merges before it deletes.
    """

    __tablename__ = "article_bands_recent"

    article_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    # The article's distinct band keys, signed 64-bit little-endian (storage.bands.pack_keys).
    band_keys: Mapped[bytes] = mapped_column(LargeBinary)


class BandMerges(Base):
    """One row: how many merges of ``article_bands_recent`` there have been.

    A merge (or retention) deletes recent rows; a process whose memory holds their keys sees the
    count move and reads the table afresh (``storage.bands.RecentIndex``).
    """

    __tablename__ = "article_band_merges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    merges: Mapped[int] = mapped_column(BigInteger, default=0)


class DigestRun(Base):
    """One digest email: created with its items before sending, marked sent after."""

    __tablename__ = "digest_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest_name: Mapped[str] = mapped_column(String(200))
    run_key: Mapped[str] = mapped_column(String(300), unique=True)
    message_id: Mapped[str] = mapped_column(String(300))
    # pending | sent | failed | empty (its time came, nothing to send: no email, no items)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    item_count: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # The email's HTML as sent, shown by the archive site (migration 0009; older runs have none).
    html: Mapped[str | None] = mapped_column(Text)


class DigestItem(Base):
    __tablename__ = "digest_items"

    run_id: Mapped[int] = mapped_column(ForeignKey("digest_runs.id", ondelete="CASCADE"), primary_key=True)
    article_id: Mapped[int] = mapped_column(
        ForeignKey("articles.id", ondelete="CASCADE"), primary_key=True, index=True
    )
