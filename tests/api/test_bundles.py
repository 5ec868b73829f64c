"""Transaction and batch Bundles."""
from tests.api.conftest import patient

FJ = {"Content-Type": "application/fhir+json"}


def tx(*entries, type="transaction"):
    return {"resourceType": "Bundle", "type": type, "entry": list(entries)}


def post(resource, full_url=None, **request):
    e = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"],
                                           **request}}
    if full_url:
        e["fullUrl"] = full_url
    return e


P_URN = "urn:uuid:0d2e5b44-1b1e-4c1e-9a55-6a1f3c7a3a01"


def episode(ref):
    return {"resourceType": "EpisodeOfCare", "status": "active", "patient": {"reference": ref},
            "extension": [{"url": "http://example.org/iop-source", "valueUri": ref}],
            "text": {"status": "generated",
                     "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><a href="{ref}">client</a></div>'}}


def test_transaction_resolves_urn_uuid_everywhere(client):
    b = tx(post(patient(mrn="T-1"), P_URN), post(episode(P_URN)))
    r = client.post("/fhir", json=b, headers=FJ)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    assert [e["response"]["status"] for e in out["entry"]] == ["201 Created", "201 Created"]
    pid = out["entry"][0]["resource"]["id"]
    eoc_loc = out["entry"][1]["response"]["location"]
    eoc = client.get("/fhir/" + eoc_loc.split("/_history")[0]).json()
    assert eoc["patient"]["reference"] == f"Patient/{pid}"
    assert eoc["extension"][0]["valueUri"] == f"Patient/{pid}"
    assert f'href="Patient/{pid}"' in eoc["text"]["div"]


def test_transaction_is_atomic(client):
    bad = patient()
    bad["birthDate"] = "soon"
    b = tx(post(patient(mrn="T-2")), post(bad))
    r = client.post("/fhir", json=b, headers=FJ)
    assert r.status_code == 400
    issue = r.json()["issue"][0]
    assert "Bundle.entry[1]" in issue["diagnostics"]
    assert issue["expression"] == ["Bundle.entry[1].resource.birthDate"]
    assert client.get("/fhir/Patient/_history").json()["total"] == 0


def test_transaction_failure_in_db_phase_rolls_back(client):
    created = client.post("/fhir/Patient", json=patient(), headers=FJ).json()
    b = tx(post(patient(mrn="T-3")),
           {"resource": dict(created, gender="male"),
            "request": {"method": "PUT", "url": f"Patient/{created['id']}", "ifMatch": 'W/"7"'}})
    r = client.post("/fhir", json=b, headers=FJ)
    assert r.status_code == 412
    assert "Bundle.entry[1]" in r.json()["issue"][0]["diagnostics"]
    assert client.get("/fhir/Patient/_history").json()["total"] == 1


def test_transaction_conditional_create_and_reference(client):
    existing = client.post("/fhir/Patient", json=patient(mrn="T-4"), headers=FJ).json()
    b = tx(post(patient(mrn="T-4"), P_URN, ifNoneExist="identifier=urn:iop:mrn|T-4"),
           post(episode(P_URN)),
           post(episode("Patient?identifier=urn:iop:mrn|T-4")))
    r = client.post("/fhir", json=b, headers=FJ)
    assert r.status_code == 200, r.text
    out = r.json()["entry"]
    assert out[0]["response"]["status"] == "200 OK"
    for e in out[1:]:
        assert e["resource"]["patient"]["reference"] == f"Patient/{existing['id']}"
    # a conditional reference matching nothing fails the transaction
    r = client.post("/fhir", json=tx(post(episode("Patient?identifier=urn:iop:mrn|none"))),
                    headers=FJ)
    assert r.status_code == 404
    assert "Bundle.entry[0]" in r.json()["issue"][0]["diagnostics"]


def test_transaction_order_delete_post_put_get(client):
    victim = client.post("/fhir/Patient", json=patient(mrn="V"), headers=FJ).json()
    b = tx({"request": {"method": "GET", "url": "Patient?identifier=urn:iop:mrn|T-5"}},
           {"resource": patient(id="put-me", mrn="T-5"),
            "request": {"method": "PUT", "url": "Patient/put-me"}},
           post(patient(mrn="T-5")),
           {"request": {"method": "DELETE", "url": f"Patient/{victim['id']}"}})
    r = client.post("/fhir", json=b, headers=FJ)
    assert r.status_code == 200, r.text
    out = r.json()["entry"]
    # GET ran last: it sees both new patients
    assert out[0]["resource"]["type"] == "searchset"
    assert len(out[0]["resource"]["entry"]) == 2
    assert out[1]["response"]["status"] == "201 Created"
    assert out[3]["response"]["status"] == "204 No Content"
    assert client.get(f"/fhir/Patient/{victim['id']}").status_code == 410


def test_transaction_touching_one_resource_twice_is_400(client):
    b = tx({"resource": patient(id="x1"), "request": {"method": "PUT", "url": "Patient/x1"}},
           {"resource": patient(id="x1"), "request": {"method": "PUT", "url": "Patient/x1"}})
    assert client.post("/fhir", json=b, headers=FJ).status_code == 400


def test_bundle_entry_limit(client):
    b = tx(*[post(patient()) for _ in range(51)])
    r = client.post("/fhir", json=b, headers=FJ)
    assert r.status_code == 413
    assert client.get("/fhir/Patient/_history").json()["total"] == 0


def test_bundle_must_be_batch_or_transaction(client):
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "collection"}, headers=FJ)
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Bundle.type"]


