"""Content written by strangers cannot hurt the reader: links, secrets, one bad entry, controls.

Each test serves hostile feeds from a real HTTP server on 127.0.0.1 and drives the real pipeline,
database and commands; each failed on the code before these rules.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

import lxml.html
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pytest_httpserver import HTTPServer
from werkzeug import Response

from aggregator.cli import main
from aggregator.config import load_settings
from aggregator.controls import clean_text, printable
from aggregator.links import MAX_URL_LENGTH, redact_url, safe_link
from aggregator.models import FetchResult
from aggregator.parser import parse_feed

from .conftest import POSTGRES_URL, ConfigWriter, refresh, stored_articles, wait_for

SCRIPTING_LINKS = [
    "javascript:void(document.body.innerHTML='X')",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "vbscript:msgbox(1)",
    "java\tscript:alert(1)",
    "  JaVaScRiPt:alert(1)",
    "java\nscript:alert(2)",
    "http://[::1/x",
]
# What the digest may hold in an href or a src: an http(s) URL, nothing else.
_HTTP = re.compile(r"^https?://[^\s\x00-\x1f\x7f-\x9f]+$")


def _rss(items: str, title: str = "Hostile") -> str:
    return (
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>{title}</title><link>/</link>'
        f"{items}</channel></rss>"
    )


def _item(title: str, link: str | None = None, guid: str | None = None, body: str = "") -> str:
    from xml.sax.saxutils import escape

    parts = [f"<title>{escape(title)}</title>"]
    if link is not None:
        parts.append(f"<link>{escape(link)}</link>")
    if guid is not None:
        parts.append(f'<guid isPermaLink="false">{escape(guid)}</guid>')
    if body:
        parts.append(f"<description>{escape(body)}</description>")
    return f"<item>{''.join(parts)}</item>"


def _all_links(html: str) -> list[str]:
    root = lxml.html.document_fromstring(html)
    return [value for element in root.iter() for name, value in element.items() if name in ("href", "src")]


# -- 1. only http(s) links -----------------------------------------------------------------


def test_only_http_links_reach_the_digest_the_store_or_the_outbox(
    httpserver: HTTPServer, write_config: ConfigWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items = "".join(
        _item(
            f"Story {index}",
            link,
            guid=f"s{index}",
            body=f'<p>Text {index} <a href="javascript:alert(1)">x</a> <a href="mailto:a@b.example">m</a>'
            f' <a href=" JaVaScRiPt:alert(2)">y</a> <img src="data:image/png;base64,AAAA"></p>',
        )
        for index, link in enumerate(SCRIPTING_LINKS)
    )
    items += _item("Fine", "/fine", guid="fine", body="<p>A good one.</p>")
    httpserver.expect_request("/rss").respond_with_data(_rss(items), content_type="application/rss+xml")
    json_feed = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": "JSON",
        "home_page_url": "javascript:alert(3)",
        "items": [
            {"id": "j1", "url": "\u0001javascript:alert(1)", "title": "JSON one", "content_text": "One."},
            {"id": "j2", "url": " jAvAsCrIpT:alert(1)", "title": "JSON two", "content_text": "Two."},
        ],
    }
    httpserver.expect_request("/json").respond_with_json(json_feed)
    config = write_config(
        feeds=[{"url": httpserver.url_for("/rss")}, {"url": httpserver.url_for("/json")}],
        extract={"enabled": False},
    )
    settings = load_settings(config, environ={})
    outcomes = refresh(settings)
    assert all(o.ok for o in outcomes), outcomes

    articles = stored_articles(settings)
    assert len(articles) == len(SCRIPTING_LINKS) + 1 + 2
    for article in articles:
        assert article.url == "" or _HTTP.match(article.url), article.url
        assert all(_HTTP.match(link) for link in _all_links(article.html or "<p></p>")), article.html
    assert {a.url for a in articles if a.title == "Fine"} == {httpserver.url_for("/fine")}

    preview = tmp_path / "digest.html"
    assert main(["digest", "--output", str(preview), "--config", str(config)]) == 0
    assert main(["digest", "--send", "--config", str(config)]) == 0
    capsys.readouterr()
    sent = message_from_bytes(next((tmp_path / "outbox").glob("*.eml")).read_bytes(), policy=default)
    html_part = sent.get_body(("html",))
    assert html_part is not None
    for html in (preview.read_text(encoding="utf-8"), html_part.get_content()):
        links = [link for link in _all_links(html) if not link.startswith("#")]  # the contents' anchors
        assert links, "the good story keeps its link"
        assert all(_HTTP.match(link) for link in links), [link for link in links if not _HTTP.match(link)]
        assert "javascript" not in html.lower() and "vbscript" not in html.lower()
    text_part = sent.get_body(("plain",))
    assert text_part is not None and "javascript" not in text_part.get_content().lower()


@given(st.text(max_size=300), st.sampled_from([None, "https://base.example/dir/", "http://b.example"]))
def test_safe_link_is_an_http_url_or_nothing(value: str, base: str | None) -> None:
    link = safe_link(value, base)
    assert link is None or (_HTTP.match(link) and len(link) <= MAX_URL_LENGTH), link


_SCHEMES = ["javascript", "vbscript", "data", "file", "mailto", "ftp", "about", "blob"]


@given(
    st.sampled_from(_SCHEMES),
    st.text(alphabet="\x00\x01\x08\x1f \t\n\r", max_size=4),
    st.lists(st.sampled_from(["\t", "\n", "\r"]), max_size=3),
    st.randoms(use_true_random=False),
    st.text(max_size=40),
)
def test_no_spelling_of_another_scheme_is_a_link(
    scheme: str, leading: str, inserts: list[str], rng: Any, rest: str
) -> None:
    # Browsers strip leading controls and spaces, drop tabs and newlines anywhere, ignore case.
    spelled = list("".join(c.upper() if rng.random() < 0.5 else c for c in scheme))
    for insert in inserts:
        spelled.insert(rng.randrange(len(spelled) + 1), insert)
    assert safe_link(leading + "".join(spelled) + ":" + rest, "https://base.example/") is None


# -- 3. credentials never show -------------------------------------------------------------


def test_a_password_in_a_feed_url_never_shows(
    httpserver: HTTPServer, write_config: ConfigWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the test server's own access log
    items = _item("With a link", "/a", guid="a", body="<p>One.</p>") + _item("No link", guid="b", body="Two.")
    httpserver.expect_request("/private").respond_with_data(_rss(items), content_type="application/rss+xml")
    port = httpserver.port
    url = f"http://alice:s3cret@127.0.0.1:{port}/private?token=t0ps3cret"
    config = write_config(feeds=[{"url": url}], extract={"enabled": False})
    outputs: list[str] = []
    for argv in (
        ["fetch"],
        ["feeds"],
        ["feeds", "--json"],
        ["articles"],
        ["articles", "--json"],
        ["digest"],
        ["digest", "--output", str(tmp_path / "d.html")],
        ["opml", "export"],
    ):
        assert main([*argv, "--config", str(config), "--log-level", "debug"]) == 0, argv
        captured = capsys.readouterr()
        outputs += [captured.out, captured.err]
    outputs.append((tmp_path / "d.html").read_text(encoding="utf-8"))
    everything = "\n".join(outputs)
    assert "127.0.0.1" in everything and "alice" in everything  # the feed is shown, only not its secrets
    assert "s3cret" not in everything and "t0ps3cret" not in everything


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://alice:s3cret@host.example/feed", "http://alice:***@host.example/feed"),
        ("https://host.example/feed?token=abc&page=2", "https://host.example/feed?token=***&page=2"),
        (
            "postgresql://u:pw@db/x?password=pw&sslmode=require",
            "postgresql://u:***@db/x?password=***&sslmode=require",
        ),
        ("https://host.example/feed", "https://host.example/feed"),
        ("http://[::1/x:s3cret@", "http://***@"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.skipif(not POSTGRES_URL, reason="AGGREGATOR_TEST_POSTGRES_URL is not set")
def test_the_service_logs_no_secret_and_no_control_character(
    httpserver: HTTPServer, write_config: ConfigWriter, postgres_url: str, start_service: Any
) -> None:
    hostile_title = "Title \x1b]0;PWNED\x07\x1b[31m red"
    httpserver.expect_request("/ok").respond_with_data(
        _rss(_item(hostile_title, "/a", guid="a", body="<p>x</p>"), title="Feed \x1b[2J"),
        content_type="application/rss+xml",
    )
    httpserver.expect_request("/broken").respond_with_response(
        Response("no", status="500 \x1b]0;PWNED\x07\x1b[31m")
    )
    port = httpserver.port
    config = write_config(
        database_url=f"{postgres_url}&password=dbs3cret",
        feeds=[
            {"url": f"http://alice:s3cret@127.0.0.1:{port}/ok"},
            {"url": f"http://127.0.0.1:{port}/broken?api_key=k3y"},
        ],
        extract={"enabled": False},
        service={"check_every": "1s"},
    )
    service = start_service(config)
    settings = load_settings(config, environ={})
    assert wait_for(lambda: len(httpserver.log) >= 2 and bool(stored_articles(settings)), 30)
    time.sleep(0.5)
    code, err = service.stop()
    assert code == 0, err
    assert "service starting" in err and "fetch failed" in err
    for secret in ("s3cret", "dbs3cret", "k3y"):
        assert secret not in err
    assert "\x1b" not in err and "\x07" not in err
    assert "\\x1b]0;PWNED" in err  # shown, as an escape


# -- 4. one bad entry never costs the feed -------------------------------------------------

GOOD = [("Good one", "/good/1"), ("Good two", "/good/2"), ("Good three", "/good/3")]


def _parse(body: bytes, content_type: str = "application/rss+xml") -> Any:
    return parse_feed(
        FetchResult(
            "http://feed.example/f", "http://feed.example/f", 200, body, content_type, None, None, _NOW
        )
    )


from datetime import UTC, datetime  # noqa: E402

_NOW = datetime(2026, 12, 8, tzinfo=UTC)


def test_a_bad_link_costs_only_its_own_entry(
    httpserver: HTTPServer, write_config: ConfigWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    items = [_item(title, link, guid=link) for title, link in GOOD]
    items.insert(1, _item("Bad IPv6", "http://[::1/x", guid="bad6"))
    items.insert(3, _item("Octal", "http://0177.0.0.1/x", guid="octal", body="<p>Octal text.</p>"))
    httpserver.expect_request("/feed").respond_with_data(
        _rss("".join(items)), content_type="application/rss+xml"
    )
    for title, link in GOOD:
        httpserver.expect_request(link).respond_with_data(
            f"<html><body><article><p>{title} page.</p></article></body></html>", content_type="text/html"
        )
    config = write_config(feeds=[{"url": httpserver.url_for("/feed")}])  # full text on
    assert main(["fetch", "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "internal" not in captured.err, captured.err
    assert "1 ok" in captured.out
    titles = {a.title: a for a in stored_articles(load_settings(config, environ={}))}
    assert {"Good one", "Good two", "Good three", "Bad IPv6", "Octal"} <= set(titles)
    assert titles["Bad IPv6"].url == ""  # kept, without the link that is none
    assert main(["feeds", "--json", "--config", str(config)]) == 0
    (status,) = map(json.loads, capsys.readouterr().out.splitlines())
    assert status["consecutive_failures"] == 0 and "without a link" in status["last_warning"]


# Random text, and values known to have broken a parser somewhere.
_NASTY = [
    *SCRIPTING_LINKS,
    "http://0177.0.0.1/x",
    "http://h:99999/",
    "Mon, 99 Foo 99999 99:99:99 +9999",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "",
    " ",
]
_xml_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60) | st.sampled_from(_NASTY)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "title": _xml_text,
        "link": _xml_text,
        "guid": _xml_text,
        "description": _xml_text,
        "pubDate": _xml_text,
        "author": _xml_text,
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=_fields, position=st.integers(0, 3), raw=st.booleans())
@example(fields={"title": "Bad", "link": "http://[::1/x"}, position=1, raw=False)
def test_any_one_mangled_rss_entry_leaves_the_others_stored(
    fields: dict[str, str], position: int, raw: bool
) -> None:
    from xml.sax.saxutils import escape

    # ``raw``: the mangled values go in unescaped, as a broken generator writes them (the
    # document may then not be well-formed): the other entries are read all the same.
    write = (lambda v: v.replace("<", "").replace("&", "")) if raw else escape
    mangled = "<item>" + "".join(f"<{k}>{write(v)}</{k}>" for k, v in fields.items()) + "</item>"
    items = [_item(title, f"http://site.example{link}", guid=link) for title, link in GOOD]
    items.insert(position, mangled)
    feed = _parse(_rss("".join(items)).encode("utf-8", "surrogatepass"))
    kept = {(e.title, e.url) for e in feed.entries}
    assert {(title, f"http://site.example{link}") for title, link in GOOD} <= kept
    for entry in feed.entries:
        assert entry.url is None or _HTTP.match(entry.url)


_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)
_json_item = st.one_of(
    _json_value,
    st.fixed_dictionaries(
        {},
        optional={
            key: _json_value | st.text(max_size=40) | st.sampled_from(_NASTY)
            for key in ("id", "url", "title", "content_html", "content_text", "date_published", "authors")
        },
    ),
)


@settings(max_examples=60, deadline=None)
@given(item=_json_item, position=st.integers(0, 3))
@example(item={"id": "bad", "url": "http://[::1/x", "title": "Bad"}, position=1)
@example(item={"id": "nul", "title": "Nul\u0000", "date_published": "0001-01-01T00:00:00+14:00"}, position=0)
def test_any_one_mangled_json_feed_item_leaves_the_others_stored(item: Any, position: int) -> None:
    items: list[Any] = [
        {"id": link, "url": f"https://site.example{link}", "title": title, "content_text": "Text."}
        for title, link in GOOD
    ]
    items.insert(position, item)
    document = {"version": "https://jsonfeed.org/version/1.1", "title": "J", "items": items}
    feed = _parse(json.dumps(document).encode(), "application/feed+json")
    kept = {(e.title, e.url) for e in feed.entries}
    assert {(title, f"https://site.example{link}") for title, link in GOOD} <= kept


@pytest.mark.parametrize("position", [0, 1, 3])
def test_one_mangled_entry_through_the_pipeline_on_every_database(
    httpserver: HTTPServer, write_config: ConfigWriter, database_url: str, position: int
) -> None:
    """The parser's property above, end to end: the good entries are stored, the feed is ok."""
    items = [_item(title, link, guid=link, body=f"<p>{title}.</p>") for title, link in GOOD]
    items.insert(
        position,
        "<item><title>\x01Bad\x00</title><link>http://[::1/x</link><pubDate>year 99999</pubDate></item>",
    )
    httpserver.expect_request("/feed").respond_with_data(
        _rss("".join(items)).encode(), content_type="application/rss+xml"
    )
    config = write_config(
        feeds=[{"url": httpserver.url_for("/feed")}], database_url=database_url, extract={"enabled": False}
    )
    settings = load_settings(config, environ={})
    (outcome,) = refresh(settings)
    assert outcome.ok, outcome
    titles = {a.title for a in stored_articles(settings)}
    assert {title for title, _ in GOOD} <= titles and "Bad" in titles


