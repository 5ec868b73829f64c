"""The access log: one JSON line per request, request ids, no PHI."""
import json
import logging
import multiprocessing
import re

from fhirgw.api.logging import RequestIds, path_shape
from tests.api.conftest import patient

FJ = {"Content-Type": "application/fhir+json"}


def _lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "fhirgw.access"]


def test_one_json_line_per_request_without_ids_or_queries(client, caplog):
    created = client.post("/fhir/Patient", json=patient(family="Okafor", mrn="LOG-1"),
                          headers=FJ).json()
    with caplog.at_level(logging.INFO, logger="fhirgw.access"):
        client.get(f"/fhir/Patient/{created['id']}")
        client.get("/fhir/Patient", params={"family": "Okafor"})
        client.get(f"/fhir/Patient/{created['id']}/_history/1")
        client.get("/fhir/Patient/not-there")
    lines = _lines(caplog)
    assert [(x["method"], x["path"], x["status"]) for x in lines] == [
        ("GET", "fhir/Patient/{id}", 200), ("GET", "fhir/Patient", 200),
        ("GET", "fhir/Patient/{id}/_history/{vid}", 200), ("GET", "fhir/Patient/{id}", 404)]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert created["id"] not in text and "Okafor" not in text and "LOG-1" not in text
    assert all(x["event"] == "request" and x["duration_ms"] >= 0 for x in lines)


def test_request_ids_are_echoed_or_made(client, caplog):
    with caplog.at_level(logging.INFO, logger="fhirgw.access"):
        given = client.get("/fhir/metadata", headers={"X-Request-Id": "abc-123"})
        made = [client.get("/fhir/metadata").headers["x-request-id"] for _ in range(3)]
    assert given.headers["x-request-id"] == "abc-123"
    assert all(re.fullmatch(r"[0-9a-f]{32}", m) for m in made) and len(set(made)) == 3
    assert [x["request_id"] for x in _lines(caplog)] == ["abc-123", *made]


def _ids_in_child(queue) -> None:
    from fhirgw.api.logging import _ids
    queue.put([_ids.next() for _ in range(3)])


def test_made_request_ids_do_not_repeat_across_processes():
    ids = RequestIds()
    mine = {ids.next() for _ in range(1000)}
    assert len(mine) == 1000
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    children = [ctx.Process(target=_ids_in_child, args=(queue,)) for _ in range(2)]
    for c in children:
        c.start()
    theirs = [i for _ in children for i in queue.get(timeout=60)]
    for c in children:
        c.join(30)
    assert len(set(theirs)) == 6 and not set(theirs) & mine


def test_path_shapes():
    assert path_shape("/fhir/Patient/123") == "fhir/Patient/{id}"
    assert path_shape("/fhir/Patient/123/$everything") == "fhir/Patient/{id}/$everything"
    assert path_shape("/fhir/metadata") == "fhir/metadata"
