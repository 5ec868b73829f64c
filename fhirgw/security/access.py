"""Authorization: what a principal may do, checked on every interaction.

**Scopes** (SMART v2 letters c r u d s, per type or ``*``): each REST interaction needs one
permission on its type (``INTERACTIONS``); the IOP operations need what they read and
write (``OPERATIONS``); a batch or transaction is checked entry by entry; resources a
search ``_include``s are returned only where the client may read their type.

**Partner isolation**: a client bound to an Organization (a referral partner, a pharmacy)
sees only what concerns it, whatever its scopes:

* ``Task`` it owns (``Task.owner``), the ``ServiceRequest`` such a Task focuses on, the
  ``Patient`` such a Task is for (reduced to the minimum necessary and tagged
  ``SUBSETTED``), its own ``Organization``, ``Communication`` addressed to it, and message
  ``Bundle``s whose MessageHeader names it as receiver (their content as disclosed);
* searches are narrowed to that (``PARTNER_SEARCH``); ``_has`` and chained parameters are
  refused (they would probe data outside the view); included resources outside the view
  are dropped; a read of anything else answers 404, as if it did not exist;
* writes: it may move its own Tasks through the partner-side statuses only
  (``PARTNER_STATUSES``) without changing who owns them or what they are about, create
  ``Communication`` sent by itself, and post messages to ``$process-message``. Nothing
  else: no deletes, no history.

Part 2 data (``security.disclosure``) reaching a partner is withheld unless the client's
consent permits it.
"""
from __future__ import annotations

import orjson

from ..model.errors import Forbidden, NotFound
from ..model.references import local_id
from ..store.repository import Stored, WriteRule
from .audit import APPEND_ONLY, check_append_only, interaction_for
from .principal import Principal, current

#: REST handler -> (permission, the path variable naming the type)
INTERACTIONS: dict[str, tuple[str, str]] = {
    "read": ("r", "type"), "vread": ("r", "type"), "history_instance": ("r", "type"),
    "update": ("u", "type"), "patch": ("u", "type"), "delete": ("d", "type"),
    "create": ("c", "type"), "conditional_update": ("u", "type"),
    "conditional_delete": ("d", "type"), "history_type": ("s", "type"),
    "search_type": ("s", "type"), "search_post": ("s", "type"),
    "compartment": ("s", "ctype"), "validate_type": ("r", "type"),
    "validate_instance": ("r", "type"),
}
#: operation handler -> the (type, permissions) it needs; ``*`` means every type
OPERATIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "discharge": (("EpisodeOfCare", "ru"), ("Composition", "c"), ("Bundle", "c"),
                  ("Appointment", "c"), ("*", "r")),
    "document": (("Composition", "r"),),
    "document_post": (("Composition", "r"),),
    "schedule": (("CarePlan", "r"), ("Appointment", "cs")),
    "medication_handoff": (("Patient", "r"), ("Organization", "r"),
                           ("MedicationRequest", "s"), ("MedicationStatement", "s"),
                           ("Bundle", "c")),
    "process_message": (("Bundle", "c"),),
}
#: handlers anyone authenticated may call (entries of a Bundle are checked one by one)
OPEN = frozenset({"metadata", "bundle"})
#: handlers that need the admin scope
ADMIN = frozenset({"reindex_system", "reindex_type", "reindex_status"})

#: Task statuses a partner (the owner) may set
PARTNER_STATUSES = frozenset({"received", "accepted", "rejected", "in-progress", "on-hold",
                              "completed", "failed"})
#: what a partner may not change on a Task it owns
TASK_FIXED = ("owner", "for", "focus", "requester", "basedOn", "intent")
PARTNER_TYPES = frozenset({"Task", "ServiceRequest", "Patient", "Organization",
                           "Communication", "Bundle"})
#: types whose partner search constraint alone decides what the partner sees
_CONSTRAINED = frozenset({"Task", "ServiceRequest", "Patient", "Organization",
                          "Communication"})
#: handlers open to a partner (with the checks below)
PARTNER_HANDLERS = frozenset({"read", "search_type", "search_post", "compartment", "update",
                              "patch", "create", "process_message", "metadata", "bundle",
                              "validate_type"})
#: what a partner's message ($process-message) may carry: its report (a pharmacy's
#: dispense, a note) and its own Tasks; never our clients' records to overwrite
PARTNER_MESSAGE_TYPES = frozenset({"MessageHeader", "MedicationDispense", "Communication",
                                   "Task", "OperationOutcome"})
#: the minimum necessary of a client that leaves the program (partner reads, referral
#: deliveries, medication handoffs)
PATIENT_MINIMUM = ("resourceType", "id", "identifier", "name", "birthDate", "gender",
                   "telecom", "address")
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
             "code": "SUBSETTED", "display": "subsetted"}


def _denied(principal: Principal, what: str) -> Forbidden:
    return Forbidden(f"Client {principal.name!r} is not allowed to {what}",
                     expression="Authorization")


