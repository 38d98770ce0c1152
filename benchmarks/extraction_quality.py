"""Article text extraction quality on the dev part of the article-extraction benchmark.

    python -m benchmarks.extraction_quality [--data DIR] [--json]

Runs ``aggregator.extractor.extract_page`` (its ``.text``; ``None`` is an empty prediction) and, as the
reference, bare ``trafilatura.extract(html, url=url)`` with default options, on every page listed in
``DIR/ids.txt`` (the page's url comes from ``DIR/ground-truth.json``). DIR defaults to
``../shared/data/extraction/dev`` next to the repository.

The metric is the one of the source benchmark (scrapinghub/article-extraction-benchmark, ``evaluate.py``)
and of the data's README:

- tokens are ``\\w+`` runs (Unicode, case kept);
- a text becomes the multiset of its overlapping 4-token shingles; a text of 1-3 tokens is one shingle,
  and an empty text has none;
- per page, TP is the multiset overlap of the prediction's and the truth's shingles, FP the prediction's
  surplus and FN its shortfall; the three are divided by their sum, so that long pages weigh no more
  than short ones;
- precision = TP/(TP+FP), averaged over the pages with a non-empty prediction; recall = TP/(TP+FN),
  averaged over the pages with a non-empty truth (a page where FP = FN = 0 scores 1 for both);
- F1 = 2PR/(P+R) of those two averages (not an average of per-page F1s);
- accuracy = the share of pages whose token sequence equals the truth's exactly;
- "±" is the standard deviation of each figure over bootstrap resamples of the pages (1000, fixed seed).

Time is the mean wall time of one call per page, in milliseconds, measured in this process after one
warm-up call each (the two extractors alternate page by page, so both see the same machine state).

Check of the metric: bare trafilatura 2.3.1 scores precision 0.929, F1 0.952 here, the figures
published for it on this dev set.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/extraction/dev"
SHINGLE = 4
BOOTSTRAP = 1000
SEED = 20200101

_TOKEN = re.compile(r"\w+", re.UNICODE)

Scores = tuple[float, float, float]


def tokenize(text: str | None) -> list[str]:
    """Return the ``\\w+`` tokens of ``text`` (case kept); none for None."""
    return _TOKEN.findall(text or "")


def shingles(text: str | None, n: int = SHINGLE) -> Counter[tuple[str, ...]]:
    """Return the multiset of overlapping ``n``-token shingles (1-3 tokens make one shingle)."""
    tokens = tokenize(text)
    if not tokens:
        return Counter()
    return Counter(tuple(tokens[i : i + n]) for i in range(max(1, len(tokens) - n + 1)))


def match(truth: str | None, prediction: str | None) -> Scores:
    """Return the page's (TP, FP, FN) shingle counts, divided by their sum."""
    want, got = shingles(truth), shingles(prediction)
    tp = sum((want & got).values())
    fp = sum((got - want).values())
    fn = sum((want - got).values())
    total = tp + fp + fn
    return (tp / total, fp / total, fn / total) if total else (0.0, 0.0, 0.0)


def _precision(tp: float, fp: float, fn: float) -> float:
    return 1.0 if fp == fn == 0 else tp / (tp + fp)


def _recall(tp: float, fp: float, fn: float) -> float:
    return 1.0 if fp == fn == 0 else tp / (tp + fn)


def summarize(pages: Sequence[Scores], exact: Sequence[bool]) -> dict[str, float]:
    """Return precision, recall, F1 and accuracy over ``pages`` (see the module docstring)."""
    precisions = [_precision(*page) for page in pages if page[0] + page[1] > 0]
    recalls = [_recall(*page) for page in pages if page[0] + page[2] > 0]
    precision = statistics.fmean(precisions) if precisions else 0.0
    recall = statistics.fmean(recalls) if recalls else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = statistics.fmean(exact) if exact else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": accuracy}


def score(
    pages: Sequence[Scores], exact: Sequence[bool], *, n_bootstrap: int = BOOTSTRAP, seed: int = SEED
) -> dict[str, float]:
    """Return :func:`summarize` of ``pages`` plus a bootstrap ``<name>_std`` for each figure."""
    figures = summarize(pages, exact)
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {name: [] for name in figures}
    for _ in range(n_bootstrap if len(pages) > 1 else 0):
        picked = [rng.randrange(len(pages)) for _ in pages]
        resampled = summarize([pages[i] for i in picked], [exact[i] for i in picked])
        for name, value in resampled.items():
            samples[name].append(value)
    for name in list(figures):
        figures[f"{name}_std"] = statistics.stdev(samples[name]) if len(samples[name]) > 1 else 0.0
    return figures


