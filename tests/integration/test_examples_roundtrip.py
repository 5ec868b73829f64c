"""Every official R4 example the gateway serves survives create -> read unchanged.

Unchanged means: equal as JSON with every number compared by its exact text (``72.50`` stays
``72.50``), apart from ``id`` and ``meta``, which the server owns. Examples that fhir.resources
R4B rejects must be rejected by the gateway too (and nothing else may be).

The full set runs in-process on SQLite (fastapi TestClient: same app, no sockets, batch
Bundles of 200); every 10th example also runs through PostgreSQL over real HTTP.
Set FHIRGW_ROUNDTRIP_REPORT=path to write the summary as JSON, FHIRGW_EXAMPLE_STEP=n to
test every n-th example only (quick local runs; the default 1 tests them all).
"""
from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from tests.auth import authorize
from tests.integration.examples import (PACKAGE, batch_body, chunks, first_difference,
                                        load_examples, strict)

FJ = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def example_set():
    found = load_examples()
    if not found.examples:
        if os.environ.get("CI") == "true":
            pytest.fail(f"no R4 examples under {PACKAGE}; run scripts/fetch_test_data.sh")
        pytest.skip(f"no R4 examples under {PACKAGE}; run scripts/fetch_test_data.sh")
    step = int(os.environ.get("FHIRGW_EXAMPLE_STEP", "1") or 1)
    found.examples = found.examples[::step]
    return found


@dataclass
class Outcome:
    tested: int = 0
    created: int = 0
    #: (file, reason): fhir.resources R4B rejects it, and so did the gateway
    rejected_by_r4b: list = field(default_factory=list)
    #: (file, reason): R4B accepts it, a documented gateway rule refuses it (GATEWAY_RULES)
    rejected_by_gateway_rule: list = field(default_factory=list)
    #: (file, reason): the gateway rejected what R4B accepts, for no documented rule
    rejected_by_gateway_only: list = field(default_factory=list)
    #: files that came back with the business identifier the gateway stamps on
    #: Task/ServiceRequest created without one (fhirgw.workflows.referral.BusinessIdentifiers)
    identifier_added: list = field(default_factory=list)
    #: (file, where): created but read back different
    changed: list = field(default_factory=list)
    #: (file, status, detail): anything else (5xx, read failed)
    errors: list = field(default_factory=list)

    def summary(self) -> dict:
        return {"tested": self.tested, "created_and_compared": self.created,
                "rejected_by_r4b": len(self.rejected_by_r4b),
                "rejected_by_gateway_rule": len(self.rejected_by_gateway_rule),
                "rejected_by_gateway_only": len(self.rejected_by_gateway_only),
                "business_identifier_added": len(self.identifier_added),
                "changed_on_round_trip": len(self.changed), "errors": len(self.errors),
                "examples": {k: getattr(self, k)[:10] for k in (
                    "rejected_by_r4b", "rejected_by_gateway_rule", "rejected_by_gateway_only",
                    "changed", "errors")}}


#: deliberate refusals of R4B-valid resources: (resourceType, regex over the diagnostics)
GATEWAY_RULES = [
    # a stored SearchParameter goes live (fhirgw.search.custom.check): its base types must be
    # ones the gateway serves (the 18 R4 types without an R4B model are not)
    ("SearchParameter", re.compile(r"SearchParameter\.base '\w+' is not a resource type")),
]


def _gateway_rule(rtype: str, diagnostics: str) -> bool:
    return any(t == rtype and rx.search(diagnostics) for t, rx in GATEWAY_RULES)


def _r4b_rejects(raw: bytes) -> str | None:
    from fhirgw.model import resources as res
    from fhirgw.model.errors import FhirError

    try:
        res.validate(res.loads(raw))
    except FhirError as exc:
        return exc.issues[0].diagnostics
    return None


def _diagnostics(entry: dict) -> str:
    oo = (entry.get("response") or {}).get("outcome") or {}
    return "; ".join(i.get("diagnostics", "") for i in oo.get("issue", []))[:300]


