"""Routing: which partners a unit of work's writes go to, decided at the end of the unit of
work and written to the outbox in the same transaction (a rollback leaves no row).

* ServiceRequest (``performer``) and Task (``owner``) naming a local Organization with a
  hl7-fhir-rest Endpoint: a ``referral`` delivery keyed by the ServiceRequest (the Task's
  ``focus``), sent as one transaction Bundle of Patient + ServiceRequest + Task.
* A message Bundle (``$medication-handoff``): to each MessageHeader ``destination.receiver``
  Organization with an Endpoint (``message``, to ``$process-message``).
* A document Bundle (``$discharge``): to the Organizations the summary is for: Composition
  ``attester.party``, and, among the resources in the document, the ``owner`` of referral
  Tasks, the ``performer`` of ServiceRequests and Organization members of CareTeams; each
  with a hl7-fhir-rest Endpoint (``document``, a conditional PUT by Bundle.identifier). The
  custodian (the program itself) is not a recipient.
* Config rules: resource type + search criteria -> partner (``resource``).

Changes that came in from a partner (the poller marks them with ``inbound``) are not routed
back to that partner. Deletions are not propagated.
"""
from __future__ import annotations

import contextvars
import re

from sqlalchemy import insert, select

from ..store.repository import WriteRule, clock
from .partners import Partner, endpoint_partner, organization_partner
from .tables import outbox

#: set by the poller while it applies a partner's changes (that partner's key)
inbound: contextvars.ContextVar[str | None] = contextvars.ContextVar("fhirgw_sync_inbound",
                                                                     default=None)

_REL = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})$")


def relative(ref: str | None, bases: tuple[str, ...] = ()) -> str | None:
    """``Type/id`` for a local reference (relative, or absolute on one of ``bases``)."""
    if not ref:
        return None
    for b in bases:
        if b and ref.startswith(b.rstrip("/") + "/"):
            ref = ref[len(b.rstrip("/")) + 1:]
            break
    return ref if _REL.match(ref) else None


class OutboxRule(WriteRule):
    """Installed last among the repository's rules (it must see what other rules wrote)."""

    types: frozenset[str] = frozenset()   # nothing per write; all of it in before_commit

    def __init__(self, config, settings) -> None:
        self.config = config
        self.settings = settings
        self.rows_written = 0

    def before_commit(self, tx) -> None:
        latest = {}
        for s in tx.written:
            latest[s.ref] = s
        skip = inbound.get()
        wanted: dict[tuple[str, str, str], tuple[Partner, str]] = {}

        def want(p: Partner | None, kind: str, key: str, origin: str) -> None:
            if p is not None and p.key != skip:
                wanted.setdefault((p.key, kind, key), (p, origin))

        bases = (self.settings.base_url,) if self.settings.base_url else ()
        for ref, s in latest.items():
            if s.deleted:
                continue
            t = s.res_type
            if t not in ("ServiceRequest", "Task", "Bundle") and not self.config.rules:
                continue
            body = s.resource()
            origin = f"{ref}/_history/{s.version}"
            if t == "ServiceRequest":
                for perf in body.get("performer") or []:
                    want(organization_partner(tx, perf, ("rest",)), "referral", ref, origin)
            elif t == "Task":
                p = organization_partner(tx, body.get("owner"), ("rest",))
                if p is not None:
                    focus = relative((body.get("focus") or {}).get("reference"), bases)
                    key = focus if focus and focus.startswith("ServiceRequest/") else ref
                    want(p, "referral", key, origin)
            elif t == "Bundle" and body.get("type") == "message":
                entries = body.get("entry") or []
                header = (entries[0].get("resource") or {}) if entries else {}
                for d in header.get("destination") or []:
                    want(organization_partner(tx, d.get("receiver")), "message", ref, origin)
            elif t == "Bundle" and body.get("type") == "document":
                for org in document_recipients(body, bases):
                    want(organization_partner(tx, org, ("rest",)), "document", ref, origin)
            for rule in self.config.rules:
                if rule.type == t and tx.search(t, [*rule.criteria, ("_id", s.res_id)],
                                                limit=1):
                    want(partner_by_key(tx, rule.partner), "resource", ref, origin)
        if not wanted:
            return
        now = clock.now()
        rows = []
        for (pkey, kind, key), (p, origin) in wanted.items():
            if kind == "referral":
                # a pending row for the same referral will read the state we are writing:
                # no second row. FOR UPDATE: a worker claiming that row waits for us (PG).
                q = select(outbox.c.id).where(outbox.c.partner == pkey,
                                              outbox.c.res_key == key, outbox.c.kind == kind,
                                              outbox.c.status == "pending").limit(1)
                if tx.repo.is_pg:
                    q = q.with_for_update()
                if tx.conn.execute(q).first() is not None:
                    continue
            rows.append({"partner": pkey, "endpoint_id": p.endpoint_id, "kind": kind,
                         "res_key": key, "origin": origin, "status": "pending", "attempts": 0,
                         "created_at": now, "next_attempt_at": now, "updated_at": now})
        if rows:
            tx.conn.execute(insert(outbox), rows)
            self.rows_written += len(rows)
            tx.__dict__["_sync_rows"] = len(rows)


def document_recipients(bundle: dict, bases: tuple[str, ...] = ()) -> list[str]:
    """``Organization/<id>`` of each recipient of a document Bundle (see module doc)."""
    entries = [e.get("resource") or {} for e in bundle.get("entry") or []]
    if not entries or entries[0].get("resourceType") != "Composition":
        return []
    comp = entries[0]
    custodian = relative((comp.get("custodian") or {}).get("reference"), bases)
    refs: list[str | None] = [(a.get("party") or {}).get("reference")
                              for a in comp.get("attester") or []]
    for r in entries[1:]:
        rt = r.get("resourceType")
        if rt == "Task":
            refs.append((r.get("owner") or {}).get("reference"))
        elif rt == "ServiceRequest":
            refs += [p.get("reference") for p in r.get("performer") or []]
        elif rt == "CareTeam":
            refs += [(p.get("member") or {}).get("reference") for p in r.get("participant") or []]
    out = []
    for ref in refs:
        rel = relative(ref, bases)
        if rel and rel.startswith("Organization/") and rel != custodian and rel not in out:
            out.append(rel)
    return out


def partner_by_key(tx, key: str) -> Partner | None:
    """The partner whose Endpoint identifier is ``key`` (or ``Endpoint/<id>``)."""
    from ..model.errors import FhirError

    cache = tx.__dict__.setdefault("_sync_key_cache", {})
    if key in cache:
        return cache[key]
    found = None
    if key.startswith("Endpoint/"):
        try:
            found = endpoint_partner(tx.read("Endpoint", key.split("/", 1)[1]).resource())
        except FhirError:
            found = None
    else:
        for s in tx.search("Endpoint", [("identifier", key)], limit=5):
            p = endpoint_partner(s.resource())
            if p is not None:
                orgs = tx.search("Organization", [("endpoint", f"Endpoint/{s.res_id}")], limit=1)
                if orgs:
                    p = Partner(p.key, p.endpoint_id, p.address, p.protocol,
                                f"Organization/{orgs[0].res_id}", p.name, p.system)
                found = p
                break
    cache[key] = found
    return found
