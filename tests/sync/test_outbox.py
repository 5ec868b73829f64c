"""The outbox and the worker in process; the partner is respx (fault injection)."""
from __future__ import annotations

import time

import httpx
import pytest
import respx

from fhirgw.config import Settings
from fhirgw.model.errors import Unprocessable
from fhirgw.sync import outbox as ob
from fhirgw.sync import setup
from fhirgw.sync.config import parse
from tests.sync.conftest import CT, OUR_SYSTEM

PARTNER = "http://partner.test/fhir"
OO = {"resourceType": "OperationOutcome",
      "issue": [{"severity": "error", "code": "invalid", "diagnostics": "Unknown code 90791"}]}


@pytest.fixture
def env(tmp_path):
    from fhirgw.app import _default_search_engine
    from fhirgw.store.db import make_engine, migrate
    from fhirgw.store.repository import Repository
    from fhirgw.workflows import rules

    settings = Settings(database_url=f"sqlite:///{tmp_path}/o.db", base_url="http://us.test/fhir",
                        identifier_system=OUR_SYSTEM, worker=False)
    eng = make_engine(settings.database_url)
    migrate(eng)
    repo = Repository(eng, _default_search_engine(settings))
    repo.rules.extend(rules(settings))
    cfg = parse({"worker": {"idle": 0.01},
                 "defaults": {"backoff_base": 0.05, "backoff_max": 0.2, "timeout": 1,
                              "breaker_failures": 100, "max_age": 3600}})
    _rule, worker = setup(repo, settings, cfg)
    yield repo, worker
    worker.stop()
    eng.dispose()


def _partner(tx, protocol="hl7-fhir-rest"):
    ep = tx.create("Endpoint", {"resourceType": "Endpoint", "status": "active",
                                "identifier": [{"value": "p1"}],
                                "connectionType": {"system": CT, "code": protocol},
                                "payloadType": [{"text": "x"}], "address": PARTNER}).stored
    return tx.create("Organization", {"resourceType": "Organization", "name": "P",
                                      "endpoint": [{"reference": f"Endpoint/{ep.res_id}"}]}
                     ).stored.res_id


def _referral(tx, org_id):
    pat = tx.create("Patient", {"resourceType": "Patient", "name": [{"family": "X"}]}).stored
    return tx.create("ServiceRequest", {
        "resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "subject": {"reference": f"Patient/{pat.res_id}"},
        "performer": [{"reference": f"Organization/{org_id}"}]}).stored.res_id


def _ok_bundle(request):
    body = request.read()
    import orjson
    n = len(orjson.loads(body)["entry"])
    return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response",
                                     "entry": [{"response": {"status": "201 Created",
                                                             "location": f"Task/r{i}/_history/1"}}
                                               for i in range(n)]})


def test_row_only_on_commit(env):
    repo, _w = env
    org = repo.run(_partner)

    def fails(tx):
        _referral(tx, org)
        raise Unprocessable("no")
    with pytest.raises(Unprocessable):
        repo.run(fails)
    assert ob.list_rows(repo.engine) == []
    repo.run(lambda tx: _referral(tx, org))
    rows = ob.list_rows(repo.engine)
    assert len(rows) == 1 and rows[0]["kind"] == "referral" and rows[0]["status"] == "pending"


def test_updates_to_a_pending_referral_coalesce(env):
    repo, _w = env
    org = repo.run(_partner)
    sr = repo.run(lambda tx: _referral(tx, org))

    def note(tx):
        body = tx.read("ServiceRequest", sr).resource()
        tx.update("ServiceRequest", sr, {**body, "note": [{"text": "urgent"}]})
    repo.run(note)
    assert len(ob.list_rows(repo.engine)) == 1


@respx.mock
def test_sent_and_referral_bundle_shape(env):
    repo, worker = env
    org = repo.run(_partner)
    repo.run(lambda tx: _referral(tx, org))
    route = respx.post(PARTNER).mock(side_effect=_ok_bundle)
    worker.run_once()
    assert ob.list_rows(repo.engine)[0]["status"] == "sent"
    import orjson
    bundle = orjson.loads(route.calls[0].request.content)
    assert bundle["type"] == "transaction"
    urls = [e["request"]["url"].split("?")[0] for e in bundle["entry"]]
    assert urls == ["Patient", "ServiceRequest", "Task"]
    assert bundle["entry"][1]["request"]["method"] == "PUT"
    assert bundle["entry"][1]["request"]["url"].startswith(
        f"ServiceRequest?identifier={OUR_SYSTEM}|")
    task = bundle["entry"][2]["resource"]
    assert task["focus"]["reference"] == bundle["entry"][1]["fullUrl"]
    assert task["owner"]["reference"] == f"http://us.test/fhir/Organization/{org}"
    assert "id" not in task and "versionId" not in task.get("meta", {})


