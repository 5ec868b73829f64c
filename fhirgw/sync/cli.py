"""Sync commands of the ``fhirgw`` CLI: worker, outbox, partners, map.

They work on the database directly (``--database`` or $FHIRGW_DATABASE_URL), like serve.
"""
from __future__ import annotations

import json
import os
import sys

import typer

DATABASE = typer.Option(None, "--database", envvar="FHIRGW_DATABASE_URL",
                        help="sqlite:///path (default ./fhirgw.db) or postgresql+psycopg://...")
CONFIG = typer.Option(None, "--config", envvar="FHIRGW_SYNC_CONFIG",
                      help="sync config file (TOML or YAML), partners keyed by Endpoint "
                           "identifier")

outbox_app = typer.Typer(help="The delivery outbox: list, show, retry, discard.",
                         no_args_is_help=True)
partners_app = typer.Typer(help="Partners: Organizations with FHIR Endpoints.",
                           no_args_is_help=True)


def _settings(database: str | None, config: str | None = None):
    from ..config import Settings

    if database:
        os.environ["FHIRGW_DATABASE_URL"] = database
    if config:
        os.environ["FHIRGW_SYNC_CONFIG"] = config
    return Settings()


def _engine(database: str | None):
    from ..store.db import make_engine, migrate

    eng = make_engine(_settings(database).database_url, pool_size=4)
    migrate(eng)
    return eng


def _repo(settings):
    from ..app import _default_search_engine
    from ..store.db import make_engine, migrate
    from ..store.repository import Repository
    from ..security import SecurityLabels
    from ..workflows import rules as workflow_rules

    eng = make_engine(settings.database_url, pool_size=8)
    migrate(eng)
    repo = Repository(eng, _default_search_engine(settings))
    repo.rules.extend(workflow_rules(settings))
    repo.rules.append(SecurityLabels())  # what the poller writes is labelled like the rest
    return repo


def _echo_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def worker(database: str = DATABASE, config: str = CONFIG,
           once: bool = typer.Option(False, help="deliver what is due, then exit"),
           poll: bool = typer.Option(True, help="also poll partners"),
           log_level: str = typer.Option("info")) -> None:
    """Run the delivery and polling worker alone (several may share a PostgreSQL DB)."""
    import logging
    import signal
    import threading

    from . import setup
    from .config import ConfigError

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(message)s",
                        stream=sys.stdout)
    settings = _settings(database, config)
    try:
        repo = _repo(settings)
        _rule, w = setup(repo, settings)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    from ..security.audit import AuditTrail, install_rule
    install_rule(repo)           # the poller's writes, in their transaction
    w.audit = AuditTrail(repo)   # deliveries: disclosure AuditEvents
    try:
        if once:
            w.drain()
            if poll:
                w.poller.run_once(force=True)
            w.stop()
            return
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        w.start()
        typer.echo(f"fhirgw worker: database {settings.database_url.split('@')[-1]}")
        done.wait()
        w.stop()
    finally:
        w.audit.close()


@outbox_app.command("list")
def outbox_list(status: str = typer.Option(None, help="pending, inflight, sent, dead, discarded"),
                partner: str = typer.Option(None, help="Endpoint identifier"),
                limit: int = typer.Option(50), as_json: bool = typer.Option(False, "--json"),
                database: str = DATABASE) -> None:
    """Outbox rows, newest first."""
    from rich.console import Console
    from rich.table import Table

    from . import outbox as ob

    rows = ob.list_rows(_engine(database), status=status, partner=partner, limit=limit)
    if as_json:
        _echo_json(rows)
        return
    t = Table("id", "partner", "kind", "resource", "status", "attempts", "age s", "error")
    for r in rows:
        t.add_row(str(r["id"]), r["partner"], r["kind"], r["resource"], r["status"],
                  str(r["attempts"]), f"{r['age_seconds']:.1f}", (r["error"] or "")[:80])
    Console().print(t)


@outbox_app.command("show")
def outbox_show(row_id: int, database: str = DATABASE) -> None:
    """One row, with the partner's OperationOutcome when it failed."""
    from . import outbox as ob

    row = ob.show(_engine(database), row_id)
    if row is None:
        typer.echo(f"error: no outbox row {row_id}", err=True)
        raise typer.Exit(1)
    _echo_json(row)


@outbox_app.command("retry")
def outbox_retry(row_id: int = typer.Argument(None, help="a row id; omit with --all-dead"),
                 all_dead: bool = typer.Option(False, "--all-dead"),
                 partner: str = typer.Option(None), database: str = DATABASE) -> None:
    """Deliver a dead (or discarded) row again, now."""
    from . import outbox as ob

    if row_id is None and not all_dead:
        typer.echo("error: give a row id or --all-dead", err=True)
        raise typer.Exit(2)
    n = ob.retry(_engine(database), row_id, partner=partner)
    typer.echo(f"{n} row(s) queued again")
    raise typer.Exit(0 if n else 1)


@outbox_app.command("discard")
def outbox_discard(row_id: int, database: str = DATABASE) -> None:
    """Stop trying a pending or dead row."""
    from . import outbox as ob

    n = ob.discard(_engine(database), row_id)
    typer.echo(f"{n} row(s) discarded")
    raise typer.Exit(0 if n else 1)


@partners_app.command("list")
def partners_list(database: str = DATABASE, config: str = CONFIG,
                  as_json: bool = typer.Option(False, "--json")) -> None:
    """Organizations with a FHIR Endpoint, their outbox figures and config."""
    from rich.console import Console
    from rich.table import Table

    from . import outbox as ob
    from .config import load
    from .partners import list_partners

    settings = _settings(database, config)
    repo = _repo(settings)
    cfg = load(settings.sync_config or None, default_poll_interval=settings.poll_interval)
    found = repo.run(list_partners, write=False)
    m = ob.metrics(repo.engine)
    rows = [{"key": p.key, "organization": p.organization, "name": p.name,
             "protocol": p.protocol, "address": p.address,
             "configured": p.key in cfg.partners, **m.get(p.key, {})} for p in found]
    if as_json:
        _echo_json(rows)
        return
    t = Table("key", "organization", "name", "protocol", "address", "config", "queued", "sent",
              "failed", "oldest s")
    for r in rows:
        t.add_row(r["key"], r["organization"] or "-", r["name"], r["protocol"], r["address"],
                  "yes" if r["configured"] else "defaults", str(r.get("queued", 0)),
                  str(r.get("sent", 0)), str(r.get("failed", 0)),
                  f"{r.get('oldest_age_seconds', 0):.1f}")
    Console().print(t)


def map_command(file: str = typer.Argument(..., help="a resource or Bundle (JSON)"),
                partner: str = typer.Option(..., "--partner", help="Endpoint identifier"),
                direction: str = typer.Option("out", help="out (to the partner) or in"),
                config: str = CONFIG,
                mapping: str = typer.Option(None, help="a mapping file instead of the "
                                                       "partner's")) -> None:
    """Show what a resource becomes through a partner's mapping."""
    from .config import ConfigError, load
    from .mapping import MappingError, for_partner

    try:
        cfg = load(config)
        name = mapping or cfg.partner(partner).mapping
        if not name:
            typer.echo(f"error: partner {partner} has no mapping in "
                       f"{config or 'the (absent) config'}; give --mapping", err=True)
            raise typer.Exit(2)
        with open(file, "rb") as f:
            body = json.loads(f.read())
        _echo_json(for_partner(name).apply_all(body, direction))
    except (ConfigError, MappingError, OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
    app.add_typer(outbox_app, name="outbox")
    app.add_typer(partners_app, name="partners")
    app.command("map")(map_command)
