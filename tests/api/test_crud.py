"""The FHIR R4 instance and type interactions over HTTP, on SQLite and PostgreSQL."""
from tests.api.conftest import patient

FJ = {"Content-Type": "application/fhir+json"}


def test_create_assigns_id_and_version(client):
    r = client.post("/fhir/Patient", json=patient(id="client-chosen"), headers=FJ)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"] != "client-chosen"
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("+00:00")
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["location"] == f"http://testserver/fhir/Patient/{body['id']}/_history/1"
    assert r.headers["content-type"].startswith("application/fhir+json")


def test_read_returns_stored_json_bytes(client):
    obs = {"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}]},
           "valueQuantity": {"value": 72.50, "unit": "kg"}}
    raw = (b'{"resourceType":"Observation","status":"final","code":{"coding":[{"system":'
           b'"http://loinc.org","code":"44261-6"}]},"valueQuantity":{"value":72.50,"unit":"kg"}}')
    r = client.post("/fhir/Observation", content=raw, headers=FJ)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    got = client.get(f"/fhir/Observation/{rid}")
    assert got.status_code == 200
    assert b'"value":72.50' in got.content  # decimal precision kept
    assert got.json()["code"] == obs["code"]


def test_read_unknown_is_404_outcome(client):
    r = client.get("/fhir/Patient/nope")
    assert r.status_code == 404
    oo = r.json()
    assert oo["resourceType"] == "OperationOutcome"
    assert oo["issue"][0]["code"] == "not-found"


def test_unknown_type_is_404(client):
    r = client.get("/fhir/Spaceship/1")
    assert r.status_code == 404
    assert "Spaceship" in r.json()["issue"][0]["diagnostics"]


def test_invalid_resource_is_400_with_expression_and_nothing_stored(client):
    bad = patient()
    bad["birthDate"] = "02/04/1990"
    bad["name"][0]["nickname"] = "x"
    r = client.post("/fhir/Patient", json=bad, headers=FJ)
    assert r.status_code == 400
    exprs = [e for i in r.json()["issue"] for e in i.get("expression", [])]
    assert "Patient.birthDate" in exprs
    assert "Patient.name[0].nickname" in exprs
    hist = client.get("/fhir/Patient/_history").json()
    assert hist["total"] == 0


def test_malformed_json_is_400(client):
    r = client.post("/fhir/Patient", content=b'{"resourceType": "Patient",', headers=FJ)
    assert r.status_code == 400
    assert "JSON" in r.json()["issue"][0]["diagnostics"]


def test_type_mismatch_is_400(client):
    r = client.post("/fhir/Observation", json=patient(), headers=FJ)
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["resourceType"]


