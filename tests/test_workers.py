"""The worker pool on its own: real processes, forked and spawned."""

from __future__ import annotations

import asyncio
import functools
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

import pytest

from aggregator.workers import RemoteTraceback, WorkerPool

T = TypeVar("T")
METHODS = ["fork", "spawn"] if sys.platform == "linux" else ["spawn"]


def echo(value: Any, seconds: float = 0.0) -> Any:
    time.sleep(seconds)
    return value


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def fail(message: str) -> None:
    raise ValueError(message)


def unpicklable() -> Any:
    return lambda: None


def die() -> None:
    os._exit(3)


def exit_after(seconds: float) -> None:
    time.sleep(seconds)
    os._exit(3)


_HELD: list[bytes] = []


def grow(megabytes: int) -> int:
    """Keep ``megabytes`` more of resident memory (written, so resident) for good."""
    _HELD.append(b"x" * (megabytes * 2**20))
    return os.getpid()


def finished(label: str, seconds: float) -> tuple[str, float]:
    time.sleep(seconds)
    return label, time.monotonic()


def labelled(label: str) -> tuple[str, float]:
    time.sleep(0.1)  # long enough for the pool to send the next job meanwhile
    return label, time.monotonic()


def run(coroutine: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, 60)

    return asyncio.run(bounded())


def drive(pool: WorkerPool, go: Callable[[], Awaitable[None]]) -> None:
    """Run ``go`` on a loop of its own, then shut ``pool`` down, whatever happened."""
    try:
        run(go())
    finally:
        pool.shutdown()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("method", METHODS)
def test_jobs_run_in_the_workers_and_their_outcomes_come_back(method: str) -> None:
    pool = WorkerPool(2, method=method)
    big = os.urandom(3 * 2**20)  # many socket buffers, both ways

    async def go() -> None:
        # The pool's first callers, together: each gets a worker of its own.
        first = await asyncio.gather(*(pool.run(functools.partial(pid_after, 0.3)) for _ in range(2)))
        assert len(set(first)) == 2 and os.getpid() not in first
        pids = await asyncio.gather(*(pool.run(os.getpid) for _ in range(20)))
        assert set(pids) <= set(first)
        assert await pool.run(functools.partial(echo, big)) == big
        with pytest.raises(ValueError, match="bad input") as raised:
            await pool.run(functools.partial(fail, "bad input"))
        assert isinstance(raised.value.__cause__, RemoteTraceback)
        assert "in fail" in str(raised.value.__cause__)
        with pytest.raises(RuntimeError, match="could not be sent"):
            await pool.run(unpicklable)
        with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
            await pool.run(functools.partial(echo, lambda: None))  # a job that cannot go
        # Neither failure cost a worker; outcomes go to their own callers.
        values = await asyncio.gather(
            *(pool.run(functools.partial(echo, i, 0.01 * (i % 3))) for i in range(30))
        )
        assert values == list(range(30))

    drive(pool, go)
    assert not any(process.is_alive() for process in pool.processes)


@pytest.mark.parametrize("method", METHODS)
def test_a_dead_worker_fails_only_the_job_it_ran_and_is_replaced(method: str) -> None:
    pool = WorkerPool(2, method=method)  # a forked pool's replacement is spawned

    async def go() -> None:
        first = set(await asyncio.gather(pool.run(os.getpid), pool.run(os.getpid)))  # both started
        slow = asyncio.ensure_future(pool.run(functools.partial(echo, "done", 0.5)))
        await asyncio.sleep(0.1)
        with pytest.raises(BrokenProcessPool, match="running this job died"):
            await pool.run(die)
        assert await slow == "done"  # the other worker's job was not lost with it
        later = await asyncio.gather(*(pool.run(functools.partial(pid_after, 0.1)) for _ in range(4)))
        assert len(set(later)) == 2 and len(set(later) & first) == 1  # one survivor, one newcomer
        assert {process.pid for process in pool.processes} == set(later)
        assert not pool.broken

    drive(pool, go)


def test_the_job_behind_the_one_that_killed_its_worker_runs_in_its_replacement() -> None:
    pool = WorkerPool(1, method="spawn")

    async def go() -> None:
        (dead,) = {await pool.run(os.getpid)}
        dying = asyncio.ensure_future(pool.run(functools.partial(exit_after, 0.2)))
        behind = asyncio.ensure_future(pool.run(os.getpid))  # in the worker's socket already
        with pytest.raises(BrokenProcessPool):
            await dying
        assert await behind != dead

    drive(pool, go)


def test_the_job_behind_the_one_that_killed_its_worker_goes_to_a_free_worker_first() -> None:
    pool = WorkerPool(2, method="spawn")

    async def go() -> None:
        await asyncio.gather(pool.run(os.getpid), pool.run(os.getpid))
        dying = asyncio.ensure_future(pool.run(functools.partial(exit_after, 0.8)))
        other = asyncio.ensure_future(pool.run(functools.partial(pid_after, 0.2)))
        await asyncio.sleep(0.05)
        behind = asyncio.ensure_future(pool.run(os.getpid))  # both hold one: behind the dying job
        with pytest.raises(BrokenProcessPool):
            await dying
        assert await behind == await other  # the free worker's, not left for the replacement

    drive(pool, go)


