"""Search over HTTP: the REST layer around the engine (links, _type, compartments, POST)."""
FJ = {"Content-Type": "application/fhir+json"}
TAG = {"tag": [{"system": "urn:t", "code": "a"}]}


def seed(client):
    pats = [client.post("/fhir/Patient", json={"resourceType": "Patient", "meta": TAG,
                                               "name": [{"family": f"Lee{i}"}]}, headers=FJ).json()
            for i in range(3)]
    for p in pats:
        client.post("/fhir/Observation", json={"resourceType": "Observation", "status": "final", "meta": TAG,
                                               "code": {"text": "x"}, "subject": {"reference": f"Patient/{p['id']}"}},
                    headers=FJ)
    return pats


def ids(bundle, mode="match"):
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def test_system_search_keeps_type_on_every_page(client):
    pats = seed(client)
    url, seen = "/fhir?_type=Patient&_tag=urn:t|a&_count=1", []
    while url:
        b = client.get(url).json()
        assert all(e["resource"]["resourceType"] == "Patient" for e in b.get("entry", []))
        seen += ids(b)
        nxt = [l["url"] for l in b["link"] if l["relation"] == "next"]
        url = nxt[0].replace("http://testserver", "") if nxt else None
    assert sorted(seen) == sorted(p["id"] for p in pats)


def test_compartment_search(client):
    pats = seed(client)
    b = client.get(f"/fhir/Patient/{pats[0]['id']}/Observation").json()
    assert len(ids(b)) == 1


def test_post_search_and_strict_handling(client):
    seed(client)
    r = client.post("/fhir/Patient/_search", content="family=Lee1",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and len(ids(r.json())) == 1
    assert "family=Lee1" in r.json()["link"][0]["url"]
    lenient = client.get("/fhir/Patient?family=Lee1&nonsense=1").json()
    assert len(ids(lenient)) == 1
    outcome = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert "nonsense" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    strict = client.get("/fhir/Patient?family=Lee1&nonsense=1", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400


def test_include_and_summary_count(client):
    pats = seed(client)
    b = client.get(f"/fhir/Observation?subject=Patient/{pats[1]['id']}&_include=Observation:subject").json()
    assert ids(b, "include") == [pats[1]["id"]]
    c = client.get("/fhir/Patient?_tag=urn:t|a&_summary=count").json()
    assert c["total"] == 3 and "entry" not in c


def test_list_parameter(client):
    pats = seed(client)
    lst = client.post("/fhir/List", json={"resourceType": "List", "status": "current", "mode": "working",
                                          "title": "Tuesday group roster",
                                          "entry": [{"item": {"reference": f"Patient/{p['id']}"}} for p in pats[:2]]},
                      headers=FJ).json()
    b = client.get(f"/fhir/Patient?_list={lst['id']}").json()
    assert sorted(ids(b)) == sorted(p["id"] for p in pats[:2])
    b = client.get(f"/fhir/Patient?_list={lst['id']}&family=Lee1").json()
    assert ids(b) == [pats[1]["id"]]
    assert ids(client.get("/fhir/Patient?_list=nope").json()) == []
