"""Batched inserts of plain rows, below SQLAlchemy's per-row parameter processing.

The write path (``Tx``) and the search engine's reindex both write index rows in bulk; the
columns are plain ints, floats, strings and bytes, which need no conversion, and SQLAlchemy
spent more per row than the insert itself.

* SQLite: multi-row ``INSERT ... VALUES (...), (...)`` statements of 256, 64, 16 and 4 rows,
  the rest by ``executemany``, on the driver's cursor. One statement per row (``executemany``)
  opens the table's and each index's B-tree cursor again for every row and ends a statement
  for each: the replayed ingest benchmark's inserts cost 9-13% fewer instructions in rows
  of 64-256 (callgrind).
* PostgreSQL: ``COPY ... FROM STDIN`` for many rows. The server spends about half of a
  pipelined ``executemany``'s time per row (one statement, no parse/bind/execute per row),
  and the client a third of it. Its errors come out as SQLAlchemy's (``IntegrityError``,
  ``OperationalError``, ...), so the repository's retry on deadlock, serialization failure
  and duplicate key applies to them as to any statement.

``Batch`` gathers the statements of one write: on PostgreSQL those with few rows travel
together in one pipeline, one round trip for all of them, where each was one before (a
single create and its AuditEvent made ~12 round trips, each 0.1-0.5 ms).
"""
from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from itertools import chain

from sqlalchemy import BigInteger, Boolean, Float, Integer, LargeBinary, String
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from .tables import INDEX_COLUMNS, metadata

#: the columns of an index row as the store writes it: ``INDEX_COLUMNS``, then ``rid``
INDEX_ROW_COLUMNS: dict[str, tuple[str, ...]] = {
    kind: cols + ("rid",) for kind, cols in INDEX_COLUMNS.items()}


def add_index_rows(out: dict[str, list[tuple]], rid: int,
                   rows_by_kind: dict[str, list[tuple]]) -> None:
    """Append one resource's index rows (``SearchEngine.index_tuples``) to ``out`` per
    kind, with its ``rid`` last, as ``INDEX_ROW_COLUMNS`` orders them."""
    key = (rid,)
    for kind, rows in rows_by_kind.items():
        if rows:
            out.setdefault(kind, []).extend([row + key for row in rows])


#: PostgreSQL: from this many rows on, ``Batch`` inserts by COPY instead of INSERT (below
#: it, a pipelined INSERT shares its round trip with the batch's other statements)
COPY_MIN_ROWS = 16
#: (table, columns, placeholder, rows per statement) or (table, columns, "copy") -> the
#: statement
_SQL: dict[tuple, str] = {}


