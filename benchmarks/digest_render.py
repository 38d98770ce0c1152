"""Digest build and render: 1,000 and 10,000 candidate articles (synthetic), wall time and
peak RSS. Target (issue 6): 10,000 candidates in under 1 s, peak RSS under 200 MB.

    python -m benchmarks.digest_render
"""

from __future__ import annotations

import json
import resource
import sys
import time
from datetime import UTC, datetime, timedelta

from aggregator.config import DigestSettings, FeedConfig
from aggregator.digest import build_digest, render_message
from aggregator.models import StoredArticle

NOW = datetime(2026, 11, 28, 7, 0, tzinfo=UTC)


def candidates(count: int, feeds: int = 50) -> tuple[list[StoredArticle], list[FeedConfig]]:
    configs = [
        FeedConfig(url=f"https://site{f}.example/feed", name=f"Site {f}", tags=[f"topic{f % 7}"])
        for f in range(feeds)
    ]
    sentence = "The council voted on the new budget after a long debate about schools and roads. "
    articles = []
    for i in range(count):
        feed = configs[i % feeds]
        duplicate = i - 1 if i % 10 == 9 else None  # every tenth one is a copy of the previous
        articles.append(
            StoredArticle(
                i + 1,
                feed.url,
                feed.display_name,
                f"https://site{i % feeds}.example/{i}",
                f"Story number {i}: council budget debate",
                "A. Writer",
                NOW - timedelta(minutes=i),
                NOW,
                "",
                sentence * 25,
                "",
                "page",
                duplicate + 1 if duplicate is not None else None,
            )
        )
    return articles, configs


def measure(count: int) -> dict[str, float]:
    articles, feeds = candidates(count)
    settings = DigestSettings()
    started = time.perf_counter()
    digest = build_digest(articles, set(), feeds, settings, NOW)
    assert digest is not None
    message = render_message(digest, settings, NOW)
    seconds = time.perf_counter() - started
    size = len(message.get_body(preferencelist=("html",)).get_content().encode())
    return {"candidates": count, "seconds": seconds, "html_bytes": size}


def table(sizes: list[int]) -> str:
    """Measure each size and return a Markdown table (peak RSS is this process's)."""
    rows = [measure(size) for size in sizes]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = ["| candidates | build + render (s) | HTML part (KB) |", "|---:|---:|---:|"]
    lines += [
        f"| {row['candidates']:,} | {row['seconds']:.2f} | {row['html_bytes'] / 1000:.0f} |" for row in rows
    ]
    return "\n".join(lines) + f"\n\nPeak RSS of the measuring process: {peak_mb:.0f} MB.\n"


def main() -> int:
    if "--json" in sys.argv:
        rows = [measure(1000), measure(10_000)]
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"rows": rows, "peak_rss_mb": peak_mb}))
        return 0
    print(table([1000, 10_000]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