# -- 5. text that databases and terminals accept -------------------------------------------


def test_controls_and_huge_fields_are_stored_clean_and_capped(
    httpserver: HTTPServer,
    write_config: ConfigWriter,
    database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    document = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": "J\u0000SON \u009b31m",
        "items": [
            {
                "id": "nul",
                "url": "https://site.example/nul",
                "title": "Null\u0000 byte \ud800 and \u001b[31mred",
                "authors": [{"name": "A\u0007uthor"}],
                "content_text": "Body\u0000 with \u0085 controls.\n\nSecond paragraph.",
            },
            {
                "id": "huge",
                "url": "https://site.example/huge",
                "title": "Huge " * 400_000,
                "authors": [{"name": "N" * 100_000}],
                "content_text": "A normal body.",
            },
        ],
    }
    body = json.dumps(document).encode()  # json escapes \ud800 as "\\ud800": a lone surrogate
    httpserver.expect_request("/feed").respond_with_data(body, content_type="application/feed+json")
    config = write_config(
        feeds=[{"url": httpserver.url_for("/feed")}], database_url=database_url, extract={"enabled": False}
    )
    settings = load_settings(config, environ={})
    (outcome,) = refresh(settings)
    assert outcome.ok and outcome.new_articles == 2, outcome
    stored = {a.url.rsplit("/", 1)[1]: a for a in stored_articles(settings)}
    controls = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
    for article in stored.values():
        for value in (article.title, article.author or "", article.text, article.html, article.summary):
            assert not controls.search(value), repr(value[:80])
    assert stored["nul"].title == "Null byte and [31mred"
    assert len(stored["huge"].title) <= 400 and stored["huge"].title.endswith("…")
    assert len(stored["huge"].author or "") <= 200
    assert main(["digest", "--output", str(tmp_path / "d.eml"), "--config", str(config)]) == 0
    capsys.readouterr()
    raw = (tmp_path / "d.eml").read_bytes()
    assert b"\x00" not in raw and b"\x1b" not in raw


