"""The FHIR R4 REST interactions (http.html) as one routing table over the Repository.

Each handler pulls its parameters, calls the repository inside one unit of work, and returns
a ``RestResponse``. Errors are raised as ``FhirError`` and become an OperationOutcome in one
place: the HTTP exception handler, or the Bundle processor for an entry.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson

from ..config import Settings
from ..model import resources as res
from ..model.errors import (BadRequest, MethodNotAllowed, NotFound,
                            UnsupportedMediaType)
from ..model.errors import FhirError
from ..security.access import authorize, check_message, guard_read, require
from ..security.audit import (denied_event, disclosure_event, interaction_for, patients_of,
                              reset_interaction, rest_event, set_interaction)
from ..security.principal import reset_current, set_current
from ..store.repository import Repository, Stored, Tx, WriteResult, parse_etag
from . import render

FHIR_JSON = "application/fhir+json; charset=utf-8"
# parameters that shape the response, not the search
_CONTROL = {"_format", "_pretty", "_cursor"}


@dataclass
class RestRequest:
    method: str
    path: str                                   # relative to the base: "Patient/123"
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)   # lower-case names
    body: bytes | None = None
    parsed: Any = None                          # the body already parsed (Bundle entries)
    base: str = ""                              # "http://host:port/fhir"
    format: str = "json"                        # what the client asked for: json | html
    #: who asks (security.principal.Principal); None: the gateway itself
    principal: Any = None
    #: a transaction's base validation, handed to the validation workers before the body
    #: was parsed (``BundleProcessor.validate_early``)
    early: Any = None

    @classmethod
    def from_url(cls, method: str, url: str, **kw) -> "RestRequest":
        parts = urlsplit(url)
        return cls(method, parts.path.strip("/"), parse_qsl(parts.query, keep_blank_values=True),
                   **kw)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self) -> Any:
        if self.parsed is None:
            if not self.body:
                raise BadRequest("This interaction needs a request body", code="required")
            self.parsed = res.loads(self.body)
        return self.parsed

    @property
    def search_items(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.query if k not in _CONTROL]

    def param(self, name: str) -> str | None:
        for k, v in self.query:
            if k == name:
                return v
        return None


@dataclass
class RestResponse:
    status: int
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: for Bundle entries: the stored version behind this response
    stored: Stored | None = None
    #: what else the response shows (type, id, body): search matches, document entries;
    #: for the audit trail
    seen: list = field(default_factory=list)
    #: None means application/fhir+json
    media_type: str | None = None


def _prefer(req: RestRequest, key: str) -> str | None:
    raw = req.header("prefer")
    if not raw:
        return None
    for part in raw.split(";" if ";" in raw else ","):
        k, _, v = part.strip().partition("=")
        if k.strip() == key:
            return v.strip().strip('"')
    return None


_ROUTES: list[tuple[str, re.Pattern, str]] = []
# what each path variable may be: type names start upper-case; ids follow FHIR's id rule, so
# "_history", "_search" and "$operation" are never taken for an id
_SEGMENT = {"type": "[A-Z][A-Za-z]*", "ctype": "[A-Z][A-Za-z]*", "id": "[A-Za-z0-9\\-.]{1,64}",
            "vid": "[^/]+", "job": "[A-Za-z0-9]{1,64}"}


@functools.lru_cache(maxsize=4096)
def _route(method: str, path: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The first route whose pattern matches ``path`` (handler name, path variables), or the
    FhirError the request gets. Remembered for the paths seen lately: the entries of a
    Bundle name the same few (``Patient``, ``Observation``), and trying the routes in order
    took ~2,000 instructions an entry. Routes are only ever appended, after the ones a
    remembered path matched; errors are not remembered."""
    allowed = []
    for m, rx, name in _ROUTES:
        match = rx.match(path)
        if match is None:
            continue
        if m != method:
            allowed.append(m)
            continue
        params = match.groupdict()
        if "type" in params:
            res.check_type(params["type"])
        if "ctype" in params:
            res.check_type(params["ctype"])
        return name, tuple(params.items())
    if allowed:
        raise MethodNotAllowed(f"{method} is not allowed on /{path} (allowed: "
                               f"{', '.join(sorted(set(allowed)))})",
                               headers={"Allow": ", ".join(sorted(set(allowed)))})
    first = path.split("/", 1)[0]
    if first and not first.startswith(("$", "_")) and first != "metadata":
        res.check_type(first)
    if "$" in path:
        raise NotFound(f"Operation {path.rsplit('/', 1)[-1]} is not supported on /{path}",
                       code="not-supported")
    raise NotFound(f"No FHIR interaction at /{path}", code="not-supported")