def require(principal: Principal | None, res_type: str, permissions: str, what: str) -> None:
    if principal is None:
        return
    for p in permissions:
        ok = (principal.scopes.types_with(p) is None) if res_type == "*" else \
            principal.scopes.allows(res_type, p)
        if not ok:
            scope = f"system/{res_type}.{p}"
            raise _denied(principal, f"{what} (needs scope {scope})")


def authorize(principal: Principal | None, handler: str, params: dict, req) -> None:
    """Raise Forbidden unless ``principal`` may call ``handler`` with these path params.
    None is the gateway itself (internal calls): allowed. Append-only types (AuditEvent)
    refuse update, patch and delete to everyone (405), on every path: REST, batch and
    transaction entries alike."""
    rtype = params.get("type")
    if rtype in APPEND_ONLY:
        check_append_only(rtype, interaction_for(handler), instance="id" in params)
    if principal is None or handler in OPEN and not principal.is_partner:
        return
    if principal.is_partner:
        _authorize_partner(principal, handler, params, req)
    if handler in ADMIN:
        if not principal.scopes.admin:
            raise _denied(principal, "run administrative operations (needs fhirgw/admin)")
        return
    if handler in INTERACTIONS:
        perm, var = INTERACTIONS[handler]
        rtype = params[var]
        require(principal, rtype, perm, f"{handler.replace('_', ' ')} {rtype}")
        return
    if handler in OPERATIONS:
        for rtype, perms in OPERATIONS[handler]:
            require(principal, rtype, perms, f"call ${handler.replace('_', '-')}")
        return
    if handler == "search_system":
        types = None
        for k, v in req.search_items:
            if k == "_type":
                types = [t.strip() for t in v.split(",") if t.strip()]
        for rtype in types or ["*"]:
            require(principal, rtype, "s", "search " + ("every type" if rtype == "*" else rtype))
        return
    if handler == "history_system":
        require(principal, "*", "s", "read the history of every type")
        return
    if handler in OPEN:
        return
    raise _denied(principal, f"call {handler}")  # a handler nobody classified: closed


def check_message(principal: Principal | None, types: set[str]) -> None:
    """A partner's message may carry only ``PARTNER_MESSAGE_TYPES``."""
    if principal is None or not principal.is_partner:
        return
    other = sorted(types - PARTNER_MESSAGE_TYPES)
    if other:
        raise _denied(principal, f"send {', '.join(other)} in a message (a partner's message "
                                 f"carries {', '.join(sorted(PARTNER_MESSAGE_TYPES))})")


def _authorize_partner(principal: Principal, handler: str, params: dict, req) -> None:
    if handler not in PARTNER_HANDLERS:
        raise _denied(principal, f"{handler.replace('_', ' ')} (partner clients see only "
                                 "their referrals)")
    rtype = params.get("ctype") or params.get("type")
    if handler in ("read", "search_type", "search_post", "compartment") and \
            rtype not in PARTNER_TYPES:
        raise _denied(principal, f"read {rtype} (partner clients see only their referrals)")
    if handler in ("update", "patch") and rtype != "Task":
        raise _denied(principal, f"change {rtype} (a partner updates only its Tasks)")
    if handler == "create" and rtype != "Communication":
        raise _denied(principal, f"create {rtype} (a partner creates only Communication)")
    if handler in ("search_type", "search_post", "compartment"):
        for k, _v in req.search_items:
            name = k.split(":", 1)[0]
            if k.startswith("_has") or "." in name:
                raise _denied(principal, f"use {k!r} (no chained or _has searches for "
                                         "partner clients)")


# ---------------------------------------------------------------- the partner view

def _refs(value) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [i.get("reference") for i in items if isinstance(i, dict) and i.get("reference")]


def _is_org(ref: str | None, org: str) -> bool:
    org_id = org.split("/", 1)[1]
    return ref is not None and local_id({"reference": ref}, "Organization") == org_id


#: the search a partner's query of a type is narrowed by (``{org}`` is its Organization)
PARTNER_SEARCH: dict[str, tuple[str, str]] = {
    "Task": ("owner", "{org}"),
    "ServiceRequest": ("_has:Task:focus:owner", "{org}"),
    "Patient": ("_has:Task:patient:owner", "{org}"),
    "Organization": ("_id", "{org_id}"),
    "Communication": ("recipient", "{org}"),
    # message Bundles: which are addressed to it is checked on each (MessageHeader inside)
    "Bundle": ("type", "message"),
}


def partner_constraint(principal: Principal, res_type: str) -> tuple[str, str]:
    name, value = PARTNER_SEARCH[res_type]
    org = principal.organization
    return name, value.format(org=org, org_id=org.split("/", 1)[1])


def partner_sees(tx, principal: Principal, res_type: str, res_id: str, body: dict) -> bool:
    org = principal.organization
    if res_type == "Task":
        return _is_org((body.get("owner") or {}).get("reference"), org)
    if res_type == "Organization":
        return f"Organization/{res_id}" == org
    if res_type == "Communication":
        return any(_is_org(r, org) for r in _refs(body.get("recipient")) +
                   _refs(body.get("sender")))
    if res_type == "Bundle":
        return _message_to(body, org)
    if res_type == "ServiceRequest":
        return bool(tx.search("Task", [("owner", org), ("focus", f"ServiceRequest/{res_id}")],
                              limit=1))
    if res_type == "Patient":
        return bool(tx.search("Task", [("owner", org), ("patient", f"Patient/{res_id}")],
                              limit=1))
    return False


