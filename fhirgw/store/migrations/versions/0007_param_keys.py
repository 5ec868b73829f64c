"""Index tables keyed by one integer per (resource type, parameter): ``pid``.

Index rows carried the resource type and the parameter's code as two strings that led every
index key; they now carry ``pid``, ``store.tables.param_key(type, code)``, a 64-bit integer
computed from the pair (see its docstring for the figures). Each index table is rebuilt:
its rows are copied with the key of their pair (a small mapping table made here, one row per
pair found), and its indexes are made again. Large databases take a while (like a reindex).
A new database gets the new tables from its baseline and has nothing to convert.

``downgrade`` maps the keys back to the pairs of the standard search parameters (with the
special codes ``:identifier``, ``:of-type``, ``_text``) and of the SearchParameters stored
in the database (what the search package lists, ``tables.PARAM_PAIR_SOURCES``); rows of a
key it cannot name are dropped (``$reindex`` writes them again).

Revision ID: 0007
Revises: 0006
"""
from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

log = logging.getLogger("fhirgw.store")

_TABLES = ("sp_token", "sp_string", "sp_date", "sp_number", "sp_quantity", "sp_reference",
           "sp_uri", "sp_composite")
_MAP = "fhirgw_param_key_map"


def _make_map_table() -> None:
    """The mapping table, indexed both ways: the copy joins every row of an index table
    with it (SQLite would otherwise scan it for each row)."""
    op.execute(f"DROP TABLE IF EXISTS {_MAP}")
    op.execute(f"CREATE TABLE {_MAP} (res_type VARCHAR(64), param VARCHAR(100), pid BIGINT)")
    op.execute(f"CREATE INDEX ix_{_MAP}_pair ON {_MAP} (res_type, param)")
    op.execute(f"CREATE INDEX ix_{_MAP}_pid ON {_MAP} (pid)")


def _columns(bind, table: str) -> list[str]:
    return [c["name"] for c in sa.inspect(bind).get_columns(table)]


def _index_names(bind, table: str) -> list[str]:
    return [ix["name"] for ix in sa.inspect(bind).get_indexes(table)]


def _rebuild(table: str, pairs_sql: str, make_map, new_table: sa.Table, join: str,
             new_keys: list[str], value_cols: list[str]) -> None:
    """Move ``table``'s rows into ``new_table`` (same name): the mapping table ``make_map``
    fills (from the distinct keys ``pairs_sql`` lists) joined on ``join`` gives each row its
    ``new_keys`` columns; rows it has no entry for are left out."""
    bind = op.get_bind()
    for name in _index_names(bind, table):
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.execute(f"ALTER TABLE {table} RENAME TO {table}_old")
    new_table.create(bind)
    rows = bind.exec_driver_sql(pairs_sql.format(table=f"{table}_old")).all()
    if rows:
        make_map(bind, rows)
        src_cols = ", ".join(f"s.{c}" for c in value_cols)
        picked = ", ".join(f"m.{c}" for c in new_keys)
        op.execute(f"INSERT INTO {table} (rid, {', '.join(new_keys)}, {', '.join(value_cols)}) "
                   f"SELECT s.rid, {picked}, {src_cols} FROM {table}_old s "
                   f"JOIN {_MAP} m ON {join}")
    op.execute(f"DROP TABLE {table}_old")
    _analyze(bind, table)


def _analyze(bind, table: str) -> None:
    """Statistics for the rebuilt table, where the database keeps them: PostgreSQL always
    (until autovacuum came by, its planner would guess), SQLite when something ran ANALYZE
    before (``sqlite_stat1`` exists). Dropping the old table dropped its statistics; a
    SQLite planner with statistics for the other tables and none for these picked a scan
    (``Appointment?patient=...&date=...&_sort=date`` went from 0.9 to 2.1 ms at 10k)."""
    if bind.dialect.name == "sqlite":
        has_stats = bind.exec_driver_sql(
            "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'").scalar()
        if not has_stats:
            return
    op.execute(f"ANALYZE {table}")


