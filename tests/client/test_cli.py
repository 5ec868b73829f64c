"""The data commands against a live gateway: import -> export round trip, resume, get,
search, demo, and one-line errors.

The commands authenticate as an API client would: $FHIRGW_CLIENT_ID / $FHIRGW_CLIENT_SECRET
(tokens from the gateway's /auth/token), or ``--token`` / $FHIRGW_TOKEN."""
from __future__ import annotations

import json
import uuid

import pytest
from typer.testing import CliRunner

from fhirgw.cli import app
from tests.auth import token_for

runner = CliRunner()


@pytest.fixture(autouse=True)
def api_client(monkeypatch, admin_credentials):
    """The gateway's admin client, in the environment the commands read it from."""
    monkeypatch.delenv("FHIRGW_TOKEN", raising=False)
    monkeypatch.delenv("FHIRGW_TOKEN_URL", raising=False)
    monkeypatch.setenv("FHIRGW_CLIENT_ID", admin_credentials[0])
    monkeypatch.setenv("FHIRGW_CLIENT_SECRET", admin_credentials[1])
    return admin_credentials


def run(*args, ok=True):
    result = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def files(tmp_path):
    tag = uuid.uuid4().hex[:10]
    ids = [f"{tag}-p{i}" for i in range(5)]
    lines = [json.dumps({"resourceType": "Patient", "id": pid, "name": [{"family": f"Ndjson{i}"}],
                         "meta": {"tag": [{"system": "urn:cli", "code": tag}]}})
             for i, pid in enumerate(ids)]
    lines.append('{"resourceType": "Observation", "id": "%s-o1", "status": "final", '
                 '"code": {"text": "weight"}, "subject": {"reference": "Patient/%s"}, '
                 '"valueQuantity": {"value": 72.50, "unit": "kg"}, '
                 '"meta": {"tag": [{"system": "urn:cli", "code": "%s"}]}}' % (tag, ids[0], tag))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "patients.ndjson").write_text("\n".join(lines) + "\n")
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111",
         "resource": {"resourceType": "Organization", "name": f"Org {tag}",
                      "meta": {"tag": [{"system": "urn:cli", "code": tag}]}}},
        {"resource": {"resourceType": "Practitioner", "name": [{"family": "Chen"}],
                      "meta": {"tag": [{"system": "urn:cli", "code": tag}]}}}]}
    (tmp_path / "data" / "org.json").write_text(json.dumps(bundle))
    return tmp_path, tag, ids


def test_import_export_round_trip_and_resume(gateway, files):
    tmp, tag, ids = files
    state = tmp / "state.json"
    out = run("import", tmp / "data", "--url", gateway, "--state", state, "--batch-size", 4, "-q")
    assert "imported 8 resource(s) from 2 file(s), 0 failed" in out.output
    assert json.loads(state.read_text())
    again = run("import", tmp / "data", "--url", gateway, "--state", state, "-q")
    assert "2 file(s) already imported" in again.output
    assert "imported 0 resource(s)" in again.output

    export = tmp / "out.ndjson"
    run("export", "--type", "Patient,Observation", "--type", "Organization", "--url", gateway,
        "--out", export)
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    mine = [r for r in lines if any(t.get("code") == tag for t in r["meta"].get("tag", []))]
    assert sorted(r["id"] for r in mine if r["resourceType"] == "Patient") == sorted(ids)
    assert {r["resourceType"] for r in mine} == {"Patient", "Observation", "Organization"}
    assert '"value":72.50' in export.read_text()          # decimals keep their text
    # the exported file imports again (PUT with the same ids: new versions, same resources)
    run("import", export, "--url", gateway, "--state", state, "-q")
    # stdout and --since
    result = run("export", "--type", "Observation", "--since", "2000-01-01", "--url", gateway)
    assert f'"{tag}-o1"' in result.stdout
    result = run("export", "--type", "Observation", "--since", "2999-01-01", "--url", gateway)
    assert f'"{tag}-o1"' not in result.stdout


def test_import_resumes_a_partly_done_file(gateway, files):
    tmp, tag, ids = files
    from fhirgw.cli_data import ImportState

    file = tmp / "data" / "patients.ndjson"
    state = ImportState(tmp / "state.json", gateway)
    state.record(file, 4)                                  # pretend a crash after 4 lines
    out = run("import", file, "--url", gateway, "--state", tmp / "state.json", "-q")
    assert "imported 2 resource(s)" in out.output


