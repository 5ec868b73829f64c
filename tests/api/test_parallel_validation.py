"""Parallel base validation of transactions (fhirgw/validation/parallel.py).

Two gateways side by side: "on" validates in a pool of one worker from the first POST/PUT
entry on, "off" validates inline. Every invalid Bundle must get the same status and the same
OperationOutcome from both and store nothing; valid Bundles work; a killed worker fails no
request. One pool for the module: starting a worker process costs a second or two.
"""
import json
import os
import pathlib
import signal
import time
from contextlib import ExitStack

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from fhirgw.app import create_app
from fhirgw.config import Settings
from fhirgw.model import errors
from fhirgw.validation.parallel import ValidationPool, _error_data, rebuild_error
from tests.auth import authorize, bearer, grant, token_for

FJ = {"Content-Type": "application/fhir+json"}
ROOT = pathlib.Path(__file__).resolve().parents[2]
TASK_CODE = "http://hl7.org/fhir/CodeSystem/task-code"
P0 = "urn:uuid:9b1c5a0e-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def module_pool():
    p = ValidationPool(1, min_entries=1, retry_after=0.1)
    assert p.start(wait=120), "the validation worker did not start"
    yield p
    p.close()


@pytest.fixture
def pool(module_pool):
    """The module's pool, handing every item to the worker when a test begins (the share
    its requests keep for themselves moves with each answer, see ValidationPool.balance)."""
    module_pool.inline_share = 0.0
    return module_pool


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gateways(request, tmp_path_factory, module_pool):
    """{"on": (client, app), "off": (client, app)}, each on its own empty database."""
    out = {}
    with ExitStack() as stack:
        for name in ("on", "off"):
            if request.param == "sqlite":
                url = f"sqlite:///{tmp_path_factory.mktemp(f'parallel-{name}') / 'fhirgw.db'}"
            else:
                from tests.conftest import fresh_pg_database
                url = stack.enter_context(
                    fresh_pg_database(request.getfixturevalue("pg_admin")))
            app = create_app(Settings(database_url=url,
                                      base_url="http://testserver/fhir",
                                      max_bundle_entries=200, validation_workers=0))
            if name == "on":
                app.state.router.validation_pool = module_pool
            client = stack.enter_context(TestClient(app, base_url="http://testserver"))
            authorize(client, app)
            stack.callback(app.state.router.repo.engine.dispose)
            out[name] = (client, app)
        yield out


# ---------------------------------------------------------------- Bundles

def entry(resource, full_url=None, method="POST", url=None):
    e = {"resource": resource,
         "request": {"method": method, "url": url or resource["resourceType"]}}
    if full_url:
        e["fullUrl"] = full_url
    return e


def patient(n, **extra):
    return {"resourceType": "Patient", "name": [{"family": f"Parallel-{n}", "given": ["Ana"]}],
            "birthDate": "1990-04-02", **extra}


def task(**extra):
    return {"resourceType": "Task", "status": "requested", "intent": "order",
            "code": {"coding": [{"system": TASK_CODE, "code": "fulfill"}]}, **extra}


def observation(subject, value="72.50"):
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "subject": {"reference": subject},
            "valueQuantity": {"value": value, "unit": "kg"}}


def profiled_patient_without_name():
    body = json.loads((ROOT / "profiles" / "examples" / "Patient-iop-client.json").read_text())
    body.pop("id", None)
    del body["name"]
    return body


def entries():
    """Ten valid entries; the cases below spoil some of them."""
    return [
        entry(patient(0), P0),
        entry(patient(1)),
        entry(task()),
        entry(observation(P0)),
        entry({"resourceType": "Condition", "subject": {"reference": P0},
               "code": {"text": "anxiety"}}),
        entry(patient(5)),
        entry(observation(P0, value="98.6")),
        entry(patient(7)),
        entry({"resourceType": "Goal", "lifecycleStatus": "active",
               "description": {"text": "sleep"}, "subject": {"reference": P0}}),
        entry({"resourceType": "EpisodeOfCare", "status": "active",
               "patient": {"reference": P0}}),
    ]


def bundle(changes=None, size=None, pad=0):
    """The ten entries with ``changes``; ``size``: patients before them up to that many
    entries; ``pad``: that many patients after them (the indices of ``changes`` stay)."""
    es = entries()
    if size:
        es = [entry(patient(i)) for i in range(size - len(es))] + es
    for i, e in (changes or {}).items():
        es[i] = e
    es += [entry(patient(100 + i)) for i in range(pad)]
    return {"resourceType": "Bundle", "type": "transaction", "entry": es}


