from __future__ import annotations

import gc
import json
import re
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from aggregator.cli import build_parser, entry, main
from aggregator.config import load_settings
from aggregator.storage import Store

from .conftest import SHARED, ConfigWriter, free_port, serve, wait_for

COMMANDS = [
    ["run"],
    ["fetch"],
    ["digest"],
    ["feeds"],
    ["articles"],
    ["extract"],
    ["check-config"],
    ["opml"],
    ["opml", "import"],
    ["opml", "export"],
    ["health"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*command, "--help"])
    assert caught.value.code == 0
    assert "usage: aggregator" in capsys.readouterr().out


def test_the_program_enters_through_entry_which_freezes_the_heap_on_the_way_out(
    write_config: ConfigWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "aggregator"]
    assert script.value == "aggregator.cli:entry"
    assert "import entry" in (Path(__file__).parents[1] / "aggregator" / "__main__.py").read_text()
    bad = write_config(fetch={"timeout": "forever"})
    gc.unfreeze()
    try:
        assert entry(["check-config", "--config", str(bad)]) == 2  # main's code, unchanged
        assert "fetch.timeout" in capsys.readouterr().err
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()  # the rest of this test process collects as usual


def test_every_command_takes_config() -> None:
    parser = build_parser()
    for command in COMMANDS:
        if command == ["opml"]:
            continue
        extra = {"extract": ["page.html"], "import": ["subs.opml"]}.get(command[-1], [])
        args = parser.parse_args([*command, *extra, "--config", "x.yaml"])
        assert args.config == "x.yaml"


