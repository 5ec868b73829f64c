"""Ingest, two gateways side by side: which of two versions writes a Bundle faster.

On a shared host the machine's speed moves by more than a change is worth within minutes
(by a third, some days), so two runs one after the other compare the host as much as the
code. Here both gateways run at once, each on a fresh database, and the same Bundles go to
one and then the other, alternating which goes first; the host's drift falls on both alike.
A (the baseline) is the code of a git revision, checked out in a temporary worktree and put
first on the server's ``PYTHONPATH``; B is this checkout.

    .venv/bin/python benchmarks/ingest_ab.py --base HEAD~1 [--db sqlite] [--rounds 2]
        [--resources 10000] [--bundle-size 100] [--env-a K=V ...] [--env-b K=V ...]

Prints each side's mean and median wall time per Bundle, the CPU its server and validation
worker spent per Bundle, and per Bundle the difference A - B (positive: B was faster), with
how many Bundles B was faster on. Figures, not a gate.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager

from _common import (ROOT, PlainClient, cpu_seconds, gateway, pg_database, sqlite_database,
                     still_heap, write_results)
from ingest import PER_CLIENT, bundle_bytes, make_bundles


@contextmanager
def worktree(rev: str):
    """A checkout of ``rev`` in a temporary directory, removed afterwards."""
    path = tempfile.mkdtemp(prefix="fhirgw-ab-")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", path, rev],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", path],
                       capture_output=True)


def _env(pairs: list[str]) -> dict[str, str]:
    return dict(p.split("=", 1) for p in pairs)


def run(db: str, env_a: dict, env_b: dict, payloads: list[bytes], warm: bytes) -> dict:
    """One round: both gateways up, every Bundle to each, alternating the order."""
    walls: dict[str, list[float]] = {"A": [], "B": []}
    with ExitStack() as stack:
        clients, procs = {}, {}
        for side, env in (("A", env_a), ("B", env_b)):
            url = stack.enter_context(sqlite_database() if db == "sqlite" else pg_database())
            if url is None:
                raise SystemExit("no PostgreSQL to run on")
            gw = stack.enter_context(gateway(url, env=env))
            clients[side] = stack.enter_context(PlainClient(gw, {"Content-Type":
                                                                 "application/fhir+json"}))
            procs[side] = gw.proc.pid
        # warmed once both are up: a keep-alive connection left idle while the other
        # gateway starts (several seconds) is closed by the server (uvicorn: after 5 s)
        for side, client in clients.items():
            status, body = client.post(warm)
            if status != 200:
                raise SystemExit(f"{side}: warm-up transaction failed: {status} {body[:300]!r}")
        before = {side: cpu_seconds(pid, with_children=True) for side, pid in procs.items()}
        with still_heap():
            for i, payload in enumerate(payloads):
                for side in (("A", "B") if i % 2 == 0 else ("B", "A")):
                    t0 = time.perf_counter()
                    status, body = clients[side].post(payload)
                    walls[side].append(time.perf_counter() - t0)
                    if status != 200:
                        raise SystemExit(f"{side}: transaction failed: {status} {body[:300]!r}")
        cpu = {side: cpu_seconds(pid, with_children=True) - before[side]
               for side, pid in procs.items()}
    return {"walls": walls, "cpu": cpu}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="git revision of A (the baseline)")
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--resources", type=int, default=10_000)
    ap.add_argument("--bundle-size", type=int, default=100)
    ap.add_argument("--env-a", nargs="*", default=[], help="more environment for A (K=V)")
    ap.add_argument("--env-b", nargs="*", default=[], help="more environment for B (K=V)")
    args = ap.parse_args(argv)

    payloads = [bundle_bytes(b) for b in make_bundles(args.resources, args.bundle_size)]
    warm = bundle_bytes(make_bundles(PER_CLIENT, PER_CLIENT, 1)[0])
    walls: dict[str, list[float]] = {"A": [], "B": []}
    cpu = {"A": 0.0, "B": 0.0}
    with worktree(args.base) as tree:
        env_a = {"PYTHONPATH": tree, **_env(args.env_a)}
        env_b = _env(args.env_b)
        for n in range(max(1, args.rounds)):
            got = run(args.db, env_a, env_b, payloads, warm)
            for side in "AB":
                walls[side] += got["walls"][side]
                cpu[side] += got["cpu"][side]
            print(f"  round {n + 1}: A mean {statistics.mean(got['walls']['A']) * 1000:.2f} ms, "
                  f"B mean {statistics.mean(got['walls']['B']) * 1000:.2f} ms", flush=True)
    bundles = len(walls["A"])
    diff = [a - b for a, b in zip(walls["A"], walls["B"])]
    out = {"base": args.base, "db": args.db, "rounds": args.rounds, "bundles": bundles,
           "bundle_size": args.bundle_size}
    for side, label in (("A", f"A ({args.base})"), ("B", "B (this checkout)")):
        w = walls[side]
        out[side] = {"mean_ms": round(statistics.mean(w) * 1000, 2),
                     "median_ms": round(statistics.median(w) * 1000, 2),
                     "server_cpu_ms_per_bundle": round(cpu[side] / bundles * 1000, 2)}
        print(f"{label}: mean {out[side]['mean_ms']} ms, median {out[side]['median_ms']} ms "
              f"per Bundle; server and worker CPU {out[side]['server_cpu_ms_per_bundle']} ms "
              f"per Bundle")
    out["a_minus_b_ms"] = {"mean": round(statistics.mean(diff) * 1000, 2),
                           "median": round(statistics.median(diff) * 1000, 2),
                           "b_faster": sum(d > 0 for d in diff)}
    print(f"A - B per Bundle: mean {out['a_minus_b_ms']['mean']:+.2f} ms, median "
          f"{out['a_minus_b_ms']['median']:+.2f} ms; B faster on {out['a_minus_b_ms']['b_faster']}"
          f" of {bundles} Bundles")
    print(f"results: {write_results(f'ingest_ab_{args.db}', out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
