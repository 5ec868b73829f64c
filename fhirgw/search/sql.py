"""Compile parsed criteria into SQLAlchemy Core conditions (one statement per search).

Every criterion becomes a condition on a ``resource`` row: ``rid IN (SELECT rid FROM sp_x
WHERE pid = :k AND <value match>)`` (``:k`` the key of the type and parameter,
``store.tables.param_key``; ``pid IN (...)`` for several types), so each index lookup is
served by the ``(pid, value...)`` index and ANDed criteria intersect. Chains and ``_has`` nest
the same shape through ``sp_reference``. Nothing here is database-specific: strings compare
against normalized columns with code-point order on both SQLite and PostgreSQL (no ILIKE;
``LIKE`` only for ``:contains``).
"""
from __future__ import annotations

import os
from typing import Any

import orjson
from sqlalchemy import (ColumnElement, and_, false, func, literal_column, not_, or_, select, true,
                        tuple_)

from ..store.tables import INDEX_TABLES, param_key, resource, sp_reference
from .parse import Criterion, RangeValue, RefValue, SearchQuery, SortKey, TokenValue
from .values import escape_like, normalize_string, prefix_upper_bound

_COMPARTMENTS_FILE = os.path.join(os.path.dirname(__file__), "data", "compartments.json")
with open(_COMPARTMENTS_FILE, "rb") as _f:
    #: compartment type -> resource type -> reference parameters linking it to the owner
    COMPARTMENTS: dict[str, dict[str, list[str]]] = orjson.loads(_f.read())["compartments"]

_TABLE_OF = {"string": "string", "token": "token", "date": "date", "number": "number",
             "quantity": "quantity", "reference": "reference", "uri": "uri",
             "composite": "composite"}


def _type_cond(col, types: tuple[str, ...] | list[str]) -> ColumnElement:
    types = tuple(types)
    return col == types[0] if len(types) == 1 else col.in_(types)


def pid_cond(col, types, params, *, by_rid: bool = False, registry=None) -> ColumnElement:
    """Index rows of any of ``params`` (a code or several) on any of ``types``: their
    ``pid`` (``col``) is one of those pairs' keys.

    ``by_rid``: the rows are those of given resources (``rid = ...`` elsewhere in the same
    WHERE), a handful each, which the ``(rid)`` index finds. ``pid`` is then compared as
    ``pid + 0``, an expression no index serves: ``pid`` leads the value index, and SQLite
    without statistics took ``(pid)`` for such a lookup, reading every row of the
    parameter for each resource (the sort key of ``_sort=date``: all date rows of
    ``Appointment.date`` per Appointment).

    ``registry``: a derived parameter (``SearchRegistry.derived``, ``Condition.patient``)
    has no rows of its own: its rows are those of its base (``subject``) whose derivation
    column (``target_type``) holds one of its values (``Patient``), or all of them (a
    string whole, ``Patient.name``, names its own rows among its terms). ``col`` must then
    be the ``pid`` of the table of the parameter's type."""
    codes = (params,) if isinstance(params, str) else params
    keys: list[int] = []
    derived: dict[tuple[int, str | None], set[str]] = {}   # (base key, column) -> values
    for t in types:
        for p in codes:
            d = registry.derived(t, p) if registry is not None else None
            if d is None:
                keys.append(param_key(t, p))
                continue
            for term in d.terms:   # a union's parts: each another parameter's rows
                derived.setdefault((param_key(t, term.base), term.column),
                                   set()).update(term.values)
    pcol = col.op("+")(literal_column("0")) if by_rid else col
    conds = []
    for key, column in derived:
        if column is None and key not in keys:   # all the base's rows: as the base
            keys.append(key)
    if keys:
        conds.append(pcol == keys[0] if len(keys) == 1 else pcol.in_(keys))
    for (key, column), values in derived.items():
        if column is None or key in keys:   # the base itself is asked for too: all its rows
            continue
        conds.append(and_(pcol == key, _type_cond(col.table.c[column], sorted(values))))
    return conds[0] if len(conds) == 1 else or_(*conds)


