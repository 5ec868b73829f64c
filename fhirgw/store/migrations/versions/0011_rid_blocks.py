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


def _step(step: int) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    seq = bind.exec_driver_sql("SELECT pg_get_serial_sequence('resource', 'rid')").scalar()
    bind.exec_driver_sql(f"ALTER SEQUENCE {seq} INCREMENT BY {int(step)}")


def upgrade() -> None:
    _step(256)   # store.repository reads the step back from the sequence
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # a sequence never used yet gives its start, 1, first: make that 256, a whole block
        seq = bind.exec_driver_sql("SELECT pg_get_serial_sequence('resource', 'rid')").scalar()
        bind.exec_driver_sql(f"SELECT setval('{seq}', 256, false) FROM {seq} WHERE NOT is_called")


def downgrade() -> None:
    _step(1)
