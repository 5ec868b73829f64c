"""Two gateways over real HTTP on 127.0.0.1: ours (with the sync worker) and one acting as
the partner EHR, each with its own database (tests/integration/conftest.py's approach)."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import PG_ADMIN_URL
from tests.integration.conftest import bind_free_port, start_server

OUR_SYSTEM = "http://iop.example/sid/business-id"
PARTNER_SYSTEM = "http://partner.example/sid/business-id"
CT = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"


@dataclass
class Gateway:
    base: str
    db_url: str
    app: object
    stop: object
    sock: object = None

    @property
    def worker(self):
        return getattr(self.app.state, "sync_worker", None)

    @property
    def engine(self):
        return self.app.state.router.repo.engine


def make_gateway(db_url: str, *, sock=None, config: str = "", worker: bool = True,
                 identifier_system: str = OUR_SYSTEM, start: bool = True) -> Gateway:
    from fhirgw.app import create_app
    from fhirgw.config import Settings

    sock = sock or bind_free_port()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"
    app = create_app(Settings(database_url=db_url, base_url=base, sync_config=config,
                              poll_interval=1, worker=worker,
                              identifier_system=identifier_system))
    stop = start_server(app, sock) if start else None
    return Gateway(base, db_url, app, stop, sock)


def close(gw: Gateway) -> None:
    if gw.stop:
        gw.stop()
    gw.app.state.router.repo.engine.dispose()


def write_config(path, partner_key: str = "partner-ehr", **extra) -> str:
    opts = {"poll_interval": 1, "backoff_base": 0.1, "backoff_max": 0.5, "timeout": 5,
            "breaker_failures": 1000, **extra}
    body = "[worker]\nidle = 0.05\nlease = 3\n\n[defaults]\nbackoff_base = 0.1\n" \
           "backoff_max = 0.5\n\n"
    body += f'[partners."{partner_key}"]\n' + "".join(
        f"{k} = {v!r}\n".replace("'", '"') if isinstance(v, str) else
        f"{k} = {str(v).lower() if isinstance(v, bool) else v}\n" for k, v in opts.items())
    p = path / "sync.toml"
    p.write_text(body)
    return str(p)


def fhir(method: str, url: str, body=None, **kw) -> httpx.Response:
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json",
               **kw.pop("headers", {})}
    return httpx.request(method, url, json=body, headers=headers, timeout=10, **kw)


def create(base: str, body: dict) -> dict:
    r = fhir("POST", f"{base}/{body['resourceType']}", body)
    assert r.status_code == 201, r.text
    return r.json()


def partner_org(base: str, address: str, key: str = "partner-ehr", code="hl7-fhir-rest"
                ) -> dict:
    ep = create(base, {"resourceType": "Endpoint", "status": "active",
                       "identifier": [{"system": "urn:iop:partners", "value": key}],
                       "connectionType": {"system": CT, "code": code},
                       "payloadType": [{"text": "FHIR R4"}], "address": address,
                       "name": f"{key} FHIR"})
    return create(base, {"resourceType": "Organization", "name": f"Partner {key}",
                         "endpoint": [{"reference": f"Endpoint/{ep['id']}"}]})


def referral(base: str, org: dict, mrn: str | None = None) -> tuple[dict, dict]:
    mrn = mrn or uuid.uuid4().hex[:10]
    pat = create(base, {"resourceType": "Patient",
                        "identifier": [{"system": "urn:iop:mrn", "value": mrn}],
                        "name": [{"family": "Rivera", "given": ["Ana"]}],
                        "birthDate": "1990-04-02", "gender": "female",
                        "maritalStatus": {"text": "not for the partner"}})
    sr = create(base, {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                       "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt",
                                            "code": "90791"}]},
                       "subject": {"reference": f"Patient/{pat['id']}"},
                       "performer": [{"reference": f"Organization/{org['id']}"}]})
    return pat, sr


def wait_for(fn, timeout: float = 15.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


def search(base: str, query: str) -> list[dict]:
    r = fhir("GET", f"{base}/{query}")
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry") or []
            if e.get("search", {}).get("mode", "match") == "match"]


@pytest.fixture(params=["sqlite", "postgresql"])
def our_db(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/ours.db"
        return
    pg_admin = request.getfixturevalue("pg_admin")
    name = "fhirgw_sync_" + uuid.uuid4().hex[:12]
    with pg_admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    with pg_admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def partner(tmp_path):
    gw = make_gateway(f"sqlite:///{tmp_path}/partner.db", worker=False,
                      identifier_system=PARTNER_SYSTEM)
    yield gw
    close(gw)
