"""Shared pieces of the benchmarks: servers in subprocesses, throwaway databases, results.

The gateway runs with auth on, as in production: ``gateway()`` takes the admin client that
``fhirgw serve`` prints on its first start (or, on a database that already has clients,
registers a ``bench`` client in it) and gets access tokens from the gateway's own
``POST /auth/token``, like any API client (``gw.headers``, ``gw.auth()``)."""
from __future__ import annotations

import base64
import gc
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("FHIRGW_BENCH_PG",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {proc.args}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def wait_warm(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until the gateway's validation workers have started (``/readyz``): ``serve``
    starts them with the app, and until they are up (a few seconds of CPU importing and
    warming fhir.resources) large transactions validate inline, beside that warm-up. A
    measurement starting earlier measures the start-up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {proc.args}")
        try:
            state = httpx.get(url, timeout=5).json().get("validationWorkers", "off")
        except (httpx.HTTPError, ValueError):
            state = None
        if state in ("ready", "off", "idle"):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the validation workers did not start in {timeout}s ({url})")


def cpu_seconds(pid: int, with_children: bool = False) -> float:
    """CPU seconds (user + system) a process has used so far, and with ``with_children``
    its live child processes' too (a gateway's validation workers). Linux ``/proc``; 0 for
    a process it cannot read."""
    pids = [pid]
    if with_children:
        try:
            pids += [int(k) for k in
                     Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            pass
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


@contextmanager
def still_heap():
    """The measuring process's own objects left out of its garbage collector's scans while
    the block runs (``gc.freeze``), then put back. A benchmark's client holds its whole
    data set (the ingest: 10,000 resources as dicts, ~300,000 containers); each full
    collection over it paused the client for ~70 ms, which the clock counted as the
    gateway's time (once or twice per 100 Bundles: 1-1.5 ms per Bundle on average, ~8%).
    What the block itself allocates is still collected as usual."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class PlainClient:
    """A keep-alive HTTP/1.1 client on the standard library's ``http.client``, for timed
    loops that post large bodies one after another: httpx spent ~1.2 ms of the client's CPU
    per 70 KB transaction Bundle (its request and response models, the auth flow's
    generator, header objects), this ~0.45 ms, and the client's time adds to each request's
    wall time. Sends ``Authorization: Bearer`` with a token from ``gw.token()`` (fetched
    again when half its lifetime is gone). ``post`` answers (status, body bytes)."""

    def __init__(self, gw: "Gateway", headers: dict[str, str] | None = None) -> None:
        import http.client
        from urllib.parse import urlsplit

        url = urlsplit(gw.base)
        self.gw = gw
        self.path = url.path or "/"
        self.headers = dict(headers or {})
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=300)

    def post(self, body: bytes, path: str | None = None) -> tuple[int, bytes]:
        headers = {**self.headers, "Authorization": f"Bearer {self.gw.token()}"}
        self.conn.request("POST", path or self.path, body=body, headers=headers)
        answer = self.conn.getresponse()
        return answer.status, answer.read()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "PlainClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def server(args: list[str], ready_url: str, env: dict | None = None, log_name: str = "server"):
    """Run a server subprocess until the block ends; its output goes to a temp log file."""
    log = tempfile.NamedTemporaryFile("w+", prefix=f"fhirgw-bench-{log_name}-",
                                      suffix=".log", delete=False)
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    try:
        try:
            wait_ready(ready_url, proc)
        except RuntimeError:
            log.flush()
            log.seek(0)
            sys.stderr.write(log.read()[-4000:])
            raise
        proc.log_path = log.name  # type: ignore[attr-defined]
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        os.unlink(log.name)


def _cli_has_serve() -> bool:
    """``fhirgw serve`` works only while the Typer app is a command group; with ``serve`` as
    its only command and no callback, Typer makes ``serve`` the top-level command and
    ``fhirgw serve`` fails with "unexpected extra argument"."""
    import typer

    from fhirgw.cli import app

    if "serve" in getattr(typer.main.get_command(app), "commands", {}):
        return True
    print("  (note: `fhirgw serve` is broken, Typer collapsed the single-command app; "
          "calling fhirgw.cli.serve directly)", file=sys.stderr)
    return False


#: what the benchmarks' client may do (the first-start admin client's scopes)
BENCH_SCOPE = "system/*.cruds fhirgw/admin"


class Gateway:
    """A running ``fhirgw serve``: ``base`` (FHIR base URL), ``proc``, and an API client's
    credentials. ``base, proc = gw`` still works (it iterates as the pair)."""

    def __init__(self, base: str, proc, client_id: str, secret: str) -> None:
        self.base = base
        self.proc = proc
        self.client_id = client_id
        self.secret = secret
        self.token_url = base.rsplit("/fhir", 1)[0] + "/auth/token"
        self._token: tuple[float, float, str] | None = None   # (got at, lifetime, token)

    def __iter__(self):
        return iter((self.base, self.proc))

    def token(self) -> str:
        """An access token from the gateway's token endpoint (client_secret_basic), reused
        until half its lifetime is gone."""
        now = time.monotonic()
        if self._token is None or now - self._token[0] > self._token[1] / 2:
            basic = base64.b64encode(f"{self.client_id}:{self.secret}".encode()).decode()
            r = httpx.post(self.token_url, data={"grant_type": "client_credentials"},
                           headers={"Authorization": f"Basic {basic}"}, timeout=30)
            if r.status_code != 200:
                raise RuntimeError(f"token request refused: {r.status_code} {r.text[:300]}")
            got = r.json()
            self._token = (now, float(got.get("expires_in") or 300), got["access_token"])
        return self._token[2]

    @property
    def headers(self) -> dict[str, str]:
        """``Authorization: Bearer <token>`` (a fresh-enough token each time it is read)."""
        return {"Authorization": f"Bearer {self.token()}"}

    def auth(self):
        """An httpx Auth that fetches and renews tokens itself (the SDK's
        ``ClientCredentials``), for long runs."""
        from fhirgw.client import ClientCredentials

        return ClientCredentials(self.token_url, self.client_id, self.secret)


def _first_start_credentials(log_path: str) -> tuple[str, str] | None:
    """The admin client ``fhirgw serve`` printed on its first start (empty database)."""
    text = Path(log_path).read_text(errors="replace")
    cid = re.search(r"^\s*client_id:\s+(\S+)\s*$", text, re.M)
    secret = re.search(r"^\s*client_secret:\s+(\S+)\s*$", text, re.M)
    return (cid.group(1), secret.group(1)) if cid and secret else None


def _bench_client(database_url: str) -> tuple[str, str]:
    """Register a client directly in the database (as ``fhirgw clients create`` does)."""
    from fhirgw.security.clients import ClientStore
    from fhirgw.store.db import make_engine

    eng = make_engine(database_url, pool_size=1)
    try:
        client, secret = ClientStore(eng).create("bench", BENCH_SCOPE)
    finally:
        eng.dispose()
    return client.client_id, secret


@contextmanager
def gateway(database_url: str, log_level: str = "warning", env: dict | None = None):
    """``fhirgw serve`` on a free loopback port; yields a ``Gateway`` (``gw.base`` is the FHIR
    base URL, ``gw.headers`` an admin bearer token; ``base, proc = gw`` works too). ``env``:
    more environment for the server (``PYTHONPATH`` to another checkout's code, say)."""
    port = free_port()
    if _cli_has_serve():
        args = [str(BIN / "fhirgw"), "serve", "--host", "127.0.0.1", "--port", str(port),
                "--database", database_url, "--log-level", log_level]
    else:  # the same function `fhirgw serve` runs, called directly
        args = [str(BIN / "python"), "-c",
                "from fhirgw.cli import serve; serve(host='127.0.0.1', port=%d, database=%r, "
                "workers=1, log_level=%r)" % (port, database_url, log_level)]
    with server(args, f"http://127.0.0.1:{port}/healthz", env=env, log_name="gateway") as proc:
        wait_warm(f"http://127.0.0.1:{port}/readyz", proc)
        creds = _first_start_credentials(proc.log_path) or _bench_client(database_url)
        yield Gateway(f"http://127.0.0.1:{port}/fhir", proc, *creds)


@contextmanager
def sqlite_database():
    with tempfile.TemporaryDirectory(prefix="fhirgw-bench-") as d:
        yield f"sqlite:///{d}/bench.db"


@contextmanager
def pg_database():
    """A throwaway PostgreSQL database (dropped afterwards); yields its URL, or None."""
    from sqlalchemy import create_engine, text

    try:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text("select 1"))
    except Exception as exc:  # noqa: BLE001
        print(f"  (no PostgreSQL at {PG_ADMIN_URL}: {type(exc).__name__}; skipped)")
        yield None
        return
    name = "fhirgw_bench_" + uuid.uuid4().hex[:10]
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def machine() -> dict:
    import fhir.resources

    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "fhir.resources": fhir.resources.__version__,
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write_results(name: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return path


def markdown_table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