def _insert_sql(conn: Connection, table: str, columns: tuple[str, ...], rows: int = 1) -> str:
    """INSERT of ``rows`` rows (a multi-row VALUES list), in the driver's placeholders."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = _SQL.get((table, columns, mark, rows))
    if sql is None:
        one = f"({', '.join([mark] * len(columns))})"
        sql = _SQL[(table, columns, mark, rows)] = (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([one] * rows)}")
    return sql


#: SQLite: rows per multi-row INSERT, largest first (fewer rows go by executemany)
SQLITE_ROWS_PER_INSERT = (256, 64, 16, 4)


def _sqlite_insert(conn: Connection, cur, table: str, columns: tuple[str, ...],
                   rows: list[tuple]) -> None:
    """``rows`` into ``table`` in multi-row statements (``SQLITE_ROWS_PER_INSERT``, within
    the driver's limit on parameters), the few left over by ``executemany``."""
    width = len(columns)
    limit = cur.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    done, total = 0, len(rows)
    for size in SQLITE_ROWS_PER_INSERT:
        if size * width > limit:
            continue
        while total - done >= size:
            sql = _insert_sql(conn, table, columns, size)
            with _as_sqlalchemy_errors(conn, sql):
                cur.execute(sql, tuple(chain.from_iterable(rows[done:done + size])))
            done += size
    if done < total:
        sql = _insert_sql(conn, table, columns)
        with _as_sqlalchemy_errors(conn, sql):
            cur.executemany(sql, rows[done:] if done else rows)


#: PostgreSQL types of the columns, for COPY's binary format (by SQLAlchemy type, most
#: specific first: BigInteger is an Integer)
_PG_TYPE_OF = ((BigInteger, "int8"), (Integer, "int4"), (Boolean, "bool"), (Float, "float8"),
               (LargeBinary, "bytea"), (String, "text"))
_PG_TYPES: dict[tuple, list[str]] = {}


def _pg_types(table: str, columns: tuple[str, ...]) -> list[str]:
    types = _PG_TYPES.get((table, columns))
    if types is None:
        cols = metadata.tables[table].c
        types = _PG_TYPES[(table, columns)] = [
            next(name for cls, name in _PG_TYPE_OF if isinstance(cols[c].type, cls))
            for c in columns]
    return types


def _copy(conn: Connection, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """COPY in PostgreSQL's binary format: no text to write and parse for each value (a
    body's bytes as hex, twice their size), ~half the time for resource rows, ~10% less
    for index rows."""
    sql = _SQL.get((table, columns, "copy"))
    if sql is None:
        sql = _SQL[(table, columns, "copy")] = (f"COPY {table} ({', '.join(columns)}) "
                                                "FROM STDIN (FORMAT BINARY)")
    with _as_sqlalchemy_errors(conn, sql), \
            conn.connection.driver_connection.cursor() as cur, cur.copy(sql) as copy:
        copy.set_types(_pg_types(table, columns))
        write = copy.write_row
        for row in rows:
            write(row)


@contextmanager
def _as_sqlalchemy_errors(conn: Connection, sql: str):
    """Driver errors raised inside come out as SQLAlchemy's (IntegrityError, ...)."""
    dbapi = conn.dialect.loaded_dbapi
    try:
        yield
    except dbapi.Error as exc:
        raise DBAPIError.instance(sql, None, exc, dbapi.Error, dialect=conn.dialect) from exc


class Batch:
    """The statements of one write, run in the order given by ``run``: inserts (``insert``)
    and other statements run once per row of parameters (``execute``, SQL written with
    ``?`` placeholders). SQLite: inserts in multi-row statements (``_sqlite_insert``), the
    others by one ``executemany`` each. PostgreSQL: inserts of many rows by COPY; everything
    between them in one pipeline, a single round trip."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.steps: list[tuple[str | None, str, tuple, list[tuple]]] = []

    def insert(self, table: str, columns: tuple[str, ...], rows: list[tuple]) -> "Batch":
        """Insert ``rows``. Inserts commute: rows for a table that the last steps (inserts
        only, none of them another statement) already insert into join those rows, so
        the rows of several writes go in one statement or COPY per table."""
        if rows:
            steps = self.steps
            for i in range(len(steps) - 1, -1, -1):
                earlier_table, _sql, earlier_columns, earlier = steps[i]
                if not earlier_table:
                    break
                if earlier_table == table and earlier_columns == columns:
                    steps[i] = (table, "", columns, earlier + rows)   # the callers' lists stay
                    return self
            steps.append((table, "", columns, rows))
        return self

    def execute(self, sql: str, rows: list[tuple]) -> "Batch":
        if rows:
            self.steps.append((None, sql, (), rows))
        return self

    def delete_rids(self, table: str, rids: list[int]) -> "Batch":
        """Delete the rows of ``table`` whose ``rid`` is one of ``rids``: one statement
        (``= ANY`` on PostgreSQL, ``IN`` lists of up to 500 on SQLite)."""
        if not rids:
            return self
        if self.conn.dialect.name == "postgresql":
            self.steps.append((None, f"DELETE FROM {table} WHERE rid = ANY(?)", (),
                               [(list(rids),)]))
            return self
        for i in range(0, len(rids), 500):
            part = rids[i:i + 500]
            self.steps.append((None, f"DELETE FROM {table} WHERE rid IN "
                                     f"({', '.join('?' * len(part))})", (), [tuple(part)]))
        return self

    def run(self) -> None:
        conn, steps = self.conn, self.steps
        self.steps = []
        if conn.dialect.name != "postgresql":
            cur = conn.connection.driver_connection.cursor()
            try:
                for table, sql, columns, rows in steps:
                    if table:
                        _sqlite_insert(conn, cur, table, columns, rows)
                    else:
                        with _as_sqlalchemy_errors(conn, sql):
                            cur.executemany(sql, rows)
            finally:
                cur.close()
            return
        piped: list[tuple[str, list[tuple]]] = []
        for table, sql, columns, rows in steps:
            if table and len(rows) >= COPY_MIN_ROWS:
                self._pipeline(piped)
                piped = []
                _copy(conn, table, columns, rows)
            else:
                piped.append((_insert_sql(conn, table, columns) if table
                              else _pg_sql(sql), rows))
        self._pipeline(piped)

    def _pipeline(self, piped: list[tuple[str, list[tuple]]]) -> None:
        if not piped:
            return
        raw = self.conn.connection.driver_connection
        with _as_sqlalchemy_errors(self.conn, piped[0][0]), raw.pipeline(), \
                raw.cursor() as cur:
            for sql, rows in piped:
                cur.executemany(sql, rows)


def _pg_sql(sql: str) -> str:
    out = _SQL.get((sql, "pg"))
    if out is None:   # the statements here have no literal ? (nor %)
        out = _SQL[(sql, "pg")] = sql.replace("?", "%s")
    return out
