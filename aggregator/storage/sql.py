"""The refresh's hot statements, run on the driver's own cursor, and the helpers they share.

SQLAlchemy's work around each execution (the compiled cache's key, the IN lists rendered again,
the parameters and rows processed) cost a refresh worker more CPU than SQLite's own work for
these statements; ``DriverQuery`` keeps the Core statement's SQL and skips the rest.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar, cast

from sqlalchemy import ARRAY, ColumnElement, Insert, any_, bindparam, func, select
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement
from sqlalchemy.sql.functions import FunctionElement

__all__ = ["DriverQuery", "chunks", "first", "in_one_value", "marker", "one_value"]

T = TypeVar("T")

# Where a plan's parameter comes from: (its name in the SQL, the caller's parameter, the index in
# that list or -1, its bind processor), or (its name, None, its value, None) for a value written
# into the statement.
_Source = tuple[str, Any, Any, Any]
_Plan = tuple[str, tuple[_Source, ...]]


class DriverQuery:
    """One of the refresh's statements, run on the driver's own cursor.

    The SQL is the Core statement's, compiled once per dialect and per length of its list
    parameters; each parameter goes through its type's own bind processor (a datetime to UTC
    and, on SQLite, to its text), as SQLAlchemy would send it, and rows come back as the driver
    gives them: plain tuples, for columns of strings, integers and bytes. In a transaction of the
    connection the statement is part of it; outside one it runs as the driver runs it. Driver
    errors are raised as SQLAlchemy's (``DBAPIError.instance``), without the values.
    """

    MAX_PLANS = 1024

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._expanding: dict[str, tuple[str, ...]] = {}  # dialect -> the list parameters
        self._plans: dict[tuple[str, tuple[int, ...]], _Plan] = {}  # by dialect and lists' lengths

    @property
    def plans(self) -> int:
        """How many compiled plans are kept (one per dialect and length of the lists)."""
        return len(self._plans)

    def rows(self, connection: Connection, params: dict[str, Any]) -> list[Any]:
        """Execute with ``params``; return the rows."""
        sql, sources = self._plan_for(connection, params)
        return self._run(connection, sql, self._bound(connection, sources, params), many=False)

    def execute_many(self, connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Execute once for each of ``rows`` (the same keys in each), through executemany."""
        sql, sources = self._plan_for(connection, rows[0])
        self._run(connection, sql, [self._bound(connection, sources, row) for row in rows], many=True)

    def _plan_for(self, connection: Connection, params: dict[str, Any]) -> _Plan:
        dialect = connection.dialect
        expanding = self._expanding.get(dialect.name)
        if expanding is None:
            compiled = self._compile(dialect)
            expanding = tuple(name for name, bind in compiled.binds.items() if bind.expanding)
            self._expanding[dialect.name] = expanding
        key = (dialect.name, tuple(len(params[name]) for name in expanding))
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= self.MAX_PLANS:  # lengths vary with the feeds: bound the memory
                self._plans.clear()
            plan = self._plans[key] = self._plan(dialect, params)
        return plan

    @staticmethod
    def _bound(connection: Connection, sources: tuple[_Source, ...], params: dict[str, Any]) -> Any:
        values = []
        for _, name, where, process in sources:
            value = where if name is None else params[name] if where < 0 else params[name][where]
            values.append(value if process is None else process(value))
        if connection.dialect.paramstyle in ("qmark", "format", "numeric"):
            return values
        return {source[0]: value for source, value in zip(sources, values, strict=True)}

    @staticmethod
    def _run(connection: Connection, sql: str, bound: Any, *, many: bool) -> list[Any]:
        dialect = connection.dialect
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        error = dialect.loaded_dbapi.Error
        try:
            if many:
                cursor.executemany(sql, bound)
                return []
            cursor.execute(sql, bound)
            return cursor.fetchall() if cursor.description is not None else []
        except error as exc:  # as SQLAlchemy raises it (OperationalError...), without the values
            raise DBAPIError.instance(sql, None, exc, error, hide_parameters=True, dialect=dialect) from exc
        finally:
            cursor.close()

    def _plan(self, dialect: Dialect, params: dict[str, Any]) -> _Plan:
        # An INSERT names the columns it is given, as executing it with these values would.
        compiled = self._compile(dialect, list(params) if isinstance(self.statement, Insert) else None)
        state = compiled.construct_expanded_state(params)
        origin = {
            expanded: (name, index)
            for name, names in state.parameter_expansion.items()
            for index, expanded in enumerate(names)
        }
        order = state.positiontup if state.positiontup is not None else list(state.parameters)
        sources: list[_Source] = []
        for expanded in order:
            name, where = origin.get(expanded, (expanded, -1))
            if name not in params:  # a value written into the statement, such as BandMerges.id == 1
                sources.append((expanded, None, state.parameters[expanded], None))
                continue
            kind = compiled.binds[name].type
            sources.append((expanded, name, where, kind.dialect_impl(dialect).bind_processor(dialect)))
        return state.statement, tuple(sources)

    def _compile(self, dialect: Dialect, column_keys: list[str] | None = None) -> SQLCompiler:
        return cast(SQLCompiler, self.statement.compile(dialect=dialect, column_keys=column_keys))


def first(rows: list[Any]) -> Any:
    """The first column of the first row, or None: what ``Connection.scalar`` gives."""
    return rows[0][0] if rows else None


def in_one_value(column: InstrumentedAttribute[int], name: str, postgresql: bool) -> ColumnElement[bool]:
    """``column`` is one of the list bound as the single parameter ``name`` (``one_value``): an
    array on PostgreSQL, a JSON list read by json_each on SQLite. A feed's articles look up 640
    band keys: as many bound parameters cost more to render than the indexed lookup itself."""
    if postgresql:
        return column == any_(bindparam(name, type_=ARRAY(column.type)))
    each: FunctionElement[Any] = func.json_each(bindparam(name))
    values = each.table_valued("value")
    return column.in_(select(values.c.value))


def one_value(values: list[int], postgresql: bool) -> object:
    """The value to bind for ``in_one_value``."""
    return values if postgresql else json.dumps(values)


def marker(connection: Connection) -> str:
    """The driver's placeholder, for statements handed to its executemany."""
    return "?" if connection.dialect.paramstyle == "qmark" else "%s"


def chunks(items: Sequence[T], size: int = 500) -> Iterator[Sequence[T]]:
    """Yield slices small enough for any database's limit on bound parameters."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
