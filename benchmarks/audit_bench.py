"""Audit trail throughput: ``AuditTrail`` writing read events to SQLite.

20,000 read events (a partner client reading an Observation of one of 500 patients) are
built with ``rest_event``, then ``record``-ed as fast as one thread can; the trail's writer
thread stores them in batches (``--max-batch``, one unit of work each) into a throwaway
SQLite database (WAL), with the R4 search engine indexing them like any stored resource.
Timed separately (one after the other, so the writer thread does not slow the building):

* build: ``patients_of`` + ``rest_event`` per event (what a request pays, with ``record``),
  each event dropped at once as in a request;
* record: the ``record`` calls alone (queueing);
* write: from the first ``record`` until ``flush()`` returns (events stored and indexed):
  the events/s figure, the writer's throughput.

A search ``AuditEvent?patient=Patient/p7`` checks that every event was written.

    .venv/bin/python benchmarks/audit_bench.py [--events 20000] [--max-batch 500]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import markdown_table, sqlite_database, write_results  # noqa: E402

from fhirgw.search import SearchEngine  # noqa: E402
from fhirgw.security.audit import AuditTrail, install_rule, patients_of, rest_event  # noqa: E402
from fhirgw.security.principal import Principal, Scopes  # noqa: E402
from fhirgw.store.db import make_engine, migrate  # noqa: E402
from fhirgw.store.repository import Repository  # noqa: E402

PRINCIPAL = Principal("acme-client", "Acme Referrals", Scopes.parse("system/*.rs"),
                      organization="Organization/acme", token_id="jti-bench",
                      details={"address": "10.1.2.3"})


def run(events: int, max_batch: int, patients: int) -> dict:
    with sqlite_database() as url:
        engine = make_engine(url)
        migrate(engine)
        repo = Repository(engine, SearchEngine())
        install_rule(repo)
        trail = AuditTrail(repo, max_batch=max_batch)
        bodies = [{"resourceType": "Observation", "id": f"o{i}", "status": "final",
                   "code": {"text": "PHQ-9"},
                   "subject": {"reference": f"Patient/p{i % patients}"}}
                  for i in range(events)]
        def build_one(body):
            return rest_event(PRINCIPAL, "read", 200, resource_refs=[f"Observation/{body['id']}"],
                              patient_refs=patients_of(body))
        start = time.perf_counter()
        for body in bodies:      # as in a request: the event is dropped right after
            build_one(body)
        build = time.perf_counter() - start
        events_built = [build_one(body) for body in bodies]
        start = time.perf_counter()
        for event in events_built:
            trail.record(event)
        record = time.perf_counter() - start
        if not trail.flush(timeout=600):
            raise SystemExit("the audit trail did not flush in 10 minutes")
        elapsed = time.perf_counter() - start
        trail.close()
        if trail.written != events or trail.lost or trail.dropped:
            raise SystemExit(f"written {trail.written}, lost {trail.lost}, "
                             f"dropped {trail.dropped} of {events}")
        found = repo.run(lambda tx: tx.search("AuditEvent", [("patient", "Patient/p7")],
                                              limit=None), write=False)
        expected = len(range(7, events, patients))
        if len(found) != expected:
            raise SystemExit(f"AuditEvent?patient=Patient/p7 found {len(found)}, "
                             f"expected {expected}")
        engine.dispose()
    return {"events": events, "max_batch": max_batch,
            "build_us_per_event": round(build / events * 1e6, 2),
            "record_us_per_event": round(record / events * 1e6, 2),
            "written_s": round(elapsed, 3),
            "events_per_s": round(events / elapsed)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--max-batch", type=int, default=500)
    ap.add_argument("--patients", type=int, default=500)
    args = ap.parse_args(argv)
    r = run(args.events, args.max_batch, args.patients)
    print(markdown_table(
        ["database", "events", "batch", "build µs/event", "record µs/event", "written in s",
         "events/s"],
        [["sqlite", r["events"], r["max_batch"], r["build_us_per_event"],
          r["record_us_per_event"], r["written_s"], r["events_per_s"]]]))
    path = write_results("audit", {"sqlite": r})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
