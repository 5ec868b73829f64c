"""What a delivery sends: built at send time from the current stored state (a later change
to the same referral is then sent once, not replayed version by version).

* ``referral``: one transaction Bundle of conditional writes by business identifier:
  ``PUT Patient?identifier=…`` (the minimum necessary), the clinical context of the
  referral (the resources its ``reasonReference`` and ``supportingInfo`` name: local, about
  the same client; ``PUT Type?identifier=…``, with an identifier derived from our base and
  id when they have none), ``PUT ServiceRequest?identifier=…`` and the Task (``PUT
  Task?identifier=…`` while the requester owns its status: draft, cancelled,
  entered-in-error; ``POST Task`` with ``ifNoneExist`` once the partner owns it, so a re-send
  never rolls the partner's status back). Links between them are ``urn:uuid:`` fullUrls,
  other local references become absolute URLs on our base.
* ``message``: the stored message Bundle, to ``$process-message``.
* ``document``: the stored document Bundle, ``PUT Bundle?identifier=…``.
* ``resource``: the resource, ``PUT Type?identifier=…`` (or ``PUT Type/id`` without one).

Disclosure (42 CFR Part 2, ``fhirgw.security.disclosure``): the recipient is the partner's
Organization (every Organization whose ``endpoint`` is the partner's Endpoint), the purpose
``TREAT``. Every payload goes through ``Disclosure``: resources labelled for Part 2 go only
when an active Consent of the client permits that Organization; what is withheld is left
out, references to it are removed, and the Bundle's meta says that something was withheld
(and carries the high-water mark confidentiality and, when Part 2 data goes, the
redisclosure notice). Messages and documents are filtered entry by entry (documents as
``Disclosure.document`` redacts them). Because payloads are built at send time, revoking a
Consent stops deliveries already queued. When what a delivery is for cannot go (the
referral's ServiceRequest, a message's focus, a document's Composition, the resource
itself) it dead-letters with a reason that names nothing withheld.

The partner's mapping is applied to every resource before it is bundled (after the
disclosure filter).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from ..model.errors import FhirError
from ..model.references import local_id
from ..security.access import PATIENT_MINIMUM
from ..security.consent import patient_of
from ..security.disclosure import NOTHING_TEXT, Disclosure, NothingToDisclose, ref_of
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
    #: what goes out (local ``Type/id``) and whom it concerns (``Patient/x``): the audit
    disclosed: list[str] = field(default_factory=list)
    patients: set[str] = field(default_factory=set)


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
            self._fetch([r for k in keys + more for r in context_refs(self.bodies.get(k))])
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


def context_refs(sr: dict | None) -> list[str]:
    """Local ``Type/id`` references of a ServiceRequest's ``reasonReference`` and
    ``supportingInfo`` (the clinical context a referral carries)."""
    if not sr or sr.get("resourceType") != "ServiceRequest":
        return []
    out = []
    for item in list(sr.get("reasonReference") or []) + list(sr.get("supportingInfo") or []):
        ref = item.get("reference") if isinstance(item, dict) else None
        if isinstance(ref, str) and _REL.match(ref) and ref not in out and \
                ref.split("/")[0] not in ("Patient", "ServiceRequest", "Task"):
            out.append(ref)
    return out


def _about_only(body: dict, patient: str) -> bool:
    """Is ``body`` about ``patient`` and no other client?"""
    if patient_of(body) != patient:
        return False
    stack: list = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str) and ref.startswith("Patient/") and ref != patient:
                return False
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))
    return True


def recipients(tx, partner: Partner) -> tuple[str, ...]:
    """The Organizations a delivery to ``partner`` discloses to: its own, or every one
    whose ``endpoint`` is the partner's Endpoint (cached per transaction)."""
    if partner.organization:
        return (partner.organization,)
    cache = tx.__dict__.setdefault("_sync_recipients_cache", {})
    found = cache.get(partner.endpoint_id)
    if found is None:
        found = tuple(f"Organization/{s.res_id}" for s in
                      tx.search("Organization", [("endpoint", f"Endpoint/{partner.endpoint_id}")],
                                limit=100))
        cache[partner.endpoint_id] = found
    return found


