"""``fhirgw clients create|list|revoke``: the OAuth2 clients, on the database directly
(``--database`` or $FHIRGW_DATABASE_URL), like ``serve``. Also the first-start admin client
``serve`` makes when there is no client at all."""
from __future__ import annotations

import json
from pathlib import Path

import typer

DATABASE = typer.Option(None, "--database", envvar="FHIRGW_DATABASE_URL",
                        help="sqlite:///path (default ./fhirgw.db) or postgresql+psycopg://...")

clients_app = typer.Typer(help="API clients (OAuth2): create, list, revoke.",
                          no_args_is_help=True)

#: what the first-start admin client may do
ADMIN_SCOPES = "system/*.cruds fhirgw/admin"


def _store(database: str | None):
    from ..config import Settings
    from ..store.db import make_engine, migrate
    from .clients import ClientStore

    # not through os.environ: a command run in-process (tests, CliRunner) must not change
    # the database every later Settings() of that process points at
    eng = make_engine(database or Settings().database_url, pool_size=2)
    migrate(eng)
    return ClientStore(eng)


@clients_app.command("create")
def create(name: str = typer.Argument(..., help="a name people recognise (shown in audit)"),
           scope: str = typer.Option(..., "--scope",
                                     help='SMART scopes, e.g. "system/Patient.rs system/Task.'
                                          'rus" or "system/*.cruds"; fhirgw/admin for /admin '
                                          'and $reindex'),
           organization: str = typer.Option(None, "--organization",
                                            help="Organization/x: a partner client, isolated "
                                                 "to what concerns that organization"),
           jwks: Path = typer.Option(None, "--jwks", exists=True, dir_okay=False,
                                     help="JWKS file of public keys (SMART Backend Services "
                                          "private_key_jwt)"),
           no_secret: bool = typer.Option(False, "--no-secret",
                                          help="no client secret (JWKS authentication only)"),
           purpose: str = typer.Option("TREAT", help="purpose of use (v3-ActReason code) "
                                                     "recorded for its requests"),
           database: str = DATABASE) -> None:
    """Register a client; prints its credentials (the secret only this once) as JSON."""
    from .clients import ClientError

    keys = None
    if jwks is not None:
        try:
            keys = json.loads(jwks.read_text())
        except ValueError as exc:
            raise typer.BadParameter(f"{jwks} is not JSON: {exc}") from None
    try:
        client, secret = _store(database).create(name, scope, organization=organization,
                                                 jwks=keys, purpose=purpose,
                                                 secret=not no_secret)
    except ClientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    out = {"client_id": client.client_id, **({"client_secret": secret} if secret else {}),
           "name": client.name, "scope": client.scope}
    if client.organization:
        out["organization"] = client.organization
    typer.echo(json.dumps(out, indent=2))


@clients_app.command("list")
def list_(all_: bool = typer.Option(False, "--all", help="revoked clients too"),
          database: str = DATABASE) -> None:
    """The clients, as JSON lines (never their secrets)."""
    for client in _store(database).list(include_revoked=all_):
        typer.echo(json.dumps(client.public()))


@clients_app.command("scope")
def scope(client_id: str = typer.Argument(...),
          scopes: str = typer.Argument(..., help='the new scopes, e.g. "system/Task.rus"'),
          database: str = DATABASE) -> None:
    """Replace a client's scopes; its live tokens keep only what the new ones grant
    (within seconds in other processes)."""
    from .clients import ClientError

    try:
        client = _store(database).set_scope(client_id, scopes)
    except ClientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(json.dumps(client.public()))


@clients_app.command("revoke")
def revoke(client_id: str = typer.Argument(...), database: str = DATABASE) -> None:
    """Revoke a client: no new tokens, and its tokens stop working (within seconds in
    other processes)."""
    if not _store(database).revoke(client_id):
        typer.echo(f"error: no active client {client_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {client_id}")


def first_start(store, url: str) -> str | None:
    """With no active client at all, create the admin client and return how to use it
    (printed by ``serve``); None when clients exist."""
    if store.list():
        return None
    client, secret = store.create("admin", ADMIN_SCOPES)
    return (
        "\n"
        "  No API clients yet: created the admin client (scopes: " + ADMIN_SCOPES + ").\n"
        "  Its secret is shown only now; keep it safe, or make others with\n"
        "  `fhirgw clients create NAME --scope ...`.\n\n"
        f"    client_id:     {client.client_id}\n"
        f"    client_secret: {secret}\n\n"
        "  Get an access token and use it:\n\n"
        f"    TOKEN=$(curl -s -u {client.client_id}:{secret} "
        f"-d grant_type=client_credentials {url}/auth/token | "
        "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')\n"
        f"    curl -H \"Authorization: Bearer $TOKEN\" {url}/fhir/Patient\n")


def register(app: typer.Typer) -> None:
    app.add_typer(clients_app, name="clients")
