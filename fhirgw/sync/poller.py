"""Inbound polling: for partners that do not push, the worker asks.

* Referral Tasks we sent (``sync_link``, open ones): ``Task?_id=a,b,…&_lastUpdated=gt{wm}``
  on the partner. A status change there (accepted, in-progress, completed with outputs,
  rejected or failed with a reason) is applied to our Task through the repository's write
  path, so the Task state machine checks it and the ServiceRequest follows. References in
  outputs to the partner's resources become absolute URLs on the partner. A terminal status
  closes the link.
* Configured searches (``[[partners.X.poll]] query = "Appointment?…&_lastUpdated=gt{watermark}"``):
  every page is read, the mapping applied (direction ``in``), and each resource upserted by
  its business identifier (the partner's id becomes one when it has none).

Each query's watermark (the largest ``meta.lastUpdated`` seen, from the partner's clock) is
stored after the whole result was applied, so a restart resumes where it left off. The
query asks from a little before the watermark (changes committed out of order on the
partner are not missed); applying the same change twice changes nothing.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from urllib.parse import quote

from sqlalchemy import select, update

from ..model.errors import FhirError
from ..store.repository import clock
from .connectors import SearchFailed
from .mapping import MappingError, for_partner
from .outbox import save_link
from .partners import Partner
from .routing import _REL, inbound, partner_by_key
from .tables import link, watermark

log = logging.getLogger("fhirgw.sync.poll")
OVERLAP = timedelta(seconds=2)
EPOCH = "1970-01-01T00:00:00Z"
TASK_FIELDS = ("status", "statusReason", "businessStatus", "output", "executionPeriod")
TERMINAL = frozenset({"completed", "rejected", "cancelled", "failed", "entered-in-error"})


def _parse(ts: str) -> datetime | None:
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None


def _since(wm: str | None) -> str:
    d = _parse(wm) if wm else None
    if d is None:
        return EPOCH
    return (d - OVERLAP).isoformat().replace("+00:00", "Z")


def _absolute(node, address: str):
    """Relative references in a partner's resource, made absolute on the partner."""
    if isinstance(node, dict):
        return {k: (f"{address}/{v}" if k == "reference" and isinstance(v, str) and _REL.match(v)
                    else _absolute(v, address)) for k, v in node.items()}
    if isinstance(node, list):
        return [_absolute(x, address) for x in node]
    return node


