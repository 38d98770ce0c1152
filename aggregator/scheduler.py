"""The background service: refresh feeds when due, send the digest at its time, stop cleanly.

Time maths is pure (``last_slot``, ``missed_digest``) and takes the clock as an argument; the
``Service`` wires it to APScheduler's asyncio scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import time as time_module
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import IO
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from aggregator import metrics, ops
from aggregator.config import DigestSettings, Settings, load_settings
from aggregator.database import normalise_url
from aggregator.delivery import send_digest
from aggregator.errors import AggregatorError, ConfigError, DeliveryError, StorageError
from aggregator.fetcher import Fetcher
from aggregator.logs import fields
from aggregator.models import RefreshOutcome
from aggregator.pipeline import Pipeline
from aggregator.storage import Store

log = logging.getLogger(__name__)

# A digest whose latest send time passed while the service was down is sent once at start-up;
# longer than a week, so that a weekly digest is caught up too.
CATCH_UP = timedelta(days=8)
# How often the config files are checked for edits.
RELOAD_EVERY = 2.0
# A digest that failed for a temporary reason is tried again after 5 min, 10 min, ... 1 h.
DIGEST_RETRY_FIRST = timedelta(minutes=5)
DIGEST_RETRY_MAX = timedelta(hours=1)


def last_slot(now: datetime, send_at: time, zone: ZoneInfo, weekday: int | None = None) -> datetime:
    """Return the latest scheduled send time at or before ``now`` (aware, in UTC).

    ``weekday`` (0 = Monday) for a weekly digest; None for a daily one.
    """
    local = now.astimezone(zone)
    day = local.date()
    for _ in range(8):  # bounded: a weekly slot is at most seven days back
        slot = datetime.combine(day, send_at, tzinfo=zone)
        if slot <= local and (weekday is None or day.weekday() == weekday):
            return slot.astimezone(UTC)
        day -= timedelta(days=1)
    raise AssertionError("unreachable: a slot lies within the last eight days")


def missed_digest(
    now: datetime,
    send_at: time,
    zone: ZoneInfo,
    last_sent: datetime | None,
    weekday: int | None = None,
    running_since: datetime | None = None,
) -> bool:
    """Return True when the latest send time passed recently without the digest being handled
    (sent, or found empty) at it, after the service first ran (``running_since``: a service
    installed after the send time missed nothing; None when that is not known)."""
    slot = last_slot(now, send_at, zone, weekday)
    if now - slot > CATCH_UP:
        return False
    if running_since is None or running_since > slot:
        return False
    return last_sent is None or last_sent < slot


class Service:
    """`aggregator run`: APScheduler jobs over one Store, one Fetcher and one Pipeline."""

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], datetime] | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self._config_stamp = _stamp(settings)
        self.clock = clock or (lambda: datetime.now(UTC))
        self._refreshing: asyncio.Future[list[RefreshOutcome]] | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    def _is_dead_owner(self, owner: str) -> bool:
        """True for a claim of a process of this host that no longer runs (e.g. killed -9).

        Asked at start-up only, before this process claims anything: a claim under our own
        name is a predecessor's that had our pid, as a restarted container's PID 1 does.
        """
        host, _, pid = owner.rpartition(":")
        if host != socket.gethostname() or not pid.isdigit():
            return False
        if owner == self._owner:
            return True
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    async def run(self) -> None:
        """Run until ``stop()`` (or SIGTERM/SIGINT); raise AggregatorError if it cannot start."""
        with _single_process_guard(self.settings.database_url):
            store = await asyncio.to_thread(Store.open, self.settings.database_url)
            try:
                async with Fetcher(self.settings.fetch) as fetcher:
                    pipeline = Pipeline(self.settings, store, fetcher, clock=self.clock)
                    try:
                        await self._serve(store, pipeline)
                    finally:
                        pipeline.close()
            finally:
                store.close()

    async def _serve(self, store: Store, pipeline: Pipeline) -> None:
        settings = self.settings
        log.info(
            "service starting",
            extra=fields(
                feeds=len(settings.feeds),
                digests="; ".join(f"{d.name} {d.schedule_label}" for d in settings.all_digests),
                database=_safe_db(settings.database_url),
            ),
        )
        released = await asyncio.to_thread(store.release_claims, self._is_dead_owner)
        if released:
            log.info("released %d feeds claimed by a process that is gone", released)
        running_since = await asyncio.to_thread(store.first_feed_added)
        for digest in settings.all_digests:
            handled = await asyncio.to_thread(store.last_digest_handled, digest.name)
            if missed_digest(
                self.clock(), digest.send_at, digest.zone, handled, digest.weekday, running_since
            ):
                log.info("sending the %s digest missed while the service was down", digest.name)
                await self._digest_job(store, digest.name)
        scheduler = AsyncIOScheduler(timezone=UTC)
        self._scheduler = scheduler
        scheduler.add_job(
            self._refresh_job,
            "interval",
            args=[store, pipeline],
            seconds=settings.service.check_every.total_seconds(),
            next_run_time=datetime.now(UTC),
            # Two: while a pass runs, the next tick starts and returns at once (_refresh_job),
            # where one instance made APScheduler warn "skipped" on every tick of a long pass.
            max_instances=2,
            coalesce=True,
            misfire_grace_time=None,  # late because the loop was busy is still on time
            id="refresh",
        )
        self._schedule_digests(scheduler, store)
        scheduler.add_job(
            self._heartbeat,
            "interval",
            seconds=15,
            next_run_time=datetime.now(UTC),
            misfire_grace_time=None,
            coalesce=True,
            id="heartbeat",
        )
        if store.shared:
            # Leases of feeds still being refreshed are renewed well before they end; a process
            # that dies stops renewing, and its feeds go to another at the end of the lease.
            scheduler.add_job(
                self._renew_claims,
                "interval",
                args=[store],
                seconds=max(1.0, settings.service.lease.total_seconds() / 3),
                misfire_grace_time=None,
                coalesce=True,
                id="renew-claims",
            )
        scheduler.add_job(
            self._retention_job,
            "interval",
            args=[store],
            hours=6,
            next_run_time=datetime.now(UTC) + timedelta(minutes=5),
            id="retention",
        )
        if self.config_path is not None:
            scheduler.add_job(
                self._reload_job,
                "interval",
                args=[pipeline],
                seconds=RELOAD_EVERY,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
                id="reload",
            )
        loop = asyncio.get_running_loop()
        signals = 0

        def on_signal(signum: int) -> None:
            nonlocal signals
            signals += 1
            if signals > 1:
                log.warning("second signal: exiting at once")
                os._exit(128 + signum)
            log.info("%s: finishing in-flight work, then stopping", signal.Signals(signum).name)
            self._stopping.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal, sig)
        scheduler.start()
        ops_server = None
        if settings.service.http:
            ops_server = await ops.serve(
                settings.service.http,
                {
                    "/healthz": lambda: self._healthz(store),
                    "/metrics": lambda: self._metrics(store),
                },
            )
        try:
            await self._stopping.wait()
        finally:
            if ops_server is not None:
                ops_server.close()
            scheduler.shutdown(wait=False)
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            await self._finish_in_flight()
            await self._release_own_claims(store)
            with contextlib.suppress(OSError):
                settings.service.heartbeat_file.unlink()
        log.info("service stopped")

    async def _finish_in_flight(self) -> None:
        task = self._refreshing
        if task is None or task.done():
            return
        limit = self.settings.service.shutdown_timeout.total_seconds()
        done, _ = await asyncio.wait({task}, timeout=limit)
        if not done:
            log.warning("abandoning a refresh still running after %.0fs", limit)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _release_own_claims(self, store: Store) -> None:
        """Hand back the feeds this process claimed and did not finish (a refresh abandoned at
        shutdown): another process, or the next start, polls them at once, instead of taking
        them for a dead process's after the lease."""
        try:
            released = await asyncio.to_thread(store.release_claims, lambda owner: owner == self._owner)
        except StorageError as exc:
            log.warning("claims not released (they expire with their lease): %s", exc)
            return
        if released:
            log.info("released %d feeds this process had claimed and not finished", released)

    async def _refresh_job(self, store: Store, pipeline: Pipeline) -> None:
        # A pass longer than check_every is normal: the next tick finds it running and leaves.
        if self._stopping.is_set() or (self._refreshing is not None and not self._refreshing.done()):
            return
        try:
            urls = [f.url for f in self.settings.feeds]
            await asyncio.to_thread(store.ensure_feeds, urls, self.clock())
            self._refreshing = asyncio.ensure_future(self._refresh_claimed(store, pipeline, urls))
            outcomes = await asyncio.shield(self._refreshing)
        except StorageError as exc:
            log.error("refresh skipped: %s", exc)
            return
        except asyncio.CancelledError:
            if self._stopping.is_set():  # the scheduler's shutdown: the pass itself is finished
                return  # by _finish_in_flight, which the shield kept it running for
            raise
        if not outcomes:
            return
        failed = sum(1 for o in outcomes if not o.ok)
        new = sum(o.new_articles for o in outcomes)
        log.info("refresh pass", extra=fields(feeds=len(outcomes), new_articles=new, failed=failed))

    async def _refresh_claimed(
        self, store: Store, pipeline: Pipeline, urls: list[str]
    ) -> list[RefreshOutcome]:
        """Claim the due feeds and refresh them; return their outcomes.

        On a database several processes share, claims are taken a few at a time as earlier
        ones finish, at most ``fetch.concurrency`` held at once: a process claiming every due
        feed in one go would leave nothing for the others (and its last feeds' leases would
        run out while they wait). SQLite serves one process: everything is claimed at once.
        """
        by_url = {f.url: f for f in self.settings.feeds}
        due = await asyncio.to_thread(store.due_feeds, urls, self.clock())
        if store.shared:
            hold = self.settings.fetch.concurrency
            step = max(1, hold // 4)
        else:
            hold = step = max(1, len(due))
        running: dict[asyncio.Future[list[RefreshOutcome]], int] = {}
        outcomes: list[RefreshOutcome] = []
        position = 0
        try:
            while True:
                # Bounded: each turn either claims from ``due`` (which only shrinks) or waits.
                while position < len(due) and not self._stopping.is_set():
                    room = hold - sum(running.values())
                    if running and room < step:
                        break
                    offered = due[position : position + min(room, step)]
                    position += len(offered)
                    claimed = await asyncio.to_thread(
                        store.claim_due_feeds, offered, self.clock(), self._owner, self.settings.service.lease
                    )
                    if claimed:
                        task = asyncio.ensure_future(pipeline.refresh_all([by_url[u] for u in claimed]))
                        running[task] = len(claimed)
                if not running:
                    return outcomes
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    del running[task]
                    outcomes.extend(task.result())
        finally:
            for task in running:
                task.cancel()

    async def _digest_job(self, store: Store, name: str | None = None, retry: int = 0) -> None:
        try:
            digest = self.settings.digest_named(name)
        except ConfigError:
            log.warning("digest %s is no longer configured", name)
            return
        now = self.clock()
        slot = last_slot(now, digest.send_at, digest.zone, digest.weekday)
        try:
            report = await asyncio.to_thread(
                send_digest, store, self.settings, now, None, time_module.sleep, digest, slot
            )
        except asyncio.CancelledError:
            if self._stopping.is_set():  # the send goes on in its thread, which the exit waits for
                log.info("digest %s: stopping while it is being sent", digest.name)
                return
            raise
        except DeliveryError as exc:
            metrics.count("aggregator_digest_deliveries_total", result="failed")
            if exc.temporary and self._scheduler is not None and not self._stopping.is_set():
                # The SMTP server is down or busy: try again later today, not only next time.
                delay = min(DIGEST_RETRY_FIRST * 2**retry, DIGEST_RETRY_MAX)
                self._scheduler.add_job(
                    self._digest_job,
                    "date",
                    args=[store, digest.name, retry + 1],
                    run_date=datetime.now(UTC) + delay,
                    id=f"digest-retry:{digest.name}",
                    replace_existing=True,
                )
                log.error("digest %s not delivered: %s (trying again in %s)", digest.name, exc, delay)
            else:
                log.error(
                    "digest %s not delivered: %s (its articles wait for the next one)", digest.name, exc
                )
            return
        except AggregatorError as exc:
            log.error("digest %s not delivered: %s (its articles wait for the next one)", digest.name, exc)
            return
        metrics.count(
            "aggregator_digest_deliveries_total", result="sent" if report.digest is not None else "empty"
        )
        if report.digest is not None:
            log.info("digest delivered", extra=fields(stories=report.digest.count, to=report.destination))
        elif not report.elsewhere:
            await asyncio.to_thread(store.note_digest_checked, digest.name, now)

    def _schedule_digests(self, scheduler: AsyncIOScheduler, store: Store) -> None:
        """(Re)create one cron job per configured digest; drop jobs of removed digests."""
        wanted = {f"digest:{d.name}": d for d in self.settings.all_digests}
        for job in scheduler.get_jobs():
            if job.id.startswith("digest:") and job.id not in wanted:
                job.remove()
        for job_id, digest in wanted.items():
            scheduler.add_job(
                self._digest_job,
                _trigger(digest),
                args=[store, digest.name],
                max_instances=1,
                coalesce=True,
                misfire_grace_time=3600,
                id=job_id,
                replace_existing=True,
            )

    async def _healthz(self, store: Store) -> tuple[int, str, str]:
        running = self._scheduler is not None and self._scheduler.running
        try:
            failing, last = await asyncio.to_thread(store.health, [f.url for f in self.settings.feeds])
            database = "ok"
        except (StorageError, SQLAlchemyError) as exc:
            failing, last, database = 0, None, f"unreachable: {type(exc).__name__}"
        healthy = running and database == "ok"
        return ops.json_response(
            200 if healthy else 503,
            {
                "status": "ok" if healthy else "unhealthy",
                "scheduler": "running" if running else "stopped",
                "database": database,
                "last_successful_fetch": last.isoformat() if last else None,
                "feeds": len(self.settings.feeds),
                "feeds_in_error": failing,
            },
        )

    async def _metrics(self, store: Store) -> tuple[int, str, str]:
        try:
            failing, last = await asyncio.to_thread(store.health, [f.url for f in self.settings.feeds])
        except (StorageError, SQLAlchemyError):
            failing, last = -1, None
        gauges = {
            "aggregator_feeds": ("Feeds configured.", float(len(self.settings.feeds))),
            "aggregator_feeds_in_error": ("Feeds whose last poll failed.", float(failing)),
            "aggregator_last_successful_fetch_timestamp_seconds": (
                "When a feed was last fetched successfully (Unix time).",
                last.timestamp() if last else 0.0,
            ),
        }
        return 200, metrics.CONTENT_TYPE, metrics.render(gauges)

    async def _retention_job(self, store: Store) -> None:
        before = self.clock() - timedelta(days=self.settings.retention_days)
        try:
            deleted = await asyncio.to_thread(
                store.delete_old_articles, before, [d.name for d in self.settings.all_digests]
            )
        except StorageError as exc:
            log.error("retention skipped: %s", exc)
            return
        if deleted:
            log.info("retention", extra=fields(deleted=deleted, older_than_days=self.settings.retention_days))

    async def _reload_job(self, pipeline: Pipeline) -> None:
        """Apply edits of aggregator.yaml / feeds.yaml; a bad edit keeps the last good config."""
        stamp = _stamp(self.settings, self.config_path)
        if stamp == self._config_stamp:
            return
        self._config_stamp = stamp
        try:
            fresh = await asyncio.to_thread(load_settings, self.config_path)
        except ConfigError as exc:
            log.error("config not reloaded, the last good one stays in force: %s", exc)
            return
        old = self.settings
        restart = [
            key
            for key in ("database_url", "fetch", "extract", "service")
            if getattr(fresh, key) != getattr(old, key)
        ]
        if restart:
            log.warning("config reloaded; restart to apply changes to: %s", ", ".join(restart))
            fresh = fresh.model_copy(update={key: getattr(old, key) for key in restart}).with_feeds(
                fresh.feeds
            )
        self.settings = pipeline.settings = fresh
        added = {f.url for f in fresh.feeds} - {f.url for f in old.feeds}
        removed = {f.url for f in old.feeds} - {f.url for f in fresh.feeds}
        if self._scheduler is not None:
            self._schedule_digests(self._scheduler, pipeline.store)
        log.info(
            "config reloaded feeds=%d added=%d removed=%d digests=%s",
            len(fresh.feeds),
            len(added),
            len(removed),
            "; ".join(f"{d.name} {d.schedule_label}" for d in fresh.all_digests),
        )

    async def _renew_claims(self, store: Store) -> None:
        until = self.clock() + self.settings.service.lease
        try:
            renewed = await asyncio.to_thread(store.renew_claims, self._owner, until)
        except StorageError as exc:
            log.warning("leases not renewed: %s", exc)
            return
        if renewed:
            log.debug("renewed the leases of %d feeds being refreshed", renewed)

    async def _heartbeat(self) -> None:
        path = self.settings.service.heartbeat_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.clock().isoformat(), encoding="utf-8")
        except OSError as exc:
            log.debug("heartbeat not written: %s", exc)


