"""Three real `aggregator run` processes on one PostgreSQL schema (issue 7): the feeds are split
between them and each fetched once, a process killed with SIGKILL has its feeds taken over
after the lease, and one digest is sent however many processes find it due."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy
from aiosmtpd.controller import Controller
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from aggregator.database import normalise_url

from .conftest import ConfigWriter, SmtpSink, base_url, free_port, wait_for

FEEDS, ITEMS = 300, 2
# Their first request is held until a process has been killed. Late in feeds.yaml, so they are
# claimed (in that order) near the end of the pass: a live process does not hold them for long.
SLOW = {281, 285, 290, 295, 299}
WAIT = 20.0  # no single wait of the test lasts longer


class Farm:
    """Feeds /f/<n>; counts requests per path. All first requests wait at a gate until three
    processes hold claims (so that the work is split), the SLOW ones until ``released``."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.released = threading.Event()

    def handle(self, request: Request) -> Response:
        with self.lock:
            self.requests[request.path] += 1
            first = self.requests[request.path] == 1
        number = int(request.path.rsplit("/", 1)[1])
        if first:
            self.gate.wait(WAIT)
            if number in SLOW:
                self.released.wait(WAIT)
        items = "".join(
            f"<item><title>Feed {number} story {i}</title><link>{self.base}/story/{number}/{i}</link>"
            f"<guid>f{number}i{i}</guid><description>Story {i} of feed {number}.</description></item>"
            for i in range(ITEMS)
        )
        return Response(
            f'<?xml version="1.0"?><rss version="2.0"><channel><title>F{number}</title>'
            f"<link>{self.base}/</link>{items}</channel></rss>",
            content_type="application/rss+xml",
        )


