"""Digest runs: each email recorded with its items before it leaves, marked when delivered, and
the lock that lets one process send each digest."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Select, exists, func, select

from aggregator.errors import StorageError
from aggregator.models import PendingRun, SentRun, StoredArticle
from aggregator.schema import Article, DigestItem, DigestRun
from aggregator.storage.feeds import stored_message
from aggregator.storage.writers import Writers

if TYPE_CHECKING:
    from aggregator.storage.articles import Articles

__all__ = ["Digests", "delivered"]


def delivered(digest_name: str | None = None, *, pending_too: bool = False) -> Select[int]:
    """The ids of the articles a delivered run of ``digest_name`` (of any digest: None) included;
    with ``pending_too``, a run recorded and being delivered counts too."""
    query = select(DigestItem.article_id).join(DigestRun, DigestRun.id == DigestItem.run_id)
    if digest_name is not None:
        query = query.where(DigestRun.digest_name == digest_name)
    if pending_too:
        return query.where(DigestRun.status.in_(("sent", "pending")))
    return query.where(DigestRun.status == "sent")


def _sent(run: DigestRun) -> SentRun:
    assert run.sent_at is not None
    return SentRun(run.id, run.digest_name, run.run_key, run.sent_at, run.item_count, run.html is not None)


class Digests:
    """The ``digest_runs`` and ``digest_items`` tables; the articles are read through ``articles``."""

    def __init__(self, writers: Writers, articles: Articles) -> None:
        self._writers = writers
        self._articles = articles

    def unsent_articles(self, digest_name: str, *, since: datetime | None = None) -> list[StoredArticle]:
        """Return articles no delivered run of this digest included, oldest first."""
        where = [~exists(delivered(digest_name).where(DigestItem.article_id == Article.id))]
        if since is not None:
            where.append(Article.first_seen >= since)
        with self._writers.session() as session:
            return self._articles.matching(session, *where, order_by=(Article.first_seen, Article.id))

    def sent_article_ids(self, digest_name: str, ids: Iterable[int]) -> set[int]:
        """Return which of ``ids`` a delivered run of this digest already included."""
        ids = list(ids)
        if not ids:
            return set()
        with self._writers.session() as session:
            return set(session.scalars(delivered(digest_name).where(DigestItem.article_id.in_(ids))))

    def begin_run(
        self,
        digest_name: str,
        run_key: str,
        message_id: str,
        article_ids: Sequence[int],
        now: datetime,
        html: str | None = None,
    ) -> int:
        """Record a run about to be delivered with its items (and the email's HTML, which the
        archive site shows); reuse a pending run of the same key. Raise StorageError if that run
        was delivered already."""
        with self._writers.writing() as session:
            run = session.scalar(select(DigestRun).where(DigestRun.run_key == run_key))
            if run is None:
                run = DigestRun(
                    digest_name=digest_name,
                    run_key=run_key,
                    message_id=message_id,
                    status="pending",
                    created_at=now,
                )
                session.add(run)
                session.flush()
            elif run.status == "sent":
                raise StorageError(f"digest run {run_key} was already delivered")
            session.query(DigestItem).filter(DigestItem.run_id == run.id).delete()
            session.add_all(DigestItem(run_id=run.id, article_id=i) for i in set(article_ids))
            run.status, run.item_count, run.error = "pending", len(set(article_ids)), None
            if html is not None:
                run.html = html
            return run.id

    def sent_runs(self, limit: int = 100, before: int | None = None) -> list[SentRun]:
        """The delivered runs, newest first (``before``: older than that run id)."""
        query = select(DigestRun).where(DigestRun.status == "sent")
        if before is not None:
            query = query.where(DigestRun.id < before)
        with self._writers.session() as session:
            runs = session.scalars(query.order_by(DigestRun.id.desc()).limit(limit)).all()
            return [_sent(run) for run in runs]

    def sent_run(self, key: int | str) -> tuple[SentRun, str | None] | None:
        """A delivered run, by id or by run key, and the HTML it was sent with (None for a run
        sent before the HTML was kept)."""
        where = DigestRun.id == key if isinstance(key, int) else DigestRun.run_key == key
        with self._writers.session() as session:
            run = session.scalar(select(DigestRun).where(where, DigestRun.status == "sent"))
            return None if run is None else (_sent(run), run.html)

    def finish_run(self, run_id: int, now: datetime) -> None:
        """Mark a run delivered: its articles count as sent."""
        with self._writers.writing() as session:
            run = session.get(DigestRun, run_id)
            if run is not None:
                run.status, run.sent_at = "sent", now

    def fail_run(self, run_id: int, error: str) -> None:
        """Mark a run failed for good: its articles wait for the next run."""
        with self._writers.writing() as session:
            run = session.get(DigestRun, run_id)
            if run is not None:
                run.status, run.error = "failed", stored_message(error)

    def note_error(self, run_id: int, error: str) -> None:
        """Record a temporary delivery failure; the run stays pending."""
        with self._writers.writing() as session:
            run = session.get(DigestRun, run_id)
            if run is not None:
                run.error = stored_message(error)

    def note_checked(self, digest_name: str, now: datetime) -> None:
        """Record that this digest's scheduled time came and found nothing to send (a run with
        status "empty" and no items): a restart then knows the time was not missed."""
        with self._writers.writing() as session:
            session.add(
                DigestRun(
                    digest_name=digest_name,
                    run_key=f"{digest_name}:checked:{now.isoformat()}:{os.getpid()}"[:300],
                    message_id="",
                    status="empty",
                    created_at=now,
                    sent_at=now,
                    item_count=0,
                )
            )

    def pending_run(self, digest_name: str) -> PendingRun | None:
        """Return the newest run of this digest recorded but never delivered (a crash or an
        outage in between), with its articles, or None."""
        with self._writers.session() as session:
            run = session.scalars(
                select(DigestRun)
                .where(DigestRun.digest_name == digest_name, DigestRun.status == "pending")
                .order_by(DigestRun.id.desc())
                .limit(1)
            ).first()
            if run is None:
                return None
            ids = list(session.scalars(select(DigestItem.article_id).where(DigestItem.run_id == run.id)))
            articles = self._articles.matching(session, Article.id.in_(ids))
        return PendingRun(run.id, run.run_key, run.created_at, articles)

    def last_failure(self, digest_name: str) -> tuple[datetime, str] | None:
        """Return when and why the newest undelivered run of this digest failed, if it did."""
        with self._writers.session() as session:
            run = session.scalars(
                select(DigestRun)
                .where(DigestRun.digest_name == digest_name)
                .order_by(DigestRun.id.desc())
                .limit(1)
            ).first()
        if run is None or run.status == "sent" or not run.error:
            return None
        return run.created_at, run.error

    def last_handled(self, digest_name: str) -> datetime | None:
        """When this digest last went out, or last found nothing to send at its time."""
        with self._writers.session() as session:
            return session.scalar(
                select(func.max(DigestRun.sent_at)).where(
                    DigestRun.digest_name == digest_name, DigestRun.status.in_(("sent", "empty"))
                )
            )

    def last_sent(self, digest_name: str) -> datetime | None:
        """When this digest last went out, or None."""
        with self._writers.session() as session:
            return session.scalar(
                select(func.max(DigestRun.sent_at)).where(
                    DigestRun.digest_name == digest_name, DigestRun.status == "sent"
                )
            )

    @contextmanager
    def send_lock(self, digest_name: str) -> Iterator[bool]:
        """Hold the right to send this digest; yields False when another process holds it, so
        that however many `aggregator run` processes share a PostgreSQL database, one sends
        each digest."""
        with self._writers.advisory_lock(f"digest:{digest_name}") as mine:
            yield mine
