"""Baseline schema: resources, history and search index tables.

Revision ID: 0001
Revises:
Until the first release the baseline is the schema in fhirgw/store/tables.py; every change
after a release gets its own revision with explicit operations.
"""
from alembic import op

from fhirgw.store.tables import metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    metadata.drop_all(op.get_bind())
