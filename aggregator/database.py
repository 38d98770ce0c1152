"""Open the database named by ``database_url`` and bring its schema up to date (Alembic)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from aggregator.errors import StorageError
from aggregator.links import redact_url

MIGRATIONS = Path(__file__).with_name("migrations")
# The newest migration in migrations/versions (tests/test_store.py checks it is Alembic's head).
HEAD_REVISION = "0009"
# Any constant shared by all processes: it serialises concurrent migrations on PostgreSQL.
_MIGRATION_LOCK = 7_262_041


def normalise_url(url: str) -> str:
    """Return a SQLAlchemy URL using the drivers we ship (psycopg 3 for PostgreSQL)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def create_db_engine(url: str, *, pool: bool = True, checkpoints: bool = True, create: bool = True) -> Engine:
    """Return an Engine; SQLite gets WAL, a busy timeout and foreign keys, and its folder made.

    ``checkpoints=False``: this engine's commits never checkpoint the SQLite write-ahead log;
    whoever asks for that checkpoints it (``Store.checkpoint``). ``create=False``: a SQLite file
    that does not exist is a StorageError naming it, not a new empty database (the commands
    that only read).
    """
    url = normalise_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"database_url {redact(url)!r} is not a database URL") from None
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _sqlite_file(Path(parsed.database), create)
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
        if not pool:
            kwargs["poolclass"] = NullPool
    try:
        engine = create_engine(parsed, **kwargs)
    except (ArgumentError, ImportError) as exc:
        raise StorageError(f"cannot use database {redact(url)}: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas if checkpoints else _sqlite_pragmas_no_checkpoints)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def sqlite_path(url: str) -> Path | None:
    """The absolute path of the SQLite file ``url`` names (a relative one resolves against the
    working directory); None for another database or an in-memory one."""
    try:
        parsed = make_url(normalise_url(url))
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).absolute()


def _sqlite_file(path: Path, create: bool) -> None:
    """Check that the SQLite file can be used, with the cause and the path when it cannot."""
    path = path.absolute()
    if not create:
        if not path.exists():
            raise StorageError(
                f"no database at {path}: nothing was fetched there yet (`aggregator fetch` or "
                f"`aggregator run` creates it). A relative sqlite:/// path resolves against the "
                f"working directory, here {Path.cwd()}"
            )
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"cannot create the database folder {path.parent}: {exc.strerror or exc}"
        ) from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise StorageError(
            f"the database folder {path.parent} is not writable by this user (uid {os.getuid()}): "
            f"SQLite writes {path.name} and its journal there"
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise StorageError(
            f"the database file {path} is not readable and writable by this user (uid {os.getuid()})"
        )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN, so writes can ask for BEGIN IMMEDIATE.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # 8 MiB of pages a connection, which is every worker process's: SQLite reads the rest from
    # the OS's cache; a larger cache made lookups no faster and cost each worker memory
    # (docs/PERFORMANCE.md, "Lookup at scale").
    cursor.execute("PRAGMA cache_size=-8192")
    # The log is reused from its start after a complete checkpoint; past 64 MiB it is cut back.
    cursor.execute("PRAGMA journal_size_limit=67108864")
    cursor.close()


def _sqlite_pragmas_no_checkpoints(dbapi_connection: Any, record: Any) -> None:
    # A commit that crosses the log's threshold (1,000 pages) copies the log into the database
    # and syncs both, while the writers' lock is held: the refresh workers leave that to the
    # pipeline's checkpoints (Store.checkpoint), which copy most of the log outside the lock.
    _sqlite_pragmas(dbapi_connection, record)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    # A write transaction that starts as a read can fail on upgrade when another process wrote
    # meanwhile (SQLITE_BUSY_SNAPSHOT, which no busy timeout retries): writers start IMMEDIATE.
    immediate = connection.get_execution_options().get("sqlite_immediate")
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def migrate(engine: Engine) -> None:
    """Apply every pending Alembic migration; raise StorageError if the database is unreachable."""
    if _at_head(engine):
        return  # the common case at every start: skip loading Alembic's machinery
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        # IMMEDIATE on SQLite: a second process migrating at the same moment waits for the
        # first instead of failing on its lock (then finds nothing left to do).
        with engine.execution_options(sqlite_immediate=True).begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except OperationalError as exc:
        raise StorageError(_unreachable(engine, exc)) from None
    except SQLAlchemyError as exc:
        raise StorageError(f"database migration failed: {_first_line(exc)}") from None


def has_schema(engine: Engine) -> bool:
    """Whether the database holds our tables (any revision of them)."""
    try:
        return inspect(engine).has_table("alembic_version")
    except OperationalError as exc:
        raise StorageError(_unreachable(engine, exc)) from None


def _at_head(engine: Engine) -> bool:
    try:
        with engine.connect() as connection:
            version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except OperationalError as exc:
        if "alembic_version" in str(exc) or "no such table" in str(exc):
            return False
        raise StorageError(_unreachable(engine, exc)) from None
    except SQLAlchemyError:
        return False
    return version == HEAD_REVISION


def redact(url: str) -> str:
    """Return ``url`` with any password hidden, also one given as a query parameter
    (``?password=``), for messages and logs."""
    try:
        return redact_url(make_url(url).render_as_string(hide_password=True))
    except ArgumentError:
        return "<unparseable URL>"


def _unreachable(engine: Engine, exc: BaseException) -> str:
    """Why the database cannot be used, naming the file for SQLite."""
    if engine.dialect.name == "sqlite" and engine.url.database:
        path = Path(engine.url.database).absolute()
        return f"cannot open the database file {path}: {_first_line(exc)}"
    where = redact(engine.url.render_as_string(hide_password=True))
    return f"database unreachable ({where}): {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