class RCols:
    """The resource row a condition is about (the searched one, a chain target, ...)."""

    def __init__(self, table=resource):
        self.t = table
        self.rid = table.c.rid
        self.res_type = table.c.res_type
        self.res_id = table.c.res_id
        self.last_updated = table.c.last_updated
        self.deleted = table.c.deleted


def range_cond(prefix: str, low_col, high_col, v: RangeValue, *, point: bool = False) -> ColumnElement:
    """The spec's prefix semantics between a target range ``[low_col, high_col]`` and the
    search value's range ``[v.low, v.high]`` (dates: the precision's range; numbers: the
    implicit precision for ``eq``/``ne``/``ap``, the exact value otherwise)."""
    if point:   # numbers: gt/lt/ge/le/sa/eb compare with the exact value
        pl = ph = v.value
    else:
        pl, ph = v.low, v.high
    if point:   # a number's precision range is half-open: 100 is [99.5, 100.5)
        eq = and_(low_col >= v.low, high_col < v.high)
        ne = or_(low_col < v.low, high_col >= v.high)
    else:       # date ranges are inclusive at both ends (to the microsecond)
        eq = and_(low_col >= v.low, high_col <= v.high)
        ne = or_(low_col < v.low, high_col > v.high)
    if prefix == "eq":
        return eq
    if prefix == "ne":
        return ne
    if prefix == "gt":
        return high_col > ph
    if prefix == "lt":
        return low_col < pl
    if prefix == "ge":
        return high_col >= ph if point else or_(high_col > ph, eq)
    if prefix == "le":
        return low_col <= pl if point else or_(low_col < pl, eq)
    if prefix == "sa":
        return low_col > ph
    if prefix == "eb":
        return high_col < pl
    if prefix == "ap":
        return and_(low_col <= v.high, high_col >= v.low)
    raise ValueError(prefix)


def _int_range(v: RangeValue) -> RangeValue:
    return RangeValue(v.prefix, int(v.value), int(v.low), int(v.high))