def test_check_config_ok_and_bad(write_config: ConfigWriter, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_config(feeds=[{"url": "https://a.example/feed"}])
    assert main(["check-config", "--config", str(good)]) == 0
    out = capsys.readouterr().out
    assert ": OK\n" in out and "1 feed from " in out and "database: " in out
    bad = write_config(fetch={"timeout": "forever"})
    assert main(["check-config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "fetch.timeout" in err and "Traceback" not in err


def test_database_unreachable_exits_1(write_config: ConfigWriter, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/x?connect_timeout=2")
    assert main(["feeds", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("aggregator: database unreachable") and err.count("\n") == 1


def test_fetch_unknown_feed_is_a_usage_error(
    write_config: ConfigWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(feeds=[{"url": "https://a.example/feed"}])
    assert main(["fetch", "--config", str(config), "--feed", "https://b.example/x"]) == 2
    assert "add the feed there first" in capsys.readouterr().err


def test_feeds_json_before_any_fetch(
    write_config: ConfigWriter, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write_config(feeds=[{"url": "https://a.example/feed", "name": "A"}])
    # Before the database exists, the commands that only read say where they looked.
    for argv in (["feeds"], ["articles"], ["digest"], ["health"]):
        assert main([*argv, "--config", str(config)]) == 1, argv
        err = capsys.readouterr().err
        assert argv == ["health"] or f"no database at {tmp_path / 'aggregator.db'}" in err, err
    assert not (tmp_path / "aggregator.db").exists()
    from aggregator.storage import Store

    Store.open(f"sqlite:///{tmp_path / 'aggregator.db'}").close()  # as `fetch` or `run` would
    assert main(["feeds", "--json", "--config", str(config)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert record["url"] == "https://a.example/feed" and record["name"] == "A"
    assert record["last_fetch"] is None and record["article_count"] == 0
    for key in ("last_status", "last_error", "consecutive_failures", "next_fetch"):
        assert key in record


def test_extract_file_and_url_in_input_order(
    httpserver: HTTPServer,
    write_config: ConfigWriter,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    page_url = serve(httpserver, "/story", "pages/gazette-haftar.html", "text/html")
    local = tmp_path / "page.html"
    local.write_text((Path(__file__).parent / "data/pages/gazette-fishermen.html").read_text())
    config = write_config()
    code = main(
        ["extract", "--json", "--config", str(config), page_url, str(local), str(tmp_path / "missing.html")]
    )
    assert code == 1  # one input could not be read
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["source"] for r in lines] == [page_url, str(local), str(tmp_path / "missing.html")]
    assert lines[0]["title"].startswith("Haftar Meets with Russian Foreign Minister")
    assert "A meeting between General Khalifa Haftar" in lines[0]["text"]
    assert "REUTERS/Maxim Shemetov" not in lines[0]["text"]
    assert lines[1]["text"] and lines[1]["error"] is None
    assert lines[2]["error"].startswith("cannot read")
    for key in ("title", "author", "published", "text"):
        assert key in lines[0]


def test_extract_refuses_loopback_without_the_setting(
    httpserver: HTTPServer, write_config: ConfigWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    page_url = serve(httpserver, "/story", "pages/gazette-haftar.html", "text/html")
    config = write_config(fetch={"allow_private_networks": False})
    assert main(["extract", "--json", "--config", str(config), page_url]) == 1
    assert "blocked" in json.loads(capsys.readouterr().out)["error"]
    assert httpserver.log == []


@pytest.mark.skipif(
    not (SHARED / "data/extraction/dev/html").is_dir(), reason="../shared/data/extraction/dev is absent"
)
def test_extract_a_real_news_page(write_config: ConfigWriter, capsys: pytest.CaptureFixture[str]) -> None:
    pages = sorted((SHARED / "data/extraction/dev/html").glob("*.html"))[:2]
    assert main(["extract", "--json", "--config", str(write_config()), *map(str, pages)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 2 and all(len(r["text"].split()) > 100 for r in records)


def test_run_fetches_and_stops_cleanly_on_sigterm(
    httpserver: HTTPServer,
    write_config: ConfigWriter,
    tmp_path: Path,
    start_service: Any,
) -> None:
    feed_url = serve(httpserver, "/feed", "feeds/full-content.rss", "application/rss+xml")
    config = write_config(
        feeds=[{"url": feed_url, "name": "Blog", "full_text": False}], service={"check_every": "1s"}
    )
    service = start_service(config)
    assert wait_for(lambda: len(httpserver.log) >= 1 and (tmp_path / "hb").exists(), 20)
    health = subprocess.run(
        [sys.executable, "-m", "aggregator", "health", "--config", str(config)],
        capture_output=True,
        text=True,
        env=service.env,
        timeout=30,
    )
    assert health.returncode == 0, health.stderr
    # a second service on the same SQLite file refuses to start
    second = subprocess.run(
        [sys.executable, "-m", "aggregator", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        env=service.env,
        timeout=30,
    )
    assert second.returncode == 1 and "another 'aggregator run'" in second.stderr
    code, err = service.stop()
    assert code == 0, err
    assert "service stopped" in err
    assert "Traceback" not in err
    assert not (tmp_path / "hb").exists()


def test_run_sends_a_digest_missed_while_it_was_down(
    httpserver: HTTPServer,
    write_config: ConfigWriter,
    smtp_server,
    tmp_path: Path,  # type: ignore[no-untyped-def],
    start_service: Any,
) -> None:
    from datetime import UTC, datetime, timedelta

    feed_url = serve(httpserver, "/feed", "feeds/full-content.rss", "application/rss+xml")
    # The send time passed a minute ago and nothing was sent: the service catches up at start.
    send_at = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%H:%M")
    config = write_config(
        feeds=[{"url": feed_url, "name": "Blog", "full_text": False}],
        digest={"send_at": send_at, "timezone": "UTC"},
        smtp={"host": smtp_server.host, "port": smtp_server.port, "starttls": False},
        service={"check_every": "1s"},
    )
    assert main(["fetch", "--config", str(config)]) == 0
    # The service has known its feeds since yesterday: it was down at today's send time.
    import sqlite3

    with sqlite3.connect(tmp_path / "aggregator.db") as connection:
        connection.execute("UPDATE feeds SET created_at = datetime('now', '-1 day')")
    for _ in range(2):  # a restart must not send it again
        service = start_service(config)
        assert wait_for(lambda: (tmp_path / "hb").exists(), 20)
        code, err = service.stop()
        assert code == 0, err
    assert len(smtp_server.messages) == 1
    assert "2 stories" in smtp_server.messages[0]["Subject"]


def test_progress_bar_only_on_a_terminal() -> None:
    import io

    from aggregator.cli import Progress
    from aggregator.models import RefreshOutcome

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    bar = Progress(2, screen)
    bar.advance(RefreshOutcome("https://a.example/f", ok=True))
    bar.advance(RefreshOutcome("https://b.example/f", ok=False))
    bar.close()
    assert "2/2 feeds, 1 failed" in screen.getvalue()
    pipe = io.StringIO()
    Progress(2, pipe).close()
    assert pipe.getvalue() == ""


def test_extract_with_selector_and_html(
    write_config: ConfigWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = tmp_path / "page.html"
    local.write_text((Path(__file__).parent / "data/pages/gazette-haftar.html").read_text())
    config = write_config()
    args = ["extract", "--json", "--html", "--config", str(config), str(local)]
    assert main([*args, "--selector", ".entry-content"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["text"].startswith("A meeting between General Khalifa Haftar")
    assert record["html"].startswith("<p>A meeting") and "<script" not in record["html"]
    assert main([*args, "--selector", ".author-bio"]) == 0
    assert "A meeting" not in json.loads(capsys.readouterr().out)["text"]


def test_run_picks_up_config_edits_and_survives_a_bad_one(
    httpserver: HTTPServer,
    write_config: ConfigWriter,
    tmp_path: Path,
    start_service: Any,
) -> None:
    import yaml

    first = serve(httpserver, "/one", "feeds/full-content.rss", "application/rss+xml")
    second = serve(httpserver, "/two", "feeds/wire.atom", "application/atom+xml")
    config = write_config(feeds=[{"url": first, "full_text": False}], service={"check_every": "1s"})
    feeds_file = config.parent / "feeds.yaml"
    service = start_service(config)

    def requested(path: str) -> bool:
        return any(entry[0].path == path for entry in httpserver.log)

    assert wait_for(lambda: requested("/one"), 20)
    feeds_file.write_text("feeds: [{url: " + first + "\n")  # a bad edit
    time.sleep(3)
    assert service.alive()
    feeds_file.write_text(
        yaml.safe_dump({"feeds": [{"url": first, "full_text": False}, {"url": second, "full_text": False}]})
    )
    assert wait_for(lambda: requested("/two"), 20)
    code, err = service.stop()
    assert code == 0, err
    assert "config not reloaded, the last good one stays in force" in err
    assert "feeds.yaml" in err
    assert "config reloaded feeds=2 added=1" in err


def test_run_serves_healthz_and_metrics(
    httpserver: HTTPServer,
    write_config: ConfigWriter,
    tmp_path: Path,
    start_service: Any,
) -> None:
    import httpx

    feed_url = serve(httpserver, "/feed", "feeds/full-content.rss", "application/rss+xml")
    httpserver.expect_request("/broken").respond_with_data("nope", status=500)
    port = free_port()
    config = write_config(
        feeds=[{"url": feed_url, "full_text": False}, {"url": httpserver.url_for("/broken")}],
        service={"check_every": "1s", "http": f"127.0.0.1:{port}"},
    )
    service = start_service(config)
    base = f"http://127.0.0.1:{port}"

    def metrics_text() -> str:
        try:
            return httpx.get(f"{base}/metrics", timeout=2).text
        except httpx.HTTPError:
            return ""

    # Both feeds' outcomes, in whichever order they finish: the broken feed fails at once, the
    # good one is parsed and stored first.
    first_pass = (
        'aggregator_fetches_total{outcome="http"} 1.0',
        'aggregator_fetches_total{outcome="ok"} 1.0',
    )
    assert wait_for(lambda: all(line in metrics_text() for line in first_pass), 30)
    text = metrics_text()
    assert 'aggregator_fetches_total{outcome="ok"} 1.0' in text
    assert "aggregator_articles_stored_total 2.0" in text
    assert "aggregator_feeds_in_error 1.0" in text
    assert "process_resident_memory_bytes" in text and "process_cpu_seconds_total" in text
    # Exact, not "1.79669e+09": the stored time of the last success to the microsecond.
    (stamp,) = re.findall(r"^aggregator_last_successful_fetch_timestamp_seconds (\S+)$", text, re.M)
    store = Store.open(load_settings(config, environ={}).database_url)
    try:
        _, last = store.health([feed_url])
    finally:
        store.close()
    assert last is not None and abs(float(stamp) - last.timestamp()) < 1e-5, (stamp, last)
    health = httpx.get(f"{base}/healthz", timeout=2)
    assert health.status_code == 200
    body = health.json()
    assert body["scheduler"] == "running" and body["database"] == "ok"
    assert body["last_successful_fetch"] and body["feeds_in_error"] == 1
    assert httpx.get(f"{base}/nope", timeout=2).status_code == 404
    code, err = service.stop()
    assert code == 0, err
