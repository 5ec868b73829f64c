"""SearchEngine: index extraction, query parsing, and search execution.

A search runs one SQL statement for the page of matches (filters, sort keys and the keyset
condition in one ``SELECT``), one per include level, and one ``COUNT`` only when a total is
asked for. Paging is keyset-based: a cursor carries the sort key values and ``rid`` of the
row at the page edge, so pages stay correct while resources are added, changed or deleted.
"""
from __future__ import annotations

import base64
import binascii
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson
from sqlalchemy import and_, false, func, or_, select
from sqlalchemy.engine import Connection

from ..model.errors import BadRequest, Issue
from ..model.resources import RESOURCE_TYPES, loads
from ..store.tables import resource, sp_reference
from .extract import Indexer
from .parse import QueryParser, SearchQuery
from .registry import SearchRegistry
from .sql import RCols, SqlCompiler, pid_cond

#: included resources per search before the engine stops and says so (an Issue)
MAX_INCLUDES = 1000
#: _include:iterate levels followed before the engine stops and says so
MAX_INCLUDE_DEPTH = 8

Row = tuple[str, str, bytes]


@dataclass
class SearchPage:
    matches: list[Row] = field(default_factory=list)
    included: list[Row] = field(default_factory=list)
    total: int | None = None
    next_cursor: str | None = None
    prev_cursor: str | None = None
    issues: list[Issue] = field(default_factory=list)


