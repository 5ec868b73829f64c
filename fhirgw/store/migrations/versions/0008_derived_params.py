"""Derived parameters keep no index rows of their own.

``Condition.patient`` is ``Condition.subject.where(resolve() is Patient)``: its rows were
``subject``'s rows whose target is a Patient, written twice; ``Patient.phone`` is
``telecom``'s rows whose system is ``phone``; ``Patient.phonetic`` has ``name``'s
expression; ``Observation.combo-code`` is ``code`` | ``component-code``. The search engine
now finds them from their bases' rows (``SearchRegistry.derived``: 75 pairs of the
official parameters), and the write path no
longer writes them (their ``:identifier`` and ``:of-type`` rows stay). ``upgrade`` deletes
the rows written before; ``downgrade`` writes them again from their base's rows, so that an
earlier version of the gateway finds them.

The pairs come from the search package (``tables.DERIVED_PARAM_SOURCES``, with the
SearchParameters stored in the database). Without it, ``upgrade`` leaves the rows (nothing
reads them) and ``downgrade`` refuses.

Revision ID: 0008
Revises: 0007
"""
from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

log = logging.getLogger("fhirgw.store")


def _derived(bind) -> list[tuple] | None:
    from fhirgw.store.tables import DERIVED_PARAM_SOURCES, gather

    return gather(DERIVED_PARAM_SOURCES, bind)


def _table(search_type: str) -> str:
    return f"sp_{search_type}"


def upgrade() -> None:
    from fhirgw.store.tables import param_key

    bind = op.get_bind()
    derived = _derived(bind)
    if derived is None:
        if any(bind.exec_driver_sql(f"SELECT 1 FROM {_table(k)} LIMIT 1").first() is not None
               for k in ("reference", "token", "string")):
            log.warning("migration 0008: the search package is not loaded; the rows of "
                        "derived parameters stay (nothing reads them)")
        return
    by_table: dict[str, set[int]] = {}
    for stype, rtype, code, _base, _column, _values in derived:
        by_table.setdefault(_table(stype), set()).add(param_key(rtype, code))
    for table, keys in sorted(by_table.items()):
        keys_list = sorted(keys)
        for i in range(0, len(keys_list), 200):
            bind.execute(sa.text(f"DELETE FROM {table} WHERE pid IN :keys")
                         .bindparams(sa.bindparam("keys", expanding=True)),
                         {"keys": keys_list[i:i + 200]})


def downgrade() -> None:
    from fhirgw.store.tables import INDEX_COLUMNS, param_key

    bind = op.get_bind()
    derived = _derived(bind)
    if derived is None:
        raise RuntimeError("no source of derived search parameters (import fhirgw.search "
                           "first): cannot write their rows again")
    for stype, rtype, code, base, column, values in derived:
        cols = [c for c in INDEX_COLUMNS[stype] if c != "pid"]
        names = ", ".join(cols)
        sql = (f"INSERT INTO {_table(stype)} (rid, pid, {names}) SELECT rid, :key, {names} "
               f"FROM {_table(stype)} WHERE pid = :base")
        params = {"key": param_key(rtype, code), "base": param_key(rtype, base)}
        stmt = sa.text(sql)
        if column is not None:
            stmt = sa.text(sql + f" AND {column} IN :values").bindparams(
                sa.bindparam("values", expanding=True))
            params["values"] = list(values)
        bind.execute(stmt, params)