class SqlCompiler:
    """Turns criteria into conditions; one instance per engine."""

    def __init__(self, registry):
        self.registry = registry

    # -------------------------------------------------------------- filters

    def conditions(self, query: SearchQuery, r: RCols, types: tuple[str, ...]) -> list[ColumnElement]:
        conds: list[ColumnElement] = [r.deleted == false()]
        # a compartment (one client's records) is the most selective thing a search can
        # have: it drives, and every parameter is checked per candidate row
        in_compartment = bool(query.compartment)
        driver = None if in_compartment else pick_driver(query.criteria)
        if driver is None or not set(driver.res_types) <= set(types):
            # the driver's own rows are limited to its types; a narrower _type needs this too
            conds.insert(0, _type_cond(r.res_type, types))
        for crit in query.criteria:
            if (in_compartment or (driver is not None and crit is not driver)) \
                    and crit.kind == "param":
                # checked per candidate row through the (rid) index instead of a list of
                # every matching rid (SQLite builds IN lists in full: all 'status=requested'
                # Tasks); PostgreSQL plans EXISTS and IN as the same semi-join
                conds.append(self._param(crit, r, correlated=True))
            else:
                conds.append(self.criterion(crit, r, types))
        if query.compartment:
            conds.append(self.compartment(query.compartment, r, types))
        return conds

    def criterion(self, crit: Criterion, r: RCols, types: tuple[str, ...]) -> ColumnElement:
        kind = crit.kind
        if kind == "never":
            return false()
        if kind == "always":
            return true()
        if kind == "id":
            ids = [v.code for v in crit.values if v.code]
            cond = r.res_id.in_(ids)
            return not_(cond) if crit.modifier == "not" else cond
        if kind == "list":
            # resources named by the List(s)' entry.item references (the official List-item
            # parameter's index rows), of the searched row's own type
            lst = resource.alias("lst")
            ref = sp_reference.alias("lref")
            named = (select(ref.c.target_id)
                     .join(lst, lst.c.rid == ref.c.rid)
                     .where(lst.c.res_type == "List", lst.c.res_id.in_(crit.values),
                            lst.c.deleted == false(), ref.c.pid == param_key("List", "item"),
                            ref.c.target_type == r.res_type))
            return r.res_id.in_(named)
        if kind == "lastUpdated":
            return or_(*[range_cond(v.prefix, r.last_updated, r.last_updated, _int_range(v))
                         for v in crit.values])
        if kind == "chain":
            return self._chain(crit, r)
        if kind == "has":
            return self._has(crit, r, types)
        return self._param(crit, r)

    def _param(self, crit: Criterion, r: RCols, correlated: bool = False) -> ColumnElement:
        sub, negate = self._param_select(crit, r, correlated)
        if correlated:
            return ~sub.exists() if negate else sub.exists()
        return r.rid.not_in(sub) if negate else r.rid.in_(sub)

    def _param_rows(self, crit: Criterion):
        """The index rows (their rids) a positive parameter criterion matches."""
        return self._param_select(crit, RCols(resource.alias()), False)[0]

    def _param_select(self, crit: Criterion, r: RCols, correlated: bool):
        """(select of matching index rows' rids, whether the criterion negates them)."""
        sp = crit.param
        ptype = sp.type
        mod = crit.modifier
        param = sp.code
        table = INDEX_TABLES[_TABLE_OF.get(ptype, "token")]
        if ptype == "reference" and mod == "identifier":
            table, param, ptype = INDEX_TABLES["token"], sp.code + ":identifier", "token"
        elif mod == "of-type":
            param = sp.code + ":of-type"
        t = table
        # correlated: EXISTS (this row's index rows), served by the (rid) index
        cond = pid_cond(t.c.pid, crit.res_types, param, by_rid=correlated,
                        registry=self.registry)
        sub = select(t.c.rid).where(t.c.rid == r.rid, cond) if correlated \
            else select(t.c.rid).where(cond)
        negate = bool(crit.missing) if crit.missing is not None else mod == "not"
        if crit.missing is None:
            ors = [self._value(ptype, mod, t, v, crit) for v in crit.values]
            sub = sub.where(or_(*ors) if len(ors) > 1 else ors[0])
        return sub, negate

    def _value(self, ptype: str, mod: str | None, t, v: Any, crit: Criterion) -> ColumnElement:
        c = t.c
        if ptype == "token":
            if mod == "text":
                norm = normalize_string(v)
                return and_(c.text >= norm, c.text < prefix_upper_bound(norm))
            return token_cond(c, v)
        if ptype == "string":
            if mod == "exact":
                return c.exact == v
            norm = normalize_string(v)
            if mod == "contains" or crit.param.code == "_text":   # _text: words anywhere
                if crit.param.code == "_text" and mod is None:
                    return or_(c.norm.like(f"{escape_like(norm)}%", escape="\\"),
                               c.norm.like(f"% {escape_like(norm)}%", escape="\\"))
                return c.norm.like(f"%{escape_like(norm)}%", escape="\\")
            return and_(c.norm >= norm, c.norm < prefix_upper_bound(norm))
        if ptype == "uri":
            if mod == "below":
                return and_(c.value >= v, c.value < prefix_upper_bound(v))
            if mod == "above":
                return c.value.in_(uri_ancestors(v))
            return c.value == v
        if ptype == "date":
            return range_cond(v.prefix, c.low, c.high, _int_range(v))
        if ptype in ("number", "quantity"):
            cond = range_cond(v.prefix, c.low, c.high, v, point=True)
            if ptype == "quantity" and v.unit_given and (v.system or v.unit):
                if v.system:
                    unit = and_(c.system == v.system, c.code == v.unit)
                else:
                    unit = or_(c.code == v.unit, c.unit == v.unit)
                cond = and_(cond, unit)
            return cond
        if ptype == "reference":
            return ref_cond(c, v, crit.target_types)
        if ptype == "composite":
            cond = c.key == v.key
            if v.last is not None:
                comp_types = [self.registry.by_url(x.definition) for x in crit.param.components]
                last_type = comp_types[-1].type if comp_types[-1] else "number"
                cond = and_(cond, range_cond(v.last.prefix, c.low, c.high, v.last,
                                             point=last_type != "date"))
            return cond
        raise ValueError(ptype)

    def _chain(self, crit: Criterion, r: RCols) -> ColumnElement:
        """``rid IN (references whose target IN (targets matching the inner criterion))``:
        nested from the inside out, so the most selective lookup (the inner criterion's
        index rows) drives the plan on both databases."""
        ref = sp_reference.alias()
        tr = RCols(resource.alias())
        targets = crit.target_types
        conds = [tr.deleted == false(), self.criterion(crit.inner, tr, targets)]
        if not narrows_type(crit.inner):
            conds.insert(0, _type_cond(tr.res_type, targets))
        if len(targets) == 1:
            link = and_(ref.c.target_type == targets[0],
                        ref.c.target_id.in_(select(tr.res_id).where(*conds)))
        else:
            link = tuple_(ref.c.target_type, ref.c.target_id).in_(
                select(tr.res_type, tr.res_id).where(*conds))
        sub = select(ref.c.rid).where(pid_cond(ref.c.pid, crit.res_types, crit.param.code,
                                               registry=self.registry), link)
        return r.rid.in_(sub)

    def _has(self, crit: Criterion, r: RCols, types: tuple[str, ...]) -> ColumnElement:
        """``_has:Type:param:inner=x``. A selective inner criterion lists the ids its
        referrers point at (``res_id IN``); a broad one (``crit.broad``, from the engine's
        probe) is checked per candidate row from the row's id through the value index
        (pid, target_id, target_type), so a first page stops at its first
        matches instead of listing hundreds of thousands of referrers."""
        ref = sp_reference.alias()
        src = RCols(resource.alias())
        target_type = types[0] if len(types) == 1 else r.res_type
        if crit.broad:
            inner_crit = crit.inner
            inner = (self._param(inner_crit, src, correlated=True) if inner_crit.kind == "param"
                     else self.criterion(inner_crit, src, (crit.has_type,)))
            return (select(ref.c.rid).join(src.t, src.rid == ref.c.rid)
                    .where(ref.c.target_id == r.res_id, ref.c.target_type == target_type,
                           pid_cond(ref.c.pid, (crit.has_type,), crit.has_param,
                                    registry=self.registry),
                           src.deleted == false(), inner)).exists()
        inner = self.criterion(crit.inner, src, (crit.has_type,))
        sub = (select(ref.c.target_id)
               .join(src.t, src.rid == ref.c.rid)
               .where(pid_cond(ref.c.pid, (crit.has_type,), crit.has_param,
                               registry=self.registry),
                      ref.c.target_type == target_type,
                      src.deleted == false(), inner))
        return r.res_id.in_(sub)

    def has_inner_rows(self, crit: Criterion, limit: int):
        """A statement counting (up to ``limit``) the rows the ``_has`` inner criterion
        matches: the probe that decides between the two forms of ``_has``."""
        src = RCols(resource.alias())
        inner = self.criterion(crit.inner, src, (crit.has_type,))
        inner_crit = crit.inner
        if inner_crit.kind == "param" and inner_crit.missing is None \
                and inner_crit.modifier != "not":
            # straight from the index rows: no list of rids is built before the LIMIT
            rows = self._param_rows(inner_crit).limit(limit).subquery()
        else:
            inner = self.criterion(inner_crit, src, (crit.has_type,))
            rows = select(src.rid).where(src.res_type == crit.has_type, inner) \
                .limit(limit).subquery()
        return select(func.count()).select_from(rows)

    # -------------------------------------------------------------- compartments

    def compartment(self, comp: tuple[str, str], r: RCols, types: tuple[str, ...]) -> ColumnElement:
        ctype, cid = comp
        defs = COMPARTMENTS.get(ctype)
        if defs is None:
            from ..model.errors import BadRequest
            raise BadRequest(f"{ctype} is not a compartment type")
        ors = []
        for t in types:
            params = defs.get(t)
            own = and_(r.res_type == t, r.res_id == cid) if t == ctype else None
            if params:
                ref = sp_reference.alias()
                sub = select(ref.c.rid).where(
                    pid_cond(ref.c.pid, (t,), params, registry=self.registry),
                    ref.c.target_type == ctype, ref.c.target_id == cid)
                linked = and_(r.res_type == t, r.rid.in_(sub)) if len(types) > 1 else r.rid.in_(sub)
                ors.append(or_(linked, own) if own is not None else linked)
            elif own is not None:
                ors.append(own)
        return or_(*ors) if ors else false()

    # -------------------------------------------------------------- sorting

    def sort_expr(self, key: SortKey, r: RCols, types: tuple[str, ...]):
        if key.code == "_id":
            return r.res_id
        if key.code == "_lastUpdated":
            return r.last_updated
        sp = key.param
        t = INDEX_TABLES[_TABLE_OF[sp.type]].alias()
        if sp.type == "string":
            col = t.c.norm
        elif sp.type == "token":
            col = t.c.code
        elif sp.type == "uri":
            col = t.c.value
        elif sp.type == "reference":
            col = func.coalesce(t.c.target_id, t.c.url)
        else:   # date, number, quantity: the range end that sorts first in this direction
            col = t.c.high if key.desc else t.c.low
        fn = func.max if key.desc else func.min
        # the rid leads: the (rid) index serves it (SQLite without statistics might
        # otherwise scan the parameter's rows through (pid, ...))
        return (select(fn(col)).where(t.c.rid == r.rid,
                                      pid_cond(t.c.pid, types, sp.code, by_rid=True,
                                               registry=self.registry))
                .scalar_subquery())


