"""The audit trail: an AuditEvent for every read, search, write, disclosure and denied request.

AuditEvents are ordinary FHIR R4 resources in the same store, so the search engine indexes
them like any other (``AuditEvent?patient=Patient/x``, ``?agent=Organization/x``,
``?altid=<client_id>``, ``?agent-name=<client name>``, ``?subtype=read``, ``?outcome=4``,
``?date=ge2026-01-01``, ``?entity=Observation/1``, ``?policy=<token jti>``).

Three ways in:

* ``rest_event`` / ``disclosure_event`` / ``denied_event`` build an event (a plain dict, no
  model validation: a read costs ~100 µs, building its event a few µs), and
  ``AuditTrail.record(event)`` queues it for a background thread that writes batches in one
  unit of work each. For reads, searches, disclosures and denials: nothing to roll back.
* ``AuditRule`` is a ``WriteRule``: at the end of every unit of work that wrote something it
  adds ONE AuditEvent for the unit inside the same transaction, so a write that rolls back
  leaves no AuditEvent and a committed write always has one. The interaction name comes from
  ``set_interaction`` (a context variable the router sets), who from ``principal.current()``.
* ``check_append_only(res_type, interaction)``: AuditEvents may be created through the API,
  never updated, patched or deleted (405). ``AuditRule`` refuses such writes as well, whatever
  path they come by (transaction entries, conditional forms).

What an event holds (FHIR R4 AuditEvent, in the shape of IHE BALP's RESTful patterns):

==================  ======================================================================
``type``            ``audit-event-type|rest`` (DICOM ``110106`` "Export" for disclosures)
``subtype``         ``restful-interaction|<read, search-type, create, transaction, ...>``
``action``          C create, R read/vread/history/capabilities, U update/patch, D delete,
                    E search/batch/transaction/operation (and a unit mixing several kinds)
``recorded``        the instant the event was built
``outcome``         0 success, 4 minor failure (4xx, denied), 8 serious failure (5xx)
``outcomeDesc``     the ``description`` given (e.g. why the request was refused)
``agent[0]``        the requestor (``requestor: true``, type DICOM 110153 "Source Role ID"):
                    ``who`` the partner Organization reference (partner clients) or a
                    display-only reference; ``altId`` the client_id; ``name`` the client's
                    name; ``policy`` the access token's jti; ``network`` the remote address;
                    ``purposeOfUse`` the v3-ActReason purpose of use
``agent[1]``        disclosures only: the recipient Organization (``requestor: false``,
                    DICOM 110152 "Destination Role ID"), its endpoint in ``network``
``source``          ``observer`` display "fhirgw", type security-source-type 4
                    "Application Server"
``entity``          each resource concerned (role 4 "Domain Resource", type 2 "System
                    Object"; writes with a ``lifecycle``), each patient concerned
                    (``Patient/x``, role 1 "Patient", type 1 "Person": this is what
                    ``AuditEvent?patient=`` finds), and for searches the query (role 24
                    "Query", ``query`` the base64 of ``Type?params``)
==================  ======================================================================

The ids of the patients concerned come from ``patients_of``: the resource itself when it is
a Patient, else the local ``Patient/x`` references of a few top-level elements (subject,
patient, for, ...). Cheap dict look-ups, no FHIRPath.
"""
from __future__ import annotations

import base64
import contextvars
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable

import orjson

from ..model.errors import FhirError, MethodNotAllowed
from ..model.ids import new_id
from ..store.repository import Stored, WriteRule, instant
from .principal import PURPOSE_SYSTEM, Principal, current

log = logging.getLogger("fhirgw.audit")

# ---------------------------------------------------------------- codes

AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
LIFECYCLE = "http://terminology.hl7.org/CodeSystem/dicom-audit-lifecycle"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"

#: the restful-interaction codes (R4) and the AuditEvent.action each implies
INTERACTIONS: dict[str, str] = {
    "read": "R", "vread": "R", "history-instance": "R", "history-type": "R",
    "history-system": "R", "capabilities": "R",
    "create": "C", "update": "U", "patch": "U", "delete": "D",
    "search-type": "E", "search-system": "E", "search": "E",
    "batch": "E", "transaction": "E", "operation": "E",
    "history": "R",
}

