"""Index extraction: a resource's JSON -> rows for the ``sp_*`` tables.

This runs on every write, so it is built for speed. One plan per resource type (rebuilt
when the registry's version changes, e.g. a custom SearchParameter added at run time): the
parameters with their compiled extractors, all walked together by one
:class:`~.fhirpath.Forest` (each step prefix that parameters share, like ``AuditEvent.agent``,
walked once per resource, parameters whose elements the resource lacks not at all), and for
each parameter its row builder. Values are converted by their FHIR type (known from the model
at compile time) or, when unknown, by their JSON shape.

Rows are tuples in the column order of :data:`COLUMNS` (:meth:`Indexer.tuples`, what the
store inserts); :meth:`Indexer.rows` gives the same rows as dicts. They carry every column of
their table except ``rid`` (the store adds it), beginning with ``pid``, the key of the
resource type and parameter (``store.tables.param_key``, computed once per parameter in the
type's plan). Within a kind, rows come parameter by parameter (in the registry's order),
each parameter's in the order of its values. Special index rows (all in the table of their
kind, under the key of a suffixed parameter code):

* ``<code>:identifier`` (sp_token): ``Reference.identifier`` of reference parameters
* ``<code>:of-type`` (sp_token): an Identifier's type coding and value, ``code`` is
  ``<type code>|<value>``, for ``identifier:of-type=system|code|value``
* ``_text`` (sp_string): the narrative's text content, for ``_text``

A derived parameter (``SearchRegistry.derived``: ``Condition.patient`` is ``subject``'s
rows of Patients) writes no value rows, only its special ones; a string whole
(``Patient.name``) writes rows only for the fields its parts (``family``, ``given``) do not
hold.
"""
from __future__ import annotations

import functools
import html
import itertools
import re
from typing import Any, Iterable

from ..model.resources import R4_TYPES, ID_RE
from ..store.tables import INDEX_COLUMNS, param_key, param_of
from .fhirpath import Forest, Program, compile_expression
from .registry import RESOURCE_COLUMN_PARAMS, SearchRegistry
from .values import (DATE_MAX, DATE_MIN, NUM_MAX, NUM_MIN, STRING_LEN, TOKEN_LEN, URI_LEN,
                     DateFormatError, cut, date_range, decimal_text, normalize_string)

KINDS = ("token", "string", "date", "number", "quantity", "reference", "uri", "composite")

#: the columns of each kind's rows, in tuple order: its ``sp_<kind>`` table's, without ``rid``
#: (the store's definition, so the two cannot drift apart)
COLUMNS: dict[str, tuple[str, ...]] = INDEX_COLUMNS

_STRING_SKIP = frozenset({"use", "type", "system", "period", "extension", "id", "rank",
                          "modifierExtension", "url", "reference", "contentType", "data",
                          "language", "hash", "size", "creation", "resourceType", "div",
                          "status", "coding", "code", "assigner"})
_UCUM = "http://unitsofmeasure.org"
_CURRENCY = "urn:iso:std:iso:4217"
_RE_TAG = re.compile(r"<[^>]+>")

Rows = dict[str, list[tuple]]


class _Plan:
    """What indexing one resource type takes, for one registry version."""

    __slots__ = ("version", "forest", "params", "components", "text")

    def __init__(self, version: int, forest: Forest, params: list[tuple], components: Forest,
                 text: bool):
        self.version = version
        #: the parameters' programs, run over the resource
        self.forest = forest
        #: per program of ``forest``: (row builder, param code, None, the rows' ``pid``), or
        #: for a composite (its builder, code, components: (search type, program in
        #: ``components``, last?), pid)
        self.params = params
        #: the composites' component programs, run over each node a composite yields
        self.components = components
        #: whether ``_text`` applies (the narrative is indexed)
        self.text = text


