"""Parse FHIR search query pairs into a :class:`SearchQuery`.

Repeated parameters are ANDed, comma-separated values ORed (``\\,`` escapes a comma, as do
``\\|``, ``\\$`` and ``\\\\``). Values are parsed and checked here, so a bad date or an
unknown modifier is a 400 before any SQL runs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..model.errors import BadRequest, Issue
from ..model.resources import R4_TYPES, SUPPORTED
from .registry import SearchParam, SearchRegistry
from .values import (DateFormatError, date_range, now_us, number_range)

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")

#: result parameters (shape the result, not the match set)
RESULT_PARAMS = frozenset({"_count", "_sort", "_include", "_revinclude", "_summary", "_elements",
                           "_total", "_contained", "_containedType"})
#: handled by the HTTP layer, accepted here without effect
TRANSPORT_PARAMS = frozenset({"_format", "_pretty", "_cursor", "_page", "_getpages"})

MODIFIERS = {
    "string": {"exact", "contains", "missing"},
    "token": {"not", "text", "missing", "of-type"},
    "reference": {"missing", "identifier"},
    "date": {"missing"},
    "number": {"missing"},
    "quantity": {"missing"},
    "uri": {"missing", "above", "below"},
    "composite": {"missing"},
    "special": {"missing"},
}
#: modifiers the spec defines but this server does not implement (always a 400)
UNSUPPORTED_MODIFIERS = {"in", "not-in", "above", "below", "type"}

DEFAULT_COUNT = 20
MAX_COUNT = 1000


# ---------------------------------------------------------------- values

@dataclass(frozen=True)
class TokenValue:
    system: str | None
    code: str | None
    has_bar: bool = False      # "|code" (no system) vs "code" (any system)


@dataclass(frozen=True)
class RangeValue:
    """A date/number/quantity search value: prefix and the value's range ``[low, high]``."""
    prefix: str
    value: float
    low: float
    high: float
    system: str | None = None   # quantity unit
    unit: str | None = None
    unit_given: bool = False


@dataclass(frozen=True)
class RefValue:
    target_type: str | None
    target_id: str | None
    url: str | None


@dataclass(frozen=True)
class CompositeValue:
    key: str
    last: RangeValue | None


# ---------------------------------------------------------------- criteria

@dataclass
class Criterion:
    """One AND clause: values ORed.

    kind: ``param`` (an indexed parameter), ``id`` / ``lastUpdated`` (resource columns),
    ``chain`` (``subject:Patient.name=x``: ``inner`` on the referenced resources),
    ``has`` (``_has:Observation:patient:code=x``: ``inner`` on resources of ``has_type``
    referring to this one through ``has_param``).
    """
    kind: str
    name: str
    res_types: tuple[str, ...]
    param: SearchParam | None = None
    modifier: str | None = None
    values: list[Any] = field(default_factory=list)
    missing: bool | None = None
    target_types: tuple[str, ...] = ()
    inner: "Criterion | None" = None
    has_type: str | None = None
    has_param: str | None = None
    #: ``has``: the inner criterion matches many rows (set by the engine's probe), so the
    #: search walks candidates and checks each (EXISTS) instead of listing every referrer
    broad: bool = False

    @property
    def ptype(self) -> str:
        return self.param.type if self.param else "token"


@dataclass(frozen=True)
class SortKey:
    code: str
    desc: bool
    param: SearchParam | None   # None for _id / _lastUpdated


@dataclass(frozen=True)
class Include:
    source_type: str | None     # None for "*"
    param: str                  # "*" for every reference parameter
    target_type: str | None
    iterate: bool = False
    reverse: bool = False


@dataclass
class SearchQuery:
    res_type: str | None
    criteria: list[Criterion] = field(default_factory=list)
    types: list[str] | None = None              # _type (system-level search)
    count: int | None = None
    sort: list[SortKey] = field(default_factory=list)
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    summary: str | None = None
    elements: list[str] | None = None
    total: str | None = None                    # none | estimate | accurate
    contained: str | None = None
    contained_type: str | None = None
    #: restrict to a compartment, e.g. ("Patient", "123") (set by the caller or parse())
    compartment: tuple[str, str] | None = None
    ignored: list[str] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    base_url: str = ""
    #: the query's own pairs (minus paging state), for self/next links
    items: list[tuple[str, str]] = field(default_factory=list)

    @property
    def page_size(self) -> int:
        return DEFAULT_COUNT if self.count is None else self.count

    @property
    def search_types(self) -> tuple[str, ...]:
        """The resource types searched: the URL's type, else ``_type``, else every type."""
        if self.res_type:
            return (self.res_type,)
        return tuple(self.types or sorted(SUPPORTED))