def to_raw(b):
    """The Bundle as JSON text, the quantities' values as decimal numbers written out
    (72.50 keeps its trailing zero: the lossless parse, then the pool, see that text)."""
    return json.dumps(b).replace('"value": "72.50"', '"value": 72.50') \
                        .replace('"value": "98.6"', '"value": 98.6')


UNKNOWN = patient(7, favouriteColour="blue")
WRONG_TYPE = patient(7, birthDate=19900402)
BIG_INT = patient(7, multipleBirthInteger=123456789012345678901234567)

CASES = {
    "unknown element in entry 7": {7: entry(UNKNOWN)},
    "wrong type in entry 7": {7: entry(WRONG_TYPE)},
    "entry 7 invalid and a business rule broken in entry 2": {
        2: entry(task(status="rejected")), 7: entry(UNKNOWN)},
    "entry 7 invalid and a reference in entry 3 that does not resolve": {
        3: entry(observation("Patient?identifier=urn:none|x")), 7: entry(WRONG_TYPE)},
    "entry 7 invalid and a PUT with a wrong version in entry 1": {
        1: entry(patient(1, id="p1"), method="PUT", url="Patient/p1") | {
            "request": {"method": "PUT", "url": "Patient/p1", "ifMatch": 'W/"9"'}},
        7: entry(UNKNOWN)},
    "entries 5 and 7 invalid": {5: entry(WRONG_TYPE), 7: entry(UNKNOWN)},
    "entry 0 invalid": {0: entry(UNKNOWN, P0)},
    "a profile error in entry 3 before an invalid entry 7": {
        3: entry(profiled_patient_without_name()), 7: entry(UNKNOWN)},
    "an invalid entry 3 before a profile error in entry 7": {
        3: entry(WRONG_TYPE), 7: entry(profiled_patient_without_name())},
    "a profile error and a base error in the same entry": {
        7: entry(dict(profiled_patient_without_name(), birthDate=19900402))},
    "a PUT whose body does not match its url, entry 7 invalid": {
        4: entry(patient(4, id="a"), method="PUT", url="Patient/b"), 7: entry(UNKNOWN)},
    "a resource type the url does not name": {7: entry(patient(7), url="Observation")},
    "an integer beyond 64 bits (validated inline)": {7: entry(BIG_INT)},
    "an exponent decimal in entry 3, entry 7 invalid": {
        3: entry(patient(3, extension=[{"url": "http://example.org/x", "valueDecimal": 1e-07}])),
        7: entry(UNKNOWN)},
    "a boolean written as text in entry 7 (the models accept it, FHIR JSON does not)": {
        7: entry(patient(7, active="yes"))},
    "a decimal written as text in entry 5, entry 7 invalid": {
        5: entry(patient(5, extension=[{"url": "http://example.org/x", "valueDecimal": "1.50"}])),
        7: entry(UNKNOWN)},
    "a decimal that is not a number in entry 7": {
        7: entry(patient(7, extension=[{"url": "http://example.org/x", "valueDecimal": "abc"}]))},
    "an invalid resource in a large Bundle": {60: entry(WRONG_TYPE)},
}


def stored(app) -> int:
    with app.state.router.repo.engine.connect() as c:
        return c.execute(text("SELECT count(*) FROM resource "
                              "WHERE res_type <> 'AuditEvent'")).scalar()


def post(client, b, headers=None):
    return client.post("/fhir", content=to_raw(b), headers={**FJ, **(headers or {})})


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("case", list(CASES))
def test_invalid_bundles_answer_as_inline(gateways, pool, case):
    b = bundle(CASES[case], size=80 if "large" in case else None)
    before = {name: stored(app) for name, (_c, app) in gateways.items()}
    used = pool.submitted
    on = post(gateways["on"][0], b)
    off = post(gateways["off"][0], b)
    assert off.status_code >= 400, off.text
    assert (on.status_code, on.json()) == (off.status_code, off.json())
    assert pool.submitted == used + 1, "the pool was not used"
    assert {name: stored(app) for name, (_c, app) in gateways.items()} == before