class Indexer:
    """Turns resources into index rows for one registry."""

    def __init__(self, registry: SearchRegistry, base_urls: Iterable[str] = (), *,
                 derive: bool = True):
        self.registry = registry
        self.base_urls = tuple(u.rstrip("/") + "/" for u in base_urls if u)
        #: leave out the value rows of derived parameters (``SearchRegistry.derived``): their
        #: base's rows stand in for them. False writes them as for any other parameter (the
        #: rows an earlier version wrote: to compare with)
        self.derive = derive
        self._plans: dict[str, _Plan] = {}

    # -------------------------------------------------------------- plan

    def _plan(self, res_type: str) -> _Plan:
        version = self.registry.version   # read first: a change meanwhile rebuilds next time
        plan = self._plans.get(res_type)
        if plan is not None and plan.version == version:
            return plan
        programs: list[Program] = []
        params: list[tuple] = []
        components: dict[int, tuple[int, Program]] = {}   # id -> (index, program)
        all_params = self.registry.params_for(res_type)
        for code, sp in all_params.items():
            if code in RESOURCE_COLUMN_PARAMS or sp.type == "special":
                continue
            prog = sp.program(res_type)
            if prog is None or prog.empty:
                continue
            comps = None
            if sp.type == "composite":
                parts = []
                for n, c in enumerate(sp.components):
                    csp = self.registry.by_url(c.definition)
                    cprog = compile_expression(c.expression, res_type, "*")
                    j = components.setdefault(id(cprog), (len(components), cprog))[0]
                    parts.append((csp.type if csp else "token", j, n == len(sp.components) - 1))
                comps = tuple(parts)
            build = getattr(self, "_" + sp.type)
            derived = self.registry.derived(res_type, code) if self.derive else None
            if derived is not None and derived.leaves_out:
                # a whole (``Patient.name``): the fields its parts' rows hold are left out
                build = functools.partial(self._string_rest,
                                          _STRING_SKIP | frozenset(derived.leaves_out))
            elif derived is not None:
                # its values are its base's rows: only its special rows are its own
                build = {"reference": self._reference_identifiers,
                         "token": self._token_specials}.get(sp.type, self._no_rows)
            programs.append(prog)
            params.append((build, code, comps, param_key(res_type, code)))
        plan = _Plan(version, Forest(programs), params,
                     Forest(p for _j, p in components.values()), "_text" in all_params)
        self._plans[res_type] = plan
        return plan

    # -------------------------------------------------------------- rows

    def tuples(self, res_type: str, resource: dict) -> Rows:
        """The index rows of one resource: ``{kind: [row, ...]}``, each row a tuple in the
        column order of ``COLUMNS[kind]`` (every column of ``sp_<kind>`` but ``rid``).

        Kinds without rows may be missing or have an empty list. The lists and tuples are
        new on every call (the caller may keep or extend them); ``resource`` is not changed.
        """
        plan = self._plan(res_type)
        out: Rows = {"token": [], "string": [], "date": [], "number": [], "quantity": [],
                     "reference": [], "uri": [], "composite": []}
        memo: tuple[dict, dict] | None = None
        params = plan.params
        found = plan.forest.run(resource)
        for i in sorted(found):   # in parameter order
            build, code, comps, key = params[i]
            if comps is None:
                build(out, key, res_type, code, found[i])
            else:
                if memo is None:
                    memo = ({}, {})
                build(out["composite"], key, comps, found[i], resource, plan.components, memo)
        if plan.text:
            text = resource.get("text")
            div = text.get("div") if isinstance(text, dict) else None
            if isinstance(div, str):
                plain = " ".join(html.unescape(_RE_TAG.sub(" ", div)).split())
                if plain:
                    out["string"].append((param_key(res_type, "_text"),
                                          cut(normalize_string(plain), STRING_LEN), plain))
        return out

    def rows(self, res_type: str, resource: dict) -> dict[str, list[dict]]:
        """The rows of :meth:`tuples` as dicts (column name -> value), every kind present;
        for reading, ``pid`` is given as the ``res_type`` and ``param`` it stands for."""
        got = self.tuples(res_type, resource)
        out = {}
        for kind in KINDS:
            rows = []
            for row in got.get(kind, ()):
                d = dict(zip(COLUMNS[kind], row))
                rtype, param = param_of(d.pop("pid"))
                rows.append({"res_type": rtype, "param": param, **d})
            out[kind] = rows
        return out

    # Row builders, one per kind: ``values`` -> rows appended to ``out[kind]``. They run for
    # every parameter of every resource: one plain string value (a code, a name, a date), the
    # most common case, takes a short way, and columns are cut to their width only when too
    # long (``cut`` inline).

    # token -------------------------------------------------------------

    def _token(self, out: Rows, pid: int, res_type: str, code: str, values: list) -> None:
        rows = out["token"]
        if len(values) == 1 and values[0][0].__class__ is str:   # a code
            v = values[0][0]
            rows.append((pid, None, v if len(v) <= TOKEN_LEN else v[:TOKEN_LEN], None))
            return
        seen = set()
        # among many values, an object met again gives its rows once (an AuditEvent's 100
        # entity.type codings are one dict); a few values are not worth the bookkeeping
        met: set | None = set() if len(values) > 4 else None
        for v, t in values:
            if met is not None and v.__class__ is dict:
                mark = (id(v), t)
                if mark in met:
                    continue
                met.add(mark)
            for key in token_values(v, t):
                if key in seen:
                    continue
                seen.add(key)
                system, value, text = key
                if (system is not None and len(system) > TOKEN_LEN
                        or value is not None and len(value) > TOKEN_LEN
                        or text is not None and len(text) > TOKEN_LEN):
                    key = (cut(system, TOKEN_LEN), cut(value, TOKEN_LEN), cut(text, TOKEN_LEN))
                rows.append((pid,) + key)
            if v.__class__ is dict and "type" in v and "value" in v:
                _of_type_rows(rows, res_type, code, v)

    def _token_specials(self, out: Rows, pid: int, res_type: str, code: str,
                        values: list) -> None:
        """A derived token parameter (``SearchRegistry.derived``): its ``:of-type`` rows
        only (they carry its own key, which its base's rows cannot stand in for)."""
        rows = out["token"]
        for v, _t in values:
            if v.__class__ is dict and "type" in v and "value" in v:
                _of_type_rows(rows, res_type, code, v)

    def _no_rows(self, out: Rows, pid: int, res_type: str, code: str, values: list) -> None:
        """A derived parameter of a type without special rows: nothing of its own."""

    # string ------------------------------------------------------------

    def _string(self, out: Rows, key: int, res_type: str, code: str, values: list) -> None:
        rows = out["string"]
        if len(values) == 1 and values[0][0].__class__ is str:   # a string
            s = values[0][0]
            norm = normalize_string(s)
            if norm:
                rows.append((key, norm if len(norm) <= STRING_LEN else norm[:STRING_LEN], s))
            return
        self._string_rest(_STRING_SKIP, out, key, res_type, code, values)

    def _string_rest(self, skip: frozenset, out: Rows, key: int, res_type: str, code: str,
                     values: list) -> None:
        """The rows of several strings, or of HumanNames or Addresses but for the fields in
        ``skip``: for a whole (``SearchRegistry.derived``, ``leaves_out``) also ``family``
        and ``given`` of ``Patient.name``, whose own parameters' rows hold them."""
        rows = out["string"]
        seen = set()
        for v, _t in values:
            for s in string_values(v, skip):
                if s in seen:
                    continue
                seen.add(s)
                norm = normalize_string(s)
                if norm:
                    rows.append((key, norm if len(norm) <= STRING_LEN else norm[:STRING_LEN], s))

    # date --------------------------------------------------------------

    def _date(self, out: Rows, key: int, res_type: str, code: str, values: list) -> None:
        rows = out["date"]
        if len(values) == 1 and values[0][0].__class__ is str:   # a date, dateTime or instant
            try:
                rows.append((key,) + _date_range(values[0][0]))
            except DateFormatError:
                pass
            return
        for v, t in values:
            for low, high in date_values(v, t):
                rows.append((key, low, high))

    # number / quantity -------------------------------------------------

    def _number(self, out: Rows, key: int, res_type: str, code: str, values: list) -> None:
        rows = out["number"]
        for v, _t in values:
            if isinstance(v, dict):   # e.g. a Quantity searched as a number
                v = v.get("value")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                f = float(v)
                rows.append((key, f, f, f))

    def _quantity(self, out: Rows, key: int, res_type: str, code: str, values: list) -> None:
        rows = out["quantity"]
        for v, t in values:
            for q in quantity_values(v, t):
                rows.append((key,) + q)

    # reference / uri ---------------------------------------------------

    def _reference_identifiers(self, out: Rows, key: int, res_type: str, code: str,
                               values: list) -> None:
        """A derived reference parameter (``SearchRegistry.derived``): its ``:identifier``
        rows only (they carry its own key; its base's identifier rows, of every type of
        target, cannot stand in for them)."""
        for v, _t in values:
            if isinstance(v, dict):
                _identifier_row(out, res_type, code, v)

    def _reference(self, out: Rows, key: int, res_type: str, code: str, values: list) -> None:
        rows = out["reference"]
        seen = set()
        for v, _t in values:
            if isinstance(v, dict):
                if "identifier" in v:
                    _identifier_row(out, res_type, code, v)
                ref = v.get("reference")
                hint = v.get("type")
            elif isinstance(v, str):   # canonical / uri
                ref, hint = v, None
            else:
                continue
            if not isinstance(ref, str) or not ref or ref[0] == "#":
                continue
            if hint is None or isinstance(hint, str):
                targets = _reference_targets(ref, self.base_urls, hint)
            else:
                targets = parse_reference(ref, self.base_urls, hint)
            for target in targets:
                if target in seen:
                    continue
                seen.add(target)
                rows.append((key,) + target)

    def parse_reference(self, ref: str, type_hint: str | None = None) -> list[tuple]:
        """(target_type, target_id, url) tuples for one reference string."""
        return parse_reference(ref, self.base_urls, type_hint)

    def _uri(self, out: Rows, key: int, res_type: str, code: str, values: list) -> None:
        rows = out["uri"]
        for v, _t in values:
            if isinstance(v, str) and v:
                rows.append((key, v if len(v) <= URI_LEN else v[:URI_LEN]))
                if "|" in v:   # versioned canonical: also findable by its url alone
                    rows.append((key, cut(v.split("|", 1)[0], URI_LEN)))

    # composite ---------------------------------------------------------

    def _composite(self, rows: list, key: int, comps: tuple, values: list, resource: dict,
                   components: Forest, memo: tuple[dict, dict]) -> None:
        """``memo`` lives for one resource: the composites of a type share nodes and
        components (every Observation code-value-* reads the Observation's ``code``), so the
        component programs run once per node, and each component's forms are made once."""
        found_at, forms_of = memo
        seen = set()
        n = len(comps)
        for node, _t in values:
            nid = id(node)   # (the nodes live as long as the memo: they are in the resource)
            found = found_at.get(nid)
            if found is None:
                found = found_at[nid] = components.run(node, resource)
            # last component first: it is the one most often absent (an Observation has one
            # value[x], so most of its code-value-* composites stop here, before any forms)
            per_comp: list = [None] * n
            for i in range(n - 1, -1, -1):
                ctype, j, last = comps[i]
                at = (nid, j, ctype, last)
                forms = forms_of.get(at)
                if forms is None:
                    forms = forms_of[at] = composite_forms(ctype, found.get(j, []), last,
                                                            self.base_urls)
                if not forms:
                    break
                per_comp[i] = forms
            else:
                for combo in itertools.islice(itertools.product(*per_comp), 256):
                    keyparts, low, high = [], None, None
                    for part in combo:
                        if isinstance(part, tuple):   # ordered last component: (unit form, low, high)
                            unit, low, high = part
                            if unit is not None:
                                keyparts.append(unit)
                        else:
                            keyparts.append(part)
                    row = (key, cut("$".join(keyparts), URI_LEN), low, high)
                    if row in seen:
                        continue
                    seen.add(row)
                    rows.append(row)


