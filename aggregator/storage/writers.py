"""Who may write, and when: SQLite's one writer at a time and its checkpoints; PostgreSQL's
advisory locks between processes sharing the database."""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from aggregator.errors import StorageError

__all__ = ["Writers"]

# Any constant shared by all processes (database.py's migration lock is another).
_INSERT_LOCK = 7_262_042


class Writers:
    """The sessions of one engine: read sessions, and write transactions that queue for their turn.

    On SQLite (one writer at a time) a write transaction starts IMMEDIATE, taking the write lock at
    once so that it never fails halfway on a lock another process took; and writers, threads of
    this process and the worker processes alike, queue on locks that wake the next one as soon as
    the lock is free (a thread lock, then ``<db>.write-lock`` by flock), instead of sleeping in
    SQLite's busy handler, which sleeps in growing steps.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        sqlite = engine.dialect.name == "sqlite"
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(
            engine.execution_options(sqlite_immediate=True), expire_on_commit=False
        )
        self._thread_lock = threading.Lock() if sqlite else None
        database = engine.url.database if sqlite else None
        on_disk = database not in (None, "", ":memory:")
        self._lock_path = f"{database}.write-lock" if on_disk else None
        self._lock_fd: int | None = None
        self._lock_pid = 0

    def session(self) -> Session:
        """A session for reading."""
        return self._sessions()

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A session in a write transaction, committed at the end (rolled back on an error)."""
        with (
            self._thread_lock or nullcontext(),
            self._file_lock(),
            self._write_sessions() as session,
            session.begin(),
        ):
            yield session

    def checkpoint(self) -> None:
        """Copy SQLite's write-ahead log into the database, most of it beside the writers
        (PASSIVE), then the rest in their lock, so that the next writer starts the log afresh;
        nothing to do on PostgreSQL. Raise StorageError if it fails.

        A checkpoint only beside the writers never catches up with them: the log grows through a
        whole pass, and every read and commit grows dearer with it (docs/ARCHITECTURE.md).
        """
        if self.engine.dialect.name != "sqlite":
            return
        try:
            with self.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").all()
                with self._thread_lock or nullcontext(), self._file_lock():
                    connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").all()
        except OperationalError as exc:
            raise StorageError(f"checkpoint of the database failed: {exc}") from None

    def insert_lock(self, session: Session) -> None:
        """On PostgreSQL, queue this transaction's article inserts behind those of other processes
        until it ends (SQLite's writers queue anyway).

        Copies of one story often arrive at once, through feeds refreshed in different processes:
        each transaction would miss the other's uncommitted copy, and both would become
        representatives. Queued, each one sees the copies committed before it.
        """
        if self.engine.dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _INSERT_LOCK})

    @contextmanager
    def advisory_lock(self, name: str) -> Iterator[bool]:
        """Hold the lock called ``name`` while the block runs; yield False when another process
        holds it. On PostgreSQL a session advisory lock; SQLite serves one process: always True."""
        if self.engine.dialect.name != "postgresql":
            yield True
            return
        key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)
        with self.engine.connect() as connection:
            got = bool(connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
            connection.commit()
            try:
                yield got
            finally:
                if got:
                    connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    connection.commit()

    def close(self) -> None:
        """Close the lock file (this process's own)."""
        if self._lock_fd is not None and self._lock_pid == os.getpid():
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        if self._lock_path is None:
            yield
            return
        if self._lock_fd is None or self._lock_pid != os.getpid():  # a forked worker opens its own
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            self._lock_pid = os.getpid()
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