@pytest.mark.parametrize("case", list(CASES))
def test_invalid_bundles_sent_early_answer_as_inline(gateways, pool, case):
    """The same cases in Bundles large enough to go to the worker before they are parsed
    (``submit_early``, from 8 KB): the request adopts that work, and answers as inline."""
    from fhirgw.validation.parallel import EARLY_MIN_BYTES

    b = bundle(CASES[case], size=80 if "large" in case else None, pad=60)
    assert len(to_raw(b)) >= EARLY_MIN_BYTES
    before = {name: stored(app) for name, (_c, app) in gateways.items()}
    used, early = pool.submitted, pool.early
    on = post(gateways["on"][0], b)
    off = post(gateways["off"][0], b)
    assert off.status_code >= 400, off.text
    assert (on.status_code, on.json()) == (off.status_code, off.json())
    assert (pool.submitted, pool.early) == (used + 1, early + 1), "not adopted early"
    assert {name: stored(app) for name, (_c, app) in gateways.items()} == before


def test_a_valid_bundle_sent_early(gateways, pool):
    b = bundle(pad=70)
    early, fallbacks = pool.early, pool.fallbacks
    r = post(gateways["on"][0], b)
    assert r.status_code == 200, r.text
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["201"] * 80
    assert pool.early == early + 1 and pool.fallbacks == fallbacks


def test_an_early_pick_that_differs_is_validated_inline(gateways, pool):
    """An entry whose URL names another type than its resource: the worker, which read the
    type off the resource, picked other work than the request hands over; that chunk is
    validated inline (as for a lost worker), with the inline answer."""
    b = bundle({7: entry(patient(7), url="Observation")}, pad=60)
    fallbacks = pool.fallbacks
    on = post(gateways["on"][0], b)
    off = post(gateways["off"][0], b)
    assert on.status_code == 400 and (on.status_code, on.json()) == (off.status_code,
                                                                      off.json())
    assert "Bundle.entry[7]" in json.dumps(on.json())
    assert pool.fallbacks == fallbacks + 1


def test_early_work_is_only_for_large_transactions(pool):
    from fhirgw.validation.parallel import EARLY_MIN_BYTES

    small = json.dumps(bundle()).encode()
    assert len(small) < EARLY_MIN_BYTES and pool.submit_early(small) is None
    batch = dict(bundle(pad=60), type="batch")
    batch["entry"][0]["resource"]["note"] = "transaction"   # the word, not the type
    assert pool.submit_early(json.dumps(batch).encode()) is None
    off = ValidationPool(0)
    assert off.submit_early(json.dumps(bundle(pad=60)).encode()) is None


def _not_adopted():
    """Bodies that go to the workers early and that no request adopts: a batch holding a
    transaction Bundle as a resource, text that is not JSON."""
    batch = dict(bundle(pad=60), type="batch")
    batch["entry"][1]["resource"] = {"resourceType": "Bundle", "type": "transaction"}
    return [json.dumps(batch).encode(), b'{"type": "transaction", ' + b" " * 9000]


def test_early_work_not_adopted_leaves_the_worker_in_step(pool):
    """Work sent early and never adopted: its answers are read off by the next reader (or
    the next hand-off), and the next requests get their own."""
    for body in _not_adopted():
        assert pool.submit_early(body) is not None
    pending = pool.submit(*_items([patient(1), WRONG_TYPE, patient(2)]))
    assert pending.first_error()[0] == 1


#: more than the answers' pipe holds (64 KB, ~60 bytes an answer), and the work pipe then
HAND_OFFS = 4000


def test_early_work_nobody_adopts_does_not_stall_the_worker(pool):
    """More unadopted early work than the answers' pipe holds (~1,000 answers), and no
    request reading answers: each hand-off reads off the answers already there, so the
    worker never blocks on a full pipe, nor then a request on a full work pipe."""
    import threading

    bodies = _not_adopted()
    done = threading.Event()

    def hand_off():
        for n in range(HAND_OFFS):
            assert pool.submit_early(bodies[n % 2]) is not None
        done.set()

    t = threading.Thread(target=hand_off, daemon=True)
    t.start()
    assert done.wait(120), "a hand-off blocked: the worker stalled on unread answers"
    worker = pool._running.workers[0]
    assert worker.load < HAND_OFFS
    pending = pool.submit(*_items([patient(1), patient(2), WRONG_TYPE]))
    assert pending.first_error()[0] == 2
    assert worker.load == 0


