"""`fhirgw serve` (the documented way to run the gateway, used by `make serve`) in a subprocess."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

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


def test_fhirgw_serve_answers_fhir_over_http(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "FHIRGW_DATABASE_URL": f"sqlite:///{tmp_path}/cli.db"}
    proc = subprocess.Popen([FHIRGW, "serve", "--port", str(port), "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}/fhir"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            try:
                r = httpx.get(f"{base}/metadata", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "fhirgw serve did not answer in 30 s"
                time.sleep(0.1)
        assert r.status_code == 200
        assert r.json()["fhirVersion"] == "4.0.1"
        created = httpx.post(f"{base}/Patient", json={"resourceType": "Patient",
                                                      "name": [{"family": "Cli"}]})
        assert created.status_code == 201
        assert created.headers["location"].startswith(f"{base}/Patient/")
    finally:
        proc.terminate()
        proc.wait(15)
