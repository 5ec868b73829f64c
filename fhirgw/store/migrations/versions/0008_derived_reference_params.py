"""Derived reference parameters keep no index rows of their own.

``Condition.patient`` is ``Condition.subject.where(resolve() is Patient)``: its rows were
``subject``'s rows whose target is a Patient, written twice. The search engine now finds them
from ``subject``'s rows (``SearchRegistry.derived``: 47 pairs of the official parameters,
``patient`` = ``subject`` on 36 types, ``Appointment``'s ``patient``, ``practitioner`` and
``location`` = ``actor``, ...), and the write path no longer writes them (their
``:identifier`` rows stay). ``upgrade`` deletes the rows written before; ``downgrade`` writes
them again from their base's rows, so that an earlier version of the gateway finds them.

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


def _derived(bind) -> list[tuple[str, str, str, tuple[str, ...]]] | None:
    from fhirgw.store.tables import DERIVED_PARAM_SOURCES

    if not DERIVED_PARAM_SOURCES:
        return None
    out = []
    for source in DERIVED_PARAM_SOURCES:
        out.extend(source(bind))
    return out


def upgrade() -> None:
    from fhirgw.store.tables import param_key

    bind = op.get_bind()
    derived = _derived(bind)
    if derived is None:
        if bind.exec_driver_sql("SELECT 1 FROM sp_reference LIMIT 1").first() is not None:
            log.warning("migration 0008: the search package is not loaded; the rows of "
                        "derived reference parameters stay (nothing reads them)")
        return
    keys = sorted({param_key(t, code) for t, code, _base, _types in derived})
    for i in range(0, len(keys), 200):
        bind.execute(sa.text("DELETE FROM sp_reference WHERE pid IN :keys")
                     .bindparams(sa.bindparam("keys", expanding=True)),
                     {"keys": keys[i:i + 200]})


def downgrade() -> None:
    from fhirgw.store.tables import param_key

    bind = op.get_bind()
    derived = _derived(bind)
    if derived is None:
        raise RuntimeError("no source of derived search parameters (import fhirgw.search "
                           "first): cannot write their rows again")
    for t, code, base, types in derived:
        bind.execute(
            sa.text("INSERT INTO sp_reference (rid, pid, target_type, target_id, url) "
                    "SELECT rid, :key, target_type, target_id, url FROM sp_reference "
                    "WHERE pid = :base AND target_type IN :types")
            .bindparams(sa.bindparam("types", expanding=True)),
            {"key": param_key(t, code), "base": param_key(t, base), "types": list(types)})
