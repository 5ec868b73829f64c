"""Batched inserts of plain rows, below SQLAlchemy's per-row parameter processing.

The write path (``Tx``) and the search engine's reindex both write index rows in bulk; the
columns are plain ints, floats, strings and bytes, which need no conversion, and SQLAlchemy
spent more per row than the insert itself.

* SQLite: the driver's ``executemany`` with one cached INSERT.
* PostgreSQL: ``COPY ... FROM STDIN`` for several rows. The server spends about half of a
  pipelined ``executemany``'s time per row (one statement, no parse/bind/execute per row),
  and the client a third of it. Its errors come out as SQLAlchemy's (``IntegrityError``,
  ``OperationalError``, ...), so the repository's retry on deadlock, serialization failure
  and duplicate key applies to them as to any statement.
"""
from __future__ import annotations

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from .tables import INDEX_COLUMNS

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


#: PostgreSQL: from this many rows on, ``insert_rows`` uses COPY instead of INSERT
COPY_MIN_ROWS = 2
#: (table, columns, placeholder or "copy") -> the statement
_SQL: dict[tuple, str] = {}


def insert_rows(conn: Connection, table: str, columns: tuple[str, ...],
                rows: list[tuple]) -> None:
    """Insert ``rows`` (tuples of values in ``columns`` order) into ``table`` within
    ``conn``'s transaction."""
    if not rows:
        return
    if conn.dialect.name == "postgresql" and len(rows) >= COPY_MIN_ROWS:
        sql = _SQL.get((table, columns, "copy"))
        if sql is None:
            sql = _SQL[(table, columns, "copy")] = (
                f"COPY {table} ({', '.join(columns)}) FROM STDIN")
        dbapi = conn.dialect.loaded_dbapi
        try:
            with conn.connection.driver_connection.cursor() as cur, cur.copy(sql) as copy:
                write = copy.write_row
                for row in rows:
                    write(row)
        except dbapi.Error as exc:   # as SQLAlchemy would raise it: IntegrityError, ...
            raise DBAPIError.instance(sql, None, exc, dbapi.Error,
                                      dialect=conn.dialect) from exc
        return
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = _SQL.get((table, columns, mark))
    if sql is None:
        sql = _SQL[(table, columns, mark)] = (
            f"INSERT INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join([mark] * len(columns))})")
    conn.exec_driver_sql(sql, rows)
