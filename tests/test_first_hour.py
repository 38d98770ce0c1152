"""The first hour and the hundredth day of a new user: names, places, clean logs, and commands
that say what they did. Real processes, a loopback HTTP server, SQLite files and PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from aggregator.cli import main
from aggregator.config import load_settings
from aggregator.database import normalise_url

from .conftest import POSTGRES_URL, ConfigWriter, free_port, refresh, wait_for


def _rss(title: str, items: list[tuple[str, str]], base: str = "") -> str:
    body = "".join(
        f"<item><title>{t}</title><link>{base}{link}</link><guid>{link}</guid>"
        f"<description>{t}: the whole story in one sentence.</description></item>"
        for t, link in items
    )
    return f'<?xml version="1.0"?><rss version="2.0"><channel><title>{title}</title>{body}</channel></rss>'


# -- names and places ----------------------------------------------------------------------


def test_a_feed_is_called_by_its_own_title(
    httpserver: HTTPServer, write_config: ConfigWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    httpserver.expect_request("/morning").respond_with_data(
        _rss("Morning Post", [("Dawn news", "/m/1")]), content_type="application/rss+xml"
    )
    httpserver.expect_request("/evening").respond_with_data(
        _rss("Evening Post", [("Dusk news", "/e/1")]), content_type="application/rss+xml"
    )
    config = write_config(
        feeds=[
            {"url": httpserver.url_for("/morning")},  # no name: its title once fetched
            {"url": httpserver.url_for("/evening"), "name": "My Evening"},  # name: still the override
        ],
        extract={"enabled": False},
    )
    assert main(["fetch", "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["feeds", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Morning Post\n") and "\nMy Evening\n" in out
    preview = tmp_path / "d.html"
    assert main(["digest", "--output", str(preview), "--config", str(config)]) == 0
    html = preview.read_text(encoding="utf-8")
    host = f"127.0.0.1:{httpserver.port}"
    assert "Morning Post" in html and "My Evening" in html
    assert f">{host}" not in html and f"{host} ·" not in html  # the host is no longer a name
    assert "2 stories from 2 sources" in html
    assert main(["articles", "--config", str(config)]) == 0
    listed = capsys.readouterr().out
    assert "\tMorning Post\tDawn news" in listed and "\tMy Evening\tDusk news" in listed


def test_common_options_go_before_or_after_the_command(
    write_config: ConfigWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(write_config(feeds=[{"url": "https://a.example/feed"}]))
    for argv in (
        ["--config", config, "check-config"],
        ["check-config", "--config", config],
        ["--log-level", "debug", "--config", config, "check-config"],
        ["--config", config, "opml", "export"],
        ["opml", "--config", config, "export"],
        ["opml", "export", "--config", config],
    ):
        assert main(argv) == 0, argv
        out = capsys.readouterr().out
        assert (": OK\n" if "check-config" in argv else "https://a.example/feed") in out, argv


def test_read_only_commands_never_create_a_database_anywhere(
    write_config: ConfigWriter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(
        feeds=[{"url": "https://a.example/feed"}], database_url="sqlite:///data/aggregator.db"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    expected = elsewhere / "data" / "aggregator.db"  # the documented rule: the working directory
    for argv in (["feeds"], ["articles"], ["digest"], ["digest", "--output", "x.html"]):
        assert main([*argv, "--config", str(config)]) == 1, argv
        err = capsys.readouterr().err
        assert f"no database at {expected}" in err and str(elsewhere) in err, err
    assert not (elsewhere / "data").exists()
    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"database: {expected} (SQLite; not created yet" in out
    assert f"feeds:    1 feed from {config.parent / 'feeds.yaml'}" in out


def test_an_unusable_data_folder_is_named_with_its_cause(
    write_config: ConfigWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the data folder should be")
    config = write_config(
        feeds=[{"url": "https://a.example/feed"}], database_url=f"sqlite:///{blocker}/data/aggregator.db"
    )
    assert main(["fetch", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"cannot create the database folder {blocker}/data: Not a directory" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_read_only_data_folder_is_named(
    write_config: ConfigWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root writes anywhere: a folder the kernel refuses to it
        folder = Path("/proc/1")
        if not folder.is_dir() or os.access(folder, os.W_OK):
            pytest.skip("no folder this user cannot write to")
    config = write_config(feeds=[{"url": "https://a.example/feed"}], database_url=f"sqlite:///{folder}/a.db")
    assert main(["fetch", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"the database folder {folder} is not writable by this user" in err, err
    assert not (folder / "a.db").exists()


# -- clean logs ----------------------------------------------------------------------------


def test_sigterm_during_a_fetch_logs_no_error_and_leaves_no_claim(
    httpserver: HTTPServer, write_config: ConfigWriter, tmp_path: Path, start_service: Any
) -> None:
    arrived = threading.Event()

    def slow(request: Request) -> Response:
        arrived.set()
        time.sleep(2)
        return Response(_rss("Slow", [("Late news", "/s/1")]), content_type="application/rss+xml")

    httpserver.expect_request("/slow").respond_with_handler(slow)
    config = write_config(
        feeds=[{"url": httpserver.url_for("/slow")}],
        extract={"enabled": False},
        service={"check_every": "1s"},
    )
    service = start_service(config)
    assert arrived.wait(30)
    code, err = service.stop()  # SIGTERM while the feed's answer is on its way
    assert code == 0, err
    assert "ERROR" not in err and "Traceback" not in err and "CancelledError" not in err, err
    assert "finishing in-flight work" in err and "service stopped" in err
    again = start_service(config)
    assert wait_for(lambda: (tmp_path / "hb").exists(), 20)
    code, err = again.stop()
    assert code == 0 and "claimed by a process that is gone" not in err, err


@pytest.mark.skipif(not POSTGRES_URL, reason="AGGREGATOR_TEST_POSTGRES_URL is not set")
def test_three_processes_starting_together_log_no_error_and_no_warning(
    httpserver: HTTPServer, write_config: ConfigWriter, postgres_url: str, tmp_path: Path
) -> None:
    feeds = 600
    base = httpserver.url_for("/").rstrip("/")

    def feed(request: Request) -> Response:
        number = request.path.rsplit("/", 1)[1]
        return Response(
            _rss(f"Feed {number}", [(f"Story {number}", f"/s/{number}")], base),
            content_type="application/rss+xml",
        )

    httpserver.expect_request(re.compile(r"^/f/\d+$")).respond_with_handler(feed)
    config = write_config(
        feeds=[{"url": f"{base}/f/{n}"} for n in range(feeds)],
        database_url=postgres_url,
        fetch={"interval": "1d", "min_interval": "12h", "per_host": 16, "concurrency": 16},
        extract={"enabled": False, "workers": 0},
        # A pass longer than check_every: ticks that find it running are skipped silently.
        service={"check_every": "1s", "heartbeat_file": str(tmp_path / "hb")},
        digest={"send_at": "00:00"},  # passed today: a brand-new install missed nothing
    )
    logs = [tmp_path / f"service-{n}.log" for n in range(3)]
    processes = []
    for log in logs:
        with log.open("wb") as handle:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "aggregator", "run", "--config", str(config)],
                    stdout=subprocess.DEVNULL,
                    stderr=handle,
                )
            )
    engine = sqlalchemy.create_engine(normalise_url(postgres_url))

    def fetched() -> int:
        try:
            with engine.connect() as connection:
                return int(
                    connection.execute(
                        sqlalchemy.text("SELECT count(*) FROM feeds WHERE last_success_at IS NOT NULL")
                    ).scalar()
                    or 0
                )
        except sqlalchemy.exc.ProgrammingError:  # still migrating
            return 0

    try:
        assert wait_for(lambda: fetched() == feeds, 60), fetched()
        time.sleep(2)  # a few ticks with nothing due
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(timeout=60) for process in processes]
        engine.dispose()
    texts = [log.read_text(errors="replace") for log in logs]
    assert codes == [0, 0, 0], texts
    for text in texts:
        assert "service stopped" in text
        for bad in ("ERROR", "WARNING", "Traceback", "UniqueViolation", "skipped", "missed while"):
            assert bad not in text, (bad, text)


# -- what the commands say -----------------------------------------------------------------


def test_articles_are_listed_by_the_time_they_show(
    httpserver: HTTPServer, write_config: ConfigWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    items = "".join(
        f"<item><title>{title}</title><link>/a/{title}</link><guid>{title}</guid><pubDate>{date}</pubDate></item>"
        for title, date in (
            ("evening", "Mon, 07 Dec 2026 22:03:00 GMT"),
            ("afternoon", "Mon, 07 Dec 2026 17:03:00 GMT"),
            ("night", "Mon, 07 Dec 2026 23:30:00 GMT"),
        )
    )
    httpserver.expect_request("/feed").respond_with_data(
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>T</title>{items}</channel></rss>',
        content_type="application/rss+xml",
    )
    config = write_config(feeds=[{"url": httpserver.url_for("/feed")}], extract={"enabled": False})
    refresh(load_settings(config, environ={}))
    assert main(["articles", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("id\tpublished")
    titles = [line.split("\t")[3] for line in lines[1:] if not line.startswith("\t")]
    assert titles == ["night", "evening", "afternoon"]
    assert main(["articles", "--since", "2026-12-07T20:00Z", "--json", "--config", str(config)]) == 0
    since = [json.loads(line)["title"] for line in capsys.readouterr().out.splitlines()]
    assert since == ["night", "evening"]


def test_extract_keeps_initials_and_the_time_of_day(
    httpserver: HTTPServer, write_config: ConfigWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    body = " ".join(["A sentence of the article with enough words to be its text."] * 12)
    pages = {
        "/byline": (
            '<meta property="article:published_time" content="2026-12-07T22:04:00Z">',
            '<p class="byline">By J. Smith and Dr. Anna Weiss</p>',
        ),
        "/jsonld": (
            '<script type="application/ld+json">{"@context": "https://schema.org", "@type": "NewsArticle",'
            ' "headline": "H", "datePublished": "2026-12-07T23:04:00+01:00",'
            ' "author": {"@type": "Person", "name": "J.R.R. Tolkien"}}</script>',
            "",
        ),
    }
    for path, (head, byline) in pages.items():
        httpserver.expect_request(path).respond_with_data(
            f"<html><head><title>Headline</title>{head}</head><body><article><h1>Headline</h1>"
            f"{byline}<p>{body}</p><p>{body}</p></article></body></html>",
            content_type="text/html",
        )
    config = write_config()
    urls = [httpserver.url_for(path) for path in pages]
    assert main(["extract", "--json", "--config", str(config), *urls]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["author"] for r in records] == ["J. Smith; Dr. Anna Weiss", "J.R.R. Tolkien"]
    assert [r["published"] for r in records] == ["2026-12-07T22:04:00+00:00", "2026-12-07T22:04:00+00:00"]


def test_small_things_a_user_notices(
    httpserver: HTTPServer, write_config: ConfigWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed = _rss("One", [("Only story", "/o/1")])
    httpserver.expect_request("/feed.xml").respond_with_data(feed, content_type="application/rss+xml")
    link = httpserver.url_for("/feed.xml")
    httpserver.expect_request("/home").respond_with_data(
        f'<html><head><link rel="alternate" type="application/rss+xml" href="{link}">'
        "</head><body>Home</body></html>",
        content_type="text/html",
    )
    config = write_config(
        feeds=[
            {"url": httpserver.url_for("/feed.xml")},
            {"url": httpserver.url_for("/home"), "name": "Home"},
        ],
        extract={"enabled": False},
    )
    assert main(["fetch", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "fetched 2 feeds" in out and "2 new articles (1 duplicate)" in out
    assert main(["digest", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert text.endswith("\n") and "1 story from 1 source" in text
    assert main(["feeds", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "the same feed as One" in out and "remove one from feeds.yaml" in out
    # a config error in words people use, counting from 1, with a suggestion
    (config.parent / "feeds.yaml").write_text("feeds:\n  - url: https://a.example/feed\n    tag: [x]\n")
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "feed #1 (https://a.example/feed): tag: unknown key; did you mean `tags`?" in err
    (config.parent / "feeds.yaml").write_text("feeds:\n  - https://a.example/feed\n  - 42\n")
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "feed #2: should be a mapping of keys" in err and "Input should be" not in err


def test_digest_send_says_it_delivered_a_run_held_back(
    httpserver: HTTPServer, write_config: ConfigWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aiosmtpd.controller import Controller

    from .conftest import SmtpSink, _Handler

    httpserver.expect_request("/feed").respond_with_data(
        _rss("News", [("First", "/n/1")]), content_type="application/rss+xml"
    )
    port = free_port()
    config = write_config(
        feeds=[{"url": httpserver.url_for("/feed")}],
        extract={"enabled": False},
        smtp={"host": "127.0.0.1", "port": port, "starttls": False, "retries": 0, "timeout": "2s"},
    )
    refresh(load_settings(config, environ={}))
    assert main(["digest", "--send", "--config", str(config)]) == 1  # nobody listens: held back
    capsys.readouterr()
    sink = SmtpSink("127.0.0.1", port)
    server = Controller(_Handler(sink), hostname="127.0.0.1", port=port)
    server.start()
    try:
        assert main(["digest", "--send", "--config", str(config)]) == 0
    finally:
        server.stop()
    out = capsys.readouterr().out
    assert "delivered the digest held back on" in out and "(1 story)" in out and "127.0.0.1" in out
    assert out.rstrip().endswith("nothing new to send")
    assert len(sink.envelopes) == 1


def test_json_logs_carry_their_facts_as_keys(
    httpserver: HTTPServer, write_config: ConfigWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    httpserver.expect_request("/ok").respond_with_data(
        _rss("Fine", [("A story", "/a/1")]), content_type="application/rss+xml"
    )
    httpserver.expect_request("/missing").respond_with_data("gone", status=404)
    config = write_config(
        feeds=[{"url": httpserver.url_for("/ok")}, {"url": httpserver.url_for("/missing")}],
        extract={"enabled": False},
    )
    assert main(["fetch", "--config", str(config), "--log-format", "json", "--log-level", "info"]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.err.splitlines() if line.startswith("{")]
    failed = next(line for line in lines if line["message"] == "fetch failed")
    assert failed["feed"] == httpserver.url_for("/missing") and failed["status"] == 404
    assert isinstance(failed["retry_in"], float) and 1500 < failed["retry_in"] < 2100  # seconds
    assert "404" not in failed["error"]  # said once, as the status
    refreshed = next(line for line in lines if line["message"] == "refreshed")
    assert refreshed["feed"] == httpserver.url_for("/ok") and refreshed["new"] == 1
    # the text form reads the same facts as key=value, durations in seconds
    assert main(["fetch", "--config", str(config), "--log-level", "info"]) == 0
    text = capsys.readouterr().err
    assert re.search(r"fetch failed feed=\S+/missing status=404 retry_in=\d+(\.\d+)?s error=", text), text