def test_batch_entries_are_independent(client):
    bad = patient()
    bad["gender"] = 12
    b = tx(post(patient(mrn="B-1")), post(bad),
           {"request": {"method": "GET", "url": "Patient/none"}},
           {"request": {"method": "GET", "url": "metadata"}},
           {"request": {"url": "Patient"}}, type="batch")
    r = client.post("/fhir", json=b, headers=FJ)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "batch-response"
    st = [e["response"]["status"] for e in out["entry"]]
    assert st[0] == "201 Created"
    assert st[1].startswith("400")
    assert out["entry"][1]["response"]["outcome"]["issue"][0]["expression"] == ["Patient.gender"]
    assert st[2].startswith("404")
    assert st[3] == "200 OK"
    assert st[4].startswith("400")
    assert client.get("/fhir/Patient/_history").json()["total"] == 1


def test_transaction_keeps_decimal_precision(client):
    raw = (b'{"resourceType":"Bundle","type":"transaction","entry":[{"resource":'
           b'{"resourceType":"Observation","status":"final","code":{"text":"weight"},'
           b'"valueQuantity":{"value":72.50,"unit":"kg"}},"request":{"method":"POST",'
           b'"url":"Observation"}}]}')
    r = client.post("/fhir", content=raw, headers=FJ)
    assert r.status_code == 200, r.text
    assert b'"value":72.50' in r.content
    loc = r.json()["entry"][0]["response"]["location"].split("/_history")[0]
    assert b'"value":72.50' in client.get(f"/fhir/{loc}").content


def test_transaction_delete_of_unknown_is_ok(client):
    b = tx({"request": {"method": "DELETE", "url": "Patient/never-was"}})
    r = client.post("/fhir", json=b, headers=FJ)
    assert r.status_code == 200
    assert r.json()["entry"][0]["response"]["status"] == "204 No Content"


def test_entry_urls_may_be_absolute_on_this_servers_base(client):
    """request.url as an absolute URL on the server's base (http://testserver/fhir) names
    the same interaction as the relative one; another server's URL is refused (400, at
    the entry's request.url), in a transaction as in a batch."""
    created = client.post("/fhir/Patient", json=patient(mrn="ABS-0"), headers=FJ).json()
    b = tx({"resource": patient(mrn="ABS-1"),
            "request": {"method": "POST", "url": "http://testserver/fhir/Patient"}},
           {"resource": dict(created, gender="male"),
            "request": {"method": "PUT", "url": f"http://testserver/fhir/Patient/{created['id']}"}})
    r = client.post("/fhir", json=b, headers=FJ)
    assert r.status_code == 200, r.text
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["201 Created", "200 OK"]
    assert client.get(f"/fhir/Patient/{created['id']}").json()["gender"] == "male"
    for url in ("http://elsewhere.example/fhir/Patient", "http://testserver/other/Patient",
                "//elsewhere.example/fhir/Patient"):
        other = tx({"resource": patient(mrn="ABS-2"), "request": {"method": "POST", "url": url}})
        r = client.post("/fhir", json=other, headers=FJ)
        assert r.status_code == 400, (url, r.text)
        issue = r.json()["issue"][0]
        assert issue["expression"] == ["Bundle.entry[0].request.url"]
        assert "not on this server" in issue["diagnostics"]
        other["type"] = "batch"
        r = client.post("/fhir", json=other, headers=FJ)
        assert r.json()["entry"][0]["response"]["status"].startswith("400")
    assert client.get("/fhir/Patient", params={"identifier": "urn:iop:mrn|ABS-2"}).json()[
        "total"] == 0