def disclosure(tx, partner: Partner, reader: Reader | None = None) -> Disclosure:
    """The disclosure of one delivery to ``partner`` (purpose TREAT)."""
    return Disclosure(tx, recipients(tx, partner), "TREAT",
                      read=reader.read if reader is not None else None)


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
    context = []
    if sr is not None and pat_id:
        for ref in context_refs(sr):
            found = reader.read(ref)
            if found is not None and _about_only(found, f"Patient/{pat_id}"):
                context.append(ref)
                included.append((ref, found))
    if sr is not None:
        included.append((sr_ref, sr))
    for ref, t in tasks:
        included.append((ref, t))

    # 42 CFR Part 2: only what the client's consent lets this partner see
    disclosed = disclosure(tx, partner, reader)
    kept = {r: b for b in disclosed.filter({**b, "id": ref.split("/", 1)[1]}
                                           for ref, b in included) if (r := ref_of(b))}
    if sr is not None and sr_ref not in kept:
        raise PayloadError(f"{res_key}: the referral cannot be sent: {NOTHING_TEXT}")
    if not any(ref.startswith(("ServiceRequest/", "Task/")) for ref in kept):
        raise PayloadError(f"{res_key}: the referral cannot be sent: {NOTHING_TEXT}")
    included = [(ref, kept[ref]) for ref, _b in included if ref in kept]
    for ref, _b in included:
        links[ref] = _urn(ref)
    entries = []
    payload = Payload("POST", "", None, "referral")
    for ref, body in included:
        t = ref.split("/")[0]
        if ref in context:
            body = _identified(body, ref, base, identifier_system)
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
    payload.body = disclosed.finish_bundle({"resourceType": "Bundle", "type": "transaction",
                                            "entry": entries})
    payload.disclosed = [ref for ref, _b in included]
    if pat_id:
        payload.patients = {f"Patient/{pat_id}"}
    return payload


def _identified(body: dict, ref: str, base: str, identifier_system: str) -> dict:
    """``body`` with a business identifier: its own, else one derived from our base and its
    id (stable across sends, like the Patient's)."""
    if any(isinstance(i, dict) and i.get("system") and i.get("value")
           for i in body.get("identifier") or []):
        return body
    derived = {"system": identifier_system, "value": str(uuid.uuid5(_NS, f"{base}/{ref}"))}
    return {**body, "identifier": [*(body.get("identifier") or []), derived]}


def _disclosed_bundle(tx, res_key: str, bundle: dict, partner: Partner, mapping: Mapping,
                     kind: str) -> dict:
    """A stored message or document Bundle as this partner may receive it: filtered for
    Part 2 (``Disclosure.message`` / ``.document``), without server identity, mapped."""
    disclosed = disclosure(tx, partner)
    try:
        bundle = getattr(disclosed, kind)(bundle)
    except NothingToDisclose:
        raise PayloadError(f"{res_key}: the {kind} cannot be sent: {NOTHING_TEXT}") from None
    try:
        return mapping.apply_all(_strip_identity(bundle), "out")
    except MappingError as exc:
        raise MappingError(f"{res_key}: {exc}") from None


def message(tx, res_key: str, partner: Partner, mapping: Mapping) -> Payload:
    bundle = _read(tx, res_key)
    if bundle is None:
        raise NothingToSend(f"{res_key} no longer exists")
    out = _disclosed_bundle(tx, res_key, bundle, partner, mapping, "message")
    path = "" if partner.address.endswith("$process-message") else "$process-message"
    return Payload("POST", path, out, "message")


def document(tx, res_key: str, partner: Partner, mapping: Mapping) -> Payload:
    bundle = _read(tx, res_key)
    if bundle is None:
        raise NothingToSend(f"{res_key} no longer exists")
    ident = bundle.get("identifier") or {}
    if not ident.get("system") or not ident.get("value"):
        raise PayloadError(f"{res_key} has no Bundle.identifier to write it idempotently")
    out = _disclosed_bundle(tx, res_key, bundle, partner, mapping, "document")
    ident = out.get("identifier") or ident
    cond = f"identifier={quote(ident['system'], safe=':/')}|{quote(ident['value'], safe='')}"
    return Payload("PUT", f"Bundle?{cond}", out, "document")


def resource(tx, res_key: str, partner: Partner, mapping: Mapping, base: str) -> Payload:
    body = _read(tx, res_key)
    if body is None:
        raise NothingToSend(f"{res_key} no longer exists")
    kept = disclosure(tx, partner).filter([body])
    if not kept:
        raise PayloadError(f"{res_key} cannot be sent: {NOTHING_TEXT}")
    body = kept[0]
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
