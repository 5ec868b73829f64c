"""The shared core of Client and AsyncClient: everything except the I/O.

Each FHIR interaction is a :class:`Call`: the :class:`Request` to send and a function that
turns the HTTP response into the result. :class:`~fhirgw.client.Client` sends a call with
``httpx.Client``, :class:`~fhirgw.client.AsyncClient` with ``httpx.AsyncClient``; building
requests, decoding answers, mapping errors and deciding retries happen here, once.
"""
from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Generic, TypeVar, cast

import httpx
import orjson
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.resource import Resource
from pydantic import BaseModel
from pydantic import ValidationError as _PydanticError

from ._config import IDEMPOTENT_METHODS
from ._exceptions import DecodeError, ResponseError, Timeout, TransportError, error_class, reason
from ._query import search_params

__all__ = ["Request", "Call", "R", "FHIR_JSON", "JSON_PATCH"]

R = TypeVar("R", bound=Resource)
T = TypeVar("T")

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"

Params = Sequence[tuple[str, str]]
Query = str | Mapping[str, Any] | Params


@dataclass(frozen=True)
class Request:
    """One HTTP request, relative to the FHIR base (or an absolute ``next`` link)."""

    method: str
    url: str
    params: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    content_type: str = FHIR_JSON
    #: may be sent twice without changing the outcome (retried after 5xx / read failures)
    safe: bool | None = None

    @property
    def retry_safe(self) -> bool:
        if self.safe is not None:
            return self.safe
        return self.method in IDEMPOTENT_METHODS

    def http_headers(self) -> dict[str, str]:
        headers = {"Accept": FHIR_JSON}
        if self.body is not None:
            headers["Content-Type"] = self.content_type
        headers.update(self.headers)
        return headers

    def describe(self) -> str:
        return f"{self.method} {self.url or '[base]'}"


@dataclass(frozen=True)
class Call(Generic[T]):
    """A request and how to read its answer."""

    request: Request
    decode: Callable[[httpx.Response], T] = field(repr=False)


# ---------------------------------------------------------------- models and JSON

@functools.lru_cache(maxsize=None)
def model_class(resource_type: str) -> type[Resource]:
    """The R4B model class of a resource type (``"Patient"`` -> ``Patient``)."""
    try:
        return cast(type[Resource], get_fhir_model_class(resource_type))
    except KeyError:
        raise ValueError(f"unknown FHIR resource type {resource_type!r}") from None


def type_name(target: type[Resource] | Resource | str) -> str:
    """``Patient``, ``Patient(...)`` or ``"Patient"`` -> ``"Patient"``."""
    if isinstance(target, str):
        return target
    return str(target.get_resource_type())


