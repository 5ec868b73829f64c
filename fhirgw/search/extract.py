"""Index extraction: a resource's JSON -> rows for the ``sp_*`` tables.

One plan per resource type (rebuilt when the registry changes): the list of parameters with
their compiled extractor. Values are converted by their FHIR type (known from the model at
compile time) or, when unknown, by their JSON shape.

Rows carry every column of their table except ``id`` and ``rid`` (the store adds ``rid``).
Special index rows (all in the table of their kind, with a suffixed ``param``):

* ``<code>:identifier`` (sp_token): ``Reference.identifier`` of reference parameters
* ``<code>:of-type`` (sp_token): an Identifier's type coding and value, ``code`` is
  ``<type code>|<value>``, for ``identifier:of-type=system|code|value``
* ``_text`` (sp_string): the narrative's text content, for ``_text``
"""
from __future__ import annotations

import html
import itertools
import re
from typing import Any, Iterable

from ..model.resources import R4_TYPES, ID_RE
from .fhirpath import compile_expression
from .registry import RESOURCE_COLUMN_PARAMS, SearchParam, SearchRegistry
from .values import (DATE_MAX, DATE_MIN, NUM_MAX, NUM_MIN, STRING_LEN, TOKEN_LEN, URI_LEN,
                     DateFormatError, cut, date_range, decimal_text, normalize_string)

KINDS = ("token", "string", "date", "number", "quantity", "reference", "uri", "composite")

_STRING_SKIP = frozenset({"use", "type", "system", "period", "extension", "id", "rank",
                          "modifierExtension", "url", "reference", "contentType", "data",
                          "language", "hash", "size", "creation", "resourceType", "div",
                          "status", "coding", "code", "assigner"})
_UCUM = "http://unitsofmeasure.org"
_CURRENCY = "urn:iso:std:iso:4217"


