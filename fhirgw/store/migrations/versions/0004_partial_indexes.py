"""Partial indexes: ``sp_token`` text and ``sp_reference`` url only for rows that have one.

Most token rows have no display text and most references are local (no url): leaving them
out of these two indexes saves a B-tree insert per such row on every write. Searches on
``:text`` and on absolute references compare the column, which implies NOT NULL, so both
databases still use the indexes. Rebuilding them takes a while on a large database.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_INDEXES = (("ix_sp_token_text", "sp_token", ["res_type", "param", "text"], "text"),
            ("ix_sp_reference_url", "sp_reference", ["res_type", "param", "url"], "url"))


def _recreate(partial: bool) -> None:
    bind = op.get_bind()
    for name, table, cols, col in _INDEXES:
        if "res_type" not in {c["name"] for c in sa.inspect(bind).get_columns(table)}:
            continue   # keyed by pid (0007, or a new database's baseline): made with it
        op.drop_index(name, table_name=table)
        where = sa.text(f"{col} IS NOT NULL") if partial else None
        op.create_index(name, table, cols, sqlite_where=where, postgresql_where=where)


def upgrade() -> None:
    _recreate(partial=True)


def downgrade() -> None:
    _recreate(partial=False)