# ---------------------------------------------------------------- value conversion

def token_values(v: Any, t: str | None) -> list[tuple[str | None, str | None, str | None]]:
    """(system, code, normalized text) triples of one token-typed value."""
    if not isinstance(v, dict):
        if isinstance(v, bool):
            return [(None, "true" if v else "false", None)]
        if isinstance(v, str):
            return [(None, v, None)]
        if isinstance(v, (int, float)):
            return [(None, decimal_text(v), None)]
        return []
    if t == "CodeableConcept" or (t is None and ("coding" in v or ("text" in v and len(v) <= 2
                                                                  and "value" not in v))):
        out = []
        for c in v.get("coding") or ():
            if isinstance(c, dict) and (c.get("code") or c.get("system")):
                disp = c.get("display")
                out.append((c.get("system"), c.get("code"),
                            normalize_string(disp) if isinstance(disp, str) else None))
        if isinstance(v.get("text"), str):
            # a text that one of the codings' displays already gives (normalized) adds no
            # row: ``:text`` finds the value through that coding's row all the same
            text = normalize_string(v["text"])
            if not any(row[2] == text for row in out):
                out.append((None, None, text))
        return out
    if t == "Coding" or (t is None and "code" in v):
        disp = v.get("display")
        if v.get("code") is None and v.get("system") is None:
            return []
        return [(v.get("system"), v.get("code"),
                 normalize_string(disp) if isinstance(disp, str) else None)]
    if "value" in v:   # Identifier, ContactPoint
        val = v.get("value")
        if val is None:
            return []
        text = None
        typ = v.get("type")
        if isinstance(typ, dict) and isinstance(typ.get("text"), str):
            text = normalize_string(typ["text"])
        return [(v.get("system"), str(val), text)]
    if t == "Reference" or "reference" in v:   # a Reference indexed as a token
        ident = v.get("identifier")
        if isinstance(ident, dict) and ident.get("value") is not None:
            return [(ident.get("system"), str(ident["value"]), None)]
    return []


