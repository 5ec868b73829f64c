"""Data commands of the ``fhirgw`` CLI, built on the SDK: import, export, get, search, demo.

Each talks to a gateway at ``--url`` (default http://127.0.0.1:8000/fhir, or $FHIRGW_URL),
authenticated with ``--token`` ($FHIRGW_TOKEN, a bearer access token) or, without one, with
an API client's credentials in $FHIRGW_CLIENT_ID and $FHIRGW_CLIENT_SECRET (OAuth2 client
credentials at the gateway's ``/auth/token``, or at $FHIRGW_TOKEN_URL; tokens are fetched
on first use and renewed). Secrets are read from the environment only, never from the
command line. Errors print one line (``error: 404 Not Found: Patient/x is not known``) and
exit 1.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_URL = "http://127.0.0.1:8000/fhir"
URL = typer.Option(DEFAULT_URL, "--url", envvar="FHIRGW_URL", help="FHIR base URL of the gateway")
TOKEN = typer.Option(None, "--token", envvar="FHIRGW_TOKEN", show_envvar=True,
                     help="bearer access token (default: one from the gateway's /auth/token "
                          "for $FHIRGW_CLIENT_ID / $FHIRGW_CLIENT_SECRET)")


def _friendly(fn: F) -> F:
    """Turn SDK, file and value errors into one line on stderr and exit code 1."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .client import FhirClientError

        try:
            return fn(*args, **kwargs)
        except (FhirClientError, OSError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    return wrapper  # type: ignore[return-value]


def token_url_for(url: str) -> str:
    """The token endpoint of the gateway whose FHIR base is ``url`` ($FHIRGW_TOKEN_URL wins):
    ``http://h:p/fhir`` -> ``http://h:p/auth/token``."""
    from .security.tokens import origin_of

    return os.environ.get("FHIRGW_TOKEN_URL") or f"{origin_of(url.rstrip('/'))}/auth/token"


def auth_for(url: str, token: str | None = None) -> Any:
    """The httpx Auth the commands send: ``token`` (--token / $FHIRGW_TOKEN) as a bearer
    token, else client credentials from $FHIRGW_CLIENT_ID and $FHIRGW_CLIENT_SECRET, else
    None (a gateway with auth disabled)."""
    from .client import BearerToken, ClientCredentials

    if token:
        return BearerToken(token)
    client_id = os.environ.get("FHIRGW_CLIENT_ID")
    secret = os.environ.get("FHIRGW_CLIENT_SECRET")
    if client_id and secret:
        return ClientCredentials(token_url_for(url), client_id, secret)
    if client_id or secret:
        raise ValueError("set both FHIRGW_CLIENT_ID and FHIRGW_CLIENT_SECRET (or --token)")
    return None


def _client(url: str, token: str | None = None) -> Any:
    from .client import Client, Retry

    return Client(url, auth=auth_for(url, token), retry=Retry(total=3, backoff_factor=0.25))


def _console(err: bool = True) -> Any:
    from rich.console import Console

    return Console(stderr=err)


# ---------------------------------------------------------------- import

class ImportState:
    """Which files (and how many lines or entries of each) are already imported, per URL.

    Kept as JSON in ``--state`` (default ``.fhirgw-import.json``); a file that changed since
    (size or mtime) starts over."""

    def __init__(self, path: Path, url: str) -> None:
        self.path = path
        self.url = url
        self.data: dict[str, Any] = {}
        if path.exists():
            try:
                self.data = json.loads(path.read_text())
            except ValueError:
                self.data = {}

    def _key(self, file: Path) -> str:
        return f"{self.url} {file.resolve()}"

    @staticmethod
    def _stamp(file: Path) -> str:
        st = file.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"

    def done_count(self, file: Path) -> int:
        rec = self.data.get(self._key(file))
        if not rec or rec.get("stamp") != self._stamp(file):
            return 0
        return int(rec.get("done", 0))

    def is_complete(self, file: Path) -> bool:
        rec = self.data.get(self._key(file))
        return bool(rec and rec.get("stamp") == self._stamp(file) and rec.get("complete"))

    def record(self, file: Path, done: int, complete: bool = False) -> None:
        self.data[self._key(file)] = {"stamp": self._stamp(file), "done": done,
                                      "complete": complete}
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


def _files(target: Path) -> list[Path]:
    if target.is_dir():
        return sorted(p for p in target.rglob("*")
                      if p.is_file() and p.suffix.lower() in (".json", ".ndjson", ".jsonl"))
    if not target.exists():
        raise ValueError(f"no such file or folder: {target}")
    return [target]


def _entry_for(resource: dict[str, Any]) -> dict[str, Any]:
    """A batch entry that stores a resource: PUT with its id (keeps references), else POST."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        raise ValueError("a line without resourceType")
    if resource.get("id"):
        return {"resource": resource, "request": {"method": "PUT", "url": f"{rtype}/{resource['id']}"}}
    return {"resource": resource, "request": {"method": "POST", "url": rtype}}


def _ndjson_lines(file: Path) -> list[bytes]:
    return [line for line in file.read_bytes().splitlines() if line.strip()]


def _bundle_units(data: Any) -> tuple[str, list[dict[str, Any]]]:
    """How a JSON file is sent: ('as-is', [bundle]) for transactions and batches,
    ('transaction', entries) for other Bundles, ('single', [entry]) for a resource."""
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise ValueError("not a FHIR resource")
    if data["resourceType"] != "Bundle" or data.get("type") in ("document", "message"):
        return "single", [_entry_for(data)]
    if data.get("type") in ("transaction", "batch"):
        return "as-is", [data]
    entries = []
    for e in data.get("entry") or []:
        if isinstance(e, dict) and isinstance(e.get("resource"), dict):
            entry = _entry_for(e["resource"])
            if e.get("fullUrl"):
                entry["fullUrl"] = e["fullUrl"]
            entries.append(entry)
    return "transaction", entries


def _failures(answer: Any) -> list[str]:
    out = []
    for i, e in enumerate((answer or {}).get("entry") or []):
        status = str((e.get("response") or {}).get("status", ""))
        if status[:1] in ("4", "5"):
            issues = ((e.get("response") or {}).get("outcome") or {}).get("issue") or [{}]
            out.append(f"entry {i}: {status}: {issues[0].get('diagnostics', '')}")
    return out


def import_(path: str = typer.Argument(..., help="a Bundle/resource .json, an .ndjson file, or a folder of them"),
            url: str = URL,
            token: str = TOKEN,
            batch_size: int = typer.Option(200, "--batch-size", help="NDJSON lines per batch"),
            state: Path = typer.Option(Path(".fhirgw-import.json"), "--state",
                                       help="progress file that makes a rerun resume"),
            restart: bool = typer.Option(False, "--restart", help="ignore earlier progress"),
            quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar")) -> None:
    """Import Bundles or NDJSON into the gateway; resumable (reruns skip what is done)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .client import ResponseError
    from .client._core import dumps, loads

    files = _files(Path(path))
    progress_state = ImportState(state, url)
    if restart:
        progress_state.data = {}
    stored = failed = skipped = 0
    problems: list[str] = []
    with _client(url, token) as client, Progress(TextColumn("{task.description}"), BarColumn(),
                                          MofNCompleteColumn(), console=_console(),
                                          disable=quiet) as bar:
        for file in files:
            if progress_state.is_complete(file):
                skipped += 1
                continue
            if file.suffix.lower() in (".ndjson", ".jsonl"):
                lines = _ndjson_lines(file)
                start = progress_state.done_count(file)
                task = bar.add_task(file.name, total=len(lines), completed=start)
                for i in range(start, len(lines), batch_size):
                    chunk = lines[i:i + batch_size]
                    entries = []
                    for n, line in enumerate(chunk):
                        try:
                            entries.append(_entry_for(loads(line)))
                        except ValueError as exc:
                            failed += 1
                            problems.append(f"{file.name}:{i + n + 1}: {exc}")
                    if entries:
                        answer = client.request("POST", "", content=dumps(
                            {"resourceType": "Bundle", "type": "batch", "entry": entries}))
                        bad = _failures(answer)
                        failed += len(bad)
                        stored += len(entries) - len(bad)
                        problems += [f"{file.name} lines {i + 1}-{i + len(chunk)}, {b}" for b in bad]
                    progress_state.record(file, i + len(chunk))
                    bar.update(task, completed=i + len(chunk))
                progress_state.record(file, len(lines), complete=True)
                continue
            kind, units = _bundle_units(loads(file.read_bytes()))
            total = len(units[0].get("entry") or []) if kind == "as-is" else len(units)
            task = bar.add_task(file.name, total=total)
            try:
                if kind == "as-is":
                    answer = client.request("POST", "", content=dumps(units[0]))
                elif kind == "transaction":
                    answer = client.request("POST", "", content=dumps(
                        {"resourceType": "Bundle", "type": "transaction", "entry": units}))
                else:
                    req = units[0]["request"]
                    client.request(req["method"], req["url"], content=dumps(units[0]["resource"]))
                    answer = None
            except ResponseError as exc:
                failed += total
                problems.append(f"{file.name}: {exc}")
            else:
                bad = _failures(answer)
                failed += len(bad)
                stored += total - len(bad)
                problems += [f"{file.name}, {b}" for b in bad]
            bar.update(task, completed=total)
            progress_state.record(file, total, complete=True)
    console = _console()
    for line in problems[:20]:
        console.print(f"[red]failed[/red] {line}", highlight=False)
    if len(problems) > 20:
        console.print(f"… and {len(problems) - 20} more")
    note = f", {skipped} file(s) already imported" if skipped else ""
    console.print(f"imported {stored} resource(s) from {len(files) - skipped} file(s), "
                  f"{failed} failed{note}", highlight=False)
    if failed:
        raise typer.Exit(1)


# ---------------------------------------------------------------- export

def _all_types(client: Any) -> list[str]:
    cap = client.request("GET", "metadata")
    out = []
    for rest in cap.get("rest") or []:
        for res in rest.get("resource") or []:
            if any(i.get("code") == "search-type" for i in res.get("interaction") or []):
                out.append(res["type"])
    return out


def export(types: list[str] = typer.Option(None, "--type", "-t",
                                           help="resource type(s); repeat or comma-separate "
                                                "(default: every type)"),
           since: str = typer.Option(None, "--since", help="only resources changed at or after "
                                                           "this date/instant (_lastUpdated=ge)"),
           out: Path = typer.Option(None, "--out", "-o", help="write NDJSON here (default stdout)"),
           url: str = URL,
           token: str = TOKEN) -> None:
    """Export resources as NDJSON (one resource per line)."""
    from .client._core import dumps

    wanted = [t.strip() for spec in types or [] for t in spec.split(",") if t.strip()]
    counts: dict[str, int] = {}
    stream = open(out, "wb") if out else sys.stdout.buffer  # noqa: SIM115
    try:
        with _client(url, token) as client:
            for rtype in wanted or _all_types(client):
                # one search per type: the system-level _type search loses _type on its
                # next links (see tests/client/test_server_bugs.py)
                search = client.search(rtype).page_size(1000)
                if since:
                    search = search.where(_lastUpdated__ge=since)
                for resource in search.iter_json():
                    stream.write(dumps(resource) + b"\n")
                    counts[rtype] = counts.get(rtype, 0) + 1
    finally:
        if out:
            stream.close()
        else:
            stream.flush()
    detail = ", ".join(f"{k} {v}" for k, v in counts.items()) or "nothing matched"
    _console().print(f"exported {sum(counts.values())} resource(s): {detail}", highlight=False)


# ---------------------------------------------------------------- get / search

def get(ref: str = typer.Argument(..., help="Type/id or Type/id/_history/vid"),
        url: str = URL,
        token: str = TOKEN) -> None:
    """Print one resource as JSON."""
    parts = ref.strip("/").split("/")
    if len(parts) not in (2, 4) or (len(parts) == 4 and parts[2] != "_history"):
        raise typer.BadParameter("expected Type/id or Type/id/_history/vid", param_hint="REF")
    from .client._core import dumps

    with _client(url, token) as client:
        data = client.request("GET", "/".join(parts))
    typer.echo(json.dumps(json.loads(dumps(data)), indent=2, ensure_ascii=False))


def _summary(resource: dict[str, Any]) -> str:
    """A short human label: a description, a name or a code's text."""
    if isinstance(resource.get("description"), str):
        return str(resource["description"])
    for name in resource.get("name") or [] if isinstance(resource.get("name"), list) else []:
        text = name.get("text") or " ".join(name.get("given") or []) + " " + (name.get("family") or "")
        if text.strip():
            return text.strip()
    if isinstance(resource.get("name"), str):
        return str(resource["name"])
    for key in ("code", "type", "serviceType", "category"):
        value = resource.get(key)
        value = value[0] if isinstance(value, list) and value else value
        if isinstance(value, dict):
            text = value.get("text") or next((c.get("display") or c.get("code")
                                              for c in value.get("coding") or []), None)
            if text:
                return str(text)
    return str(resource.get("description") or resource.get("title") or "")


def search(resource_type: str = typer.Argument(..., help="e.g. Patient"),
           query: str = typer.Argument("", help="FHIR query, e.g. 'name=Rivera&birthdate=ge1990'"),
           limit: int = typer.Option(20, "--limit", "-n", help="most resources to show"),
           as_json: bool = typer.Option(False, "--json", help="print NDJSON instead of a table"),
           url: str = URL,
           token: str = TOKEN) -> None:
    """Search and show a table of matches (or NDJSON with --json)."""
    from rich.table import Table

    from .client._core import dumps

    with _client(url, token) as client:
        found = client.search(resource_type).params(query).limit(limit)
        rows = list(found.iter_json())
        total = found.count() if len(rows) >= limit else len(rows)
    if as_json:
        for r in rows:
            typer.echo(dumps(r).decode())
        return
    table = Table("id", "status", "summary", "lastUpdated",
                  title=f"{resource_type}: {len(rows)} of {total}")
    for r in rows:
        table.add_row(str(r.get("id")), str(r.get("status", "")), _summary(r),
                      str((r.get("meta") or {}).get("lastUpdated", ""))[:19])
    _console(err=False).print(table)


# ---------------------------------------------------------------- demo

def demo(url: str = URL,
         token: str = TOKEN,
         force: bool = typer.Option(False, "--force", help="load again even if present")) -> None:
    """Load a realistic synthetic IOP (clients, plans, sessions, referrals, a discharge)."""
    from rich.table import Table

    from .client.demo import DEMO_ORG_IDENTIFIER, load_demo

    console = _console()
    with _client(url, token) as client:
        if not force and client.search("Organization").where(identifier=DEMO_ORG_IDENTIFIER).first():
            console.print(f"the demo program is already loaded at {url} (use --force to load "
                          "another copy)", highlight=False)
            return
        with console.status("loading the demo IOP…") as status:
            counts = load_demo(client, progress=lambda m: status.update(f"loading {m}…"))
    table = Table("resource", "created", title=f"demo IOP loaded into {url}")
    for name, n in sorted(counts.items()):
        table.add_row(name, str(n))
    _console(err=False).print(table)
    typer.echo(f"try: fhirgw search Patient --url {url}\n"
               f"     fhirgw search Task 'status=requested,accepted,in-progress' --url {url}")


def register(app: typer.Typer) -> None:
    """Add the data commands to the ``fhirgw`` app."""
    app.command("import")(_friendly(import_))
    app.command("export")(_friendly(export))
    app.command("get")(_friendly(get))
    app.command("search")(_friendly(search))
    app.command("demo")(_friendly(demo))

