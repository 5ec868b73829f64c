"""One gateway (SQLite, real HTTP on a free port) for the whole SDK suite.

The server's own suites run every case on SQLite and PostgreSQL; the SDK is a client of the
HTTP API, so one database keeps this suite fast. Each test makes its own data (unique MRNs,
tags) so tests never depend on each other.
"""
from __future__ import annotations

import uuid

import pytest

from tests.integration.conftest import bind_free_port, start_server


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    """The FHIR base URL of a live gateway."""
    from fhirgw.app import create_app
    from fhirgw.config import Settings

    sock = bind_free_port()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"
    db = f"sqlite:///{tmp_path_factory.mktemp('sdk')}/fhirgw.db"
    app = create_app(Settings(database_url=db, base_url=base))
    stop = start_server(app, sock)
    try:
        yield base
    finally:
        stop()
        app.state.router.repo.engine.dispose()


@pytest.fixture
def client(gateway):
    from fhirgw.client import Client

    with Client(gateway) as c:
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
