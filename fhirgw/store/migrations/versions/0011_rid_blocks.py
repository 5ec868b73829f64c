"""PostgreSQL: each value of ``resource.rid``'s sequence ends a block of keys.

A process draws resource keys many at a time (``Tx._new_rids``, ``RID_BLOCK``): until now
one ``nextval`` per key, 256 in one statement. With the sequence's step set to 256, one
``nextval`` draws 256 keys (its value is the last of them; a sequence not used yet starts at
256), so a draw of thousands of keys is a handful of ``nextval`` calls.
Keys drawn before stay below every later block (the next value is at least the last one plus
the step); a process of an earlier version, which takes each value as one key, takes the
last key of a block nobody else is given; after a downgrade the values go on by 1 above
every block drawn. Nothing to do on SQLite.

Revision ID: 0011
Revises: 0010
"""
from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def _sequence(bind) -> str | None:
    """The name of ``resource.rid``'s sequence (None: not PostgreSQL)."""
    if bind.dialect.name != "postgresql":
        return None
    return bind.exec_driver_sql("SELECT pg_get_serial_sequence('resource', 'rid')").scalar()


def upgrade() -> None:
    bind = op.get_bind()
    seq = _sequence(bind)
    if seq is None:
        return
    # store.repository reads the step back from the sequence
    bind.exec_driver_sql(f"ALTER SEQUENCE {seq} INCREMENT BY 256")
    # a sequence never used yet gives its start, 1, first: make that 256, a whole block
    bind.exec_driver_sql(f"SELECT setval('{seq}', 256, false) FROM {seq} WHERE NOT is_called")


def downgrade() -> None:
    bind = op.get_bind()
    seq = _sequence(bind)
    if seq is not None:
        bind.exec_driver_sql(f"ALTER SEQUENCE {seq} INCREMENT BY 1")