def test_early_work_shared_by_two_workers():
    """Two workers: each takes its range of the body's entries (``plan``), the request
    adopts both, with or without entries it keeps for itself; the first invalid entry is
    the one inline validation finds, whichever worker (or the request) has it."""
    from fhirgw.model import resources as res

    p = ValidationPool(2, min_entries=1)
    assert p.start(wait=120), "the validation workers did not start"
    try:
        for share, bad in ((0.0, None), (0.0, 10), (0.0, 45), (0.2, 45), (0.2, 55),
                           (0.2, None)):
            p.inline_share = share
            es = [entry(patient(i)) for i in range(60)]
            if bad is not None:
                es[bad] = entry(WRONG_TYPE)
            body = json.dumps({"resourceType": "Bundle", "type": "transaction",
                               "entry": es}).encode()
            parsed = res.loads(body)["entry"]
            items = [(i, "Patient", None) for i in range(60)]
            originals = {i: ("Patient", e["resource"]) for i, e in enumerate(parsed)}
            early = p.submit_early(body)
            assert early is not None and len(early.jobs) == 2
            pending = p.adopt(early, items, originals)
            kept = int(60 * share)
            assert pending.kept == kept and len(pending.chunks) == 2
            assert sorted(pending.indices) == list(range(60 - kept))
            found = pending.first_error()
            if bad is None or bad >= 60 - kept:   # valid, or the request's own to check
                assert found is None
            else:
                assert found is not None and found[0] == bad
                try:
                    res.validate(originals[bad][1], "Patient")
                except errors.FhirError as exc:
                    assert found[1].outcome() == exc.outcome()
        assert p.fallbacks == 0
    finally:
        p.close()


def test_plan_shares_items_out_as_workers_and_the_request_expect():
    from fhirgw.validation.parallel import MIN_CHUNK, plan

    assert plan(0, 2, 0.3) == (0, [])
    assert plan(1, 2, 0.5) == (0, [range(0, 1)])          # never all kept
    assert plan(100, 1, 0.0) == (0, [range(0, 100)])
    assert plan(100, 2, 0.1) == (10, [range(0, 45), range(45, 90)])
    assert plan(2 * MIN_CHUNK - 1, 2, 0.0) == (0, [range(0, 2 * MIN_CHUNK - 1)])
    assert plan(101, 3, 0.0) == (0, [range(0, 34), range(34, 68), range(68, 101)])


def test_select_finds_what_a_transaction_hands_to_validation():
    from fhirgw.validation.parallel import select

    b = {"resourceType": "Bundle", "type": "transaction", "entry": [
        entry(patient(0)),                                            # 0: POST
        entry(patient(1, id="a"), method="PUT", url="Patient/a"),     # 1: PUT
        {"request": {"method": "GET", "url": "Patient/a"}},           # 2: a read
        {"request": {"method": "DELETE", "url": "Patient/a"}},        # 3
        {"request": {"method": "PATCH", "url": "Patient/a"},
         "resource": {"resourceType": "Binary"}},                     # 4: a patch
        entry({"resourceType": "NotAType"}),                          # 5: unknown type
        entry(task(), method="post"),                                 # 6: any case
        "not an entry",                                               # 7
        {"resource": patient(8)},                                     # 8: no request
    ]}
    assert select(b) == [(0, "Patient"), (1, "Patient"), (6, "Task")]
    assert select(dict(b, type="batch")) == [] and select([b]) == []
    assert select({"type": "transaction", "entry": "x"}) == []


def test_the_business_rule_case_does_break_a_rule(gateways):
    # without its invalid entry, the Bundle of the precedence case fails in the unit
    r = post(gateways["on"][0], bundle({2: entry(task(status="rejected"))}))
    assert r.status_code == 422, r.text
    assert "Bundle.entry[2]" in r.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("forbidden_at, invalid_at", [(9, 4), (2, 7), (7, 7)])
def test_authorization_and_validation_order_as_inline(gateways, pool, forbidden_at,
                                                      invalid_at):
    """A client that may create Patients only: the first failing entry decides, whether
    it is refused (403) or invalid (400)."""
    changes = {i: entry(patient(i)) for i in range(10)}
    changes[0] = entry(patient(0), P0)
    changes[forbidden_at] = entry(observation(P0))
    changes[invalid_at] = entry(dict(changes[invalid_at]["resource"], birthDate=1990))
    b = bundle(changes)
    answers = []
    for name in ("on", "off"):
        client, app = gateways[name]
        cid, secret = grant(app, "system/Patient.cruds",
                            name=f"patients-only-{forbidden_at}-{invalid_at}")
        token = token_for(client, cid, secret)
        r = post(client, b, bearer(token))
        answers.append((r.status_code, r.json()))
    assert answers[0] == answers[1]
    assert answers[0][0] == (403 if forbidden_at <= invalid_at else 400)