def upgrade() -> None:
    from fhirgw.store.tables import metadata, param_key

    bind = op.get_bind()
    _make_map_table()

    def make_map(conn, pairs):
        op.execute(f"DELETE FROM {_MAP}")
        conn.execute(sa.text(f"INSERT INTO {_MAP} (res_type, param, pid) VALUES (:t, :p, :k)"),
                     [{"t": t, "p": p, "k": param_key(t, p)} for t, p in pairs])

    for table in _TABLES:
        cols = _columns(bind, table)
        if "pid" in cols or "res_type" not in cols:
            continue   # made by the baseline of this version: nothing to convert
        new = metadata.tables[table]
        values = [c.name for c in new.columns if c.name not in ("rid", "pid")]
        _rebuild(table, "SELECT DISTINCT res_type, param FROM {table}", make_map, new,
                 "m.res_type = s.res_type AND m.param = s.param", ["pid"], values)
    op.execute(f"DROP TABLE {_MAP}")


def _known_pairs(bind) -> set[tuple[str, str]]:
    """Every (type, code) the gateway indexes, from the sources the search package
    registers (``tables.PARAM_PAIR_SOURCES``: the standard parameters with their special
    codes, and the SearchParameters stored in the database)."""
    from fhirgw.store.tables import PARAM_PAIR_SOURCES, gather

    pairs = set(gather(PARAM_PAIR_SOURCES, bind) or ())
    if not pairs:
        raise RuntimeError("no source of search parameters (import fhirgw.search first): "
                           "cannot name the index keys back")
    return pairs


def downgrade() -> None:
    from fhirgw.store.tables import param_key

    bind = op.get_bind()
    _make_map_table()
    pairs = _known_pairs(bind)

    def make_map(conn, keys):
        found = {k for (k,) in keys}
        rows = [{"t": t, "p": p, "k": k} for t, p in pairs
                if (k := param_key(t, p)) in found]
        if len(rows) < len(found):
            log.warning("downgrade: %d index keys name no known parameter; their rows are "
                        "dropped ($reindex writes them again)", len(found) - len(rows))
        op.execute(f"DELETE FROM {_MAP}")
        if rows:
            conn.execute(sa.text(f"INSERT INTO {_MAP} (res_type, param, pid) "
                                 "VALUES (:t, :p, :k)"), rows)

    for table in _TABLES:
        cols = _columns(bind, table)
        if "pid" not in cols:
            continue
        values = [c for c in cols if c not in ("rid", "pid")]
        old = sa.Table(table, sa.MetaData(),
                       sa.Column("rid", sa.BigInteger, nullable=False),
                       sa.Column("res_type", sa.String(64), nullable=False),
                       sa.Column("param", sa.String(100), nullable=False),
                       *[sa.Column(c, _old_type(table, c)) for c in values])
        _rebuild(table, "SELECT DISTINCT pid FROM {table}", make_map, old, "m.pid = s.pid",
                 ["res_type", "param"], values)
        for name, ix_cols, where in _old_indexes(table):
            op.create_index(name, table, ix_cols, sqlite_where=where, postgresql_where=where)
    op.execute(f"DROP TABLE {_MAP}")


def _old_type(table: str, column: str):
    from fhirgw.store.tables import metadata
    return metadata.tables[table].c[column].type


def _old_indexes(table: str) -> list[tuple[str, list[str], object]]:
    value = {"sp_token": ["code", "system"], "sp_string": ["norm"], "sp_date": ["low", "high"],
             "sp_number": ["value"], "sp_quantity": ["value"],
             "sp_reference": ["target_id", "target_type"], "sp_uri": ["value"],
             "sp_composite": ["key", "low"]}[table]
    out = [(f"ix_{table}_value", ["res_type", "param", *value], None),
           (f"ix_{table}_rid", ["rid"], None)]
    if table == "sp_token":
        out.append(("ix_sp_token_text", ["res_type", "param", "text"],
                    sa.text("text IS NOT NULL")))
    if table == "sp_reference":
        out.append(("ix_sp_reference_url", ["res_type", "param", "url"],
                    sa.text("url IS NOT NULL")))
    return out
