"""Search parameter encoding: Python keyword arguments -> FHIR query pairs.

One function, :func:`search_params`, and its doctests are its documentation. Keys use
``__`` to separate the parts of a FHIR parameter (fhirpy's ``SQ`` style):

* a plain name; ``_`` inside a name becomes ``-`` (``birth_date`` -> ``birth-date``), a
  leading ``_`` stays (``_id``, ``_lastUpdated``):

  >>> search_params(family="Rivera", birth_date="1990-04-02", _id="a1")
  [('family', 'Rivera'), ('birth-date', '1990-04-02'), ('_id', 'a1')]

* a last part that is a comparison prefix (``eq ne gt lt ge le sa eb ap``) goes in front
  of the value; dates and datetimes are written in ISO 8601:

  >>> from datetime import date, datetime, timezone
  >>> search_params(date__ge=date(2026, 1, 1), date__lt=datetime(2026, 2, 1, 9, 30, tzinfo=timezone.utc))
  [('date', 'ge2026-01-01'), ('date', 'lt2026-02-01T09:30:00+00:00')]

* a last part that is a modifier becomes ``:modifier`` (``not_in`` -> ``:not-in``):

  >>> search_params(name__exact="Ana", email__missing=True, code__not_in="http://x/vs")
  [('name:exact', 'Ana'), ('email:missing', 'true'), ('code:not-in', 'http://x/vs')]

* a capitalised part is a type (``:Type``), and any other part continues a chain (``.param``):

  >>> search_params(patient__Patient__birth_date__ge="2000")
  [('patient:Patient.birth-date', 'ge2000')]
  >>> search_params(subject__name="Rivera", focus__ServiceRequest__status="active")
  [('subject.name', 'Rivera'), ('focus:ServiceRequest.status', 'active')]

* ``_has`` reverse chains keep their colons:

  >>> search_params(_has__Observation__patient__code="http://loinc.org|44261-6")
  [('_has:Observation:patient:code', 'http://loinc.org|44261-6')]

Values: a list, tuple or set means OR (values joined by ``,``); ``where()`` called twice with
the same key means AND (two pairs). A model with an id becomes ``Type/id``, a Reference its
``reference``, an Identifier ``system|value``, a Coding ``system|code``, a CodeableConcept its
first coding; ``True``/``False`` become ``true``/``false``; strings are sent as written
(``system|code`` tokens included).

  >>> from fhir.resources.R4B.patient import Patient
  >>> from fhir.resources.R4B.coding import Coding
  >>> search_params(patient=Patient(id="p1"), status=["booked", "arrived"],
  ...               code=Coding(system="http://loinc.org", code="44261-6"))
  [('patient', 'Patient/p1'), ('status', 'booked,arrived'), ('code', 'http://loinc.org|44261-6')]

``None`` is refused rather than silently dropped (use ``__missing=True`` to ask for "no value"):

  >>> search_params(name=None)
  Traceback (most recent call last):
  ...
  TypeError: search parameter 'name' is None; use name__missing=True to find resources without it
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

__all__ = ["search_params", "encode_value", "PREFIXES", "MODIFIERS"]

#: comparison prefixes (https://hl7.org/fhir/R4/search.html#prefix)
PREFIXES = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"})
#: modifiers (https://hl7.org/fhir/R4/search.html#modifiers), in Python spelling
MODIFIERS = frozenset({"missing", "exact", "contains", "not", "text", "in", "not_in",
                       "below", "above", "of_type", "identifier", "iterate"})


def _name(part: str) -> str:
    """``birth_date`` -> ``birth-date``; a leading underscore is kept (``_lastUpdated``)."""
    if part.startswith("_"):
        return "_" + part[1:].replace("_", "-")
    return part.replace("_", "-")


def search_params(**params: Any) -> list[tuple[str, str]]:
    """Encode keyword arguments as FHIR search (name, value) pairs; see the module docs."""
    out: list[tuple[str, str]] = []
    for key, value in params.items():
        if value is None:
            raise TypeError(f"search parameter {key!r} is None; use {key}__missing=True "
                            "to find resources without it")
        name, prefix = encode_key(key)
        out.append((name, prefix + encode_value(value)))
    return out


def encode_key(key: str) -> tuple[str, str]:
    """Split a keyword into the FHIR parameter name and a value prefix.

    >>> encode_key("date__ge"), encode_key("general_practitioner__Practitioner__name")
    (('date', 'ge'), ('general-practitioner:Practitioner.name', ''))
    """
    parts = key.split("__")
    if parts[0] == "_has":
        return ":".join(["_has"] + [_name(p) for p in parts[1:]]), ""
    prefix = ""
    if len(parts) > 1 and parts[-1] in PREFIXES:
        prefix = parts.pop()
    name = _name(parts[0])
    rest = parts[1:]
    for i, part in enumerate(rest):
        if part[:1].isupper():
            name += ":" + part
        elif i == len(rest) - 1 and part in MODIFIERS:
            name += ":" + part.replace("_", "-")
        else:
            name += "." + _name(part)
    return name, prefix


def encode_value(value: Any) -> str:
    """One search value as text; sequences are OR-ed with ``,``.

    >>> encode_value([1, 2.5, Decimal("3.10")]), encode_value(False)
    ('1,2.5,3.10', 'false')
    >>> encode_value({"value": 5.4, "system": "http://unitsofmeasure.org", "code": "mg"})
    '5.4|http://unitsofmeasure.org|mg'
    >>> encode_value({"system": "urn:iop:mrn", "value": "IOP-0001"})
    'urn:iop:mrn|IOP-0001'
    """
    if isinstance(value, (list, tuple, set, frozenset)):
        items: Iterable[Any] = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return ",".join(encode_value(v) for v in items)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (int, float, Decimal)):
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return _from_json(dict(value))
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return _from_json(dump(mode="json"))
    reference = getattr(value, "reference", None)  # a pending transaction entry
    if isinstance(reference, str):
        return reference
    raise TypeError(f"cannot use a {type(value).__name__} as a search value")


def _from_json(data: dict[str, Any]) -> str:
    rtype, rid = data.get("resourceType"), data.get("id")
    if rtype and rid:
        return f"{rtype}/{rid}"
    if rtype:
        raise TypeError(f"a {rtype} without an id cannot be a search value")
    if isinstance(data.get("reference"), str):
        return str(data["reference"])
    if "coding" in data and data["coding"]:
        return _from_json(data["coding"][0])
    if "value" in data and ("code" in data or "unit" in data):  # Quantity
        return f"{data['value']}|{data.get('system') or ''}|{data.get('code') or data.get('unit')}"
    if "code" in data:  # Coding
        return f"{data['system']}|{data['code']}" if data.get("system") else str(data["code"])
    if "value" in data:  # Identifier
        return f"{data['system']}|{data['value']}" if data.get("system") else str(data["value"])
    raise TypeError(f"cannot use {data!r} as a search value")
