"""feed polling state (discovered/moved URL, 410 Gone, poll interval); entry link key

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feeds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fetch_url", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("fetch_url_reason", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("moved_to", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("moved_count", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("gone_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("poll_interval", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("last_warning", sa.Text(), nullable=True))
    with op.batch_alter_table("articles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("link_key", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_articles_link_key"), ["link_key"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("articles", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_articles_link_key"))
        batch_op.drop_column("link_key")
    with op.batch_alter_table("feeds", schema=None) as batch_op:
        for column in ("last_warning", "poll_interval", "gone_at", "moved_count", "moved_to",
                       "fetch_url_reason", "fetch_url"):
            batch_op.drop_column(column)