def test_clean_text_keeps_tabs_and_newlines_and_caps() -> None:
    assert clean_text("a\tb\nc\x00d\x1be\x85f\ud800g") == "a\tb\ncdefg"
    assert clean_text("word " * 100, 23) == "word word word word…"
    assert len(clean_text("x" * 1000, 50)) == 50


# -- 6. no raw control characters on a terminal or in a log -------------------------------


def test_no_command_writes_a_raw_control_character(
    httpserver: HTTPServer, write_config: ConfigWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_rows = tmp_path / "old.db"  # rows stored before controls were stripped still show safely
    httpserver.expect_request("/feed").respond_with_data(
        _rss(_item("Bell \x07 and \x1b]0;PWNED\x07 title", "/a", guid="a", body="<p>x\x1b[2J</p>")),
        content_type="application/rss+xml",
    )
    httpserver.expect_request("/down").respond_with_response(
        Response("no", status="500 \x1b]0;PWNED\x07\x1b[31m")
    )
    config = write_config(
        feeds=[{"url": httpserver.url_for("/feed")}, {"url": httpserver.url_for("/down")}],
        extract={"enabled": False},
        database_url=f"sqlite:///{old_rows}",
    )
    assert main(["fetch", "--config", str(config), "--log-level", "debug"]) == 0
    import sqlite3

    with sqlite3.connect(old_rows) as connection:  # as an older version stored them
        connection.execute("UPDATE articles SET title = 'Old \x1b[31m title \x9b'")
    outputs = [capsys.readouterr()]
    for argv in (["feeds"], ["articles"], ["digest"], ["feeds", "--json"], ["articles", "--json"]):
        assert main([*argv, "--config", str(config), "--log-level", "debug"]) == 0
        outputs.append(capsys.readouterr())
    for captured in outputs:
        for text in (captured.out, captured.err):
            assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", text), repr(text)
    everything = "".join(c.out + c.err for c in outputs)
    assert "PWNED" in everything and "Old \\x1b[31m title" in everything
    for line in outputs[4].out.splitlines() + outputs[5].out.splitlines():
        json.loads(line)  # still JSON, the controls escaped its way


def test_printable() -> None:
    assert printable("a\x1b]0;x\x07b\nc") == "a\\x1b]0;x\\x07b\\nc"
    assert printable("a\x1bb\nc\td", keep_newlines=True) == "a\\x1bb\nc\td"
    assert printable("right-to-left \u202e override") == "right-to-left \\u202e override"


# -- 7. malformed but harmless feeds are read; empty entries are not articles --------------


def test_a_feed_declaring_its_own_entities_is_read() -> None:
    body = (
        b'<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY copy "&#169;"><!ENTITY nbsp "&#160;">]>'
        b'<rss version="2.0"><channel><title>Site &copy; 2026</title>'
        b"<item><title>One&nbsp;story &copy;</title><link>http://site.example/1</link></item>"
        b"</channel></rss>"
    )
    feed = _parse(body)
    assert feed.title == "Site © 2026"
    assert [e.title for e in feed.entries] == ["One story ©"]


def _bomb(levels: int) -> bytes:
    entities = "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, levels + 1))
    return (
        f'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol0 "lol">{entities}]>'
        f'<rss version="2.0"><channel><title>&lol{levels};</title>'
        "<item><title>x</title></item></channel></rss>"
    ).encode()


@pytest.mark.parametrize(
    "body",
    [
        _bomb(9),
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "' + b"x" * 100_000 + b'">]><rss version="2.0">'
        b"<channel><title>" + b"&a;" * 50_000 + b"</title></channel></rss>",
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "&b;"><!ENTITY b "&a;">]><rss version="2.0">'
        b"<channel><title>&a;</title></channel></rss>",
    ],
    ids=["billion-laughs", "quadratic", "loop"],
)
def test_entity_bombs_are_refused_quickly(body: bytes) -> None:
    from aggregator.errors import FetchError

    started = time.monotonic()
    with pytest.raises(FetchError, match="expand"):
        _parse(body)
    assert time.monotonic() - started < 2


