"""One gateway (SQLite, real HTTP on a free port, auth on) for the whole SDK suite.

The server's own suites run every case on SQLite and PostgreSQL; the SDK is a client of the
HTTP API, so one database keeps this suite fast. Each test makes its own data (unique MRNs,
tags) so tests never depend on each other.

The SDK authenticates for real: ``auth`` is the SDK's ``ClientCredentials`` for an admin
client registered on the gateway, fetching its tokens from the gateway's ``/auth/token``.
"""
from __future__ import annotations

import uuid

import pytest

from tests.auth import credentials, grant
from tests.integration.conftest import bind_free_port, start_server


@pytest.fixture(scope="session")
def live_gateway(tmp_path_factory):
    """(FHIR base URL, app) of a live gateway."""
    from fhirgw.app import create_app
    from fhirgw.config import Settings

    sock = bind_free_port()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"
    db = f"sqlite:///{tmp_path_factory.mktemp('sdk')}/fhirgw.db"
    app = create_app(Settings(database_url=db, base_url=base))
    stop = start_server(app, sock)
    try:
        yield base, app
    finally:
        stop()
        app.state.router.repo.engine.dispose()


@pytest.fixture(scope="session")
def gateway(live_gateway):
    """The FHIR base URL of the live gateway."""
    return live_gateway[0]


@pytest.fixture(scope="session")
def gateway_app(live_gateway):
    return live_gateway[1]


@pytest.fixture(scope="session")
def admin_credentials(live_gateway):
    """(client_id, client_secret) of an admin client (system/*.cruds fhirgw/admin)."""
    return grant(live_gateway[1])


@pytest.fixture
def auth(gateway, admin_credentials):
    """A fresh ``ClientCredentials`` (the SDK's OAuth2 auth) for the admin client."""
    return credentials(gateway, *admin_credentials)


@pytest.fixture
def client(gateway, auth):
    from fhirgw.client import Client

    with Client(gateway, auth=auth) as c:
        yield c


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def tag():
    """A unique tag value, to find exactly this test's resources."""
    return "t-" + uuid.uuid4().hex[:12]


TAG_SYSTEM = "urn:fhirgw:test"


def tagged(tag: str) -> dict:
    return {"tag": [{"system": TAG_SYSTEM, "code": tag}]}
