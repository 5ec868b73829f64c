"""JSON types of FHIR primitives, checked after the R4B models have accepted a resource.

fhir.resources validates with pydantic in lax mode: it accepts ``"active": "yes"`` or
``1`` for a boolean, ``"3"`` for an integer and ``"1.50"`` for a decimal, and converts
them. The gateway stores the JSON it received, so those would be stored and served as they
came: not FHIR JSON, which writes booleans as ``true``/``false``, integers and decimals as
numbers, and every other primitive as a string (FHIR R4 json.html). This module checks
exactly that, from the models' own field types:

* boolean elements: a JSON ``true``/``false``;
* integer, positiveInt, unsignedInt: a JSON number without a fraction or exponent;
* decimal: a JSON number;
* dateTime, instant and time: a JSON string (the models also take a number, as a Unix
  time); the other string primitives (string, code, uri, date, base64Binary, ...) the
  models already take as JSON strings only.

The per-model tables are built once per type from the R4B model fields and keep only the
elements worth a look (and the complex elements that lead to one); a check walks the
resource once and computes the element's path only when it finds a mismatch.

For the common types, the tables are also compiled into a pydantic-core validator in
strict mode that looks at those elements only, in Rust (``compile_checks``, from
``validation.parallel.warm_models`` when a server or a validation worker starts: ~0.25 s
for its 32 types, ~20 ms a type). It accepts only what the walk accepts, in about half
its time (IOP resources: 1.7-3.3 µs against 3.1-6.2); what it refuses goes to the walk,
which decides and finds the element's path. A 100-resource transaction's check takes
~0.45 ms instead of ~0.8 (its base validation ~10 ms).
"""
from __future__ import annotations

import datetime
import decimal
import typing
from typing import Any

from pydantic_core import SchemaValidator, ValidationError, core_schema as cs

from .errors import InvalidResource

_BOOL, _INT, _NUM, _STR, _MODEL, _RESOURCE = range(6)
_WHAT = {_BOOL: "a JSON boolean (true or false)",
         _INT: "a JSON integer (a number without fraction or exponent)",
         _NUM: "a JSON number", _STR: "a JSON string"}
#: the string primitives the models also take as a number (a dateTime, instant or time
#: given as 1700000000); strings, codes, uris, dates and base64Binary they take as strings only
_LAX_STRINGS = (datetime.datetime, datetime.time)
#: model class -> {JSON key: (classes a primitive may have or None, kind, model class or None)},
#: only the keys worth a look
_SCHEMAS: dict[type, dict[str, tuple[Any, int, Any]]] = {}
#: model class -> whether it or a model below it has a field checked here
_NEEDS: dict[type, bool] = {}


def field_shape(annotation: Any) -> tuple[Any, bool]:
    """The type under ``Optional``, ``List`` and ``Annotated`` of a model field's
    annotation (None for a union of several types, e.g. ``fhir_comments``: str or list of
    str), and whether a ``List`` was among what it was under."""
    is_list = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Union or (origin is not None and origin.__name__ == "UnionType"):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return None, is_list
            annotation = args[0]
        elif origin in (list, typing.List, typing.Annotated):
            is_list = is_list or origin is not typing.Annotated
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation, is_list


def field_type(annotation: Any) -> Any:
    """The type under ``Optional``, ``List`` and ``Annotated`` (``field_shape``)."""
    return field_shape(annotation)[0]


def _classify(annotation: Any) -> tuple[int, Any] | None:
    """(kind, model) of a field's annotation; None for a field not checked here (strings,
    codes, uris, dates, base64: the models take a JSON string only)."""
    base = field_type(annotation)
    if base is bool:
        return _BOOL, None
    if base is int:
        return _INT, None
    if base in (decimal.Decimal, float):
        return _NUM, None
    if base in _LAX_STRINGS:
        return _STR, None
    if hasattr(base, "get_model_klass"):
        if base.__name__ == "ResourceType":   # contained / Bundle.entry.resource
            return _RESOURCE, None
        return _MODEL, base.get_model_klass()
    return None


def _needs_check(model: type, _seen: set | None = None) -> bool:
    """Whether ``model`` (or one of the models below it) has a field to check here."""
    found = _NEEDS.get(model)
    if found is not None:
        return found
    seen = _seen if _seen is not None else set()
    if model in seen:   # a cycle adds no field of its own
        return False
    seen.add(model)
    found = False
    for field in model.model_fields.values():
        kind = _classify(field.annotation)
        if kind is not None and (kind[0] != _MODEL or _needs_check(kind[1], seen)):
            found = True
            break
    if _seen is None or found:
        _NEEDS[model] = found
    return found


def _schema(model: type) -> dict[str, tuple[Any, int, Any]]:
    schema = _SCHEMAS.get(model)
    if schema is None:
        schema = {}
        for name, field in model.model_fields.items():
            kind = _classify(field.annotation)
            if kind is not None and (kind[0] != _MODEL or _needs_check(kind[1])):
                schema[field.alias or name] = (_CLASSES.get(kind[0]), *kind)
        _SCHEMAS[model] = schema
    return schema


#: the Python classes orjson gives for each primitive kind (a decimal parsed losslessly is a
#: float subclass, ``resources.RawDecimal``)
_CLASSES = {_STR: frozenset({str}), _BOOL: frozenset({bool}), _INT: frozenset({int}),
            _NUM: frozenset({int, float})}