def test_external_entities_are_never_fetched_or_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    connects: list[object] = []

    def hook(event: str, args: tuple[object, ...]) -> None:
        if event in ("socket.connect", "open") and watching:
            connects.append((event, args[:2]))

    watching = False
    sys.addaudithook(hook)
    body = (
        f'<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY xxe SYSTEM "file://{secret}">'
        f'<!ENTITY % remote SYSTEM "http://127.0.0.1:9/evil.dtd"> %remote;]>'
        '<rss version="2.0"><channel><title>t &xxe;</title>'
        "<item><title>i &xxe;</title><link>http://site.example/1</link></item></channel></rss>"
    ).encode()
    watching = True
    try:
        feed = _parse(body)
    finally:
        watching = False
    assert "TOPSECRET" not in repr(feed)
    assert [e.title for e in feed.entries] in (["i"], ["i &xxe;"], [])
    assert not [c for c in connects if c[0] == "socket.connect" or str(secret) in str(c[1])], connects


def test_an_empty_entry_is_not_an_article(httpserver: HTTPServer, write_config: ConfigWriter) -> None:
    truncated = _rss(_item("Real", "/real", guid="real", body="Real text.") + "<item></item><item> </item>")
    httpserver.expect_request("/feed").respond_with_data(truncated, content_type="application/rss+xml")
    config = write_config(feeds=[{"url": httpserver.url_for("/feed")}], extract={"enabled": False})
    settings = load_settings(config, environ={})
    (outcome,) = refresh(settings)
    assert outcome.ok and outcome.new_articles == 1
    assert [a.title for a in stored_articles(settings)] == ["Real"]
    assert any("ignored" in w for w in outcome.warnings)


