"""article_bands_recent: a recent article's band keys in one row, replacing article_bands_staged

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

See ``schema.RecentBands``. The staged keys go into ``article_bands`` first (in key order, those
of deleted articles dropped), so nothing stored before is lost; the new table starts empty.
``article_bands`` loses its foreign key and its index by article (``schema.ArticleBand``): on
SQLite the table is copied, in key order, about a second for a million keys, once.
"""

import struct

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "INSERT INTO article_bands (band_key, article_id) SELECT DISTINCT s.band_key, s.article_id"
        " FROM article_bands_staged s JOIN articles a ON a.id = s.article_id"
        " WHERE NOT EXISTS (SELECT 1 FROM article_bands b"
        " WHERE b.band_key = s.band_key AND b.article_id = s.article_id)"
        " ORDER BY s.band_key, s.article_id"
    )
    op.drop_table("article_bands_staged")
    _rebuild_bands(foreign_key=False)
    op.create_table(
        "article_bands_recent",
        sa.Column("article_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("band_keys", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("article_id", name=op.f("pk_article_bands_recent")),
    )
    merges = op.create_table(
        "article_band_merges",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("merges", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_article_band_merges")),
    )
    op.bulk_insert(merges, [{"id": 1, "merges": 0}])


def downgrade() -> None:
    op.create_table(
        "article_bands_staged",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("band_key", sa.BigInteger(), nullable=False),
        sa.Column("article_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_article_bands_staged")),
    )
    op.create_index(
        op.f("ix_article_bands_staged_band_key"), "article_bands_staged", ["band_key"], unique=False
    )
    # The recent keys go into the staged table, which version 0006 reads and merges.
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT article_id, band_keys FROM article_bands_recent")).all()
    staged = [
        {"band_key": key, "article_id": article_id}
        for article_id, blob in rows
        for key in struct.unpack(f"<{len(blob) // 8}q", bytes(blob))
    ]
    if staged:
        bind.execute(
            sa.text("INSERT INTO article_bands_staged (band_key, article_id) VALUES (:band_key, :article_id)"),
            staged,
        )
    op.drop_table("article_band_merges")
    op.drop_table("article_bands_recent")
    _rebuild_bands(foreign_key=True)


def _rebuild_bands(*, foreign_key: bool) -> None:
    """Give ``article_bands`` its foreign key and index by article (as 0003 made it), or take
    them away; keys of deleted articles are dropped on the way back."""
    if op.get_bind().dialect.name == "postgresql":
        if foreign_key:
            op.execute("DELETE FROM article_bands b WHERE NOT EXISTS (SELECT 1 FROM articles a WHERE a.id = b.article_id)")
            op.create_foreign_key(
                op.f("fk_article_bands_article_id_articles"), "article_bands", "articles", ["article_id"], ["id"], ondelete="CASCADE"
            )
            op.create_index(op.f("ix_article_bands_article_id"), "article_bands", ["article_id"], unique=False)
        else:
            op.drop_index(op.f("ix_article_bands_article_id"), table_name="article_bands")
            op.drop_constraint(op.f("fk_article_bands_article_id_articles"), "article_bands", type_="foreignkey")
        return
    columns: list[sa.schema.SchemaItem] = [
        sa.Column("band_key", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("article_id", sa.Integer(), autoincrement=False, nullable=False),
    ]
    if foreign_key:
        columns.append(
            sa.ForeignKeyConstraint(
                ["article_id"], ["articles.id"], name=op.f("fk_article_bands_article_id_articles"), ondelete="CASCADE"
            )
        )
    op.create_table(
        "article_bands_copy",
        *columns,
        sa.PrimaryKeyConstraint("band_key", "article_id", name=op.f("pk_article_bands")),
        sqlite_with_rowid=False,
    )
    kept = " WHERE EXISTS (SELECT 1 FROM articles a WHERE a.id = b.article_id)" if foreign_key else ""
    op.execute(
        "INSERT INTO article_bands_copy (band_key, article_id) SELECT b.band_key, b.article_id"
        f" FROM article_bands b{kept} ORDER BY b.band_key, b.article_id"
    )
    op.drop_table("article_bands")
    op.rename_table("article_bands_copy", "article_bands")
    if foreign_key:
        op.create_index(op.f("ix_article_bands_article_id"), "article_bands", ["article_id"], unique=False)
