"""Two gateways over real HTTP on 127.0.0.1: ours (with the sync worker) and one acting as
the partner EHR, each with its own database (tests/integration/conftest.py's approach).

Auth: ours runs with auth on, as in production. ``make_gateway`` registers an admin client
on it (``Gateway.client_id``/``secret``) and ``fhir()`` (so ``create``/``search`` too) sends
that client's token, from the gateway's token endpoint, on every request to that gateway
(``/admin`` included) unless the caller sends its own ``Authorization``. A gateway playing
the partner EHR (``identifier_system=PARTNER_SYSTEM``) stands in for an external system and
runs with auth disabled unless ``auth=True`` is asked for (then the partner config needs
credentials: ``write_config(..., auth={...})``)."""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import httpx
import pytest

from tests.auth import grant, origin, token_for
from tests.conftest import fresh_pg_database
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
    #: an admin client on this gateway (None with auth disabled)
    client_id: str | None = None
    secret: str | None = None

    @property
    def worker(self):
        return getattr(self.app.state, "sync_worker", None)

    @property
    def engine(self):
        return self.app.state.router.repo.engine

    @property
    def auth_enabled(self) -> bool:
        return self.app.state.auth.enabled

    def token(self) -> str:
        """The admin client's access token, from this gateway's token endpoint (fetched on
        first use, renewed when half its lifetime is gone)."""
        lifetime = self.app.state.settings.token_lifetime
        with _lock:
            got = _tokens.get(self.base)
            if got is None or time.monotonic() - got[0] > lifetime / 2:
                got = (time.monotonic(), token_for(self.base, self.client_id, self.secret))
                _tokens[self.base] = got
        return got[1]


#: origin (http://127.0.0.1:PORT) -> a gateway with auth on; fhir() sends its token there
_gateways: dict[str, Gateway] = {}
_tokens: dict[str, tuple[float, str]] = {}
_lock = threading.Lock()


def make_gateway(db_url: str, *, sock=None, config: str = "", worker: bool = True,
                 identifier_system: str = OUR_SYSTEM, start: bool = True,
                 auth: bool | None = None) -> Gateway:
    """A gateway on ``db_url``. ``auth``: on (True) or disabled (False); by default on,
    except for a stand-in partner EHR (``identifier_system=PARTNER_SYSTEM``)."""
    from fhirgw.app import create_app
    from fhirgw.config import Settings

    if auth is None:
        auth = identifier_system != PARTNER_SYSTEM
    sock = sock or bind_free_port()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"
    app = create_app(Settings(database_url=db_url, base_url=base, sync_config=config,
                              poll_interval=1, worker=worker,
                              identifier_system=identifier_system,
                              auth="enabled" if auth else "disabled"))
    stop = start_server(app, sock) if start else None
    gw = Gateway(base, db_url, app, stop, sock)
    if auth:
        gw.client_id, gw.secret = grant(app, name="sync-tests-admin")
        with _lock:
            _gateways[origin(base)] = gw
    return gw


def close(gw: Gateway) -> None:
    with _lock:
        if _gateways.get(origin(gw.base)) is gw:
            del _gateways[origin(gw.base)]
        _tokens.pop(gw.base, None)
    if gw.stop:
        gw.stop()
    gw.app.state.router.repo.engine.dispose()


def _toml(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):   # an inline table, e.g. auth = { type = "...", ... }
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return str(value)


def write_config(path, partner_key: str = "partner-ehr", **extra) -> str:
    opts = {"poll_interval": 1, "backoff_base": 0.1, "backoff_max": 0.5, "timeout": 5,
            "breaker_failures": 1000, **extra}
    body = "[worker]\nidle = 0.05\nlease = 3\n\n[defaults]\nbackoff_base = 0.1\n" \
           "backoff_max = 0.5\n\n"
    body += f'[partners."{partner_key}"]\n' + "".join(
        f"{k} = {_toml(v)}\n" for k, v in opts.items())
    p = path / "sync.toml"
    p.write_text(body)
    return str(p)


def auth_headers(url: str) -> dict[str, str]:
    """``Authorization`` for a request to ``url``: the admin token of the gateway with auth
    on there, or nothing (a partner stand-in with auth disabled, or another server)."""
    gw = _gateways.get(origin(url))
    return {"Authorization": f"Bearer {gw.token()}"} if gw is not None else {}


def fhir(method: str, url: str, body=None, **kw) -> httpx.Response:
    extra = kw.pop("headers", {})
    given = {k.lower() for k in extra}
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json",
               **({} if "authorization" in given else auth_headers(url)), **extra}
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
    with fresh_pg_database(request.getfixturevalue("pg_admin"), "fhirgw_sync_") as url:
        yield url


@pytest.fixture
def partner(tmp_path):
    gw = make_gateway(f"sqlite:///{tmp_path}/partner.db", worker=False,
                      identifier_system=PARTNER_SYSTEM)
    yield gw
    close(gw)
