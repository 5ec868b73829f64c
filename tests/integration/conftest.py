"""A real gateway over real HTTP: uvicorn on a free 127.0.0.1 port in a background thread.

``live_server`` is module-scoped (one server per test module and database) and runs every
test that uses it on SQLite and on PostgreSQL, like ``db_url`` in tests/conftest.py. It has
its own module-scoped database fixture because ``db_url`` is function-scoped; the databases
are made the same way (a temp SQLite file, or a fresh PostgreSQL database via ``pg_admin``,
dropped afterwards).

Auth is on, as in production: ``live_server`` registers an admin client in the app's client
store (``client_id``/``secret``) and gets its tokens from the server's own token endpoint
over HTTP (``live_server.token``, ``live_server.headers``; see tests/auth.py).
"""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

import pytest

from tests.auth import bearer, grant, token_for
from tests.conftest import fresh_pg_database


@dataclass
class LiveServer:
    base: str          # http://127.0.0.1:PORT/fhir
    db_url: str
    app: object
    #: an admin client (system/*.cruds fhirgw/admin) registered on the server
    client_id: str = ""
    secret: str = ""
    _token: tuple[float, str] | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return "postgresql" if self.db_url.startswith("postgresql") else "sqlite"

    @property
    def token(self) -> str:
        """An admin access token from the server's token endpoint (renewed when half its
        lifetime is gone: the server lives for a whole test module)."""
        lifetime = self.app.state.settings.token_lifetime
        if self._token is None or time.monotonic() - self._token[0] > lifetime / 2:
            self._token = (time.monotonic(), token_for(self.base, self.client_id, self.secret))
        return self._token[1]

    @property
    def headers(self) -> dict[str, str]:
        """``Authorization: Bearer <admin token>``."""
        return bearer(self.token)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live_db_url(request, tmp_path_factory):
    """An empty database for one test module (SQLite file or a fresh PostgreSQL database)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('live')}/fhirgw.db"
        return
    with fresh_pg_database(request.getfixturevalue("pg_admin"), "fhirgw_it_") as url:
        yield url


def bind_free_port() -> socket.socket:
    """A socket bound to a free loopback port (kept bound, so no other worker takes it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def start_server(app, sock: socket.socket, *, timeout: float = 30.0):
    """Serve ``app`` with uvicorn on ``sock`` in a daemon thread; returns ``stop()``."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"uvicorn-{sock.getsockname()[1]}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn stopped before it started (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start within {timeout}s")
        time.sleep(0.02)

    def stop():
        server.should_exit = True
        thread.join(15)
        sock.close()

    return stop


@pytest.fixture(scope="module")
def live_server(live_db_url):
    """The gateway from ``create_app`` served over real HTTP, one per module and database."""
    from fhirgw.app import create_app
    from fhirgw.config import Settings

    sock = bind_free_port()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"
    app = create_app(Settings(database_url=live_db_url, base_url=base))
    stop = start_server(app, sock)
    try:
        yield LiveServer(base, live_db_url, app, *grant(app))
    finally:
        stop()
        app.state.router.repo.engine.dispose()
