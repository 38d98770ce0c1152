"""`aggregator fetch` with trafilatura's own calls timed inside its workers, in the same pass.

    BENCH_SPLIT_DIR=DIR python -m benchmarks.timed_fetch fetch --config aggregator.yaml

Runs the real command (``aggregator.cli.entry``), with timers put around the worker steps and
around trafilatura's calls in ``extract_page`` before the command imports the pipeline. The
workers are forked (``aggregator fetch`` on Linux), so they inherit the timers. Each process
writes a JSON record of CPU seconds into DIR when it exits: a worker at its pool's shutdown
(a multiprocessing finaliser), the command at exit. So the share of trafilatura's own time is
read from the very processes and moment of the pass, not from a second run minutes later on
a machine whose speed moves.

What is timed, with ``time.process_time`` (the calling process's CPU):
- ``traf``: trafilatura's own calls in ``extract_page``: its page loader's steps
  (``aggregator.extractor.load_html``), its metadata steps (``aggregator.page_meta``, called
  as ``aggregator.extractor.page_metadata``) and ``trafilatura.bare_extraction``;
- ``extract_page``: all of it (the rest is our extractor code: the split-body join, the trims,
  image placement, rendering and sanitising);
- ``ingest``, ``extract``, ``finish``: the worker steps (``aggregator.worker``);
- ``startup``: a worker's import of the extractor, when the worker starts;
- ``before_pass``: the command's CPU when its pass begins (``Pipeline.refresh_all``): the
  interpreter, imports, the configuration, opening (and for a new file, migrating) the database,
  starting the workers;
- ``total``: the process's CPU at exit (``RUSAGE_SELF``).
"""

from __future__ import annotations

import atexit
import functools
import importlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ENV = "BENCH_SPLIT_DIR"
# (module, attribute): where extract_page finds trafilatura's calls at call time.
TRAFILATURA_CALLS = (
    ("aggregator.extractor", "load_html"),
    ("aggregator.extractor", "page_metadata"),
    ("trafilatura", "bare_extraction"),
)
_seconds: dict[str, float] = {}


def _timed(key: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)  # the same module and name: the pool pickles steps by name
    def call(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            _seconds[key] = _seconds.get(key, 0.0) + time.process_time() - started

    return call


def _write(kind: str) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    record = {"kind": kind, "pid": os.getpid(), **_seconds, "total": usage.ru_utime + usage.ru_stime}
    if kind == "command":
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        record["children"] = children.ru_utime + children.ru_stime
    path = Path(os.environ[ENV]) / f"{kind}-{os.getpid()}.json"
    path.write_text(json.dumps(record))


def _install() -> None:
    import multiprocessing.util

    import aggregator.worker as worker

    init_worker = worker.init_worker

    @functools.wraps(init_worker)
    def init(*args: Any) -> None:
        _seconds.clear()  # what the command had counted before the fork is not this worker's
        started = time.process_time()
        for module_name, name in (*TRAFILATURA_CALLS, ("aggregator.extractor", "extract_page")):
            module = importlib.import_module(module_name)
            setattr(module, name, _timed("traf" if name != "extract_page" else name, getattr(module, name)))
        _seconds["startup"] = time.process_time() - started
        multiprocessing.util.Finalize(None, _write, args=("worker",), exitpriority=100)
        init_worker(*args)

    worker.init_worker = init
    for name in ("ingest", "extract", "finish"):
        setattr(worker, name, _timed(name, getattr(worker, name)))

    from aggregator.pipeline import Pipeline  # after the steps: it imports them by name

    refresh_all = Pipeline.refresh_all

    @functools.wraps(refresh_all)
    async def timed_refresh_all(*args: Any, **kwargs: Any) -> Any:
        _seconds.setdefault("before_pass", time.process_time())
        return await refresh_all(*args, **kwargs)

    Pipeline.refresh_all = timed_refresh_all  # type: ignore[method-assign]
    atexit.register(_write, "command")


def read(folder: Path) -> dict[str, Any]:
    """Add up the records of a pass: the command's, and the workers' (summed)."""
    records = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    command = [r for r in records if r["kind"] == "command"]
    workers = [r for r in records if r["kind"] == "worker"]
    if len(command) != 1 or not workers:
        raise RuntimeError(f"expected the command's and its workers' records, found {len(records)}")
    keys = ("traf", "extract_page", "ingest", "extract", "finish", "startup", "total")
    summed = {key: sum(r.get(key, 0.0) for r in workers) for key in keys}
    return {"command": command[0], "workers": summed, "worker_count": len(workers)}


def main() -> int:
    if not os.environ.get(ENV):
        raise SystemExit(f"set {ENV} to the folder for the records")
    _install()
    from aggregator.cli import entry as command

    return command(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
