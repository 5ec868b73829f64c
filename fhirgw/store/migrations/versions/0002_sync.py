"""Sync: outbox, watermarks and links to partner copies (fhirgw/sync/tables.py).

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "sync_outbox",
        sa.Column("id", PK, primary_key=True, autoincrement=True),
        sa.Column("partner", sa.String(255), nullable=False),
        sa.Column("endpoint_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("res_key", sa.String(140), nullable=False),
        sa.Column("origin", sa.String(200), nullable=True),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("lease_until", sa.BigInteger, nullable=True),
        sa.Column("claim", sa.String(40), nullable=True),
        sa.Column("sent_at", sa.BigInteger, nullable=True),
        sa.Column("response_status", sa.Integer, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("outcome", sa.LargeBinary, nullable=True),
    )
    op.create_index("ix_sync_outbox_due", "sync_outbox", ["status", "next_attempt_at", "id"])
    op.create_index("ix_sync_outbox_key", "sync_outbox", ["partner", "res_key", "status"])
    op.create_table(
        "sync_watermark",
        sa.Column("partner", sa.String(255), primary_key=True),
        sa.Column("query", sa.String(500), primary_key=True),
        sa.Column("value", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "sync_link",
        sa.Column("partner", sa.String(255), primary_key=True),
        sa.Column("local_ref", sa.String(140), primary_key=True),
        sa.Column("remote_id", sa.String(64), nullable=False),
        sa.Column("open", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_sync_link_open", "sync_link", ["partner", "open"])


def downgrade() -> None:
    op.drop_table("sync_link")
    op.drop_table("sync_watermark")
    op.drop_table("sync_outbox")