def test_entries_without_links_are_not_copies_of_each_other(
    httpserver: HTTPServer, write_config: ConfigWriter
) -> None:
    items = "".join(_item(f"Note {i}", guid=f"n{i}", body=f"Short note number {i}.") for i in range(3))
    httpserver.expect_request("/notes").respond_with_data(_rss(items), content_type="application/rss+xml")
    config = write_config(feeds=[{"url": httpserver.url_for("/notes")}], extract={"enabled": False})
    settings = load_settings(config, environ={})
    (outcome,) = refresh(settings)
    assert outcome.new_articles == 3 and outcome.duplicates == 0
    assert all(a.url == "" and a.duplicate_of is None for a in stored_articles(settings))


# -- 9. the digest degrades one story, not the whole email --------------------------------


def _story(i: int, title: str | None = None) -> str:
    text = " ".join(f"Sentence {i} number {n} tells part of the story." for n in range(8))
    return _item(title or f"Story {i}", f"/s/{i}", guid=f"s{i}", body=f"<p>{text}</p>")


def test_one_huge_title_does_not_cost_the_other_stories_their_summaries(
    httpserver: HTTPServer, write_config: ConfigWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items = "".join(_story(i) for i in range(10)) + _story(10, "Huge " * 20_000)
    httpserver.expect_request("/feed").respond_with_data(_rss(items), content_type="application/rss+xml")
    config = write_config(feeds=[{"url": httpserver.url_for("/feed")}], extract={"enabled": False})
    refresh(load_settings(config, environ={}))
    out = tmp_path / "d.html"
    assert main(["digest", "--output", str(out), "--config", str(config)]) == 0
    capsys.readouterr()
    html = out.read_text(encoding="utf-8")
    assert "more stor" not in html
    for i in range(11):
        assert f"Sentence {i} number 0 tells part of the story." in html, i
    assert len(html.encode()) < 100_000


def test_stories_only_counted_are_not_marked_sent(
    httpserver: HTTPServer, write_config: ConfigWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    httpserver.expect_request("/feed").respond_with_data(
        _rss("".join(_story(i) for i in range(60))), content_type="application/rss+xml"
    )
    # A budget that shows some stories (as title links) and only counts the rest.
    config = write_config(
        feeds=[{"url": httpserver.url_for("/feed")}],
        extract={"enabled": False},
        digest={"max_html_bytes": "6KB"},
    )
    refresh(load_settings(config, environ={}))
    seen: set[str] = set()
    for _ in range(15):
        assert main(["digest", "--send", "--config", str(config)]) == 0
        if "nothing new" in capsys.readouterr().out:
            break
        newest = max((tmp_path / "outbox").glob("*.eml"), key=lambda p: p.stat().st_mtime_ns)
        html = message_from_bytes(newest.read_bytes(), policy=default).get_body(("html",)).get_content()  # type: ignore[union-attr]
        shown = set(re.findall(r"Story \d+", html))
        assert shown, "each digest shows at least one story"
        assert not shown & seen, "a story shown once is never sent again"
        seen |= shown
    assert seen == {f"Story {i}" for i in range(60)}, "every story is shown in the end"


def test_a_body_naming_a_local_file_is_not_read_as_the_feed(
    httpserver: HTTPServer, write_config: ConfigWriter, tmp_path: Path
) -> None:
    # feedparser opens bytes it is given as a file name: a body of "/proc/self/environ" or a
    # path to a feed on this machine must be read as the body it is, not as that file.
    local = tmp_path / "local-feed.xml"
    local.write_text(_rss(_item("From the local disk", "http://site.example/secret", guid="x")))
    httpserver.expect_request("/feed").respond_with_data(str(local), content_type="application/rss+xml")
    config = write_config(feeds=[{"url": httpserver.url_for("/feed")}], extract={"enabled": False})
    settings = load_settings(config, environ={})
    (outcome,) = refresh(settings)
    assert not outcome.ok and outcome.error_kind in ("parse", "not_a_feed"), outcome
    assert stored_articles(settings) == []