def to_json(resource: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(resource, Mapping):
        return dict(resource)
    return cast(dict[str, Any], orjson.loads(resource.model_dump_json()))


# numbers whose text a float would change (trailing fraction zeros, exponents, 16+ digits):
# such bodies are parsed with Decimal, so 72.50 stays 72.50 through export and import
_LOSSY_NUMBER = re.compile(rb"\d\.\d*0(?![\d])|\d[eE][+-]?\d|(?:\d\.?){16,}")


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return orjson.Fragment(str(obj))
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def dumps(data: Any) -> bytes:
    """JSON bytes; Decimals (from :func:`loads`) are written as their exact text."""
    return orjson.dumps(data, default=_default)


def loads(body: bytes | str) -> Any:
    """Parse JSON; decimals that a float would change become :class:`~decimal.Decimal`.

    >>> loads(b'{"value": 72.50, "n": 3}')
    {'value': Decimal('72.50'), 'n': 3}
    >>> dumps(loads(b'{"value": 72.50}'))
    b'{"value":72.50}'
    """
    data = body.encode() if isinstance(body, str) else body
    if _LOSSY_NUMBER.search(data) is None:
        return orjson.loads(data)
    return json.loads(data, parse_float=Decimal)


def parse_json(response: httpx.Response) -> Any:
    try:
        return loads(response.content)
    except ValueError as exc:  # orjson.JSONDecodeError and json's are ValueErrors
        raise DecodeError(f"{response.request.method} {response.request.url}: the answer "
                          f"is not JSON ({exc})") from None


def decode_resource(data: Any, expected: type[R] | None = None) -> R:
    """A resource's JSON as its R4B model (the class named by ``resourceType``)."""
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise DecodeError(f"expected a FHIR resource, got {str(data)[:200]}")
    try:
        cls = model_class(data["resourceType"])
    except ValueError as exc:
        raise DecodeError(str(exc)) from None
    if expected is not None and not issubclass(cls, expected):
        raise DecodeError(f"expected a {expected.get_resource_type()}, got a {data['resourceType']}")
    try:
        return cast(R, cls.model_validate(data))
    except (_PydanticError, ValueError, TypeError) as exc:
        raise DecodeError(f"the server's {data['resourceType']} does not validate as an R4B "
                          f"model: {exc}") from None


def new_urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def resource_id(resource: Resource, what: str = "this") -> str:
    rid = getattr(resource, "id", None)
    if not rid:
        raise ValueError(f"{what} {type_name(resource)} has no id")
    return str(rid)


def reference_to(target: Resource | Reference | str) -> Reference:
    """A Reference to a resource (``Type/id``), a Reference itself, or a reference string."""
    if isinstance(target, Reference):
        return target
    if isinstance(target, str):
        return Reference(reference=target)
    return Reference(reference=f"{type_name(target)}/{resource_id(target)}")


def version_tag(value: bool | int | str, resource: Resource | None) -> str:
    """The ``If-Match`` value: ``True`` takes the resource's ``meta.versionId``.

    >>> version_tag(3, None), version_tag('W/"4"', None), version_tag("5", None)
    ('W/"3"', 'W/"4"', 'W/"5"')
    """
    if value is True:
        meta = getattr(resource, "meta", None)
        vid = getattr(meta, "versionId", None)
        if not vid:
            raise ValueError("if_match=True needs a resource with meta.versionId")
        value = str(vid)
    if isinstance(value, bool):
        raise ValueError("if_match must be True, a version id or an ETag")
    text = str(value)
    return text if text.startswith(("W/", '"')) else f'W/"{text}"'


def encode_query(query: Query) -> str:
    """A condition (If-None-Exist, conditional URLs) as a query string.

    >>> encode_query({"identifier": "urn:iop:mrn|IOP-1"})
    'identifier=urn%3Aiop%3Amrn%7CIOP-1'
    >>> encode_query("identifier=urn:iop:mrn|IOP-1")
    'identifier=urn:iop:mrn|IOP-1'
    """
    if isinstance(query, str):
        return query
    pairs = search_params(**query) if isinstance(query, Mapping) else list(query)
    return str(httpx.QueryParams(tuple(pairs)))


# ---------------------------------------------------------------- errors

def error_from_response(response: httpx.Response, request: Request) -> ResponseError:
    """The exception for an error answer, carrying the server's OperationOutcome."""
    outcome: OperationOutcome | None = None
    try:
        data = orjson.loads(response.content) if response.content else None
        if isinstance(data, dict) and data.get("resourceType") == "OperationOutcome":
            outcome = OperationOutcome.model_validate(data)
    except (orjson.JSONDecodeError, _PydanticError, ValueError):
        outcome = None
    return error_from_outcome(response.status_code, outcome, method=request.method,
                              url=request.url or "[base]", headers=response.headers,
                              fallback=response.text[:200])


def error_from_outcome(status: int, outcome: OperationOutcome | None, *, method: str = "",
                       url: str = "", headers: Mapping[str, str] | None = None,
                       fallback: str = "") -> ResponseError:
    issues = list(outcome.issue or []) if outcome is not None else []
    codes = [str(i.code) for i in issues]
    errors = [i for i in issues if i.severity in ("error", "fatal")] or issues
    detail = (errors[0].diagnostics or errors[0].code) if errors else fallback.strip()
    message = reason(status) + (f": {detail}" if detail else "")
    if method:
        message += f" ({method} {url})"
    cls = error_class(status, codes)
    return cls(message, status=status, outcome=outcome, method=method, url=url,
               headers=headers)


def transport_error(exc: httpx.TransportError, request: Request) -> TransportError:
    cls = Timeout if isinstance(exc, httpx.TimeoutException) else TransportError
    what = type(exc).__name__
    return cls(f"{request.describe()}: {what}: {exc or 'no answer'}")


# ---------------------------------------------------------------- decoders

def expect_resource(expected: type[R] | None) -> Callable[[httpx.Response], R]:
    def decode(response: httpx.Response) -> R:
        return decode_resource(parse_json(response), expected)
    return decode


def expect_json(response: httpx.Response) -> Any:
    return parse_json(response) if response.content else None


def expect_nothing(response: httpx.Response) -> None:
    return None


# ---------------------------------------------------------------- interactions

PREFER_REPRESENTATION = ("Prefer", "return=representation")


def create(resource: R, *, if_none_exist: Query | None = None) -> Call[R]:
    headers = [PREFER_REPRESENTATION]
    if if_none_exist is not None:
        headers.append(("If-None-Exist", encode_query(if_none_exist)))
    return Call(Request("POST", type_name(resource), headers=tuple(headers),
                        body=dumps(to_json(resource)), safe=if_none_exist is not None),
                expect_resource(type(resource)))


def read(resource_type: type[R], rid: str) -> Call[R]:
    return Call(Request("GET", f"{type_name(resource_type)}/{rid}"),
                expect_resource(resource_type))


def vread(resource_type: type[R], rid: str, vid: str | int) -> Call[R]:
    return Call(Request("GET", f"{type_name(resource_type)}/{rid}/_history/{vid}"),
                expect_resource(resource_type))


def update(resource: R, *, if_match: bool | int | str | None = None,
           condition: Query | None = None) -> Call[R]:
    headers = [PREFER_REPRESENTATION]
    if if_match is not None and if_match is not False:
        headers.append(("If-Match", version_tag(if_match, resource)))
    if condition is not None:
        url = f"{type_name(resource)}?{encode_query(condition)}"
    else:
        url = f"{type_name(resource)}/{resource_id(resource, 'the')}"
    return Call(Request("PUT", url, headers=tuple(headers), body=dumps(to_json(resource))),
                expect_resource(type(resource)))


def patch(resource_type: type[R], rid: str, operations: Sequence[Mapping[str, Any]], *,
          if_match: str | None = None) -> Call[R]:
    headers = [PREFER_REPRESENTATION]
    if if_match is not None:
        headers.append(("If-Match", if_match))
    return Call(Request("PATCH", f"{type_name(resource_type)}/{rid}", headers=tuple(headers),
                        body=dumps([dict(op) for op in operations]), content_type=JSON_PATCH,
                        safe=False),
                expect_resource(resource_type))


def delete(resource_type: str, rid: str, *, if_match: str | None = None) -> Call[None]:
    headers = (("If-Match", if_match),) if if_match else ()
    return Call(Request("DELETE", f"{resource_type}/{rid}", headers=headers), expect_nothing)


def get_json(url: str, params: Params = ()) -> Call[Any]:
    return Call(Request("GET", url, params=tuple(params)), expect_json)


def post_bundle(bundle: Mapping[str, Any]) -> Call[Any]:
    return Call(Request("POST", "", body=dumps(bundle), headers=(PREFER_REPRESENTATION,),
                        safe=False), expect_json)


def operation(url: str, parameters: Mapping[str, Any] | Resource | None, *,
              method: str = "POST") -> Call[Resource]:
    """``POST [base]/[Type]/[id]/$name`` with a Parameters body; the answer as a model."""
    body = None if parameters is None else dumps(to_json(parameters))
    return Call(Request(method, url, body=body, safe=method == "GET"), expect_resource(None))


# ---------------------------------------------------------------- bundles

def next_link(bundle: Mapping[str, Any]) -> str | None:
    """The ``next`` link of a Bundle (paging always follows it, never a page counter)."""
    for link in bundle.get("link") or ():
        if link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None


def history_resources(bundle: Mapping[str, Any], expected: type[R] | None) -> list[R]:
    """The versions in a history Bundle (deletions, which have no resource, are skipped)."""
    return [decode_resource(e["resource"], expected) for e in bundle.get("entry") or ()
            if isinstance(e.get("resource"), dict)]


def parse_status(text: str) -> int:
    """``"201 Created"`` -> 201."""
    try:
        return int(str(text).split()[0])
    except (ValueError, IndexError):
        raise DecodeError(f"bad Bundle.entry.response.status {text!r}") from None


def operation_parameters(*parts: tuple[str, str, Any]) -> dict[str, Any]:
    """A Parameters resource from (name, value[x] key, value) triples (``None`` skipped)."""
    params = []
    for name, kind, value in parts:
        if value is None:
            continue
        if kind == "valueReference":
            value = to_json(reference_to(value))
        params.append({"name": name, kind: value})
    return {"resourceType": "Parameters", "parameter": params}