def test_code_that_assumes_valid_input_does_not_turn_an_invalid_bundle_into_a_500(
        gateways, pool):
    """Rules and index extraction may crash on what validation refuses: with the pool they
    see it (the unit runs meanwhile); the answer is still the validation error."""
    from fhirgw.store.repository import WriteRule

    class Naive(WriteRule):
        types = frozenset({"Patient"})

        def before_write(self, tx, res_type, res_id, body, previous):
            if "favouriteColour" in body:
                raise RuntimeError("a rule that trusted its input")
            return body

    rules = gateways["on"][1].state.router.repo.rules
    rules.append(naive := Naive())
    try:
        b = bundle({7: entry(UNKNOWN)})
        on, off = post(gateways["on"][0], b), post(gateways["off"][0], b)
    finally:
        rules.remove(naive)
    assert (on.status_code, on.json()) == (off.status_code, off.json())
    assert on.status_code == 400


def test_a_before_commit_rule_failing_on_invalid_input_does_not_hide_the_validation_error(
        gateways, pool):
    """With the pool, the unit's answer is awaited after the rules' before_commit (the
    AuditEvent is written meanwhile); a rule that fails there on what validation refuses
    must not change the answer, and nothing is stored."""
    from fhirgw.store.repository import WriteRule

    class NaiveAtCommit(WriteRule):
        types = frozenset({"Patient"})

        def before_commit(self, tx):
            if any(b"favouriteColour" in (s.body or b"") for s in tx.written):
                raise RuntimeError("a rule that trusted its input")

    for name in ("on", "off"):
        rules = gateways[name][1].state.router.repo.rules
        rules.insert(len(rules) - 1, NaiveAtCommit())   # the AuditRule stays last
    before = stored(gateways["on"][1])
    try:
        b = bundle({7: entry(UNKNOWN)})
        on, off = post(gateways["on"][0], b), post(gateways["off"][0], b)
    finally:
        for name in ("on", "off"):
            rules = gateways[name][1].state.router.repo.rules
            rules[:] = [r for r in rules if not isinstance(r, NaiveAtCommit)]
    assert (on.status_code, on.json()) == (off.status_code, off.json())
    assert on.status_code == 400
    assert stored(gateways["on"][1]) == before


def test_valid_bundle_of_100_entries(gateways, pool):
    client, app = gateways["on"]
    before, used, fallbacks = stored(app), pool.submitted, pool.fallbacks
    r = post(client, bundle(size=100))
    assert r.status_code == 200, r.text
    out = r.json()["entry"]
    assert [e["response"]["status"] for e in out] == ["201 Created"] * 100
    assert stored(app) == before + 100
    assert (pool.submitted, pool.fallbacks) == (used + 1, fallbacks)
    obs = next(e["resource"] for e in out if e["resource"]["resourceType"] == "Observation")
    assert obs["subject"]["reference"] == f"Patient/{out[90]['resource']['id']}"
    raw = client.get(f"/fhir/Observation/{obs['id']}").content
    assert b'"value":72.50' in raw.replace(b" ", b"")  # decimals keep their text


def test_small_bundles_stay_inline(gateways, pool):
    client, _app = gateways["on"]
    used = pool.submitted
    pool.min_entries = 11
    try:
        assert post(client, bundle()).status_code == 200
    finally:
        pool.min_entries = 1
    assert pool.submitted == used


def test_a_killed_worker_fails_no_request(gateways, pool):
    client, app = gateways["on"]
    _off, off_app = gateways["off"]
    pids = pool.worker_pids()
    assert pids
    os.kill(pids[0], signal.SIGTERM)
    time.sleep(0.05)
    before = stored(app)
    r = post(client, bundle(size=30))
    assert r.status_code == 200, r.text
    assert stored(app) == before + 30
    # an invalid Bundle answers as inline meanwhile too
    b = bundle(CASES["entry 7 invalid and a business rule broken in entry 2"])
    on, off = post(client, b), post(gateways["off"][0], b)
    assert (on.status_code, on.json()) == (off.status_code, off.json())
    assert stored(app) == before + 30
    # and new workers come up for later Bundles
    deadline = time.monotonic() + 120
    while not pool.start(wait=1) and time.monotonic() < deadline:
        pass
    assert pool.ready()
    assert pool.worker_pids() and pool.worker_pids() != pids
    used = pool.submitted
    assert post(client, bundle(size=30)).status_code == 200
    assert pool.submitted == used + 1


# ---------------------------------------------------------------- pieces