def test_a_job_over_its_timeout_fails_its_worker_is_killed_and_the_others_carry_on() -> None:
    pool = WorkerPool(2, method="spawn")

    async def go() -> None:
        await asyncio.gather(pool.run(os.getpid), pool.run(os.getpid))
        started = time.monotonic()
        stuck = asyncio.ensure_future(pool.run(functools.partial(pid_after, 30), timeout=0.5))
        other = asyncio.ensure_future(pool.run(functools.partial(echo, "other", 1.5)))
        with pytest.raises(TimeoutError):
            await stuck
        assert time.monotonic() - started < 5
        assert await other == "other"  # the other worker was left alone
        assert all(process.is_alive() for process in pool.processes)
        assert len(set(await asyncio.gather(*(pool.run(os.getpid) for _ in range(4))))) >= 1

    drive(pool, go)


def test_a_jobs_time_counts_from_when_it_starts_not_while_it_waits() -> None:
    pool = WorkerPool(1, method="spawn")

    async def go() -> None:
        await pool.run(os.getpid)
        first = asyncio.ensure_future(pool.run(functools.partial(echo, "first", 0.8)))
        second = asyncio.ensure_future(pool.run(functools.partial(echo, "second"), timeout=0.4))
        assert await second == "second"  # waited 0.8 s behind the first, ran for no time
        assert await first == "first"

    drive(pool, go)


def test_a_pool_whose_workers_keep_dying_gives_up() -> None:
    pool = WorkerPool(1, method="spawn", initializer=die)  # every worker dies as it starts

    async def go() -> None:
        deadline = time.monotonic() + 30
        while not pool.broken and time.monotonic() < deadline:
            with pytest.raises(BrokenProcessPool):
                await pool.run(os.getpid)
        assert pool.broken
        with pytest.raises(BrokenProcessPool):
            await pool.run(os.getpid)
        await asyncio.sleep(0.5)
        assert not any(process.is_alive() for process in pool.processes)  # no more replacements

    drive(pool, go)


def test_a_cancelled_caller_leaves_the_worker_to_the_next_job() -> None:
    pool = WorkerPool(1, method="spawn")

    async def go() -> None:
        first = asyncio.ensure_future(pool.run(functools.partial(echo, "first", 0.3)))
        waiting = asyncio.ensure_future(pool.run(functools.partial(echo, "waiting")))
        await asyncio.sleep(0.1)
        first.cancel()
        waiting.cancel()  # given up once it was sent, behind the first
        assert await pool.run(functools.partial(echo, "next")) == "next"  # not "first"
        assert await pool.run(functools.partial(echo, "after")) == "after"

    drive(pool, go)


def test_shutdown_fails_the_waiting_jobs_and_the_workers_exit() -> None:
    pool = WorkerPool(1, method="spawn")

    async def go() -> None:
        busy = asyncio.ensure_future(pool.run(functools.partial(echo, "busy", 0.3)))
        waiting = asyncio.ensure_future(pool.run(os.getpid))
        await asyncio.sleep(0.1)
        pool.shutdown(wait=False)
        for job in (busy, waiting):
            with pytest.raises(BrokenProcessPool):
                await job

    run(go())
    pool.shutdown()  # a second call: waits for the exit
    assert not any(process.is_alive() for process in pool.processes)
    with pytest.raises(BrokenProcessPool):
        run(pool.run(os.getpid))


_NO_REPLACEMENT = """
import asyncio, functools, os, resource, sys
sys.path.insert(0, sys.argv[1])
from concurrent.futures.process import BrokenProcessPool
from aggregator.workers import WorkerPool

async def go():
    pool = WorkerPool(1, method="spawn")
    await pool.run(os.getpid)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no descriptor more
    outcomes = []
    for call in (functools.partial(os._exit, 3), os.getpid):
        try:
            await asyncio.wait_for(pool.run(call), 30)
            outcomes.append("ran")
        except BrokenProcessPool:
            outcomes.append("broken")
    print(" ".join(outcomes), pool.broken, flush=True)
    pool.shutdown()

asyncio.run(go())
"""


def test_a_pool_that_cannot_start_a_replacement_breaks_rather_than_hang() -> None:
    root = str(Path(__file__).parents[1])
    out = subprocess.run(
        [sys.executable, "-c", _NO_REPLACEMENT, root], capture_output=True, text=True, timeout=90
    )
    assert out.stdout.split() == ["broken", "broken", "True"], out.stderr[-2000:]
    assert "no worker process could replace it" in out.stderr


