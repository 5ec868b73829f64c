"""Search interactions: run a parsed query and render the searchset Bundle.

Paging is by opaque keyset cursors from the search engine (``_cursor``), so ``next`` stays
correct while resources are created or deleted between pages.
"""
from __future__ import annotations

import orjson

from ..model.errors import BadRequest
from ..store.repository import clock, instant
from . import render


def _strict(req) -> bool:
    from .router import _prefer
    handling = _prefer(req, "handling")
    if handling not in (None, "strict", "lenient"):
        raise BadRequest(f"Prefer: handling={handling} is not strict or lenient",
                         expression="Prefer")
    return handling == "strict"


def search_response(router, req, tx, types, type_for_parse, items, compartment=None):
    from .router import RestResponse

    engine = router.search
    query = engine.parse(type_for_parse, items, strict=_strict(req), base_url=req.base)
    if compartment is not None:
        query.compartment = compartment
    if query.count is None:
        query.count = router.settings.default_count
    query.count = min(query.count, router.settings.max_count)
    cursor = req.param("_cursor")
    page = router._run(tx, lambda t: engine.search(t.conn, types, query, cursor=cursor), False)
    return RestResponse(200, searchset(req, page, query), {})


def searchset(req, page, query) -> bytes:
    base = req.base
    path = req.path.strip("/")
    if path.endswith("/_search"):
        path = path[: -len("/_search")]
    shape = getattr(query, "shape_body", None)

    def entry(rtype, rid, body, mode):
        resource = render.fragment(body) if shape is None else shape(body, mode)
        return {"fullUrl": f"{base}/{rtype}/{rid}", "resource": resource,
                "search": {"mode": mode}}

    entries = [entry(t, i, b, "match") for t, i, b in page.matches]
    entries += [entry(t, i, b, "include") for t, i, b in page.included]
    if page.issues:
        entries.append(render.outcome_entry(page.issues))
    items = [(k, v) for k, v in req.query if k != "_cursor"]
    if req.method.upper() == "POST":  # links of a POST search are GET links
        from urllib.parse import parse_qsl
        items += parse_qsl((req.body or b"").decode(), keep_blank_values=True)
    links = [{"relation": "self", "url": render.bundle_link(base, path, req.query if req.method.upper() == "GET" else items)}]
    if page.next_cursor:
        links.append({"relation": "next",
                      "url": render.bundle_link(base, path, items + [("_cursor", page.next_cursor)])})
    if page.prev_cursor:
        links.append({"relation": "previous",
                      "url": render.bundle_link(base, path, items + [("_cursor", page.prev_cursor)])})
    bundle: dict = {"resourceType": "Bundle", "type": "searchset",
                    "meta": {"lastUpdated": instant(clock.now())}}
    if page.total is not None:
        bundle["total"] = page.total
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return orjson.dumps(bundle)
