"""Conditional create/update/delete, If-None-Exist races, and concurrent If-Match updates."""
import threading

from tests.api.conftest import patient

FJ = {"Content-Type": "application/fhir+json"}


def test_conditional_create(client):
    h = {**FJ, "If-None-Exist": "identifier=urn:iop:mrn|A-1"}
    r1 = client.post("/fhir/Patient", json=patient(mrn="A-1"), headers=h)
    assert r1.status_code == 201
    r2 = client.post("/fhir/Patient", json=patient(mrn="A-1"), headers=h)
    assert r2.status_code == 200
    assert r2.json()["id"] == r1.json()["id"]
    # several matches -> 412
    client.post("/fhir/Patient", json=patient(mrn="dup"), headers=FJ)
    client.post("/fhir/Patient", json=patient(mrn="dup"), headers=FJ)
    r = client.post("/fhir/Patient", json=patient(mrn="dup"),
                    headers={**FJ, "If-None-Exist": "identifier=urn:iop:mrn|dup"})
    assert r.status_code == 412


def test_conditional_update(client):
    r = client.put("/fhir/Patient?identifier=urn:iop:mrn|B-2", json=patient(mrn="B-2"),
                   headers=FJ)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    r = client.put("/fhir/Patient?identifier=urn:iop:mrn|B-2",
                   json=patient(mrn="B-2", gender="female"), headers=FJ)
    assert r.status_code == 200
    assert r.json()["id"] == pid and r.json()["meta"]["versionId"] == "2"


def test_conditional_delete(client):
    pid = client.post("/fhir/Patient", json=patient(mrn="C-3"), headers=FJ).json()["id"]
    r = client.delete("/fhir/Patient?identifier=urn:iop:mrn|C-3")
    assert r.status_code == 204
    assert client.get(f"/fhir/Patient/{pid}").status_code == 410
    # nothing matched: still 204 (idempotent)
    assert client.delete("/fhir/Patient?identifier=urn:iop:mrn|none").status_code == 204
    # several matches without permission -> 412
    client.post("/fhir/Patient", json=patient(mrn="D"), headers=FJ)
    client.post("/fhir/Patient", json=patient(mrn="D"), headers=FJ)
    assert client.delete("/fhir/Patient?identifier=urn:iop:mrn|D").status_code == 412
    r = client.delete("/fhir/Patient?identifier=urn:iop:mrn|D",
                      headers={"Prefer": "handling=multiple"})
    assert r.status_code == 204


def test_eight_concurrent_conditional_creates_make_one(client):
    barrier = threading.Barrier(8)
    results = []

    def worker():
        barrier.wait()
        r = client.post("/fhir/Patient", json=patient(mrn="RACE-1"),
                        headers={**FJ, "If-None-Exist": "identifier=urn:iop:mrn|RACE-1"})
        results.append((r.status_code, r.json()["id"]))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    statuses = sorted(s for s, _ in results)
    assert statuses == [200] * 7 + [201], results
    assert len({i for _, i in results}) == 1
    hist = client.get("/fhir/Patient/_history").json()
    assert hist["total"] == 1


def test_eight_concurrent_if_match_updates_one_wins(client):
    created = client.post("/fhir/Patient", json=patient(), headers=FJ).json()
    pid = created["id"]
    barrier = threading.Barrier(8)
    results = []

    def worker(n):
        barrier.wait()
        r = client.put(f"/fhir/Patient/{pid}", json=dict(created, gender="other",
                                                         name=[{"family": f"F{n}"}]),
                       headers={**FJ, "If-Match": 'W/"1"'})
        results.append(r.status_code)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(results) == [200] + [412] * 7
    hist = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert hist["total"] == 2


def test_concurrent_read_modify_write_loses_no_update(client):
    """8 threads each add one tag with If-Match retries: all 8 survive."""
    created = client.post("/fhir/Patient", json=patient(), headers=FJ).json()
    pid = created["id"]

    def worker(n):
        for _ in range(50):
            cur = client.get(f"/fhir/Patient/{pid}")
            body = cur.json()
            tags = body.get("meta", {}).get("tag", [])
            body.setdefault("meta", {})["tag"] = tags + [{"system": "urn:t", "code": f"t{n}"}]
            r = client.put(f"/fhir/Patient/{pid}", json=body,
                           headers={**FJ, "If-Match": cur.headers["etag"]})
            if r.status_code == 200:
                return
            assert r.status_code == 412
        raise AssertionError("never succeeded")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    final = client.get(f"/fhir/Patient/{pid}").json()
    assert sorted(t["code"] for t in final["meta"]["tag"]) == [f"t{n}" for n in range(8)]
    assert final["meta"]["versionId"] == "9"


def test_search_parameters_on_post_url_act_as_if_none_exist(client):
    r1 = client.post("/fhir/Patient?identifier=urn:iop:mrn|Q-1", json=patient(mrn="Q-1"), headers=FJ)
    r2 = client.post("/fhir/Patient?identifier=urn:iop:mrn|Q-1", json=patient(mrn="Q-1"), headers=FJ)
    assert (r1.status_code, r2.status_code) == (201, 200)
    assert r1.json()["id"] == r2.json()["id"]