def _extractors() -> dict[str, Callable[[str, str | None], str | None]]:
    from aggregator.extractor import extract_page

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="SOCKS support in urllib3")
        import trafilatura

    def ours(html: str, url: str | None) -> str | None:
        page = extract_page(html, url)
        return page.text if page is not None else None

    def bare(html: str, url: str | None) -> str | None:
        return trafilatura.extract(html, url=url)

    return {"aggregator": ours, f"trafilatura {trafilatura.__version__} (bare)": bare}


def load_pages(data_dir: Path, limit: int | None = None) -> list[tuple[str, str, str | None, str]]:
    """Return (id, html, url, expected text) for the pages listed in ``data_dir/ids.txt``."""
    truth = json.loads((data_dir / "ground-truth.json").read_text(encoding="utf-8"))
    ids = [line.strip() for line in (data_dir / "ids.txt").read_text().splitlines() if line.strip()]
    pages = []
    for page_id in ids[:limit]:
        html = (data_dir / "html" / f"{page_id}.html").read_text(encoding="utf-8")
        item = truth[page_id]
        pages.append((page_id, html, item.get("url"), item.get("articleBody") or ""))
    return pages


def evaluate(data_dir: Path = DEFAULT_DATA, *, limit: int | None = None) -> dict[str, Any]:
    """Return the figures of each extractor on the data set (the first ``limit`` pages if given).

    Shape: ``{"data": str, "pages": int, "reference": name of bare trafilatura, "extractors":
    {name: {"precision", "recall", "f1", "accuracy", "<each>_std", "ms_per_page"}}}``.
    Raises FileNotFoundError when the data is absent.
    """
    data_dir = Path(data_dir)
    pages = load_pages(data_dir, limit)
    extractors = _extractors()
    if pages:
        _, html, url, _ = pages[0]
        for extract in extractors.values():
            extract(html, url)  # warm-up: lazy imports and trafilatura's first-call set-up
    matches: dict[str, list[Scores]] = {name: [] for name in extractors}
    exact: dict[str, list[bool]] = {name: [] for name in extractors}
    seconds = dict.fromkeys(extractors, 0.0)
    for _, html, url, truth in pages:
        want = tokenize(truth)
        for name, extract in extractors.items():
            started = time.perf_counter()
            text = extract(html, url)
            seconds[name] += time.perf_counter() - started
            matches[name].append(match(truth, text))
            exact[name].append(tokenize(text) == want)
    results = {}
    for name in extractors:
        figures = score(matches[name], exact[name])
        figures["ms_per_page"] = 1000 * seconds[name] / max(1, len(pages))
        results[name] = figures
    reference = list(extractors)[-1]
    return {"data": _shown_path(data_dir), "pages": len(pages), "reference": reference, "extractors": results}


def _shown_path(path: Path) -> str:
    """Return ``path`` relative to the repository (``../shared/...``): the same on every machine."""
    return os.path.relpath(path.resolve(), Path(__file__).resolve().parents[1])


def table(results: dict[str, Any]) -> str:
    """Return a Markdown table of ``evaluate``'s figures."""
    lines = [
        "| extractor | precision | recall | F1 | accuracy | ms/page |",
        "|---|---|---|---|---|---|",
    ]
    for name, f in results["extractors"].items():
        cells = [f"{f[key]:.3f} ± {f[key + '_std']:.3f}" for key in ("precision", "recall", "f1", "accuracy")]
        lines.append(f"| {name} | {' | '.join(cells)} | {f['ms_per_page']:.1f} |")
    reference = results["extractors"][results["reference"]]["ms_per_page"]
    costs = ", ".join(
        f"{name} {f['ms_per_page'] / reference:.1f}×"
        for name, f in results["extractors"].items()
        if name != results["reference"] and reference
    )
    return (
        "\n".join(lines)
        + f"\n\n{results['pages']} pages from `{results['data']}`; time per page against bare trafilatura: "
        + f"{costs}.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.extraction_quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"data set (default: {DEFAULT_DATA})")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if not (args.data / "ids.txt").is_file() or not (args.data / "ground-truth.json").is_file():
        print(
            f"no extraction data set at {args.data} (expected ids.txt, ground-truth.json and html/); "
            "pass --data DIR",
            file=sys.stderr,
        )
        return 2
    results = evaluate(args.data)
    print(json.dumps(results, indent=2) if args.json else table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
