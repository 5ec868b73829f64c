"""R4 resource types, the JSON codec and base validation with fhir.resources R4B.

The wire format is FHIR R4 4.0.1. fhir.resources defaults to R5, which silently breaks R4
data (MedicationStatement became MedicationUsage, fields are dropped), so every model here is
an R4B one. R4B models 128 of the 146 concrete R4 resource types; the 18 it lacks
(MedicinalProduct*, Substance{NucleicAcid,Polymer,Protein,...}, Effect/RiskEvidenceSynthesis)
are answered as unsupported rather than stored unvalidated.

JSON is parsed with orjson and stored as received. orjson turns ``72.50`` into the float
``72.5``; FHIR decimals keep their precision, so a body whose numbers would not survive a
float round trip is parsed a second, slower way that keeps each number's original text.
"""
from __future__ import annotations

import functools
import json
import os
import re
from typing import Any

import orjson
from pydantic import ValidationError

from .errors import BadRequest, InvalidResource, Issue, NotFound
from .jsontypes import check_json_types, field_type

_DATA = os.path.join(os.path.dirname(__file__), "data", "resource_types.json")
with open(_DATA, "rb") as _f:
    _TYPES = orjson.loads(_f.read())["types"]

#: every concrete R4 resource type
R4_TYPES: frozenset[str] = frozenset(t["type"] for t in _TYPES)
#: the types this gateway serves: R4 types that fhir.resources R4B can validate
RESOURCE_TYPES: tuple[str, ...] = tuple(sorted(t["type"] for t in _TYPES if t["r4b_model"]))
SUPPORTED: frozenset[str] = frozenset(RESOURCE_TYPES)

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def is_valid_id(value: str) -> bool:
    return bool(ID_RE.match(value))


# ---------------------------------------------------------------- JSON codec

class RawDecimal(float):
    """A float that remembers the exact text it was parsed from (``72.50``)."""

    __slots__ = ("raw",)

    def __new__(cls, text: str) -> "RawDecimal":
        obj = super().__new__(cls, text)
        obj.raw = text
        return obj


# a number whose text a float round trip would change: a fraction ending in 0, an exponent,
# or 16 or more digits (a double keeps 15 significant digits for sure). A number is what
# follows ``:``, ``[`` or ``,`` and ends where a JSON number ends (before ``,``, ``]`` or
# ``}``), so digits inside strings (uuids, dates, times) do not count; a string such as
# ``"v: 1.50,"`` only costs the slower parse.
_NUMBER = re.compile(rb"[:\[,]\s*-?(\d[\d.eE+\-]*)(?=\s*[,\]}])")
# the same search with one separator, ``:`` (``,`` and ``[`` become ``:`` first, by
# ``_ONE_SEPARATOR``): the regular expression engine looks for a pattern that begins with one
# literal character by comparing bytes, and tests every byte against the set of three
# otherwise, which made the search 6.5% of the server's instructions on the ingest
# benchmark (callgrind). Its matches are a superset of ``_NUMBER``'s at the same starts (a
# ``:`` after a number also counts as its end here); each is checked with ``_NUMBER``. The
# lookahead after the ``:`` (what ``\s*-?\d`` can begin with) turns most separators away
# (before a string, an object, an array) before the engine sets up the repeats: -39%.
_ONE_SEPARATOR = bytes.maketrans(b",[", b"::")
_NUMBER_CANDIDATE = re.compile(rb":(?=[\s\d\-])\s*-?\d[\d.eE+\-]*(?=\s*[:\]}])")


def has_lossy_numbers(body: bytes) -> bool:
    """Does ``body`` hold a JSON number a float would change? Only the numbers are looked
    at (a value after ``:``, ``[`` or ``,`` that ends where a JSON number ends)."""
    for candidate in _NUMBER_CANDIDATE.finditer(body.translate(_ONE_SEPARATOR)):
        m = _NUMBER.match(body, candidate.start())
        if m is None:
            continue
        tok = m.group(1)
        if b"e" in tok or b"E" in tok or (b"." in tok and tok.endswith(b"0")):
            return True
        if len(tok) >= 16 and sum(48 <= c <= 57 for c in tok) >= 16:
            return True
    return False


def _default(obj: Any) -> Any:
    if isinstance(obj, RawDecimal):
        return orjson.Fragment(obj.raw)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def loads(body: bytes | str) -> Any:
    """Parse JSON, keeping the exact text of decimals that a float would change."""
    if isinstance(body, str):
        body = body.encode()
    try:
        if not has_lossy_numbers(body):
            return orjson.loads(body)
        return json.loads(body, parse_float=RawDecimal)
    except (orjson.JSONDecodeError, ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}", code="structure") from None


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_default)