# ---------------------------------------------------------------- value conditions

#: token parameters with a handful of codes: a poor first lookup
_LOW_CARDINALITY = frozenset({"status", "gender", "active", "intent", "priority", "category",
                              "class", "deceased", "type", "kind", "mode", "use", "_tag",
                              "_security", "experimental", "clinical-status",
                              "verification-status", "business-status", "part-status"})


def _selectivity_rank(crit: Criterion) -> int:
    """A guess at how few rows a criterion's index lookup names (lower: fewer)."""
    if crit.kind == "chain":
        return 1
    ptype, mod = crit.param.type, crit.modifier
    if ptype in ("reference", "uri") or mod == "identifier":
        return 0
    if ptype == "token":
        if mod == "text":
            return 4
        return 3 if crit.param.code in _LOW_CARDINALITY or crit.param.code.endswith("-status") else 1
    if ptype == "string":
        return 4 if mod == "contains" or crit.param.code == "_text" else 2
    return 3   # date, number, quantity, composite: ranges


def pick_driver(criteria: list[Criterion]) -> Criterion | None:
    """The criterion whose ``rid IN (...)`` list drives the search (the others are checked
    per row), or None when none narrows the type (then ``res_type`` does)."""
    best = None
    for crit in criteria:
        if narrows_type(crit) and (best is None or _selectivity_rank(crit) < _selectivity_rank(best)):
            best = crit
    return best


