"""Mappings: identifier systems, ConceptMap codes, defaults, both directions; the CLI; a
mapping error dead-letters one delivery and the worker goes on."""
from __future__ import annotations

import json

import httpx
import pytest
import respx
from typer.testing import CliRunner

from fhirgw.sync import outbox as ob
from fhirgw.sync.mapping import Mapping, MappingError
from tests.sync.test_outbox import PARTNER, _ok_bundle, _partner, env  # noqa: F401

CPT = "http://www.ama-assn.org/go/cpt"
LOCAL = "http://partner-ehr.example/CodeSystem/services"
SR = {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
      "code": {"coding": [{"system": CPT, "code": "90791"}]},
      "identifier": [{"system": "urn:iop:mrn", "value": "7"}]}


def test_out_and_back():
    m = Mapping.load("partner-ehr.yaml")
    out = m.apply(SR, "out")
    assert out["code"]["coding"] == [{"system": LOCAL, "code": "PSY-EVAL",
                                      "display": "Psychiatry intake"}]
    assert out["identifier"][0]["system"] == "http://partner-ehr.example/sid/iop-mrn"
    assert out["priority"] == "routine"
    back = m.apply(out, "in")
    assert back["code"]["coding"][0]["code"] == "90791"
    assert back["identifier"][0]["system"] == "urn:iop:mrn"
    assert SR["code"]["coding"][0]["code"] == "90791"     # the input is not changed


def test_unmapped_code_is_an_error_naming_the_element():
    bad = {**SR, "code": {"coding": [{"system": CPT, "code": "99999"}]}}
    with pytest.raises(MappingError, match=r"ServiceRequest.code: .*99999"):
        Mapping.load("partner-ehr.yaml").apply(bad, "out")


def test_map_cli(tmp_path):
    from fhirgw.cli import app

    f = tmp_path / "sr.json"
    f.write_text(json.dumps(SR))
    cfg = tmp_path / "sync.toml"
    cfg.write_text('[partners."partner-ehr"]\nmapping = "partner-ehr.yaml"\n')
    r = CliRunner().invoke(app, ["map", "--partner", "partner-ehr", "--direction", "out",
                                 "--config", str(cfg), str(f)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["code"]["coding"][0]["code"] == "PSY-EVAL"


@respx.mock
def test_mapping_error_dead_letters_one_row_only(env):  # noqa: F811
    repo, worker = env
    from dataclasses import replace
    worker.config.defaults = replace(worker.config.defaults, mapping="partner-ehr.yaml")
    org = repo.run(_partner)

    def two(tx):
        pat = tx.create("Patient", {"resourceType": "Patient"}).stored.res_id
        for code in ("99999", "90834"):
            tx.create("ServiceRequest", {**SR, "identifier": [],
                                         "code": {"coding": [{"system": CPT, "code": code}]},
                                         "subject": {"reference": f"Patient/{pat}"},
                                         "performer": [{"reference": f"Organization/{org}"}]})
    repo.run(two)
    route = respx.post(PARTNER).mock(side_effect=_ok_bundle)
    worker.run_once()
    rows = sorted(ob.list_rows(repo.engine), key=lambda r: r["id"])
    assert [r["status"] for r in rows] == ["dead", "sent"]
    assert "mapping error" in rows[0]["error"] and "99999" in rows[0]["error"]
    sent = json.loads(route.calls[0].request.content)
    codes = [e["resource"]["code"]["coding"][0]["code"] for e in sent["entry"]
             if e["resource"]["resourceType"] == "ServiceRequest"]
    assert codes == ["THER-45"]


def test_outbox_cli_and_admin_api(env, tmp_path):  # noqa: F811
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from fhirgw.api.admin import router
    from fhirgw.cli import app

    repo, worker = env
    org = repo.run(_partner)
    pat = repo.run(lambda tx: tx.create("Patient", {"resourceType": "Patient"}).stored.res_id)
    repo.run(lambda tx: tx.create("ServiceRequest", {
        **SR, "identifier": [], "subject": {"reference": f"Patient/{pat}"},
        "performer": [{"reference": f"Organization/{org}"}]}))
    with respx.mock:
        respx.post(PARTNER).mock(return_value=httpx.Response(400, json={
            "resourceType": "OperationOutcome", "issue": [{"severity": "error",
                                                           "code": "invalid",
                                                           "diagnostics": "nope"}]}))
        worker.run_once()
    db = str(repo.engine.url)
    runner = CliRunner()
    r = runner.invoke(app, ["outbox", "list", "--json", "--database", db])
    assert r.exit_code == 0, r.output
    row = json.loads(r.output)[0]
    assert row["status"] == "dead"
    r = runner.invoke(app, ["outbox", "show", str(row["id"]), "--database", db])
    assert json.loads(r.output)["outcome"]["issue"][0]["diagnostics"] == "nope"
    r = runner.invoke(app, ["partners", "list", "--json", "--database", db])
    assert json.loads(r.output)[0]["key"] == "p1" and json.loads(r.output)[0]["failed"] == 1

    api = FastAPI()
    api.include_router(router(repo, worker))
    c = TestClient(api)
    assert c.get("/admin/metrics").json()["partners"]["p1"]["failed"] == 1
    assert c.get(f"/admin/outbox/{row['id']}").json()["status"] == "dead"
    assert c.post(f"/admin/outbox/{row['id']}/retry").json()["status"] == "pending"
    assert c.post(f"/admin/outbox/{row['id']}/discard").json()["status"] == "discarded"
    assert c.get("/admin/outbox?status=discarded").json()[0]["id"] == row["id"]
    assert c.get("/admin/partners").json()[0]["protocol"] == "rest"
    r = runner.invoke(app, ["outbox", "retry", str(row["id"]), "--database", db])
    assert r.exit_code == 0 and "1 row" in r.output
