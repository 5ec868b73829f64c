"""Drop ``ix_sp_reference_target`` (``sp_reference (target_type, target_id)``).

Every search that looks references up by their target also names the referring resource
type and parameter (chains, ``_has``, compartments, ``_revinclude``; a ``*`` expands to the
type's reference parameters), so the value index ``(res_type, param, target_id,
target_type)`` serves it. The index by target alone only cost each write one more B-tree
insert per reference: replaying 100-resource transactions of the ingest benchmark into
SQLite, 0.4-0.9 ms of ~6.5 ms of inserts and commit.

Revision ID: 0006
Revises: 0005
"""
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


# IF EXISTS: a new database gets its baseline from the current tables, without it


def upgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_sp_reference_target")


def downgrade() -> None:
    op.execute("CREATE INDEX IF NOT EXISTS ix_sp_reference_target "
               "ON sp_reference (target_type, target_id)")