def _message_to(bundle: dict, org: str) -> bool:
    """A message Bundle whose MessageHeader names ``org`` as a receiver."""
    if bundle.get("type") != "message":
        return False
    entries = bundle.get("entry") or []
    header = (entries[0].get("resource") if entries and isinstance(entries[0], dict)
              else None) or {}
    if header.get("resourceType") != "MessageHeader":
        return False
    return any(_is_org((d.get("receiver") or {}).get("reference"), org)
               for d in header.get("destination") or [] if isinstance(d, dict))


def minimum_patient(body: dict) -> dict:
    out = {k: v for k, v in body.items() if k in PATIENT_MINIMUM or k == "meta"}
    meta = dict(out.get("meta") or {})
    tags = [t for t in meta.get("tag") or [] if t.get("code") != "SUBSETTED"]
    meta["tag"] = tags + [SUBSETTED]
    out["meta"] = meta
    return out


class PartnerView:
    """What one partner's request may see, with the Part 2 filter, inside ``tx``."""

    def __init__(self, tx, principal: Principal) -> None:
        from .disclosure import Disclosure

        self.tx = tx
        self.principal = principal
        self.disclosure = Disclosure(tx, principal.organization, principal.purpose)

    def view(self, res_type: str, res_id: str, body: dict, *, known_visible: bool = False
             ) -> dict | None:
        """The partner's copy of a resource, or None when it may not see it."""
        if res_type not in PARTNER_TYPES:
            return None
        if not (known_visible and res_type in _CONSTRAINED) and \
                not partner_sees(self.tx, self.principal, res_type, res_id, body):
            return None
        if res_type == "Bundle":  # a message to it: its content as disclosed
            from .disclosure import NothingToDisclose
            try:
                return self.disclosure.message(body)
            except NothingToDisclose:
                return None
        if not self.disclosure.permits(body):
            return None
        if res_type == "Patient":
            return minimum_patient(body)
        return body


def guard_read(tx, principal: Principal | None, stored: Stored) -> Stored:
    """A read's result as ``principal`` may see it (404 when it may not)."""
    if principal is None or not principal.is_partner:
        return stored
    original = stored.resource()
    body = PartnerView(tx, principal).view(stored.res_type, stored.res_id, original)
    if body is None:
        raise NotFound(f"{stored.res_type}/{stored.res_id} is not known",
                       expression=f"{stored.res_type}.id")
    if body is not original:  # reduced (a Patient) or redacted (a message): new bytes
        stored = Stored(stored.res_type, stored.res_id, stored.version, stored.last_updated,
                        stored.deleted, orjson.dumps(body))
    return stored


def filter_page(tx, principal: Principal | None, page) -> int:
    """Drop from a search page what ``principal`` may not see; the number dropped."""
    if principal is None:
        return 0
    dropped = 0
    readable = principal.scopes.types_with("r")
    view = PartnerView(tx, principal) if principal.is_partner else None

    def keep(items, matched: bool):
        nonlocal dropped
        out = []
        for rtype, rid, body in items:
            if readable is not None and rtype not in readable and not matched:
                dropped += 1
                continue
            if view is not None:
                seen = view.view(rtype, rid, orjson.loads(body), known_visible=matched)
                if seen is None:
                    dropped += 1
                    continue
                if rtype in ("Patient", "Bundle"):
                    body = orjson.dumps(seen)
            out.append((rtype, rid, body))
        return out

    page.matches = keep(page.matches, True)
    page.included = keep(page.included, False)
    if view is not None:
        # the count is taken before the view's per-resource checks (Part 2, messages to
        # others): it could reveal what the partner may not see, so it is not given
        page.total = None
    return dropped


class PartnerWrites(WriteRule):
    """A partner's writes, whatever the path (PUT, PATCH, Bundle entry, message)."""

    types = frozenset({"Task", "Communication"})

    def before_write(self, tx, res_type, res_id, body, previous):
        principal = current()
        if principal is None or not principal.is_partner:
            return body
        org = principal.organization
        if res_type == "Communication":
            if previous is not None:
                raise _denied(principal, "change a Communication once sent")
            if not any(_is_org(r, org) for r in _refs(body.get("sender"))):
                raise Forbidden(f"A partner's Communication must have sender {org}",
                                expression="Communication.sender")
            return body
        # Task
        if previous is None or not _is_org((previous.get("owner") or {}).get("reference"),
                                           org):
            raise NotFound(f"Task/{res_id} is not known", expression="Task.id")
        for key in TASK_FIXED:
            if body.get(key) != previous.get(key):
                raise Forbidden(f"A partner may not change Task.{key}",
                                expression=f"Task.{key}")
        status = body.get("status")
        if status != previous.get("status") and status not in PARTNER_STATUSES:
            raise Forbidden(f"A partner may set Task.status only to one of "
                            f"{', '.join(sorted(PARTNER_STATUSES))}, not {status!r}",
                            expression="Task.status")
        return body
