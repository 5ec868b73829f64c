"""The referral Task's status rules of shared/domain.md, as data: the server enforces them
(fhirgw.workflows.referral) and the SDK checks them before sending (fhirgw.client)."""
from __future__ import annotations

#: task-code#fulfill: the Task of a referral
TASK_CODE_SYSTEM = "http://hl7.org/fhir/CodeSystem/task-code"

#: allowed Task status changes of a referral; a status absent or with no moves is final
TASK_TRANSITIONS: dict[str, frozenset[str]] = {
    "draft": frozenset({"requested", "cancelled"}),
    "requested": frozenset({"accepted", "rejected", "cancelled"}),
    "received": frozenset({"accepted", "rejected", "cancelled"}),
    "accepted": frozenset({"in-progress", "on-hold", "cancelled", "completed", "failed"}),
    "ready": frozenset({"in-progress", "on-hold", "cancelled", "completed", "failed"}),
    "in-progress": frozenset({"on-hold", "cancelled", "completed", "failed"}),
    "on-hold": frozenset({"in-progress", "cancelled", "completed", "failed"}),
    "rejected": frozenset(), "cancelled": frozenset(), "completed": frozenset(),
    "failed": frozenset(), "entered-in-error": frozenset(),
}
#: statuses any status may move to
ALWAYS_ALLOWED = frozenset({"entered-in-error"})
#: statuses that need ``statusReason.text``
REASON_REQUIRED = frozenset({"rejected", "cancelled", "on-hold", "failed"})
