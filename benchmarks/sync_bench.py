"""Sync delivery benchmark: throughput to a loopback partner and commit-to-partner latency.

The partner is a real gateway (``fhirgw serve`` in a subprocess, its own SQLite file, worker
off, auth disabled on 127.0.0.1: it stands in for an external EHR, as in tests/sync). Ours
runs in this process: the repository with the sync rule and the worker (no HTTP API).

* throughput: N referrals committed with the worker stopped, then the worker started; the
  time until every row is sent. Each referral is one transaction of 3 resources (Patient,
  ServiceRequest, Task) on the partner. Reported as resources/s and referrals/s.
* latency: referrals committed one at a time (worker running, woken by the commit); from
  the commit returning to the partner's answer being recorded (``sent_at``), p50 / p95.
* CPU during the throughput run, ours and the partner's, per referral: unlike the rate, it
  hardly moves when other work shares the machine, so it shows where the time goes.

    python benchmarks/sync_bench.py [--referrals 600] [--latency 100] [--database URL]

Targets (issue 6): >= 500 resources/s, p50 < 250 ms.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from sqlalchemy import func, select

from benchmarks._common import BIN, cpu_seconds, free_port, wait_ready

CT = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"


def start_partner(tmp: str):
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    env = {**os.environ, "FHIRGW_WORKER": "0", "FHIRGW_SYNC_CONFIG": "",
           "FHIRGW_IDENTIFIER_SYSTEM": "http://partner.example/sid",
           "FHIRGW_AUTH": "disabled"}   # the stand-in partner EHR, loopback only
    proc = subprocess.Popen([str(BIN / "fhirgw"), "serve", "--port", str(port), "--database",
                             f"sqlite:///{tmp}/partner.db", "--log-level", "warning", "--workers", os.environ.get("PARTNER_WORKERS", "1")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(f"{base}/metadata", proc)
    return proc, base


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--referrals", type=int, default=600)
    ap.add_argument("--latency", type=int, default=100)
    ap.add_argument("--database", default=None, help="ours (default: a temp SQLite file)")
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()

    from fhirgw.app import _default_search_engine
    from fhirgw.config import Settings
    from fhirgw.store.db import make_engine, migrate
    from fhirgw.store.repository import Repository
    from fhirgw.sync import setup
    from fhirgw.sync.config import parse
    from fhirgw.sync.tables import outbox
    from fhirgw.workflows import rules

    tmp = tempfile.mkdtemp(prefix="syncbench")
    proc, pbase = start_partner(tmp)
    try:
        settings = Settings(database_url=args.database or f"sqlite:///{tmp}/ours.db",
                            base_url="http://ours.example/fhir", worker=False)
        eng = make_engine(settings.database_url, pool_size=16)
        migrate(eng)
        repo = Repository(eng, _default_search_engine(settings))
        repo.rules.extend(rules(settings))
        cfg = parse({"worker": {"batch": 100, "idle": 0.05},
                     "defaults": {"concurrency": args.concurrency, "timeout": 30}})
        _rule, worker = setup(repo, settings, cfg)
        repo.after_commit.append(worker.wake)

        def partner(tx):
            ep = tx.create("Endpoint", {"resourceType": "Endpoint", "status": "active",
                                        "identifier": [{"value": "bench"}],
                                        "connectionType": {"system": CT, "code": "hl7-fhir-rest"},
                                        "payloadType": [{"text": "x"}], "address": pbase}).stored
            return tx.create("Organization", {"resourceType": "Organization", "name": "B",
                                              "endpoint": [{"reference": f"Endpoint/{ep.res_id}"}]}
                             ).stored.res_id
        org = repo.run(partner)

        def referral(tx, i):
            pat = tx.create("Patient", {"resourceType": "Patient",
                                        "identifier": [{"system": "urn:mrn", "value": f"m{i}"}],
                                        "name": [{"family": f"Client{i}"}]}).stored
            tx.create("ServiceRequest", {"resourceType": "ServiceRequest", "status": "active",
                                         "intent": "order",
                                         "subject": {"reference": f"Patient/{pat.res_id}"},
                                         "performer": [{"reference": f"Organization/{org}"}]})

        def counts():
            with eng.connect() as c:
                return dict(c.execute(select(outbox.c.status, func.count())
                                      .group_by(outbox.c.status)).all())

        # throughput
        n = args.referrals
        for i in range(n):
            repo.run(lambda tx, i=i: referral(tx, i))
        cpu0, pcpu0 = time.process_time(), cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        worker.start()
        while counts().get("sent", 0) < n:
            if time.perf_counter() - t0 > 300:
                raise SystemExit(f"timed out: {counts()}")
            time.sleep(0.01)
        dt = time.perf_counter() - t0
        cpu, pcpu = time.process_time() - cpu0, cpu_seconds(proc.pid) - pcpu0
        print(f"throughput: {n} referrals ({3 * n} resources) in {dt:.2f}s = "
              f"{3 * n / dt:.0f} resources/s ({n / dt:.0f} referrals/s), "
              f"concurrency {args.concurrency}; outbox {counts()}")
        print("  worker time: " + ", ".join(f"{k} {v:.2f}" for k, v in worker.stats.items()
                                           if isinstance(v, float)))
        print(f"  CPU: ours {cpu:.2f}s ({1000 * cpu / n:.2f} ms/referral, this process: "
              f"worker + polling the outbox), partner {pcpu:.2f}s "
              f"({1000 * pcpu / n:.2f} ms/referral); {os.cpu_count()} cores, load "
              f"{os.getloadavg()[0]:.1f}")

        # latency
        lat = []
        for i in range(args.latency):
            before = counts().get("sent", 0)
            repo.run(lambda tx, i=i: referral(tx, n + i))
            t_commit = time.time_ns() // 1000
            while True:
                with eng.connect() as c:
                    sent_at = c.execute(select(outbox.c.sent_at).where(outbox.c.status == "sent")
                                        .order_by(outbox.c.id.desc()).limit(1)).scalar()
                if counts().get("sent", 0) > before and sent_at:
                    break
                time.sleep(0.002)
            lat.append((sent_at - t_commit) / 1000)
            time.sleep(0.02)
        lat.sort()
        p50 = statistics.median(lat)
        p95 = lat[int(0.95 * (len(lat) - 1))]
        print(f"commit-to-partner latency over {len(lat)} referrals: p50 {p50:.1f} ms, "
              f"p95 {p95:.1f} ms, max {lat[-1]:.1f} ms")
        worker.stop()
        eng.dispose()
        r = httpx.get(f"{pbase}/ServiceRequest?_summary=count").json()
        print(f"partner holds {r.get('total')} ServiceRequests (expected {n + len(lat)})")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
