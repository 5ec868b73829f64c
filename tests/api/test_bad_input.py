"""Bad and odd input never gets a 500: every refusal is a 4xx OperationOutcome.

Each request below once crashed a FHIR server somewhere (or could have): malformed search
values and modifiers, ids that break the id rule, patches that remove what may not be
removed, Bundles of the wrong shape, operations with wrong Parameters.
"""
import json

import pytest

FJ = {"Content-Type": "application/fhir+json"}

REQUESTS = [
 ("GET", "/fhir/Patient?_count=abc", None), ("GET", "/fhir/Patient?_count=-1", None), ("GET", "/fhir/Patient?_sort=nonsense", None),
 ("GET", "/fhir/Patient?_include=bad", None), ("GET", "/fhir/Patient?_include=Patient:nonsense", None), ("GET", "/fhir/Patient?birthdate=notadate", None),
 ("GET", "/fhir/Patient?birthdate=ge", None), ("GET", "/fhir/Observation?value-quantity=abc", None), ("GET", "/fhir/Patient?_cursor=garbage", None),
 ("GET", "/fhir/Patient?_has=bad", None), ("GET", "/fhir/Patient?_has:Observation:patient:code", None), ("GET", "/fhir/Patient?general-practitioner.name.x=1", None),
 ("GET", "/fhir/Patient?_summary=weird", None), ("GET", "/fhir/Patient?_total=weird", None), ("GET", "/fhir/Patient?_elements=", None),
 ("GET", "/fhir/Patient?name:nonsense=x", None), ("GET", "/fhir/Patient?_id=" + "x"*300, None), ("GET", "/fhir/Patient/" + "x"*100, None),
 ("GET", "/fhir/Patient/a%20b", None), ("GET", "/fhir/Patient/PID" + "/_history/abc", None), ("GET", "/fhir/_history?_count=x", None),
 ("GET", "/fhir/_history?_cursor=abc", None), ("GET", "/fhir/Patient/PID" + "/Nonsense", None), ("GET", "/fhir/Patient/PID" + "/Observation?x=1", None),
 ("PUT", "/fhir/Patient/a%20b", {"resourceType":"Patient","id":"a b"}), ("PUT", "/fhir/Patient", {"resourceType":"Patient"}),
 ("PATCH", "/fhir/Patient/PID", {"op":"add"}), ("PATCH", "/fhir/Patient/PID", [{"op":"nonsense"}]), ("PATCH", "/fhir/Patient/PID", [{"op":"add","path":"/id","value":"z"}]),
 ("PATCH", "/fhir/Patient/PID", [{"op":"remove","path":"/resourceType"}]), ("PATCH", "/fhir/Patient/PID", [1,2]),
 ("POST", "/fhir/Patient", [1,2]), ("POST", "/fhir/Patient", "str"), ("POST", "/fhir/Patient", {"resourceType": 5}), ("POST", "/fhir/Patient", {}),
 ("POST", "/fhir/Patient", {"resourceType":"Patient","name":"notalist"}), ("POST", "/fhir/Patient", {"resourceType":"Patient","meta":{"profile":"x"}}),
 ("POST", "/fhir/Patient", {"resourceType":"Patient","meta":{"profile":[5]}}), ("POST", "/fhir/Patient", {"resourceType":"Patient","contained":[{"resourceType":"Nope"}]}),
 ("POST", "/fhir", {"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"POST","url":"Patient"},"resource":"x"}]}),
 ("POST", "/fhir", {"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"GET","url":"Patient?_count=abc"}}]}),
 ("POST", "/fhir", {"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"PUT","url":"Patient/x/y"},"resource":{"resourceType":"Patient"}}]}),
 ("POST", "/fhir", {"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"POST","url":"Nope"},"resource":{"resourceType":"Patient"}}]}),
 ("POST", "/fhir", {"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"Patient?"}}]}),
 ("POST", "/fhir", {"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"PATCH","url":"Patient/PID"},"resource":{"resourceType":"Binary","contentType":"application/json-patch+json","data":"bm90anNvbg=="}}]}),
 ("POST", "/fhir", {"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"/fhir/Patient/PID"}},{"request":{"method":"PUT","url":"Patient?identifier=x"},"resource":{"resourceType":"Patient"}}]}),
 ("POST", "/fhir", {"resourceType":"Bundle","type":"transaction","entry":"notalist"}), ("POST", "/fhir", {"resourceType":"Bundle","type":"transaction","entry":[5]}),
 ("POST", "/fhir", {"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"POST","url":"Patient","ifNoneExist":"&&&"},"resource":{"resourceType":"Patient"}}]}),
 ("POST", "/fhir", {"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"POST","url":"Patient"},"resource":{"resourceType":"Patient","generalPractitioner":[{"reference":"Practitioner?name=x"}]}}]}),
 ("POST", "/fhir/Patient/$validate", {"resourceType":"Parameters","parameter":"x"}), ("POST", "/fhir/Patient/$validate", {"resourceType":"Parameters","parameter":[5]}),
 ("POST", "/fhir/EpisodeOfCare/x/$discharge", {"resourceType":"Parameters","parameter":[{"name":"followUpCount","valueInteger":"abc"}]}),
 ("POST", "/fhir/CarePlan/x/$schedule", {"resourceType":"Parameters","parameter":[{"name":"start"}]}),
 ("POST", "/fhir/$process-message", {"resourceType":"Bundle","type":"message","entry":[{"resource":{"resourceType":"MessageHeader"}},{"resource":5}]}),
 ("POST", "/fhir/SearchParameter", {"resourceType":"SearchParameter","url":"http://x","name":"x","status":"active","description":"d","code":"x","base":["Patient"],"type":"composite","expression":"Patient"}),
 ("GET", "/fhir/Composition/none/$document?_format=html", None), ("POST", "/fhir/Patient/$reindex", None), ("GET", "/fhir/$reindex-status/zz", None),
 ("GET", "/fhir/metadata?_format=text/turtle", None), ("DELETE", "/fhir/Patient?", None), ("DELETE", "/fhir/Patient?nonsense=1", None),
 # U+0000: PostgreSQL text cannot hold it
 ("POST", "/fhir/Patient", {"resourceType":"Patient","name":[{"family":"a\u0000b"}]}), ("PUT", "/fhir/Patient/PID", {"resourceType":"Patient","id":"PID","gender":"male","name":[{"text":"\u0000"}]}),
 ("PATCH", "/fhir/Patient/PID", [{"op":"add","path":"/name","value":[{"family":"x\u0000"}]}]),
 ("POST", "/fhir", {"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"POST","url":"Patient"},"resource":{"resourceType":"Patient","name":[{"family":"\u0000"}]}}]}),
 ("GET", "/fhir/Patient?name=a%00b", None), ("GET", "/fhir/Patient?identifier=a%00|b", None), ("GET", "/fhir/Patient/a%00b", None),
 ("GET", "/fhir/Patient?_id=a%00b", None), ("GET", "/fhir/Patient?general-practitioner=Practitioner/a%00", None), ("GET", "/fhir/Patient?_tag=%00", None),
]


@pytest.mark.parametrize("method,url,body", REQUESTS, ids=[f"{m} {u[:60]}" for m, u, _b in REQUESTS])
def test_no_500_and_an_outcome(client, method, url, body):
    pid = client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=FJ).json()["id"]
    url = url.replace("PID", pid)
    kw = {}
    if body is not None:
        body = json.loads(json.dumps(body).replace("PID", pid))
        ctype = "application/json-patch+json" if method == "PATCH" else "application/fhir+json"
        kw = {"content": json.dumps(body), "headers": {"Content-Type": ctype}}
    r = client.request(method, url, **kw)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert r.json()["resourceType"] == "OperationOutcome"
        assert r.json()["issue"][0]["diagnostics"]


def test_nul_character_is_refused_with_its_path_and_nothing_is_stored(client):
    """U+0000 cannot be stored in PostgreSQL text: both databases refuse it alike, naming
    the element, and a transaction with one such entry stores none of its entries."""
    bad = {"resourceType": "Patient", "name": [{"family": "ok"}, {"given": ["x", "y\u0000"]}]}
    r = client.post("/fhir/Patient", json=bad)
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Patient.name[1].given[1]"]
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "name": [{"family": "fine"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": bad, "request": {"method": "POST", "url": "Patient"}}]})
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.name[1].given[1]"]
    assert client.get("/fhir/Patient", params={"_summary": "count"}).json()["total"] == 0
    r = client.get("/fhir/Patient", params={"family": "a\u0000"})
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["family"]
