"""A HumanName's or an Address's string parameter keeps only what its parts do not.

``Patient.name`` searches every string of a HumanName (text, family, given, prefix,
suffix); ``family`` (``Patient.name.family``) and ``given`` have parameters of their own, so
the rows of ``name`` repeated theirs: 3 of every 10 string rows of the ingest benchmark.
Likewise ``address`` and ``address-city``, ``-state``, ``-postalcode``, ``-country`` on
Patient, Practitioner, RelatedPerson, Person, Location, Organization and InsurancePlan.
The search engine now finds such a whole's values in its own rows and its parts' rows
(``SearchRegistry.derived``, ``Derived.leaves_out``), and the write path writes its own rows
only for the other fields. ``upgrade`` deletes a whole's rows that one of its parts' rows of
the same resource holds (the same text); ``downgrade`` copies the parts' rows back under the
whole's key, so that an earlier version finds them.

The wholes come from the search package (``tables.WHOLE_PARAM_SOURCES``, with the
SearchParameters stored in the database). Without it, ``upgrade`` leaves the rows (nothing
is missing, the engine reads the parts too) and ``downgrade`` refuses.

Revision ID: 0010
Revises: 0009
"""
from __future__ import annotations

import logging

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

log = logging.getLogger("fhirgw.store")


def _wholes(bind) -> list[tuple[str, str, tuple[str, ...]]] | None:
    from fhirgw.store.tables import WHOLE_PARAM_SOURCES, gather

    return gather(WHOLE_PARAM_SOURCES, bind)


def _pairs(wholes) -> str:
    """``(VALUES (whole key, part key), ...)``: the keys are integers this code computed
    (``param_key``), written into the statement, so that one statement does every whole
    (the database's columns: ``column1``, ``column2``)."""
    from fhirgw.store.tables import param_key

    pairs = [(param_key(rtype, code), param_key(rtype, part))
             for rtype, code, parts in wholes for part in parts]
    return "(VALUES " + ", ".join(f"({int(w)}, {int(p)})" for w, p in pairs) + ")"


def upgrade() -> None:
    bind = op.get_bind()
    wholes = _wholes(bind)
    if wholes is None:
        if bind.exec_driver_sql("SELECT 1 FROM sp_string LIMIT 1").first() is not None:
            log.warning("migration 0010: the search package is not loaded; the string rows "
                        "that parts of names and addresses also hold stay")
        return
    if not wholes:
        return
    from fhirgw.store.tables import param_key

    keys = ", ".join(str(k) for k in sorted({param_key(rtype, code)
                                             for rtype, code, _parts in wholes}))
    bind.exec_driver_sql(
        f"DELETE FROM sp_string WHERE pid IN ({keys}) AND EXISTS (SELECT 1 FROM sp_string AS p "
        f"JOIN {_pairs(wholes)} AS m ON p.pid = m.column2 WHERE m.column1 = sp_string.pid "
        "AND p.rid = sp_string.rid AND p.exact = sp_string.exact)")


def downgrade() -> None:
    bind = op.get_bind()
    wholes = _wholes(bind)
    if wholes is None:
        raise RuntimeError("no source of the string wholes (import fhirgw.search first): "
                           "cannot write their rows again")
    if not wholes:
        return
    # one row per text and resource, as the earlier extraction wrote (it kept each string
    # of a resource's names once)
    bind.exec_driver_sql(
        "INSERT INTO sp_string (rid, pid, norm, exact) SELECT p.rid, m.column1, min(p.norm), "
        f"p.exact FROM sp_string AS p JOIN {_pairs(wholes)} AS m ON p.pid = m.column2 "
        "WHERE NOT EXISTS (SELECT 1 FROM sp_string AS w WHERE w.rid = p.rid AND "
        "w.pid = m.column1 AND w.exact = p.exact) GROUP BY p.rid, m.column1, p.exact")