# ---------------------------------------------------------------- helpers

_ESC = re.compile(r"\\(.)")


def split_escaped(value: str, sep: str, maxsplit: int = -1) -> list[str]:
    """Split at unescaped ``sep``; escapes stay in the parts (unescape later)."""
    parts, cur, i, n = [], [], 0, 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            cur.append(value[i:i + 2])
            i += 2
            continue
        if ch == sep and (maxsplit < 0 or n < maxsplit):
            parts.append("".join(cur))
            cur = []
            n += 1
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def unescape(value: str) -> str:
    return _ESC.sub(r"\1", value)


def _prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in PREFIXES and (value[2].isdigit() or value[2] in "-+."):
        return value[:2], value[2:]
    return "eq", value


def parse_date_value(raw: str, name: str) -> RangeValue:
    prefix, text = _prefix(raw)
    try:
        low, high = date_range(text)
    except DateFormatError as exc:
        raise BadRequest(f"Invalid date value {raw!r} for {name}: {exc}", expression=name) from None
    if prefix == "ap":
        gap = abs(now_us() - low) // 10
        low, high = low - gap, high + gap
    return RangeValue(prefix, float(low), float(low), float(high))


def parse_number_value(raw: str, name: str, *, quantity: bool = False) -> RangeValue:
    if quantity:
        parts = split_escaped(raw, "|", 2)
        num = parts[0]
    else:
        parts, num = [raw], raw
    prefix, text = _prefix(num)
    try:
        value, low, high = number_range(text)
    except ValueError:
        raise BadRequest(f"Invalid number {num!r} in {name}", expression=name) from None
    if prefix == "ap":
        d = abs(value) * 0.1
        low, high = value - d, value + d
    system = unit = None
    given = False
    if len(parts) == 3:
        system, unit = unescape(parts[1]) or None, unescape(parts[2]) or None
        given = True
    elif len(parts) == 2:
        raise BadRequest(f"A quantity is number|system|code (got {raw!r} in {name})", expression=name)
    return RangeValue(prefix, value, low, high, system, unit, given)


def parse_token_value(raw: str) -> TokenValue:
    parts = split_escaped(raw, "|", 1)
    if len(parts) == 1:
        return TokenValue(None, unescape(parts[0]) or None, False)
    return TokenValue(unescape(parts[0]) or None, unescape(parts[1]) or None, True)


def parse_reference_value(raw: str, sp: SearchParam, type_modifier: str | None,
                          base_url: str) -> RefValue:
    v = unescape(raw).strip()
    base = base_url.rstrip("/") + "/" if base_url else None
    if base and v.startswith(base):
        v = v[len(base):]
    parts = v.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if "://" in v or v.startswith("urn:"):
        return RefValue(type_modifier, None, v)
    if len(parts) == 2 and parts[0] in R4_TYPES:
        if type_modifier and type_modifier != parts[0]:
            raise BadRequest(f"{sp.code}:{type_modifier} does not match the reference {v!r}",
                             expression=sp.code)
        return RefValue(parts[0], parts[1], None)
    if len(parts) == 1:
        ttype = type_modifier or (sp.targets[0] if len(sp.targets) == 1 else None)
        return RefValue(ttype, v, None)
    return RefValue(type_modifier, None, v)


# ---------------------------------------------------------------- parser

