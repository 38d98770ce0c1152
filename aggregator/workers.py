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
it waits in the pool, and the outcome of a worker's job hands it the next one at once. When a
worker dies (killed, out of memory, a crash in C code), the jobs it held fail with
``BrokenProcessPool``, and so does every later ``run`` on the pool: the pipeline then starts a
new pool and runs those jobs again there, as it did with ``ProcessPoolExecutor``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import traceback
from collections import deque
from collections.abc import Callable, Sequence
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
_GONE = "a worker process died, or the pool was shut down"


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, as its ``__cause__``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


class _Worker:
    def __init__(self, process: Any, sock: socket.socket) -> None:
        self.process = process
        self.sock = sock
        self.writer: asyncio.StreamWriter | None = None
        self.reading: asyncio.Task[None] | None = None  # held: the loop keeps tasks weakly
        self.jobs: deque[asyncio.Future[Any]] = deque()  # the outcomes of the jobs it holds, in order


class WorkerPool:
    """``count`` worker processes, started at once by ``method`` ("fork" or "spawn"); each runs
    ``initializer(*initargs)`` first. Driven from one event loop; ``shutdown`` from any thread
    once that loop is done with it."""

    def __init__(
        self,
        count: int,
        *,
        method: str,
        initializer: Callable[..., None] | None = None,
        initargs: Sequence[Any] = (),
    ) -> None:
        self.start_method = method
        self._context = multiprocessing.get_context(method)
        self._workers: list[_Worker] = []
        self._waiting: deque[tuple[Callable[[], Any], asyncio.Future[Any]]] = (
            deque()
        )  # no worker took them yet
        self._loop: asyncio.AbstractEventLoop | None = None  # the one that drives it, once it has
        self._opening: asyncio.Future[None] | None = None
        self._broken = False
        self._closed = False
        for _ in range(count):
            self._workers.append(self._start(initializer, tuple(initargs)))

    def _start(self, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> _Worker:
        ours, theirs = socket.socketpair()
        # A forked worker inherits every descriptor: it closes this process's ends of every
        # worker's pair, its own included, so that it sees the end of its input when this
        # process closes its end or dies. A spawned one inherits only its own end.
        inherited = []
        if self.start_method == "fork":
            inherited = [w.sock.fileno() for w in self._workers] + [ours.fileno()]
        process = self._context.Process(  # type: ignore[attr-defined]
            target=_serve, args=(theirs, initializer, initargs, inherited), daemon=True
        )
        process.start()
        theirs.close()
        return _Worker(process, ours)

    @property
    def processes(self) -> list[Any]:
        return [worker.process for worker in self._workers]

    async def run(self, call: Callable[[], T]) -> T:
        """Run ``call`` (picklable) in a worker; return what it returns or raise what it raises.
        ``BrokenProcessPool`` when its worker died or the pool is broken or shut down."""
        if self._broken or self._closed:
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
        if self._broken or self._closed:
            raise BrokenProcessPool(_GONE)
        job: asyncio.Future[T] = loop.create_future()
        worker = min(self._workers, key=lambda w: len(w.jobs))
        if len(worker.jobs) < _DEPTH:
            self._send(worker, call, job)
        else:
            self._waiting.append((call, job))
        # A cancelled caller's job is not sent if it still waits, and its outcome is dropped
        # if it was.
        return await job

    async def _open(self) -> None:
        for worker in self._workers:
            reader, worker.writer = await asyncio.open_connection(sock=worker.sock)
            worker.reading = asyncio.ensure_future(self._read(worker, reader))

    def _send(self, worker: _Worker, call: Callable[[], Any], job: asyncio.Future[Any]) -> None:
        # Pickled only now: a pickled page waiting in the pool would be a second copy of it.
        try:
            data = pickle.dumps(call, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            job.set_exception(exc)
            return
        assert worker.writer is not None
        size = len(data)
        worker.writer.write(_SHORT.pack(size) if size <= 0x7FFFFFFF else _SHORT.pack(-1) + _LONG.pack(size))
        # The transport holds at most two jobs a worker (pages already in memory): no drain.
        worker.writer.write(data)
        worker.jobs.append(job)

    def _send_waiting(self, worker: _Worker) -> None:
        while self._waiting and len(worker.jobs) < _DEPTH:
            call, job = self._waiting.popleft()
            if not job.done():  # its caller gave up
                self._send(worker, call, job)

    async def _read(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (size,) = _SHORT.unpack(await reader.readexactly(_SHORT.size))
                if size == -1:
                    (size,) = _LONG.unpack(await reader.readexactly(_LONG.size))
                data = await reader.readexactly(size)
                job = worker.jobs.popleft()
                self._send_waiting(worker)  # before anything else: the worker is waiting for it
                if not job.done():  # not given up by a cancelled caller
                    _settle(job, data)
        except (asyncio.IncompleteReadError, OSError):
            pass  # the worker's end closed: it died, or the pool was shut down
        if not self._closed and not self._broken:
            log.warning("worker process %s died (exit code %s)", worker.process.pid, worker.process.exitcode)
        self._break()
        while worker.jobs:
            job = worker.jobs.popleft()
            if not job.done():
                job.set_exception(BrokenProcessPool("the worker process holding this job died"))

    def _break(self) -> None:
        """Take no more jobs; those waiting fail."""
        self._broken = True
        while self._waiting:
            _, job = self._waiting.popleft()
            if not job.done():
                job.set_exception(BrokenProcessPool(_GONE))

    def kill(self) -> None:
        """Kill every worker (one is stuck in C code, where its own alarm cannot reach it)."""
        for process in self.processes:
            with contextlib.suppress(OSError, ValueError):
                process.kill()

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
        for worker in self._workers:
            worker.process.join(_JOIN_SECONDS)
            if worker.process.is_alive():
                log.warning("worker process %s did not exit: killed", worker.process.pid)
                worker.process.kill()
                worker.process.join(5)


def _settle(job: asyncio.Future[Any], data: bytes) -> None:
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
) -> None:
    """A worker's life: run the jobs that come in on ``sock`` until its other end closes."""
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.close(fd)
    # Ctrl-C reaches the whole process group: the service's process stops the pool itself, and
    # a worker that took the interrupt would only print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    connection = Connection(sock.detach())
    if initializer is not None:
        initializer(*initargs)
    while True:
        try:
            data = connection.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            outcome: tuple[bool, Any, str | None] = (True, pickle.loads(data)(), None)
        except BaseException as exc:  # SystemExit from a job too: it is the job's outcome
            outcome = (False, exc, traceback.format_exc())
        try:
            payload = pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # a result or exception that cannot be pickled
            error = RuntimeError(f"the job's outcome could not be sent: {type(exc).__name__}: {exc}")
            payload = pickle.dumps((False, error, outcome[2] or ""), pickle.HIGHEST_PROTOCOL)
        try:
            connection.send_bytes(payload)
        except OSError:
            return
