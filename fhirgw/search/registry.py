"""The SearchParameter registry: the official R4 definitions as data, plus custom ones.

Every SearchParameter applies to the resource types in its ``base``; ``Resource`` and
``DomainResource`` bases apply to every type that inherits from them. A custom
SearchParameter added at runtime replaces an official one with the same code on the same
base, and takes effect for the next index/search call (indexes of resources written before
it was added are filled in by re-indexing, see ``SearchEngine.reindex_batch`` and ``$reindex``).

The registry is copy-on-write: readers take the current snapshot without a lock, writers
build a new one under a lock.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..model.errors import BadRequest
from .fhirpath import Program, ancestors, applies_to, compile_expression

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")

SEARCH_TYPES = frozenset({"number", "date", "string", "token", "reference", "composite",
                          "quantity", "uri", "special"})

#: parameters answered from the ``resource`` table itself, not from index rows
RESOURCE_COLUMN_PARAMS = frozenset({"_id", "_lastUpdated"})


@dataclass(frozen=True)
class Component:
    definition: str
    expression: str


@dataclass(frozen=True)
class SearchParam:
    url: str
    code: str
    type: str
    base: tuple[str, ...]
    expression: str | None = None
    targets: tuple[str, ...] = ()
    components: tuple[Component, ...] = ()
    modifiers: tuple[str, ...] = ()
    comparators: tuple[str, ...] = ()
    description: str = ""
    custom: bool = False

    @classmethod
    def from_json(cls, sp: dict[str, Any], *, custom: bool = False) -> "SearchParam":
        for key in ("code", "type", "base"):
            if not sp.get(key):
                raise BadRequest(f"SearchParameter.{key} is required", expression=f"SearchParameter.{key}")
        if sp["type"] not in SEARCH_TYPES:
            raise BadRequest(f"SearchParameter.type {sp['type']!r} is not a search parameter type",
                             expression="SearchParameter.type")
        base = sp["base"] if isinstance(sp["base"], list) else [sp["base"]]
        url = sp.get("url") or f"urn:fhirgw:sp:{'-'.join(base)}-{sp['code']}"
        return cls(
            url=url, code=sp["code"], type=sp["type"], base=tuple(base),
            expression=sp.get("expression"), targets=tuple(sp.get("target") or ()),
            components=tuple(Component(c.get("definition", ""), c.get("expression", ""))
                             for c in sp.get("component") or ()),
            modifiers=tuple(sp.get("modifier") or ()),
            comparators=tuple(sp.get("comparator") or ()),
            description=sp.get("description", ""), custom=custom)

    def program(self, res_type: str) -> Program | None:
        """The compiled extractor of this parameter for ``res_type`` (cached)."""
        if not self.expression:
            return None
        return compile_expression(self.expression, res_type)

    def applies_to(self, res_type: str) -> bool:
        return bool(set(self.base) & set(ancestors(res_type))) and (
            not self.expression or applies_to(self.expression, res_type))


@dataclass
class _Snapshot:
    by_url: dict[str, SearchParam] = field(default_factory=dict)
    # base type -> code -> param
    by_base: dict[str, dict[str, SearchParam]] = field(default_factory=dict)
    # resolved per concrete type (cache)
    per_type: dict[str, dict[str, SearchParam]] = field(default_factory=dict)
    # concrete type -> code -> the parameter it is derived from (cache, see ``derived``)
    derived: dict[str, dict[str, "Derived"]] = field(default_factory=dict)


@dataclass(frozen=True)
class Derived:
    """A parameter found from another one's index rows. ``base``: that parameter's code;
    ``column``/``values``: the rows of the base to take, those whose ``column`` is one of
    ``values`` (None: all of them). ``Condition.patient`` is
    ``Condition.subject.where(resolve() is Patient)``: ``subject``'s rows whose
    ``target_type`` is ``Patient``; ``Patient.phone`` is ``Patient.telecom.where(system =
    'phone')``: ``telecom``'s rows whose ``system`` is ``phone``; ``Patient.phonetic`` has
    ``Patient.name``'s expression: all of ``name``'s rows."""
    base: str
    column: str | None = None
    values: tuple[str, ...] = ()
    #: a union's further parts (``Observation.combo-code`` = ``code`` | ``component-code``)
    more: tuple["Derived", ...] = ()
    #: a whole whose parts have parameters of their own (``Patient.name``: ``family`` and
    #: ``given``; ``base`` is then the parameter itself): the fields of the element
    #: (``HumanName``, ``Address``) its own rows leave out, found in the rows of ``more``
    leaves_out: tuple[str, ...] = ()

    @property
    def terms(self) -> tuple["Derived", ...]:
        """Each part: the parameter's rows are the union of theirs."""
        return (Derived(self.base, self.column, self.values), *self.more)


