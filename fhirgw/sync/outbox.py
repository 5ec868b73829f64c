"""The outbox on the database: claiming due rows, recording results, operator actions and
metrics. Used by the worker, the CLI and the admin API.

Claiming: a row is due when it is ``pending``, its ``next_attempt_at`` has passed, and no
older row for the same (partner, kind, res_key) is pending or in flight (order is kept per
resource, nothing else waits). A claim takes the due rows and every younger pending row of
the same key (their changes are in the state the delivery reads), marks them ``inflight``
with a claim token and a lease. On PostgreSQL the due rows are selected ``FOR UPDATE SKIP
LOCKED``, so several workers share the queue; on SQLite the claim is one ``BEGIN
IMMEDIATE`` transaction. A row whose lease ran out (its worker died) is due again.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

import orjson
from sqlalchemy import and_, bindparam, exists, func, or_, select, update
from sqlalchemy.engine import Engine

from ..store.repository import clock
from .tables import link, outbox, watermark

SEC = 1_000_000


@dataclass
class Claimed:
    token: str
    partner: str
    endpoint_id: str
    kind: str
    res_key: str
    ids: list[int]
    created_at: int
    attempts: int


def _write(engine: Engine):
    conn = engine.connect().execution_options(fhirgw_write=True)
    return conn


#: is anything due? (index ix_sync_outbox_due; built once: an idle worker asks this
#: several times a second, and building the statement cost ten times running it)
_DUE = select(outbox.c.id).where(or_(
    and_(outbox.c.status == "pending", outbox.c.next_attempt_at <= bindparam("now")),
    and_(outbox.c.status == "inflight", outbox.c.lease_until < bindparam("now")))).limit(1)


def claim(engine: Engine, *, limit: int = 50, lease: float = 60.0,
          exclude: frozenset[str] = frozenset()) -> list[Claimed]:
    now = clock.now()
    # a read first: an idle worker must not take SQLite's write lock, or wake PostgreSQL
    # row locks, several times a second for nothing
    with engine.connect() as probe:
        busy = probe.execute(_DUE, {"now": now}).first()
    if busy is None:
        return []
    token = uuid.uuid4().hex
    o = outbox.alias("o")
    p = outbox.alias("p")
    older = select(p.c.id).where(p.c.partner == o.c.partner, p.c.kind == o.c.kind,
                                 p.c.res_key == o.c.res_key, p.c.id < o.c.id,
                                 p.c.status.in_(("pending", "inflight")))
    q = (select(o.c.id, o.c.partner, o.c.endpoint_id, o.c.kind, o.c.res_key, o.c.created_at,
                o.c.attempts)
         .where(o.c.status == "pending", o.c.next_attempt_at <= now, ~exists(older))
         .order_by(o.c.id).limit(limit))
    if exclude:
        q = q.where(o.c.partner.not_in(sorted(exclude)))
    conn = _write(engine)
    try:
        with conn.begin():
            # rows of a worker that died: due again
            conn.execute(update(outbox).where(outbox.c.status == "inflight",
                                              outbox.c.lease_until < now)
                         .values(status="pending", claim=None, updated_at=now))
            if engine.dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True, of=o)
            heads = conn.execute(q).all()
            if not heads:
                return []
            until = now + int(lease * SEC)
            # each head and every younger pending row of its key, in one executemany
            conn.execute(_CLAIM_KEY, [{"k_partner": h.partner, "k_kind": h.kind,
                                       "k_res_key": h.res_key, "k_id": h.id,
                                       "v_claim": token, "v_until": until, "v_now": now}
                                      for h in heads])
            ids: dict[tuple[str, str, str], list[int]] = {}
            for r in conn.execute(select(outbox.c.id, outbox.c.partner, outbox.c.kind,
                                         outbox.c.res_key)
                                  .where(outbox.c.status == "inflight",
                                         outbox.c.claim == token).order_by(outbox.c.id)):
                ids.setdefault((r.partner, r.kind, r.res_key), []).append(r.id)
            # a head whose rows another claim took meanwhile (none on PostgreSQL, where the
            # heads are locked; none on SQLite, where the claim holds the write lock) is
            # not ours to deliver
            out = [Claimed(token, h.partner, h.endpoint_id, h.kind, h.res_key, ids[key],
                           h.created_at, h.attempts) for h in heads
                   if (key := (h.partner, h.kind, h.res_key)) in ids]
    finally:
        conn.close()
    return out


_CLAIM_KEY = (update(outbox)
              .where(outbox.c.partner == bindparam("k_partner"),
                     outbox.c.kind == bindparam("k_kind"),
                     outbox.c.res_key == bindparam("k_res_key"),
                     outbox.c.status == "pending", outbox.c.id >= bindparam("k_id"))
              .values(status="inflight", claim=bindparam("v_claim"),
                      lease_until=bindparam("v_until"), updated_at=bindparam("v_now")))


@dataclass
class Outcome:
    """What happened to one claimed group."""
    claimed: Claimed
    status: str                  # sent | pending | dead | discarded | release
    error: str | None = None
    response_status: int | None = None
    outcome: dict | None = None
    next_attempt_at: int | None = None
    #: (local ref, remote id, open) to remember (referral Tasks on the partner)
    links: list[tuple[str, str, bool]] | None = None


def record(engine: Engine, outcomes: list[Outcome]) -> None:
    """Write the results of a batch in one transaction (only rows still held by the claim).

    Outcomes that set the same values (typically every ``sent`` of a batch) share one
    ``UPDATE … WHERE id IN (…)``; the links are upserted together."""
    if not outcomes:
        return
    now = clock.now()
    same: dict[tuple, tuple[dict, list[int]]] = {}
    links: dict[tuple[str, str], dict] = {}
    for oc in outcomes:
        c = oc.claimed
        values: dict = {"updated_at": now, "lease_until": None}
        if oc.status == "release":   # not attempted (circuit open): back, unchanged
            values.update(status="pending", claim=None,
                          next_attempt_at=oc.next_attempt_at or now)
        else:
            values.update(status=oc.status, last_error=oc.error,
                          response_status=oc.response_status)
            if oc.outcome is not None:
                values["outcome"] = orjson.dumps(oc.outcome)
            if oc.status == "sent":
                values.update(sent_at=now, last_error=None)
            if oc.status == "pending":
                values.update(claim=None, next_attempt_at=oc.next_attempt_at or now)
        key = (c.token, oc.status != "release", *sorted(values.items()))
        same.setdefault(key, (values, []))[1].extend(c.ids)
        for local_ref, remote_id, is_open in oc.links or ():
            links[(c.partner, local_ref)] = {"partner": c.partner, "local_ref": local_ref,
                                             "remote_id": remote_id, "open": is_open,
                                             "updated_at": now}
    conn = _write(engine)
    try:
        with conn.begin():
            for (token, attempted, *_v), (values, ids) in same.items():
                if attempted:
                    values = {**values, "attempts": outbox.c.attempts + 1}
                for n in range(0, len(ids), 500):
                    conn.execute(update(outbox).where(
                        outbox.c.id.in_(ids[n:n + 500]), outbox.c.claim == token,
                        outbox.c.status == "inflight").values(**values))
            save_links(conn, list(links.values()))
    finally:
        conn.close()


def save_links(conn, rows: list[dict]) -> None:
    """Insert or update several ``sync_link`` rows (partner, local_ref, remote_id, open,
    updated_at) in one statement where the database has ``ON CONFLICT``."""
    if not rows:
        return
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        if name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        stmt = dialect_insert(link)
        stmt = stmt.on_conflict_do_update(
            index_elements=[link.c.partner, link.c.local_ref],
            set_={"remote_id": stmt.excluded.remote_id, "open": stmt.excluded.open,
                  "updated_at": stmt.excluded.updated_at})
        conn.execute(stmt, rows)
        return
    for r in rows:
        save_link(conn, r["partner"], r["local_ref"], r["remote_id"], r["open"],
                  r["updated_at"])


def save_link(conn, partner: str, local_ref: str, remote_id: str, is_open: bool,
              now: int) -> None:
    done = conn.execute(update(link).where(link.c.partner == partner,
                                           link.c.local_ref == local_ref)
                        .values(remote_id=remote_id, open=is_open, updated_at=now))
    if done.rowcount == 0:
        conn.execute(link.insert().values(partner=partner, local_ref=local_ref,
                                          remote_id=remote_id, open=is_open, updated_at=now))


# ---------------------------------------------------------------- operators

def _row_dict(r, full: bool = False) -> dict:
    now = clock.now()
    d = {"id": r.id, "partner": r.partner, "kind": r.kind, "resource": r.res_key,
         "status": r.status, "attempts": r.attempts,
         "created": _iso(r.created_at), "age_seconds": round((now - r.created_at) / SEC, 3),
         "next_attempt": _iso(r.next_attempt_at) if r.status == "pending" else None,
         "sent": _iso(r.sent_at) if r.sent_at else None,
         "response_status": r.response_status, "error": r.last_error}
    if full:
        d["origin"] = r.origin
        d["endpoint"] = f"Endpoint/{r.endpoint_id}"
        d["outcome"] = orjson.loads(r.outcome) if r.outcome else None
    return d


def _iso(us: int | None) -> str | None:
    from ..store.repository import instant
    return instant(us) if us else None


def list_rows(engine: Engine, *, status: str | None = None, partner: str | None = None,
              limit: int = 100, offset: int = 0) -> list[dict]:
    q = select(outbox).order_by(outbox.c.id.desc()).limit(limit).offset(offset)
    if status:
        q = q.where(outbox.c.status == status)
    if partner:
        q = q.where(outbox.c.partner == partner)
    with engine.connect() as conn:
        return [_row_dict(r) for r in conn.execute(q).all()]


def show(engine: Engine, row_id: int) -> dict | None:
    with engine.connect() as conn:
        r = conn.execute(select(outbox).where(outbox.c.id == row_id)).first()
    return _row_dict(r, full=True) if r else None


def retry(engine: Engine, row_id: int | None = None, *, status: str = "dead",
          partner: str | None = None) -> int:
    """Make dead (or discarded) rows due now; returns how many."""
    now = clock.now()
    q = update(outbox).values(status="pending", next_attempt_at=now, updated_at=now,
                              claim=None, lease_until=None, created_at=now)
    if row_id is not None:
        q = q.where(outbox.c.id == row_id, outbox.c.status.in_(("dead", "discarded",
                                                                 "pending")))
    else:
        q = q.where(outbox.c.status == status)
        if partner:
            q = q.where(outbox.c.partner == partner)
    conn = _write(engine)
    try:
        with conn.begin():
            return conn.execute(q).rowcount
    finally:
        conn.close()


def discard(engine: Engine, row_id: int) -> int:
    """Stop trying a pending or dead row (an in-flight one finishes first)."""
    now = clock.now()
    conn = _write(engine)
    try:
        with conn.begin():
            return conn.execute(update(outbox).where(
                outbox.c.id == row_id, outbox.c.status.in_(("pending", "dead")))
                .values(status="discarded", updated_at=now)).rowcount
    finally:
        conn.close()


def metrics(engine: Engine) -> dict[str, dict]:
    """Per partner: queued (pending + in flight), sent, failed (dead), discarded, and the
    age in seconds of the oldest queued row."""
    now = clock.now()
    out: dict[str, dict] = {}
    with engine.connect() as conn:
        rows = conn.execute(select(outbox.c.partner, outbox.c.status, func.count(),
                                   func.min(outbox.c.created_at))
                            .group_by(outbox.c.partner, outbox.c.status)).all()
        wms = conn.execute(select(watermark)).all()
        links = conn.execute(select(link.c.partner, func.count())
                             .where(link.c.open.is_(True)).group_by(link.c.partner)).all()
    for partner, status, count, oldest in rows:
        m = out.setdefault(partner, {"queued": 0, "sent": 0, "failed": 0, "discarded": 0,
                                     "oldest_age_seconds": 0.0})
        if status in ("pending", "inflight"):
            m["queued"] += count
            m["oldest_age_seconds"] = max(m["oldest_age_seconds"], round((now - oldest) / SEC, 3))
        elif status == "sent":
            m["sent"] += count
        elif status == "dead":
            m["failed"] += count
        elif status == "discarded":
            m["discarded"] += count
    for partner, count in links:
        out.setdefault(partner, {"queued": 0, "sent": 0, "failed": 0, "discarded": 0,
                                 "oldest_age_seconds": 0.0})["tracked_tasks"] = count
    for w in wms:
        out.setdefault(w.partner, {"queued": 0, "sent": 0, "failed": 0, "discarded": 0,
                                   "oldest_age_seconds": 0.0}).setdefault(
            "watermarks", {})[w.query] = w.value
    return out