_ORPHANS = """
import os, sys
sys.path.insert(0, sys.argv[1])
from aggregator.workers import WorkerPool
pool = WorkerPool(2, method=sys.argv[2])
print(" ".join(str(p.pid) for p in pool.processes), flush=True)
os._exit(0)  # no shutdown: as if killed
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("method", METHODS)
def test_workers_exit_when_the_process_that_started_them_dies(method: str) -> None:
    # A forked worker that kept the other workers' ends of their sockets would hold them open.
    root = str(Path(__file__).parents[1])
    out = subprocess.run(
        [sys.executable, "-c", _ORPHANS, root, method], capture_output=True, text=True, timeout=60
    )
    pids = [int(pid) for pid in out.stdout.split()]
    assert len(pids) == 2, out.stderr
    deadline = time.monotonic() + 30
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in pids if alive(pid)]
    for pid in left:
        os.kill(pid, 9)
    assert not left


def test_a_pool_belongs_to_the_event_loop_that_first_ran_a_job() -> None:
    pool = WorkerPool(1, method="spawn")
    try:
        assert run(pool.run(functools.partial(echo, 1))) == 1
        with pytest.raises(RuntimeError, match="event loop"):
            run(pool.run(functools.partial(echo, 2)))  # its sockets belong to the first loop
    finally:
        pool.shutdown()


def test_a_worker_grown_past_its_memory_bound_is_replaced_and_no_job_fails() -> None:
    pool = WorkerPool(1, method="spawn", max_memory=150 * 10**6)  # a bare worker: about 20 MB

    async def go() -> None:
        first = await pool.run(os.getpid)
        assert await pool.run(functools.partial(grow, 10)) == first  # under the bound: kept
        grown = asyncio.ensure_future(pool.run(functools.partial(grow, 200)))
        behind = asyncio.ensure_future(pool.run(os.getpid))  # in the worker's socket already
        assert await grown == first  # its outcome comes back, then the worker leaves
        replacement = await behind  # not failed: it had not started, and ran in the replacement
        assert replacement != first
        # Retiring is no death: more in a row than the pool's limit of deaths, and it carries on.
        pids = [await pool.run(functools.partial(grow, 200)) for _ in range(4)]
        assert pids[0] == replacement and len(set(pids)) == 4
        assert await pool.run(os.getpid) not in {first, *pids} and not pool.broken
        deadline = time.monotonic() + 30
        while alive(first) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not alive(first)  # reaped, not left a zombie

    drive(pool, go)


def test_a_job_past_the_hard_memory_limit_fails_and_its_worker_carries_on() -> None:
    pool = WorkerPool(1, method="spawn", max_memory=300 * 10**6)  # data may grow by 1.2 GB

    async def go() -> None:
        first = await pool.run(os.getpid)
        with pytest.raises(MemoryError):
            await pool.run(functools.partial(grow, 1300))
        assert await pool.run(os.getpid) == first

    drive(pool, go)


def test_waiting_jobs_go_urgent_first_then_a_group_at_a_time() -> None:
    pool = WorkerPool(1, method="spawn")

    async def go() -> None:
        await pool.run(os.getpid)
        held = [
            pool.run(functools.partial(echo, ("busy", 0.0), 0.5)),
            pool.run(functools.partial(labelled, "next")),
        ]
        jobs = [asyncio.ensure_future(job) for job in held]
        await asyncio.sleep(0.1)  # the worker holds both: the rest wait in the pool
        for label, options in [
            ("a1", {"group": "a"}),
            ("a2", {"group": "a"}),
            ("a3", {"group": "a"}),
            ("b1", {"group": "b"}),
            ("u1", {"urgent": True}),
            ("c1", {}),
            ("u2", {"urgent": True}),
        ]:
            jobs.append(asyncio.ensure_future(pool.run(functools.partial(labelled, label), **options)))
        done = await asyncio.gather(*jobs[1:])
        order = [label for label, _ in sorted(done, key=lambda outcome: outcome[1])]
        # u1 went to the worker as its third job and ran before "next", which had waited in its
        # socket; then u2; then the groups in turn.
        assert order == ["u1", "u2", "next", "a1", "b1", "c1", "a2", "a3"]
        await jobs[0]

    drive(pool, go)


def test_an_urgent_jobs_time_and_the_one_it_overtook_count_from_when_each_starts() -> None:
    pool = WorkerPool(1, method="spawn")

    def job(label: str, seconds: float, **options: Any) -> asyncio.Future[tuple[str, float]]:
        call = functools.partial(finished, label, seconds)
        return asyncio.ensure_future(pool.run(call, **options))

    async def go() -> None:
        first = await pool.run(os.getpid)
        running = job("running", 0.5)
        overtaken = job("overtaken", 0.3, timeout=0.6)  # in the worker's socket
        await asyncio.sleep(0.1)
        urgent = job("urgent", 0.4, timeout=0.6, urgent=True)
        done = await asyncio.gather(running, urgent, overtaken)
        # The urgent job ran second, the overtaken one third, each within its own time though
        # the overtaken one waited 0.9 s in all: its time started when it did, not before.
        assert [label for label, _ in sorted(done, key=lambda d: d[1])] == ["running", "urgent", "overtaken"]
        assert await pool.run(os.getpid) == first  # nobody was killed

    drive(pool, go)
