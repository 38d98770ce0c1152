"""article_bands_staged: band keys of recent articles, merged into article_bands in key order

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

See ``schema.StagedBand``. The table starts empty; nothing stored before is touched.
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
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


def downgrade() -> None:
    # The staged keys go into the index first, so that nothing is lost by going back.
    op.execute(
        "INSERT INTO article_bands (band_key, article_id) SELECT DISTINCT s.band_key, s.article_id"
        " FROM article_bands_staged s JOIN articles a ON a.id = s.article_id"
        " ORDER BY s.band_key, s.article_id"
    )
    op.drop_table("article_bands_staged")
