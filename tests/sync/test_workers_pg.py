"""Several ``fhirgw worker`` processes against one PostgreSQL database (claims with
``SELECT … FOR UPDATE SKIP LOCKED``): every referral reaches the partner exactly once.

Ours is a gateway on a fresh PostgreSQL database with no worker of its own; three
``fhirgw worker`` subprocesses deliver its outbox to a partner gateway on 127.0.0.1. Each
worker has its own config file whose bearer token names it, so the partner can tell who
sent what. The partner holds every delivery until all three workers have one in flight
(so their claims overlap for certain), then answers; more referrals are queued while the
workers run.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections import Counter

import orjson
from sqlalchemy import create_engine, select

from fhirgw.sync.tables import outbox
from tests.integration.conftest import bind_free_port, start_server
from tests.sync.conftest import (
    OUR_SYSTEM,
    PARTNER_SYSTEM,
    close,
    make_gateway,
    partner_org,
    referral,
    search,
    wait_for,
)

WORKERS = 3
BEFORE = 40          # referrals queued before the workers start
DURING = 20          # ... and while they run


class Recorder:
    """ASGI wrapper of the partner: notes who sent each transaction and the ServiceRequest
    identifiers in it, and holds every POST until ``gate`` is set."""

    def __init__(self, app) -> None:
        self.app = app
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.by_worker: Counter[str] = Counter()     # POSTs per worker token
        self.referrals: Counter[str] = Counter()     # SR identifier value -> times received
        self.sent_by: dict[str, set[str]] = {}       # SR identifier value -> worker tokens

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        token = headers.get(b"authorization", b"").decode().removeprefix("Bearer ")
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        bundle = orjson.loads(body)
        with self.lock:
            self.by_worker[token] += 1
            for e in bundle.get("entry") or []:
                r = e.get("resource") or {}
                if r.get("resourceType") == "ServiceRequest":
                    v = next(i["value"] for i in r["identifier"] if i["system"] == OUR_SYSTEM)
                    self.referrals[v] += 1
                    self.sent_by.setdefault(v, set()).add(token)
        while not self.gate.is_set():
            await asyncio.sleep(0.01)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        await self.app(scope, replay, send)


def _config(path, name: str) -> str:
    path.mkdir()
    p = path / "sync.toml"
    p.write_text(f"""
[worker]
idle = 0.05
lease = 60          # no lease runs out here: a second delivery would be a double claim
batch = 4
threads = 2

[partners."partner-ehr"]
timeout = 30
backoff_base = 0.1
backoff_max = 0.5
breaker_failures = 1000
bundle_size = 2
concurrency = 4
auth = {{ type = "bearer", token = "{name}" }}
""")
    return str(p)


def _worker(db_url: str, config: str, base: str, log) -> subprocess.Popen:
    env = {**os.environ, "FHIRGW_BASE_URL": base, "FHIRGW_IDENTIFIER_SYSTEM": OUR_SYSTEM}
    return subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "fhirgw"), "worker", "--database",
         db_url, "--config", config, "--no-poll", "--log-level", "warning"],
        env=env, stdout=log, stderr=subprocess.STDOUT)


def _rows(db_url: str) -> list:
    eng = create_engine(db_url)
    try:
        with eng.connect() as c:
            return c.execute(select(outbox.c.res_key, outbox.c.status, outbox.c.attempts)
                             .order_by(outbox.c.id)).all()
    finally:
        eng.dispose()


def test_three_workers_share_one_postgresql_outbox(pg_url, tmp_path):
    from fhirgw.app import create_app
    from fhirgw.config import Settings

    sock = bind_free_port()
    partner_base = f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"
    papp = create_app(Settings(database_url=f"sqlite:///{tmp_path}/partner.db",
                               base_url=partner_base, worker=False,
                               identifier_system=PARTNER_SYSTEM,
                               auth="disabled"))   # a stand-in for an external EHR
    recorder = Recorder(papp)
    stop_partner = start_server(recorder, sock)
    ours = make_gateway(pg_url, worker=False)
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        org = partner_org(ours.base, partner_base)
        srs = [referral(ours.base, org)[1] for _ in range(BEFORE)]
        names = [f"worker-{i + 1}" for i in range(WORKERS)]
        for name in names:
            log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed in finally
            logs.append(log)
            procs.append(_worker(pg_url, _config(tmp_path / name, name), ours.base, log))

        # every worker has claimed rows and has a delivery in flight at the same time
        def all_in_flight():
            for p in procs:
                if p.poll() is not None:
                    raise AssertionError(f"a worker exited with {p.returncode}: "
                                         + "\n".join(_read_logs(tmp_path, names)))
            return set(recorder.by_worker) >= set(names)
        wait_for(all_in_flight, timeout=30)
        recorder.gate.set()
        # more work arrives while the three workers run
        srs += [referral(ours.base, org)[1] for _ in range(DURING)]

        total = BEFORE + DURING
        wait_for(lambda: (rows := _rows(pg_url)) and len(rows) == total and
                 all(r.status == "sent" for r in rows), timeout=30)

        # our side: one row per referral, each delivered on its first attempt
        rows = _rows(pg_url)
        assert len({r.res_key for r in rows}) == total
        assert [r.attempts for r in rows] == [1] * total, rows

        # the partner received each referral exactly once (counted at its door) ...
        ours_values = [next(i["value"] for i in sr["identifier"] if i["system"] == OUR_SYSTEM)
                       for sr in srs]
        assert sorted(recorder.referrals) == sorted(ours_values)
        twice = {v: n for v, n in recorder.referrals.items() if n != 1}
        assert not twice, "delivered more than once: " + ", ".join(
            f"{v} x{n} by {sorted(recorder.sent_by[v])}" for v, n in twice.items())
        # ... by all three workers
        assert set(recorder.by_worker) == set(names), recorder.by_worker

        # and holds one copy of each, never rewritten (version 1 of each)
        p_srs = search(partner_base, "ServiceRequest?_count=1000")
        p_tasks = search(partner_base, "Task?_count=1000")
        p_pats = search(partner_base, "Patient?_count=1000")
        by_ident = Counter(next(i["value"] for i in r["identifier"] if i["system"] == OUR_SYSTEM)
                           for r in p_srs)
        assert by_ident == Counter(ours_values)
        assert len(p_tasks) == total and len(p_pats) == total
        assert {r["meta"]["versionId"] for r in p_srs + p_tasks + p_pats} == {"1"}
        # the partner's history: one version of each received resource, nothing more
        history = Counter((r.get("resourceType"), r["meta"]["versionId"])
                          for r in search(partner_base, "_history?_count=1000")
                          if r.get("resourceType") in ("Patient", "ServiceRequest", "Task"))
        assert history == {("Patient", "1"): total, ("ServiceRequest", "1"): total,
                           ("Task", "1"): total}, history
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in logs:
            log.close()
        recorder.gate.set()
        close(ours)
        stop_partner()
        papp.state.router.repo.engine.dispose()


def _read_logs(tmp_path, names) -> list[str]:
    out = []
    for name in names:
        try:
            out.append(f"--- {name}\n" + (tmp_path / f"{name}.log").read_text()[-2000:])
        except OSError:
            pass
    return out