class QueryParser:
    def __init__(self, registry: SearchRegistry):
        self.registry = registry

    def parse(self, res_type: str | None, items: list[tuple[str, str]], *, strict: bool = False,
              base_url: str = "", compartment: tuple[str, str] | None = None) -> SearchQuery:
        q = SearchQuery(res_type=res_type, base_url=base_url, compartment=compartment)
        q.items = [(k, v) for k, v in items if k not in TRANSPORT_PARAMS]
        for name, value in items:
            if "\0" in name or "\0" in value:   # stored strings never hold one (check_no_nul)
                raise BadRequest(f"The search parameter {name!r} holds the character U+0000 "
                                 "(NUL), which no stored value contains", expression=name)
        if res_type is not None and res_type not in SUPPORTED:
            raise BadRequest(f"Unknown or unsupported resource type {res_type!r}")
        # _type first: it decides which parameters a system-level search knows
        for name, value in items:
            if name == "_type":
                types = [t.strip() for t in value.split(",") if t.strip()]
                bad = [t for t in types if t not in SUPPORTED]
                if bad:
                    raise BadRequest(f"Unknown resource type(s) in _type: {', '.join(bad)}",
                                     expression="_type")
                q.types = sorted(set(types) | set(q.types or []))
        unknown: list[str] = []
        for name, value in items:
            if name in TRANSPORT_PARAMS or name == "_type":
                continue
            base = name.split(":", 1)[0]
            if base in RESULT_PARAMS:
                self._result_param(q, name, value, strict)
                continue
            try:
                crit = self._criterion(q.search_types, name, value, base_url)
            except _Unknown as exc:
                unknown.append(str(exc))
                continue
            if crit is not None:
                q.criteria.append(crit)
        if unknown:
            if strict:
                raise BadRequest("Unknown or unsupported search parameter(s): " + ", ".join(unknown),
                                 expression=unknown)
            q.ignored.extend(unknown)
            q.issues.append(Issue("Search parameter(s) ignored (unknown or unsupported): "
                                  + ", ".join(unknown), code="not-supported", severity="warning",
                                  expression=unknown))
        return q

    # -------------------------------------------------------------- criteria

    def _params(self, res_types: tuple[str, ...], code: str) -> tuple[SearchParam | None, tuple[str, ...]]:
        """The parameter named ``code`` and the types (of ``res_types``) that define it."""
        found: SearchParam | None = None
        have = []
        for t in res_types:
            sp = self.registry.get(t, code)
            if sp is None:
                continue
            if found is not None and sp.type != found.type:
                raise BadRequest(f"Search parameter {code!r} has different types across "
                                 f"{', '.join(res_types)}; search one type at a time", expression=code)
            found = found or sp
            have.append(t)
        return found, tuple(have)

    def _criterion(self, res_types: tuple[str, ...], name: str, value: str,
                   base_url: str) -> Criterion | None:
        if name.startswith("_has:"):
            return self._has(res_types, name, value, base_url)
        segments = name.split(".")
        return self._chain(res_types, segments, name, value, base_url)

    def _has(self, res_types, name, value, base_url) -> Criterion | None:
        parts = name.split(":", 3)
        if len(parts) < 4:
            raise BadRequest(f"_has needs _has:Type:reference:parameter (got {name!r})", expression=name)
        _, htype, hparam, rest = parts
        if htype not in SUPPORTED:
            raise _Unknown(name)
        sp, _ = self._params((htype,), hparam)
        if sp is None or sp.type != "reference":
            raise _Unknown(name)
        inner = self._criterion((htype,), rest, value, base_url)
        if inner is None:  # an empty value: the spec ignores the parameter
            return None
        return Criterion("has", name, res_types, param=sp, inner=inner, has_type=htype,
                         has_param=hparam)

    def _chain(self, res_types, segments, name, value, base_url) -> Criterion | None:
        seg = segments[0]
        code, _, modifier = seg.partition(":")
        modifier = modifier or None
        if len(segments) > 1:
            sp, have = self._params(res_types, code)
            if sp is None or sp.type != "reference":
                raise _Unknown(name)
            if modifier and modifier not in SUPPORTED:
                raise BadRequest(f"Unknown type modifier {modifier!r} in {name}", expression=name)
            targets = (modifier,) if modifier else (tuple(t for t in sp.targets if t in SUPPORTED)
                                                  or tuple(SUPPORTED))
            next_code = segments[1].partition(":")[0]
            targets = tuple(t for t in targets
                            if next_code in ("_id", "_lastUpdated") or self.registry.get(t, next_code))
            if not targets:
                raise _Unknown(name)
            inner = self._chain(targets, segments[1:], name, value, base_url)
            if inner is None:  # an empty value: the spec ignores the parameter
                return None
            return Criterion("chain", name, have, param=sp, modifier=modifier,
                             target_types=targets, inner=inner)
        return self._leaf(res_types, code, modifier, name, value, base_url)

    def _leaf(self, res_types, code, modifier, name, value, base_url) -> Criterion | None:
        if code == "_list":
            # _list=[id]: the resources a List names in List.entry.item (comma = any of them)
            if modifier:
                raise BadRequest(f"_list takes no modifier ({name})", expression=name)
            ids = [v.strip().split("/")[-1] for v in split_escaped(value, ",") if v.strip()]
            if not ids:
                raise BadRequest("_list needs a List id", expression=name)
            return Criterion("list", name, res_types, values=ids)
        if code in ("_id", "_lastUpdated"):
            kind = "id" if code == "_id" else "lastUpdated"
            sp, _ = self._params(res_types, code)
            crit = Criterion(kind, name, res_types, param=sp, modifier=modifier)
            ptype = "token" if code == "_id" else "date"
        else:
            sp, have = self._params(res_types, code)
            if sp is None or (sp.type == "special") or (not sp.expression and code != "_text"):
                raise _Unknown(name)
            crit = Criterion("param", name, have, param=sp, modifier=modifier)
            ptype = sp.type
        if modifier:
            if modifier == "missing":
                v = value.strip().lower()
                if v not in ("true", "false"):
                    raise BadRequest(f"{name} takes true or false", expression=name)
                crit.missing = v == "true"
                if crit.kind != "param":
                    # _id / _lastUpdated are never missing
                    crit.kind, crit.values = "never" if crit.missing else "always", []
                return crit
            if ptype == "reference" and modifier in SUPPORTED:
                crit.target_types = (modifier,)
            elif modifier in UNSUPPORTED_MODIFIERS and modifier not in MODIFIERS.get(ptype, ()):
                raise BadRequest(f"The modifier :{modifier} is not supported (in {name})",
                                 expression=name, code="not-supported")
            elif modifier not in MODIFIERS.get(ptype, ()) or (modifier == "of-type" and code != "identifier"):
                raise BadRequest(f"Unknown modifier :{modifier} for a {ptype} parameter (in {name})",
                                 expression=name)
            if ptype in ("reference",) and modifier in R4_TYPES and modifier not in SUPPORTED:
                raise BadRequest(f"Unsupported type {modifier!r} in {name}", expression=name)
        raw_values = [v for v in split_escaped(value, ",")]
        if not any(v.strip() for v in raw_values):
            return None   # an empty parameter is ignored (spec)
        for raw in raw_values:
            if raw == "":
                continue
            crit.values.append(self._value(ptype, crit, raw, name, base_url))
        return crit

    def _value(self, ptype: str, crit: Criterion, raw: str, name: str, base_url: str) -> Any:
        mod = crit.modifier
        if ptype == "token":
            if mod == "text":
                return unescape(raw)
            if mod == "of-type":
                parts = [unescape(p) for p in split_escaped(raw, "|")]
                if len(parts) != 3 or not parts[1] or not parts[2]:
                    raise BadRequest(f"{name} takes system|code|value", expression=name)
                return TokenValue(parts[0] or None, f"{parts[1]}|{parts[2]}", True)
            return parse_token_value(raw)
        if ptype == "date":
            return parse_date_value(unescape(raw), name)
        if ptype == "number":
            return parse_number_value(unescape(raw), name)
        if ptype == "quantity":
            return parse_number_value(raw, name, quantity=True)
        if ptype == "reference":
            if mod == "identifier":
                return parse_token_value(raw)
            return parse_reference_value(raw, crit.param, crit.target_types[0] if crit.target_types else None,
                                         base_url)
        if ptype == "composite":
            return self._composite_value(crit.param, raw, name)
        return unescape(raw)   # string, uri

    def _composite_value(self, sp: SearchParam, raw: str, name: str) -> CompositeValue:
        parts = split_escaped(raw, "$")
        if len(parts) != len(sp.components):
            raise BadRequest(f"{name} takes {len(sp.components)} $-separated values", expression=name)
        keys: list[str] = []
        last: RangeValue | None = None
        from .values import normalize_string
        for i, (comp, part) in enumerate(zip(sp.components, parts)):
            csp = self.registry.by_url(comp.definition)
            ctype = csp.type if csp else "token"
            is_last = i == len(parts) - 1
            if ctype in ("quantity", "number", "date") and is_last:
                if ctype == "date":
                    last = parse_date_value(unescape(part), name)
                else:
                    last = parse_number_value(part if ctype == "quantity" else unescape(part), name,
                                              quantity=ctype == "quantity")
                    if ctype == "quantity":
                        keys.append("" if not last.unit_given else
                                    f"{last.system or ''}|{last.unit or ''}")
            elif ctype == "string":
                keys.append(normalize_string(unescape(part)))
            elif ctype in ("number",):
                keys.append(unescape(part))
            else:
                keys.append(unescape(part))
        return CompositeValue("$".join(keys), last)

    # -------------------------------------------------------------- result params

    def _result_param(self, q: SearchQuery, name: str, value: str, strict: bool) -> None:
        base, _, mod = name.partition(":")
        if base == "_count":
            try:
                n = int(value)
            except ValueError:
                raise BadRequest(f"_count must be a non-negative integer (got {value!r})",
                                 expression="_count") from None
            if n < 0:
                raise BadRequest("_count must be a non-negative integer", expression="_count")
            if n > MAX_COUNT:
                q.issues.append(Issue(f"_count={n} reduced to the maximum page size {MAX_COUNT}",
                                      code="too-costly", severity="warning", expression=["_count"]))
                n = MAX_COUNT
            q.count = n
        elif base == "_sort":
            for key in [k.strip() for k in value.split(",") if k.strip()]:
                desc = key.startswith("-")
                code = key.lstrip("-")
                q.sort.append(self._sort_key(q, code, desc, strict))
        elif base in ("_include", "_revinclude"):
            if mod not in ("", "iterate", "recurse"):
                raise BadRequest(f"Unknown modifier on {name}", expression=name)
            for v in value.split(","):
                inc = self._include(q, v.strip(), iterate=bool(mod), reverse=base == "_revinclude")
                if inc is not None:
                    (q.revincludes if inc.reverse else q.includes).append(inc)
        elif base == "_summary":
            v = value.strip()
            if v not in ("true", "text", "data", "count", "false"):
                raise BadRequest(f"_summary must be true, text, data, count or false (got {v!r})",
                                 expression="_summary")
            q.summary = None if v == "false" else v
        elif base == "_elements":
            q.elements = [e.strip() for e in value.split(",") if e.strip()]
        elif base == "_total":
            v = value.strip()
            if v not in ("none", "estimate", "accurate"):
                raise BadRequest(f"_total must be none, estimate or accurate (got {v!r})",
                                 expression="_total")
            q.total = v
        elif base == "_contained":
            v = value.strip()
            if v not in ("true", "false", "both"):
                raise BadRequest("_contained must be true, false or both", expression="_contained")
            q.contained = v
            if v != "false":
                self._unsupported(q, "_contained", strict)
        elif base == "_containedType":
            q.contained_type = value.strip()

    def _unsupported(self, q: SearchQuery, what: str, strict: bool) -> None:
        if strict:
            raise BadRequest(f"{what} is not supported", expression=what, code="not-supported")
        q.ignored.append(what)
        q.issues.append(Issue(f"{what} is not supported and was ignored", code="not-supported",
                              severity="warning", expression=[what]))

    def _sort_key(self, q: SearchQuery, code: str, desc: bool, strict: bool) -> SortKey:
        if code in ("_id", "_lastUpdated"):
            return SortKey(code, desc, None)
        sp, _ = self._params(q.search_types, code)
        if sp is None or sp.type in ("composite", "special") or not sp.expression:
            raise BadRequest(f"Cannot sort by {code!r}: not a search parameter of "
                             f"{q.res_type or 'these types'}", expression="_sort")
        return SortKey(code, desc, sp)

    def _include(self, q: SearchQuery, value: str, *, iterate: bool, reverse: bool) -> Include | None:
        if not value:
            return None
        if value == "*":
            return Include(None, "*", None, iterate, reverse)
        parts = value.split(":")
        if len(parts) not in (2, 3):
            raise BadRequest(f"_include/_revinclude take Type:parameter[:targetType] (got {value!r})",
                             expression="_include")
        src, code = parts[0], parts[1]
        target = parts[2] if len(parts) == 3 else None
        if src not in SUPPORTED or (target is not None and target not in SUPPORTED):
            raise BadRequest(f"Unknown resource type in {value!r}", expression="_include")
        if code != "*":
            sp = self.registry.get(src, code)
            if sp is None or sp.type != "reference":
                raise BadRequest(f"{src}:{code} is not a reference search parameter",
                                 expression="_include")
        return Include(src, code, target, iterate, reverse)


class _Unknown(Exception):
    pass

