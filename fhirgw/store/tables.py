"""The schema. SQLAlchemy Core tables, shared by SQLite and PostgreSQL.

* ``resource``: the current version of every resource (deleted ones stay, flagged), with a
  surrogate integer key ``rid`` that every index row points at.
* ``resource_history``: every version ever written, ``seq`` orders the whole server's history.
  The current version's body is stored once, in ``resource.body`` (its history row's body is
  NULL until an update or deletion moves it there).
* ``sp_*``: search index tables, one row per indexed value (HAPI's HFJ_SPIDX_* layout),
  written in the same transaction as the resource. ``pid``, the key of the resource type and
  parameter (``param_key``), leads every index so a search touches only its own parameter's
  rows.

Times are stored as integer microseconds since the Unix epoch (UTC): the same comparisons on
both databases, no timezone or collation surprises. Dates index as ranges ``[low, high]``.
"""
from __future__ import annotations

import hashlib
import threading

from sqlalchemy import (BigInteger, Boolean, Column, Float, Index, Integer, LargeBinary, MetaData,
                        String, Table, Text)

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias)
PK = BigInteger().with_variant(Integer(), "sqlite")


def _ctext(length: int | None = None):
    """A string column compared in code point order on both databases: SQLite's default
    BINARY collation, and "C" on PostgreSQL (the search engine's prefix ranges, ``LIKE`` and
    ``ORDER BY`` then behave the same on both, and btree indexes serve prefix searches).
    Every key column (types, ids, parameter codes) is one too: a "C" comparison is a
    ``memcmp``, a locale's a ``strcoll`` or an ICU call, and an index row's keys are
    compared at every B-tree level of every insert (migration 0005)."""
    base = String(length) if length else Text()
    return base.with_variant(String(length, collation="C") if length else Text(collation="C"),
                             "postgresql")