class Poller:
    def __init__(self, worker) -> None:
        self.worker = worker
        self.repo = worker.repo
        self.engine = worker.engine
        self._wake = threading.Event()
        self._due: dict[str, float] = {}
        self.stats = {"polls": 0, "applied": 0, "errors": 0}

    def wake(self) -> None:
        self._wake.set()

    def loop(self) -> None:
        while not self.worker.stopping:
            try:
                wait = self.run_once()
            except Exception:
                log.exception("sync: poll round failed")
                wait = 1.0
            self._wake.wait(max(0.05, wait))
            self._wake.clear()

    def partners(self) -> list[tuple[str, bool, tuple]]:
        """(key, track tasks, poll queries) for every partner with something to poll."""
        cfg = self.worker.config
        keys: dict[str, tuple[bool, tuple]] = {}
        with self.engine.connect() as conn:
            linked = conn.execute(select(link.c.partner).where(link.c.open.is_(True))
                                  .distinct()).scalars().all()
        for k in linked:
            pc = cfg.partner(k)
            if pc.track_tasks:
                keys[k] = (True, pc.poll)
        for k, pc in cfg.partners.items():
            if pc.poll:
                keys[k] = (keys.get(k, (False, ()))[0], pc.poll)
        return [(k, t, q) for k, (t, q) in keys.items()]

    def run_once(self, force: bool = False) -> float:
        """Poll every partner that is due; returns seconds until the next is due."""
        now = time.monotonic()
        next_due = 5.0
        for key, track, queries in self.partners():
            pc = self.worker.config.partner(key)
            interval = self.worker.config.poll_interval(pc)
            due = self._due.get(key, 0.0)
            if not force and now < due:
                next_due = min(next_due, due - now)
                continue
            self._due[key] = now + interval
            next_due = min(next_due, interval)
            partner = self.repo.run(lambda tx: partner_by_key(tx, key), write=False)
            if partner is None or partner.protocol != "rest":
                continue
            st = self.worker.state(key, partner.system)
            if st.breaker.is_open():
                continue
            connector = st.connector(partner)
            self.stats["polls"] += 1
            try:
                if track:
                    self.poll_tasks(partner, connector)
                for q in queries:
                    self.poll_query(partner, connector, q.query)
            except SearchFailed as exc:
                self.stats["errors"] += 1
                st.breaker.failure() if exc.result.retry else None
                log.warning("sync: polling %s failed: %s", key, exc)
        return next_due

    # ------------------------------------------------------------ watermarks

    def _watermark(self, key: str, query: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(watermark.c.value).where(
                watermark.c.partner == key, watermark.c.query == query)).scalar()

    def _save_watermark(self, key: str, query: str, value: str) -> None:
        now = clock.now()
        with self.repo.connect(write=True) as conn:
            done = conn.execute(update(watermark).where(
                watermark.c.partner == key, watermark.c.query == query)
                .values(value=value, updated_at=now))
            if done.rowcount == 0:
                conn.execute(watermark.insert().values(partner=key, query=query, value=value,
                                                       updated_at=now))

    @staticmethod
    def _newest(current: str | None, body: dict) -> str | None:
        lu = (body.get("meta") or {}).get("lastUpdated")
        if not lu:
            return current
        if current is None:
            return lu
        a, b = _parse(current), _parse(lu)
        return lu if a is None or (b is not None and b > a) else current

    # ------------------------------------------------------------ referral Tasks

    def poll_tasks(self, partner: Partner, connector) -> None:
        with self.engine.connect() as conn:
            rows = conn.execute(select(link.c.local_ref, link.c.remote_id).where(
                link.c.partner == partner.key, link.c.open.is_(True))).all()
        if not rows:
            return
        by_remote = {r.remote_id: r.local_ref for r in rows}
        wm = self._watermark(partner.key, "Task#tracked")
        newest = wm
        ids = list(by_remote)
        mapping = for_partner(self.worker.state(partner.key).cfg.mapping)
        for i in range(0, len(ids), 50):
            chunk = ids[i:i + 50]
            query = (f"Task?_id={','.join(chunk)}&_lastUpdated=gt{quote(_since(wm))}"
                     f"&_count={len(chunk)}")
            for remote in connector.search(query):
                newest = self._newest(newest, remote)
                local = by_remote.get(remote.get("id"))
                if local is None:
                    continue
                try:
                    remote = mapping.apply(remote, "in")
                except MappingError as exc:
                    self._link_error(partner.key, local, f"mapping error: {exc}")
                    continue
                self.apply_task(partner, local, remote)
        if newest and newest != wm:
            self._save_watermark(partner.key, "Task#tracked", newest)

    def apply_task(self, partner: Partner, local_ref: str, remote: dict) -> bool:
        """Bring the partner's status (and outputs, reason) into our Task."""
        changed = {}
        task_id = local_ref.split("/", 1)[1]
        remote = _absolute(remote, partner.address)

        def unit(tx):
            try:
                ours = tx.read("Task", task_id).resource()
            except FhirError:
                return None
            new = dict(ours)
            for f in TASK_FIELDS:
                if remote.get(f) != ours.get(f):
                    if f in remote:
                        new[f] = remote[f]
                    elif f != "status":
                        new.pop(f, None)
                    changed[f] = remote.get(f)
            if not changed:
                return ours.get("status")
            if remote.get("lastModified"):
                new["lastModified"] = remote["lastModified"]
            tx.update("Task", task_id, new)
            return new.get("status")

        token = inbound.set(partner.key)
        try:
            status = self.repo.run(unit)
        except FhirError as exc:
            self.stats["errors"] += 1
            msg = "; ".join(i.diagnostics or "" for i in exc.issues)
            self._link_error(partner.key, local_ref, msg)
            log.warning("sync: %s from %s not applied: %s", local_ref, partner.key, msg)
            return False
        finally:
            inbound.reset(token)
        if changed:
            self.stats["applied"] += 1
            log.info("sync: %s updated from %s: %s", local_ref, partner.key, sorted(changed))
        if status in TERMINAL or status is None:
            with self.repo.connect(write=True) as conn:
                conn.execute(update(link).where(link.c.partner == partner.key,
                                                link.c.local_ref == local_ref)
                             .values(open=False, updated_at=clock.now()))
        return bool(changed)

    def _link_error(self, key: str, local_ref: str, msg: str) -> None:
        with self.repo.connect(write=True) as conn:
            conn.execute(update(link).where(link.c.partner == key, link.c.local_ref == local_ref)
                         .values(last_error=msg[:2000], updated_at=clock.now()))

    # ------------------------------------------------------------ configured searches

    def poll_query(self, partner: Partner, connector, query: str) -> int:
        wm = self._watermark(partner.key, query)
        url = query.replace("{watermark}", quote(_since(wm)))
        mapping = for_partner(self.worker.state(partner.key).cfg.mapping)
        newest = wm
        applied = 0
        for remote in connector.search(url):
            newest = self._newest(newest, remote)
            try:
                applied += self.upsert(partner, mapping.apply(remote, "in"))
            except MappingError as exc:
                self.stats["errors"] += 1
                log.warning("sync: %s/%s from %s: mapping error: %s",
                            remote.get("resourceType"), remote.get("id"), partner.key, exc)
            except FhirError as exc:
                self.stats["errors"] += 1
                log.warning("sync: %s/%s from %s not stored: %s", remote.get("resourceType"),
                            remote.get("id"), partner.key,
                            "; ".join(i.diagnostics or "" for i in exc.issues))
        if newest and newest != wm:
            self._save_watermark(partner.key, query, newest)
        return applied

    def upsert(self, partner: Partner, remote: dict) -> int:
        rtype = remote["resourceType"]
        body = _absolute(remote, partner.address)
        remote_id = body.pop("id", None)
        body.pop("meta", None)
        ident = next((i for i in body.get("identifier") or []
                      if isinstance(i, dict) and i.get("system") and i.get("value")), None)
        if ident is None and isinstance(body.get("identifier"), list | type(None)):
            ident = {"system": f"{partner.address}/{rtype}", "value": remote_id}
            body["identifier"] = [*(body.get("identifier") or []), ident]
        cond = [("identifier", f"{ident['system']}|{ident['value']}")]

        def unit(tx):
            found = tx.search(rtype, cond, limit=2)
            if found:
                current = found[0].resource()
                same = {k: v for k, v in current.items() if k not in ("id", "meta")}
                if same == body:
                    return 0
            tx.conditional_update(rtype, cond, body)
            return 1

        token = inbound.set(partner.key)
        try:
            n = self.repo.run(unit)
        finally:
            inbound.reset(token)
        self.stats["applied"] += n
        return n


__all__ = ["Poller", "save_link"]
