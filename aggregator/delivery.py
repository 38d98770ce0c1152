"""Deliver a digest once: record the run with its items, hand the email over, then mark it sent."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from aggregator.config import Settings
from aggregator.digest import Digest, build_digest, render_message
from aggregator.errors import DeliveryError
from aggregator.mailer import send_smtp, write_outbox
from aggregator.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    digest: Digest | None
    destination: str  # "smtp host:port", an outbox file path, or "" when nothing was sent


def prepare_digest(
    store: Store, settings: Settings, now: datetime, since: datetime | None = None
) -> Digest | None:
    """Return the digest of every article this digest has not delivered yet, or None."""
    name = settings.digest.name
    articles = store.unsent_articles(name, since=since)
    roots = {a.duplicate_of for a in articles if a.duplicate_of is not None}
    already_sent = store.sent_article_ids(name, roots)
    return build_digest(articles, already_sent, settings.feeds, settings.digest, now)


def send_digest(
    store: Store, settings: Settings, now: datetime, since: datetime | None = None
) -> DeliveryReport:
    """Build and deliver the digest; articles count as sent only once delivery succeeded."""
    digest = prepare_digest(store, settings, now, since)
    if digest is None:
        log.info("digest=%s nothing new to send", settings.digest.name)
        return DeliveryReport(None, "")
    message = render_message(digest, settings.digest, now)
    run_id = store.begin_digest_run(
        digest.name, digest.run_key, str(message["Message-ID"]), digest.article_ids, now
    )
    try:
        if settings.smtp is not None:
            send_smtp(message, settings.smtp)
            destination = f"smtp {settings.smtp.host}:{settings.smtp.port}"
        else:
            path = write_outbox(message, Path(settings.outbox_dir), _file_name(digest, now))
            destination = str(path)
    except DeliveryError as exc:
        store.fail_digest_run(run_id, str(exc))
        raise
    store.finish_digest_run(run_id, now)
    log.info("digest=%s sent items=%d to=%s", digest.name, digest.count, destination)
    return DeliveryReport(digest, destination)


def _file_name(digest: Digest, now: datetime) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", digest.name.lower()).strip("-") or "digest"
    return f"{now:%Y%m%dT%H%M%SZ}-{slug}-{digest.run_key.rsplit(':', 1)[-1][:8]}"