@pytest.mark.parametrize("exc", [
    errors.InvalidResource(issues=[errors.Issue("Patient.x: bad", code="structure",
                                                expression=["Patient.x"])]),
    errors.BadRequest("The body's resourceType 'A' does not match", expression="resourceType"),
    errors.NotFound("Unknown resource type 'Foo'", code="not-supported"),
    errors.FhirError("teapot", status=418, headers={"x-a": "b"}),
])
def test_errors_cross_the_process_boundary_unchanged(exc):
    back = rebuild_error(_error_data(exc))
    assert type(back) is type(exc)
    assert (back.status, back.code, str(back), back.headers) == \
        (exc.status, exc.code, str(exc), exc.headers)
    assert back.outcome() == exc.outcome()


def test_never_used_in_a_daemonic_process(monkeypatch):
    import multiprocessing

    class Daemon:
        daemon = True

    p = ValidationPool(1, min_entries=1)
    monkeypatch.setattr(multiprocessing, "current_process", lambda: Daemon())
    assert not p.enabled
    assert not p.wanted(100)
    assert p.submit([(0, "Patient", b"{}")], {0: ("Patient", {})}) is None
    assert not p._starting


def test_off_and_closed_pools_take_nothing():
    assert not ValidationPool(0).wanted(1000)
    assert ValidationPool(0).state == "off"
    p = ValidationPool(1, min_entries=1)
    assert p.state == "idle"
    p.close()
    assert not p.wanted(1000) and not p.start()
    assert p.state == "off"


UNGUARDED = """
import os
print("script ran in", os.getpid(), flush=True)
from fhirgw.validation.parallel import ValidationPool
pool = ValidationPool(1, min_entries=1)
assert pool.start(wait=120)
body = {"resourceType": "Patient", "gender": 5}
pending = pool.submit([(0, "Patient", b'{"resourceType": "Patient", "gender": 5}')],
                      {0: ("Patient", body)})
index, error = pending.first_error()
print("answer", index, error.status, pool.fallbacks, flush=True)
pool.close()
"""