resource = Table(
    "resource", metadata,
    Column("rid", PK, primary_key=True, autoincrement=True),
    Column("res_type", _ctext(64), nullable=False),
    Column("res_id", _ctext(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("body", LargeBinary, nullable=True),
    Index("ux_resource_type_id", "res_type", "res_id", unique=True),
    Index("ix_resource_type_updated", "res_type", "last_updated"),
)

resource_history = Table(
    "resource_history", metadata,
    Column("seq", PK, primary_key=True, autoincrement=True),
    Column("rid", BigInteger, nullable=False),
    Column("res_type", _ctext(64), nullable=False),
    Column("res_id", _ctext(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", BigInteger, nullable=False),
    Column("method", String(8), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("body", LargeBinary, nullable=True),
    Index("ux_history_type_id_version", "res_type", "res_id", "version", unique=True),
    Index("ix_history_updated", "last_updated"),
    Index("ix_history_type_updated", "res_type", "last_updated"),
)


# ---------------------------------------------------------------- parameter keys

_keys: dict[tuple[str, str], int] = {}
_owners: dict[int, tuple[str, str]] = {}
_keys_lock = threading.Lock()


class ParamKeyCollision(RuntimeError):
    """Two (resource type, parameter) pairs with the same key: never seen, but checked."""


def param_key(res_type: str, param: str) -> int:
    """The key of a resource type's search parameter in the index tables' ``pid`` column:
    the first 8 bytes of the BLAKE2b hash of ``Type.param``, as a signed 64-bit integer.

    Index rows used to carry the type and the parameter's code as two strings, both leading
    every index key (``Condition`` + ``clinical-status``: 24 bytes before the value, and two
    string comparisons at each B-tree level of every insert). One integer takes 8 bytes
    where the two strings took ~20 and compares in one instruction. Replaying the ingest
    benchmark's rows (100-resource Bundles) into fresh databases: SQLite 4.1 -> 3.4 ms of
    inserts and 1.5 -> 1.2 ms of commit per Bundle (1.9 -> 1.5 MB of WAL); PostgreSQL 7.1 ->
    6.0 ms of COPY. The key is computed, not stored in a dictionary table: every process
    (and the migration that brought older tables to it) finds the same key without asking
    the database, custom SearchParameters included. Two pairs sharing a key would mix their
    rows; with 63 bits that takes billions of parameters, and each process checks the pairs
    it meets (``ParamKeyCollision``). Special rows use their suffixed code (``code:of-type``,
    ``code:identifier``, ``_text``).

    >>> param_key("Patient", "name") == param_key("Patient", "name") != param_key("Person", "name")
    True
    """
    key = _keys.get((res_type, param))
    if key is None:
        key = int.from_bytes(hashlib.blake2b(f"{res_type}.{param}".encode(),
                                             digest_size=8).digest(), "big", signed=True)
        with _keys_lock:
            owner = _owners.setdefault(key, (res_type, param))
            if owner != (res_type, param):
                raise ParamKeyCollision(f"{res_type}.{param} and {owner[0]}.{owner[1]} have "
                                        f"the same index key {key}")
            _keys[(res_type, param)] = key
    return key


def param_of(key: int) -> tuple[str, str] | None:
    """(resource type, parameter) of a key this process has made, else None."""
    return _owners.get(key)


#: where the (type, parameter) pairs the gateway indexes come from, to name keys back (the
#: downgrade of migration 0007): functions ``(connection) -> iterable of pairs``. The search
#: package adds its own when imported (the store does not import it).
PARAM_PAIR_SOURCES: list = []

#: where the derived parameters come from (migration 0008): functions ``(connection) ->
#: iterable of (search type, resource type, code, base code, column, values)``, the
#: parameters whose rows are their base's rows whose ``column`` is one of ``values`` (all of
#: them when ``column`` is None; ``SearchRegistry.derived``). The search package adds its
#: own when imported.
DERIVED_PARAM_SOURCES: list = []

#: where the string wholes come from (migration 0010): functions ``(connection) -> iterable
#: of (resource type, code, part codes)``, the parameters (``Patient.name``) whose rows
#: leave out the values their parts' rows (``family``, ``given``) hold
#: (``SearchRegistry.derived``, ``leaves_out``). The search package adds its own.
WHOLE_PARAM_SOURCES: list = []


def gather(sources: list, conn) -> list | None:
    """What the functions registered in ``sources`` (``PARAM_PAIR_SOURCES``, ...) say for
    the database of ``conn``, in one list; None when none is registered (the search
    package is not loaded)."""
    if not sources:
        return None
    out: list = []
    for source in sources:
        out.extend(source(conn))
    return out


# ---------------------------------------------------------------- index tables

def _index_table(name: str, *cols: Column, value_index: tuple[str, ...]) -> Table:
    # no surrogate key: nothing addresses one index row, and on PostgreSQL a serial primary
    # key would cost a sequence call and a third btree insert per row (SQLite keeps its rowid)
    return Table(
        name, metadata,
        Column("rid", BigInteger, nullable=False),
        Column("pid", BigInteger, nullable=False),   # param_key(type, parameter)
        *cols,
        Index(f"ix_{name}_value", "pid", *value_index),
        Index(f"ix_{name}_rid", "rid"),
    )


#: token: Coding/CodeableConcept/Identifier/code/boolean/ContactPoint; ``text`` is the
#: normalized display/text for ``:text``
sp_token = _index_table(
    "sp_token",
    Column("system", _ctext(255), nullable=True),
    Column("code", _ctext(255), nullable=True),
    Column("text", _ctext(255), nullable=True),
    value_index=("code", "system"),
)
# partial: only rows that have a text (a code's display, a CodeableConcept's text) are
# looked up by it (``:text``; a comparison implies NOT NULL, so both databases use it), and
# every row left out is one B-tree insert less per write
_HAS_TEXT = sp_token.c.text.isnot(None)
Index("ix_sp_token_text", sp_token.c.pid, sp_token.c.text,
      sqlite_where=_HAS_TEXT, postgresql_where=_HAS_TEXT)

#: string: ``norm`` is lower-cased, accent-stripped, whitespace-folded (prefix / contains
#: matching); ``exact`` is the original value (``:exact``)
sp_string = _index_table(
    "sp_string",
    Column("norm", _ctext(255), nullable=False),
    Column("exact", Text, nullable=False),
    value_index=("norm",),
)

#: date: the value's range in epoch microseconds (a date ``2026-01`` covers the month)
sp_date = _index_table(
    "sp_date",
    Column("low", BigInteger, nullable=True),
    Column("high", BigInteger, nullable=True),
    value_index=("low", "high"),
)

#: number: the value; ``low``/``high`` equal it (a point; searches carry the precision range)
sp_number = _index_table(
    "sp_number",
    Column("value", Float, nullable=False),
    Column("low", Float, nullable=False),
    Column("high", Float, nullable=False),
    value_index=("value",),
)

#: quantity: value and its range (``low``=``high``=``value`` for a Quantity, the bounds for a
#: Range, open ends as +/-1e300), and the unit's system/code (and free-text unit)
sp_quantity = _index_table(
    "sp_quantity",
    Column("value", Float, nullable=False),
    Column("low", Float, nullable=False),
    Column("high", Float, nullable=False),
    Column("system", String(255), nullable=True),
    Column("code", String(255), nullable=True),
    Column("unit", String(255), nullable=True),
    value_index=("value",),
)

#: reference: a local target (``target_type``/``target_id``), or an absolute/canonical
#: ``url`` for targets elsewhere
sp_reference = _index_table(
    "sp_reference",
    Column("target_type", _ctext(64), nullable=True),
    Column("target_id", _ctext(64), nullable=True),
    Column("url", _ctext(512), nullable=True),
    value_index=("target_id", "target_type"),
)
# partial: a local reference (most of them) has no url and is found by target_id instead
_HAS_URL = sp_reference.c.url.isnot(None)
Index("ix_sp_reference_url", sp_reference.c.pid, sp_reference.c.url,
      sqlite_where=_HAS_URL, postgresql_where=_HAS_URL)
# no index by target alone (migration 0006): every lookup by target also names the
# referring type and parameter (chains, _has, compartments, _revinclude; a `*` lists the
# type's reference parameters), which the value index serves; it cost each write a B-tree
# insert per reference (~0.4-0.9 ms per 100-resource transaction on SQLite)

#: uri (and canonical)
sp_uri = _index_table(
    "sp_uri",
    Column("value", _ctext(512), nullable=False),
    value_index=("value",),
)

#: composite: one row per combination of component values. ``key`` joins the exact-match
#: forms of the components with ``$`` (token ``code`` / ``system|code`` / ``|code``, normalized
#: string, reference ``Type/id``, uri; a quantity last component adds its unit form). When the
#: last component is ordered (number, quantity, date), its range is ``low``/``high`` (dates in
#: epoch microseconds), so ``code-value-quantity=http://loinc.org|8480-6$gt100`` is
#: ``key = 'http://loinc.org|8480-6$' AND high > 100``.
sp_composite = _index_table(
    "sp_composite",
    Column("key", _ctext(512), nullable=False),
    Column("low", Float, nullable=True),
    Column("high", Float, nullable=True),
    value_index=("key", "low"),
)

INDEX_TABLES: dict[str, Table] = {
    "token": sp_token,
    "string": sp_string,
    "date": sp_date,
    "number": sp_number,
    "quantity": sp_quantity,
    "reference": sp_reference,
    "uri": sp_uri,
    "composite": sp_composite,
}

#: the columns of each index table a row of values fills, in table order: every column but
#: ``rid`` (the store adds it last when it inserts). ``search.extract`` builds its rows in
#: this order.
INDEX_COLUMNS: dict[str, tuple[str, ...]] = {
    kind: tuple(c.name for c in table.columns if c.name != "rid")
    for kind, table in INDEX_TABLES.items()
}
