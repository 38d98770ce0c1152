"""feeds.yaml -> `aggregator fetch` -> `aggregator digest --send` -> the email, on real parts."""

from __future__ import annotations

import json
from email.message import EmailMessage
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from aggregator.cli import main

from .conftest import DATA, ConfigWriter, SmtpSink, base_url, fixture_text, serve, serve_gazette


def serve_with_etag(httpserver: HTTPServer, path: str, relative: str, content_type: str) -> str:
    body = fixture_text(relative, base_url(httpserver))

    def handler(request: Request) -> Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return Response(status=304, headers={"ETag": '"v1"'})
        return Response(body, content_type=content_type, headers={"ETag": '"v1"'})

    httpserver.expect_request(path).respond_with_handler(handler)
    return httpserver.url_for(path)


def articles(config: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    assert main(["articles", "--json", "--config", str(config)]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def expected_paragraphs(name: str) -> list[str]:
    text = (DATA / "pages" / f"{name}.expected.txt").read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


@pytest.fixture
def farm(httpserver: HTTPServer) -> dict[str, str]:
    """The loopback feed farm: a WordPress site, a wire site, a full-content blog, a broken feed."""
    serve(httpserver, "/wire/haftar-moscow-lavrov-123", "pages/wire-haftar.html", "text/html")
    return {
        "gazette": serve_gazette(httpserver),
        "wire": serve_with_etag(httpserver, "/wire/feed", "feeds/wire.atom", "application/atom+xml"),
        "blog": serve(httpserver, "/blog/feed", "feeds/full-content.rss", "application/rss+xml"),
        "broken": serve(httpserver, "/broken/feed", "feeds/broken.xml", "application/xml"),
    }


def test_fetch_then_send_delivers_a_two_part_digest(
    farm: dict[str, str],
    write_config: ConfigWriter,
    smtp_server: SmtpSink,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    httpserver: HTTPServer,
) -> None:
    config = write_config(
        feeds=[
            {"url": farm["gazette"], "name": "Libyan Gazette", "tags": ["world"]},
            {"url": farm["wire"], "name": "Wire News", "tags": ["world"]},
            {"url": farm["blog"], "name": "Full Content Blog"},
            {"url": farm["broken"], "name": "Broken"},
        ],
        database_url=database_url,
        smtp={"host": smtp_server.host, "port": smtp_server.port, "starttls": False},
        extract={"workers": None},  # the real process pool
    )

    assert main(["fetch", "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert "fetched 4 feeds" in captured.out and "1 failed" in captured.out
    assert farm["broken"] in captured.err  # each failure is reported

    stored = {a["title"]: a for a in articles(config, capsys)}
    haftar = stored["Haftar Meets with Russian Foreign Minister to Discuss Terrorism in Libya"]
    assert haftar["author"] == "Libyan Gazette Editorial Staff"
    assert haftar["extraction"] == "page"
    assert "utm_source" not in str(haftar["url"])
    text = str(haftar["text"])
    for paragraph in expected_paragraphs("gazette-haftar"):
        assert paragraph in text
    for junk in ("REUTERS/Maxim Shemetov", "Libyan Fisherman Rescue 120 Refugees"):
        assert junk not in text
    assert haftar["published"].startswith("2017-08-")  # type: ignore[union-attr]
    blog = [a for a in stored.values() if a["feed_url"] == farm["blog"]]
    assert len(blog) == 2 and all(a["extraction"] == "feed" and a["text"] for a in blog)
    assert len(stored) == 6
    # The wire's copy of the Haftar story (rewritten lead, a paragraph dropped, a line added)
    # is stored, and points at the Gazette's copy: one story, told twice.
    # Which copy came first depends on which feed answered first; the other points at it.
    (wire,) = [a for a in stored.values() if a["feed_url"] == farm["wire"]]
    pair = {(wire["duplicate_of"], haftar["duplicate_of"])}
    assert pair <= {(haftar["id"], None), (None, wire["id"])}

    assert main(["feeds", "--json", "--config", str(config)]) == 0
    status = {r["url"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert status[farm["broken"]]["consecutive_failures"] == 1
    assert status[farm["broken"]]["last_error"]
    assert status[farm["gazette"]]["article_count"] == 3
    assert status[farm["gazette"]]["last_status"] == 200

    assert main(["digest", "--send", "--config", str(config)]) == 0
    assert "sent digest with 5 stories" in capsys.readouterr().out
    (message,) = smtp_server.messages
    check_digest_email(message, stored, farm)

    # Sent once: a second send has nothing new, and no second email leaves.
    assert main(["digest", "--send", "--config", str(config)]) == 0
    assert "nothing new to send" in capsys.readouterr().out
    assert len(smtp_server.envelopes) == 1

    # A second pass is conditional where the server supports it, and stores nothing twice.
    assert main(["fetch", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "0 new articles" in out and "(1 not modified)" in out
    wire_requests = [e[0] for e in httpserver.log if e[0].path == "/wire/feed"]
    assert wire_requests[-1].headers.get("If-None-Match") == '"v1"'
    assert len(articles(config, capsys)) == 6


def check_digest_email(
    message: EmailMessage, stored: dict[str, dict[str, object]], farm: dict[str, str]
) -> None:
    assert message["To"] == "reader@example.com"
    assert message.get_content_type() == "multipart/alternative"
    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    assert text_part is not None and html_part is not None
    text, html = text_part.get_content(), html_part.get_content()
    for article in stored.values():
        assert str(article["url"]) in text  # every copy is linked, as a story or as "Also in"
        assert f'href="{article["url"]}"' in html
        if article["feed_url"] != farm["wire"]:
            assert str(article["title"]) in text
    # The wire's retelling is folded into the Gazette's story, which was published first,
    # and the summary comes from the Gazette's full text.
    (wire,) = [a for a in stored.values() if a["feed_url"] == farm["wire"]]
    assert str(wire["title"]) not in text
    assert "Also in: Wire News <" in text and ">Wire News</a>" in html
    assert "A meeting between General Khalifa Haftar" in text
    assert text.index("== World ==") < text.index("== Full Content Blog ==")
    for bad in ("<script", "onclick", "javascript:"):
        assert bad not in html


def test_smtp_outage_loses_nothing_and_sends_later(
    httpserver: HTTPServer,
    write_config: ConfigWriter,
    smtp_server: SmtpSink,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    feed = serve(httpserver, "/blog/feed", "feeds/full-content.rss", "application/rss+xml")
    down = write_config(
        feeds=[{"url": feed, "full_text": False}],
        database_url=database_url,
        smtp={"host": "127.0.0.1", "port": 1, "starttls": False, "retries": 1, "retry_wait": "10ms"},
    )
    assert main(["fetch", "--config", str(down)]) == 0
    capsys.readouterr()
    assert main(["digest", "--send", "--config", str(down)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert "retrying" in err[0]  # a temporary failure is tried again first
    assert err[-1].startswith("aggregator: cannot reach SMTP server")
    up = write_config(
        feeds=[{"url": feed, "full_text": False}],
        database_url=database_url,
        smtp={"host": smtp_server.host, "port": smtp_server.port, "starttls": False},
    )
    assert main(["digest", "--send", "--config", str(up)]) == 0
    assert len(smtp_server.messages) == 1
    assert "2 stories" in smtp_server.messages[0]["Subject"]


def test_outbox_without_smtp_and_preview_marks_nothing(
    httpserver: HTTPServer,
    write_config: ConfigWriter,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    feed = serve(httpserver, "/blog/feed", "feeds/full-content.rss", "application/rss+xml")
    config = write_config(feeds=[{"url": feed, "full_text": False}])
    assert main(["fetch", "--config", str(config)]) == 0
    preview = tmp_path / "preview.html"
    assert main(["digest", "--output", str(preview), "--config", str(config)]) == 0
    assert "<html" in preview.read_text()
    assert main(["digest", "--output", str(tmp_path / "preview.eml"), "--config", str(config)]) == 0
    assert main(["digest", "--send", "--config", str(config)]) == 0  # the preview marked nothing
    (eml,) = (tmp_path / "outbox").glob("*.eml")
    assert b"multipart/alternative" in eml.read_bytes()
    capsys.readouterr()
    assert main(["digest", "--send", "--config", str(config)]) == 0
    assert "nothing new to send" in capsys.readouterr().out
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1


def test_broken_feed_later_keeps_stored_articles(
    httpserver: HTTPServer,
    write_config: ConfigWriter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    body = {"data": fixture_text("feeds/full-content.rss", base_url(httpserver))}
    httpserver.expect_request("/feed").respond_with_handler(
        lambda request: Response(body["data"], content_type="application/rss+xml")
    )
    feed = httpserver.url_for("/feed")
    config = write_config(feeds=[{"url": feed, "full_text": False}])
    assert main(["fetch", "--config", str(config)]) == 0
    capsys.readouterr()
    assert len(articles(config, capsys)) == 2
    body["data"] = "<html><body>Error establishing a database connection</body></html>"
    assert main(["fetch", "--config", str(config)]) == 0
    capsys.readouterr()
    assert len(articles(config, capsys)) == 2