def test_workers_do_not_run_an_unguarded_main_script_again(tmp_path):
    """multiprocessing's spawn imports the parent's main script in every child; a script
    that does its work at top level (no ``if __name__ == "__main__":``) must still run
    once, and its pool must work."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=180, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("script ran in") == 1, out.stdout
    assert "answer 0 400 0" in out.stdout, out.stdout


def _pending(pool, answer, originals):
    from fhirgw.validation.parallel import PendingValidation, _Chunk

    def receive():
        if isinstance(answer, BaseException):
            raise answer
        now = time.monotonic()
        return answer, now - 0.01, now, None

    return PendingValidation(pool, [_Chunk(sorted(originals), receive, None)], originals)


def test_what_the_workers_cannot_answer_is_validated_inline():
    from fhirgw.validation.parallel import WorkerLost

    p = ValidationPool(1, min_entries=1)
    originals = {3: ("Patient", patient(3)), 5: ("Patient", WRONG_TYPE),
                 8: ("Patient", UNKNOWN)}
    inline = None
    try:
        from fhirgw.model import resources as res
        res.validate(WRONG_TYPE, "Patient")
    except errors.FhirError as exc:
        inline = exc
    for answer in (WorkerLost("gone"), RuntimeError("unpickling"),
                   (3, "unexpected", "RuntimeError('worker bug')")):
        found = _pending(p, answer, originals).first_error()
        assert found is not None and found[0] == 5
        assert found[1].outcome() == inline.outcome() and found[1].status == inline.status
    # an answer about an entry after ``upto`` does not count
    assert _pending(p, (8, "invalid", _error_data(inline)), originals).first_error(upto=7) \
        is None
    assert p.fallbacks == 2


@pytest.mark.parametrize("prestart", [True, False])
def test_prestart_starts_the_worker_with_the_app(tmp_path, prestart):
    """``fhirgw serve`` (FHIRGW_VALIDATION_PRESTART) starts the worker with the app, so the
    first large transaction does not validate inline; otherwise it waits for first use."""
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'p.db'}",
                              validation_workers=1, validation_prestart=prestart))
    pool = app.state.validation_pool
    seen = set()
    with TestClient(app, base_url="http://testserver") as client:
        deadline = time.monotonic() + (120 if prestart else 1.0)
        while not pool.ready() and time.monotonic() < deadline:
            # /readyz says ready all along (inline validation works), and how the workers are
            r = client.get("/readyz")
            assert r.status_code == 200 and r.json()["status"] == "ready"
            seen.add(r.json()["validationWorkers"])
            time.sleep(0.05)
        assert pool.ready() is prestart
        assert client.get("/readyz").json()["validationWorkers"] == (
            "ready" if prestart else "idle")
    assert seen <= ({"starting", "ready"} if prestart else {"idle"})
    assert not pool.ready() and pool.state == "off"   # stopped with the app
    app.state.router.repo.engine.dispose()


def _items(bodies):
    return ([(i, "Patient", json.dumps(b).encode()) for i, b in enumerate(bodies)],
            {i: ("Patient", b) for i, b in enumerate(bodies)})


def test_requests_sharing_a_worker_each_get_their_own_answer(pool):
    """Work goes to the worker in order and answers come back in order; whichever request
    waits reads them and hands each to its own request (answers nobody reads, of a request
    that gave up, are dropped by the next reader)."""
    import threading

    abandoned = pool.submit(*_items([WRONG_TYPE] * 3))   # its answer is never asked for
    assert abandoned is not None
    bodies = {n: [patient(i) for i in range(12)] for n in range(6)}
    for n in (1, 4):
        bodies[n][n + 2] = WRONG_TYPE
    pending = {n: pool.submit(*_items(b)) for n, b in bodies.items()}
    assert all(p is not None for p in pending.values())
    answers = {}

    def wait(n):
        found = pending[n].first_error()
        answers[n] = None if found is None else found[0]

    threads = [threading.Thread(target=wait, args=(n,)) for n in reversed(range(6))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == {0: None, 1: 3, 2: None, 3: None, 4: 6, 5: None}
    # and the worker goes on answering in step
    pool.inline_share = 0.0   # (the requests that waited asked to keep some items)
    again = pool.submit(*_items([patient(1), WRONG_TYPE]))
    assert again.first_error()[0] == 1


def test_a_bundle_body_is_read_by_the_worker_as_received(pool):
    """Items without JSON name entries of the Bundle body handed over with them; the worker
    parses that body as the request did (an integer beyond 64 bits included)."""
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [entry(patient(0)), entry(patient(1)), entry(BIG_INT)]}
    body = json.dumps(bundle).encode()
    originals = {i: ("Patient", e["resource"]) for i, e in enumerate(bundle["entry"])}
    items = [(i, "Patient", None) for i in range(3)]
    found = pool.submit(items, originals, body).first_error()
    inline = None
    try:
        from fhirgw.model import resources as res
        res.validate(res.loads(json.dumps(BIG_INT)), "Patient")
    except errors.FhirError as exc:
        inline = exc
    assert found is not None and found[0] == 2
    assert found[1].outcome() == inline.outcome()
    assert pool.submit(items[:2], originals, body).first_error() is None


#: Bundle bodies whose numbers orjson and res.loads read differently, or alike
_NUMBER_BODIES = {
    "integer beyond 64 bits": b'{"resourceType": "Patient", "multipleBirthInteger": '
                              b'123456789012345678901234567}',
    "2**63, 19 digits": b'{"resourceType": "Patient", "multipleBirthInteger": '
                        b'9223372036854775808}',
    "18 digits": b'{"resourceType": "Patient", "multipleBirthInteger": 123456789012345678}',
    "exponent for an integer": b'{"resourceType": "Patient", "multipleBirthInteger": 1e2}',
    "decimal with a trailing zero": b'{"resourceType": "Observation", "status": "final", '
                                    b'"code": {"text": "x"}, "valueQuantity": {"value": 72.50}}',
    "decimal with an exponent": b'{"resourceType": "Observation", "status": "final", '
                                b'"code": {"text": "x"}, "valueQuantity": {"value": 1.0E+2}}',
    "20 digits in a string": b'{"resourceType": "Patient", "identifier": '
                             b'[{"value": "12345678901234567890"}], "active": "yes"}',
    "a boolean as a string": b'{"resourceType": "Patient", "active": "true"}',
}


@pytest.mark.parametrize("case", sorted(_NUMBER_BODIES))
def test_the_worker_reads_a_body_as_the_request_did(case):
    """A worker parses the Bundle body with orjson unless a run of 19 digits (an integer
    beyond 64 bits, which orjson reads as a float) sends it to ``res.loads``; either way its
    verdict on each entry is the one inline validation gives the request's parse."""
    from fhirgw.model import resources as res
    from fhirgw.validation.parallel import validate_chunk

    raw = _NUMBER_BODIES[case]
    rtype = json.loads(raw)["resourceType"]
    body = b'{"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": ' + \
        raw + b', "request": {"method": "POST", "url": "' + rtype.encode() + b'"}}]}'
    inline = None
    try:
        res.validate(res.loads(body)["entry"][0]["resource"], rtype)
    except errors.FhirError as exc:
        inline = exc
    found = validate_chunk([(0, rtype, None)], body)
    if inline is None:
        assert found is None
    else:
        assert found is not None and found[:2] == (0, "invalid")
        assert rebuild_error(found[2]).outcome() == inline.outcome()