class SearchRegistry:
    """Search parameters by resource type (official R4 definitions by default)."""

    def __init__(self, definitions: list[dict] | None = None):
        if definitions is None:
            definitions = load_official()
        snap = _Snapshot()
        for sp in definitions:
            self._put(snap, SearchParam.from_json(sp))
        self._snap = snap
        self._lock = threading.Lock()
        self.version = 0

    # -------------------------------------------------------------- reads

    def params_for(self, res_type: str) -> dict[str, SearchParam]:
        """Every parameter that applies to ``res_type``: its own and its ancestors'
        (``Resource``: _id, _lastUpdated, _tag, _profile, _security, _source, ...)."""
        snap = self._snap
        got = snap.per_type.get(res_type)
        if got is not None:
            return got
        out: dict[str, SearchParam] = {}
        for t in reversed(ancestors(res_type)):   # Resource first, the type itself last wins
            for code, sp in snap.by_base.get(t, {}).items():
                if t != res_type and sp.expression and not applies_to(sp.expression, res_type):
                    continue
                out[code] = sp
        snap.per_type[res_type] = out
        return out

    def get(self, res_type: str, code: str) -> SearchParam | None:
        return self.params_for(res_type).get(code)

    def derived(self, res_type: str, code: str) -> Derived | None:
        """The parameter whose index rows ``code`` on ``res_type`` is found from, if any.

        Four shapes, compared on the compiled programs: a reference parameter that is
        another's followed by ``.where(resolve() is T)`` (part by part for a union: the
        rows of the other whose ``target_type`` is a ``T``); a token parameter that is
        another's, of ContactPoints, Identifiers or Codings, followed by
        ``.where(system = 'x')`` (the rows whose ``system`` is ``x``); two parameters of
        one type with the same expression (the one whose code sorts first has the rows);
        and a union whose every part is one of those or another parameter's expression
        (``Observation.combo-code`` = ``code`` | ``component-code``: ``terms``). Such a
        parameter writes no value rows of its own, only its special ones (``:identifier``,
        ``:of-type``), whose rows the base's cannot stand in for. A fifth shape, the string
        wholes (``_wholes``: ``Patient.name`` with ``family`` and ``given``), does keep rows,
        for the fields no part holds (``leaves_out``), and is itself the first of its
        ``terms``. 75 pairs among the official R4 parameters, and 9 wholes: ``patient`` = ``subject`` on 36 types;
        ``Appointment``'s ``patient``, ``practitioner``, ``location`` = ``actor``;
        ``phone``/``email`` = ``telecom`` and ``phonetic`` = ``name`` on the person types;
        ... Official parameters only: a custom SearchParameter replacing either one ends
        the pairing (and its reindex writes the rows)."""
        snap = self._snap
        table = snap.derived.get(res_type)
        if table is None:
            table = snap.derived[res_type] = _derivations(self.params_for(res_type), res_type)
        return table.get(code)

    def by_url(self, url: str) -> SearchParam | None:
        return self._snap.by_url.get(url)

    def __iter__(self):
        return iter(list(self._snap.by_url.values()))

    # -------------------------------------------------------------- writes

    def add(self, search_parameter: dict[str, Any]) -> SearchParam:
        """Add (or replace, by url or by base+code) a SearchParameter resource."""
        sp = SearchParam.from_json(search_parameter, custom=True)
        if sp.expression:
            for b in sp.base:   # compile now: a bad expression fails the write, not a search
                if b not in ("Resource", "DomainResource"):
                    compile_expression(sp.expression, b)
        with self._lock:
            snap = self._copy()
            old = snap.by_url.get(sp.url)
            if old is not None:
                self._drop(snap, old)
            self._put(snap, sp)
            self._snap = snap
            self.version += 1
        return sp

    def remove(self, url: str) -> bool:
        with self._lock:
            snap = self._copy()
            old = snap.by_url.get(url)
            if old is None:
                return False
            self._drop(snap, old)
            self._snap = snap
            self.version += 1
        return True

    # -------------------------------------------------------------- internals

    def _copy(self) -> _Snapshot:
        snap = self._snap
        return _Snapshot(dict(snap.by_url), {k: dict(v) for k, v in snap.by_base.items()}, {})

    @staticmethod
    def _put(snap: _Snapshot, sp: SearchParam) -> None:
        snap.by_url[sp.url] = sp
        for b in sp.base:
            snap.by_base.setdefault(b, {})[sp.code] = sp

    @staticmethod
    def _drop(snap: _Snapshot, sp: SearchParam) -> None:
        snap.by_url.pop(sp.url, None)
        for b in sp.base:
            if snap.by_base.get(b, {}).get(sp.code) is sp:
                del snap.by_base[b][sp.code]
                # an official parameter the custom one shadowed comes back
                for other in snap.by_url.values():
                    if other.code == sp.code and b in other.base:
                        snap.by_base[b][sp.code] = other
                        break


#: parameter types whose pairings ``derived`` looks for (composite and special: never)
_DERIVABLE = frozenset({"reference", "token", "string", "date", "number", "quantity", "uri"})
#: token values whose ``system`` is the index rows' ``system`` column
_SYSTEM_TYPES = frozenset({"ContactPoint", "Identifier", "Coding"})


