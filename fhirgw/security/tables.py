"""The security room's tables, on their own ``MetaData`` (created by migration 0003).

* ``auth_client``: the OAuth2 clients allowed to get tokens. A client has a hashed secret
  (client_secret_basic) and/or a JWKS of public keys (SMART Backend Services
  private_key_jwt), its granted scopes, and optionally the Organization it speaks for (a
  referral partner or a pharmacy: the partner view). Revoked clients stay, marked.
* ``auth_jti``: the ``jti`` of every client assertion accepted, until it expires, so an
  assertion cannot be replayed.
* ``auth_key``: the keys access tokens are signed with, shared by every process on the
  database (the newest signs; all verify).

Times are integer microseconds since the epoch, like the store's.
"""
from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, LargeBinary, MetaData, String, Table, Text

auth_metadata = MetaData()

auth_client = Table(
    "auth_client", auth_metadata,
    Column("client_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("secret_hash", String(255), nullable=True),
    Column("jwks", Text, nullable=True),
    Column("scope", Text, nullable=False),
    Column("organization", String(140), nullable=True),
    Column("purpose", String(32), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
)

auth_jti = Table(
    "auth_jti", auth_metadata,
    Column("client_id", String(64), primary_key=True),
    Column("jti", String(255), primary_key=True),
    Column("expires_at", BigInteger, nullable=False),
    Index("ix_auth_jti_expires", "expires_at"),
)

auth_key = Table(
    "auth_key", auth_metadata,
    Column("kid", String(64), primary_key=True),
    Column("secret", LargeBinary, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)