def _ok(value: Any, kind: int, model: Any) -> bool:
    cls = value.__class__
    allowed = _CLASSES.get(kind)
    if allowed is not None:
        return cls in allowed or (kind == _NUM and cls is not bool and isinstance(value, float))
    if cls is not dict:
        return True   # not ours to judge: the model accepted it
    if kind == _MODEL:
        return _all_ok(value, _schema(model))
    return _resource_ok(value)


def _resource_ok(node: dict) -> bool:
    from .resources import SUPPORTED, model_class

    rtype = node.get("resourceType")
    if rtype not in SUPPORTED:
        return True
    return _all_ok(node, _schema(model_class(rtype)))


def _all_ok(node: dict, schema: dict) -> bool:
    return _first_bad(node, schema) is None


def _first_bad(node: dict, schema: dict) -> str | None:
    """The key of ``node`` holding the first mismatch in the node's order (None: all
    good): the error names the same element in every process."""
    for key, value in node.items():
        spec = schema.get(key)
        if spec is None or value is None:
            continue
        allowed, kind, model = spec
        # a primitive of an allowed class needs no call (most of them)
        for item in value if value.__class__ is list else (value,):
            if item is not None and (allowed is None or item.__class__ not in allowed) \
                    and not _ok(item, kind, model):
                return key
    return None


def _path(node: dict, schema: dict, path: str) -> tuple[str, int]:
    """The path of the first mismatch below ``node`` and the kind expected there."""
    key = _first_bad(node, schema)
    _allowed, kind, model = schema[key]
    value = node[key]
    items = list(enumerate(value)) if value.__class__ is list else [(None, value)]
    for i, item in items:
        if item is None or _ok(item, kind, model):
            continue
        here = f"{path}.{key}" if i is None else f"{path}.{key}[{i}]"
        if item.__class__ is dict and kind in (_MODEL, _RESOURCE):
            if kind == _RESOURCE:
                from .resources import model_class
                return _path(item, _schema(model_class(item["resourceType"])), here)
            return _path(item, _schema(model), here)
        return here, kind
    raise AssertionError("no mismatch found")  # pragma: no cover


# ---------------------------------------------------------------- compiled

#: model class -> the strict pydantic-core validator of its checked elements
_FAST: dict[type, SchemaValidator] = {}
#: the strict core schema of a primitive of each kind: what ``_CLASSES`` allows, no more
#: (strict bool takes only a bool; strict int an int but no bool; strict float an int or a
#: float, its subclasses too, but no bool; strict str only a str)
_STRICT = {_BOOL: cs.bool_schema(strict=True), _INT: cs.int_schema(strict=True),
           _NUM: cs.float_schema(strict=True), _STR: cs.str_schema(strict=True)}


def _resource_item(value: Any) -> Any:
    """A contained (or nested) resource: the walk's verdict (rare; not compiled)."""
    if not _ok(value, _RESOURCE, None):
        raise ValueError("a primitive with the wrong JSON type")
    return value


def _ref(model: type) -> str:
    return f"{model.__module__}.{model.__qualname__}"


def _compile(model: type, defs: dict[str, Any]) -> dict:
    """A reference to the core schema of ``model``'s checked elements, added to ``defs``
    with those of the models below it: a dict with only those keys, each ``None``, or the
    kind's strict schema, or a list of them (``None`` items too) where the field is a list;
    the dict's other keys are not looked at."""
    ref = _ref(model)
    if ref not in defs:
        defs[ref] = None   # being built: a cycle refers to it
        fields = {}
        for name, field in model.model_fields.items():
            kind = _classify(field.annotation)
            if kind is None or (kind[0] == _MODEL and not _needs_check(kind[1])):
                continue
            if kind[0] == _MODEL:
                item = _compile(kind[1], defs)
            elif kind[0] == _RESOURCE:
                item = cs.no_info_plain_validator_function(_resource_item)
            else:
                item = _STRICT[kind[0]]
            if field_shape(field.annotation)[1]:
                item = cs.list_schema(cs.nullable_schema(item))
            fields[field.alias or name] = cs.typed_dict_field(cs.nullable_schema(item),
                                                              required=False)
        defs[ref] = cs.typed_dict_schema(fields, total=False, extra_behavior="ignore",
                                         ref=ref)
    return cs.definition_reference_schema(ref)


def compile_checks(models) -> None:
    """Compile the check of each resource model in ``models`` (see the module text)."""
    for model in models:
        if model not in _FAST:
            defs: dict[str, Any] = {}
            top = _compile(model, defs)
            _FAST[model] = SchemaValidator(cs.definitions_schema(top, list(defs.values())))


def check_json_types(resource: dict, resource_type: str) -> None:
    """Raise InvalidResource (400, with the element's path) when a primitive of
    ``resource`` (which the R4B model of ``resource_type`` accepted) has the wrong JSON type.

    >>> check_json_types({"resourceType": "Patient", "active": True}, "Patient")
    >>> check_json_types({"resourceType": "Patient", "telecom": [{"rank": 1}, {"rank": "2"}]},
    ...                  "Patient")
    Traceback (most recent call last):
    ...
    fhirgw.model.errors.InvalidResource: Patient.telecom[1].rank: must be a JSON integer (a number without fraction or exponent)
    """
    from .resources import model_class

    model = model_class(resource_type)
    fast = _FAST.get(model)
    if fast is not None:
        try:
            fast.validate_python(resource)
            return
        except ValidationError:   # the walk decides (a non-dict where a model is, say)
            pass
    schema = _schema(model)
    if _all_ok(resource, schema):
        return
    where, kind = _path(resource, schema, resource_type)
    raise InvalidResource(f"{where}: must be {_WHAT[kind]}", expression=where, code="structure")