def narrows_type(crit: Criterion) -> bool:
    """True when the criterion compiles to ``rid IN (index rows of the searched types)``.

    Index rows carry their resource's type (in ``pid``), so such a criterion already keeps only resources
    of the searched types and the ``resource.res_type`` condition is redundant. It is left
    out then: SQLite without statistics (no ANALYZE) takes ``res_type = ?`` for selective
    and scans every resource of the type through ``(res_type, last_updated)`` instead of
    looking up the few rids the index rows name.
    """
    if crit.kind == "param":
        return crit.missing is not True and crit.modifier != "not"
    return crit.kind == "chain"


def token_cond(c, v: TokenValue) -> ColumnElement:
    if not v.has_bar:
        return c.code == v.code
    if v.system is None:
        return and_(c.system.is_(None), c.code == v.code)
    if v.code is None:
        return c.system == v.system
    return and_(c.system == v.system, c.code == v.code)


def ref_cond(c, v: RefValue, type_filter: tuple[str, ...] = ()) -> ColumnElement:
    if v.url is not None:
        cond = c.url == v.url
    else:
        cond = c.target_id == v.target_id
    ttype = v.target_type or (type_filter[0] if type_filter else None)
    if ttype:
        cond = and_(cond, c.target_type == ttype)
    return cond


def uri_ancestors(v: str) -> list[str]:
    """``http://a/b/c`` -> [``http://a/b/c``, ``http://a/b``, ``http://a``] (for ``:above``)."""
    out = [v]
    scheme, sep, rest = v.partition("://")
    if not sep:
        return out
    parts = rest.rstrip("/").split("/")
    for i in range(len(parts) - 1, 0, -1):
        out.append(f"{scheme}://{'/'.join(parts[:i])}")
    return out
