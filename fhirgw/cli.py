"""The ``fhirgw`` command."""
from __future__ import annotations

import logging
import os
import sys

import typer

app = typer.Typer(help="fhirgw: FHIR R4 gateway for virtual mental-health IOPs",
                  no_args_is_help=True, add_completion=False)


@app.callback()
def _root() -> None:
    """fhirgw: FHIR R4 gateway for virtual mental-health IOPs."""


def _factory():
    from .app import create_app
    from .config import Settings

    return create_app(Settings())


@app.command()
def serve(host: str = typer.Option("127.0.0.1", help="address to bind"),
          port: int = typer.Option(8000, help="port to bind"),
          database: str = typer.Option(None, "--database", envvar="FHIRGW_DATABASE_URL",
                                       help="sqlite:///path (default ./fhirgw.db) or "
                                            "postgresql+psycopg://user@host/db"),
          workers: int = typer.Option(1, help="worker processes (share one database)"),
          log_level: str = typer.Option("info", help="log level")) -> None:
    """Run the gateway (FHIR base URL http://HOST:PORT/fhir)."""
    import uvicorn

    if database:
        os.environ["FHIRGW_DATABASE_URL"] = database
    # the public base: used in links and to recognise absolute references to this server
    os.environ.setdefault("FHIRGW_BASE_URL", f"http://{host}:{port}/fhir")
    logging.basicConfig(level=log_level.upper(), format="%(message)s", stream=sys.stdout)
    # migrate once here, so N workers do not race to create the schema
    from .config import Settings
    from .store.db import make_engine, migrate
    eng = make_engine(Settings().database_url)
    migrate(eng)
    eng.dispose()
    typer.echo(f"fhirgw: FHIR base http://{host}:{port}/fhir  database "
               f"{Settings().database_url.split('@')[-1]}")
    uvicorn.run("fhirgw.cli:_factory", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=False)


def main() -> None:  # pragma: no cover
    app()
