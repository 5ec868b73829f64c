"""`fhirgw serve` (the documented way to run the gateway, used by `make serve`) in a subprocess."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.auth import bearer, first_start_credentials, token_for

FHIRGW = str(Path(sys.executable).parent / "fhirgw")


def test_fhirgw_serve_subcommand_exists():
    """With ``serve`` as the Typer app's only command (and no ``@app.callback()``), Typer
    makes it the top-level command: ``fhirgw serve`` then fails with "Got unexpected extra
    argument (serve)" (and ``fhirgw serve --help`` still exits 0, so check the structure)."""
    import typer

    from fhirgw.cli import app

    cmd = typer.main.get_command(app)
    assert "serve" in getattr(cmd, "commands", {}), \
        "fhirgw is a single command, not a group: `fhirgw serve` fails"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(port: int, log: Path, *args: str, **env: str) -> subprocess.Popen:
    """``fhirgw serve --port PORT`` with stdout+stderr in ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen([FHIRGW, "serve", "--port", str(port), "--log-level", "warning",
                                 *args], env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT)


def wait_until_up(proc: subprocess.Popen, base: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            if httpx.get(f"{base}/metadata", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"fhirgw serve did not answer in {timeout} s"
        time.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(15)


def test_fhirgw_serve_answers_fhir_over_http(tmp_path):
    """First start on an empty database: the admin client's credentials are printed once;
    they get a token from /auth/token that the FHIR API accepts. A restart prints none."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    db = {"FHIRGW_DATABASE_URL": f"sqlite:///{tmp_path}/cli.db"}
    log = tmp_path / "serve.log"
    proc = serve(port, log, **db)
    try:
        wait_until_up(proc, base, log)
        r = httpx.get(f"{base}/metadata", timeout=10)   # open without a token
        assert r.status_code == 200
        assert r.json()["fhirVersion"] == "4.0.1"
        printed = log.read_text()
        creds = first_start_credentials(printed)
        assert creds, f"no first-start admin credentials printed:\n{printed}"
        assert "system/*.cruds fhirgw/admin" in printed

        patient = {"resourceType": "Patient", "name": [{"family": "Cli"}]}
        refused = httpx.post(f"{base}/Patient", json=patient, timeout=10)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")

        token = token_for(base, *creds)
        created = httpx.post(f"{base}/Patient", json=patient, headers=bearer(token), timeout=10)
        assert created.status_code == 201, created.text
        assert created.headers["location"].startswith(f"{base}/Patient/")
        # the admin scope opens /admin too
        admin = httpx.get(f"http://127.0.0.1:{port}/admin/metrics", headers=bearer(token),
                          timeout=10)
        assert admin.status_code == 200, admin.text
    finally:
        stop(proc)

    # a second start on the same database: the admin client exists, no new secret printed
    log2 = tmp_path / "serve2.log"
    proc = serve(port, log2, **db)
    try:
        wait_until_up(proc, base, log2)
        assert first_start_credentials(log2.read_text()) is None
        assert "client_secret" not in log2.read_text()
        # the first admin's credentials still work
        token = token_for(base, *creds)
        assert httpx.get(f"{base}/Patient", headers=bearer(token), timeout=10).status_code == 200
    finally:
        stop(proc)


def test_fhirgw_serve_with_auth_disabled_on_loopback(tmp_path):
    """FHIRGW_AUTH=disabled on 127.0.0.1 (local development): no token needed, no admin
    client made."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    log = tmp_path / "serve.log"
    proc = serve(port, log, "--host", "127.0.0.1", FHIRGW_AUTH="disabled",
                 FHIRGW_DATABASE_URL=f"sqlite:///{tmp_path}/dev.db")
    try:
        wait_until_up(proc, base, log)
        created = httpx.post(f"{base}/Patient", timeout=10,
                             json={"resourceType": "Patient", "name": [{"family": "Dev"}]})
        assert created.status_code == 201, created.text
        assert first_start_credentials(log.read_text()) is None
    finally:
        stop(proc)
