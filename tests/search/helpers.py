"""Test data without the repository: insert a resource row and its index rows, as the store does."""
from __future__ import annotations

import glob
import itertools
import os
import time

import orjson
from sqlalchemy import delete, insert, select, update

from fhirgw.search import SearchEngine
from fhirgw.store.tables import INDEX_TABLES, param_key, resource

from ..integration.examples import PACKAGE as EXAMPLES_PACKAGE

_clock = itertools.count(int(time.time() * 1_000_000))


class Store:
    """Minimal writer: insert/update/delete with index rows (one executemany per table)."""

    def __init__(self, db, search: SearchEngine | None = None):
        self.db = db
        self.search = search or SearchEngine(base_urls=["http://fhir.test/r4"])

    def put(self, res: dict, *, last_updated: int | None = None) -> int:
        rtype, rid_ = res["resourceType"], res["id"]
        lu = last_updated if last_updated is not None else next(_clock)
        with self.db.begin() as conn:
            old = conn.execute(select(resource.c.rid, resource.c.version).where(
                resource.c.res_type == rtype, resource.c.res_id == rid_)).first()
            body = orjson.dumps(res)
            if old is None:
                rid = conn.execute(insert(resource).values(
                    res_type=rtype, res_id=rid_, version=1, last_updated=lu, deleted=False,
                    body=body)).inserted_primary_key[0]
            else:
                rid = old.rid
                conn.execute(update(resource).where(resource.c.rid == rid).values(
                    version=old.version + 1, last_updated=lu, deleted=False, body=body))
                for t in INDEX_TABLES.values():
                    conn.execute(delete(t).where(t.c.rid == rid))
            for kind, rows in self.search.index_rows(rtype, res).items():
                if rows:   # the readable rows, keyed as stored
                    conn.execute(insert(INDEX_TABLES[kind]), [
                        {"pid": param_key(r.pop("res_type"), r.pop("param")), **r, "rid": rid}
                        for r in rows])
        return rid

    def delete(self, rtype: str, rid_: str) -> None:
        with self.db.begin() as conn:
            rid = conn.execute(select(resource.c.rid).where(
                resource.c.res_type == rtype, resource.c.res_id == rid_)).scalar_one()
            conn.execute(update(resource).where(resource.c.rid == rid).values(deleted=True, body=None))
            for t in INDEX_TABLES.values():
                conn.execute(delete(t).where(t.c.rid == rid))

    def query(self, res_type, qs, **kw):
        """Run a search from a query string; returns the ids of the matches (in order)."""
        items = parse_qs(qs)
        q = self.search.parse(res_type, items, strict=True, base_url="http://fhir.test/r4",
                              compartment=kw.pop("compartment", None))
        with self.db.connect() as conn:
            page = self.search.search(conn, None, q, **kw)
        return page

    def ids(self, res_type, qs, **kw) -> list[str]:
        return [m[1] for m in self.query(res_type, qs, **kw).matches]

    def idset(self, res_type, qs, **kw) -> set[str]:
        return set(self.ids(res_type, qs, **kw))


def parse_qs(qs: str) -> list[tuple[str, str]]:
    from urllib.parse import unquote_plus
    out = []
    for pair in qs.split("&"):
        if not pair:
            continue
        k, _, v = pair.partition("=")
        out.append((unquote_plus(k), unquote_plus(v)))
    return out


#: the official R4 examples package (``make test-data``)
EXAMPLES_PKG = str(EXAMPLES_PACKAGE)


def official_examples(step: int = 1):
    """The official examples of the types R4B models (every ``step``-th file)."""
    from fhirgw.model.resources import SUPPORTED

    for f in sorted(glob.glob(os.path.join(EXAMPLES_PKG, "*.json")))[::step]:
        try:
            res = orjson.loads(open(f, "rb").read())
        except orjson.JSONDecodeError:
            continue
        if isinstance(res, dict) and res.get("resourceType") in SUPPORTED:
            yield res
