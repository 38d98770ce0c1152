"""band keys under MinHash v2 for every stored article, those stored before 0003 included

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

Band keys of ``dedup.MINHASH_VERSION`` 1 (0003, 0004) are never found by version 2's lookups,
and articles stored before 0003 have none: the old keys are deleted, then ``dedup.text_profile``
of every article (except exact copies of an earlier article's text, whose keys that article
holds, as ``Store`` does for new ones) is stored. In batches by id, so memory stays bounded
whatever the database's size; progress is logged. About 0.3 ms an article on one core: some
5 minutes for a million, once, at the first start of this version. Articles with texts too
short to match (under 50 words) get no keys. A later MINHASH_VERSION needs a migration like
this one.
"""

import logging
import time

import sqlalchemy as sa
from alembic import op

from aggregator.dedup import text_profile

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BATCH = 500
log = logging.getLogger("aggregator.migrations")

_LACKING = """
    FROM articles a
    WHERE NOT EXISTS (SELECT 1 FROM article_bands b WHERE b.article_id = a.id)
      AND NOT EXISTS (
          SELECT 1 FROM articles e WHERE e.content_hash = a.content_hash AND e.id < a.id
      )
"""


def upgrade() -> None:
    bind = op.get_bind()
    bind.execute(sa.text("DELETE FROM article_bands"))
    total = bind.execute(sa.text("SELECT count(*)" + _LACKING)).scalar_one()
    if not total:
        return
    log.info("computing band keys of %d stored articles (near-duplicate detection)", total)
    page = sa.text("SELECT a.id, a.text" + _LACKING + " AND a.id > :after ORDER BY a.id LIMIT :n")
    insert = sa.text("INSERT INTO article_bands (band_key, article_id) VALUES (:band_key, :article_id)")
    after, done, logged = 0, 0, time.monotonic()
    while rows := bind.execute(page, {"after": after, "n": BATCH}).all():
        keys = []
        for article_id, body in rows:
            profile = text_profile(body or "")
            if profile is not None:
                keys += [{"band_key": k, "article_id": article_id} for k in dict.fromkeys(profile.band_keys)]
        if keys:
            bind.execute(insert, keys)
        after, done = rows[-1][0], done + len(rows)
        if time.monotonic() - logged >= 10:
            log.info("band keys: %d of %d articles", done, total)
            logged = time.monotonic()
    log.info("band keys computed for %d articles", done)


def downgrade() -> None:
    pass  # the keys are what 0003's table holds for every new article: nothing to undo