class SlowSmtp:
    """Accepts a message after a pause, so that a sender holds its digest lock for a while."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(1.5)
        self.sink.envelopes.append(envelope)
        return "250 Message accepted for delivery"


class Services:
    """`aggregator run` processes, each in its own process group, logging to a file."""

    def __init__(self, config: Path, folder: Path) -> None:
        self.config, self.folder = config, folder
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = self.folder / f"service-{len(self.processes)}.log"
        with log.open("wb") as handle:  # a file, not a pipe: an unread pipe stalls the service
            process = subprocess.Popen(
                [sys.executable, "-m", "aggregator", "run", "--config", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=handle,
                start_new_session=True,  # kill -9 of the group takes its workers too
            )
        self.processes.append((process, log))
        return process

    def log(self, process: subprocess.Popen[bytes]) -> str:
        return next(log for p, log in self.processes if p is process).read_text(errors="replace")

    def stop(self, processes: list[subprocess.Popen[bytes]]) -> list[int]:
        """SIGTERM to all, then wait for each: return their exit codes."""
        for process in processes:
            process.send_signal(signal.SIGTERM)
        return [process.wait(timeout=30) for process in processes]

    def kill_all(self) -> None:
        for process, _ in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def refreshed(log: str) -> int:
    return sum(int(n) for n in re.findall(r"refresh pass feeds=(\d+)", log))


def test_three_processes_share_the_feeds_survive_a_kill_and_send_one_digest(
    httpserver: HTTPServer, write_config: ConfigWriter, postgres_url: str, tmp_path: Path
) -> None:
    farm = Farm(base_url(httpserver))
    httpserver.expect_request(re.compile(r"^/f/\d+$")).respond_with_handler(farm.handle)
    urls = [httpserver.url_for(f"/f/{n}") for n in range(FEEDS)]
    sink = SmtpSink("127.0.0.1", free_port())
    smtp = Controller(SlowSmtp(sink), hostname=sink.host, port=sink.port)
    smtp.start()
    config = write_config(
        feeds=[{"url": u} for u in urls],
        database_url=postgres_url,
        # A long interval: no second poll can be due during the test.
        fetch={"interval": "1d", "min_interval": "12h", "per_host": 32, "concurrency": 32},
        extract={"enabled": False, "workers": 0},
        # The lease outlasts the spread of the three start-ups (a claim waits at the gate).
        service={"check_every": "1s", "lease": "10s", "heartbeat_file": str(tmp_path / "hb")},
        # 00:00 UTC has passed today: each process finds the digest due when it starts.
        digest={"send_at": "00:00", "to": ["reader@example.com"], "from": "Agg <digest@example.com>"},
        smtp={"host": sink.host, "port": sink.port, "starttls": False, "retries": 0, "timeout": "10s"},
    )
    engine = sqlalchemy.create_engine(normalise_url(postgres_url))
    services = Services(config, tmp_path)

    def rows(sql: str) -> list[Any]:
        try:
            with engine.connect() as connection:
                return list(connection.execute(sqlalchemy.text(sql)))
        except sqlalchemy.exc.ProgrammingError:  # the three processes are still migrating
            return []

    def scalar(sql: str) -> Any:
        return rows(sql)[0][0]

    def owners() -> dict[str, str]:
        return dict(rows("SELECT url, claimed_by FROM feeds WHERE claimed_by IS NOT NULL"))  # type: ignore[arg-type]

    try:
        first = [services.start() for _ in range(3)]
        # Every process holds claims before any feed answers: the feeds cannot all go to one.
        assert wait_for(lambda: len(set(owners().values())) == 3, WAIT), owners()
        farm.gate.set()
        slow_paths = {f"/f/{n}" for n in SLOW}
        assert wait_for(
            lambda: (
                scalar("SELECT count(*) FROM feeds WHERE last_success_at IS NOT NULL") == FEEDS - len(SLOW)
                and all(farm.requests[p] == 1 for p in slow_paths)
            ),
            WAIT,
        )
        # Kill, the hard way, a process that holds a slow feed in flight.
        slow_owners = {u: o for u, o in owners().items() if int(u.rsplit("/", 1)[1]) in SLOW}
        victim_owner = sorted(slow_owners.values())[0]
        victim = next(p for p in first if victim_owner.endswith(f":{p.pid}"))
        orphaned = {u for u, o in slow_owners.items() if o == victim_owner}
        leases = dict(rows(f"SELECT url, lease_until FROM feeds WHERE claimed_by = '{victim_owner}'"))
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
        farm.released.set()
        # The survivors take the orphaned feeds over once their lease has ended.
        assert wait_for(
            lambda: (
                scalar("SELECT count(*) FROM feeds WHERE last_success_at IS NOT NULL") == FEEDS
                and scalar("SELECT count(*) FROM feeds WHERE claimed_by IS NOT NULL") == 0
            ),
            WAIT,
        )
        # ... and not before: each was fetched again only once the dead process's lease ended.
        fetched = dict(rows("SELECT url, last_success_at FROM feeds"))
        assert leases and set(leases) == orphaned
        assert all(fetched[url] >= until for url, until in leases.items())
        survivors = [p for p in first if p is not victim]
        assert sum(1 for p in survivors if refreshed(services.log(p))) == 2

        expected = Counter({f"/f/{n}": 1 for n in range(FEEDS)})
        for url in orphaned:
            expected[url.removeprefix(base_url(httpserver))] = 2  # the dead one's, then the taker's
        assert farm.requests == expected
        assert scalar("SELECT count(*) FROM articles") == FEEDS * ITEMS
        assert scalar("SELECT count(DISTINCT (feed_id, entry_key)) FROM articles") == FEEDS * ITEMS
        assert scalar("SELECT count(*) FROM articles WHERE duplicate_of IS NOT NULL") == 0
        assert not sink.envelopes  # the digests due at start found nothing yet

        # Restart everything: three fresh processes find the day's digest due at once (the
        # service has known its feeds since yesterday: today's 00:00 passed while it was down).
        assert services.stop(survivors) == [0, 0], [services.log(p)[-2000:] for p in survivors]
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("UPDATE feeds SET created_at = created_at - interval '1 day'"))
        second = [services.start() for _ in range(3)]
        # One delivers it; the others find it being sent, already sent, or (checking after the
        # delivery) not missed at all.
        assert wait_for(
            lambda: (
                all("service starting" in services.log(p) for p in second)
                and sum("digest delivered" in services.log(p) for p in second) == 1
            ),
            WAIT,
        ), [services.log(p)[-1500:] for p in second]
        time.sleep(2)
        assert len(sink.messages) == 1
        assert sum("digest delivered" in services.log(p) for p in second) == 1
        assert "stories" in str(sink.messages[0]["Subject"])
        assert scalar("SELECT count(*) FROM digest_runs WHERE status = 'sent'") == 1
        assert farm.requests == expected  # nothing polled again
        assert services.stop(second) == [0, 0, 0]
    finally:
        services.kill_all()
        smtp.stop()
        engine.dispose()