def string_values(v: Any, skip: frozenset = _STRING_SKIP) -> list[str]:
    """The strings of one string-typed value: itself, or every part of a HumanName/Address
    (but the keys in ``skip``, at its top level)."""
    if isinstance(v, str):
        return [v]
    if isinstance(v, dict):
        out: list[str] = []
        for k, x in v.items():
            if k in skip:
                continue
            if isinstance(x, str):
                out.append(x)
            elif isinstance(x, list):
                for y in x:
                    if isinstance(y, str):
                        out.append(y)
                    elif isinstance(y, dict):
                        out.extend(string_values(y))
            elif isinstance(x, dict):
                out.extend(string_values(x))
        return out
    return []


#: date_range of the values seen lately: it costs many times a lookup, and dates repeat
#: across resources (birth dates, the days care happens on)
_date_range = functools.lru_cache(maxsize=16384)(date_range)


def date_values(v: Any, t: str | None = None) -> list[tuple[int, int]]:
    try:
        if isinstance(v, str):
            return [_date_range(v)]
        if not isinstance(v, dict):
            return []
        if "start" in v or "end" in v:   # Period
            low = _date_range(v["start"])[0] if isinstance(v.get("start"), str) else DATE_MIN
            high = _date_range(v["end"])[1] if isinstance(v.get("end"), str) else DATE_MAX
            return [(low, high)]
        if "event" in v or "repeat" in v:   # Timing
            out = [_date_range(e) for e in v.get("event") or () if isinstance(e, str)]
            rep = v.get("repeat")
            if isinstance(rep, dict) and isinstance(rep.get("boundsPeriod"), dict):
                out.extend(date_values(rep["boundsPeriod"]))
            return out
    except DateFormatError:
        return []
    return []


