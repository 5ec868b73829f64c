"""Custom SearchParameters: checked on write, live at once, old data reindexed."""
import time

FJ = {"Content-Type": "application/fhir+json"}

SP = {"resourceType": "SearchParameter", "url": "http://fhirgw.dev/fhir/SearchParameter/episode-team",
      "name": "care-manager-team", "status": "active", "description": "IOP team of an episode",
      "code": "iop-team", "base": ["EpisodeOfCare"], "type": "string",
      "expression": "EpisodeOfCare.extension('http://fhirgw.dev/ext/iop-team').value"}


def episode(team):
    return {"resourceType": "EpisodeOfCare", "status": "active",
            "patient": {"reference": "Patient/p1"},
            "extension": [{"url": "http://fhirgw.dev/ext/iop-team", "valueString": team}]}


def _wait_reindexed(client, location, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = client.get(location.replace("http://testserver", ""))
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 202 and "X-Progress" in r.headers
        time.sleep(0.05)
    raise AssertionError("reindex did not finish")


def test_custom_parameter_finds_old_and_new_data(client):
    old = client.post("/fhir/EpisodeOfCare", json=episode("Harbor"), headers=FJ).json()
    # before the parameter exists it is unknown: strict search refuses it
    r = client.get("/fhir/EpisodeOfCare?iop-team=harbor", headers={"Prefer": "handling=strict"})
    assert r.status_code == 400
    assert client.post("/fhir/SearchParameter", json=SP, headers=FJ).status_code == 201
    new = client.post("/fhir/EpisodeOfCare", json=episode("Harbor"), headers=FJ).json()
    # the automatic reindex finishes in the background; then both are found
    deadline = time.time() + 20
    while True:
        b = client.get("/fhir/EpisodeOfCare?iop-team=harbor", headers={"Prefer": "handling=strict"}).json()
        ids = {e["resource"]["id"] for e in b.get("entry", []) if e["search"]["mode"] == "match"}
        if ids == {old["id"], new["id"]}:
            break
        assert new["id"] in ids  # new writes are indexed at once
        assert time.time() < deadline, b
        time.sleep(0.05)
    cs = client.get("/fhir/metadata").json()
    eoc = next(r for r in cs["rest"][0]["resource"] if r["type"] == "EpisodeOfCare")
    assert {"name": "iop-team", "definition": SP["url"], "type": "string"} in eoc["searchParam"]


def test_explicit_reindex_reports_progress(client):
    for i in range(3):
        client.post("/fhir/EpisodeOfCare", json=episode(f"T{i}"), headers=FJ)
    r = client.post("/fhir/EpisodeOfCare/$reindex")
    assert r.status_code == 202
    status = _wait_reindexed(client, r.headers["content-location"])
    params = {p["name"]: list(p.values())[1] for p in status["parameter"]}
    assert params["status"] == "completed"
    assert params["processed"] == params["total"] == 3


def test_bad_search_parameter_is_refused(client):
    bad = dict(SP, expression="EpisodeOfCare.extension(")
    r = client.post("/fhir/SearchParameter", json=bad, headers=FJ)
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["SearchParameter.expression"]
    assert client.get("/fhir/SearchParameter/_history").json()["total"] == 0


def test_deleting_the_parameter_removes_it(client):
    sp = client.post("/fhir/SearchParameter", json=SP, headers=FJ).json()
    assert client.get("/fhir/EpisodeOfCare?iop-team=x",
                      headers={"Prefer": "handling=strict"}).status_code == 200
    client.delete(f"/fhir/SearchParameter/{sp['id']}")
    assert client.get("/fhir/EpisodeOfCare?iop-team=x",
                      headers={"Prefer": "handling=strict"}).status_code == 400


def test_unknown_reindex_job_is_404(client):
    assert client.get("/fhir/$reindex-status/nope").status_code == 404
