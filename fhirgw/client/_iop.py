"""IOP workflows on top of the generic API: referrals (ServiceRequest + Task), discharge and
medication handoff. The rules and request bodies are built here, once; the clients only send.

The referral loop follows the Gravity pattern: the ServiceRequest says what is asked, a Task
(``intent=order``, ``code=fulfill``, ``focus`` -> ServiceRequest, ``owner`` -> the partner
organization) says who does it and where it stands.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any, Literal

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.resource import Resource
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task

from ..model.referral import REASON_REQUIRED, TASK_TRANSITIONS
from ._core import Call, operation, operation_parameters, reference_to, resource_id, to_json, type_name
from ._exceptions import DecodeError, InvalidTransition
from ._transaction import Entry, _Builder

__all__ = ["Referral", "TASK_TRANSITIONS", "REASON_REQUIRED", "check_transition",
           "task_with_status", "add_referral", "discharge_call", "medication_handoff_call"]

TASK_CODE = {"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill",
             "display": "Fulfill the focal request"}

Cadence = Literal["weekly", "biweekly", "monthly"]


@dataclass(frozen=True)
class Referral:
    """A referral as stored: the ServiceRequest (what) and its Task (who, and where it stands)."""

    service_request: ServiceRequest
    task: Task


def check_transition(current: str, new: str, reason: str | None = None) -> None:
    """Raise InvalidTransition unless a referral Task may go from ``current`` to ``new``.

    >>> check_transition("requested", "accepted")
    >>> check_transition("completed", "in-progress")
    Traceback (most recent call last):
    ...
    fhirgw.client._exceptions.InvalidTransition: a referral Task cannot go from 'completed' to 'in-progress' (allowed: none, it is final)
    >>> check_transition("requested", "rejected")
    Traceback (most recent call last):
    ...
    fhirgw.client._exceptions.InvalidTransition: status 'rejected' needs a reason (statusReason.text)
    """
    if new not in TASK_TRANSITIONS:
        raise InvalidTransition(f"unknown Task status {new!r}")
    allowed = TASK_TRANSITIONS.get(current, frozenset())
    if new != "entered-in-error" and new not in allowed:
        names = ", ".join(sorted(allowed)) or "none, it is final"
        raise InvalidTransition(f"a referral Task cannot go from {current!r} to {new!r} "
                                f"(allowed: {names})")
    if new in REASON_REQUIRED and not (reason and reason.strip()):
        raise InvalidTransition(f"status {new!r} needs a reason (statusReason.text)")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def task_with_status(task: Task, status: str, reason: str | None = None, *,
                     now: str | None = None) -> Task:
    """A copy of the Task with the new status (checked), ``statusReason`` and
    ``lastModified``; the Task is not changed."""
    check_transition(str(task.status), status, reason)
    data = to_json(task)
    data["status"] = status
    if reason:
        data["statusReason"] = {"text": reason}
    else:
        data.pop("statusReason", None)
    data["lastModified"] = now or _now()
    return Task.model_validate(data)


def add_referral(tx: _Builder, service_request: ServiceRequest,
                 to: Organization | Reference | str | None, *,
                 requester: Resource | Reference | str | None = None,
                 description: str | None = None,
                 ) -> tuple[Entry[ServiceRequest] | None, Entry[Task]]:
    """Add a referral to a transaction: the ServiceRequest (unless it already has an id)
    and a Task ``requested`` for ``to`` (None: an open referral nobody owns yet)."""
    if service_request.intent is None:
        raise ValueError("the ServiceRequest needs an intent (usually 'order')")
    sr_entry: Entry[ServiceRequest] | None = None
    if service_request.id:
        focus = reference_to(service_request)
    else:
        sr_entry = tx.create(service_request)
        focus = sr_entry.reference
    task: dict[str, Any] = {
        "resourceType": "Task", "status": "requested", "intent": "order",
        "code": {"coding": [TASK_CODE]}, "focus": to_json(focus), "authoredOn": _now(),
    }
    if service_request.subject is not None:
        task["for"] = to_json(service_request.subject)
    who = requester if requester is not None else service_request.requester
    if who is not None:
        task["requester"] = to_json(reference_to(who))
    if to is not None:
        task["owner"] = to_json(reference_to(to))
    text = description or (service_request.code.text if service_request.code else None)
    if text:
        task["description"] = text
    return sr_entry, tx.create(Task.model_validate(task))


def _as_bundle(kind: str) -> Any:
    def decode(resource: Resource) -> Bundle:
        if not isinstance(resource, Bundle):
            raise DecodeError(f"${kind} answered a {type_name(resource)}, not a Bundle")
        return resource
    return decode


def _date(value: _dt.date | str | None) -> str | None:
    return value.isoformat() if isinstance(value, _dt.date) else value


def discharge_call(episode: Resource | str, *, follow_up: Cadence | None = None,
                   count: int | None = None, date: _dt.date | str | None = None) -> Call[Bundle]:
    """``POST EpisodeOfCare/{id}/$discharge`` -> the discharge summary document Bundle."""
    eid = episode if isinstance(episode, str) else resource_id(episode)
    params = operation_parameters(("date", "valueDate", _date(date)),
                                  ("followUpCadence", "valueCode", follow_up),
                                  ("followUpCount", "valueInteger", count))
    return _bundle_call(operation(f"EpisodeOfCare/{eid.split('/')[-1]}/$discharge", params),
                        "discharge")


def medication_handoff_call(patient: Resource | str, *, recipient: Resource | Reference | str,
                            note: str | None = None) -> Call[Bundle]:
    """``POST Patient/{id}/$medication-handoff`` -> the message Bundle that was sent."""
    pid = patient if isinstance(patient, str) else resource_id(patient)
    params = operation_parameters(("recipient", "valueReference", recipient),
                                  ("note", "valueString", note))
    return _bundle_call(operation(f"Patient/{pid.split('/')[-1]}/$medication-handoff", params),
                        "medication-handoff")


def _bundle_call(call: Call[Resource], kind: str) -> Call[Bundle]:
    check = _as_bundle(kind)
    return Call(call.request, lambda response: check(call.decode(response)))


