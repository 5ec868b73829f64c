"""Search interactions: run a parsed query and render the searchset Bundle.

Paging is by opaque keyset cursors from the search engine (``_cursor``), so ``next`` stays
correct while resources are created or deleted between pages.
"""
from __future__ import annotations

from urllib.parse import parse_qsl

import orjson

from ..model import resources as res
from ..model.errors import BadRequest, Issue
from ..security.access import filter_page, partner_constraint
from ..search import apply_elements
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
    principal = req.principal
    if principal is not None and principal.is_partner:
        # the partner view: only what concerns its Organization (security.access)
        items = list(items) + [partner_constraint(principal, type_for_parse)]
    query = engine.parse(type_for_parse, items, strict=_strict(req), base_url=req.base,
                         compartment=compartment)
    if query.count is None:
        query.count = router.settings.default_count
    query.count = min(query.count, router.settings.max_count)
    if query.count == 0 and query.total is None:
        query.total = "accurate"  # _count=0 asks for the count alone
    cursor = req.param("_cursor")

    def run(t):
        found = engine.search(t.conn, types, query, cursor=cursor)
        if filter_page(t, principal, found):
            found.issues.append(Issue("Some resources were left out: this client may not "
                                      "see them", severity="information", code="suppressed"))
        return found

    # asked before the search runs: a reindex that ends meanwhile must not leave the results
    # it missed without the warning (then the warning is merely cautious)
    warnings = router.custom.warnings_for(query) if router.custom is not None else []
    page = router._run(tx, run, False)
    page.issues.extend(warnings)
    return RestResponse(200, searchset(req, page, query), {},
                        seen=page.matches + page.included)


def searchset(req, page, query) -> bytes:
    base = req.base
    path = req.path.strip("/")
    if path.endswith("/_search"):
        path = path[: -len("/_search")]
    reshape = query.elements or query.summary in ("true", "text", "data")

    def entry(rtype, rid, body, mode):
        if reshape:
            resource = apply_elements(res.loads(body), query.summary, query.elements)
        else:
            resource = render.fragment(body)
        return {"fullUrl": f"{base}/{rtype}/{rid}", "resource": resource,
                "search": {"mode": mode}}

    entries = [entry(t, i, b, "match") for t, i, b in page.matches]
    entries += [entry(t, i, b, "include") for t, i, b in page.included]
    issues = list(page.issues)
    if issues:
        entries.append(render.outcome_entry(issues))
    # the links repeat the request's own parameters (all of them: _type too), minus paging
    # state; a POST search's links are GET links carrying the form's parameters
    sent = req.query
    if req.method.upper() == "POST":
        sent = req.query + parse_qsl((req.body or b"").decode(), keep_blank_values=True)
    items = [(k, v) for k, v in sent if k not in ("_cursor", "_format", "_pretty")]
    links = [{"relation": "self", "url": render.bundle_link(base, path, items)}]
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
    return orjson.dumps(bundle, default=res._default)