def test_update_and_vread_and_history(client):
    created = client.post("/fhir/Patient", json=patient(), headers=FJ).json()
    pid = created["id"]
    upd = dict(created, gender="female")
    r = client.put(f"/fhir/Patient/{pid}", json=upd, headers=FJ)
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["versionId"] == "2"
    assert r.headers["etag"] == 'W/"2"'
    v1 = client.get(f"/fhir/Patient/{pid}/_history/1").json()
    assert "gender" not in v1 and v1["meta"]["versionId"] == "1"
    assert client.get(f"/fhir/Patient/{pid}/_history/9").status_code == 404
    hist = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert hist["type"] == "history" and hist["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in hist["entry"]] == ["2", "1"]
    assert hist["entry"][1]["request"] == {"method": "POST", "url": "Patient"}


def test_update_as_create_with_client_id(client):
    r = client.put("/fhir/Patient/iop-client-7", json=patient(id="iop-client-7"), headers=FJ)
    assert r.status_code == 201
    assert r.json()["id"] == "iop-client-7"
    assert client.get("/fhir/Patient/iop-client-7").status_code == 200


def test_update_id_mismatch_and_missing_id(client):
    r = client.put("/fhir/Patient/a", json=patient(id="b"), headers=FJ)
    assert r.status_code == 400
    r = client.put("/fhir/Patient/a", json=patient(), headers=FJ)
    assert r.status_code == 400
    assert client.get("/fhir/Patient/a").status_code == 404


def test_if_match_optimistic_locking(client):
    created = client.post("/fhir/Patient", json=patient(), headers=FJ).json()
    pid = created["id"]
    ok = client.put(f"/fhir/Patient/{pid}", json=dict(created, gender="male"),
                    headers={**FJ, "If-Match": 'W/"1"'})
    assert ok.status_code == 200
    stale = client.put(f"/fhir/Patient/{pid}", json=dict(created, gender="other"),
                       headers={**FJ, "If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert client.get(f"/fhir/Patient/{pid}").json()["gender"] == "male"


def test_delete_then_gone_and_history_keeps_it(client):
    pid = client.post("/fhir/Patient", json=patient(), headers=FJ).json()["id"]
    r = client.delete(f"/fhir/Patient/{pid}")
    assert r.status_code == 204
    g = client.get(f"/fhir/Patient/{pid}")
    assert g.status_code == 410
    assert g.json()["issue"][0]["code"] == "deleted"
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 204  # idempotent
    hist = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert hist["total"] == 2
    assert hist["entry"][0]["request"]["method"] == "DELETE"
    assert "resource" not in hist["entry"][0]
    # update after delete brings it back as a new version
    again = client.put(f"/fhir/Patient/{pid}", json=patient(id=pid), headers=FJ)
    assert again.status_code == 201
    assert again.json()["meta"]["versionId"] == "3"


def test_delete_unknown_is_404(client):
    assert client.delete("/fhir/Patient/never").status_code == 404


def test_patch_json_patch(client):
    created = client.post("/fhir/Patient", json=patient(), headers=FJ).json()
    pid = created["id"]
    ops = [{"op": "replace", "path": "/name/0/family", "value": "Reyes"},
           {"op": "add", "path": "/gender", "value": "female"}]
    r = client.patch(f"/fhir/Patient/{pid}", json=ops,
                     headers={"Content-Type": "application/json-patch+json", "If-Match": 'W/"1"'})
    assert r.status_code == 200, r.text
    assert r.json()["name"][0]["family"] == "Reyes"
    assert r.json()["meta"]["versionId"] == "2"
    # a patch that makes the resource invalid is refused and stores nothing
    bad = [{"op": "replace", "path": "/birthDate", "value": "not-a-date"}]
    r = client.patch(f"/fhir/Patient/{pid}", json=bad,
                     headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Patient.birthDate"]
    assert client.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "2"
    # failing test op -> 422
    r = client.patch(f"/fhir/Patient/{pid}", json=[{"op": "test", "path": "/gender", "value": "male"}],
                     headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 422


def test_prefer_return(client):
    r = client.post("/fhir/Patient", json=patient(),
                    headers={**FJ, "Prefer": "return=minimal"})
    assert r.status_code == 201 and r.content == b""
    assert r.headers["location"]
    r = client.post("/fhir/Patient", json=patient(),
                    headers={**FJ, "Prefer": "return=OperationOutcome"})
    assert r.json()["resourceType"] == "OperationOutcome"
    assert r.json()["issue"][0]["severity"] == "information"


def test_xml_is_refused(client):
    assert client.get("/fhir/metadata?_format=xml").status_code == 406
    r = client.get("/fhir/metadata", headers={"Accept": "application/fhir+xml"})
    assert r.status_code == 406
    assert r.json()["resourceType"] == "OperationOutcome"
    r = client.post("/fhir/Patient", content=b"<Patient/>",
                    headers={"Content-Type": "application/fhir+xml"})
    assert r.status_code == 415


def test_method_not_allowed(client):
    r = client.post("/fhir/Patient/abc", json=patient(), headers=FJ)
    assert r.status_code == 405
    assert "allowed" in r.json()["issue"][0]["diagnostics"]


def test_routes_answer_alike_when_remembered(client):
    """Router.match remembers paths it matched: the second answer is the first (errors
    included), and a caller changing the path variables it got changes nothing after."""
    from fhirgw.model.errors import FhirError
    from fhirgw.rest.router import Router
    router = Router.__new__(Router)   # matching needs none of its state
    for path in ("Patient/abc/_history/2", "Patient", "Patient/abc", "Nope/abc", "Patient/$x"):
        for method in ("GET", "POST", "HEAD"):
            answers = []
            for _ in range(2):
                try:
                    name, params = router.match(method, path)
                    answers.append((name, dict(params)))
                    params["id"] = "changed"
                except FhirError as exc:
                    answers.append((type(exc).__name__, exc.status, str(exc)))
            assert answers[0] == answers[1], (method, path)
    assert router.match("GET", "/Patient/abc/_history/2/") == (
        "vread", {"type": "Patient", "id": "abc", "vid": "2"})


def test_metadata_lists_every_type(client):
    cs = client.get("/fhir/metadata").json()
    assert cs["fhirVersion"] == "4.0.1"
    types = {r["type"] for r in cs["rest"][0]["resource"]}
    assert {"Patient", "EpisodeOfCare", "CarePlan", "Task", "MedicationStatement"} <= types
    assert len(types) == 128
    patient_res = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Patient")
    codes = {i["code"] for i in patient_res["interaction"]}
    assert {"read", "vread", "update", "patch", "delete", "create", "search-type",
            "history-instance", "history-type"} <= codes
    assert any(p["name"] == "identifier" for p in patient_res["searchParam"])
    sys_codes = {i["code"] for i in cs["rest"][0]["interaction"]}
    assert {"transaction", "batch", "history-system", "search-system"} <= sys_codes


def test_history_type_system_since_and_paging(client):
    before = client.get("/fhir/_history").json()["total"]  # what the server publishes itself
    ids = [client.post("/fhir/Patient", json=patient(given=f"G{i}"), headers=FJ).json()
           for i in range(5)]
    client.post("/fhir/Observation", json={"resourceType": "Observation", "status": "final",
                                          "code": {"text": "x"}}, headers=FJ)
    t = client.get("/fhir/Patient/_history?_count=2").json()
    assert t["total"] == 5 and len(t["entry"]) == 2
    nxt = next(l["url"] for l in t["link"] if l["relation"] == "next")
    seen = [e["resource"]["id"] for e in t["entry"]]
    while nxt:
        page = client.get(nxt.replace("http://testserver", "")).json()
        seen += [e["resource"]["id"] for e in page["entry"]]
        nxt = next((l["url"] for l in page["link"] if l["relation"] == "next"), None)
    assert sorted(seen) == sorted(p["id"] for p in ids)
    s = client.get("/fhir/_history").json()
    assert s["total"] == before + 6
    since = ids[3]["meta"]["lastUpdated"]
    r = client.get("/fhir/Patient/_history", params={"_since": since}).json()
    assert r["total"] == 2
    assert client.get("/fhir/_history?_since=yesterday").status_code == 400


def test_health_endpoints(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready"
    assert ready["validationWorkers"] in ("off", "idle", "starting", "ready")


def test_openapi_lists_each_type_with_its_schema(client):
    doc = client.get("/openapi.json").json()
    assert "/fhir/Patient/{id}" in doc["paths"]
    assert "/fhir/CarePlan" in doc["paths"]
    create = doc["paths"]["/fhir/Patient"]["post"]
    ref = create["requestBody"]["content"]["application/fhir+json"]["schema"]["$ref"]
    assert ref.rsplit("/", 1)[-1] in doc["components"]["schemas"]
    names = {p["name"] for p in doc["paths"]["/fhir/Patient"]["get"]["parameters"]}
    assert "identifier" in names


def test_fhir_routes_are_tried_first_and_discovery_still_answers(client):
    paths = [getattr(r, "path", "") for r in client.app.router.routes]
    assert paths[:3] == ["/fhir/.well-known/smart-configuration", "/fhir", "/fhir/{path:path}"]
    for url in ("/fhir/.well-known/smart-configuration", "/.well-known/smart-configuration"):
        r = client.get(url)
        assert r.status_code == 200 and r.json()["token_endpoint"].endswith("/auth/token")
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}
