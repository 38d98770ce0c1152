"""band keys under MinHash v3 for every stored article

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

``dedup.MINHASH_VERSION`` 3 hashes shingles from their words' hashes: version 2's keys are never
found by its lookups. The stored keys are deleted and ``dedup.text_profiles`` of every article
(except exact copies of an earlier article's text, whose keys that article holds, as ``Store``
does for new ones) goes into ``article_bands`` in batches by id, so memory stays bounded;
progress is logged. About 0.1 ms an article: a couple of minutes for a million, once, at the
first start of this version. (A store older than 0005 gets its keys computed twice on the way.)
"""

import logging
import time

import sqlalchemy as sa
from alembic import op

from aggregator.dedup import text_profiles

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BATCH = 2000
log = logging.getLogger("aggregator.migrations")

_KEYED = """
    FROM articles a
    WHERE NOT EXISTS (
        SELECT 1 FROM articles e WHERE e.content_hash = a.content_hash AND e.id < a.id
    )
"""


def upgrade() -> None:
    bind = op.get_bind()
    bind.execute(sa.text("DELETE FROM article_bands"))
    bind.execute(sa.text("DELETE FROM article_bands_recent"))
    # Processes that held the recent keys in memory read the table afresh (storage.bands.RecentIndex).
    bind.execute(sa.text("UPDATE article_band_merges SET merges = merges + 1"))
    total = bind.execute(sa.text("SELECT count(*)" + _KEYED)).scalar_one()
    if not total:
        return
    log.info("computing band keys of %d stored articles (near-duplicate detection, MinHash v3)", total)
    page = sa.text("SELECT a.id, a.text" + _KEYED + " AND a.id > :after ORDER BY a.id LIMIT :n")
    marker = "?" if bind.dialect.paramstyle == "qmark" else "%s"
    insert = f"INSERT INTO article_bands (band_key, article_id) VALUES ({marker}, {marker})"
    after, done, logged = 0, 0, time.monotonic()
    while rows := bind.execute(page, {"after": after, "n": BATCH}).all():
        profiles = text_profiles([body or "" for _, body in rows])
        keys = sorted(
            (key, article_id)
            for (article_id, _), profile in zip(rows, profiles, strict=True)
            if profile is not None
            for key in dict.fromkeys(profile.band_keys)
        )
        if keys:
            bind.exec_driver_sql(insert, keys)  # tuples to the driver: 32 rows an article
        after, done = rows[-1][0], done + len(rows)
        if time.monotonic() - logged >= 10:
            log.info("band keys: %d of %d articles", done, total)
            logged = time.monotonic()
    log.info("band keys computed for %d articles", done)


def downgrade() -> None:
    pass  # version 2's code finds none of these keys; upgrading again computes them afresh
