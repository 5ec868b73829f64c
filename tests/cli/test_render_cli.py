import json

import httpx
import pytest
from typer.testing import CliRunner

from fhirgw.cli import app
from tests.auth import bearer, grant, token_for
from tests.integration.conftest import bind_free_port, start_server

app_cli = app

runner = CliRunner()


def test_render_a_document_file(tmp_path):
    doc = {"resourceType": "Bundle", "type": "document", "entry": [
        {"fullUrl": "urn:uuid:c", "resource": {
            "resourceType": "Composition", "status": "final", "title": "Discharge summary",
            "type": {"coding": [{"system": "http://loinc.org", "code": "18842-5"}]},
            "date": "2026-04-10", "author": [{"display": "IOP"}],
            "subject": {"reference": "urn:uuid:p"},
            "section": [{"title": "Discharge instructions",
                         "text": {"status": "generated",
                                  "div": '<div xmlns="http://www.w3.org/1999/xhtml">Call 988 in a crisis<script>x</script></div>'}}]}},
        {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "name": [{"family": "Reyes", "given": ["Jo"]}]}}]}
    f = tmp_path / "doc.json"
    f.write_text(json.dumps(doc))
    out = tmp_path / "doc.html"
    r = runner.invoke(app, ["render", str(f), "--out", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert "Discharge instructions" in page and "Call 988 in a crisis" in page
    assert "<script>" not in page


def test_render_refuses_what_is_not_a_document(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": []}))
    r = runner.invoke(app, ["render", str(f)])
    assert r.exit_code == 1 and "Not a FHIR document" in r.output


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A live gateway (auth on) holding a Composition; (base, app, composition id)."""
    from fhirgw.app import create_app
    from fhirgw.config import Settings

    sock = bind_free_port()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path_factory.mktemp('r')}/r.db",
                              base_url=base, worker=False))
    stop = start_server(app, sock)
    try:
        token = token_for(base, *grant(app))
        h = {**bearer(token), "Content-Type": "application/fhir+json"}
        pat = httpx.post(f"{base}/Patient", headers=h, json={
            "resourceType": "Patient", "name": [{"family": "Reyes", "given": ["Jo"]}]}).json()
        comp = httpx.post(f"{base}/Composition", headers=h, json={
            "resourceType": "Composition", "status": "final", "title": "Discharge summary",
            "type": {"coding": [{"system": "http://loinc.org", "code": "18842-5"}]},
            "date": "2026-04-10", "author": [{"display": "IOP"}],
            "subject": {"reference": f"Patient/{pat['id']}"},
            "section": [{"title": "Discharge instructions", "text": {
                "status": "generated",
                "div": '<div xmlns="http://www.w3.org/1999/xhtml">Call 988 in a crisis</div>'}}]})
        assert comp.status_code == 201, comp.text
        yield base, app, comp.json()["id"]
    finally:
        stop()
        app.state.router.repo.engine.dispose()


@pytest.fixture
def no_credentials(monkeypatch):
    for name in ("FHIRGW_TOKEN", "FHIRGW_TOKEN_URL", "FHIRGW_CLIENT_ID", "FHIRGW_CLIENT_SECRET",
                 "FHIRGW_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_render_from_the_gateway_with_a_token(live, no_credentials):
    base, app, comp_id = live
    token = token_for(base, *grant(app, "system/*.rs"))
    r = runner.invoke(app_cli, ["render", comp_id, "--url", base, "--token", token])
    assert r.exit_code == 0, r.output
    assert "Call 988 in a crisis" in r.output and "Reyes" in r.output
    no_credentials.setenv("FHIRGW_TOKEN", token)
    assert runner.invoke(app_cli, ["render", comp_id, "--url", base]).exit_code == 0


def test_render_from_the_gateway_with_client_credentials(live, no_credentials):
    base, app, comp_id = live
    cid, secret = grant(app, "system/*.rs")
    no_credentials.setenv("FHIRGW_CLIENT_ID", cid)
    no_credentials.setenv("FHIRGW_CLIENT_SECRET", secret)
    r = runner.invoke(app_cli, ["render", comp_id, "--url", base])
    assert r.exit_code == 0, r.output
    assert "Call 988 in a crisis" in r.output


def test_render_from_the_gateway_without_credentials_fails(live, no_credentials):
    base, _app, comp_id = live
    r = runner.invoke(app_cli, ["render", comp_id, "--url", base])
    assert r.exit_code != 0 and "401" in r.output
    r = runner.invoke(app_cli, ["render", comp_id, "--url", base, "--token", "garbage"])
    assert r.exit_code != 0 and "401" in r.output
    no_credentials.setenv("FHIRGW_CLIENT_ID", "nobody")
    no_credentials.setenv("FHIRGW_CLIENT_SECRET", "wrong")
    r = runner.invoke(app_cli, ["render", comp_id, "--url", base])
    assert r.exit_code == 1 and r.output.startswith("error: ") and "invalid_client" in r.output
