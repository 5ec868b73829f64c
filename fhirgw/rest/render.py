"""Turning stored versions and search/history pages into FHIR responses (bytes).

Resource bodies are embedded as stored bytes (``orjson.Fragment``): a Bundle of 100
resources is built without parsing any of them.
"""
from __future__ import annotations

from urllib.parse import urlencode

import orjson

from ..model.errors import Issue, information, operation_outcome
from ..store.repository import Stored, http_date, instant, clock

_STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content", 304: "304 Not Modified",
                400: "400 Bad Request", 404: "404 Not Found", 409: "409 Conflict",
                410: "410 Gone", 412: "412 Precondition Failed", 422: "422 Unprocessable Entity"}


def status_line(status: int) -> str:
    return _STATUS_TEXT.get(status, str(status))


def version_headers(stored: Stored, base: str) -> dict[str, str]:
    return {
        "ETag": stored.etag,
        "Last-Modified": http_date(stored.last_updated),
        "Location": f"{base}/{stored.res_type}/{stored.res_id}/_history/{stored.version}",
    }


def fragment(body: bytes) -> orjson.Fragment:
    return orjson.Fragment(body)


def bundle_link(base: str, path: str, items: list[tuple[str, str]]) -> str:
    q = urlencode(items, safe="|,:$/")
    return f"{base}/{path}" + (f"?{q}" if q else "")


def history_bundle(stored: list[Stored], base: str, self_url: str, next_url: str | None,
                   total: int | None) -> bytes:
    entries = []
    for s in stored:
        url = f"{s.res_type}/{s.res_id}"
        entry: dict = {"fullUrl": f"{base}/{url}"}
        if s.body is not None:
            entry["resource"] = fragment(s.body)
        method = s.method if s.method in ("POST", "PUT", "DELETE", "PATCH") else "PUT"
        entry["request"] = {"method": "PUT" if method == "PATCH" else method,
                            "url": url if method != "POST" else s.res_type}
        status = 201 if s.version == 1 and method == "POST" else (204 if s.deleted else 200)
        entry["response"] = {"status": status_line(status), "etag": s.etag,
                             "lastModified": instant(s.last_updated)}
        entries.append(entry)
    bundle: dict = {"resourceType": "Bundle", "type": "history",
                    "meta": {"lastUpdated": instant(clock.now())}}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = [{"relation": "self", "url": self_url}]
    if next_url:
        bundle["link"].append({"relation": "next", "url": next_url})
    bundle["entry"] = entries
    return orjson.dumps(bundle)


def outcome_entry(issues: list[Issue]) -> dict:
    return {"resource": operation_outcome(issues), "search": {"mode": "outcome"}}


def created_outcome(stored: Stored, created: bool) -> bytes:
    verb = "created" if created else "updated"
    return orjson.dumps(operation_outcome([information(
        f"{stored.res_type}/{stored.res_id} {verb} (version {stored.version})")]))