class SearchEngine:
    """The search engine of one server (one registry of SearchParameters).

    ``base_urls``: this server's base URL(s); absolute references starting with one are
    indexed as local ``Type/id`` references.
    """

    def __init__(self, registry: SearchRegistry | None = None, *, base_urls: Iterable[str] = ()):
        self.registry = registry if registry is not None else _default_registry()
        self.indexer = Indexer(self.registry, base_urls)
        self.parser = QueryParser(self.registry)
        self.compiler = SqlCompiler(self.registry)

    # -------------------------------------------------------------- indexing

    def index_rows(self, res_type: str, resource: dict) -> dict[str, list[dict]]:
        """Index rows per ``sp_*`` table kind for one resource (no ``id``/``rid``)."""
        return self.indexer.rows(res_type, resource)

    def index_tuples(self, res_type: str, resource: dict) -> dict[str, list[tuple]]:
        """The same rows as tuples in the column order of ``extract.COLUMNS`` (the write
        path: no dict per row)."""
        return self.indexer.tuples(res_type, resource)

    def reindex(self, conn: Connection, res_types: Iterable[str] | None = None,
                batch: int = 500) -> int:
        """Rewrite the index rows of every current resource (of ``res_types``) in one
        transaction; returns the number of resources. Long jobs use ``reindex_batch``."""
        n, after = 0, 0
        while True:
            done, after = self.reindex_batch(conn, res_types, after_rid=after, limit=batch)
            n += done
            if done < batch:
                return n

    def reindex_batch(self, conn: Connection, res_types: Iterable[str] | None = None, *,
                      after_rid: int = 0, limit: int = 500) -> tuple[int, int]:
        """Rewrite the index rows of the next ``limit`` current resources with ``rid`` above
        ``after_rid``: one delete and one bulk insert per table. Returns (count, last rid),
        so a caller can commit per batch and report progress."""
        from ..store.bulk import INDEX_ROW_COLUMNS, Batch, add_index_rows
        from ..store.tables import INDEX_TABLES
        stmt = (select(resource.c.rid, resource.c.res_type, resource.c.body)
                .where(resource.c.deleted == false(), resource.c.rid > after_rid)
                .order_by(resource.c.rid).limit(limit))
        if res_types is not None:
            stmt = stmt.where(resource.c.res_type.in_(list(res_types)))
        chunk = conn.execute(stmt).all()
        if not chunk:
            return 0, after_rid
        rids = [r.rid for r in chunk]
        out: dict[str, list[tuple]] = {}
        for r in chunk:
            if r.body is not None:
                add_index_rows(out, r.rid, self.index_tuples(r.res_type, loads(r.body)))
        batch = Batch(conn)
        for kind, table in INDEX_TABLES.items():
            batch.delete_rids(table.name, rids)
            batch.insert(table.name, INDEX_ROW_COLUMNS[kind], out.get(kind, []))
        batch.run()
        return len(chunk), rids[-1]

    # -------------------------------------------------------------- parsing

    def parse(self, res_type: str | None, items: list[tuple[str, str]], *, strict: bool = False,
              base_url: str = "", compartment: tuple[str, str] | None = None) -> SearchQuery:
        return self.parser.parse(res_type, items, strict=strict, base_url=base_url,
                                 compartment=compartment)

    # -------------------------------------------------------------- find

    def find(self, conn: Connection, res_type: str, query: SearchQuery,
             limit: int | None = None) -> list[tuple[int, str]]:
        """(rid, res_id) of current resources of ``res_type`` matching the query's filters."""
        r = RCols()
        stmt = (select(r.rid, r.res_id)
                .where(*self.compiler.conditions(query, r, (res_type,)))
                .order_by(r.rid))
        if limit is not None:
            stmt = stmt.limit(limit)
        return [(row[0], row[1]) for row in conn.execute(stmt)]

    # -------------------------------------------------------------- search

    def search(self, conn: Connection, res_types: list[str] | None, query: SearchQuery, *,
               cursor: str | None = None) -> SearchPage:
        types = tuple(res_types) if res_types else query.search_types
        page = SearchPage(issues=list(query.issues))
        self._probe_has(conn, query)
        r = RCols()
        conds = self.compiler.conditions(query, r, types)
        pg = conn.dialect.name == "postgresql"
        keys = self._sort_keys(query, r, types, pg)
        sig = _signature(query)
        count = 0 if query.summary == "count" else query.page_size

        if count > 0:
            direction, edge = "n", None
            if cursor:
                direction, edge = _decode_cursor(cursor, sig, len(keys))
            backward = direction == "p"
            labels = [e.label(f"k{i}") for i, (e, _desc) in enumerate(keys)]
            inner = select(r.rid, r.res_type, r.res_id, r.t.c.body, *labels).where(*conds).subquery()
            kcols = [inner.c[f"k{i}"] for i in range(len(keys))] + [inner.c.rid]
            descs = [d for _e, d in keys] + [False]
            stmt = select(inner)
            if edge is not None:
                stmt = stmt.where(_keyset(kcols, descs, edge, backward))
            order = []
            for col, desc in zip(kcols, descs):
                if backward:
                    desc = not desc
                o = col.desc() if desc else col.asc()
                order.append(o.nulls_first() if backward else o.nulls_last())
            stmt = stmt.order_by(*order).limit(count + 1)
            rows = conn.execute(stmt).all()
            more = len(rows) > count
            rows = rows[:count]
            if backward:
                rows.reverse()
            nk = len(keys)
            page.matches = [(row.res_type, row.res_id, row.body) for row in rows]
            if rows:
                first = [_jsonable(rows[0][4 + i]) for i in range(nk)] + [rows[0].rid]
                last = [_jsonable(rows[-1][4 + i]) for i in range(nk)] + [rows[-1].rid]
                has_next = more if not backward else True
                has_prev = (edge is not None) if not backward else more
                if has_next:
                    page.next_cursor = _encode_cursor("n", last, sig)
                if has_prev:
                    page.prev_cursor = _encode_cursor("p", first, sig)
            elif edge is not None:
                # an empty page past the end (rows deleted meanwhile): offer the way back
                if not backward:
                    page.prev_cursor = _encode_cursor("p", edge, sig)
            if not cursor and not more and query.total != "none":
                page.total = len(rows)
            if page.matches and (query.includes or query.revincludes):
                self._includes(conn, query, rows, page)

        if page.total is None and (query.total in ("accurate", "estimate") or query.summary == "count"):
            total_stmt = select(func.count()).select_from(resource).where(*conds)
            page.total = conn.execute(total_stmt).scalar_one()
        return page

    # -------------------------------------------------------------- helpers

    #: a _has inner criterion matching at least this many rows is "broad" (see sql._has)
    HAS_BROAD = 2000

    def _probe_has(self, conn: Connection, query: SearchQuery) -> None:
        """Decide per query how each top-level ``_has`` runs: one LIMIT-ed count of the
        inner criterion's rows (a few ms at worst) picks the plan that stays fast."""
        for crit in query.criteria:
            if crit.kind == "has" and crit.inner is not None:
                n = conn.execute(self.compiler.has_inner_rows(crit, self.HAS_BROAD)).scalar_one()
                crit.broad = n >= self.HAS_BROAD

    def _referring(self, inc) -> list[tuple[str, list[str]]]:
        """(type, its reference parameters) a ``_revinclude`` directive reads: its own, or
        for a ``*`` every reference parameter of its source type (or of every type: the
        index rows hold whatever type a reference names, declared target or not)."""
        if inc.source_type and inc.param != "*":
            return [(inc.source_type, [inc.param])]
        out = []
        for src in ((inc.source_type,) if inc.source_type else RESOURCE_TYPES):
            codes = sorted(code for code, sp in self.registry.params_for(src).items()
                           if sp.type == "reference")
            if codes:
                out.append((src, codes))
        return out

    def _sort_keys(self, query: SearchQuery, r: RCols, types, pg: bool) -> list[tuple[Any, bool]]:
        out = []
        for key in query.sort:
            expr = self.compiler.sort_expr(key, r, types)
            if pg and key.code == "_id":
                expr = expr.collate("C")
            out.append((expr, key.desc))
        return out

    def _includes(self, conn: Connection, query: SearchQuery, rows, page: SearchPage) -> None:
        seen: set[int] = {row.rid for row in rows}
        sources = [(row.rid, row.res_type, row.res_id) for row in rows]
        level = 0
        total = 0
        while sources:
            directives_inc = [i for i in query.includes if level == 0 or i.iterate]
            directives_rev = [i for i in query.revincludes if level == 0 or i.iterate]
            if not directives_inc and not directives_rev:
                break
            if level >= MAX_INCLUDE_DEPTH:
                page.issues.append(Issue(
                    f"_include:iterate stopped after {MAX_INCLUDE_DEPTH} levels; more resources "
                    "may be referenced", code="too-costly", severity="warning"))
                break
            ors = []
            c = RCols(resource.alias())
            src_rids = [s[0] for s in sources]
            for inc in directives_inc:
                ref = sp_reference.alias()
                tr = resource.alias()
                # the sources' own rids, filtered by type here rather than by a res_type
                # condition (with it, SQLite scans the (res_type, param) index)
                rids = src_rids if not inc.source_type else [
                    s[0] for s in sources if s[1] == inc.source_type]
                if not rids:
                    continue
                where = [ref.c.rid.in_(rids)]
                if inc.param != "*":
                    types = [inc.source_type] if inc.source_type else sorted(
                        {s[1] for s in sources})
                    where.append(pid_cond(ref.c.pid, types, inc.param, by_rid=True,
                                          registry=self.registry))
                if inc.target_type:
                    where.append(ref.c.target_type == inc.target_type)
                sub = (select(tr.c.rid)
                       .join(ref, and_(tr.c.res_type == ref.c.target_type,
                                       tr.c.res_id == ref.c.target_id))
                       .where(*where))
                ors.append(c.rid.in_(sub))
            if directives_rev:
                by_type: dict[str, list[str]] = {}
                for _rid, t, i in sources:
                    by_type.setdefault(t, []).append(i)
                for inc in directives_rev:
                    ref = sp_reference.alias()
                    # one lookup per referring (type, parameter) that may point at the
                    # sources' types, through the value index (pid, target_id): there is no
                    # index by target alone (it cost every write a B-tree insert per
                    # reference)
                    terms = [
                        and_(pid_cond(ref.c.pid, (src,), codes, registry=self.registry),
                             ref.c.target_type == t, ref.c.target_id.in_(ids))
                        for src, codes in self._referring(inc)
                        for t, ids in by_type.items()
                        if inc.target_type in (None, t)]
                    if terms:
                        ors.append(c.rid.in_(select(ref.c.rid).where(or_(*terms))))
            if not ors:
                break
            remaining = MAX_INCLUDES - total
            stmt = (select(c.rid, c.res_type, c.res_id, c.t.c.body)
                    .where(or_(*ors), c.deleted == false(), c.rid.not_in(seen))
                    .order_by(c.rid).limit(remaining + 1))
            got = conn.execute(stmt).all()
            if len(got) > remaining:
                got = got[:remaining]
                page.issues.append(Issue(
                    f"More than {MAX_INCLUDES} resources to include: the first {MAX_INCLUDES} "
                    "are returned, the rest left out", code="too-costly", severity="warning"))
                sources = []
            else:
                sources = [(g.rid, g.res_type, g.res_id) for g in got]
            for g in got:
                seen.add(g.rid)
                page.included.append((g.res_type, g.res_id, g.body))
            total += len(got)
            level += 1