def quantity_values(v: Any, t: str | None = None) -> list[tuple]:
    """``(value, low, high, system, code, unit)`` of one quantity-typed value (a Quantity,
    Range, Money or plain number)."""
    if not isinstance(v, dict):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            f = float(v)
            return [(f, f, f, None, None, None)]
        return []
    if "low" in v or "high" in v:   # Range
        lo = (v.get("low") or {}).get("value")
        hi = (v.get("high") or {}).get("value")
        unit = v.get("low") or v.get("high") or {}
        lo_f = float(lo) if isinstance(lo, (int, float)) else NUM_MIN
        hi_f = float(hi) if isinstance(hi, (int, float)) else NUM_MAX
        if lo is None and hi is None:
            return []
        return [(lo_f if lo is not None else hi_f, lo_f, hi_f, cut(unit.get("system"), TOKEN_LEN),
                 cut(unit.get("code"), TOKEN_LEN), cut(unit.get("unit"), TOKEN_LEN))]
    val = v.get("value")
    if not isinstance(val, (int, float)) or isinstance(val, bool):
        return []
    f = float(val)
    if "currency" in v:   # Money
        return [(f, f, f, _CURRENCY, cut(v.get("currency"), TOKEN_LEN), None)]
    return [(f, f, f, cut(v.get("system"), TOKEN_LEN), cut(v.get("code"), TOKEN_LEN),
             cut(v.get("unit"), TOKEN_LEN))]


