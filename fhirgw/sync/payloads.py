"""What a delivery sends: built at send time from the current stored state (a later change
to the same referral is then sent once, not replayed version by version).

* ``referral``: one transaction Bundle of conditional writes by business identifier:
  ``PUT Patient?identifier=…`` (the minimum necessary), ``PUT ServiceRequest?identifier=…``
  and the Task (``PUT Task?identifier=…`` while the requester owns its status: draft,
  cancelled, entered-in-error; ``POST Task`` with ``ifNoneExist`` once the partner owns it,
  so a re-send never rolls the partner's status back). Links between the three are
  ``urn:uuid:`` fullUrls, other local references become absolute URLs on our base.
* ``message``: the stored message Bundle, to ``$process-message``.
* ``document``: the stored document Bundle, ``PUT Bundle?identifier=…``.
* ``resource``: the resource, ``PUT Type?identifier=…`` (or ``PUT Type/id`` without one).

The partner's mapping is applied to every resource before it is bundled.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from ..model.errors import FhirError
from ..model.references import local_id
from ..operations.messaging import PATIENT_MINIMUM
from .mapping import Mapping, MappingError
from .partners import Partner, organization_partner
from .routing import _REL

#: Task statuses the requester sets (the partner owns the others)
REQUESTER_STATUSES = frozenset({"draft", "cancelled", "entered-in-error"})
TERMINAL = frozenset({"completed", "rejected", "cancelled", "failed", "entered-in-error"})
_NS = uuid.UUID("6f1c2b1e-3f5a-4c1d-9a8e-0d7b2c9e4a11")


class PayloadError(ValueError):
    """The delivery cannot be built (permanent: the row dead-letters with this reason)."""


class NothingToSend(Exception):
    """The source is gone (deleted): the row is discarded."""


@dataclass
class Payload:
    method: str
    #: relative to the partner's base ("" for the base itself), or absolute
    path: str
    body: Any
    kind: str
    #: (local ref, index of its entry in the transaction) to link after success
    track: list[tuple[str, int]] = field(default_factory=list)
    #: local refs of tasks that are already terminal (link closed)
    closed: set[str] = field(default_factory=set)


def _urn(ref: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NS, ref)}"


def _outgoing(body: dict, links: dict[str, str], base: str) -> dict:
    """A copy without server identity (id, versionId, lastUpdated), with references to
    bundled resources as their urn and other local references absolute on ``base``."""
    def walk(node):
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if k == "reference" and isinstance(v, str):
                    if v in links:
                        v = links[v]
                    elif _REL.match(v):
                        v = f"{base}/{v}"
                    out[k] = v
                else:
                    out[k] = walk(v)
            return out
        if isinstance(node, list):
            return [walk(x) for x in node]
        return node

    return _strip_identity(walk(body))


def _condition(body: dict, what: str) -> str:
    ident = next((i for i in body.get("identifier") or []
                  if isinstance(i, dict) and i.get("system") and i.get("value")), None)
    if ident is None:
        raise PayloadError(f"{what} has no business identifier (system and value), so it "
                           "cannot be written idempotently on the partner")
    return f"identifier={quote(ident['system'], safe=':/')}|{quote(ident['value'], safe='')}"


def _read(tx, ref: str) -> dict | None:
    t, _, i = ref.partition("/")
    try:
        return tx.read(t, i).resource()
    except FhirError:
        return None


#: Tasks of one ServiceRequest included in a referral (the first, by storage order)
TASKS_PER_REFERRAL = 50
_CHUNK = 200


class Reader:
    """The reads a payload is built from, inside one transaction ``tx``.

    Alone it reads one resource at a time, as asked. ``prefetch`` first gathers what a
    whole claimed batch of referrals needs in a few queries (the resources by ``_id``, the
    Tasks of every ServiceRequest in one ``focus`` search, then the Patients), so a batch
    of 100 referrals costs about ten queries instead of four or five per referral. What was
    not prefetched (or could not be) is read one at a time, as before; the result is the
    same either way.
    """

    def __init__(self, tx) -> None:
        self.tx = tx
        #: ``Type/id`` -> current body (None: gone or deleted)
        self.bodies: dict[str, dict | None] = {}
        #: ``ServiceRequest/id`` -> [(``Task/id``, body)] for the prefetched ones
        self.focus: dict[str, list[tuple[str, dict]]] = {}

    def read(self, ref: str) -> dict | None:
        if ref not in self.bodies:
            self.bodies[ref] = _read(self.tx, ref)
        return self.bodies[ref]

    def tasks_for(self, sr_ref: str) -> list[tuple[str, dict]]:
        found = self.focus.get(sr_ref)
        if found is None:
            found = [(s.ref, s.resource()) for s in
                     self.tx.search("Task", [("focus", sr_ref)], limit=TASKS_PER_REFERRAL)]
        return found

    # ------------------------------------------------------------ batch reads

    def _fetch(self, refs) -> None:
        by_type: dict[str, list[str]] = {}
        for ref in refs:
            if ref and ref not in self.bodies and _REL.match(ref):
                t, _, i = ref.partition("/")
                ids = by_type.setdefault(t, [])
                if i not in ids:
                    ids.append(i)
        for t, ids in by_type.items():
            for n in range(0, len(ids), _CHUNK):
                chunk = ids[n:n + _CHUNK]
                got = {s.res_id: s for s in self.tx.search(t, [("_id", ",".join(chunk))],
                                                           limit=None)}
                for i in chunk:
                    s = got.get(i)
                    self.bodies[f"{t}/{i}"] = s.resource() if s is not None else None

    def _fetch_tasks(self, sr_refs: list[str]) -> None:
        for n in range(0, len(sr_refs), _CHUNK):
            chunk = sr_refs[n:n + _CHUNK]
            found: dict[str, list[tuple[str, dict]]] = {r: [] for r in chunk}
            complete = True
            for s in self.tx.search("Task", [("focus", ",".join(chunk))], limit=None):
                body = s.resource()
                sr_id = local_id(body.get("focus"), "ServiceRequest")
                tasks = found.get(f"ServiceRequest/{sr_id}") if sr_id else None
                if tasks is None:
                    # matched through a reference form we cannot attribute here: let each
                    # ServiceRequest of this chunk search its own Tasks
                    complete = False
                    break
                self.bodies.setdefault(s.ref, body)
                if len(tasks) < TASKS_PER_REFERRAL:
                    tasks.append((s.ref, body))
            if complete:
                self.focus.update(found)

    def prefetch(self, referral_keys: list[str]) -> None:
        """Gather what the referrals keyed ``referral_keys`` (``ServiceRequest/id`` or
        ``Task/id``) need. Errors are left to the one-at-a-time reads."""
        keys = [k for k in dict.fromkeys(referral_keys) if _REL.match(k)]
        try:
            self._fetch(keys)
            srs = [k for k in keys if k.startswith("ServiceRequest/") and self.bodies.get(k)]
            self._fetch_tasks(srs)
            more = []
            for k in keys:
                body = self.bodies.get(k)
                if body and k.startswith("Task/"):
                    sr_id = local_id(body.get("focus"), "ServiceRequest")
                    if sr_id:
                        more.append(f"ServiceRequest/{sr_id}")
            self._fetch(more)
            patients = []
            for k in keys + more:
                body = self.bodies.get(k)
                if body:
                    pid = local_id(body.get("subject") or body.get("for"), "Patient")
                    if pid:
                        patients.append(f"Patient/{pid}")
            self._fetch(patients)
        except FhirError:
            pass


def _map(mapping: Mapping, body: dict, what: str) -> dict:
    try:
        return mapping.apply(body, "out")
    except MappingError as exc:
        raise MappingError(f"{what}: {exc}") from None


def referral(tx, res_key: str, partner: Partner, mapping: Mapping, base: str,
             identifier_system: str, reader: Reader | None = None) -> Payload:
    reader = reader or Reader(tx)
    rtype, _, rid = res_key.partition("/")
    first = reader.read(res_key)
    if first is None:
        raise NothingToSend(f"{res_key} no longer exists")
    if rtype == "ServiceRequest":
        sr, sr_ref = first, res_key
        tasks = []
        for ref, t in reader.tasks_for(res_key):
            owner = organization_partner(tx, t.get("owner"), ("rest",))
            if t.get("owner") is None or (owner is not None and owner.key == partner.key):
                tasks.append((ref, t))
    else:
        tasks = [(res_key, first)]
        sr_id = local_id(first.get("focus"), "ServiceRequest")
        sr_ref = f"ServiceRequest/{sr_id}" if sr_id else None
        sr = reader.read(sr_ref) if sr_ref else None
    subject = (sr or {}).get("subject") or (tasks[0][1].get("for") if tasks else None)
    pat_id = local_id(subject, "Patient")
    patient = reader.read(f"Patient/{pat_id}") if pat_id else None

    links: dict[str, str] = {}
    included = []
    if patient is not None:
        minimal = {k: v for k, v in patient.items() if k in PATIENT_MINIMUM}
        if not any(i.get("system") and i.get("value") for i in minimal.get("identifier") or []):
            # no business identifier: one derived from our base and id, stable across sends
            minimal["identifier"] = [*(minimal.get("identifier") or []),
                                     {"system": identifier_system,
                                      "value": str(uuid.uuid5(_NS, f"{base}/Patient/{pat_id}"))}]
        included.append((f"Patient/{pat_id}", minimal))
    if sr is not None:
        included.append((sr_ref, sr))
    for ref, t in tasks:
        included.append((ref, t))
    for ref, _b in included:
        links[ref] = _urn(ref)
    entries = []
    payload = Payload("POST", "", None, "referral")
    for ref, body in included:
        t = ref.split("/")[0]
        mapped = _map(mapping, _outgoing(body, links, base), ref)
        cond = _condition(mapped, ref)
        entry = {"fullUrl": links[ref], "resource": mapped}
        if t == "Task" and body.get("status") not in REQUESTER_STATUSES:
            entry["request"] = {"method": "POST", "url": "Task", "ifNoneExist": cond}
        else:
            entry["request"] = {"method": "PUT", "url": f"{t}?{cond}"}
        if t == "Task":
            payload.track.append((ref, len(entries)))
            if body.get("status") in TERMINAL:
                payload.closed.add(ref)
        entries.append(entry)
    payload.body = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    return payload


def message(tx, res_key: str, partner: Partner, mapping: Mapping) -> Payload:
    bundle = _read(tx, res_key)
    if bundle is None:
        raise NothingToSend(f"{res_key} no longer exists")
    out = _strip_identity(bundle)
    try:
        out = mapping.apply_all(out, "out")
    except MappingError as exc:
        raise MappingError(f"{res_key}: {exc}") from None
    path = "" if partner.address.endswith("$process-message") else "$process-message"
    return Payload("POST", path, out, "message")


def document(tx, res_key: str, partner: Partner, mapping: Mapping) -> Payload:
    bundle = _read(tx, res_key)
    if bundle is None:
        raise NothingToSend(f"{res_key} no longer exists")
    ident = bundle.get("identifier") or {}
    if not ident.get("system") or not ident.get("value"):
        raise PayloadError(f"{res_key} has no Bundle.identifier to write it idempotently")
    out = _strip_identity(bundle)
    try:
        out = mapping.apply_all(out, "out")
    except MappingError as exc:
        raise MappingError(f"{res_key}: {exc}") from None
    ident = out.get("identifier") or ident
    cond = f"identifier={quote(ident['system'], safe=':/')}|{quote(ident['value'], safe='')}"
    return Payload("PUT", f"Bundle?{cond}", out, "document")


def resource(tx, res_key: str, partner: Partner, mapping: Mapping, base: str) -> Payload:
    body = _read(tx, res_key)
    if body is None:
        raise NothingToSend(f"{res_key} no longer exists")
    t, _, rid = res_key.partition("/")
    mapped = _map(mapping, _outgoing(body, {}, base), res_key)
    try:
        return Payload("PUT", f"{t}?{_condition(mapped, res_key)}", mapped, "resource")
    except PayloadError:
        return Payload("PUT", f"{t}/{rid}", {**mapped, "id": rid}, "resource")


def _strip_identity(body: dict) -> dict:
    """A copy without the server's identity: no id, no meta.versionId/lastUpdated/source."""
    out = dict(body)
    out.pop("id", None)
    meta = {k: v for k, v in (out.get("meta") or {}).items()
            if k not in ("versionId", "lastUpdated", "source")}
    if meta:
        out["meta"] = meta
    else:
        out.pop("meta", None)
    return out


def build(tx, kind: str, res_key: str, partner: Partner, mapping: Mapping, *, base: str,
          identifier_system: str, reader: Reader | None = None) -> Payload:
    """The payload of one delivery; ``reader`` may hold what a batch prefetched."""
    if kind == "referral":
        if partner.protocol != "rest":
            raise PayloadError(f"referrals go to FHIR REST partners; {partner.key} is "
                               f"{partner.protocol}")
        return referral(tx, res_key, partner, mapping, base, identifier_system, reader)
    if kind == "message":
        return message(tx, res_key, partner, mapping)
    if kind == "document":
        return document(tx, res_key, partner, mapping)
    if kind == "resource":
        return resource(tx, res_key, partner, mapping, base)
    raise PayloadError(f"unknown delivery kind {kind!r}")