#: handler name -> FHIR operation name, for the CapabilityStatement
OPERATIONS: dict[str, str] = {}


def route(method: str, pattern: str, operation: str | None = None):
    """Register a handler: ``{type}``, ``{id}``, ``{vid}``, ``{ctype}`` are path segments;
    ``operation`` names the FHIR operation it implements."""
    parts = re.split(r"(\{\w+\})", pattern)
    rx = "^" + "".join(f"(?P<{p[1:-1]}>{_SEGMENT[p[1:-1]]})" if p.startswith("{") else re.escape(p)
                       for p in parts) + "$"

    def deco(fn):
        _ROUTES.append((method, re.compile(rx), fn.__name__))
        if operation:
            OPERATIONS[fn.__name__] = operation
        return fn
    return deco


class Router:
    def __init__(self, repo: Repository, settings: Settings | None = None, *,
                 custom_params=None, reindexer=None, watchers=()):
        self.repo = repo
        self.settings = settings or Settings()
        self.search = repo.search_engine
        #: stored SearchParameters (fhirgw.search.custom.CustomParameters)
        self.custom = custom_params
        #: $reindex jobs (fhirgw.operations.reindex.Reindexer)
        self.reindexer = reindexer
        #: views of stored definitions other processes may change (maybe_refresh())
        self.watchers = list(watchers)
        from .bundle import BundleProcessor
        from .capability import capability_statement
        self.bundles = BundleProcessor(self)
        self._capability = capability_statement
        #: (search registry version, CapabilityStatement bytes): rebuilt when parameters change
        self._capability_cache: tuple[int, bytes] | None = None
        #: where read/search/denied AuditEvents go (security.audit.AuditTrail); None: nowhere
        self.audit = None
        #: worker processes for the base validation of large transactions
        #: (validation.parallel.ValidationPool); None: always inline
        self.validation_pool = None

    # ------------------------------------------------------------ dispatch

    def handle(self, req: RestRequest, tx: Tx | None = None) -> RestResponse:
        """Route a request. With ``tx`` the interaction joins that transaction (Bundles)."""
        if tx is None:
            for watcher in self.watchers:  # definitions changed by another process
                watcher.maybe_refresh()
        name, params = self.match(req.method, req.path)
        if name == "bundle" and tx is None:
            self.bundles.validate_early(req)   # before the body is parsed (below)
        interaction = _interaction(name, req)
        itoken = set_interaction(interaction) if tx is None else None
        token = set_current(req.principal)
        try:
            try:
                authorize(req.principal, name, params, req)
            except FhirError as exc:
                self._audit(denied_event(req.principal, interaction, exc.status,
                                         resource_refs=_refs(params),
                                         reason=exc.issues[0].diagnostics))
                raise
            try:
                resp = getattr(self, name)(req, tx, **params)
            except FhirError as exc:
                self._audit(rest_event(req.principal, interaction, exc.status,
                                       resource_refs=_refs(params)))
                raise
            if name not in WRITES:  # writes are audited in their own transaction (AuditRule)
                self._audit_response(req, interaction, params, resp)
            return resp
        finally:
            reset_current(token)
            if itoken is not None:
                reset_interaction(itoken)

    def _audit(self, event: dict) -> None:
        if self.audit is not None:
            self.audit.record(event)

    def _audit_response(self, req: RestRequest, interaction: str, params: dict,
                        resp: RestResponse) -> None:
        if self.audit is None or interaction == "capabilities":
            return
        shown = list(resp.seen)
        if resp.stored is not None:
            shown.insert(0, (resp.stored.res_type, resp.stored.res_id, resp.stored.body))
        refs, patients = _concerned(shown)
        if not refs:
            refs = _refs(params)
        query = None
        if interaction.startswith("search"):
            query = "?".join(p for p in (req.path.strip("/"), urlencode(req.search_items)) if p)
        self.audit.record(rest_event(req.principal, interaction, resp.status,
                                     resource_refs=refs, patient_refs=patients, query=query))

    def match(self, method: str, path: str) -> tuple[str, dict[str, str]]:
        """(handler name, path variables) of a request, or the FhirError it gets."""
        method = method.upper()
        if method == "HEAD":
            method = "GET"
        name, params = _route(method, path.strip("/"))
        return name, dict(params)

    # ------------------------------------------------------------ fast read

    _SIMPLE_READ = re.compile(r"^([A-Z][A-Za-z]*)/([A-Za-z0-9\-.]{1,64})$")

    def simple_read_target(self, method: str, path: str, query) -> tuple[str, str] | None:
        """(type, id) when the request is a plain read by id that ``read_fast`` serves."""
        if method not in ("GET", "HEAD") or self.repo.fast is None:
            return None
        m = self._SIMPLE_READ.match(path)
        if m is None or m.group(1) not in res.SUPPORTED:
            return None
        if any(k not in ("_format", "_pretty") for k, _v in query):
            return None
        return m.group(1), m.group(2)

    def read_fast(self, res_type: str, res_id: str, if_none_match: str | None
                  ) -> RestResponse | None:
        """The current version as stored, with one prepared SELECT; None when it is missing
        or deleted (the full path then answers 404/410 with its OperationOutcome)."""
        row = self.repo.fast.read(res_type, res_id)
        if row is None or row[2]:
            return None
        stored = Stored(res_type, res_id, row[0], row[1], False, row[3])
        headers = {"ETag": stored.etag, "Last-Modified": render.http_date(stored.last_updated)}
        if if_none_match and if_none_match.strip() in (stored.etag, f'"{stored.version}"'):
            return RestResponse(304, None, headers, stored=stored)
        return RestResponse(200, stored.body, headers, stored=stored)

    def _run(self, tx: Tx | None, fn: Callable[[Tx], Any], write: bool = True):
        return fn(tx) if tx is not None else self.repo.run(fn, write=write)

    # ------------------------------------------------------------ responses

    def _write_response(self, req: RestRequest, result: WriteResult, status: int) -> RestResponse:
        stored = result.stored
        headers = render.version_headers(stored, req.base)
        if status != 201:
            headers.pop("Location", None)
            headers["Content-Location"] = (f"{req.base}/{stored.res_type}/{stored.res_id}"
                                           f"/_history/{stored.version}")
        prefer = _prefer(req, "return")
        if prefer == "minimal":
            body = None
        elif prefer == "OperationOutcome":
            body = render.created_outcome(stored, result.created)
        else:
            body = stored.body
        return RestResponse(status, body, headers, stored=stored)

    def _resource_response(self, req: RestRequest, stored: Stored) -> RestResponse:
        headers = {"ETag": stored.etag, "Last-Modified": render.http_date(stored.last_updated)}
        inm = req.header("if-none-match")
        if inm and inm.strip() in (stored.etag, f'"{stored.version}"'):
            return RestResponse(304, None, headers, stored=stored)
        return RestResponse(200, stored.body, headers, stored=stored)

    def _if_match(self, req: RestRequest) -> int | None:
        return parse_etag(req.header("if-match"))

    # ------------------------------------------------------------ instance level

    @route("GET", "{type}/{id}")
    def read(self, req, tx, type, id):
        return self._resource_response(req, self._run(
            tx, lambda t: guard_read(t, req.principal, t.read(type, id)), False))

    @route("GET", "{type}/{id}/_history/{vid}")
    def vread(self, req, tx, type, id, vid):
        if not vid.isdigit():
            raise NotFound(f"Version {vid!r} is not a version id", expression="versionId")
        return self._resource_response(req, self._run(
            tx, lambda t: guard_read(t, req.principal, t.vread(type, id, int(vid))), False))

    @route("PUT", "{type}/{id}")
    def update(self, req, tx, type, id):
        body = req.json()
        self.repo.validator(body, type)
        if_match = self._if_match(req)
        result = self._run(tx, lambda t: t.update(type, id, body, if_match=if_match,
                                                   validated=True))
        return self._write_response(req, result, 201 if result.created else 200)

    @route("PATCH", "{type}/{id}")
    def patch(self, req, tx, type, id):
        ctype = (req.header("content-type") or "").split(";")[0].strip()
        if ctype and ctype not in ("application/json-patch+json", "application/json"):
            raise UnsupportedMediaType(
                f"PATCH takes a JSON Patch (application/json-patch+json), not {ctype}")
        ops = req.json()
        if_match = self._if_match(req)
        result = self._run(tx, lambda t: t.patch(type, id, ops, if_match=if_match))
        return self._write_response(req, result, 200)

    @route("DELETE", "{type}/{id}")
    def delete(self, req, tx, type, id):
        if_match = self._if_match(req)
        stored = self._run(tx, lambda t: t.delete(type, id, if_match=if_match))
        headers = {"ETag": stored.etag} if stored else {}
        return RestResponse(204, None, headers, stored=stored)

    @route("GET", "{type}/{id}/_history")
    def history_instance(self, req, tx, type, id):
        return self._history(req, tx, type, id)

    # ------------------------------------------------------------ type level

    @route("POST", "{type}")
    def create(self, req, tx, type):
        body = req.json()
        self.repo.validator(body, type)
        body.pop("id", None)  # the server assigns the id of a created resource
        cond = req.header("if-none-exist")
        # search parameters on the POST URL (``POST Patient?identifier=...``, what fhirpy's
        # get_or_create sends) are taken as the If-None-Exist condition rather than ignored
        items = _condition(cond) if cond else (req.search_items or None)
        result = self._run(tx, lambda t: t.create(type, body, if_none_exist=items,
                                                   validated=True))
        if result.matched:
            return self._write_response(req, result, 200)
        return self._write_response(req, result, 201)

    @route("PUT", "{type}")
    def conditional_update(self, req, tx, type):
        items = req.search_items
        body = req.json()
        self.repo.validator(body, type)
        if_match = self._if_match(req)
        result = self._run(tx, lambda t: t.conditional_update(type, items, body,
                                                               if_match=if_match))
        return self._write_response(req, result, 201 if result.created else 200)

    @route("DELETE", "{type}")
    def conditional_delete(self, req, tx, type):
        items = req.search_items
        multiple = _prefer(req, "handling") == "multiple" or req.header(
            "x-conditional-delete") == "multiple"
        deleted = self._run(tx, lambda t: t.conditional_delete(
            type, items, multiple=True if multiple else False,
            max_matches=self.settings.max_conditional_delete))
        if not deleted:
            return RestResponse(204, None, {})
        return RestResponse(204, None, {"ETag": deleted[0].etag} if len(deleted) == 1 else {})

    @route("GET", "{type}/_history")
    def history_type(self, req, tx, type):
        return self._history(req, tx, type, None)

    @route("GET", "{type}")
    def search_type(self, req, tx, type):
        return self._search(req, tx, [type], type, req.search_items)

    @route("POST", "{type}/_search")
    def search_post(self, req, tx, type):
        ctype = (req.header("content-type") or "").split(";")[0].strip()
        if ctype != "application/x-www-form-urlencoded":
            raise UnsupportedMediaType("POST _search takes application/x-www-form-urlencoded")
        form = parse_qsl((req.body or b"").decode(), keep_blank_values=True)
        items = [(k, v) for k, v in req.query + form if k not in _CONTROL]
        return self._search(req, tx, [type], type, items)

    @route("GET", "{type}/{id}/{ctype}")
    def compartment(self, req, tx, type, id, ctype):
        return self._search(req, tx, [ctype], ctype, req.search_items, compartment=(type, id))

    # ------------------------------------------------------------ system level

    @route("GET", "metadata")
    def metadata(self, req, tx):
        version = self.search.registry.version
        if self._capability_cache is None or self._capability_cache[0] != version:
            self._capability_cache = (version, orjson.dumps(self._capability(self)))
        return RestResponse(200, self._capability_cache[1], {})

    @route("POST", "")
    def bundle(self, req, tx):
        if tx is not None:
            raise BadRequest("A Bundle cannot be posted inside a Bundle entry")
        return self.bundles.process(req)

    @route("GET", "_history")
    def history_system(self, req, tx):
        return self._history(req, tx, None, None)

    @route("GET", "")
    def search_system(self, req, tx):
        types = None
        items = []
        for k, v in req.search_items:
            if k == "_type":
                types = [t.strip() for t in v.split(",") if t.strip()]
                for t in types:
                    res.check_type(t)
            else:
                items.append((k, v))
        return self._search(req, tx, types, None, items)

    # ------------------------------------------------------------ operations

    @route("POST", "$reindex", operation="reindex")
    def reindex_system(self, req, tx):
        return self._reindex(req, tx, None)

    @route("POST", "{type}/$reindex", operation="reindex")
    def reindex_type(self, req, tx, type):
        return self._reindex(req, tx, [type])

    @route("POST", "{type}/$validate", operation="validate")
    def validate_type(self, req, tx, type):
        return self._validate(req, tx, type, None)

    @route("POST", "{type}/{id}/$validate", operation="validate")
    def validate_instance(self, req, tx, type, id):
        return self._validate(req, tx, type, id)

    def _validate(self, req, tx, type, id):
        from ..operations.validate import validate
        body = req.json()
        outcome = self._run(tx, lambda t: validate(self.repo.validator, t, type, id, body), False)
        return RestResponse(200, orjson.dumps(outcome), {})

    # IOP workflow operations (fhirgw.operations.*); each one unit of work

    @route("POST", "EpisodeOfCare/{id}/$discharge", operation="discharge")
    def discharge(self, req, tx, id):
        from ..operations.discharge import discharge
        params = req.json() if req.body or req.parsed is not None else None
        bundle = self._run(tx, lambda t: discharge(t, id, params, base=req.base,
                                                   settings=self.settings))
        return RestResponse(200, orjson.dumps(bundle, default=res._default), {})

    @route("GET", "Composition/{id}/$document", operation="document")
    def document(self, req, tx, id):
        from ..operations.document import build_document, render_html
        bundle = self._run(tx, lambda t: build_document(
            t, id, base=req.base, recipient=req.param("recipient"),
            purpose=req.param("purpose")), False)
        for rtype in sorted({e["resource"]["resourceType"] for e in bundle.get("entry") or []}):
            require(req.principal, rtype, "r", f"read the {rtype} in this document")
        seen = [(e["resource"]["resourceType"], e["resource"].get("id"), e["resource"])
                for e in bundle.get("entry") or []]
        recipient = req.param("recipient")
        if recipient and self.audit is not None:  # a disclosure, not only a read
            refs, patients = _concerned(seen)
            self.audit.record(disclosure_event(
                req.principal, recipient, 200, resource_refs=refs,
                patient_refs=patients, interaction="operation",
                purpose=req.param("purpose")))
        if req.format == "html":
            return RestResponse(200, render_html(bundle).encode(), {},
                                media_type="text/html; charset=utf-8", seen=seen)
        return RestResponse(200, orjson.dumps(bundle, default=res._default), {}, seen=seen)

    @route("POST", "Composition/{id}/$document", operation="document")
    def document_post(self, req, tx, id):
        return self.document(req, tx, id)

    @route("POST", "CarePlan/{id}/$schedule", operation="schedule")
    def schedule(self, req, tx, id):
        from ..operations.schedule import schedule
        params = req.json()
        bundle = self._run(tx, lambda t: schedule(t, id, params, base=req.base,
                                                  settings=self.settings))
        return RestResponse(200, orjson.dumps(bundle, default=res._default), {})

    @route("POST", "Patient/{id}/$medication-handoff", operation="medication-handoff")
    def medication_handoff(self, req, tx, id):
        from ..operations.messaging import medication_handoff
        params = req.json()
        bundle = self._run(tx, lambda t: medication_handoff(t, id, params, base=req.base,
                                                            settings=self.settings))
        return RestResponse(200, orjson.dumps(bundle, default=res._default), {})

    @route("POST", "$process-message", operation="process-message")
    def process_message(self, req, tx):
        from ..operations.messaging import process_message
        message = req.json()
        types = _entry_types(message)
        check_message(req.principal, types)
        for rtype in sorted(types - {"MessageHeader"}):
            require(req.principal, rtype, "cu", f"send {rtype} in a message")
        bundle = self._run(tx, lambda t: process_message(t, message, base=req.base,
                                                         settings=self.settings))
        return RestResponse(200, orjson.dumps(bundle, default=res._default), {})

    @route("GET", "$reindex-status/{job}")
    def reindex_status(self, req, tx, job):
        found = self.reindexer.get(job) if self.reindexer else None
        if found is None:
            raise NotFound(f"No reindex job {job} in this process")
        body = orjson.dumps(found.parameters())
        if found.status in ("queued", "running"):
            return RestResponse(202, body, {"X-Progress": f"{found.done} of {found.total} "
                                                          "resources reindexed"})
        return RestResponse(200, body, {})

    def _reindex(self, req, tx, types):
        if tx is not None:
            raise BadRequest("$reindex cannot run inside a Bundle")
        if self.reindexer is None:
            raise NotFound("$reindex is not enabled", code="not-supported")
        job = self.reindexer.start(types)
        from ..model.errors import information, operation_outcome
        body = orjson.dumps(operation_outcome([information(
            f"Reindex job {job.id} started; follow it at $reindex-status/{job.id}")]))
        return RestResponse(202, body, {"Content-Location": f"{req.base}/$reindex-status/{job.id}"})

    # ------------------------------------------------------------ shared

    def _history(self, req: RestRequest, tx, type, id) -> RestResponse:
        since = _instant_param(req.param("_since"), "_since")
        at = _instant_param(req.param("_at"), "_at")
        count = _count_param(req.param("_count"), self.settings)
        cursor = req.param("_cursor")
        if cursor is not None and not cursor.isdigit():
            raise BadRequest("_cursor is not one this server issued", expression="_cursor")
        # the whole-server history leaves the audit trail out: every read writes an
        # AuditEvent, so it would grow by being read (AuditEvent/_history has them)
        exclude = ("AuditEvent",) if type is None else ()
        page = self._run(tx, lambda t: t.history(type, id, since=since, at=at, count=count,
                                                 cursor=int(cursor) if cursor else None,
                                                 exclude=exclude), False)
        path = "/".join(p for p in (type, id, "_history") if p)
        items = [(k, v) for k, v in req.query if k != "_cursor"]
        self_url = render.bundle_link(req.base, path, req.query)
        next_url = (render.bundle_link(req.base, path, items + [("_cursor", str(page.next_cursor))])
                    if page.next_cursor else None)
        return RestResponse(200, render.history_bundle(page.entries, req.base, self_url,
                                                       next_url, page.total), {})

    def _search(self, req: RestRequest, tx, types, type_for_parse, items, compartment=None):
        from .search import search_response
        return search_response(self, req, tx, types, type_for_parse, items, compartment)