def check_no_nul(data: bytes, body: Any, resource_type: str) -> None:
    """Refuse a body (``data`` its JSON) with a U+0000 character in any string: PostgreSQL
    cannot store one in text, and FHIR strings SHOULD NOT hold control characters. The
    bytes are searched first (no cost for normal bodies); the path is found only then.

    >>> check_no_nul(b'{"a":"x"}', {"a": "x"}, "Patient")
    >>> check_no_nul(b'{"name":[{"family":"a\\u0000"}]}', {"name": [{"family": "a" + chr(0)}]},
    ...              "Patient")
    Traceback (most recent call last):
    ...
    fhirgw.model.errors.InvalidResource: Patient.name[0].family: a string holds the character U+0000 (NUL), which this server does not store
    """
    if b"\\u0000" not in data:
        return
    where = _nul_path(body, resource_type)
    if where is not None:
        raise InvalidResource(f"{where}: a string holds the character U+0000 (NUL), which "
                              "this server does not store", expression=where, code="invalid")


def _nul_path(node: Any, path: str) -> str | None:
    if isinstance(node, str):
        return path if "\0" in node else None
    if isinstance(node, dict):
        for k, v in node.items():
            if "\0" in k:
                return path
            found = _nul_path(v, f"{path}.{k}")
            if found:
                return found
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found = _nul_path(v, f"{path}[{i}]")
            if found:
                return found
    return None


# ---------------------------------------------------------------- validation

@functools.lru_cache(maxsize=None)
def model_class(resource_type: str):
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource_type)


def preload(resource_types) -> int:
    """Import the R4B model classes that the fields of ``resource_types`` reach, and theirs.

    fhir.resources finds a field's class on its first use, by importing its module: after a
    start, the first transaction of IOP resources took ~40 ms longer to validate (50 ms
    instead of 10 for 100 resources), ~65 ms once here instead. Types not supported are
    skipped. Returns the number of model classes visited."""
    seen: set = set()
    todo = [model_class(t) for t in resource_types if t in SUPPORTED]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for field in model.model_fields.values():
            base = field_type(field.annotation)
            if hasattr(base, "get_model_klass") and base.__name__ != "ResourceType":
                todo.append(base.get_model_klass())
    return len(seen)


def _location(resource_type: str, loc: tuple) -> str:
    out = resource_type
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("__root__",) or str(part).startswith("function-"):
            continue
        else:
            out += f".{part}"
    return out


def validate(resource: Any, expected_type: str | None = None) -> dict:
    """Check a parsed resource against its R4B model; returns it unchanged.

    Raises InvalidResource with one issue per problem, each with a FHIRPath expression.
    """
    if not isinstance(resource, dict):
        raise BadRequest("The body must be a JSON object (a FHIR resource)", code="structure")
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        raise BadRequest("The resource has no resourceType", expression="resourceType",
                         code="structure")
    if expected_type is not None and rtype != expected_type:
        raise BadRequest(f"The body's resourceType {rtype!r} does not match the URL's {expected_type!r}",
                         expression="resourceType", code="invalid")
    check_type(rtype)
    try:
        model_class(rtype).model_validate(resource)
    except ValidationError as exc:
        issues = []
        for err in exc.errors()[:50]:
            where = _location(rtype, err.get("loc", ()))
            msg = err.get("msg", "invalid")
            if err.get("type") == "extra_forbidden":
                msg = "Unknown element (not defined for this type in FHIR R4)"
            issues.append(Issue(f"{where}: {msg}", code="structure", expression=[where]))
        raise InvalidResource(issues=issues) from None
    except (ValueError, TypeError) as exc:  # fhir.resources raises these for some checks
        raise InvalidResource(f"{rtype}: {exc}", expression=rtype) from None
    except KeyError as exc:  # fhir_core: a nested resource of a type it does not know
        name = str(exc.args[0] if exc.args else exc).removeprefix("R4.").removesuffix("Type")
        raise InvalidResource(f"{rtype}: a contained or nested resource has the unknown type "
                              f"{name!r}", expression=f"{rtype}.contained") from None
    # the models convert "yes", 1 or "1.50" into booleans and numbers; FHIR JSON does not
    check_json_types(resource, rtype)
    return resource


def check_type(resource_type: str) -> str:
    if resource_type in SUPPORTED:
        return resource_type
    if resource_type in R4_TYPES:
        raise NotFound(f"Resource type {resource_type!r} is an R4 type this gateway does not "
                       "support (fhir.resources R4B has no model for it)", code="not-supported")
    raise NotFound(f"Unknown resource type {resource_type!r}", code="not-supported")
