"""Deliver a digest once: record the run with its items, hand the email over, then mark it sent."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path

from aggregator.config import DigestSettings, Settings, SmtpSettings
from aggregator.digest import Digest, build_digest, compose
from aggregator.errors import DeliveryError
from aggregator.logs import fields
from aggregator.mailer import send_smtp, write_outbox
from aggregator.storage import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    digest: Digest | None
    destination: str  # "smtp host:port", an outbox file path, or "" when nothing was sent
    # A run recorded earlier but not delivered then (an outage), delivered first this time.
    pending: Digest | None = None
    pending_destination: str = ""
    # Nothing was done because another process sends, or sent, this digest.
    elsewhere: bool = False


def prepare_digest(
    store: Store,
    settings: Settings,
    now: datetime,
    since: datetime | None = None,
    digest: DigestSettings | None = None,
) -> Digest | None:
    """Return the digest of every article this digest has not delivered yet, or None."""
    digest = digest or settings.all_digests[0]
    articles = store.unsent_articles(digest.name, since=since)
    roots = {a.duplicate_of for a in articles if a.duplicate_of is not None}
    already_sent = store.sent_article_ids(digest.name, roots)
    return build_digest(articles, already_sent, settings.feeds, digest, now, settings.service.public_url)


def send_digest(
    store: Store,
    settings: Settings,
    now: datetime,
    since: datetime | None = None,
    sleep: Callable[[float], None] = time.sleep,
    digest: DigestSettings | None = None,
    slot: datetime | None = None,
) -> DeliveryReport:
    """Build and deliver one digest (the first configured by default); its articles count as
    sent only once delivery succeeded.

    ``slot``: the scheduled send time this delivery is for; nothing is sent when a run of
    this digest was delivered at or after it (another process sharing the database sent it).

    A run recorded earlier but never delivered (an outage, or a crash between the server's
    acceptance and our bookkeeping) goes first, rebuilt from its own articles with its own
    run key, hence the same Message-ID: never a different digest carrying the same items.
    """
    config = digest or settings.all_digests[0]
    with store.digest_lock(config.name) as mine:
        if not mine:
            log.info("digest being sent by another process", extra=fields(digest=config.name))
            return DeliveryReport(None, "", elsewhere=True)
        if slot is not None:
            # Checked under the lock: a process whose job fires after another's delivery
            # must not send what arrived since as a second digest for the same time.
            last_sent = store.last_digest_sent(config.name)
            if last_sent is not None and last_sent >= slot:
                log.info(
                    "digest=%s already sent for %s by another process", config.name, f"{slot:%Y-%m-%d %H:%M}"
                )
                return DeliveryReport(None, "", elsewhere=True)
        return _send_locked(store, settings, now, since, sleep, config)


def _send_locked(
    store: Store,
    settings: Settings,
    now: datetime,
    since: datetime | None,
    sleep: Callable[[float], None],
    config: DigestSettings,
) -> DeliveryReport:
    pending = store.pending_digest_run(config.name)
    delivered: Digest | None = None
    delivered_to = ""
    if pending is not None and pending.articles:
        public = settings.service.public_url
        again = build_digest(pending.articles, set(), settings.feeds, config, pending.created_at, public)
        if again is not None:
            log.info(
                "delivering a digest run held back first",
                extra=fields(digest=config.name, run=pending.run_key),
            )
            delivered = replace(again, run_key=pending.run_key)
            delivered_to = _deliver(store, settings, delivered, config, now, sleep)
    built = prepare_digest(store, settings, now, since, config)
    if built is None:
        log.info("digest has nothing new to send", extra=fields(digest=config.name))
        return DeliveryReport(None, "", delivered, delivered_to)
    destination = _deliver(store, settings, built, config, now, sleep)
    return DeliveryReport(built, destination, delivered, delivered_to)


def _deliver(
    store: Store,
    settings: Settings,
    built: Digest,
    config: DigestSettings,
    now: datetime,
    sleep: Callable[[float], None],
) -> str:
    """Record the run with its items, hand the email over, mark it sent; return where it went.

    The run covers what the email shows; the stories only counted in it ("and N more") stay
    unsent, for the next digest.
    """
    built, message = compose(built, config, now)
    html = message.get_body(("html",))
    run_id = store.begin_digest_run(
        built.name,
        built.run_key,
        str(message["Message-ID"]),
        built.article_ids,
        now,
        html=html.get_content() if html is not None else None,
    )
    try:
        if settings.smtp is not None:
            _send_with_retries(message, settings.smtp, sleep)
            destination = f"smtp {settings.smtp.host}:{settings.smtp.port}"
        else:
            path = write_outbox(message, Path(settings.outbox_dir), _file_name(built, now))
            destination = str(path)
    except DeliveryError as exc:
        # Temporary: the run stays pending, its articles unsent, for the next attempt.
        # Permanent: recorded as failed; the articles stay unsent for the next run.
        if not exc.temporary:
            store.fail_digest_run(run_id, str(exc))
        else:
            store.note_digest_error(run_id, str(exc))
        raise
    store.finish_digest_run(run_id, now)
    log.info("digest sent", extra=fields(digest=built.name, stories=built.count, to=destination))
    return destination


def _send_with_retries(message: EmailMessage, smtp: SmtpSettings, sleep: Callable[[float], None]) -> None:
    wait = smtp.retry_wait.total_seconds()
    for attempt in range(smtp.retries + 1):
        try:
            send_smtp(message, smtp)
            return
        except DeliveryError as exc:
            if not exc.temporary or attempt == smtp.retries:
                raise
            log.warning("digest delivery failed, retrying in %.0fs: %s", wait, exc)
            sleep(wait)
            wait *= 2


def _file_name(digest: Digest, now: datetime) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", digest.name.lower()).strip("-") or "digest"
    return f"{now:%Y%m%dT%H%M%SZ}-{slug}-{digest.run_key.rsplit(':', 1)[-1][:8]}"