@contextlib.contextmanager
def _single_process_guard(database_url: str):  # type: ignore[no-untyped-def]
    """Refuse a second service on the same SQLite file: SQLite is single-writer."""
    url = make_url(normalise_url(database_url))
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        yield
        return
    lock_path = Path(url.database + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = open(lock_path, "a+")  # noqa: SIM115 - held for the service's lifetime
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AggregatorError(
                f"another 'aggregator run' is using {url.database}; SQLite allows one service "
                "process (use PostgreSQL to run several)"
            ) from None
        yield
    finally:
        handle.close()


def _stamp(settings: Settings, config_path: Path | None = None) -> tuple[float, ...]:
    """Modification times of the config files (0 for a missing one)."""
    paths = [p for p in (config_path or settings.source, settings.feeds_file) if p is not None]
    stamps = []
    for path in paths:
        try:
            stamps.append(path.stat().st_mtime_ns)
        except OSError:
            stamps.append(0)
    return tuple(stamps)


def _trigger(digest: DigestSettings) -> CronTrigger:
    """The cron trigger of a digest: its time of day, and its weekday when weekly."""
    return CronTrigger(
        day_of_week=digest.weekday if digest.weekday is not None else "*",
        hour=digest.send_at.hour,
        minute=digest.send_at.minute,
        timezone=digest.zone,
    )


def heartbeat_age(path: Path, now: datetime) -> timedelta | None:
    """Return how old the service's last heartbeat is, or None when there is none."""
    try:
        stamp = datetime.fromisoformat(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
    return now - stamp


def _safe_db(url: str) -> str:
    from aggregator.database import redact

    return redact(normalise_url(url))