#: the Router's handler names (``fhirgw.rest.router``) -> restful-interaction code; any
#: other handler (``$discharge``, ``$validate``, ...) is an ``operation``
HANDLER_INTERACTIONS: dict[str, str] = {
    "read": "read", "vread": "vread", "update": "update", "conditional_update": "update",
    "patch": "patch", "delete": "delete", "conditional_delete": "delete",
    "history_instance": "history-instance", "history_type": "history-type",
    "history_system": "history-system", "create": "create", "search_type": "search-type",
    "search_post": "search-type", "compartment": "search-type",
    "search_system": "search-system", "metadata": "capabilities",
}


def interaction_for(handler: str) -> str:
    """The restful-interaction code of a Router handler name (``operation`` if unknown).

    >>> interaction_for("conditional_update"), interaction_for("discharge")
    ('update', 'operation')
    """
    return HANDLER_INTERACTIONS.get(handler, "operation")


# shared, never mutated: events are built to be serialized once
_TYPE_REST = {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"}
_TYPE_EXPORT = {"system": DICOM, "code": "110106", "display": "Export"}
_SUBTYPES = {code: [{"system": RESTFUL_INTERACTION, "code": code, "display": code}]
             for code in INTERACTIONS}
_ROLE_SOURCE = [{"coding": [{"system": DICOM, "code": "110153", "display": "Source Role ID"}]}]
_ROLE_DESTINATION = {"coding": [{"system": DICOM, "code": "110152",
                                 "display": "Destination Role ID"}]}
_SOURCE = {"observer": {"display": "fhirgw"},
           "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}]}
_PERSON = {"system": ENTITY_TYPE, "code": "1", "display": "Person"}
_SYSTEM_OBJECT = {"system": ENTITY_TYPE, "code": "2", "display": "System Object"}
_ROLE_PATIENT = {"system": OBJECT_ROLE, "code": "1", "display": "Patient"}
_ROLE_RESOURCE = {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"}
_ROLE_QUERY = {"system": OBJECT_ROLE, "code": "24", "display": "Query"}
_LIFECYCLE = {
    "C": {"system": LIFECYCLE, "code": "1", "display": "Origination / Creation"},
    "U": {"system": LIFECYCLE, "code": "3", "display": "Amendment"},
    "D": {"system": LIFECYCLE, "code": "14", "display": "Logical deletion"},
}
_PURPOSES: dict[str, list] = {}

#: who acts when there is no principal: the gateway itself (sync worker, CLI)
GATEWAY_NAME = "fhirgw"
#: who acts in a request refused before authentication (401)
UNAUTHENTICATED = "unauthenticated client"


# ---------------------------------------------------------------- interaction context

_interaction: contextvars.ContextVar[str] = contextvars.ContextVar(
    "fhirgw_interaction", default="operation")


def current_interaction() -> str:
    """The restful-interaction code of the unit of work in this thread/task (``operation``
    when the router did not say: workers, CLI commands, operations)."""
    return _interaction.get()


def set_interaction(name: str) -> contextvars.Token:
    """Set by the router before it runs an interaction (``create``, ``transaction``, ...)."""
    if name not in INTERACTIONS:
        raise ValueError(f"{name!r} is not a restful-interaction code")
    return _interaction.set(name)


def reset_interaction(token: contextvars.Token) -> None:
    _interaction.reset(token)


# ---------------------------------------------------------------- patients

#: top-level elements whose local ``Patient/x`` references say whom a resource concerns
PATIENT_FIELDS = ("subject", "patient", "for", "beneficiary", "individual", "candidate",
                  "actor")


def _patient_ref(value) -> str | None:
    """``Patient/x`` of a Reference dict to a local Patient (version dropped), else None."""
    if type(value) is not dict:
        return None
    ref = value.get("reference")
    if type(ref) is not str or not ref.startswith("Patient/"):
        return None
    parts = ref.split("/")
    if len(parts) == 2 or (len(parts) == 4 and parts[2] == "_history"):
        return parts[0] + "/" + parts[1] if parts[1] else None
    return None


def patients_of(body: dict | bytes | str | None, ref: str | None = None) -> set[str]:
    """The Patients a resource concerns, as ``Patient/x``.

    The resource itself when it is a Patient; else the local Patient references of its
    top-level ``subject``, ``patient``, ``for``, ``beneficiary``, ``individual``,
    ``candidate`` and ``actor`` (single or repeated) and of ``Appointment.participant.actor``;
    for a Bundle (document, message, search result) those of its entries. Absolute and
    ``urn:uuid:`` references are not local and not counted. Accepts the parsed resource or
    its JSON bytes. ``ref``: the stored resource's ``Type/id``, when the caller knows it (a
    stored Patient then needs no parse).

    >>> sorted(patients_of({"resourceType": "Observation",
    ...                     "subject": {"reference": "Patient/p1/_history/2"}}))
    ['Patient/p1']
    >>> patients_of({"resourceType": "Patient", "id": "p2"})
    {'Patient/p2'}
    >>> patients_of(b'{"resourceType": "Patient", "id": "p3"}', ref="Patient/p3")
    {'Patient/p3'}
    """
    if ref is not None and ref.startswith("Patient/"):
        return {ref}
    if body is None:
        return set()
    if not isinstance(body, dict):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            return set()
        if not isinstance(body, dict):
            return set()
    rtype = body.get("resourceType")
    if rtype == "Patient":
        rid = body.get("id")
        return {f"Patient/{rid}"} if isinstance(rid, str) and rid else set()
    out: set[str] = set()
    if rtype == "Bundle":
        for entry in body.get("entry") or ():
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                out |= patients_of(entry["resource"])
        return out
    for name in PATIENT_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if type(value) is list:
            for v in value:
                ref = _patient_ref(v)
                if ref:
                    out.add(ref)
        else:
            ref = _patient_ref(value)
            if ref:
                out.add(ref)
    if rtype == "Appointment":
        for p in body.get("participant") or ():
            ref = _patient_ref(p.get("actor")) if isinstance(p, dict) else None
            if ref:
                out.add(ref)
    return out


# ---------------------------------------------------------------- builders

def outcome_code(outcome: int | str) -> str:
    """AuditEvent.outcome for an HTTP status (or an outcome code given as such).

    >>> [outcome_code(s) for s in (200, 201, 304, 403, 404, 500, "8")]
    ['0', '0', '0', '4', '4', '8', '8']
    """
    if isinstance(outcome, str):
        if outcome in ("0", "4", "8", "12"):
            return outcome
        raise ValueError(f"{outcome!r} is not an AuditEvent outcome code (0, 4, 8, 12)")
    if outcome < 400:
        return "0"
    return "4" if outcome < 500 else "8"


def _purpose(code: str) -> list:
    cached = _PURPOSES.get(code)
    if cached is None:
        cached = _PURPOSES[code] = [{"coding": [{"system": PURPOSE_SYSTEM, "code": code}]}]
    return cached


def _network(address: str | None) -> dict | None:
    """AuditEvent.agent.network: type 2 (IP address), 5 (URI) or 1 (machine name)."""
    if not address:
        return None
    if "://" in address:
        kind = "5"
    elif address.replace(".", "").isdigit() or ":" in address:
        kind = "2"
    else:
        kind = "1"
    return {"address": address, "type": kind}


def _requestor(principal: Principal | None, *, anonymous: str = GATEWAY_NAME,
               purpose: str | None = None, address: str | None = None,
               client_id: str | None = None) -> dict:
    """The agent who asked: the principal, else ``anonymous`` (the gateway itself, or an
    unauthenticated client)."""
    if principal is None:
        agent: dict = {"type": _ROLE_SOURCE[0], "who": {"display": anonymous},
                       "requestor": True}
        if client_id:
            agent["altId"] = client_id
        agent["name"] = anonymous
        if purpose:
            agent["purposeOfUse"] = _purpose(purpose)
    else:
        who: dict = {"display": principal.name}
        if principal.organization:
            who = {"reference": principal.organization, "type": "Organization",
                   "display": principal.name}
        agent = {"type": _ROLE_SOURCE[0], "who": who, "altId": principal.client_id,
                 "name": principal.name, "requestor": True}
        if principal.token_id and " " not in principal.token_id:
            agent["policy"] = [principal.token_id]
        address = address or principal.details.get("address")
        agent["purposeOfUse"] = _purpose(purpose or principal.purpose)
    net = _network(address)
    if net is not None:
        agent["network"] = net
    return agent


def _entities(resource_refs: Iterable[str], patient_refs: Iterable[str],
              lifecycle: dict[str, str] | None = None) -> list[dict]:
    """Entities for the resources (role 4; a Patient as role 1) and the patients (role 1),
    each reference once; ``lifecycle`` maps a resource reference to C/U/D."""
    out = []
    seen = set()
    for ref in resource_refs:
        plain = ref.split("/_history/", 1)[0]
        if plain in seen:
            continue
        seen.add(plain)
        if plain.startswith("Patient/"):
            entity = {"what": {"reference": ref}, "type": _PERSON, "role": _ROLE_PATIENT}
        else:
            entity = {"what": {"reference": ref}, "type": _SYSTEM_OBJECT,
                      "role": _ROLE_RESOURCE}
        if lifecycle is not None and plain in lifecycle:
            entity["lifecycle"] = _LIFECYCLE[lifecycle[plain]]
        out.append(entity)
    for ref in sorted(patient_refs):
        plain = ref.split("/_history/", 1)[0]
        if plain in seen:
            continue
        seen.add(plain)
        out.append({"what": {"reference": plain}, "type": _PERSON, "role": _ROLE_PATIENT})
    return out


def _query_entity(query: str | bytes) -> dict:
    raw = query.encode() if isinstance(query, str) else query
    return {"type": _SYSTEM_OBJECT, "role": _ROLE_QUERY,
            "query": base64.b64encode(raw).decode("ascii")}


def _event(type_coding: dict, subtype: str | None, action: str, outcome: int | str,
           agents: list[dict], entities: list[dict], description: str | None) -> dict:
    event: dict = {"resourceType": "AuditEvent", "type": type_coding}
    if subtype is not None:
        subtypes = _SUBTYPES.get(subtype)
        if subtypes is None:
            raise ValueError(f"{subtype!r} is not a restful-interaction code")
        event["subtype"] = subtypes
    event["action"] = action
    event["recorded"] = instant(time.time_ns() // 1000)
    event["outcome"] = outcome_code(outcome)
    if description:
        event["outcomeDesc"] = description
    event["agent"] = agents
    event["source"] = _SOURCE
    if entities:
        event["entity"] = entities
    return event


def rest_event(principal: Principal | None, interaction: str, outcome: int | str, *,
               resource_refs: Iterable[str] = (), patient_refs: Iterable[str] = (),
               query: str | bytes | None = None, description: str | None = None,
               action: str | None = None) -> dict:
    """An AuditEvent for one RESTful interaction.

    ``principal`` who asked (None: the gateway itself); ``interaction`` a restful-interaction
    code (``read``, ``search-type``, ...); ``outcome`` the HTTP status (or an outcome code
    "0"/"4"/"8"); ``resource_refs`` the resources concerned (``Type/id``, optionally
    ``/_history/v``); ``patient_refs`` the patients concerned (``Patient/x``, see
    ``patients_of``); ``query`` for searches: what was asked (``Observation?code=...``),
    stored base64 in an entity; ``description`` goes to ``outcomeDesc``; ``action`` overrides
    the one ``interaction`` implies."""
    act = action or INTERACTIONS.get(interaction)
    if act is None:
        raise ValueError(f"{interaction!r} is not a restful-interaction code")
    entities = _entities(resource_refs, patient_refs)
    if query is not None:
        entities.append(_query_entity(query))
    return _event(_TYPE_REST, interaction, act, outcome, [_requestor(principal)], entities,
                  description)


def denied_event(principal: Principal | None, interaction: str | None, status: int = 403, *,
                 resource_refs: Iterable[str] = (), patient_refs: Iterable[str] = (),
                 query: str | bytes | None = None, reason: str | None = None,
                 address: str | None = None, client_id: str | None = None) -> dict:
    """An AuditEvent for a refused request (401, 403, or any 4xx a policy decided).

    ``principal`` None is an unauthenticated client (401): the agent is "unauthenticated
    client", with the ``client_id`` it claimed (if any) as ``altId`` and its ``address``.
    ``interaction`` may be None when the request was refused before it was routed.
    ``reason`` goes to ``outcomeDesc`` (never put a secret or a token in it)."""
    act = INTERACTIONS.get(interaction or "operation")
    if act is None:
        raise ValueError(f"{interaction!r} is not a restful-interaction code")
    agent = _requestor(principal, anonymous=UNAUTHENTICATED, address=address,
                       client_id=client_id)
    entities = _entities(resource_refs, patient_refs)
    if query is not None:
        entities.append(_query_entity(query))
    return _event(_TYPE_REST, interaction, act, status if status >= 400 else "4", [agent],
                  entities, reason)


def disclosure_event(principal: Principal | None, recipient: str, outcome: int | str, *,
                     recipient_name: str | None = None, partner: str | None = None,
                     address: str | None = None, resource_refs: Iterable[str] = (),
                     patient_refs: Iterable[str] = (), interaction: str | None = None,
                     purpose: str | None = None, description: str | None = None) -> dict:
    """An AuditEvent for data sent to a partner (DICOM 110106 "Export", action R).

    ``principal`` who caused it (None: the gateway itself, e.g. the sync worker delivering
    the outbox); ``recipient`` the partner's ``Organization/x``; ``recipient_name``,
    ``partner`` (its configuration key, as ``altId``) and ``address`` (the endpoint URL)
    describe it; ``resource_refs`` what was sent, ``patient_refs`` whom it concerns;
    ``interaction`` how it was sent (``transaction``, ``update``, ``operation``), as subtype;
    ``purpose`` the v3-ActReason purpose (default: the principal's, else TREAT)."""
    requestor = _requestor(principal, purpose=purpose or (None if principal else "TREAT"))
    dest: dict = {"type": _ROLE_DESTINATION, "who": {"reference": recipient,
                                                     "type": "Organization"},
                  "requestor": False}
    if recipient_name:
        dest["who"]["display"] = recipient_name
        dest["name"] = recipient_name
    if partner:
        dest["altId"] = partner
    net = _network(address)
    if net is not None:
        dest["network"] = net
    return _event(_TYPE_EXPORT, interaction, "R", outcome, [requestor, dest],
                  _entities(resource_refs, patient_refs), description)


# ---------------------------------------------------------------- append-only

#: interactions refused on append-only types (405)
APPEND_ONLY: dict[str, frozenset[str]] = {
    "AuditEvent": frozenset({"update", "patch", "delete"}),
}


def is_allowed(res_type: str, interaction: str) -> bool:
    """May ``interaction`` be applied to ``res_type`` through the API?"""
    return interaction not in APPEND_ONLY.get(res_type, ())


def check_append_only(res_type: str, interaction: str, *, instance: bool = True) -> None:
    """Raise MethodNotAllowed (405) for an update, patch or delete of an AuditEvent.

    ``instance`` says whether the request URL names one resource (``AuditEvent/x``, where
    only GET is allowed) or the type (conditional forms on ``AuditEvent?...``: GET, POST);
    it sets the ``Allow`` header of the answer."""
    if not is_allowed(res_type, interaction):
        raise MethodNotAllowed(
            f"{res_type} is append-only: the {interaction} interaction is not allowed "
            "(audit records are never changed or removed through the API)",
            expression=res_type, headers={"Allow": "GET" if instance else "GET, POST"})


# ---------------------------------------------------------------- the rule

class AuditRule(WriteRule):
    """One AuditEvent per unit of work that wrote something, in the same transaction.

    Install it LAST among the repository's rules (``install_rule``): it sees ``tx.written``
    when its ``before_commit`` runs, so what a later rule writes would not be in the event.
    Units that wrote only AuditEvents (the ``AuditTrail``'s batches, a client posting an
    AuditEvent) get none. It also refuses any change to an existing AuditEvent (update,
    patch, delete, by whatever path) as a second line of defence behind
    ``check_append_only``."""

    types: frozenset[str] = frozenset({"AuditEvent"})

    def before_write(self, tx, res_type: str, res_id: str, body: dict,
                     previous: dict | None) -> dict:
        if previous is not None:
            raise MethodNotAllowed(f"AuditEvent/{res_id} cannot be changed: audit records "
                                   "are append-only", expression="AuditEvent",
                                   headers={"Allow": "GET"})
        return body

    def after_write(self, tx, stored: Stored, previous: dict | None) -> None:
        # deletions do not pass before_write (no body): refuse them here, the unit rolls back
        if stored.deleted:
            raise MethodNotAllowed(f"AuditEvent/{stored.res_id} cannot be deleted: audit "
                                   "records are append-only", expression="AuditEvent",
                                   headers={"Allow": "GET"})

    _warned_order = False

    def before_commit(self, tx) -> None:
        if tx.repo.rules[-1] is not self and not self._warned_order:
            AuditRule._warned_order = True
            log.warning("AuditRule is not the last repository rule: what the rules after it "
                        "write in before_commit is missing from the AuditEvent "
                        "(install it with install_rule after every other rule)")
        event = self.event_for(tx)
        if event is not None:
            tx.create_many([("AuditEvent", event, new_id())])

    def event_for(self, tx) -> dict | None:
        """The AuditEvent of the unit of work so far (None when it wrote only
        AuditEvents)."""
        last: dict[str, Stored] = {}
        created: set[str] = set()
        for s in tx.written:
            if s.res_type == "AuditEvent":
                continue
            ref = s.ref
            last[ref] = s
            if s.version == 1 or s.method == "POST":
                created.add(ref)
        if not last:
            return None
        lifecycle: dict[str, str] = {}
        patients: set[str] = set()
        refs = []
        for ref, s in last.items():
            if s.deleted:
                lifecycle[ref] = "D"
                patients |= self._patients_before(tx, s)
            else:
                lifecycle[ref] = "C" if ref in created else "U"
                patients |= patients_of(s.parsed if s.parsed is not None else s.body)
            refs.append(f"{ref}/_history/{s.version}")
        kinds = set(lifecycle.values())
        action = kinds.pop() if len(kinds) == 1 else "E"
        entities = _entities(refs, patients, lifecycle)
        return _event(_TYPE_REST, current_interaction(), action, "0",
                      [_requestor(current())], entities, None)

    @staticmethod
    def _patients_before(tx, stored: Stored) -> set[str]:
        """Whom a deleted resource concerned: read from the version before the deletion."""
        if stored.res_type == "Patient":
            return {stored.ref}
        if stored.version < 2:
            return set()
        try:
            return patients_of(tx.vread(stored.res_type, stored.res_id,
                                        stored.version - 1).body)
        except FhirError:
            return set()


def install_rule(repo) -> AuditRule:
    """Append an ``AuditRule`` to ``repo.rules`` (last; call after every other rule is
    installed, the sync OutboxRule included) and return it. Installing twice moves the
    existing rule to the end instead of adding another."""
    existing = [r for r in repo.rules if isinstance(r, AuditRule)]
    for r in existing:
        repo.rules.remove(r)
    rule = existing[0] if existing else AuditRule()
    repo.rules.append(rule)
    return rule


# ---------------------------------------------------------------- the trail

def store_batch(repo, batch: list[dict]) -> None:
    """Store ``batch`` as AuditEvents (fresh ids) in one unit of work: the trail's writer
    thread, or its child process (``audit_writer``)."""
    repo.run(lambda tx: tx.create_many(
        [("AuditEvent", event, new_id()) for event in batch]))


class AuditTrail:
    """Writes recorded events in the background, in batches of one unit of work each.

    ``record(event)`` queues (it never raises); a daemon thread writes what is queued every
    ``flush_interval`` seconds, or as soon as ``max_batch`` events are waiting, at most
    ``max_batch`` per unit of work. When the writer falls behind (``high_water`` events
    waiting: more requests per second than it can store), ``record`` waits for it, up to
    ``max_wait`` seconds a call: requests slow down to what can be audited rather than
    audits being dropped (``congested`` tells a caller that must not block, such as the
    event loop, to record from a worker thread). A batch that
    fails is logged and retried once after ``retry_delay`` seconds; if the retry fails too
    its events are counted in ``lost`` and logged (without their content); the thread goes
    on. At most ``max_queue`` events wait: beyond that (the database has been unreachable
    for a while) new events are counted in ``dropped`` and logged, rather than exhausting
    memory.

    ``flush()`` waits until everything recorded before it is written (tests, shutdown);
    ``close()`` drains the queue and stops the thread (call it when the app stops: events
    still queued when the process exits are lost).

    Under sustained load the thread starts a child process (``audit_writer.ChildWriter``)
    and from then on hands it the batches: storing an event costs more CPU than the read it
    records, and in another process that work no longer competes with the requests for the
    interpreter lock. Sustained load: the thread spent more than ``offload_busy`` of each
    of the last two ``offload_window`` seconds storing (a short burst does not start a
    process), or ``offload_at`` events were still waiting after it took a batch. Until the
    child is ready, and whenever it fails, the thread stores the batches itself.
    ``offload_at=None`` keeps everything in-process.
    """

    def __init__(self, repo, *, flush_interval: float = 0.25, max_batch: int = 500,
                 max_queue: int = 100_000, retry_delay: float = 0.5,
                 high_water: int | None = None, max_wait: float = 2.0,
                 offload_at: int | None = 1000, offload_busy: float = 0.2,
                 offload_window: float = 2.0):
        self.repo = repo
        self.offload_at = offload_at
        self.offload_busy = offload_busy
        self.offload_window = offload_window
        self._window_start = time.monotonic()
        self._window_busy = 0.0   # seconds spent storing since _window_start
        self._busy_windows = 0    # consecutive windows over offload_busy
        #: the child process storing batches (None: not started, or not possible)
        self.child = None
        self.flush_interval = flush_interval
        self.max_batch = max(1, max_batch)
        self.max_queue = max_queue
        self.retry_delay = retry_delay
        self.high_water = high_water if high_water is not None else 10 * self.max_batch
        self.max_wait = max_wait
        #: events written, lost (a batch failed twice), dropped (queue full or closed)
        self.written = 0
        self.lost = 0
        self.dropped = 0
        self._queue: deque[dict] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)     # the writer waits on it
        self._progress = threading.Condition(self._lock)  # flush() waits on it
        self._recorded = 0   # events accepted so far
        self._done = 0       # of those, written or lost (FIFO: done n = the first n)
        self._flushing = 0   # flush() calls waiting
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="fhirgw-audit", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ producers

    def record(self, event: dict) -> None:
        """Queue ``event`` for writing. Never blocks on the database, never raises."""
        try:
            with self._lock:
                if len(self._queue) >= self.high_water and not self._closing:
                    # backpressure: wait for the writer rather than outrun it
                    deadline = time.monotonic() + self.max_wait
                    while len(self._queue) >= self.high_water and not self._closing and \
                            self._thread.is_alive() and time.monotonic() < deadline:
                        self._wake.notify()
                        self._progress.wait(0.05)
                if self._closing or len(self._queue) >= self.max_queue:
                    self.dropped += 1
                    dropped = self.dropped
                else:
                    self._queue.append(event)
                    self._recorded += 1
                    if len(self._queue) == self.max_batch:
                        self._wake.notify()
                    return
            if dropped == 1 or dropped % 1000 == 0:
                log.error("audit trail %s: %d audit event(s) dropped so far",
                          "closed" if self._closing else "queue full", dropped)
        except Exception:  # noqa: BLE001 - a request must never fail because of its audit
            log.exception("audit trail: could not queue an audit event")

    @property
    def congested(self) -> bool:
        """``record`` would wait for the writer now."""
        return len(self._queue) >= self.high_water

    @property
    def pending(self) -> int:
        """Events waiting to be written."""
        return len(self._queue)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every event recorded before this call is written (or lost); False if
        ``timeout`` seconds passed first or the writer is not running."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._recorded
            self._flushing += 1
            self._wake.notify()
            try:
                while self._done < target:
                    if not self._thread.is_alive():
                        return False
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._progress.wait(0.1 if left is None else min(left, 0.1))
                return True
            finally:
                self._flushing -= 1

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop accepting events, write what is queued and stop the thread; True when the
        queue was drained in time. Calling it again does nothing more."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout)
        if self.child is not None:
            self.child.close()
        return not self._thread.is_alive()

    # ------------------------------------------------------------ the writer

    def _run(self) -> None:
        while True:
            try:
                with self._lock:
                    if not (self._closing or (self._flushing and self._queue)
                            or len(self._queue) >= self.max_batch):
                        self._wake.wait(self.flush_interval)
                    if not self._queue:
                        if self._closing:
                            return
                        continue
                    n = min(len(self._queue), self.max_batch)
                    batch = [self._queue.popleft() for _ in range(n)]
                    backlog = len(self._queue)
                if self.child is None and self.offload_at is not None and (
                        backlog >= self.offload_at or self._busy()):
                    self._start_child()
                started = time.monotonic()
                self._write(batch)
                self._window_busy += time.monotonic() - started
                with self._lock:
                    self._done += len(batch)
                    self._progress.notify_all()
            except Exception:  # noqa: BLE001 - the writer must outlive any failure
                log.exception("audit trail: unexpected error in the writer")
                time.sleep(self.retry_delay)

    def _busy(self) -> bool:
        """Whether storing took more than ``offload_busy`` of the last two windows (and
        start a new window when this one is over)."""
        now = time.monotonic()
        elapsed = now - self._window_start
        if elapsed < self.offload_window:
            return False
        busy = self._window_busy / elapsed
        self._window_start, self._window_busy = now, 0.0
        self._busy_windows = self._busy_windows + 1 if busy > self.offload_busy else 0
        return self._busy_windows >= 2

    def _start_child(self) -> None:
        from .audit_writer import ChildWriter, can_offload

        if not can_offload(self.repo):
            self.offload_at = None
            return
        self.child = ChildWriter(self.repo)
        self.child.start()

    def _store(self, batch: list[dict]) -> None:
        """One batch in one unit of work: in the child process when it is ready, else here."""
        child = self.child
        if child is not None and child.ready:
            child.write(batch)
            return
        store_batch(self.repo, batch)

    #: after a batch failed twice, its events are stored one by one; this many failures in
    #: a row mean the database itself is failing, and the rest of the batch is lost
    ONE_BY_ONE_GIVE_UP = 3

    def _write(self, batch: list[dict]) -> None:
        for attempt in (1, 2):
            try:
                self._store(batch)
                self.written += len(batch)
                return
            except Exception:  # noqa: BLE001
                if attempt == 1:
                    log.warning("audit trail: writing %d audit events failed; retrying once",
                                len(batch), exc_info=True)
                    time.sleep(self.retry_delay)
                elif len(batch) == 1:
                    self.lost += 1
                    log.error("audit trail: writing an audit event failed again; it is lost "
                              "(%d lost so far)", self.lost, exc_info=True)
                else:
                    log.warning("audit trail: writing %d audit events failed again; storing "
                                "them one by one", len(batch), exc_info=True)
                    self._write_one_by_one(batch)

    def _write_one_by_one(self, batch: list[dict]) -> None:
        """Each event of a failed batch in its own unit of work: one event the store cannot
        take costs that event only, not the batch."""
        failed_in_a_row = 0
        for i, event in enumerate(batch):
            try:
                self._store([event])
                self.written += 1
                failed_in_a_row = 0
            except Exception:  # noqa: BLE001
                self.lost += 1
                failed_in_a_row += 1
                if failed_in_a_row >= self.ONE_BY_ONE_GIVE_UP:
                    self.lost += len(batch) - i - 1
                    log.error("audit trail: storing audit events one by one failed %d times in "
                              "a row; the other %d of the batch are lost (%d lost so far)",
                              failed_in_a_row, len(batch) - i - 1, self.lost, exc_info=True)
                    return
                log.error("audit trail: an audit event could not be stored; it is lost (%d "
                          "lost so far)", self.lost, exc_info=True)


__all__ = ["APPEND_ONLY", "AuditRule", "AuditTrail", "GATEWAY_NAME", "HANDLER_INTERACTIONS",
           "INTERACTIONS", "PATIENT_FIELDS", "UNAUTHENTICATED", "check_append_only",
           "current_interaction", "denied_event", "disclosure_event", "install_rule",
           "interaction_for", "is_allowed", "outcome_code", "patients_of", "reset_interaction",
           "rest_event", "set_interaction", "store_batch"]
