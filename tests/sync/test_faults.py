"""Partner down at send time, and a worker SIGKILLed mid-delivery: nothing lost, nothing
duplicated on the partner (real HTTP, real processes)."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

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
    write_config,
)


def _statuses(db_url: str) -> list[str]:
    eng = create_engine(db_url)
    try:
        with eng.connect() as c:
            return list(c.execute(select(outbox.c.status).order_by(outbox.c.id)).scalars())
    finally:
        eng.dispose()


def _once_each(partner_base: str, srs: list[dict]) -> None:
    for sr in srs:
        v = sr["identifier"][0]["value"]
        assert len(search(partner_base, f"ServiceRequest?identifier={OUR_SYSTEM}|{v}")) == 1
    assert len(search(partner_base, "Task?_count=100")) == len(srs)
    assert len(search(partner_base, "ServiceRequest?_count=100")) == len(srs)


def test_partner_down_then_up(tmp_path):
    sock = bind_free_port()          # the partner's port, bound but not listening yet
    partner_base = f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"
    ours = make_gateway(f"sqlite:///{tmp_path}/ours.db", config=write_config(tmp_path))
    partner = make_gateway(f"sqlite:///{tmp_path}/partner.db", sock=sock, worker=False,
                           identifier_system=PARTNER_SYSTEM, start=False)
    try:
        org = partner_org(ours.base, partner_base)
        srs = [referral(ours.base, org)[1] for _ in range(3)]
        # connection refused: retried, still pending
        wait_for(lambda: ours.worker.stats["retried"] >= 3, timeout=10)
        assert set(_statuses(ours.db_url)) <= {"pending", "inflight"}
        partner.stop = start_server(partner.app, sock)
        wait_for(lambda: _statuses(ours.db_url) == ["sent"] * 3, timeout=15)
        _once_each(partner.base, srs)
    finally:
        close(ours)
        close(partner)


def _slow_responses(app, delay: float):
    """An ASGI wrapper: the partner applies the request, then holds the answer ``delay``
    seconds (a worker killed meanwhile never learns the delivery succeeded)."""
    async def wrapped(scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await app(scope, receive, send)
        held = []

        async def hold(message):
            held.append(message)
        await app(scope, receive, hold)
        await asyncio.sleep(delay)
        for m in held:
            await send(m)
    return wrapped


def _worker(db_url: str, config: str, base: str) -> subprocess.Popen:
    env = {**os.environ, "FHIRGW_BASE_URL": base, "FHIRGW_IDENTIFIER_SYSTEM": OUR_SYSTEM,
           "FHIRGW_POLL_INTERVAL": "1"}
    return subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "fhirgw"), "worker", "--database", db_url,
                             "--config", config, "--log-level", "warning"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_worker_killed_mid_delivery(tmp_path):
    from fhirgw.app import create_app
    from fhirgw.config import Settings

    sock = bind_free_port()
    partner_base = f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"
    papp = create_app(Settings(database_url=f"sqlite:///{tmp_path}/partner.db",
                               base_url=partner_base, worker=False,
                               identifier_system=PARTNER_SYSTEM,
                               auth="disabled"))   # a stand-in for an external EHR
    stop_partner = start_server(_slow_responses(papp, 1.5), sock)
    ours = make_gateway(f"sqlite:///{tmp_path}/ours.db", worker=False)
    config = write_config(tmp_path)
    proc = None
    try:
        org = partner_org(ours.base, partner_base)
        srs = [referral(ours.base, org)[1] for _ in range(4)]
        proc = _worker(ours.db_url, config, ours.base)
        # the partner has applied deliveries whose answers are still held: kill the worker
        wait_for(lambda: search(partner_base, "ServiceRequest"), timeout=20)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert "inflight" in _statuses(ours.db_url)
        time.sleep(1.6)   # let the held answers go nowhere
        proc = _worker(ours.db_url, config, ours.base)
        wait_for(lambda: _statuses(ours.db_url) == ["sent"] * 4, timeout=30)
        _once_each(partner_base, srs)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        close(ours)
        stop_partner()
        papp.state.router.repo.engine.dispose()
