"""FHIR messaging: the medication handoff out, and ``$process-message`` in.

``Patient/[id]/$medication-handoff`` (Parameters ``recipient`` valueReference to an
Organization, optional ``note`` valueString) builds a message Bundle for a pharmacy or a
prescriber: a MessageHeader (event ``medication-handoff``, focus the MedicationRequests),
the client's active MedicationRequests and MedicationStatements, the Patient reduced to the
minimum necessary, and the prescribers. It is validated against the IOP handoff profile,
stored (as a Bundle, for the delivery worker to send) and returned.

The recipient Organization is the disclosure's recipient (42 CFR Part 2, see
``fhirgw.security.disclosure``): medications labelled for Part 2 (e.g. buprenorphine) are
left out unless the client's consent permits that recipient, references to what is left
out are removed, and the Bundle's meta says that information was withheld (never what).
When nothing is left to hand off the answer is 422 with an OperationOutcome that does not
reveal what was withheld. The worker sends the stored message through the same filter
again at send time, so a consent revoked meanwhile still stops it.

``$process-message`` receives a message Bundle from a partner (a pharmacy's
MedicationDispense, a handoff from another program): its resources are upserted by business
identifier (or created), with links between entries rewritten, and a response message is
returned with ``ok``; content that fails validation gets a ``fatal-error`` response with
the OperationOutcome and changes nothing. The same message (by Bundle.identifier, else
MessageHeader.id) processed twice is applied once: the second time returns the first
response.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

from ..model.errors import BadRequest, FhirError, Unprocessable, operation_outcome
from ..model.references import local_id, rewrite_links
from ..model.resources import SUPPORTED
from ..security.access import PATIENT_MINIMUM  # what a pharmacy or prescriber needs
from ..security import principal as principals
from ..security.disclosure import NOTHING_TEXT, Disclosure
from .params import Params

EVENT_SYSTEM = "http://fhirgw.dev/fhir/CodeSystem/iop-message-event"
HANDOFF_PROFILE = "http://fhirgw.dev/fhir/StructureDefinition/iop-medication-handoff"
NOTE_EXTENSION = "http://fhirgw.dev/fhir/StructureDefinition/handoff-note"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _entry(base: str, res_type: str, body: dict) -> dict:
    return {"fullUrl": f"{base}/{res_type}/{body['id']}", "resource": body}


def medication_handoff(tx, patient_id: str, params, *, base: str, settings) -> dict:
    p = Params(params, "medication-handoff", {"recipient": "Reference", "note": "String"})
    recipient = p.get("recipient")
    if recipient is None:
        raise BadRequest("parameter 'recipient' (valueReference to an Organization) is "
                         "required", expression="Parameters.parameter")
    org_id = local_id(recipient, "Organization")
    if org_id is None:
        raise BadRequest("recipient must reference an Organization on this server "
                         "(Organization/[id])", expression=p.where("recipient"))
    try:
        org = tx.read("Organization", org_id).resource()
    except FhirError:
        raise Unprocessable(f"recipient Organization/{org_id} is not known",
                            expression=p.where("recipient")) from None
    patient = tx.read("Patient", patient_id).resource()
    subject = ("subject", f"Patient/{patient_id}")
    requests = [s.resource() for s in tx.search("MedicationRequest", [subject, ("status", "active")])]
    statements = [s.resource() for s in tx.search("MedicationStatement",
                                                  [subject, ("status", "active")])]
    if not requests and not statements:
        raise Unprocessable(f"Patient/{patient_id} has no active MedicationRequest or "
                            "MedicationStatement to hand off", expression="Patient")
    # 42 CFR Part 2: the recipient sees what the client's consent lets it see
    who = principals.current()
    disclosure = Disclosure(tx, f"Organization/{org_id}", who.purpose if who else "TREAT")
    kept = disclosure.filter(requests + statements)
    requests = [b for b in kept if b.get("resourceType") == "MedicationRequest"]
    statements = [b for b in kept if b.get("resourceType") == "MedicationStatement"]
    if not requests and not statements:
        raise Unprocessable(f"Patient/{patient_id}: {NOTHING_TEXT}", code="suppressed",
                            expression="Patient")
    prescribers: dict[str, dict] = {}
    for mr in requests:
        for rtype in ("Practitioner", "PractitionerRole", "Organization"):
            rid = local_id(mr.get("requester"), rtype)
            if rid and f"{rtype}/{rid}" not in prescribers:
                try:
                    prescribers[f"{rtype}/{rid}"] = tx.read(rtype, rid).resource()
                except FhirError:
                    pass  # a requester we do not hold is named by reference only
    endpoint = f"{base}/Organization/{org_id}"
    for ref in org.get("endpoint") or []:
        eid = local_id(ref, "Endpoint")
        if eid:
            try:
                endpoint = tx.read("Endpoint", eid).resource().get("address") or endpoint
            except FhirError:
                pass
            break
    header_id = str(uuid.uuid4())
    focus = [{"reference": f"MedicationRequest/{m['id']}"} for m in requests] or \
            [{"reference": f"MedicationStatement/{m['id']}"} for m in statements]
    header = {
        "resourceType": "MessageHeader", "id": header_id,
        "eventCoding": {"system": EVENT_SYSTEM, "code": "medication-handoff",
                        "display": "Medication handoff"},
        "destination": [{"name": org.get("name", f"Organization/{org_id}"),
                         "endpoint": endpoint,
                         "receiver": {"reference": f"Organization/{org_id}"}}],
        "source": {"name": "fhirgw", "endpoint": base},
        "focus": focus,
    }
    note = p.get("note")
    if note:
        header["extension"] = [{"url": NOTE_EXTENSION, "valueString": note}]
    minimal = {k: v for k, v in patient.items() if k in PATIENT_MINIMUM}
    entries = [{"fullUrl": f"urn:uuid:{header_id}", "resource": header},
               _entry(base, "Patient", minimal)]
    entries += [_entry(base, "MedicationRequest", m) for m in requests]
    entries += [_entry(base, "MedicationStatement", m) for m in statements]
    entries += [_entry(base, ref.split("/")[0], body) for ref, body in prescribers.items()]
    bundle = disclosure.finish_bundle({
        "resourceType": "Bundle", "meta": {"profile": [HANDOFF_PROFILE]},
        "identifier": {"system": settings.identifier_system, "value": str(uuid.uuid4())},
        "type": "message", "timestamp": _now(), "entry": entries,
    })
    return tx.create("Bundle", bundle).stored.resource()


# ---------------------------------------------------------------- inbound

def _message_key(bundle: dict, header: dict) -> str:
    ident = bundle.get("identifier") or {}
    if ident.get("value"):
        return f"{ident.get('system', '')}|{ident['value']}"
    if header.get("id"):
        return f"MessageHeader|{header['id']}"
    raise BadRequest("A message needs Bundle.identifier or a MessageHeader id, so it is "
                     "applied only once", expression="Bundle.identifier")


def _response(request_header: dict, base: str, code: str, outcome: dict | None) -> dict:
    header_id = str(uuid.uuid4())
    header = {
        "resourceType": "MessageHeader", "id": header_id,
        "eventCoding": request_header.get("eventCoding") or {"system": EVENT_SYSTEM,
                                                             "code": "unknown"},
        "source": {"name": "fhirgw", "endpoint": base},
        "response": {"identifier": request_header.get("id") or "unknown", "code": code},
    }
    src = (request_header.get("source") or {}).get("endpoint")
    if src:
        header["destination"] = [{"endpoint": src}]
    entries = [{"fullUrl": f"urn:uuid:{header_id}", "resource": header}]
    if outcome is not None:
        oo_id = str(uuid.uuid4())
        header["response"]["details"] = {"reference": f"urn:uuid:{oo_id}"}
        entries.append({"fullUrl": f"urn:uuid:{oo_id}", "resource": outcome})
    return {"resourceType": "Bundle", "type": "message", "timestamp": _now(), "entry": entries}


def process_message(tx, message, *, base: str, settings) -> dict:
    if not isinstance(message, dict) or message.get("resourceType") != "Bundle" \
            or message.get("type") != "message":
        raise BadRequest("$process-message takes a Bundle of type message",
                         expression="Bundle.type")
    entries = message.get("entry") or []
    header = (entries[0].get("resource") if entries and isinstance(entries[0], dict) else None) or {}
    if header.get("resourceType") != "MessageHeader":
        raise BadRequest("The first entry of a message must be its MessageHeader",
                         expression="Bundle.entry[0].resource")
    key = _message_key(message, header)
    response_system = settings.identifier_system.rstrip("/") + "/message-response"
    done = tx.search("Bundle", [("identifier", f"{response_system}|{key}")], limit=1)
    if done:
        return done[0].resource()   # the same message again: answered, not re-applied
    try:
        with tx.savepoint():   # a failing entry undoes the message's writes, not the unit
            _apply(tx, entries[1:])
    except FhirError as exc:
        return _response(header, base, "fatal-error", operation_outcome(exc.issues))
    response = _response(header, base, "ok", None)
    response["identifier"] = {"system": response_system, "value": key}
    tx.create("Bundle", response, validated=True)
    return response


def _apply(tx, entries: list) -> None:
    """Upsert each resource by its first identifier (else create), links rewritten."""
    plans = []
    mapping: dict[str, str] = {}
    for i, e in enumerate(entries, start=1):
        body = e.get("resource") if isinstance(e, dict) else None
        where = f"Bundle.entry[{i}].resource"
        if not isinstance(body, dict) or body.get("resourceType") not in SUPPORTED:
            raise BadRequest(f"{where} is not a resource this server takes", expression=where)
        rtype = body["resourceType"]
        ident = next((x for x in body.get("identifier") or []
                      if isinstance(x, dict) and x.get("value")), None) \
            if isinstance(body.get("identifier"), list) else None
        cond = [("identifier", f"{ident.get('system', '')}|{ident['value']}")] if ident else None
        found = tx.search(rtype, cond, limit=2) if cond else []
        if len(found) > 1:
            raise Unprocessable(f"{where}: its identifier matches several {rtype} resources",
                                expression=f"{where}.identifier")
        rid = found[0].res_id if found else str(uuid.uuid4())
        if e.get("fullUrl"):
            mapping[e["fullUrl"]] = f"{rtype}/{rid}"
        if body.get("id"):
            mapping.setdefault(f"{rtype}/{body['id']}", f"{rtype}/{rid}")
        plans.append((i, rtype, rid, bool(found), body))
    for i, rtype, rid, exists, body in plans:
        body = rewrite_links(body, mapping)
        body["id"] = rid
        try:
            if exists:
                tx.update(rtype, rid, body)
            else:
                tx.create(rtype, body, res_id=rid)
        except FhirError as exc:
            for issue in exc.issues:
                issue.diagnostics = f"Bundle.entry[{i}]: {issue.diagnostics}"
                issue.expression = [f"Bundle.entry[{i}].resource" + x[len(rtype):]
                                    if x.startswith(rtype) else x for x in issue.expression]
            raise


__all__ = ["medication_handoff", "process_message"]
