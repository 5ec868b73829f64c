"""``$validate`` (FHIR R4 resource-operation-validate): check a resource, store nothing.

``POST [base]/[type]/$validate`` and ``POST [base]/[type]/[id]/$validate`` take the resource
itself or a Parameters resource with ``resource``, ``profile`` (canonical) and ``mode``
(create | update | delete). The answer is an OperationOutcome with status 200, whether the
resource is valid or not; only a malformed request is a 4xx.
"""
from __future__ import annotations

from typing import Any

from ..model.errors import BadRequest, Issue, information, operation_outcome

MODES = ("create", "update", "delete")


def parse_request(body: Any, res_type: str) -> tuple[dict | None, list[str], str | None]:
    """(resource, profiles, mode) from a resource or a Parameters body."""
    if not isinstance(body, dict):
        raise BadRequest("$validate takes a resource or a Parameters resource",
                         expression="Parameters")
    if body.get("resourceType") != "Parameters":
        return body, [], None
    resource, profiles, mode = None, [], None
    for i, p in enumerate(body.get("parameter") or []):
        name = p.get("name") if isinstance(p, dict) else None
        where = f"Parameters.parameter[{i}]"
        if name == "resource":
            resource = p.get("resource")
            if not isinstance(resource, dict):
                raise BadRequest("parameter 'resource' must carry a resource",
                                 expression=f"{where}.resource")
        elif name == "profile":
            url = p.get("valueCanonical") or p.get("valueUri")
            if not isinstance(url, str):
                raise BadRequest("parameter 'profile' takes valueCanonical or valueUri",
                                 expression=f"{where}.value")
            profiles.append(url)
        elif name == "mode":
            mode = p.get("valueCode")
            if mode not in MODES:
                raise BadRequest(f"parameter 'mode' must be one of {', '.join(MODES)}, "
                                 f"got {mode!r}", expression=f"{where}.valueCode")
        else:
            raise BadRequest(f"$validate has no parameter {name!r} (resource, profile, mode)",
                             expression=f"{where}.name")
    if resource is None and mode != "delete":
        raise BadRequest("parameter 'resource' is required", expression="Parameters.parameter")
    return resource, profiles, mode


def validate(validator, tx, res_type: str, res_id: str | None, body: Any) -> dict:
    resource, profiles, mode = parse_request(body, res_type)
    issues: list[Issue] = []
    if mode == "delete":
        if res_id is None:
            raise BadRequest("mode=delete needs an instance: [type]/[id]/$validate",
                             expression="Parameters.parameter")
        tx.read(res_type, res_id)  # 404/410 when there is nothing to delete
        return operation_outcome([information(f"{res_type}/{res_id} may be deleted")])
    if resource.get("resourceType") != res_type:
        issues.append(Issue(f"The resource is a {resource.get('resourceType')!r}, not a "
                            f"{res_type}", code="invalid", expression=["resourceType"]))
        return operation_outcome(issues)
    if mode == "update" or (res_id is not None and mode is None):
        if res_id is not None and resource.get("id") != res_id:
            issues.append(Issue(f"The resource's id {resource.get('id')!r} is not {res_id!r}",
                                code="invalid", expression=[f"{res_type}.id"]))
    issues.extend(validator.outcome(resource, res_type, profiles))
    if not any(i.severity in ("error", "fatal") for i in issues):
        issues.insert(0, information("Validation successful: no errors", code="informational"))
    return operation_outcome(issues)