def test_import_reports_bad_entries(gateway, tmp_path):
    f = tmp_path / "bad.ndjson"
    f.write_text('{"resourceType": "Patient", "birthDate": "yesterday"}\nnot json\n')
    out = run("import", f, "--url", gateway, "--state", tmp_path / "s.json", "-q", ok=False)
    assert out.exit_code == 1
    assert "2 failed" in out.output and "Traceback" not in out.output


def test_get_and_search(gateway, files):
    tmp, tag, ids = files
    run("import", tmp / "data", "--url", gateway, "--state", tmp / "s.json", "-q")
    got = run("get", f"Patient/{ids[0]}", "--url", gateway)
    assert json.loads(got.stdout)["id"] == ids[0]
    assert json.loads(run("get", f"Patient/{ids[0]}/_history/1", "--url", gateway).stdout)["id"] == ids[0]
    table = run("search", "Patient", f"_tag=urn:cli|{tag}&_sort=family", "--url", gateway)
    assert "Ndjson0" in table.stdout and "5 of 5" in table.stdout
    nd = run("search", "Patient", f"_tag=urn:cli|{tag}", "--json", "-n", "2", "--url", gateway)
    assert len(nd.stdout.splitlines()) == 2


def test_errors_are_one_line(gateway, tmp_path):
    for args in (["get", "Patient/does-not-exist"], ["search", "NoSuchType"],
                 ["import", tmp_path / "missing.json"], ["search", "Patient", "birthdate=bad"]):
        result = run(*args, "--url", gateway, ok=False)
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error: ")
    down = run("get", "Patient/1", "--url", "http://127.0.0.1:9/fhir", ok=False)
    assert down.exit_code == 1 and down.output.startswith("error: ")


def test_demo_loads_a_realistic_iop(gateway, auth):
    from fhir.resources.R4B.episodeofcare import EpisodeOfCare
    from fhir.resources.R4B.task import Task

    from fhirgw.client import Client

    out = run("demo", "--url", gateway)
    assert "Observation" in out.stdout
    assert "already loaded" in run("demo", "--url", gateway).output
    with Client(gateway, auth=auth) as c:
        assert c.search("Condition").where(code="http://hl7.org/fhir/sid/icd-10-cm|F10.20").count() >= 2
        assert c.search("Observation").where(code="http://loinc.org|44261-6").count() >= 32
        assert c.search(EpisodeOfCare).where(status="finished").count() >= 1
        statuses = {t.status for t in c.search(Task).where(code="fulfill")}
        assert {"requested", "accepted", "in-progress", "rejected"} <= statuses
        group = c.search("Appointment").where(service_type="90853").first()
        assert group is not None and len(group.participant) == 9


def test_token_option_and_env(gateway, files, api_client, monkeypatch):
    tmp, _tag, ids = files
    run("import", tmp / "data", "--url", gateway, "--state", tmp / "s.json", "-q")
    token = token_for(gateway, *api_client)
    monkeypatch.delenv("FHIRGW_CLIENT_ID")
    monkeypatch.delenv("FHIRGW_CLIENT_SECRET")
    got = run("get", f"Patient/{ids[0]}", "--url", gateway, "--token", token)
    assert json.loads(got.stdout)["id"] == ids[0]
    monkeypatch.setenv("FHIRGW_TOKEN", token)
    assert json.loads(run("get", f"Patient/{ids[0]}", "--url", gateway).stdout)["id"] == ids[0]


def test_missing_or_wrong_credentials_are_one_line_errors(gateway, monkeypatch):
    monkeypatch.delenv("FHIRGW_CLIENT_SECRET")
    half = run("get", "Patient/x", "--url", gateway, ok=False)
    assert half.exit_code == 1 and half.output.startswith("error: ")
    assert "FHIRGW_CLIENT_SECRET" in half.output

    monkeypatch.delenv("FHIRGW_CLIENT_ID")
    none = run("get", "Patient/x", "--url", gateway, ok=False)
    assert none.exit_code == 1
    assert none.output.startswith("error: 401") and len(none.output.strip().splitlines()) == 1

    monkeypatch.setenv("FHIRGW_CLIENT_ID", "no-such-client")
    monkeypatch.setenv("FHIRGW_CLIENT_SECRET", "wrong")
    refused = run("get", "Patient/x", "--url", gateway, ok=False)
    assert refused.exit_code == 1 and refused.output.startswith("error: ")
    assert "invalid_client" in refused.output and "Traceback" not in refused.output

    bad_token = run("get", "Patient/x", "--url", gateway, "--token", "garbage", ok=False)
    assert bad_token.exit_code == 1 and bad_token.output.startswith("error: 401")