# ---------------------------------------------------------------- keyset cursors

def _keyset(cols, descs, edge: list, backward: bool):
    """Rows strictly after (or before, when ``backward``) ``edge`` in the sort order, with
    NULL sort keys last in the forward order."""
    ors = []
    for i, (col, desc) in enumerate(zip(cols, descs)):
        v = edge[i]
        prefix = [(cols[j].is_(None) if edge[j] is None else cols[j] == edge[j]) for j in range(i)]
        if not backward:
            if v is None:
                continue   # nothing sorts after NULL (nulls last)
            beyond = or_(col < v if desc else col > v, col.is_(None))
        else:
            beyond = col.is_not(None) if v is None else (col > v if desc else col < v)
        ors.append(and_(*prefix, beyond) if prefix else beyond)
    return or_(*ors) if ors else false()


def _signature(query: SearchQuery) -> int:
    spec = ";".join(f"{'-' if k.desc else ''}{k.code}" for k in query.sort)
    return zlib.crc32(spec.encode()) & 0xFFFF


def _jsonable(v):
    if isinstance(v, (bytes, memoryview)):
        return bytes(v).decode("utf-8", "replace")
    return v


def _encode_cursor(direction: str, values: list, sig: int) -> str:
    raw = orjson.dumps([direction, sig, values])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, sig: int, nkeys: int) -> tuple[str, list]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        direction, csig, values = orjson.loads(raw)
    except (ValueError, binascii.Error, orjson.JSONDecodeError, TypeError):
        raise BadRequest("Invalid paging cursor", expression="_cursor") from None
    if direction not in ("n", "p") or csig != sig or not isinstance(values, list) \
            or len(values) != nkeys + 1:
        raise BadRequest("The paging cursor does not belong to this search", expression="_cursor")
    return direction, values


def _default_registry() -> SearchRegistry:
    """The official R4 registry; each engine gets its own, custom parameters stay per engine."""
    return SearchRegistry()
