"""PostgreSQL: the key columns of the resource, history and index tables compare in "C" order.

``res_type``, ``res_id``, ``param``, ``target_type`` and ``target_id`` lead the B-tree keys
that every write inserts into (about 15 entries per resource). Under the database's locale
each comparison is a ``strcoll`` (or an ICU call); under "C" it is a ``memcmp``. Measured
with COPY into a reference index table of 100k rows: 30 µs per row under an ICU ``en-US``
collation, 20 under "C"; a ``C.UTF-8`` database is close to "C" already. Equality is
unchanged (both are deterministic); ``_sort=_id`` now orders by code point, as on SQLite.
Joins stay within these columns, so no comparison mixes collations. The indexes on these
columns are rebuilt, which takes a while on a large database. SQLite compares bytes
already: nothing to do.

Revision ID: 0005
Revises: 0004
"""
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_INDEX_TABLES = ("sp_token", "sp_string", "sp_date", "sp_number", "sp_quantity",
                 "sp_reference", "sp_uri", "sp_composite")
#: (table, column, varchar length)
COLUMNS = ([(t, "res_type", 64) for t in ("resource", "resource_history")]
           + [(t, "res_id", 64) for t in ("resource", "resource_history")]
           + [(t, c, n) for t in _INDEX_TABLES for c, n in (("res_type", 64), ("param", 100))]
           + [("sp_reference", "target_type", 64), ("sp_reference", "target_id", 64)])


def _collate(collation: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    import sqlalchemy as sa
    inspector = sa.inspect(bind)
    have = {t: {c["name"] for c in inspector.get_columns(t)} for t, _c, _n in COLUMNS}
    by_table: dict[str, list[str]] = {}
    for table, column, length in COLUMNS:
        if column not in have[table]:
            continue   # index tables keyed by pid (0007, or a new database's baseline)
        by_table.setdefault(table, []).append(
            f'ALTER COLUMN {column} TYPE varchar({length}) COLLATE "{collation}"')
    for table, changes in by_table.items():   # one statement per table: indexes rebuilt once
        op.execute(f"ALTER TABLE {table} {', '.join(changes)}")


def upgrade() -> None:
    _collate("C")


def downgrade() -> None:
    _collate("default")