def roundtrip(http, examples, *, read_threads: int = 1,
              identifier_system: str | None = None) -> Outcome:
    """POST the examples in batch Bundles, read every created one back, compare strictly.

    SearchParameters go first: each one stored goes live and reindexes its base types,
    which is cheap while the database is still empty.
    """
    if identifier_system is None:
        from fhirgw.config import Settings
        identifier_system = Settings().identifier_system
    examples = sorted(examples, key=lambda e: e.rtype != "SearchParameter")
    out = Outcome(tested=len(examples))
    created = []
    for batch in chunks(examples):
        r = http.post("/fhir", content=batch_body(batch), headers=FJ)
        assert r.status_code == 200, r.text[:2000]
        entries = r.json().get("entry", [])
        assert len(entries) == len(batch)
        for ex, entry in zip(batch, entries):
            status = entry["response"]["status"]
            if status.startswith("201"):
                loc = entry["response"]["location"].split("/fhir/")[-1]
                created.append((ex, "/".join(loc.split("/")[:2])))
            elif status.startswith(("400", "422")):
                reason = _r4b_rejects(ex.raw)
                if reason:
                    out.rejected_by_r4b.append((ex.name, reason[:200]))
                elif _gateway_rule(ex.rtype, _diagnostics(entry)):
                    out.rejected_by_gateway_rule.append((ex.name, _diagnostics(entry)))
                else:
                    out.rejected_by_gateway_only.append((ex.name, _diagnostics(entry)))
            else:
                out.errors.append((ex.name, status, _diagnostics(entry)))

    def check(item):
        ex, ref = item
        got = http.get(f"/fhir/{ref}")
        if got.status_code != 200:
            return ("error", ex.name, got.status_code, got.text[:200])
        sent, read = strict(ex.raw), strict(got.content)
        added = False
        if "identifier" not in sent and isinstance(read, dict) and read.get("identifier"):
            ours = [i for i in read["identifier"] if i.get("system") == identifier_system]
            if ours and len(ours) == len(read["identifier"]):
                del read["identifier"]
                added = True
        diff = first_difference(sent, read)
        if diff:
            return ("changed", ex.name, diff)
        return ("added", ex.name) if added else None

    if read_threads > 1:
        with ThreadPoolExecutor(read_threads) as pool:
            results = list(pool.map(check, created))
    else:
        results = [check(item) for item in created]
    for res in results:
        if res is None or res[0] == "added":
            out.created += 1
            if res is not None:
                out.identifier_added.append(res[1])
        elif res[0] == "changed":
            out.changed.append(res[1:])
        else:
            out.errors.append(res[1:])
    return out


def _report(name: str, example_set, out: Outcome) -> None:
    summary = out.summary()
    summary["skipped"] = {"too_big": len(example_set.too_big),
                          "unsupported_type": len(example_set.unsupported),
                          "not_a_resource": len(example_set.not_resources)}
    print(f"\n[{name}] " + json.dumps(summary, indent=1))
    path = os.environ.get("FHIRGW_ROUNDTRIP_REPORT")
    if path:
        with open(f"{path}.{name}.json", "w") as f:
            json.dump(summary, f, indent=1)


def _assert_clean(out: Outcome) -> None:
    problems = out.rejected_by_gateway_only + out.changed + out.errors
    assert not problems, (
        f"{len(out.changed)} changed, {len(out.rejected_by_gateway_only)} rejected although "
        f"R4B accepts them, {len(out.errors)} errors; first ones: "
        + json.dumps(problems[:15], indent=1, default=str))


def test_all_examples_round_trip_on_sqlite(example_set, tmp_path):
    from fastapi.testclient import TestClient

    from fhirgw.app import create_app
    from fhirgw.config import Settings

    app = create_app(Settings(database_url=f"sqlite:///{tmp_path}/rt.db",
                              base_url="http://testserver/fhir"))
    try:
        with TestClient(app, base_url="http://testserver") as http:
            authorize(http, app)
            out = roundtrip(http, example_set.examples)
    finally:
        app.state.router.repo.engine.dispose()
    _report("sqlite", example_set, out)
    # sanity: the bulk of the examples are served and valid
    assert out.created > 0.9 * out.tested, out.summary()
    _assert_clean(out)


def test_every_tenth_example_round_trips_through_postgresql_over_http(example_set, pg_url):
    import httpx

    from fhirgw.app import create_app
    from fhirgw.config import Settings
    from tests.integration.conftest import bind_free_port, start_server

    subset = example_set.examples[::10]
    sock = bind_free_port()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = create_app(Settings(database_url=pg_url, base_url=f"{base}/fhir"))
    stop = start_server(app, sock)
    try:
        with httpx.Client(base_url=base, timeout=60) as http:
            authorize(http, app)
            out = roundtrip(http, subset, read_threads=4)
    finally:
        stop()
        app.state.router.repo.engine.dispose()
    _report("postgresql", example_set, out)
    assert out.created > 0.9 * out.tested, out.summary()
    _assert_clean(out)
