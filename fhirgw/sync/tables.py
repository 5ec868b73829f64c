"""The sync room's tables, on their own ``MetaData`` (the baseline migration 0001 creates
``store.tables.metadata`` only; these come from migration 0002).

* ``sync_outbox``: one row per delivery owed to a partner, written in the same transaction
  as the change that caused it. ``res_key`` names what is delivered (``ServiceRequest/1``
  for a referral, ``Bundle/7`` for a message or document); rows of one (partner, res_key)
  are delivered in ``id`` order, rows of different keys independently.
* ``sync_watermark``: per partner and poll query, the partner's ``meta.lastUpdated`` seen.
* ``sync_link``: what we sent that the partner holds under its own id (a referral Task on
  the partner), so its status changes can be polled back.

Times are integer microseconds since the epoch, like the store's.
"""
from __future__ import annotations

from sqlalchemy import (
                        BigInteger,
                        Boolean,
                        Column,
                        Index,
                        Integer,
                        LargeBinary,
                        MetaData,
                        String,
                        Table,
                        Text,
)

sync_metadata = MetaData()

PK = BigInteger().with_variant(Integer(), "sqlite")

#: row states: pending (due at next_attempt_at), inflight (claimed until lease_until),
#: sent, dead (permanent failure; outcome kept), discarded (by an operator)
STATUSES = ("pending", "inflight", "sent", "dead", "discarded")

outbox = Table(
    "sync_outbox", sync_metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("partner", String(255), nullable=False),
    Column("endpoint_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("res_key", String(140), nullable=False),
    Column("origin", String(200), nullable=True),
    Column("status", String(12), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", BigInteger, nullable=False),
    Column("next_attempt_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("lease_until", BigInteger, nullable=True),
    Column("claim", String(40), nullable=True),
    Column("sent_at", BigInteger, nullable=True),
    Column("response_status", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("outcome", LargeBinary, nullable=True),
    Index("ix_sync_outbox_due", "status", "next_attempt_at", "id"),
    Index("ix_sync_outbox_key", "partner", "res_key", "status"),
)

watermark = Table(
    "sync_watermark", sync_metadata,
    Column("partner", String(255), primary_key=True),
    Column("query", String(500), primary_key=True),
    Column("value", String(64), nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

link = Table(
    "sync_link", sync_metadata,
    Column("partner", String(255), primary_key=True),
    Column("local_ref", String(140), primary_key=True),
    Column("remote_id", String(64), nullable=False),
    Column("open", Boolean, nullable=False, default=True),
    Column("updated_at", BigInteger, nullable=False),
    Column("last_error", Text, nullable=True),
    Index("ix_sync_link_open", "partner", "open"),
)