class Indexer:
    """Turns resources into index rows for one registry."""

    def __init__(self, registry: SearchRegistry, base_urls: Iterable[str] = ()):
        self.registry = registry
        self.base_urls = tuple(u.rstrip("/") + "/" for u in base_urls if u)
        self._plans: dict[str, tuple[int, list]] = {}

    # -------------------------------------------------------------- plan

    def _plan(self, res_type: str) -> list[tuple[SearchParam, Any]]:
        cached = self._plans.get(res_type)
        if cached is not None and cached[0] == self.registry.version:
            return cached[1]
        plan = []
        for code, sp in self.registry.params_for(res_type).items():
            if code in RESOURCE_COLUMN_PARAMS or sp.type == "special":
                continue
            if sp.type == "composite":
                comps = []
                for c in sp.components:
                    csp = self.registry.by_url(c.definition)
                    comps.append((csp.type if csp else "token",
                                  compile_expression(c.expression, res_type, "*")))
                prog = sp.program(res_type)
                if prog is not None and not prog.empty:
                    plan.append((sp, (prog, comps)))
                continue
            prog = sp.program(res_type)
            if prog is not None and not prog.empty:
                plan.append((sp, prog))
        self._plans[res_type] = (self.registry.version, plan)
        return plan

    # -------------------------------------------------------------- rows

    def rows(self, res_type: str, resource: dict) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {k: [] for k in KINDS}
        present = resource.keys()
        memo: dict = {}
        for sp, prog in self._plan(res_type):
            kind = sp.type
            needs = (prog[0] if kind == "composite" else prog).root_keys
            if needs is not None and present.isdisjoint(needs):
                continue  # the resource has none of the elements this parameter reads
            if kind == "composite":
                self._composite(out["composite"], res_type, sp, prog, resource, memo)
                continue
            values = prog(resource)
            if not values:
                continue
            add = getattr(self, "_" + kind)
            add(out, res_type, sp.code, values)
        text = (resource.get("text") or {}).get("div") if isinstance(resource.get("text"), dict) else None
        if isinstance(text, str) and "_text" in self.registry.params_for(res_type):
            plain = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", text)).split())
            if plain:
                out["string"].append({"res_type": res_type, "param": "_text",
                                      "norm": cut(normalize_string(plain), STRING_LEN),
                                      "exact": plain})
        return out

    # token -------------------------------------------------------------

    def _token(self, out, res_type, code, values):
        rows = out["token"]
        seen = set()
        for v, t in values:
            for system, value, text in token_values(v, t):
                key = (system, value, text)
                if key in seen:
                    continue
                seen.add(key)
                rows.append({"res_type": res_type, "param": code, "system": cut(system, TOKEN_LEN),
                             "code": cut(value, TOKEN_LEN), "text": cut(text, TOKEN_LEN)})
            if isinstance(v, dict) and isinstance(v.get("type"), dict) and "value" in v:
                # Identifier.type for :of-type
                for c in v["type"].get("coding") or ():
                    if isinstance(c, dict) and c.get("code"):
                        rows.append({"res_type": res_type, "param": code + ":of-type",
                                     "system": cut(c.get("system"), TOKEN_LEN),
                                     "code": cut(f"{c['code']}|{v['value']}", TOKEN_LEN),
                                     "text": None})

    # string ------------------------------------------------------------

    def _string(self, out, res_type, code, values):
        rows = out["string"]
        seen = set()
        for v, _t in values:
            for s in string_values(v):
                if s in seen:
                    continue
                seen.add(s)
                norm = normalize_string(s)
                if norm:
                    rows.append({"res_type": res_type, "param": code,
                                 "norm": cut(norm, STRING_LEN), "exact": s})

    # date --------------------------------------------------------------

    def _date(self, out, res_type, code, values):
        rows = out["date"]
        for v, t in values:
            for low, high in date_values(v, t):
                rows.append({"res_type": res_type, "param": code, "low": low, "high": high})

    # number / quantity -------------------------------------------------

    def _number(self, out, res_type, code, values):
        rows = out["number"]
        for v, _t in values:
            if isinstance(v, dict):   # e.g. a Quantity searched as a number
                v = v.get("value")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                f = float(v)
                rows.append({"res_type": res_type, "param": code, "value": f, "low": f, "high": f})

    def _quantity(self, out, res_type, code, values):
        rows = out["quantity"]
        for v, t in values:
            for q in quantity_values(v, t):
                q["res_type"], q["param"] = res_type, code
                rows.append(q)

    # reference / uri ---------------------------------------------------

    def _reference(self, out, res_type, code, values):
        rows = out["reference"]
        seen = set()
        for v, _t in values:
            if isinstance(v, dict):
                ident = v.get("identifier")
                if isinstance(ident, dict) and ident.get("value") is not None:
                    out["token"].append({"res_type": res_type, "param": code + ":identifier",
                                         "system": cut(ident.get("system"), TOKEN_LEN),
                                         "code": cut(str(ident["value"]), TOKEN_LEN), "text": None})
                ref = v.get("reference")
                hint = v.get("type")
            elif isinstance(v, str):   # canonical / uri
                ref, hint = v, None
            else:
                continue
            if not isinstance(ref, str) or not ref or ref.startswith("#"):
                continue
            for target in self.parse_reference(ref, hint):
                if target in seen:
                    continue
                seen.add(target)
                rows.append({"res_type": res_type, "param": code, "target_type": target[0],
                             "target_id": target[1], "url": target[2]})

    def parse_reference(self, ref: str, type_hint: str | None = None) -> list[tuple]:
        """(target_type, target_id, url) tuples for one reference string."""
        return parse_reference(ref, self.base_urls, type_hint)

    def _uri(self, out, res_type, code, values):
        rows = out["uri"]
        for v, _t in values:
            if isinstance(v, str) and v:
                rows.append({"res_type": res_type, "param": code, "value": cut(v, URI_LEN)})
                if "|" in v:   # versioned canonical: also findable by its url alone
                    rows.append({"res_type": res_type, "param": code,
                                 "value": cut(v.split("|", 1)[0], URI_LEN)})

    # composite ---------------------------------------------------------

    def _composite(self, rows, res_type, sp, prog, resource, memo):
        """``memo`` lives for one resource: the composites of a type share components
        (every Observation code-value-* reads ``code``), computed once."""
        base_prog, comps = prog
        seen = set()
        n = len(comps)
        for node, _t in base_prog(resource):
            # last component first: it is the one most often absent (an Observation has one
            # value[x], so most of its code-value-* composites stop here, cheaply)
            per_comp: list = [None] * n
            for i in range(n - 1, -1, -1):
                ctype, cprog = comps[i]
                key = (id(node), id(cprog), ctype, i == n - 1)
                forms = memo.get(key)
                if forms is None:
                    forms = memo[key] = composite_forms(ctype, cprog(node, resource), i == n - 1,
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
                    key = cut("$".join(keyparts), URI_LEN)
                    if (key, low, high) in seen:
                        continue
                    seen.add((key, low, high))
                    rows.append({"res_type": res_type, "param": sp.code, "key": key,
                                 "low": low, "high": high})


# ---------------------------------------------------------------- value conversion

def token_values(v: Any, t: str | None) -> list[tuple[str | None, str | None, str | None]]:
    """(system, code, normalized text) triples of one token-typed value."""
    if isinstance(v, bool):
        return [(None, "true" if v else "false", None)]
    if isinstance(v, str):
        return [(None, v, None)]
    if isinstance(v, (int, float)):
        return [(None, decimal_text(v), None)]
    if not isinstance(v, dict):
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
            out.append((None, None, normalize_string(v["text"])))
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


def string_values(v: Any) -> list[str]:
    """The strings of one string-typed value: itself, or every part of a HumanName/Address."""
    if isinstance(v, str):
        return [v]
    if isinstance(v, dict):
        out: list[str] = []
        for k, x in v.items():
            if k in _STRING_SKIP:
                continue
            if isinstance(x, str):
                out.append(x)
            elif isinstance(x, list):
                for y in x:
                    out.extend(string_values(y) if isinstance(y, dict) else
                               [y] if isinstance(y, str) else [])
            elif isinstance(x, dict):
                out.extend(string_values(x))
        return out
    return []


def date_values(v: Any, t: str | None = None) -> list[tuple[int, int]]:
    try:
        if isinstance(v, str):
            return [date_range(v)]
        if not isinstance(v, dict):
            return []
        if "start" in v or "end" in v:   # Period
            low = date_range(v["start"])[0] if isinstance(v.get("start"), str) else DATE_MIN
            high = date_range(v["end"])[1] if isinstance(v.get("end"), str) else DATE_MAX
            return [(low, high)]
        if "event" in v or "repeat" in v:   # Timing
            out = [date_range(e) for e in v.get("event") or () if isinstance(e, str)]
            rep = v.get("repeat")
            if isinstance(rep, dict) and isinstance(rep.get("boundsPeriod"), dict):
                out.extend(date_values(rep["boundsPeriod"]))
            return out
    except DateFormatError:
        return []
    return []


def quantity_values(v: Any, t: str | None = None) -> list[dict]:
    if not isinstance(v, dict):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return [{"value": float(v), "low": float(v), "high": float(v),
                     "system": None, "code": None, "unit": None}]
        return []
    if "low" in v or "high" in v:   # Range
        lo = (v.get("low") or {}).get("value")
        hi = (v.get("high") or {}).get("value")
        unit = v.get("low") or v.get("high") or {}
        lo_f = float(lo) if isinstance(lo, (int, float)) else NUM_MIN
        hi_f = float(hi) if isinstance(hi, (int, float)) else NUM_MAX
        if lo is None and hi is None:
            return []
        return [{"value": lo_f if lo is not None else hi_f, "low": lo_f, "high": hi_f,
                 "system": cut(unit.get("system"), TOKEN_LEN), "code": cut(unit.get("code"), TOKEN_LEN),
                 "unit": cut(unit.get("unit"), TOKEN_LEN)}]
    val = v.get("value")
    if not isinstance(val, (int, float)) or isinstance(val, bool):
        return []
    f = float(val)
    if "currency" in v:   # Money
        return [{"value": f, "low": f, "high": f, "system": _CURRENCY,
                 "code": cut(v.get("currency"), TOKEN_LEN), "unit": None}]
    return [{"value": f, "low": f, "high": f, "system": cut(v.get("system"), TOKEN_LEN),
             "code": cut(v.get("code"), TOKEN_LEN), "unit": cut(v.get("unit"), TOKEN_LEN)}]


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
                for q in quantity_values(v, t):
                    units = {""}
                    if q["code"]:
                        units.add(f"{q['system'] or ''}|{q['code']}")
                        units.add(f"|{q['code']}")
                    if q["unit"]:
                        units.add(f"|{q['unit']}")
                    ranges.extend((u, q["low"], q["high"]) for u in sorted(units))
            if last:
                forms.extend(ranges)
            else:
                forms.extend(decimal_text(r[1]) for r in ranges)
    return list(dict.fromkeys(forms))
