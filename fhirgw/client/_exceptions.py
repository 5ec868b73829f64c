"""Every exception the SDK raises, in one place.

::

    FhirClientError                 base: catch this to catch everything below
    ├── TransportError              no usable answer: connection refused, reset, TLS… (after retries)
    │   └── Timeout                 connect/read/write/pool timeout (after retries)
    ├── DecodeError                 the server answered 2xx but the body is not the FHIR we expected
    ├── AuthError                   the token endpoint refused us (OAuth2 / SMART backend services)
    ├── InvalidTransition           a workflow helper refused a change before sending it (also a ValueError)
    └── ResponseError               the server answered an error status; carries its OperationOutcome
        ├── BadRequest              400
        │   └── ValidationError     400 for an invalid resource, and 422 (business rule)
        │       └── UnprocessableEntity   422
        ├── Unauthorized            401
        ├── Forbidden               403
        ├── NotFound                404
        ├── MethodNotAllowed        405
        ├── UnsupportedFormat       406, 415
        ├── Conflict                409
        ├── Gone                    410 (the resource was deleted)
        ├── PreconditionFailed      412 (stale If-Match, several matches for a conditional)
        ├── PayloadTooLarge         413
        ├── TooManyRequests         429 (once retries are used up)
        └── ServerError             5xx (once retries are used up)

A :class:`ResponseError` has ``status`` (int), ``outcome`` (an R4B ``OperationOutcome`` or
``None`` when the body was not one), ``issues`` (its issues, possibly empty), ``method`` and
``url`` of the request, and ``headers`` of the response. Its message is the status and the
first issue's diagnostics, e.g. ``404 Not Found: Patient/nope is not known (GET Patient/nope)``.

In a batch, a failed entry raises the same classes when its result is asked for.
"""
from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from fhir.resources.R4B.operationoutcome import OperationOutcome, OperationOutcomeIssue

__all__ = [
    "FhirClientError", "TransportError", "Timeout", "DecodeError", "AuthError",
    "InvalidTransition", "ResponseError", "BadRequest", "ValidationError",
    "UnprocessableEntity", "Unauthorized", "Forbidden", "NotFound", "MethodNotAllowed",
    "UnsupportedFormat", "Conflict", "Gone", "PreconditionFailed", "PayloadTooLarge",
    "TooManyRequests", "ServerError", "error_class",
]


class FhirClientError(Exception):
    """Base class of every exception raised by :mod:`fhirgw.client`."""


class TransportError(FhirClientError):
    """The request got no usable HTTP answer (after the retries the policy allows)."""


class Timeout(TransportError):
    """Connecting, sending or waiting for the answer took longer than the timeout."""


class DecodeError(FhirClientError):
    """A successful answer whose body is not the FHIR JSON we expected."""


class AuthError(FhirClientError):
    """The authorization server refused to issue an access token."""

    def __init__(self, message: str, *, status: int | None = None,
                 error: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


class InvalidTransition(FhirClientError, ValueError):
    """A workflow helper refused a change locally (e.g. a Task status transition)."""


class ResponseError(FhirClientError):
    """The server answered with an error status; ``outcome`` is its OperationOutcome."""

    status: int = 0

    def __init__(self, message: str, *, status: int, outcome: OperationOutcome | None = None,
                 method: str = "", url: str = "",
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome
        self.method = method
        self.url = url
        self.headers: dict[str, str] = dict(headers or {})

    @property
    def issues(self) -> list[OperationOutcomeIssue]:
        """The OperationOutcome's issues (empty when the server sent none)."""
        return list(self.outcome.issue or []) if self.outcome is not None else []

    @property
    def diagnostics(self) -> list[str]:
        """Each issue's diagnostics text (or its code when it has no text)."""
        return [str(i.diagnostics or i.code) for i in self.issues]


class BadRequest(ResponseError):
    """400: the request is malformed (bad search syntax, wrong body, …)."""


class ValidationError(BadRequest):
    """The resource was refused as invalid (400), or a business rule failed (422).

    ``issues`` name each problem, with ``expression`` pointing at the element
    (``Patient.birthDate``).
    """

    @property
    def expressions(self) -> list[str]:
        return [str(e) for i in self.issues for e in (i.expression or []) if e]


class UnprocessableEntity(ValidationError):
    """422: well-formed, but a business rule failed (e.g. a JSON Patch ``test``)."""


class Unauthorized(ResponseError):
    """401: no or an expired/invalid access token."""


class Forbidden(ResponseError):
    """403: the token is valid but lacks the scope or consent for this request."""


class NotFound(ResponseError):
    """404: unknown id, or unknown/unsupported resource type."""


class MethodNotAllowed(ResponseError):
    """405."""


class UnsupportedFormat(ResponseError):
    """406 or 415: a format the server does not speak (only JSON is)."""


class Conflict(ResponseError):
    """409."""


class Gone(ResponseError):
    """410: the resource existed and was deleted."""


class PreconditionFailed(ResponseError):
    """412: ``If-Match`` named an old version, or a conditional matched several resources."""


class PayloadTooLarge(ResponseError):
    """413: body or Bundle too large."""


class TooManyRequests(ResponseError):
    """429, once the retry policy gave up."""


class ServerError(ResponseError):
    """5xx, once the retry policy gave up."""


_BY_STATUS: dict[int, type[ResponseError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound,
    405: MethodNotAllowed, 406: UnsupportedFormat, 409: Conflict, 410: Gone,
    412: PreconditionFailed, 413: PayloadTooLarge, 415: UnsupportedFormat,
    422: UnprocessableEntity, 429: TooManyRequests,
}

#: issue-type codes that mean "this resource is invalid" (http://hl7.org/fhir/issue-type)
_VALIDATION_CODES = frozenset({"structure", "required", "value", "invariant", "code-invalid",
                               "extension", "business-rule"})


def error_class(status: int, issue_codes: list[str] | None = None) -> type[ResponseError]:
    """The exception class for an error status (and the OperationOutcome's issue codes).

    >>> error_class(404).__name__, error_class(410).__name__, error_class(503).__name__
    ('NotFound', 'Gone', 'ServerError')
    >>> error_class(400, ["structure"]).__name__, error_class(400, ["invalid"]).__name__
    ('ValidationError', 'BadRequest')
    >>> error_class(418).__name__
    'ResponseError'
    """
    if status >= 500:
        return ServerError
    cls = _BY_STATUS.get(status, ResponseError)
    if cls is BadRequest and any(c in _VALIDATION_CODES for c in issue_codes or ()):
        return ValidationError
    return cls


def reason(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


