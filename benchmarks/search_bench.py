"""Search latency at 10k and 1M stored resources, on SQLite and PostgreSQL.

The datasets come from ``generate.py`` (same seed, same shape at every size) and are kept
between runs: PostgreSQL databases ``fhirgw_bench_10k`` / ``fhirgw_bench_1m`` on
127.0.0.1:5432, SQLite files under ``--data-dir`` (default ``~/.cache/fhirgw-bench``). A
missing one is generated first (1M takes about 10-20 minutes per database).

Queries, each run ``--runs`` times with parameter values drawn (seeded) from the data:

* ``appointments``: ``Appointment?patient=Patient/X&date=ge<date>&_sort=date``
* ``tasks``:        ``Task?owner=Organization/X&status=requested&_lastUpdated=gt<instant>``
* ``name``:         ``Patient?name=<family name>``
* ``chain``:        ``Appointment?patient.identifier=urn:iop:mrn|MRN...``
* ``include``:      ``Task?owner=Organization/X&_include=Task:focus``

Timed: ``SearchEngine.parse`` + ``SearchEngine.search`` (first page, includes) on a pooled
connection, in process. ``--http`` also times a subset over HTTP against ``fhirgw serve``.
Also measured: index extraction vs fhir.resources R4B validation per resource.
``--explain`` prints the query plans (EXPLAIN ANALYZE / EXPLAIN QUERY PLAN) of one run each.

    .venv/bin/python benchmarks/search_bench.py [--sizes 10000,1000000] [--db sqlite,postgresql]

Targets (issue 3): p50 at 1M within 3x of p50 at 10k; p50 < 20 ms at 1M on PostgreSQL.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import httpx  # noqa: E402
from sqlalchemy import event, text  # noqa: E402

from _common import RESULTS, gateway, markdown_table, write_results  # noqa: E402
from generate import T0_US, WINDOW_US, Generator, ensure_dataset  # noqa: E402
from fhirgw.model import resources as res  # noqa: E402
from fhirgw.search import SearchEngine  # noqa: E402
from fhirgw.search.values import us_to_iso  # noqa: E402
from fhirgw.store.db import make_engine  # noqa: E402
from fhirgw.store.tables import param_key  # noqa: E402

PG_BASE = os.environ.get("FHIRGW_BENCH_PG_BASE", "postgresql+psycopg://postgres@127.0.0.1:5432")
QUERIES = ["appointments", "tasks", "name", "chain", "include"]
HTTP_QUERIES = ["appointments", "tasks", "chain"]


def label(n: int) -> str:
    return f"{n // 1_000_000}m" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k"


def db_url(kind: str, n: int, data_dir: Path) -> str:
    if kind == "postgresql":
        return f"{PG_BASE}/fhirgw_bench_{label(n)}"
    return f"sqlite:///{data_dir}/bench_{label(n)}.db"


# ---------------------------------------------------------------- parameter pools

def pools(engine, rng: random.Random, k: int = 60) -> dict[str, list]:
    """Values to search with, sampled from the stored data (deterministically)."""
    def col(sql):
        with engine.connect() as c:
            vals = [r[0] for r in c.execute(text(sql))]
        rng.shuffle(vals)
        return vals[:k]

    key = param_key
    # Appointment.patient is derived (``SearchRegistry.derived``): actor's rows of Patients
    return {
        "patient": col("SELECT target_id FROM sp_reference WHERE "
                       f"pid={key('Appointment', 'actor')} AND target_type='Patient' "
                       "AND rid % 7 = 0 ORDER BY rid LIMIT 2000"),
        "owner": col("SELECT DISTINCT target_id FROM sp_reference WHERE "
                     f"pid={key('Task', 'owner')} ORDER BY target_id"),
        "family": col("SELECT DISTINCT exact FROM sp_string WHERE "
                      f"pid={key('Patient', 'family')} ORDER BY exact"),
        "mrn": col("SELECT t.code FROM sp_token t JOIN sp_reference r ON "
                   f"r.pid={key('Appointment', 'actor')} AND r.target_type='Patient' "
                   "JOIN resource p ON p.res_type='Patient' AND p.res_id=r.target_id AND p.rid=t.rid "
                   f"WHERE t.pid={key('Patient', 'identifier')} AND r.rid % 11 = 0 "
                   "ORDER BY r.rid LIMIT 2000"),
    }


def make_query(name: str, rng: random.Random, p: dict) -> tuple[str, list[tuple[str, str]]]:
    if name == "appointments":
        day = T0_US + rng.randrange(0, WINDOW_US)
        return "Appointment", [("patient", f"Patient/{rng.choice(p['patient'])}"),
                               ("date", "ge" + us_to_iso(day)[:10]), ("_sort", "date")]
    if name == "tasks":
        since = T0_US + WINDOW_US - rng.randrange(1, 120) * 86400 * 1_000_000
        return "Task", [("owner", f"Organization/{rng.choice(p['owner'])}"),
                        ("status", "requested"),
                        ("_lastUpdated", "gt" + us_to_iso(since)[:19] + "Z")]
    if name == "name":
        return "Patient", [("name", rng.choice(p["family"]))]
    if name == "chain":
        return "Appointment", [("patient.identifier", f"urn:iop:mrn|{rng.choice(p['mrn'])}")]
    if name == "include":
        return "Task", [("owner", f"Organization/{rng.choice(p['owner'])}"),
                        ("_include", "Task:focus")]
    raise ValueError(name)


# ---------------------------------------------------------------- timing

def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def summarize(ms: list[float], results: list[int]) -> dict:
    return {"p50_ms": round(pct(ms, 0.5), 2), "p95_ms": round(pct(ms, 0.95), 2),
            "mean_ms": round(statistics.fmean(ms), 2), "runs": len(ms),
            "mean_results": round(statistics.fmean(results), 1)}


def run_engine(engine, search: SearchEngine, p: dict, runs: int, seed: int) -> dict:
    out = {}
    for name in QUERIES:
        rng = random.Random(f"{seed}-{name}")
        qs = [make_query(name, rng, p) for _ in range(runs)]
        for rtype, items in qs[:10]:   # warm-up (caches, plans)
            _search(engine, search, rtype, items)
        ms, n = [], []
        for rtype, items in qs:
            t = time.perf_counter()
            page = _search(engine, search, rtype, items)
            ms.append((time.perf_counter() - t) * 1000)
            n.append(len(page.matches) + len(page.included))
        out[name] = summarize(ms, n)
    return out


def _search(engine, search, rtype, items):
    q = search.parse(rtype, items, base_url="http://bench/fhir")
    with engine.connect() as conn:
        return search.search(conn, None, q)


def run_http(url: str, p: dict, runs: int, seed: int) -> dict:
    out = {}
    with gateway(url) as gw, httpx.Client(timeout=30, auth=gw.auth()) as client:
        base = gw.base
        for name in HTTP_QUERIES:
            rng = random.Random(f"{seed}-{name}")
            qs = [make_query(name, rng, p) for _ in range(runs)]
            for rtype, items in qs[:10]:
                client.get(f"{base}/{rtype}?{urlencode(items)}").raise_for_status()
            ms, n = [], []
            for rtype, items in qs:
                t = time.perf_counter()
                r = client.get(f"{base}/{rtype}?{urlencode(items)}")
                ms.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
                n.append(len(r.json().get("entry", [])))
            out[name] = summarize(ms, n)
    return out


def explain(engine, search: SearchEngine, p: dict, seed: int) -> None:
    """Print the plan of every statement one search of each query runs."""
    pg = engine.dialect.name == "postgresql"
    for name in QUERIES:
        rtype, items = make_query(name, random.Random(f"{seed}-{name}"), p)
        captured = []

        def grab(conn, cursor, statement, parameters, context, executemany):
            if statement.lstrip().upper().startswith("SELECT"):
                captured.append((statement, parameters))

        event.listen(engine, "before_cursor_execute", grab)
        try:
            _search(engine, search, rtype, items)
        finally:
            event.remove(engine, "before_cursor_execute", grab)
        print(f"\n=== {name}: {rtype}?{urlencode(items)}")
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            for stmt, params in captured:
                cur = raw.cursor()
                cur.execute(("EXPLAIN (ANALYZE, BUFFERS) " if pg else "EXPLAIN QUERY PLAN ") + stmt,
                            params)
                for row in cur.fetchall():
                    print("   ", row[0] if pg else row)


# ---------------------------------------------------------------- extraction vs validation

def extraction_vs_validation(n: int = 3000) -> dict:
    search = SearchEngine()
    items = [(t, b) for t, _i, b, _lu in Generator(n, seed=7)]
    for t, b in items[:200]:   # warm-up: compile plans and models
        search.index_rows(t, b)
        res.validate(b, t)
    per: dict[str, dict[str, float]] = {}
    tot_x = tot_v = 0.0
    for t, b in items:
        t0 = time.perf_counter()
        search.index_rows(t, b)
        t1 = time.perf_counter()
        res.validate(b, t)
        t2 = time.perf_counter()
        d = per.setdefault(t, {"n": 0, "extract": 0.0, "validate": 0.0})
        d["n"] += 1
        d["extract"] += t1 - t0
        d["validate"] += t2 - t1
        tot_x += t1 - t0
        tot_v += t2 - t1
    rows = {t: {"n": d["n"], "extract_us": round(d["extract"] / d["n"] * 1e6, 1),
                "validate_us": round(d["validate"] / d["n"] * 1e6, 1)} for t, d in sorted(per.items())}
    return {"per_type": rows, "all": {"n": len(items), "extract_us": round(tot_x / len(items) * 1e6, 1),
                                      "validate_us": round(tot_v / len(items) * 1e6, 1)}}


# ---------------------------------------------------------------- main

def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,1000000")
    ap.add_argument("--db", default="sqlite,postgresql")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--http", action="store_true", help="also time a subset over HTTP")
    ap.add_argument("--http-runs", type=int, default=100)
    ap.add_argument("--explain", action="store_true", help="print query plans, no timing")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "fhirgw-bench")
    args = ap.parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = args.db.split(",")

    results: dict = {"engine": {}, "http": {}, "loads": {}}
    for kind in kinds:
        for n in sizes:
            url = db_url(kind, n, args.data_dir)
            key = f"{kind}/{label(n)}"
            print(f"== {key}: {url}", flush=True)
            t = time.perf_counter()
            stats = ensure_dataset(url, n, log=lambda m: print(m, flush=True))
            if stats:
                stats["total_s"] = round(time.perf_counter() - t, 1)
                results["loads"][key] = stats
                print(f"   generated: {stats}")
            engine = make_engine(url)
            search = SearchEngine(base_urls=["http://bench/fhir"])
            p = pools(engine, random.Random(args.seed))
            if args.explain:
                explain(engine, search, p, args.seed)
                engine.dispose()
                continue
            results["engine"][key] = r = run_engine(engine, search, p, args.runs, args.seed)
            for q, s in r.items():
                print(f"   {q:13s} p50 {s['p50_ms']:7.2f} ms  p95 {s['p95_ms']:7.2f} ms  "
                      f"({s['mean_results']} resources/page)", flush=True)
            engine.dispose()
            if args.http:
                results["http"][key] = h = run_http(url, p, args.http_runs, args.seed)
                for q, s in h.items():
                    print(f"   http {q:8s} p50 {s['p50_ms']:7.2f} ms  p95 {s['p95_ms']:7.2f} ms",
                          flush=True)
    if args.explain:
        return
    print("== index extraction vs R4B validation (per resource)")
    results["extraction"] = ev = extraction_vs_validation()
    print(f"   extraction {ev['all']['extract_us']} us, validation {ev['all']['validate_us']} us")

    md = report(results, sizes, kinds)
    print(md)
    path = write_results("search", results)
    (RESULTS / "search.md").write_text(md + "\n")
    print(f"wrote {path} and {RESULTS / 'search.md'}")
    for kind in kinds:
        for n in sizes:
            if n >= 1_000_000:
                u = db_url(kind, n, args.data_dir)
                drop = (f"psql -h 127.0.0.1 -U postgres -c 'DROP DATABASE \"{u.rsplit('/', 1)[1]}\" "
                        "WITH (FORCE)'" if kind == "postgresql" else f"rm {u[len('sqlite:///'):]}*")
                print(f"kept {u} for the next run; drop it with: {drop}")


def report(results: dict, sizes: list[int], kinds: list[str]) -> str:
    lines = ["### In process (SearchEngine.parse + search, first page)", ""]
    headers = ["query", "db"] + [f"{label(n)} p50 / p95 ms" for n in sizes]
    if len(sizes) > 1:
        headers.append(f"p50 {label(sizes[-1])}/{label(sizes[0])}")
    rows = []
    for q in QUERIES:
        for kind in kinds:
            row = [q, kind]
            p50s = []
            for n in sizes:
                s = results["engine"].get(f"{kind}/{label(n)}", {}).get(q)
                row.append(f"{s['p50_ms']:.2f} / {s['p95_ms']:.2f}" if s else "-")
                p50s.append(s["p50_ms"] if s else None)
            if len(sizes) > 1:
                row.append(f"{p50s[-1] / p50s[0]:.2f}x" if p50s[0] and p50s[-1] else "-")
            rows.append(row)
    lines.append(markdown_table(headers, rows))
    if results["http"]:
        lines += ["", "### Over HTTP (`fhirgw serve`, keep-alive, one client)", ""]
        rows = []
        for q in HTTP_QUERIES:
            for kind in kinds:
                row = [q, kind]
                for n in sizes:
                    s = results["http"].get(f"{kind}/{label(n)}", {}).get(q)
                    row.append(f"{s['p50_ms']:.2f} / {s['p95_ms']:.2f}" if s else "-")
                rows.append(row)
        lines.append(markdown_table(["query", "db"] + [f"{label(n)} p50 / p95 ms" for n in sizes],
                                    rows))
    ev = results.get("extraction")
    if ev:
        lines += ["", "### Index extraction vs fhir.resources R4B validation (µs per resource)", ""]
        rows = [[t, d["n"], d["extract_us"], d["validate_us"],
                 f"{d['extract_us'] / d['validate_us']:.2f}"] for t, d in ev["per_type"].items()]
        a = ev["all"]
        rows.append(["all", a["n"], a["extract_us"], a["validate_us"],
                     f"{a['extract_us'] / a['validate_us']:.2f}"])
        lines.append(markdown_table(["type", "n", "extract", "validate", "ratio"], rows))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
