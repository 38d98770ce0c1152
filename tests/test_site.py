"""The archive site (service.http), as a person uses it: real feeds on a loopback server, a real
digest sent to the outbox, the site served by uvicorn on 127.0.0.1, read with HTTP and in a
real headless Chromium (Debian's, skipped where it is not installed)."""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

import httpx
import pytest
from pytest_httpserver import HTTPServer

from aggregator.cli import main
from aggregator.config import Settings, load_settings
from aggregator.storage import Store
from aggregator.web import WebContext, WebServer, make_app

from .conftest import ConfigWriter, free_port, refresh

STORY = " ".join(
    f"Sentence {n} of the harbour story, which the council approved on Monday." for n in range(12)
)
HOSTILE_TITLE = "<script>alert(1)</script> " + "Long " * 3000


def _feed(base: str) -> str:
    items = [
        ("Harbour plan approved", "/a/1", f"<p>{STORY}</p>"),
        (
            HOSTILE_TITLE,
            "/a/2",
            '<p>Body <script>alert(2)</script><a href="javascript:alert(3)">click</a> '
            '<img src="http://img.example/x.png" onerror="alert(4)"> and some words.</p>',
        ),
    ]
    body = "".join(
        f"<item><title><![CDATA[{title}]]></title><link>{base}{link}</link><guid>{link}</guid>"
        f"<description><![CDATA[{html}]]></description></item>"
        for title, link, html in items
    )
    return (
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>Harbour News</title>{body}</channel></rss>'
    )


async def _ok() -> tuple[int, str, str]:
    return 200, "application/json", '{"status": "ok"}\n'


@pytest.fixture
def site(
    httpserver: HTTPServer,
    write_config: ConfigWriter,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., tuple[str, Settings]]]:
    """start(**service) -> (the site's base URL, its settings): two stories fetched, one digest
    sent to the outbox, the site served in a thread of its own."""
    base = httpserver.url_for("/").rstrip("/")
    httpserver.expect_request("/feed").respond_with_data(_feed(base), content_type="application/rss+xml")
    stops: list[Callable[[], None]] = []

    def start(**service: Any) -> tuple[str, Settings]:
        port = free_port()
        config = write_config(
            feeds=[{"url": f"{base}/feed"}],
            extract={"enabled": False},
            service={"http": f"127.0.0.1:{port}", **service},
        )
        monkeypatch.setenv("SITE_PASSWORD", "s3cret-pw")
        settings = load_settings(config)
        refresh(settings)
        assert main(["digest", "--send", "--config", str(config)]) == 0
        capsys.readouterr()
        store = Store.open(settings.database_url)
        loop = asyncio.new_event_loop()
        server = WebServer(make_app(WebContext(lambda: settings, store, _ok, _ok)), f"127.0.0.1:{port}")
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(server.start())
            ready.set()
            loop.run_forever()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert ready.wait(20)

        def stop() -> None:
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            store.close()

        stops.append(stop)
        return f"http://127.0.0.1:{port}", settings

    yield start
    for stop in stops:
        stop()


def test_the_digests_as_sent_and_each_article_in_a_reader_view(site: Any, tmp_path: Path) -> None:
    url, _ = site()
    index = httpx.get(f"{url}/")
    assert index.status_code == 200 and "Digests sent" in index.text
    (link,) = re.findall(r'href="(/digests/\d+)"', index.text)
    digest = httpx.get(url + link)
    sent = message_from_bytes(next((tmp_path / "outbox").glob("*.eml")).read_bytes(), policy=default)
    html_part = sent.get_body(("html",))
    # exactly as sent (the .eml's lines end in CRLF, as email's do)
    assert html_part is not None and digest.text == html_part.get_content().replace("\r\n", "\n")
    article_ids = sorted(set(re.findall(r"/articles/(\d+)", httpx.get(f"{url}/").text))) or ["1", "2"]
    reader = httpx.get(f"{url}/articles/{article_ids[0]}")
    assert reader.status_code == 200 and "Harbour plan approved" in reader.text
    assert "Sentence 11 of the harbour story" in reader.text and "Harbour News" in reader.text
    assert httpx.get(f"{url}/articles/999999").status_code == 404
    assert httpx.get(f"{url}/digests/nope").status_code == 404


def test_every_page_is_inert_and_strict(site: Any) -> None:
    url, _ = site()
    for path in ("/", "/digests/1", "/articles/1", "/articles/2", "/search?q=harbour", "/healthz"):
        response = httpx.get(url + path)
        assert response.status_code in (200, 404), path
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp, path
        assert response.headers["x-content-type-options"] == "nosniff"
        body = response.text.lower()
        assert "<script" not in body and "javascript:" not in body and "onerror" not in body, path
    hostile = httpx.get(f"{url}/articles/2").text
    assert "alert(1)" not in hostile and "Long Long" in hostile
    assert len(hostile) < 20_000  # the 15,000-character title cut for showing
    assert httpx.post(f"{url}/").status_code == 405
    # No redirect anywhere: a path that looks like one is not followed.
    assert httpx.get(f"{url}//evil.example/").status_code == 404


def test_a_site_open_to_the_network_requires_credentials(site: Any, write_config: ConfigWriter) -> None:
    from aggregator.errors import ConfigError

    config = write_config(service={"http": "0.0.0.0:8080"})
    with pytest.raises(ConfigError, match=r"reachable from other machines: set service\.auth"):
        load_settings(config, environ={})
    url, _ = site(auth={"username": "reader", "password_env": "SITE_PASSWORD"})
    assert httpx.get(f"{url}/").status_code == 401
    assert httpx.get(f"{url}/", auth=("reader", "wrong")).status_code == 401
    assert httpx.get(f"{url}/", headers={"Authorization": "Basic !!!"}).status_code == 401
    assert httpx.get(f"{url}/", auth=("reader", "s3cret-pw")).status_code == 200
    assert httpx.get(f"{url}/articles/1", auth=("reader", "s3cret-pw")).status_code == 200
    assert httpx.get(f"{url}/healthz").status_code == 200  # the health check needs no password
    token = base64.b64encode(b"reader:s3cret-pw").decode()
    assert httpx.get(f"{url}/", headers={"Authorization": f"Basic {token}"}).status_code == 200


CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="Debian's chromium and chromium-driver are absent"
)
def test_the_site_in_a_real_browser(site: Any, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    url, _ = site()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=420,900",  # a phone's width
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER or ""), options=options)
    try:
        for path, expected in (
            ("/", "Digests sent"),
            ("/digests/1", "Harbour plan approved"),
            ("/articles/1", "Sentence 11 of the harbour story"),
            ("/search?q=harbour", "Search"),
        ):
            driver.get(url + path)
            text = driver.find_element("tag name", "body").text
            assert expected in text, (path, text[:300])
            # One column on a phone: nothing wider than the window.
            wide, window = driver.execute_script(
                "return [document.documentElement.scrollWidth, window.innerWidth]"
            )
            assert wide <= window, (path, wide, window)
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, (path, errors)
    finally:
        driver.quit()
