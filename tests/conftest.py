"""Shared fixtures: a real HTTP server, a real SMTP server, real databases, config files."""

from __future__ import annotations

import contextlib
import email
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller
from pytest_httpserver import HTTPServer

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
POSTGRES_URL = os.environ.get("AGGREGATOR_TEST_POSTGRES_URL")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests see no AGGREGATOR_* settings from the developer's shell, and write only in tmp."""
    for name in list(os.environ):
        if name.startswith("AGGREGATOR_") and name != "AGGREGATOR_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("AGGREGATOR_SERVICE_HEARTBEAT_FILE", str(tmp_path / "heartbeat"))


@pytest.fixture(scope="session")
def make_httpserver() -> Iterator[HTTPServer]:
    """pytest-httpserver's server on 127.0.0.1, threaded: a slow handler must not stall the rest."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.clear()
    if server.is_running():
        server.stop()


def fixture_text(relative: str, base: str = "") -> str:
    """Return a file under tests/data with ``{base}`` replaced by the test server's URL."""
    return (DATA / relative).read_text(encoding="utf-8").replace("{base}", base)


def base_url(httpserver: HTTPServer) -> str:
    return httpserver.url_for("/").rstrip("/")


def serve(
    httpserver: HTTPServer,
    path: str,
    relative: str,
    content_type: str,
    headers: dict[str, str] | None = None,
) -> str:
    """Serve a fixture file at ``path`` (``{base}`` filled in); return its URL."""
    body = fixture_text(relative, base_url(httpserver))
    httpserver.expect_request(path).respond_with_data(body, content_type=content_type, headers=headers or {})
    return httpserver.url_for(path)


def serve_gazette(httpserver: HTTPServer) -> str:
    """Serve the Libyan Gazette feed and its three article pages; return the feed URL."""
    for slug, page in (
        ("haftar-meets-lavrov", "gazette-haftar"),
        ("coastguard-training", "gazette-coastguard"),
        ("fishermen-rescue", "gazette-fishermen"),
    ):
        serve(httpserver, f"/gazette/{slug}/", f"pages/{page}.html", "text/html; charset=utf-8")
    return serve(httpserver, "/gazette/feed/", "feeds/gazette.rss", "application/rss+xml")


# -- SMTP ----------------------------------------------------------------------------------


@dataclass
class SmtpSink:
    host: str
    port: int
    envelopes: list[Any] = field(default_factory=list)

    @property
    def messages(self) -> list[EmailMessage]:
        return [
            email.message_from_bytes(e.content, policy=default)  # type: ignore[misc]
            for e in self.envelopes
        ]


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.sink.envelopes.append(envelope)
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def smtp_server() -> Iterator[SmtpSink]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 that keeps what it receives."""
    sink = SmtpSink("127.0.0.1", free_port())
    controller = Controller(_Handler(sink), hostname=sink.host, port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


# -- databases -----------------------------------------------------------------------------


def _postgres_schema_url(schema: str) -> str:
    assert POSTGRES_URL
    base = POSTGRES_URL
    for prefix in ("postgres://", "postgresql://"):
        if base.startswith(prefix):
            base = "postgresql+psycopg://" + base[len(prefix) :]
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, and a PostgreSQL schema when one is configured."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'aggregator.db'}"
        return
    with _fresh_postgres_schema() as url:
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL schema (skipped when none is configured)."""
    with _fresh_postgres_schema() as url:
        yield url


@contextlib.contextmanager
def _fresh_postgres_schema() -> Iterator[str]:
    if not POSTGRES_URL:
        pytest.skip("AGGREGATOR_TEST_POSTGRES_URL is not set")
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin_url = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield _postgres_schema_url(schema)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'aggregator.db'}"


# -- config files --------------------------------------------------------------------------

ConfigWriter = Callable[..., Path]


@pytest.fixture
def write_config(tmp_path: Path) -> ConfigWriter:
    """Return ``write(feeds=[...], **settings)`` that writes aggregator.yaml + feeds.yaml."""

    def write(feeds: list[dict[str, Any]] | None = None, **settings: Any) -> Path:
        folder = tmp_path / "config"
        folder.mkdir(exist_ok=True)
        config: dict[str, Any] = {
            "database_url": f"sqlite:///{tmp_path / 'aggregator.db'}",
            "outbox_dir": str(tmp_path / "outbox"),
            "fetch": {"allow_private_networks": True, "timeout": "10s"},
            "extract": {"workers": 0},
            "digest": {"to": ["reader@example.com"], "from": "Aggregator <digest@example.com>"},
        }
        if "digests" in settings:
            del config["digest"]  # digests: replaces the single digest
        for key, value in settings.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        (folder / "aggregator.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        (folder / "feeds.yaml").write_text(yaml.safe_dump({"feeds": feeds or []}), encoding="utf-8")
        return folder / "aggregator.yaml"

    return write


# -- the pipeline and the service ----------------------------------------------------------


def refresh(settings: Any, **fetcher_args: Any) -> list[Any]:
    """Run one Pipeline.refresh_all over the configured feeds, as `aggregator fetch` does."""
    import asyncio

    from aggregator.fetcher import Fetcher
    from aggregator.pipeline import Pipeline
    from aggregator.storage import Store

    store = Store.open(settings.database_url)

    async def go() -> list[Any]:
        async with Fetcher(settings.fetch, **fetcher_args) as fetcher:
            pipeline = Pipeline(settings, store, fetcher)
            try:
                return await pipeline.refresh_all(settings.feeds)
            finally:
                pipeline.close()

    try:
        return asyncio.run(go())
    finally:
        store.close()


def stored_articles(settings: Any) -> list[Any]:
    """Every stored article, newest first."""
    from aggregator.storage import Store

    store = Store.open(settings.database_url)
    try:
        return store.list_articles()
    finally:
        store.close()


class ServiceProcess:
    """`aggregator run` in a child process, started as a user starts it."""

    def __init__(self, config: Path, heartbeat: Path) -> None:
        import subprocess
        import sys

        self.env = {**os.environ, "AGGREGATOR_SERVICE_HEARTBEAT_FILE": str(heartbeat)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> tuple[int, str]:
        """SIGTERM, then wait: return the exit code and what it wrote on stderr."""
        import signal

        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=30)
        return self.process.returncode, err

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[[Path], ServiceProcess]]:
    """Return start(config) -> ServiceProcess (heartbeat in tmp_path/hb); all killed at the end."""
    started: list[ServiceProcess] = []

    def start(config: Path) -> ServiceProcess:
        service = ServiceProcess(config, tmp_path / "hb")
        started.append(service)
        return service

    yield start
    for service in started:
        service.kill()


def wait_for(predicate: Callable[[], bool], seconds: float) -> bool:
    """Poll ``predicate`` every 0.1 s for at most ``seconds``."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False
