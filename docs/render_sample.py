"""Render docs/sample-digest.html (and .png with Chromium) from the test fixtures.

    python docs/render_sample.py

Serves tests/data on 127.0.0.1, runs `aggregator fetch` and `aggregator digest --output` against
it with a throw-away SQLite database, then screenshots the HTML in headless Chromium if present.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from aggregator.cli import main

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
ROUTES = {
    "/gazette/feed/": ("feeds/gazette.rss", "application/rss+xml"),
    "/gazette/haftar-meets-lavrov/": ("pages/gazette-haftar.html", "text/html"),
    "/gazette/coastguard-training/": ("pages/gazette-coastguard.html", "text/html"),
    "/gazette/fishermen-rescue/": ("pages/gazette-fishermen.html", "text/html"),
    "/wire/feed": ("feeds/wire.atom", "application/atom+xml"),
    "/wire/haftar-moscow-lavrov-123": ("pages/wire-haftar.html", "text/html"),
    "/blog/feed": ("feeds/full-content.rss", "application/rss+xml"),
}
# A round-up feed that links the Gazette's story, to show "Also in" in the sample.
ROUNDUP = """<?xml version="1.0"?><rss version="2.0"><channel><title>Maghreb Round-up</title>
<link>{base}/roundup/</link><item><title>Haftar in Moscow</title>
<link>{base}/gazette/haftar-meets-lavrov/?utm_source=roundup</link><guid>roundup-1</guid>
<description>Haftar met Lavrov in Moscow.</description></item></channel></rss>"""


def serve() -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/roundup/feed":
                body, kind = ROUNDUP.replace("{base}", base), "application/rss+xml"
            elif path in ROUTES:
                name, kind = ROUTES[path]
                body = (DATA / name).read_text(encoding="utf-8").replace("{base}", base)
            else:
                self.send_error(404)
                return
            data = body.encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", f"{kind}; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, base


def main_render() -> int:
    server, base = serve()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            feeds = [
                {"url": f"{base}/gazette/feed/", "name": "Libyan Gazette", "tags": ["world"]},
                {"url": f"{base}/wire/feed", "name": "Wire News", "tags": ["world"]},
                {"url": f"{base}/roundup/feed", "name": "Maghreb Round-up", "tags": ["world"]},
                {"url": f"{base}/blog/feed", "name": "Full Content Blog", "tags": ["blogs"]},
            ]
            (folder / "feeds.yaml").write_text(yaml.safe_dump({"feeds": feeds}))
            config = {
                "database_url": f"sqlite:///{folder / 'sample.db'}",
                "fetch": {"allow_private_networks": True},
                "extract": {"workers": 0},
                "digest": {"send_at": "07:00", "timezone": "Europe/London"},
            }
            (folder / "aggregator.yaml").write_text(yaml.safe_dump(config))
            args = ["--config", str(folder / "aggregator.yaml")]
            if main(["fetch", *args]) != 0:
                return 1
            html = ROOT / "docs" / "sample-digest.html"
            if main(["digest", "--output", str(html), *args]) != 0:
                return 1
    finally:
        server.shutdown()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("Chromium not found: skipped docs/sample-digest.png", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--screenshot={ROOT / 'docs' / 'sample-digest.png'}",
                "--window-size=760,2400",
                html.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    print("wrote docs/sample-digest.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_render())