def test_closing_the_pool_under_a_waiting_request_falls_back_inline():
    """A request waiting for its answer while the pool stops (shutdown) gets its entries
    validated inline, without an error of its own."""
    import threading

    p = ValidationPool(1, min_entries=1)
    assert p.start(wait=120)
    items, originals = _items([patient(i) for i in range(400)] + [WRONG_TYPE])
    pending = p.submit(items, originals)
    assert pending is not None
    closer = threading.Timer(0.01, p.close)
    closer.start()
    found = pending.first_error()
    closer.join()
    assert found is not None and found[0] == 400
    assert not p.ready() and p.worker_pids() == []


def test_the_share_kept_follows_who_waits():
    """A request that waited for the worker keeps more of its items to validate itself
    next time; one whose worker finished early gives some back (half the difference at a
    time, within 0 and MAX_INLINE_SHARE)."""
    from fhirgw.validation.parallel import MAX_INLINE_SHARE

    p = ValidationPool(1)
    p.balance(-0.010, 0.001, 100)   # waited 10 ms; 1 ms an item: 5 items would even it
    assert p.inline_share == pytest.approx(0.025)
    p.balance(+0.004, 0.001, 100)   # now the worker was 4 ms early
    assert p.inline_share == pytest.approx(0.015)
    p.balance(+1.0, 0.001, 100)
    assert p.inline_share == 0.0
    for _ in range(50):
        p.balance(-1.0, 0.001, 100)
    assert p.inline_share == MAX_INLINE_SHARE
    p.balance(-0.010, 0.0, 100)      # nothing to go by
    p.balance(-0.010, 0.001, 0)
    assert p.inline_share == MAX_INLINE_SHARE


def test_the_last_look_reports_the_wait():
    """PendingValidation tells the pool, on the request's last look, how long before or
    after the worker finished it asked; an earlier look (``upto``) or a failed chunk does
    not."""
    from fhirgw.validation.parallel import PendingValidation, _Chunk

    p = ValidationPool(1)
    originals = {i: ("Patient", patient(i)) for i in range(10)}

    def late():   # finished 50 ms after the request asked: the request waited
        now = time.monotonic()
        return None, now - 0.02, now + 0.05, None

    pending = PendingValidation(p, [_Chunk(list(range(10)), late, None)], originals)
    assert pending.first_error(upto=5) is None and p.inline_share == 0.0
    assert pending.first_error() is None
    # waited ~50 ms, at 7 ms an item: ~3.6 items would even it; half of that moves
    assert 0.15 < p.inline_share < 0.19
    share = p.inline_share
    assert pending.first_error() is None and p.inline_share == share   # once per request


def test_kept_entries_are_validated_by_the_request(gateways, module_pool):
    """Entries the request keeps (the last ``inline_share`` of them) are validated on its
    own thread: an invalid one among them answers as inline, after an invalid one the
    worker had, when there is one."""
    client, _app = gateways["on"]
    bundle_of = lambda bodies: {"resourceType": "Bundle", "type": "transaction",  # noqa: E731
                                "entry": [entry(b) for b in bodies]}
    bodies = [patient(i) for i in range(20)]
    bodies[17] = WRONG_TYPE
    off_client, _ = gateways["off"]
    expected = off_client.post("/fhir", json=bundle_of(bodies), headers=FJ)
    try:
        module_pool.inline_share = 0.5
        got = client.post("/fhir", json=bundle_of(bodies), headers=FJ)
        assert (got.status_code, got.json()["issue"]) == \
            (expected.status_code, expected.json()["issue"])
        bodies[3] = UNKNOWN   # the worker's, and first
        expected = off_client.post("/fhir", json=bundle_of(bodies), headers=FJ)
        module_pool.inline_share = 0.5
        got = client.post("/fhir", json=bundle_of(bodies), headers=FJ)
        assert expected.status_code == 400 and "Bundle.entry[3]" in str(expected.json())
        assert (got.status_code, got.json()["issue"]) == \
            (expected.status_code, expected.json()["issue"])
    finally:
        module_pool.inline_share = 0.0
