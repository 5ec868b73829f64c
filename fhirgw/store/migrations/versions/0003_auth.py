"""Security: OAuth2 clients, replay-protected assertion ids, token signing keys
(fhirgw/security/tables.py).

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auth_client",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret_hash", sa.String(255), nullable=True),
        sa.Column("jwks", sa.Text, nullable=True),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("organization", sa.String(140), nullable=True),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("revoked_at", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "auth_jti",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("jti", sa.String(255), primary_key=True),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_auth_jti_expires", "auth_jti", ["expires_at"])
    op.create_table(
        "auth_key",
        sa.Column("kid", sa.String(64), primary_key=True),
        sa.Column("secret", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("auth_key")
    op.drop_table("auth_jti")
    op.drop_table("auth_client")
