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
    from .api.lifespan import run_with_app
    from .app import create_app
    from .config import Settings
    from .runtime import tune_gc
    from .validation.parallel import warm_models

    app = create_app(Settings())

    def start() -> None:
        warm_models()   # the first requests do not import R4B model classes
        tune_gc()       # this process is a server: tune its collector (after the imports)
    run_with_app(app, start=start)
    return app


@app.command()
def serve(host: str = typer.Option("127.0.0.1", help="address to bind"),
          port: int = typer.Option(8000, help="port to bind"),
          database: str = typer.Option(None, "--database", envvar="FHIRGW_DATABASE_URL",
                                       help="sqlite:///path (default ./fhirgw.db) or "
                                            "postgresql+psycopg://user@host/db"),
          workers: int = typer.Option(1, help="worker processes (share one database)"),
          config: str = typer.Option(None, "--config", envvar="FHIRGW_SYNC_CONFIG",
                                     help="sync config file (partners, TOML or YAML)"),
          log_level: str = typer.Option("info", help="log level")) -> None:
    """Run the gateway (FHIR base URL http://HOST:PORT/fhir)."""
    import uvicorn

    if database:
        os.environ["FHIRGW_DATABASE_URL"] = database
    if config:
        os.environ["FHIRGW_SYNC_CONFIG"] = config
    # the public base: used in links and to recognise absolute references to this server
    os.environ.setdefault("FHIRGW_BASE_URL", f"http://{host}:{port}/fhir")
    logging.basicConfig(level=log_level.upper(), format="%(message)s", stream=sys.stdout)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # no migration chatter per start
    if workers > 1:
        # N server processes already use N cores: no validation worker beside each
        os.environ.setdefault("FHIRGW_VALIDATION_WORKERS", "0")
    # a server: its validation worker starts with it, not with the first large transaction
    os.environ.setdefault("FHIRGW_VALIDATION_PRESTART", "1")
    # migrate once here, so N workers do not race to create the schema
    from .config import Settings
    from .store.db import make_engine, migrate
    settings = Settings()
    try:
        auth_on = settings.auth_enabled
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    if not auth_on and not _loopback(host):
        typer.echo(f"error: FHIRGW_AUTH=disabled is for local development only; refusing to "
                   f"listen on {host} (bind 127.0.0.1, or enable auth)", err=True)
        raise typer.Exit(2)
    eng = make_engine(settings.database_url)
    migrate(eng)
    if auth_on:
        from .security.cli import first_start
        from .security.clients import ClientStore
        notice = first_start(ClientStore(eng), f"http://{host}:{port}")
        if notice:
            typer.echo(notice)
    eng.dispose()
    typer.echo(f"fhirgw: FHIR base http://{host}:{port}/fhir  database "
               f"{settings.database_url.split('@')[-1]}")
    uvicorn.run("fhirgw.cli:_factory", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=False)


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@app.command()
def validate(path: str = typer.Argument(..., help="a JSON file (resource or Bundle) or a folder"),
             profile: list[str] = typer.Option(None, "--profile", "-p",
                                               help="validate against this profile (repeatable)"),
             profiles_dir: list[str] = typer.Option(None, "--profiles",
                                                    help="more definitions to load (folder, "
                                                         "file or npm package)")) -> None:
    """Validate resources offline (R4B base + profiles); exit 1 when any has errors."""
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from .model.errors import FhirError
    from .model.resources import loads
    from .validation import ProfileValidator
    from .validation.gate import WriteValidator

    console = Console()
    target = Path(path)
    if not target.exists():
        console.print(f"[red]no such file or folder: {path}[/red]")
        raise typer.Exit(2)
    files = sorted(target.rglob("*.json")) if target.is_dir() else [target]
    profiles = ProfileValidator()
    for extra in profiles_dir or ():
        profiles.load(extra)
    gate = WriteValidator(profiles)
    table = Table("file", "resource", "severity", "location", "message")
    errors = checked = 0
    for f in files:
        try:
            body = loads(f.read_bytes())
        except FhirError as exc:
            table.add_row(str(f), "-", "[red]error[/red]", "", exc.issues[0].diagnostics)
            errors += 1
            continue
        bodies = [body]
        if isinstance(body, dict) and body.get("resourceType") == "Bundle" and not profile:
            bodies += [e.get("resource") for e in body.get("entry") or []
                       if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
        for b in bodies:
            if not isinstance(b, dict):
                continue
            checked += 1
            rtype = str(b.get("resourceType"))
            label = f"{rtype}/{b.get('id', '-')}"
            for i in gate.outcome(b, rtype, list(profile or [])):
                if i.severity == "information":
                    continue
                colour = "red" if i.severity in ("error", "fatal") else "yellow"
                errors += i.severity in ("error", "fatal")
                table.add_row(str(f), label, f"[{colour}]{i.severity}[/{colour}]",
                              ", ".join(i.expression), i.diagnostics)
    if table.row_count:
        console.print(table)
    console.print(f"{checked} resource(s) checked, {errors} error(s)")
    raise typer.Exit(1 if errors else 0)


@app.command()
def render(source: str = typer.Argument(..., help="a document Bundle JSON file, or a "
                                                   "Composition id on --url"),
           out: str = typer.Option("-", "--out", "-o", help="HTML file to write (- = stdout)"),
           url: str = typer.Option(None, "--url", envvar="FHIRGW_URL",
                                   help="gateway FHIR base, when SOURCE is a Composition id"),
           token: str = typer.Option(None, "--token", envvar="FHIRGW_TOKEN", show_envvar=True,
                                     help="bearer access token for --url (default: one from "
                                          "the gateway's /auth/token for $FHIRGW_CLIENT_ID / "
                                          "$FHIRGW_CLIENT_SECRET)")) -> None:
    """Render a discharge summary (a FHIR document) as a printable HTML page."""
    from pathlib import Path

    import httpx

    from .cli_data import auth_for
    from .client import FhirClientError
    from .model.errors import FhirError
    from .model.resources import loads
    from .operations.document import render_html

    try:
        if Path(source).is_file():
            page = render_html(loads(Path(source).read_bytes()))
        elif url:
            r = httpx.get(f"{url.rstrip('/')}/Composition/{source}/$document",
                          params={"_format": "html"}, timeout=30, auth=auth_for(url, token))
            if r.status_code != 200:
                raise typer.BadParameter(f"the gateway answered {r.status_code}: {r.text[:300]}")
            page = r.text
        else:
            raise typer.BadParameter(f"{source} is not a file; give --url to fetch a Composition")
    except FhirError as exc:
        typer.echo(f"error: {exc.issues[0].diagnostics}", err=True)
        raise typer.Exit(1)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach {url}: {exc}", err=True)
        raise typer.Exit(1)
    except (FhirClientError, ValueError) as exc:   # token refused, half-set credentials
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    if out == "-":
        typer.echo(page)
    else:
        Path(out).write_text(page, encoding="utf-8")
        typer.echo(f"wrote {out}")


def main() -> None:  # pragma: no cover
    app()

from .cli_data import register; register(app)  # noqa: E402,E702
from .sync.cli import register as _sync; _sync(app)  # noqa: E402,E702
from .security.cli import register as _clients; _clients(app)  # noqa: E402,E702
