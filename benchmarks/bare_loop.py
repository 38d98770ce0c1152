"""The baseline peer: a bare httpx.AsyncClient (32 concurrent) + feedparser loop, no storage.

    python -m benchmarks.bare_loop BASE_URL FEEDS

Prints one JSON line: the full pass and the conditional pass (ETags kept in memory) in seconds.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import feedparser
import httpx


async def one_pass(client: httpx.AsyncClient, urls: list[str], etags: dict[str, str]) -> int:
    limit = asyncio.Semaphore(32)
    entries = 0

    async def fetch(url: str) -> None:
        nonlocal entries
        headers = {"If-None-Match": etags[url]} if url in etags else {}
        async with limit:
            response = await client.get(url, headers=headers)
        if response.status_code == 304:
            return
        if "etag" in response.headers:
            etags[url] = response.headers["etag"]
        parsed = feedparser.parse(
            response.content,
            response_headers={
                "content-location": url,
                "content-type": response.headers.get("content-type", ""),
            },
        )
        entries += len(parsed.entries)

    await asyncio.gather(*(fetch(u) for u in urls))
    return entries


async def main(base: str, feeds: int) -> dict[str, float]:
    urls = [f"{base}/feed/{i}.xml" for i in range(feeds)]
    etags: dict[str, str] = {}
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=32), timeout=60) as client:
        started = time.monotonic()
        entries = await one_pass(client, urls, etags)
        full = time.monotonic() - started
        started = time.monotonic()
        await one_pass(client, urls, etags)
        conditional = time.monotonic() - started
    return {"full": full, "conditional": conditional, "entries": entries}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], int(sys.argv[2])))))
