"""Near-duplicate detection quality on the labelled pairs of tests/data/dedup.

    python -m benchmarks.dedup_quality [--data DIR] [--store] [--same-site] [--sweep] [--json]

Each line of ``DIR/pairs.jsonl`` names two texts of ``DIR/docs/`` and says whether they tell the
same story (``duplicate``), which kind of case it is (``case``) and which part of the set it is in
(``split``: ``dev``, on which the thresholds were tuned, or ``test``, held out); ``"site": "same"``
marks two texts of one site (one feed), decided as the store decides those.

A pair is predicted a duplicate the way the store decides it for an article arriving after the
other: the same normalised text (layer 3), or both texts long enough, sharing a band key, and
verified by ``dedup.tells_one_story`` (layer 4). URLs play no part but for their site: every
pair has two URLs, and two texts of one site share its template (header, footer), which is not
taken for evidence there. ``--same-site`` decides every pair as two texts of one site (one feed,
two polls): the figures show what the template rule would cost the other pairs.
With ``--store`` the pairs go through the real ``Store`` instead (a fresh SQLite database per
pair: the first text stored by one feed, the second by another, or by the same one for a pair of
one site, and the second's ``duplicate_of`` read back), which checks the candidate query and the
verification end to end.

Precision = TP / (TP + FP) and recall = TP / (TP + FN), over the pairs of each split and all.
``--sweep`` shows the figures on the dev split for other values of ``MIN_CONTAINMENT``.
Time is the mean wall time of ``dedup.text_profile`` per text (words, shingles, MinHash, band
keys), and the same scaled to 500 words.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aggregator import dedup

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "dedup"
SPLITS = ("dev", "test", "all")


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    duplicate: bool
    case: str
    split: str
    same_site: bool = False


def load(data_dir: Path = DEFAULT_DATA) -> tuple[dict[str, str], list[Pair]]:
    """Return the texts by name and the labelled pairs; raise FileNotFoundError if absent."""
    texts = {
        path.stem: path.read_text(encoding="utf-8") for path in sorted((data_dir / "docs").glob("*.txt"))
    }
    pairs = []
    for line in (data_dir / "pairs.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            same_site = item.get("site") == "same"
            pairs.append(
                Pair(item["a"], item["b"], bool(item["duplicate"]), item["case"], item["split"], same_site)
            )
    missing = {name for pair in pairs for name in (pair.a, pair.b)} - texts.keys()
    if missing:
        raise FileNotFoundError(f"pairs name texts that {data_dir / 'docs'} lacks: {sorted(missing)}")
    return texts, pairs


def predict(
    first: str, second: str, min_containment: float = dedup.MIN_CONTAINMENT, *, same_site: bool = False
) -> bool:
    """Return whether the store would take ``second`` for a copy of ``first`` on their texts
    (two texts of one site when ``same_site``)."""
    digest = dedup.text_hash(first)
    if digest is not None and digest == dedup.text_hash(second):
        return True
    a, b = dedup.text_profile(first), dedup.text_profile(second)
    if a is None or b is None or not set(a.band_keys) & set(b.band_keys):
        return False
    if dedup.containment(a.shingles, b.shingles) < min_containment:
        return False
    # Two texts of one site: the template rule too (which checks them at MIN_CONTAINMENT itself:
    # a sweep below it leaves those pairs as they are at MIN_CONTAINMENT).
    return not same_site or dedup.tells_one_story(a.words, a.shingles, b.words, b.shingles, same_site=True)


def predict_with_store(texts: dict[str, str], pairs: list[Pair], *, same_site: bool = False) -> list[bool]:
    """Return the store's decision for each pair (second text stored after the first, by another
    feed of another site, or by the same feed when the pair or ``same_site`` says so)."""
    from aggregator.models import FetchRecord, NewArticle
    from aggregator.storage import Store

    now = datetime.now(UTC)
    record = FetchRecord(200, None, None, "Feed", None, now, now)

    def article(name: str, feed: str) -> NewArticle:
        text = texts[name]
        url = f"https://{feed}.example/{name}"
        return NewArticle(feed, name, url, name, None, now, "", text, "", "page", dedup.text_hash(text))

    decisions = []
    with tempfile.TemporaryDirectory() as folder:
        template = Path(folder) / "template.db"
        Store.open(f"sqlite:///{template}").close()  # migrated once, copied for every pair
        for number, pair in enumerate(pairs):
            path = Path(folder) / f"pair{number}.db"
            shutil.copy(template, path)
            store = Store.open(f"sqlite:///{path}")
            try:
                store.store_refresh("https://a.example/feed", [article(pair.a, "a")], record)
                second = "a" if same_site or pair.same_site else "b"
                store.store_refresh(f"https://{second}.example/feed", [article(pair.b, second)], record)
                by_url = {stored.url: stored for stored in store.list_articles()}
            finally:
                store.close()
            first, later = by_url[f"https://a.example/{pair.a}"], by_url[f"https://{second}.example/{pair.b}"]
            decisions.append(later.duplicate_of == first.id)
            path.unlink()
    return decisions


def figures(pairs: list[Pair], predicted: list[bool]) -> dict[str, Any]:
    """Return counts, precision, recall and F1 of ``predicted`` against the labels."""
    tp = sum(p.duplicate and guess for p, guess in zip(pairs, predicted, strict=True))
    fp = sum(not p.duplicate and guess for p, guess in zip(pairs, predicted, strict=True))
    fn = sum(p.duplicate and not guess for p, guess in zip(pairs, predicted, strict=True))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "pairs": len(pairs),
        "duplicates": tp + fn,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def evaluate(
    data_dir: Path = DEFAULT_DATA, *, store: bool = False, sweep: bool = False, same_site: bool = False
) -> dict[str, Any]:
    """Return the figures per split, per case, the wrong pairs, the cost per text and the sweep."""
    texts, pairs = load(data_dir)
    if store:
        predicted = predict_with_store(texts, pairs, same_site=same_site)
    else:
        predicted = [predict(texts[p.a], texts[p.b], same_site=same_site or p.same_site) for p in pairs]
    results: dict[str, Any] = {
        "data": str(data_dir),
        "method": "store" if store else "functions",
        "same_site": same_site,
        "min_containment": dedup.MIN_CONTAINMENT,
        "parameters": {
            "shingle_words": dedup.SHINGLE_WORDS,
            "permutations": dedup.PERMUTATIONS,
            "bands": dedup.BANDS,
            "rows": dedup.ROWS,
            "min_words": dedup.MIN_WORDS_FOR_TEXT_MATCH,
        },
        "splits": {},
        "cases": {},
        "wrong": [],
    }
    for split in SPLITS:
        chosen = [i for i, p in enumerate(pairs) if split in ("all", p.split)]
        results["splits"][split] = figures([pairs[i] for i in chosen], [predicted[i] for i in chosen])
    cases: dict[tuple[str, bool], Counter[bool]] = {}
    for pair, guess in zip(pairs, predicted, strict=True):
        cases.setdefault((pair.case, pair.duplicate), Counter())[guess == pair.duplicate] += 1
    results["cases"] = {
        f"{case} ({'duplicate' if duplicate else 'not'})": {"right": c[True], "wrong": c[False]}
        for (case, duplicate), c in sorted(cases.items(), key=lambda item: (not item[0][1], item[0][0]))
    }
    for pair, guess in zip(pairs, predicted, strict=True):
        if guess != pair.duplicate:
            a, b = dedup.text_shingles(texts[pair.a]), dedup.text_shingles(texts[pair.b])
            results["wrong"].append(
                {
                    "a": pair.a,
                    "b": pair.b,
                    "duplicate": pair.duplicate,
                    "split": pair.split,
                    "containment": dedup.containment(a, b) if a and b else None,
                    "jaccard": dedup.jaccard(a, b) if a and b else None,
                }
            )
    results["cost"] = _cost(texts)
    if sweep:
        dev = [p for p in pairs if p.split == "dev"]
        results["sweep"] = {
            f"{threshold:.2f}": figures(
                dev,
                [predict(texts[p.a], texts[p.b], threshold, same_site=same_site or p.same_site) for p in dev],
            )
            for threshold in [0.25 + 0.05 * step for step in range(12)]
        }
    return results


def _cost(texts: dict[str, str]) -> dict[str, float]:
    words = sum(len(dedup.normalise_words(text)) for text in texts.values())
    for text in texts.values():
        dedup.text_profile(text)  # warm-up
    rounds = 5
    started = time.perf_counter()
    for _ in range(rounds):
        for text in texts.values():
            dedup.text_profile(text)
    seconds = (time.perf_counter() - started) / rounds
    return {
        "texts": len(texts),
        "mean_words": words / len(texts),
        "ms_per_text": 1000 * seconds / len(texts),
        "ms_per_500_words": 1000 * seconds / words * 500,
    }


def table(results: dict[str, Any]) -> str:
    """Return the figures as Markdown."""
    p = results["parameters"]
    lines = [
        f"Shingles of {p['shingle_words']} words, {p['permutations']} hash functions, "
        f"{p['bands']} bands × {p['rows']} rows, containment ≥ {results['min_containment']}, "
        f"texts under {p['min_words']} words never matched; decided by the {results['method']}"
        f"{', every pair as two texts of one site' if results.get('same_site') else ''}.",
        "",
        "| split | pairs | duplicates | TP | FP | FN | precision | recall | F1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for split, f in results["splits"].items():
        lines.append(
            f"| {split} | {f['pairs']} | {f['duplicates']} | {f['tp']} | {f['fp']} | {f['fn']} "
            f"| {f['precision']:.3f} | {f['recall']:.3f} | {f['f1']:.3f} |"
        )
    lines += ["", "| case | right | wrong |", "|---|---|---|"]
    lines += [f"| {case} | {c['right']} | {c['wrong']} |" for case, c in results["cases"].items()]
    if results["wrong"]:
        lines += ["", "Wrong:"]
        for w in results["wrong"]:
            detail = (
                f"containment {w['containment']:.2f}, Jaccard {w['jaccard']:.2f}"
                if w["containment"] is not None
                else "under the word minimum"
            )
            label = "duplicate" if w["duplicate"] else "not a duplicate"
            lines.append(f"- {w['a']} / {w['b']} ({w['split']}, {label}): {detail}")
    if "sweep" in results:
        lines += ["", "Dev split by MIN_CONTAINMENT:", "", "| threshold | FP | FN | precision | recall |"]
        lines.append("|---|---|---|---|---|")
        for threshold, f in results["sweep"].items():
            lines.append(
                f"| {threshold} | {f['fp']} | {f['fn']} | {f['precision']:.3f} | {f['recall']:.3f} |"
            )
    c = results["cost"]
    lines += [
        "",
        f"Cost: {c['ms_per_text']:.2f} ms per text ({c['texts']} texts, {c['mean_words']:.0f} words on "
        f"average), {c['ms_per_500_words']:.2f} ms per 500 words.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dedup_quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"labelled set (default: {DEFAULT_DATA})"
    )
    parser.add_argument("--store", action="store_true", help="decide each pair with the real Store (SQLite)")
    parser.add_argument(
        "--same-site", action="store_true", help="both texts of each pair from one site (the template rule)"
    )
    parser.add_argument("--sweep", action="store_true", help="figures on the dev split for other thresholds")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    try:
        results = evaluate(args.data, store=args.store, sweep=args.sweep, same_site=args.same_site)
    except FileNotFoundError as exc:
        print(f"no labelled set at {args.data}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2) if args.json else table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
