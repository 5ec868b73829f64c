"""Read-by-id over HTTP: the gateway (SQLite) beside a bare FastAPI app serving the same bytes.

Both run under uvicorn in their own process with the same settings (one worker, log level
warning, no access log, uvloop/httptools as installed). The load generator is httpx
(asyncio, keep-alive connections) in this process, with 1 and 8 concurrent clients, a
bounded number of requests per configuration, loopback only. The bare app is the framework
floor; the ratio gateway/bare is what the gateway keeps of it. Target: >= 50%.

    .venv/bin/python benchmarks/read.py [--requests 3000] [--patients 200]

On a small machine the load generator shares the CPUs with the server; its CPU use is
printed beside each figure (a client near 100% of a core is itself the bottleneck).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time

import httpx
import orjson

from _common import BIN, HERE, free_port, gateway, markdown_table, server, sqlite_database, \
    write_results
from ingest import client_resources

CONCURRENCY = (1, 8)


def seed_patients(base: str, n: int, headers: dict | None = None) -> dict:
    """Create n client Patients; return {id: {body, etag, last_modified}} as the gateway reads them."""
    random.seed(7)
    entries = [{"fullUrl": u, "resource": r, "request": {"method": "POST", "url": "Patient"}}
               for u, r in (client_resources(i)[0] for i in range(n))]
    with httpx.Client(timeout=120, headers=headers) as c:
        r = c.post(base, content=orjson.dumps({"resourceType": "Bundle", "type": "transaction",
                                               "entry": entries}),
                   headers={"Content-Type": "application/fhir+json"})
        r.raise_for_status()
        ids = [e["response"]["location"].split("/")[1] for e in r.json()["entry"]]
        out = {}
        for rid in ids:
            got = c.get(f"{base}/Patient/{rid}")
            got.raise_for_status()
            out[rid] = {"body": got.text, "etag": got.headers["etag"],
                        "last_modified": got.headers["last-modified"]}
    return out


async def _load(base: str, ids: list[str], requests: int, concurrency: int,
                headers: dict) -> dict:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    counter = iter(range(requests))
    errors = 0

    async with httpx.AsyncClient(limits=limits, timeout=30, headers=headers) as client:
        # open the connections and warm both sides up
        await asyncio.gather(*(client.get(f"{base}/Patient/{ids[i % len(ids)]}")
                               for i in range(concurrency * 20)))

        async def worker(k: int):
            nonlocal errors
            rnd = random.Random(k)
            for _ in counter:
                rid = ids[rnd.randrange(len(ids))]
                t0 = time.perf_counter()
                r = await client.get(f"{base}/Patient/{rid}")
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200 or not r.content:
                    errors += 1

        cpu0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    latencies.sort()
    return {"requests": requests, "seconds": round(elapsed, 3),
            "rps": round(requests / elapsed),
            "p50_ms": round(statistics.median(latencies) * 1000, 2),
            "p95_ms": round(latencies[int(len(latencies) * 0.95)] * 1000, 2),
            "client_cpu_pct": round(100 * cpu / elapsed), "errors": errors}


async def _raw_load(base: str, ids: list[str], requests: int, concurrency: int,
                    headers: dict) -> dict:
    """The same loop over a minimal HTTP/1.1 keep-alive client (asyncio streams), for when
    httpx itself is the bottleneck: it costs a fraction of httpx's CPU per request."""
    from urllib.parse import urlsplit

    url = urlsplit(base)
    host, port, prefix = url.hostname, url.port, url.path.rstrip("/")
    latencies: list[float] = []
    counter = iter(range(requests))
    errors = 0
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())

    async def connect():
        return await asyncio.open_connection(host, port)

    async def get(conn, rid) -> tuple[int, bytes]:
        reader, writer = conn
        writer.write(f"GET {prefix}/Patient/{rid} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     f"Accept: application/fhir+json\r\n{extra}\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await reader.readexactly(length)
        return status, body

    conns = [await connect() for _ in range(concurrency)]
    for conn in conns:
        for i in range(20):
            await get(conn, ids[i % len(ids)])

    async def worker(k: int):
        nonlocal errors
        rnd = random.Random(k)
        conn = conns[k]
        for _ in counter:
            rid = ids[rnd.randrange(len(ids))]
            t0 = time.perf_counter()
            status, body = await get(conn, rid)
            latencies.append(time.perf_counter() - t0)
            if status != 200 or not body:
                errors += 1

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    for _r, w in conns:
        w.close()
    latencies.sort()
    return {"requests": requests, "seconds": round(elapsed, 3),
            "rps": round(requests / elapsed),
            "p50_ms": round(statistics.median(latencies) * 1000, 2),
            "p95_ms": round(latencies[int(len(latencies) * 0.95)] * 1000, 2),
            "client_cpu_pct": round(100 * cpu / elapsed), "errors": errors}


def load(base, ids, requests, concurrency, client="httpx", headers=None) -> dict:
    """``headers``: e.g. the gateway's ``Authorization`` (the bare app ignores it)."""
    fn = _load if client == "httpx" else _raw_load
    try:
        import uvloop
        return uvloop.run(fn(base, ids, requests, concurrency, headers or {}))
    except ImportError:  # pragma: no cover
        return asyncio.run(fn(base, ids, requests, concurrency, headers or {}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=3000, help="requests per configuration")
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2, help="best of N rounds per configuration")
    ap.add_argument("--client", choices=["httpx", "raw", "both"], default="both",
                    help="load generator: httpx.AsyncClient, a minimal asyncio HTTP/1.1 "
                         "client (far less client CPU per request), or both")
    args = ap.parse_args(argv)

    clients = ["httpx", "raw"] if args.client == "both" else [args.client]
    results: dict = {"requests_per_config": args.requests, "patients": args.patients,
                     "rounds": args.rounds, "runs": {}}
    with sqlite_database() as db_url, gateway(db_url) as gw:
        gw_base = gw.base
        data = seed_patients(gw_base, args.patients, gw.headers)
        ids = list(data)
        size = statistics.mean(len(d["body"]) for d in data.values())
        print(f"read: {len(ids)} Patients (~{size:.0f} bytes each), {args.requests} requests "
              f"per configuration, best of {args.rounds}")
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(data, f)
            data_path = f.name
        port = free_port()
        bare_args = [str(BIN / "python"), "-m", "uvicorn", "bare_app:create", "--factory",
                     "--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port),
                     "--log-level", "warning", "--no-access-log"]
        try:
            with server(bare_args, f"http://127.0.0.1:{port}/healthz",
                        env={"FHIRGW_BENCH_BARE_DATA": data_path}, log_name="bare"):
                bare_base = f"http://127.0.0.1:{port}/fhir"
                for client in clients:
                    for c in CONCURRENCY:
                        servers = [("bare", bare_base), ("gateway", gw_base)]
                        if client == "raw":  # how much of the gap is the thread hop alone
                            servers.insert(1, ("bare_thread", bare_base.replace(
                                "/fhir", "/thread/fhir")))
                        for name, base in servers:
                            best = None
                            for _ in range(args.rounds):
                                # both get the same headers: the same bytes on the wire
                                run = load(base, ids, args.requests, c, client, gw.headers)
                                if run["errors"]:
                                    raise SystemExit(f"{name}: {run['errors']} failed requests")
                                if best is None or run["rps"] > best["rps"]:
                                    best = run
                            results["runs"][f"{client}_{name}_c{c}"] = best
                            print(f"  [{client:5s}] {name:11s} c={c}: {best['rps']:>6,} req/s  "
                                  f"p50 {best['p50_ms']:.2f} ms  p95 {best['p95_ms']:.2f} ms  "
                                  f"(client CPU {best['client_cpu_pct']}%)", flush=True)
        finally:
            os.unlink(data_path)

    rows = []
    for client in clients:
        for c in CONCURRENCY:
            bare = results["runs"][f"{client}_bare_c{c}"]
            gw = results["runs"][f"{client}_gateway_c{c}"]
            ratio = gw["rps"] / bare["rps"]
            results["runs"][f"{client}_ratio_c{c}"] = round(ratio, 3)
            rows_for = [("bare FastAPI (floor)", bare, "100%")]
            hop = results["runs"].get(f"{client}_bare_thread_c{c}")
            if hop:
                rows_for.append(("bare + 1 anyio thread hop", hop,
                                 f"{hop['rps'] / bare['rps']:.0%}"))
            rows_for.append(("fhirgw, SQLite", gw, f"{ratio:.0%}"))
            for label, r, pct in rows_for:
                rows.append([label, client, c, f"{r['rps']:,}", r["p50_ms"], r["p95_ms"], pct,
                             f"{r['client_cpu_pct']}%"])
    path = write_results("read", results)
    print()
    print(f"Read-by-id over HTTP, {args.requests:,} requests per row, keep-alive, loopback "
          f"(target: gateway >= 50% of the bare framework)\n")
    print(markdown_table(["server", "load generator", "concurrent clients", "requests/s",
                          "p50 ms", "p95 ms", "of floor", "client CPU"], rows))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
