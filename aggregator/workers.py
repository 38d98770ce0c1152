"""The worker processes: a pool that runs the pipeline's CPU-bound steps, driven from asyncio.

Each worker has a socket pair of its own to the service's process. A job goes to a worker as
one pickled message, and its outcome comes back as one; the event loop writes and reads
those sockets itself, so no thread of the service's process takes part. A
``ProcessPoolExecutor`` hands each job through a queue-feeder thread and a manager thread, with
a future and two wake-ups a job: 0.5 ms more of the service's CPU a job than this pool in a
same-run comparison (200 jobs of a 167 KB page, results of 30 KB), and its threads held the GIL
against the event loop.

A worker runs its jobs one after the other, and holds at most two: the one it runs and the next,
already in its socket, so that it never waits for the event loop between jobs (the loop may be
busy for milliseconds with HTTP). A job goes to the worker holding fewer; when both hold two,
it waits in the pool, and the outcome of a worker's job hands it the next one at once. Waiting
jobs go in turn: ``urgent`` ones first (a feed's parsing and storing, which a reader waits
for), then one of each ``group`` (a feed's pages) after the other. An urgent job may also be a
worker's third, and the worker runs it before the one that waited in its socket ahead of it
(each outcome names the job the worker runs next): one feed's slow pages hold up another
feed's parsing for no longer than the page its worker runs.

A worker that dies (killed, out of memory, a crash in C code) is replaced, and only the job it
was running fails, with ``BrokenProcessPool``: the one waiting behind it had not started, and
goes to the next free worker. A job given a ``timeout`` that runs longer (stuck in C code, where
the worker's own alarm cannot reach it) fails with ``TimeoutError``, and its worker is killed
and replaced. The other workers carry on with their jobs throughout. Only a pool whose workers
die one after the other without finishing a job (a broken initializer, say) gives up: it breaks,
and every job fails with ``BrokenProcessPool``.

Given ``max_memory``, a worker whose resident memory grew past it after a job (glibc keeps what
a large page took: 1.3 GB after a 9 MB one) sends that job's outcome, says it retires, and
exits; the jobs behind it go to the other workers or its replacement, and nothing fails. Its
data segment is also capped (RLIMIT_DATA) at what it used when it started plus four times
``max_memory`` (1 GiB at least): a runaway job gets MemoryError rather than the machine's OOM
killer choosing a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import traceback
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
# multiprocessing.Connection's framing, which the workers read and write with recv_bytes and
# send_bytes: a signed 32-bit length, or -1 and then an unsigned 64-bit one.
_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")
# How long shutdown(wait=True) waits for a worker to finish its job and exit before killing it.
_JOIN_SECONDS = 60.0
# The jobs a worker holds at most: the one it runs, and the next.
_DEPTH = 2
# Workers that may die one after the other, with no job finished by any worker in between,
# before the pool stops replacing them.
_DEATHS_IN_A_ROW = 3
# A job's first byte: whether it is urgent. An outcome's header: whether the worker exits after
# it (grown past max_memory), and the number of the job it runs next (-1: the next to come).
_URGENT, _NOT_URGENT = b"\x01", b"\x00"
_OUTCOME = struct.Struct("!?q")
# A worker's data segment may grow this many times max_memory past what it used at its start,
# and at least 1 GiB (the modules it imports later, trafilatura's, take tens of MB).
_HARD_LIMIT = 4
_HARD_LIMIT_FLOOR = 2**30
_GONE = "the pool's worker processes kept dying, or the pool was shut down"


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, as its ``__cause__``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


class _Job:
    __slots__ = ("call", "outcome", "timeout", "timer", "urgent")

    def __init__(
        self, call: Callable[[], Any], outcome: asyncio.Future[Any], timeout: float | None, urgent: bool
    ) -> None:
        self.call = call  # kept until the outcome comes: a job that had not started is sent again
        self.outcome = outcome
        self.timeout = timeout
        self.urgent = urgent
        self.timer: asyncio.TimerHandle | None = None  # from when it runs, if it has a timeout


class _Worker:
    def __init__(self, process: Any, sock: socket.socket) -> None:
        self.process = process
        self.sock = sock
        self.writer: asyncio.StreamWriter | None = None  # None until its connection is open
        self.reading: asyncio.Task[None] | None = None  # held: the loop keeps tasks weakly
        self.jobs: dict[int, _Job] = {}  # the jobs it holds, by their number, in the order sent
        self.sent = 0  # the number of the next job sent to it
        self.running: int | None = None  # the number of the job it runs
        self.retired = False  # it exits after its last outcome: not a death


class WorkerPool:
    """``count`` worker processes, started at once by ``method`` ("fork" or "spawn"); each runs
    ``initializer(*initargs)`` first. Driven from one event loop; ``shutdown`` from any thread
    once that loop is done with it. Replacements for dead workers are spawned: by then this
    process may run threads, whose locks a forked child would inherit. ``max_memory`` (bytes):
    a worker's resident memory past which it is replaced after its job."""

    def __init__(
        self,
        count: int,
        *,
        method: str,
        initializer: Callable[..., None] | None = None,
        initargs: Sequence[Any] = (),
        max_memory: int | None = None,
    ) -> None:
        self.start_method = method
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._max_memory = max_memory
        self._workers: list[_Worker] = []
        self._retired: list[Any] = []  # processes of retired workers, until they have exited
        # Jobs no worker took yet: the urgent ones first, then one of each group in turn.
        self._urgent: deque[_Job] = deque()
        self._groups: dict[Hashable, deque[_Job]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # the one that drives it, once it has
        self._opening: asyncio.Future[None] | None = None
        self._deaths = 0  # in a row, with no job finished since
        self._broken = False
        self._closed = False
        for _ in range(count):
            self._workers.append(self._start(method))

    def _start(self, method: str) -> _Worker:
        ours, theirs = socket.socketpair()
        # A forked worker inherits every descriptor: it closes this process's ends of every
        # worker's pair, its own included, so that it sees the end of its input when this
        # process closes its end or dies. A spawned one inherits only its own end.
        inherited = []
        if method == "fork":
            inherited = [w.sock.fileno() for w in self._workers] + [ours.fileno()]
        process = multiprocessing.get_context(method).Process(  # type: ignore[attr-defined]
            target=_serve,
            args=(theirs, self._initializer, self._initargs, inherited, self._max_memory),
            daemon=True,
        )
        process.start()
        theirs.close()
        return _Worker(process, ours)

    @property
    def processes(self) -> list[Any]:
        """The worker processes now in the pool (replacements included, the dead left out)."""
        return [worker.process for worker in self._workers]

    @property
    def broken(self) -> bool:
        """True once the pool takes no more jobs: shut down, or its workers kept dying."""
        return self._broken or self._closed

    async def run(
        self,
        call: Callable[[], T],
        *,
        timeout: float | None = None,
        urgent: bool = False,
        group: Hashable = None,
    ) -> T:
        """Run ``call`` (picklable) in a worker; return what it returns or raise what it raises.

        ``BrokenProcessPool`` when its worker died running it or the pool is broken or shut
        down; ``TimeoutError`` when it ran more than ``timeout`` seconds (its worker is killed).
        The time counts from when a worker starts it, not while it waits for one. While it
        waits, ``urgent`` jobs go first, then the others a ``group`` at a time, in turn.
        """
        if self.broken:
            raise BrokenProcessPool(_GONE)
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                raise RuntimeError("a WorkerPool is driven from the event loop that first ran a job")
            self._loop = loop
            self._opening = asyncio.ensure_future(self._open())
        assert self._opening is not None
        if not self._opening.done():
            await asyncio.shield(self._opening)
        if self.broken:
            raise BrokenProcessPool(_GONE)
        job = _Job(call, loop.create_future(), timeout, urgent)
        ready = [w for w in self._workers if w.writer is not None]
        worker = min(ready, key=lambda w: len(w.jobs)) if ready else None
        if worker is not None and _room(worker, urgent):
            self._send(worker, job)
        elif urgent:
            self._urgent.append(job)
        else:
            self._groups.setdefault(group, deque()).append(job)
        # A cancelled caller's job is not sent if it still waits, and its outcome is dropped
        # if it was.
        return await job.outcome  # type: ignore[no-any-return]

    async def _open(self) -> None:
        for worker in self._workers:
            await self._connect(worker)

    async def _connect(self, worker: _Worker) -> None:
        reader, worker.writer = await asyncio.open_connection(sock=worker.sock)
        worker.reading = asyncio.ensure_future(self._read(worker, reader))

    def _send(self, worker: _Worker, job: _Job) -> None:
        # Pickled only now: a pickled page waiting in the pool would be a second copy of it.
        try:
            data = pickle.dumps(job.call, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            job.outcome.set_exception(exc)
            return
        assert worker.writer is not None
        size = len(data) + 1
        worker.writer.write(_SHORT.pack(size) if size <= 0x7FFFFFFF else _SHORT.pack(-1) + _LONG.pack(size))
        # The transport holds at most three jobs a worker (pages already in memory): no drain.
        worker.writer.write(_URGENT if job.urgent else _NOT_URGENT)
        worker.writer.write(data)
        worker.jobs[worker.sent] = job
        worker.sent += 1
        if worker.running is None:  # it waits for a job: this one
            self._running(worker, worker.sent - 1)

    def _running(self, worker: _Worker, number: int) -> None:
        """Job ``number`` is the one ``worker`` runs now: its time starts."""
        worker.running = number
        job = worker.jobs[number]
        if job.timeout is not None:
            assert self._loop is not None
            job.timer = self._loop.call_later(job.timeout, self._overran, worker, job)

    def _overran(self, worker: _Worker, job: _Job) -> None:
        if worker.running is None or worker.jobs.get(worker.running) is not job:
            return  # its outcome came as the timer fired
        if not job.outcome.done():
            job.outcome.set_exception(
                TimeoutError(f"the job ran over {job.timeout:g}s: its worker process was killed")
            )
        log.warning("worker process %s ran a job over %gs: killed", worker.process.pid, job.timeout)
        with contextlib.suppress(OSError, ValueError):
            worker.process.kill()  # its connection ends; _read replaces it

    def _send_waiting(self, worker: _Worker) -> None:
        while (job := self._next_waiting(worker)) is not None:
            if not job.outcome.done():  # its caller gave up
                self._send(worker, job)

    def _next_waiting(self, worker: _Worker) -> _Job | None:
        """The next waiting job there is room for in ``worker``, taken from the waiting ones."""
        # (Jobs a lost worker had not started go back first, urgent or not.)
        if self._urgent and _room(worker, self._urgent[0].urgent):
            return self._urgent.popleft()
        if not self._groups or not _room(worker, urgent=False):
            return None
        group = next(iter(self._groups))
        jobs = self._groups.pop(group)
        job = jobs.popleft()
        if jobs:
            self._groups[group] = jobs  # its next job waits for the other groups' turns
        return job

    async def _read(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (size,) = _SHORT.unpack(await reader.readexactly(_SHORT.size))
                if size == -1:
                    (size,) = _LONG.unpack(await reader.readexactly(_LONG.size))
                data = await reader.readexactly(size)
                retiring, following = _OUTCOME.unpack_from(data)
                assert worker.running is not None
                job = worker.jobs.pop(worker.running)
                worker.running = None
                if job.timer is not None:
                    job.timer.cancel()
                self._deaths = 0
                if retiring:
                    self._retire(worker)
                else:
                    # It runs the job it named, else the first it had not read yet.
                    if following in worker.jobs:
                        self._running(worker, following)
                    elif worker.jobs:
                        self._running(worker, next(iter(worker.jobs)))
                    self._send_waiting(worker)  # before anything else: the worker is waiting for it
                if not job.outcome.done():  # not given up by a cancelled caller
                    _settle(job.outcome, memoryview(data)[_OUTCOME.size :])
        except (asyncio.IncompleteReadError, OSError):
            pass  # the worker's end closed: it died, retired, or the pool was shut down
        if worker.retired:
            self._reap(worker)
        else:
            self._lost(worker)

    def _retire(self, worker: _Worker) -> None:
        """``worker`` grew past ``max_memory``: it exits after the outcome it just sent. The jobs
        it held had not started; they go first to the other workers or to its replacement."""
        worker.retired = True
        self._urgent.extendleft(reversed(worker.jobs.values()))
        worker.jobs.clear()
        self._workers.remove(worker)
        self._retired.append(worker.process)
        log.info(
            "worker process %s grew past %d MB: replaced",
            worker.process.pid,
            (self._max_memory or 0) // 1_000_000,
        )
        for other in self._workers:
            if other.writer is not None:
                self._send_waiting(other)
        if not self.broken:
            self._replace()

    def _reap(self, worker: _Worker, tries: int = 100) -> None:
        """Collect a retired worker's exit without blocking the loop (it may still be freeing
        its memory); one still there after about five seconds is killed."""
        if worker.writer is not None:
            worker.writer.close()
            worker.writer = None
        worker.process.join(0)
        if not worker.process.is_alive():
            with contextlib.suppress(ValueError):
                self._retired.remove(worker.process)
            return
        if tries == 0:
            worker.process.kill()
        assert self._loop is not None
        self._loop.call_later(0.05, self._reap, worker, max(tries - 1, 0))

    def _lost(self, worker: _Worker) -> None:
        """``worker``'s connection ended: it died, or the pool was shut down."""
        running = worker.jobs.pop(worker.running) if worker.running is not None else None
        held = list(worker.jobs.values())
        worker.jobs.clear()
        worker.running = None
        for job in [running, *held]:
            if job is not None and job.timer is not None:
                job.timer.cancel()
        if self.broken:
            for job in [running, *held]:
                if job is not None and not job.outcome.done():
                    job.outcome.set_exception(BrokenProcessPool(_GONE))
            return
        # The job it ran fails; the others had not started, and go to the next free worker.
        if running is not None and not running.outcome.done():
            running.outcome.set_exception(BrokenProcessPool("the worker process running this job died"))
        self._urgent.extendleft(reversed(held))
        self._workers.remove(worker)
        for other in self._workers:  # a free one takes them now, not after a new one has started
            if other.writer is not None:
                self._send_waiting(other)
        if worker.writer is not None:
            worker.writer.close()
        # Gone already, or about to be (its end of the socket closes as it exits): reaped, for
        # its exit code. One whose connection ended otherwise is not left running.
        worker.process.join(0.5)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(5)
        log.warning("worker process %s died (exit code %s)", worker.process.pid, worker.process.exitcode)
        self._deaths += 1
        if self._deaths >= _DEATHS_IN_A_ROW:
            log.error("worker processes died %d times in a row: the pool gives up", self._deaths)
            self._break()
            return
        self._replace()

    def _replace(self) -> None:
        """Start a worker in place of one that left the pool."""
        try:
            replacement = self._start("spawn")
        except OSError as exc:  # out of processes or descriptors: nothing would run the jobs
            log.error("no worker process could replace it: %s", exc)
            self._break()
            return
        self._workers.append(replacement)
        replacement.reading = asyncio.ensure_future(self._connected(replacement))

    async def _connected(self, worker: _Worker) -> None:
        try:
            await self._connect(worker)
        except (OSError, ValueError):  # shut down while it started: its socket is closed
            return
        # The jobs that came while it started, and those of the worker it replaces.
        self._send_waiting(worker)

    def _break(self) -> None:
        """Take no more jobs; those waiting fail."""
        self._broken = True
        waiting = [*self._urgent, *(job for jobs in self._groups.values() for job in jobs)]
        self._urgent.clear()
        self._groups.clear()
        for job in waiting:
            if not job.outcome.done():
                job.outcome.set_exception(BrokenProcessPool(_GONE))

    def shutdown(self, wait: bool = True) -> None:
        """Stop the workers: each exits once its jobs are done (``wait``: wait for that, up to a
        minute, then kill it). Jobs still out fail with ``BrokenProcessPool``."""
        if not self._closed:
            self._closed = True
            self._break()
            for worker in self._workers:
                # Synchronously: from inside the loop, a transport's close waits for the next
                # turn, and the join below would wait for the worker to see it.
                with contextlib.suppress(OSError):
                    worker.sock.shutdown(socket.SHUT_RDWR)
                if worker.writer is not None:
                    with contextlib.suppress(RuntimeError):  # its loop is closed already
                        worker.writer.close()
                else:
                    worker.sock.close()
        if not wait:
            return
        for process in [worker.process for worker in self._workers] + self._retired:
            process.join(_JOIN_SECONDS)
            if process.is_alive():
                log.warning("worker process %s did not exit: killed", process.pid)
                process.kill()
                process.join(5)


def _room(worker: _Worker, urgent: bool) -> bool:
    """Whether ``worker`` may take one more job: two, and an urgent third."""
    return len(worker.jobs) < _DEPTH + urgent


def _settle(job: asyncio.Future[Any], data: bytes | memoryview) -> None:
    try:
        ok, value, remote = pickle.loads(data)
    except Exception as exc:  # an exception class that cannot be rebuilt here
        job.set_exception(RuntimeError(f"the worker's outcome could not be read: {exc}"))
        return
    if ok:
        job.set_result(value)
    else:
        value.__cause__ = RemoteTraceback(remote)
        job.set_exception(value)


def _serve(
    sock: socket.socket,
    initializer: Callable[..., None] | None,
    initargs: tuple[Any, ...],
    inherited: list[int],
    max_memory: int | None = None,
) -> None:
    """A worker's life: run the jobs that come in on ``sock`` until its other end closes, or
    until its memory grew past ``max_memory``."""
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.close(fd)
    # Ctrl-C reaches the whole process group: the service's process stops the pool itself, and
    # a worker that took the interrupt would only print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    connection = Connection(sock.detach())
    if initializer is not None:
        initializer(*initargs)
    memory = _Memory() if max_memory is not None else None
    if memory is not None and max_memory is not None:
        memory.limit_data(max(_HARD_LIMIT * max_memory, _HARD_LIMIT_FLOOR))
    # Jobs read and not run yet, in the order sent: (number, urgent, message).
    pending: deque[tuple[int, bool, bytes]] = deque()
    received = 0
    closed = False
    while True:
        if not pending:
            # Nothing read and waiting: the pool expects the next job to come to run first.
            try:
                message = connection.recv_bytes()
            except (EOFError, OSError):
                return
            pending.append((received, message[:1] == _URGENT, message))
            received += 1
        data = pending.popleft()[2]
        try:
            outcome: tuple[bool, Any, str | None] = (True, pickle.loads(memoryview(data)[1:])(), None)
        except BaseException as exc:  # SystemExit from a job too: it is the job's outcome
            outcome = (False, exc, traceback.format_exc())
        del data
        # The jobs that came meanwhile; the next to run is the first urgent one, else the first.
        try:
            while not closed and connection.poll(0):
                message = connection.recv_bytes()
                pending.append((received, message[:1] == _URGENT, message))
                received += 1
        except (EOFError, OSError):
            closed = True
        first_urgent = next((i for i, (_, urgent, _) in enumerate(pending) if urgent), 0)
        if first_urgent:
            chosen = pending[first_urgent]
            del pending[first_urgent]
            pending.appendleft(chosen)
        retiring = memory is not None and max_memory is not None and memory.resident() > max_memory
        following = pending[0][0] if pending and not retiring else -1
        payload = io.BytesIO()
        payload.write(_OUTCOME.pack(retiring, following))
        try:
            pickle.dump(outcome, payload, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # a result or exception that cannot be pickled
            error = RuntimeError(f"the job's outcome could not be sent: {type(exc).__name__}: {exc}")
            payload.seek(_OUTCOME.size)
            payload.truncate()
            pickle.dump((False, error, outcome[2] or ""), payload, pickle.HIGHEST_PROTOCOL)
        del outcome  # the result's memory, before the next job
        try:
            connection.send_bytes(payload.getbuffer())
        except OSError:
            return
        if retiring or closed:
            return


class _Memory:
    """A worker's own memory, read from /proc/self/statm (kept open: a pread a job, about 3 µs)."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        try:
            self._statm: int | None = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:  # no /proc: the peak, which never falls, stands in for the current size
            self._statm = None

    def _fields(self) -> list[bytes]:
        assert self._statm is not None
        return os.pread(self._statm, 128, 0).split()

    def resident(self) -> int:
        """Resident memory, in bytes."""
        if self._statm is None:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return int(self._fields()[1]) * self._page

    def limit_data(self, headroom: int) -> None:
        """Cap the data segment (the heap and private writable mappings: RLIMIT_DATA, not the
        address space, which counts numpy's reserved but unused mappings) at its size now plus
        ``headroom``."""
        if self._statm is None:
            return
        import resource

        limit = int(self._fields()[5]) * self._page + headroom
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        if soft == resource.RLIM_INFINITY or soft > limit:
            resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