#: handlers whose writes AuditRule records inside their own transaction
WRITES = frozenset({"create", "update", "patch", "delete", "conditional_update",
                    "conditional_delete", "bundle", "discharge", "schedule",
                    "medication_handoff", "process_message"})


def _interaction(name: str, req: RestRequest) -> str:
    if name == "bundle":
        try:
            body = req.json()
        except FhirError:
            return "batch"
        return "transaction" if isinstance(body, dict) and \
            body.get("type") == "transaction" else "batch"
    return interaction_for(name)


def _concerned(shown) -> tuple[list[str], list[str]]:
    """The ``Type/id`` of each (type, id, body) shown, and the patients they concern."""
    patients: set[str] = set()
    for t, i, body in shown:
        patients |= patients_of(body, f"{t}/{i}")
    return [f"{t}/{i}" for t, i, _b in shown], sorted(patients)


def _refs(params: dict) -> list[str]:
    rtype = params.get("type")
    if rtype and params.get("id"):
        return [f"{rtype}/{params['id']}"]
    return []


def _entry_types(bundle) -> set[str]:
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    return {e["resource"]["resourceType"] for e in entries or []
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
            and isinstance(e["resource"].get("resourceType"), str)}


def _condition(value: str) -> list[tuple[str, str]]:
    """``If-None-Exist: identifier=http://x|1`` (with or without a leading ``Type?``)."""
    q = value.split("?", 1)[1] if "?" in value else value
    items = parse_qsl(q, keep_blank_values=True)
    if not items:
        raise BadRequest(f"If-None-Exist {value!r} holds no search parameters",
                         expression="If-None-Exist")
    return items


def _count_param(value: str | None, settings: Settings) -> int:
    if value is None:
        return settings.default_count
    if not value.isdigit():
        raise BadRequest(f"_count must be a whole number, got {value!r}", expression="_count")
    return min(int(value), settings.max_count)


def _instant_param(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    from datetime import datetime, timezone
    v = value.strip().replace("Z", "+00:00")
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise BadRequest(f"{name} must be a FHIR instant such as 2026-01-01T00:00:00Z, got "
                         f"{value!r}", expression=name) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1_000_000)
