"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-28
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('digest_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('digest_name', sa.String(length=200), nullable=False),
    sa.Column('run_key', sa.String(length=300), nullable=False),
    sa.Column('message_id', sa.String(length=300), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('item_count', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_digest_runs')),
    sa.UniqueConstraint('run_key', name=op.f('uq_digest_runs_run_key'))
    )
    op.create_table('feeds',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=False),
    sa.Column('title', sa.Text(), nullable=True),
    sa.Column('site_url', sa.Text(), nullable=True),
    sa.Column('etag', sa.Text(), nullable=True),
    sa.Column('last_modified', sa.Text(), nullable=True),
    sa.Column('last_fetch_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_success_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('error_kind', sa.String(length=32), nullable=True),
    sa.Column('consecutive_failures', sa.Integer(), nullable=False),
    sa.Column('next_fetch_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_feeds')),
    sa.UniqueConstraint('url', name=op.f('uq_feeds_url'))
    )
    op.create_table('articles',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('feed_id', sa.Integer(), nullable=False),
    sa.Column('entry_key', sa.String(length=64), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('url_key', sa.String(length=64), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('author', sa.Text(), nullable=True),
    sa.Column('published', sa.DateTime(timezone=True), nullable=True),
    sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('summary', sa.Text(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('html', sa.Text(), nullable=False),
    sa.Column('extraction', sa.String(length=8), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=True),
    sa.Column('duplicate_of', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['duplicate_of'], ['articles.id'], name=op.f('fk_articles_duplicate_of_articles'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['feed_id'], ['feeds.id'], name=op.f('fk_articles_feed_id_feeds'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_articles')),
    sa.UniqueConstraint('feed_id', 'entry_key', name='uq_articles_feed_entry')
    )
    with op.batch_alter_table('articles', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_articles_content_hash'), ['content_hash'], unique=False)
        batch_op.create_index(batch_op.f('ix_articles_duplicate_of'), ['duplicate_of'], unique=False)
        batch_op.create_index('ix_articles_feed_first_seen', ['feed_id', 'first_seen'], unique=False)
        batch_op.create_index(batch_op.f('ix_articles_first_seen'), ['first_seen'], unique=False)
        batch_op.create_index(batch_op.f('ix_articles_url_key'), ['url_key'], unique=False)

    op.create_table('digest_items',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('article_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['article_id'], ['articles.id'], name=op.f('fk_digest_items_article_id_articles'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['digest_runs.id'], name=op.f('fk_digest_items_run_id_digest_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'article_id', name=op.f('pk_digest_items'))
    )
    with op.batch_alter_table('digest_items', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_digest_items_article_id'), ['article_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('digest_items', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_digest_items_article_id'))

    op.drop_table('digest_items')
    with op.batch_alter_table('articles', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_articles_url_key'))
        batch_op.drop_index(batch_op.f('ix_articles_first_seen'))
        batch_op.drop_index('ix_articles_feed_first_seen')
        batch_op.drop_index(batch_op.f('ix_articles_duplicate_of'))
        batch_op.drop_index(batch_op.f('ix_articles_content_hash'))

    op.drop_table('articles')
    op.drop_table('feeds')
    op.drop_table('digest_runs')