def _derivations(params: dict[str, SearchParam], res_type: str, *,
                 wholes: bool = True) -> dict[str, Derived]:
    """``SearchRegistry.derived`` for one type: compare the compiled programs' steps.
    ``wholes=False``: without the string wholes (``_wholes``; what migration 0008 knew)."""
    shapes: dict[str, tuple[str, tuple]] = {}
    for code, sp in params.items():
        if sp.type not in _DERIVABLE or sp.custom or not sp.expression:
            continue
        prog = sp.program(res_type)
        if prog is None or prog.fallback is not None or not prog.parts:
            continue
        shapes[code] = (sp.type, tuple(tuple(step.key for step in part) for part in prog.parts))
    owner: dict[tuple, str] = {}   # (type, shape) -> the code that keeps the rows
    for code in sorted(shapes):
        owner.setdefault(shapes[code], code)
    out: dict[str, Derived] = {}
    for code, (ptype, shape) in shapes.items():
        same = owner[(ptype, shape)]
        if same != code:
            out[code] = Derived(same)
            continue
        found = _filtered(ptype, shape, owner, code)
        if found is None and len(shape) > 1:   # a union: each part another's (filtered)
            terms = [_part(ptype, part, owner, code) for part in shape]
            if all(terms):
                found = Derived(terms[0].base, terms[0].column, terms[0].values,
                                tuple(terms[1:]))
        if found is not None:
            out[code] = found
    # a base has rows of its own: never one that is derived itself
    out = {code: d for code, d in out.items() if not any(t.base in out for t in d.terms)}
    if not wholes:
        return out
    found_wholes = _wholes(shapes, out)
    for code, d in list(out.items()):
        # the same expression as a whole (``Patient.phonetic`` is ``name``): its parts too
        whole = found_wholes.get(d.base)
        if whole is not None and d.column is None and not d.more:
            out[code] = Derived(d.base, more=whole.more)
    out.update(found_wholes)
    return out


#: element types whose string search takes every string part (``extract.string_values``)
_STRING_WHOLES = frozenset({"HumanName", "Address"})


def _wholes(shapes: dict[str, tuple[str, tuple]], derived: dict[str, Derived]
            ) -> dict[str, Derived]:
    """String parameters of a HumanName or Address (``Patient.name``) some of whose fields
    have parameters of their own (``family`` = ``Patient.name.family``, ``given``): the
    whole's rows of those fields are the same as the parts' rows, so it keeps rows only
    for the others (``text``, ``prefix``, ``suffix``) and finds the rest in the parts'
    rows. Parts and wholes that are derived themselves do not count."""
    parts_of: dict[tuple, list[tuple[str, str]]] = {}
    for code, (ptype, shape) in shapes.items():
        if ptype != "string" or len(shape) != 1 or code in derived or len(shape[0]) < 2:
            continue
        last = shape[0][-1]
        if last[0] == "field":
            parts_of.setdefault(shape[0][:-1], []).append((last[1], code))
    out: dict[str, Derived] = {}
    for code, (ptype, shape) in shapes.items():
        if ptype != "string" or len(shape) != 1 or code in derived:
            continue
        last = shape[0][-1]
        parts = parts_of.get(shape[0])
        if parts and last[0] == "field" and last[2] in _STRING_WHOLES:
            parts = sorted(parts, key=lambda fp: fp[1])
            out[code] = Derived(code, more=tuple(Derived(c) for _f, c in parts),
                                leaves_out=tuple(sorted({f for f, _c in parts})))
    return out


def _part(ptype: str, part: tuple, owner: dict, code: str) -> Derived | None:
    """One part of a union as another parameter's rows: filtered (``_filtered``: a base
    that keeps rows of its own), else all of them when that parameter's expression is the
    part."""
    found = _filtered(ptype, (part,), owner, code)
    if found is not None:
        return found
    same = owner.get((ptype, (part,)))
    return Derived(same) if same is not None and same != code else None


def _filtered(ptype: str, shape: tuple, owner: dict, code: str) -> Derived | None:
    """``shape`` as another parameter's followed, part by part, by a filter the index
    rows can apply: ``resolve() is T`` on references (``target_type``), ``system = 'x'`` on
    tokens of ContactPoints, Identifiers or Codings (``system``)."""
    lasts = [part[-1] for part in shape if len(part) > 1]
    if len(lasts) != len(shape):
        return None
    base = owner.get((ptype, tuple(part[:-1] for part in shape)))
    if base is None or base == code:
        return None
    if ptype == "reference" and all(last[0] == "resolve" for last in lasts):
        types = sorted(set().union(*(last[1] for last in lasts)))
        return Derived(base, "target_type", tuple(types))
    if ptype == "token" and all(
            last[0] == "where" and last[1] == ("system",) and part[-2][0] == "field"
            and part[-2][2] in _SYSTEM_TYPES for last, part in zip(lasts, shape)):
        return Derived(base, "system", tuple(sorted({last[2] for last in lasts})))
    return None


_OFFICIAL: list[dict] | None = None


def load_official() -> list[dict]:
    global _OFFICIAL
    if _OFFICIAL is None:
        with open(os.path.join(DATA_DIR, "search_parameters.json"), "rb") as f:
            _OFFICIAL = orjson.loads(f.read())["parameters"]
    return _OFFICIAL
