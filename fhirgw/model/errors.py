"""One exception hierarchy for every FHIR error; the API turns it into an OperationOutcome.

Every error carries the HTTP status, and one or more issues, each with a severity, an
issue-type code (http://hl7.org/fhir/issue-type), a diagnostic a person understands, and
where known the FHIRPath ``expression`` of the element at fault.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import orjson


@dataclass
class Issue:
    diagnostics: str
    code: str = "processing"
    severity: str = "error"
    expression: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        out: dict = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = list(self.expression)
        return out


def operation_outcome(issues: list[Issue]) -> dict:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def outcome_bytes(issues: list[Issue]) -> bytes:
    return orjson.dumps(operation_outcome(issues))


def information(text: str, code: str = "informational") -> Issue:
    return Issue(text, code=code, severity="information")


class FhirError(Exception):
    """Base of all errors that become an OperationOutcome."""

    status = 400
    code = "processing"

    def __init__(self, diagnostics: str | None = None, *, expression: str | list[str] | None = None,
                 issues: list[Issue] | None = None, status: int | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        if issues is None:
            exprs = [expression] if isinstance(expression, str) else list(expression or [])
            issues = [Issue(diagnostics or self.__class__.__name__, code=self.code, expression=exprs)]
        self.issues = issues
        self.headers = headers or {}
        super().__init__(diagnostics or (issues[0].diagnostics if issues else ""))

    def outcome(self) -> dict:
        return operation_outcome(self.issues)


class BadRequest(FhirError):
    status, code = 400, "invalid"


class InvalidResource(FhirError):
    """The resource failed structural validation (400) or a business rule (422)."""

    status, code = 400, "structure"


class Unprocessable(FhirError):
    status, code = 422, "business-rule"


class NotFound(FhirError):
    status, code = 404, "not-found"


class Gone(FhirError):
    status, code = 410, "deleted"


class MethodNotAllowed(FhirError):
    status, code = 405, "not-supported"


class NotAcceptable(FhirError):
    status, code = 406, "not-supported"


class Conflict(FhirError):
    status, code = 409, "conflict"


class PreconditionFailed(FhirError):
    status, code = 412, "conflict"


class PayloadTooLarge(FhirError):
    status, code = 413, "too-costly"


class UnsupportedMediaType(FhirError):
    status, code = 415, "not-supported"


class TooManyMatches(PreconditionFailed):
    code = "multiple-matches"


class Unauthorized(FhirError):
    """No valid access token (never says which check failed)."""

    status, code = 401, "login"


class Forbidden(FhirError):
    """A valid token whose scopes or partner view do not allow the interaction."""

    status, code = 403, "forbidden"
