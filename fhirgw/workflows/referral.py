"""Closed-loop referrals: ServiceRequest says what is asked, Task tracks who does it.

* The Task status machine of shared/domain.md is enforced on every write of a fulfilment
  Task (``code`` = task-code#fulfill), with ``statusReason.text`` required for rejected,
  cancelled, on-hold and failed.
* A ServiceRequest whose ``performer`` is an Organization gets its Task (requested, owner =
  that Organization) at the end of the unit of work, unless one already focuses on it, so
  a ServiceRequest that arrives with its Task in one transaction gets no second Task.
* The ServiceRequest follows its Task: completed when the Task completes, revoked when it
  is cancelled or rejected.
* Task and ServiceRequest get a business identifier when they arrive without one.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

from ..model.errors import Unprocessable
from ..model.references import local_id
from ..model.referral import (ALWAYS_ALLOWED, REASON_REQUIRED, TASK_CODE_SYSTEM,
                              TASK_TRANSITIONS)
from ..store.repository import WriteRule
from .states import StatusMachine

TASK = StatusMachine("Task", {k: v for k, v in TASK_TRANSITIONS.items() if v},
                     always=ALWAYS_ALLOWED)

#: Task status -> the status its ServiceRequest takes
SERVICE_REQUEST_FOLLOWS = {"completed": "completed", "cancelled": "revoked", "rejected": "revoked"}


def is_fulfilment(task: dict) -> bool:
    return any(c.get("system") == TASK_CODE_SYSTEM and c.get("code") == "fulfill"
               for c in ((task.get("code") or {}).get("coding") or []))


class ReferralRules(WriteRule):
    types = frozenset({"Task", "ServiceRequest"})

    def before_write(self, tx, res_type, res_id, body, previous):
        if res_type == "Task" and is_fulfilment(body):
            status = body.get("status")
            if previous is not None and is_fulfilment(previous):
                TASK.check(previous.get("status"), status)
            if status in REASON_REQUIRED and not (body.get("statusReason") or {}).get("text"):
                raise Unprocessable(f"A referral Task with status {status!r} needs "
                                    "statusReason.text saying why",
                                    expression="Task.statusReason.text")
        return body

    def after_write(self, tx, stored, previous):
        if stored.res_type != "Task" or stored.deleted:
            return
        task = stored.resource()
        if not is_fulfilment(task):
            return
        status = task.get("status")
        if previous is not None and previous.get("status") == status:
            return
        follow = SERVICE_REQUEST_FOLLOWS.get(status)
        sr_id = local_id(task.get("focus"), "ServiceRequest")
        if follow is None or sr_id is None:
            return
        try:
            sr = tx.read("ServiceRequest", sr_id).resource()
        except Exception:  # noqa: BLE001 - a focus we do not hold: nothing to follow
            return
        if sr.get("status") != follow:
            tx.update("ServiceRequest", sr_id, {**sr, "status": follow}, validated=True)

    def before_commit(self, tx):
        seen = set()
        for stored in list(tx.written):
            if stored.res_type != "ServiceRequest" or stored.deleted or stored.res_id in seen:
                continue
            seen.add(stored.res_id)
            sr = tx.read("ServiceRequest", stored.res_id).resource()
            if sr.get("status") not in ("active", "draft"):
                continue
            owner = next((p for p in sr.get("performer") or []
                          if local_id(p, "Organization")), None)
            if owner is None:
                continue
            if tx.search("Task", [("focus", f"ServiceRequest/{stored.res_id}")], limit=1):
                continue
            task = {
                "resourceType": "Task", "status": "requested", "intent": "order",
                "code": {"coding": [{"system": TASK_CODE_SYSTEM, "code": "fulfill"}]},
                "focus": {"reference": f"ServiceRequest/{stored.res_id}"},
                "authoredOn": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
                "owner": {"reference": owner["reference"]},
            }
            if sr.get("subject"):
                task["for"] = sr["subject"]
            if sr.get("requester"):
                task["requester"] = sr["requester"]
            if sr.get("priority"):
                task["priority"] = sr["priority"]
            tx.create("Task", task, validated=True)


class BusinessIdentifiers(WriteRule):
    """Task and ServiceRequest get ``{system, value}`` when created without an identifier,
    so partners can find them (``Task?identifier=system|value``)."""

    types = frozenset({"Task", "ServiceRequest"})

    def __init__(self, system: str):
        self.system = system

    def before_write(self, tx, res_type, res_id, body, previous):
        if previous is None and not body.get("identifier"):
            body = {**body, "identifier": [{"system": self.system, "value": str(uuid.uuid4())}]}
        elif previous is not None and not body.get("identifier") and previous.get("identifier"):
            body = {**body, "identifier": previous["identifier"]}  # an update keeps it
        return body