@pytest.mark.parametrize("response", [
    httpx.ReadTimeout("slow"), httpx.ConnectError("refused"),
    httpx.Response(500, text="boom"), httpx.Response(503, json=OO),
    httpx.Response(408), httpx.Response(200, text="<html>not json</html>"),
    httpx.Response(200, json={"resourceType": "Patient"}),
], ids=["timeout", "connect", "500", "503", "408", "malformed", "wrong-type"])
def test_transient_failures_are_retried(env, response):
    repo, worker = env
    org = repo.run(_partner)
    repo.run(lambda tx: _referral(tx, org))
    with respx.mock:
        route = respx.post(PARTNER)
        if isinstance(response, Exception):
            route.mock(side_effect=response)
        else:
            route.mock(return_value=response)
        worker.run_once()
        row = ob.list_rows(repo.engine)[0]
        assert row["status"] == "pending" and row["attempts"] == 1 and row["error"]
    with respx.mock:
        respx.post(PARTNER).mock(side_effect=_ok_bundle)
        time.sleep(0.25)
        worker.run_once()
    assert ob.list_rows(repo.engine)[0]["status"] == "sent"


@respx.mock
def test_429_honours_retry_after(env):
    repo, worker = env
    org = repo.run(_partner)
    repo.run(lambda tx: _referral(tx, org))
    respx.post(PARTNER).mock(return_value=httpx.Response(429, headers={"Retry-After": "30"}))
    worker.run_once()
    row = ob.show(repo.engine, ob.list_rows(repo.engine)[0]["id"])
    assert row["status"] == "pending" and row["response_status"] == 429
    from fhirgw.sync.poller import _parse
    wait = (_parse(row["next_attempt"]) - _parse(row["created"])).total_seconds()
    assert 29 <= wait <= 31
    assert worker.run_once() == 0        # not due yet


@respx.mock
def test_4xx_dead_letters_with_the_outcome(env):
    repo, worker = env
    org = repo.run(_partner)
    repo.run(lambda tx: _referral(tx, org))
    respx.post(PARTNER).mock(return_value=httpx.Response(422, json=OO))
    worker.run_once()
    row = ob.show(repo.engine, ob.list_rows(repo.engine)[0]["id"])
    assert row["status"] == "dead" and row["response_status"] == 422
    assert row["outcome"] == OO and "Unknown code 90791" in row["error"]
    # an operator retries it: delivered
    assert ob.retry(repo.engine, row["id"]) == 1
    respx.post(PARTNER).mock(side_effect=_ok_bundle)
    worker.run_once()
    assert ob.show(repo.engine, row["id"])["status"] == "sent"


@respx.mock
def test_failed_transaction_entry_is_permanent(env):
    repo, worker = env
    org = repo.run(_partner)
    repo.run(lambda tx: _referral(tx, org))
    respx.post(PARTNER).mock(return_value=httpx.Response(200, json={
        "resourceType": "Bundle", "type": "transaction-response",
        "entry": [{"response": {"status": "400 Bad Request", "outcome": OO}}]}))
    worker.run_once()
    assert ob.list_rows(repo.engine)[0]["status"] == "dead"


@respx.mock
def test_max_age_dead_letters(env):
    repo, worker = env
    org = repo.run(_partner)
    repo.run(lambda tx: _referral(tx, org))
    respx.post(PARTNER).mock(return_value=httpx.Response(503))
    worker.config.defaults = worker.config.defaults.__class__(
        **{**worker.config.defaults.__dict__, "max_age": 0.001})
    worker._states.clear()
    time.sleep(0.01)
    worker.run_once()
    row = ob.list_rows(repo.engine)[0]
    assert row["status"] == "dead" and "max_age" in row["error"]


@respx.mock
def test_circuit_breaker_opens_per_partner(env):
    repo, worker = env
    org = repo.run(_partner)
    for _ in range(3):
        repo.run(lambda tx: _referral(tx, org))
    state = worker.state("p1")
    state.breaker.threshold = 1
    state.breaker.reset = 5
    route = respx.post(PARTNER).mock(return_value=httpx.Response(503))
    worker.config.worker.__class__  # noqa: B018
    worker.run_once()
    assert state.breaker.is_open()
    calls = route.call_count
    time.sleep(0.3)
    assert worker.run_once() == 0          # the partner's rows are not claimed while open
    assert route.call_count == calls


