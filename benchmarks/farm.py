"""A loopback feed farm: N RSS feeds on 127.0.0.1 with ETag/Last-Modified, gzip and latency.

Run it on its own (`python -m benchmarks.farm --feeds 1000 --latency-ms 50`) or through
``start_farm()``, which runs it in a child process so that serving does not compete with the
measured process for the GIL. Feed i is at /feed/i.xml; its items link to /page/i/j.html.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

ITEMS_PER_FEED = 20
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "is",
    "that",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "this",
    "be",
    "are",
    "was",
    "an",
    "or",
    "it",
    "not",
    "have",
    "which",
    "were",
    "their",
    "has",
    "its",
    "but",
    "been",
    "one",
    "more",
    "also",
    "new",
    "after",
    "first",
    "two",
    "other",
    "when",
    "over",
    "years",
    "government",
    "city",
    "people",
    "could",
    "would",
    "said",
    "percent",
    "market",
    "report",
    "council",
    "minister",
    "week",
]
LAST_MODIFIED = format_datetime(datetime(2026, 11, 27, 6, 0, tzinfo=UTC), usegmt=True)


def paragraph(seed: int, words: int = 60) -> str:
    digest = hashlib.sha256(str(seed).encode()).digest()
    return " ".join(WORDS[(digest[i % 32] + i * 7) % len(WORDS)] for i in range(words)).capitalize() + "."


def _seed(*parts: object) -> int:
    # hash() is salted per process; the farm must serve the same bytes in every run.
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=4).digest(), "big")


# What each farm entry gives of its own, which the pipeline does not look for on its page
# (extractor.extract_page's feed_has): a pubDate on every item, no author.
ENTRY_GIVES = ("date",)


def feed_xml(index: int, base: str, items: int = ITEMS_PER_FEED, generation: int = 0) -> bytes:
    """Return feed ``index``: ~``items`` items of ~2 KB each (about 40 KB in all)."""
    now = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
    parts = [
        '<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel>'
        f"<title>Farm feed {index}</title><link>{base}/site/{index}/</link>"
        f"<description>Loopback feed {index}</description>"
    ]
    for j in range(items):
        key = f"{index}-{generation}-{j}"
        body = "".join(f"&lt;p&gt;{paragraph(_seed(key, p))}&lt;/p&gt;" for p in range(5))
        published = format_datetime(now - timedelta(hours=j + index % 24), usegmt=True)
        parts.append(
            f"<item><title>Story {key}: {paragraph(j, 8)}</title>"
            f"<link>{base}/page/{index}/{generation}-{j}.html</link>"
            f'<guid isPermaLink="false">farm-{key}</guid><pubDate>{published}</pubDate>'
            f"<description>{body}</description></item>"
        )
    parts.append("</channel></rss>")
    return "".join(parts).encode()


def page_html(index: int, item: str) -> bytes:
    paragraphs = "".join(f"<p>{paragraph(_seed(index, item, p), 70)}</p>" for p in range(8))
    return (
        f"<!DOCTYPE html><html><head><title>Story {index}-{item}</title>"
        f'<meta name="author" content="Farm Writer {index}"></head><body>'
        '<header><nav><a href="/">Home</a> <a href="/world">World</a></nav></header>'
        f"<article><h1>Story {index}-{item}</h1>{paragraphs}</article>"
        "<aside><h3>Related</h3><ul><li><a href='/x'>Other story</a></li></ul></aside>"
        "<footer>© Farm</footer></body></html>"
    ).encode()


class Farm:
    def __init__(
        self,
        feeds: int,
        latency: float,
        base: str,
        pages: list[bytes] | None = None,
        churn_seconds: float = 0,
    ) -> None:
        self.feeds, self.latency, self.base = feeds, latency, base
        self.pages = pages or []
        self.churn = churn_seconds
        self._plain: dict[tuple[int, int], bytes] = {}
        self._gzip: dict[tuple[int, int], bytes] = {}

    def generation(self, index: int) -> int:
        """With churn, feed i gets new items every ``churn`` seconds (feeds staggered)."""
        if not self.churn:
            return 0
        return int((time.monotonic() + index * self.churn / max(1, self.feeds)) // self.churn)

    def body(self, index: int, gzipped: bool) -> bytes:
        key = (index, self.generation(index))
        if key not in self._plain:
            if self.churn:  # keep only the current generation of each feed
                for old in [k for k in self._plain if k[0] == index]:
                    del self._plain[old], self._gzip[old]
            self._plain[key] = feed_xml(index, self.base, generation=key[1])
            self._gzip[key] = gzip.compress(self._plain[key], compresslevel=5)
        return self._gzip[key] if gzipped else self._plain[key]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                if self.latency:
                    await asyncio.sleep(self.latency)
                writer.write(self.respond(path, headers))
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def respond(self, path: str, headers: dict[str, str]) -> bytes:
        status, extra, body = "200 OK", {}, b""
        if path.startswith("/feed/") and path.endswith(".xml"):
            index = int(path[6:-4])
            etag = f'"farm-{index}-{self.generation(index)}"'
            if index >= self.feeds:
                status, body = "404 Not Found", b"no such feed"
            elif headers.get("if-none-match") == etag or (
                not self.churn and headers.get("if-modified-since") == LAST_MODIFIED
            ):
                status = "304 Not Modified"
                extra = {"ETag": etag, "Last-Modified": LAST_MODIFIED}
            else:
                gzipped = "gzip" in headers.get("accept-encoding", "")
                body = self.body(index, gzipped)
                extra = {
                    "ETag": etag,
                    "Last-Modified": LAST_MODIFIED,
                    "Content-Type": "application/rss+xml; charset=utf-8",
                }
                if gzipped:
                    extra["Content-Encoding"] = "gzip"
        elif path.startswith("/page/"):
            _, _, index, item = path.split("/", 3)
            if self.pages:  # real pages, in turn
                body = self.pages[(int(index) * ITEMS_PER_FEED + _item_number(item)) % len(self.pages)]
            else:
                body = page_html(int(index), item)
            extra = {"Content-Type": "text/html; charset=utf-8"}
        else:
            status, body = "404 Not Found", b"not found"
        head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in extra.items()]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _item_number(item: str) -> int:
    digits = "".join(c for c in item.split("-")[-1] if c.isdigit())
    return int(digits) if digits else 0


def serve(
    sock: socket.socket,
    feeds: int,
    latency_ms: float,
    ready: Any = None,
    pages_dir: str | None = None,
    churn_seconds: float = 0,
) -> None:
    """Serve the farm on an already bound socket until SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    host, port = sock.getsockname()[:2]
    pages = [p.read_bytes() for p in sorted(Path(pages_dir).glob("*.html"))] if pages_dir else None
    farm = Farm(feeds, latency_ms / 1000, f"http://{host}:{port}", pages, churn_seconds)
    # Every body is made before serving, so that no client pays for the farm's own work.
    for index in range(feeds):
        farm.body(index, True)
    if ready is not None:
        ready.set()

    async def main() -> None:
        server = await asyncio.start_server(farm.handle, sock=sock, backlog=4096, limit=65536)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


@contextmanager
def start_farm(
    feeds: int, latency_ms: float = 0, pages_dir: Path | None = None, churn_seconds: float = 0
) -> Iterator[str]:
    """Run the farm in a child process on 127.0.0.1; yield its base URL.

    With ``pages_dir``, article pages are the HTML files there (real pages), in turn.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    port = sock.getsockname()[1]
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    process = context.Process(
        target=serve,
        args=(sock, feeds, latency_ms, ready, str(pages_dir) if pages_dir else None, churn_seconds),
        daemon=True,
    )
    process.start()
    sock.close()
    if not ready.wait(timeout=600):
        process.terminate()
        raise RuntimeError("the feed farm did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.join(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--port", type=int, default=8800)
    options = parser.parse_args()
    listener = socket.create_server(("127.0.0.1", options.port), backlog=4096)
    print(f"serving {options.feeds} feeds on http://127.0.0.1:{options.port}/feed/N.xml")
    serve(listener, options.feeds, options.latency_ms)
