"""Several worker processes on one PostgreSQL database (`fhirgw serve --workers 2`)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.auth import bearer, first_start_credentials, token_for

FHIRGW = str(Path(sys.executable).parent / "fhirgw")
FJ = {"Content-Type": "application/fhir+json"}


def test_two_worker_processes_share_postgresql(pg_url, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "FHIRGW_DATABASE_URL": pg_url, "FHIRGW_WORKER": "off"}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([FHIRGW, "serve", "--port", str(port), "--workers", "2",
                             "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/fhir"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                if httpx.get(f"{base}/metadata", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "no answer in 60 s"
            time.sleep(0.2)
        # the admin client made on first start (printed once, before the workers fork)
        creds = first_start_credentials((tmp_path / "serve.log").read_text())
        assert creds, (tmp_path / "serve.log").read_text()[-2000:]
        auth = bearer(token_for(base, *creds))
        # eight clients, each its own connection (so both processes serve some of them)
        barrier, results = threading.Barrier(8), []

        def create():
            with httpx.Client(timeout=30) as c:
                barrier.wait()
                r = c.post(f"{base}/Patient", headers={**FJ, **auth, "If-None-Exist": "identifier=urn:iop:mrn|W-1"},
                           json={"resourceType": "Patient",
                                 "identifier": [{"system": "urn:iop:mrn", "value": "W-1"}]})
                results.append((r.status_code, r.json().get("id")))
        threads = [threading.Thread(target=create) for _ in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert sorted(s for s, _ in results) == [200] * 7 + [201], results
        assert len({i for _, i in results}) == 1
        found = httpx.get(f"{base}/Patient", params={"identifier": "urn:iop:mrn|W-1"},
                          headers=auth).json()
        assert len(found["entry"]) == 1
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