def _of_type_rows(rows: list, res_type: str, code: str, v: dict) -> None:
    """The ``<code>:of-type`` rows of an Identifier with a type (``type|value`` per coding)."""
    typ = v["type"]
    if typ.__class__ is not dict:
        return
    for c in typ.get("coding") or ():
        if isinstance(c, dict) and c.get("code"):
            rows.append((param_key(res_type, code + ":of-type"), cut(c.get("system"), TOKEN_LEN),
                         cut(f"{c['code']}|{v['value']}", TOKEN_LEN), None))


def _identifier_row(out: Rows, res_type: str, code: str, ref: dict) -> None:
    """The ``<code>:identifier`` token row of a Reference with an identifier."""
    ident = ref.get("identifier")
    if isinstance(ident, dict) and ident.get("value") is not None:
        out["token"].append((param_key(res_type, code + ":identifier"),
                             cut(ident.get("system"), TOKEN_LEN),
                             cut(str(ident["value"]), TOKEN_LEN), None))


def parse_reference(ref: str, base_urls: tuple[str, ...] = (),
                    type_hint: str | None = None) -> list[tuple]:
    """(target_type, target_id, url) for a reference string.

    ``Type/id`` and ``<this server's base>/Type/id`` are local (type and id); any other
    absolute URL is kept as ``url`` (with its type when the URL ends in ``Type/id``).
    ``.../_history/n`` is dropped: searches match any version.
    """
    ref = ref.strip()
    for base in base_urls:
        if ref.startswith(base):
            ref = ref[len(base):]
            break
    parts = ref.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if "://" not in ref and not ref.startswith("urn:"):
        if len(parts) == 2 and parts[0] in R4_TYPES and ID_RE.match(parts[1]):
            return [(parts[0], parts[1], None)]
        return [(type_hint, None, cut(ref, URI_LEN))]
    rtype = type_hint
    if len(parts) >= 2 and parts[-2] in R4_TYPES:
        rtype = parts[-2]
    return [(rtype, None, cut("/".join(parts) if "|" not in ref else ref, URI_LEN))] + (
        [(rtype, None, cut(ref.split("|", 1)[0], URI_LEN))] if "|" in ref else [])


#: parse_reference of the references seen lately: many resources point to the same patient,
#: practitioner, organization (the lists are shared: read them only)
_reference_targets = functools.lru_cache(maxsize=16384)(parse_reference)


def composite_forms(ctype: str, vals: list, last: bool, base_urls=()) -> list:
    """The exact-match forms of one composite component's values (see sp_composite)."""
    forms: list = []
    for v, t in vals:
        if ctype == "token":
            for system, code, _text in token_values(v, t):
                if code is None:
                    continue
                forms.append(code)
                forms.append(f"{system}|{code}" if system else f"|{code}")
        elif ctype == "string":
            forms.extend(normalize_string(s) for s in string_values(v))
        elif ctype == "reference":
            ref = v.get("reference") if isinstance(v, dict) else v
            if isinstance(ref, str):
                for tt, tid, url in parse_reference(ref, base_urls):
                    forms.append(f"{tt}/{tid}" if tid else url)
        elif ctype == "uri":
            if isinstance(v, str):
                forms.append(v)
        elif ctype in ("quantity", "number", "date"):
            if ctype == "date":
                ranges = [(None, float(lo), float(hi)) for lo, hi in date_values(v, t)]
            elif ctype == "number":
                ranges = [(None, float(v), float(v))] if isinstance(v, (int, float)) else []
            else:
                ranges = []
                for _value, low, high, system, code, unit in quantity_values(v, t):
                    units = {""}
                    if code:
                        units.add(f"{system or ''}|{code}")
                        units.add(f"|{code}")
                    if unit:
                        units.add(f"|{unit}")
                    ranges.extend((u, low, high) for u in sorted(units))
            if last:
                forms.extend(ranges)
            else:
                forms.extend(decimal_text(r[1]) for r in ranges)
    return list(dict.fromkeys(forms))