@respx.mock
def test_message_to_process_message(env):
    repo, worker = env
    org = repo.run(lambda tx: _partner(tx, "hl7-fhir-msg"))

    def message(tx):
        return tx.create("Bundle", {
            "resourceType": "Bundle", "type": "message",
            "identifier": {"system": OUR_SYSTEM, "value": "m1"}, "timestamp": "2026-01-01T00:00:00Z",
            "entry": [{"fullUrl": "urn:uuid:1", "resource": {
                "resourceType": "MessageHeader", "id": "h1",
                "eventCoding": {"system": "urn:x", "code": "medication-handoff"},
                "destination": [{"endpoint": PARTNER,
                                 "receiver": {"reference": f"Organization/{org}"}}],
                "source": {"endpoint": "http://us.test/fhir"}}}]}, validated=True)
    repo.run(message)
    route = respx.post(f"{PARTNER}/$process-message").mock(side_effect=[
        httpx.Response(200, json={"resourceType": "Bundle", "type": "message", "entry": [
            {"resource": {"resourceType": "MessageHeader",
                          "response": {"identifier": "h1", "code": "transient-error"}}}]}),
        httpx.Response(200, json={"resourceType": "Bundle", "type": "message", "entry": [
            {"resource": {"resourceType": "MessageHeader",
                          "response": {"identifier": "h1", "code": "ok"}}}]})])
    worker.run_once()
    row = ob.list_rows(repo.engine)[0]
    assert row["kind"] == "message" and row["status"] == "pending"
    time.sleep(0.25)
    worker.run_once()
    assert ob.list_rows(repo.engine)[0]["status"] == "sent"
    assert route.call_count == 2


def test_batch_prefetch_builds_the_same_payloads_in_few_queries(env):
    """A claimed batch is built from reads gathered together (payloads.Reader.prefetch):
    the same payloads as one referral at a time, in a number of queries that does not grow
    with the batch."""
    from sqlalchemy import event

    from fhirgw.sync.mapping import for_partner
    from fhirgw.sync.partners import organization_partner
    from fhirgw.sync.payloads import Reader, build

    repo, worker = env
    org = repo.run(_partner)
    srs = [repo.run(lambda tx: _referral(tx, org)) for _ in range(12)]
    keys = [f"ServiceRequest/{sr}" for sr in srs]
    tasks = repo.run(lambda tx: [s.ref for s in tx.search("Task", [("focus", keys[0])])],
                     write=False)
    keys.append(tasks[0])        # a referral keyed by its Task
    keys.append("ServiceRequest/gone")

    def payloads(tx, prefetch: bool):
        partner = organization_partner(tx, f"Organization/{org}", ("rest",))
        reader = Reader(tx)
        if prefetch:
            reader.prefetch(keys)
        out = []
        for k in keys:
            try:
                p = build(tx, "referral", k, partner, for_partner(None), base=worker.base,
                          identifier_system=OUR_SYSTEM, reader=reader)
                out.append((p.body, p.track, p.closed))
            except Exception as exc:  # noqa: BLE001
                out.append(type(exc).__name__)
        return out

    statements = []

    def count(*_a):
        statements.append(1)
    event.listen(repo.engine, "before_cursor_execute", count)
    try:
        alone = repo.run(lambda tx: payloads(tx, False), write=False)
        n_alone = len(statements)
        statements.clear()
        together = repo.run(lambda tx: payloads(tx, True), write=False)
        n_together = len(statements)
    finally:
        event.remove(repo.engine, "before_cursor_execute", count)
    assert together == alone
    assert alone[-1] == "NothingToSend" and len(alone[0][0]["entry"]) == 3
    assert n_together < 20 < n_alone, (n_together, n_alone)


@respx.mock
def test_one_gone_referral_in_a_batch_is_discarded_alone(env):
    repo, worker = env
    org = repo.run(_partner)
    good = [repo.run(lambda tx: _referral(tx, org)) for _ in range(3)]
    gone = repo.run(lambda tx: _referral(tx, org))
    repo.run(lambda tx: tx.delete("ServiceRequest", gone))
    respx.post(PARTNER).mock(side_effect=_ok_bundle)
    worker.run_once()
    rows = {r["resource"]: r for r in ob.list_rows(repo.engine)}
    assert rows[f"ServiceRequest/{gone}"]["status"] == "discarded"
    assert all(rows[f"ServiceRequest/{g}"]["status"] == "sent" for g in good)
