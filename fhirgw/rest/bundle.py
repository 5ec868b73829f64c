"""Batch and transaction Bundles posted to the base URL (FHIR R4 http.html#transaction).

A transaction is all or nothing, in one unit of work: entries are processed in the order
the spec gives (DELETE, POST, PUT/PATCH, GET/HEAD), every ``fullUrl`` (``urn:uuid:`` or
absolute) is mapped to the identity the server gives it, and every matching link in the
Bundle is rewritten: references, uri-typed values, and ``href``/``src`` in narrative.
Conditional references (``Patient?identifier=s|v``) resolve to exactly one match. A failure
answers with the status of the failing entry and an OperationOutcome naming it.

A batch runs each entry on its own, each with its own status and outcome. Both reuse the
router's interactions; nothing here re-implements create or update.
"""
from __future__ import annotations

import functools
import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from ..model import resources as res
from ..model.references import rewrite_links
from ..model.ids import new_id
from ..model.errors import (BadRequest, FhirError, Issue, NotFound, PayloadTooLarge,
                            PreconditionFailed, TooManyMatches, operation_outcome)
from ..security.access import authorize
from ..store.repository import Tx, WriteResult, instant, parse_etag
from . import render

log = logging.getLogger("fhirgw.bundle")

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


@dataclass
class Entry:
    index: int
    method: str
    url: str
    path: str
    query: list[tuple[str, str]]
    resource: Any
    full_url: str | None
    request: dict
    #: identity this entry writes, once resolved ("Patient/123")
    target: str | None = None
    #: POST with If-None-Exist that matched: nothing to write
    matched_id: str | None = None
    response: Any = None
    extra: dict = field(default_factory=dict)


def _entry_error(entry_index: int, exc: FhirError) -> FhirError:
    """The same error, its messages and expressions placed at the entry."""
    prefix = f"Bundle.entry[{entry_index}]"
    issues = []
    for i in exc.issues:
        exprs = []
        for e in i.expression or []:
            head, _, rest = e.partition(".")
            if head[:1].isupper() and head.split("[")[0] in res.SUPPORTED:
                exprs.append(f"{prefix}.resource" + (f".{rest}" if rest else ""))
            else:
                exprs.append(f"{prefix}.request" if not e.startswith("Bundle") else e)
        issues.append(Issue(f"{prefix}: {i.diagnostics}", code=i.code, severity=i.severity,
                            expression=exprs or [prefix]))
    err = FhirError(issues=issues, status=exc.status)
    err.headers = exc.headers
    return err


class BundleProcessor:
    def __init__(self, router):
        self.router = router

    # ------------------------------------------------------------ parsing

    def validate_early(self, req) -> None:
        """Hand a large transaction's body to the validation workers before anything else
        (``ValidationPool.submit_early``): they parse it and start on its entries while
        this request parses, authorizes and resolves them; ``_submit_validation`` adopts
        that work."""
        pool = self.router.validation_pool
        if pool is not None and isinstance(req.body, bytes) and \
                hasattr(self.router.repo.validator, "beyond_base"):
            req.early = pool.submit_early(req.body)

    def process(self, req):
        bundle = req.json()
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise BadRequest("POST to the base URL takes a Bundle of type batch or transaction",
                             expression="Bundle.resourceType")
        btype = bundle.get("type")
        if btype not in ("batch", "transaction"):
            raise BadRequest(f"A Bundle posted to the base URL must be a batch or transaction, "
                             f"not {btype!r} (store other Bundles with POST /Bundle)",
                             expression="Bundle.type")
        raw_entries = bundle.get("entry") or []
        if not isinstance(raw_entries, list):
            raise BadRequest("Bundle.entry must be an array", expression="Bundle.entry")
        limit = self.router.settings.max_bundle_entries
        if len(raw_entries) > limit:
            raise PayloadTooLarge(f"The Bundle has {len(raw_entries)} entries; this server "
                                  f"takes at most {limit} per Bundle", expression="Bundle.entry")
        entries = [self._entry(i, e, req.base) for i, e in enumerate(raw_entries)]
        if btype == "transaction":
            for e in entries:
                if isinstance(e, FhirError):
                    raise e
            body = self._transaction(req, entries)
        else:
            body = self._batch(req, entries)
        from .router import RestResponse
        return RestResponse(200, body, {})

    def _entry(self, i: int, raw: Any, base: str | None = None) -> Entry | FhirError:
        where = f"Bundle.entry[{i}]"
        try:
            if not isinstance(raw, dict):
                raise BadRequest(f"{where} must be an object", expression=where)
            request = raw.get("request")
            if not isinstance(request, dict) or not request.get("method") or not request.get("url"):
                raise BadRequest(f"{where}.request with method and url is required",
                                 expression=f"{where}.request")
            method = str(request["method"]).upper()
            if method not in _ORDER:
                raise BadRequest(f"{where}.request.method {method!r} is not a FHIR HTTP verb",
                                 expression=f"{where}.request.method")
            url = str(request["url"])
            parts = urlsplit(url)
            path = parts.path.strip("/")
            if parts.scheme or parts.netloc:   # absolute: it must be on this server's base
                base = base or self._base()
                path = _local_path(parts, base)
                if path is None:
                    raise BadRequest(f"{where}.request.url {url!r} is not on this server "
                                     f"(its base is {base}); an entry's url is relative to "
                                     "the base, e.g. 'Patient/123'",
                                     expression=f"{where}.request.url")
            resource = raw.get("resource")
            if method in ("POST", "PUT") and not isinstance(resource, dict):
                raise BadRequest(f"{where}.resource is required for {method}",
                                 expression=f"{where}.resource")
            if method == "PATCH":
                resource = _patch_body(raw, where)
            full_url = raw.get("fullUrl")
            return Entry(i, method, url, path, parse_qsl(parts.query, keep_blank_values=True),
                         resource, full_url if isinstance(full_url, str) else None, request)
        except FhirError as exc:
            return exc

    def _base(self) -> str:
        return self.router.settings.base_url

    # ------------------------------------------------------------ transaction

    def _transaction(self, req, entries: list[Entry]) -> bytes:
        # the R4B base validation of a large transaction runs in the validation pool
        # (fhirgw/validation/parallel.py) while the rest happens here; errors come out as
        # without the pool: the first failing entry's, validation before business rules
        pending = self._submit_validation(req, entries)
        # an answer nobody reads (this request failed here) is dropped by the next request
        # reading that worker's answers
        self._check_entries(req, entries, pending)

        def unit(tx: Tx):
            try:
                out = self._unit(req, tx, entries)
            except Exception:
                # an invalid entry precedes whatever the unit ran into (rules and index
                # extraction may assume valid input: their failure is not the answer)
                _raise_invalid(pending)
                raise
            # the answer is awaited last before the commit, once the rules' before_commit
            # (the AuditEvent) has run: that work overlaps with the workers' too
            tx.commit_checks.append(lambda: _raise_invalid(pending))
            return out

        return self.router.repo.run(unit)

    def _submit_validation(self, req, entries: list[Entry]):
        """The base validation of the POST/PUT entries, handed to the pool; None (validate
        inline) when there is no pool, too few entries, or the pool is not ready."""
        pool = self.router.validation_pool
        if pool is None or not hasattr(self.router.repo.validator, "beyond_base"):
            return None
        writes = [e for e in entries if e.method in ("POST", "PUT")]
        if not pool.wanted(len(writes)):
            return None
        # the worker reads the resources from the body as received (parsed once more there)
        # rather than from JSON written again here for each
        body = req.body if isinstance(req.body, bytes) else None
        items, originals = [], {}
        for e in writes:
            rtype = _write_type(e)
            if rtype not in res.SUPPORTED:
                continue  # refused by check_type before its base validation
            if body is None:
                try:
                    raw = res.dumps(e.resource)
                except Exception:  # e.g. an integer beyond 64 bits: this one inline
                    continue
            else:
                raw = None
            items.append((e.index, rtype, raw))
            originals[e.index] = (rtype, e.resource)
        early, req.early = req.early, None
        if early is not None and body is not None:
            pending = pool.adopt(early, items, originals)
            if pending is not None:
                return pending
        return pool.submit(items, originals, body)

    def _check_entries(self, req, entries: list[Entry], pending) -> None:
        """Permissions and validation, outside the database transaction, entry by entry:
        authorization, then the type, base validation and the rest of the validator."""
        validator = self.router.repo.validator
        for e in entries:
            # with base validation pending, the entries before this one (and this one's,
            # once its own base validation would have run) fail first
            last = e.index - 1
            try:
                name, params = self.router.match(e.method, e.path)
                authorize(req.principal, name, params, _EntryRequest(e.query))
                if e.method in ("POST", "PUT"):
                    rtype = _write_type(e)
                    res.check_type(rtype)
                    if pending is not None and e.index in pending.indices:
                        last = e.index
                        validator.beyond_base(e.resource, rtype)
                    else:
                        validator(e.resource, rtype)
            except Exception as exc:
                if pending is not None:
                    found = pending.first_error(upto=last)
                    if found is not None:
                        raise _entry_error(*found) from None
                if isinstance(exc, FhirError):
                    raise _entry_error(e.index, exc) from None
                raise

    def _unit(self, req, tx: Tx, entries: list[Entry]) -> bytes:
        for e in entries:  # _rewrite copies what it changes; the parsed entries stay as sent
            e.extra["body"] = e.resource
            e.response = None
            e.target = None
            e.matched_id = None
        mapping = self._resolve_identities(tx, entries)
        for e in entries:
            try:
                if isinstance(e.extra["body"], (dict, list)):
                    e.extra["body"] = self._rewrite(tx, e.extra["body"], mapping)
            except FhirError as exc:
                raise _entry_error(e.index, exc) from None
        ordered = sorted(entries, key=lambda e: _ORDER[e.method])
        # creates and plain updates go in batches (a few statements for all of them);
        # the rest one by one, in the spec's order
        creates = [e for e in ordered if e.method == "POST" and not e.matched_id]
        updates = [e for e in ordered if e.method == "PUT"]
        for e in ordered:
            if e.method == "POST" and creates:
                self._batch_write(tx, creates, create=True)
                creates = []
            elif e.method == "PUT" and updates:
                self._batch_write(tx, updates, create=False)
                updates = []
            if e.response is not None:
                continue
            try:
                e.response = self._execute(req, tx, e)
            except FhirError as exc:
                raise _entry_error(e.index, exc) from None
        return self._response_bundle(req, entries, "transaction-response")

    def _resolve_identities(self, tx: Tx, entries: list[Entry]) -> dict[str, str]:
        mapping: dict[str, str] = {}
        seen: dict[str, int] = {}
        for e in entries:
            try:
                target = self._identity(tx, e)
            except FhirError as exc:
                raise _entry_error(e.index, exc) from None
            if target is None:
                continue
            e.target = target
            if e.method != "GET" and e.method != "HEAD":
                if target in seen:
                    raise BadRequest(
                        f"Bundle.entry[{e.index}] and Bundle.entry[{seen[target]}] both "
                        f"change {target}; a transaction may touch a resource once",
                        expression=f"Bundle.entry[{e.index}].request.url")
                seen[target] = e.index
            if e.full_url and e.full_url != target:
                mapping[e.full_url] = target
        return mapping

    def _identity(self, tx: Tx, e: Entry) -> str | None:
        segs = e.path.split("/")
        rtype = segs[0]
        if e.method == "POST":
            if len(segs) != 1:
                raise BadRequest(f"POST url must be a resource type, got {e.url!r}",
                                 expression="request.url")
            res.check_type(rtype)
            cond = e.request.get("ifNoneExist")
            if cond:
                from .router import _condition
                items = _condition(cond)
                tx.lock(f"{rtype}?{sorted(items)}")
                found = tx.find(rtype, items)
                if len(found) > 1:
                    raise TooManyMatches(f"ifNoneExist matched {len(found)} {rtype} resources",
                                         expression="request.ifNoneExist")
                if found:
                    e.matched_id = found[0][1]
                    return f"{rtype}/{found[0][1]}"
            return f"{rtype}/{new_id()}"
        if e.method in ("PUT", "PATCH", "DELETE") and len(segs) == 1 and e.query:
            res.check_type(rtype)
            if e.method == "DELETE":
                return None
            tx.lock(f"{rtype}?{sorted(e.query)}")
            found = tx.find(rtype, e.query)
            if len(found) > 1:
                raise TooManyMatches(f"The condition matched {len(found)} {rtype} resources",
                                     expression="request.url")
            if found:
                return f"{rtype}/{found[0][1]}"
            if e.method == "PATCH":
                raise NotFound(f"Conditional patch {e.url!r} matched nothing")
            body_id = e.resource.get("id") if isinstance(e.resource, dict) else None
            return f"{rtype}/{body_id or new_id()}"
        if e.method in ("PUT", "PATCH", "DELETE"):
            if len(segs) != 2:
                raise BadRequest(f"{e.method} url must be [type]/[id], got {e.url!r}",
                                 expression="request.url")
            res.check_type(rtype)
            return f"{rtype}/{segs[1]}"
        return None

    _CONDREF = re.compile(r"^[A-Z][A-Za-z]+\?")

    def _rewrite(self, tx: Tx, node: Any, mapping: dict[str, str]) -> Any:
        """Replace every link to a Bundle fullUrl; resolve conditional references."""
        return rewrite_links(node, mapping,
                             conditional=lambda ref: self._conditional_reference(tx, ref),
                             is_conditional=lambda ref: bool(self._CONDREF.match(ref)))

    def _conditional_reference(self, tx: Tx, ref: str) -> str:
        rtype, _, q = ref.partition("?")
        res.check_type(rtype)
        items = parse_qsl(q, keep_blank_values=True)
        found = tx.find(rtype, items)
        if not found:
            raise NotFound(f"The conditional reference {ref!r} matched no {rtype}",
                           code="not-found", expression="reference")
        if len(found) > 1:
            raise PreconditionFailed(f"The conditional reference {ref!r} matched "
                                     f"{len(found)} resources; it must match exactly one",
                                     code="multiple-matches")
        return f"{rtype}/{found[0][1]}"

    def _batch_write(self, tx: Tx, batch: list[Entry], *, create: bool) -> None:
        try:
            if create:
                items = []
                for e in batch:
                    rtype, _, new_id = e.target.partition("/")
                    body = dict(e.extra["body"])
                    body.pop("id", None)
                    items.append((rtype, body, new_id))
                results = tx.create_many(items)
            else:
                items = []
                for e in batch:
                    rtype, _, rid = e.target.partition("/")
                    body = dict(e.extra["body"])
                    if e.query:  # conditional update resolved to an identity
                        body["id"] = rid
                    items.append((rtype, rid, body, parse_etag(e.request.get("ifMatch"))))
                results = tx.update_many(items)
        except FhirError as exc:
            position = getattr(exc, "batch_index", None)
            index = batch[position].index if position is not None else batch[0].index
            raise _entry_error(index, exc) from None
        for e, result in zip(batch, results):
            status = 201 if create or result.created else 200
            e.response = ("write", result, status)

    def _execute(self, req, tx: Tx, e: Entry):
        """One entry that is not part of a batched write: a POST whose ifNoneExist matched,
        PATCH, DELETE, GET/HEAD (creates and updates go through ``_batch_write``)."""
        body = e.extra.get("body")
        if e.method == "POST":  # only a matched conditional create reaches here
            rtype = e.target.partition("/")[0]
            return ("write", WriteResult(tx.read(rtype, e.matched_id), matched=True), 200)
        if e.method == "PATCH":
            rtype, _, rid = e.target.partition("/")
            if_match = parse_etag(e.request.get("ifMatch"))
            result = tx.patch(rtype, rid, body, if_match=if_match)
            return ("write", result, 200)
        if e.method == "DELETE":
            rtype = e.path.split("/")[0]
            if e.query:
                tx.conditional_delete(rtype, e.query)
                return ("status", None, 204)
            try:
                tx.delete(rtype, e.path.split("/")[1])
            except NotFound:
                pass  # deleting what is not there leaves the server as asked: idempotent
            return ("status", None, 204)
        # GET / HEAD: through the router, inside this transaction
        from .router import RestRequest
        sub = RestRequest(e.method, e.path, e.query, _entry_headers(e.request), None,
                          base=req.base, principal=req.principal)
        return ("rest", self.router.handle(sub, tx), None)

    # ------------------------------------------------------------ batch

    def _batch(self, req, entries: list[Entry | FhirError]) -> bytes:
        from .router import RestRequest, _prefer
        minimal = _prefer(req, "return") == "minimal"
        out = []
        for e in entries:
            if isinstance(e, FhirError):
                out.append(_error_entry(e))
                continue
            try:
                headers = _entry_headers(e.request)
                if e.method == "PATCH":
                    headers.setdefault("content-type", "application/json-patch+json")
                sub = RestRequest(e.method, e.path, e.query, headers, None,
                                  parsed=e.resource, base=req.base, principal=req.principal)
                e.response = ("rest", self.router.handle(sub), None)
                out.append(self._entry_response(req, e, minimal))
            except FhirError as exc:
                out.append(_error_entry(exc))
            except Exception:  # one entry's bug must not lose the others' results
                log.exception("batch entry %s failed", e.index)
                out.append(_error_entry(FhirError("Internal error processing this entry",
                                                  status=500, code="exception")))
        return orjson.dumps({"resourceType": "Bundle", "id": str(uuid.uuid4()),
                             "type": "batch-response", "entry": out})

    # ------------------------------------------------------------ responses

    def _response_bundle(self, req, entries: list[Entry], btype: str) -> bytes:
        from .router import _prefer
        minimal = _prefer(req, "return") == "minimal"
        return orjson.dumps({"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": btype,
                             "entry": [self._entry_response(req, e, minimal) for e in entries]})

    def _entry_response(self, req, e: Entry, minimal: bool) -> dict:
        kind, value, status = e.response
        if kind == "write":
            stored = value.stored
            out: dict = {}
            if not minimal:
                out["resource"] = render.fragment(stored.body)
            out["response"] = {
                "status": render.status_line(status),
                "location": f"{stored.res_type}/{stored.res_id}/_history/{stored.version}",
                "etag": stored.etag, "lastModified": instant(stored.last_updated)}
            if e.full_url:
                out = {"fullUrl": f"{req.base}/{stored.res_type}/{stored.res_id}", **out}
            return out
        if kind == "status":
            return {"response": {"status": render.status_line(status)}}
        rest = value
        out = {}
        if rest.body is not None and e.method != "HEAD":
            out["resource"] = render.fragment(rest.body)
        response: dict = {"status": render.status_line(rest.status)}
        if rest.stored is not None:
            response["etag"] = rest.stored.etag
            response["lastModified"] = instant(rest.stored.last_updated)
            if rest.status == 201:
                s = rest.stored
                response["location"] = f"{s.res_type}/{s.res_id}/_history/{s.version}"
        out["response"] = response
        return out


@functools.lru_cache(maxsize=64)
def _base_parts(base: str) -> tuple[str, str]:
    """(host, path) of the server's base URL: ``("host:8000", "fhir")``."""
    parts = urlsplit(base)
    return parts.netloc.lower(), parts.path.strip("/")


def _local_path(parts, base: str | None) -> str | None:
    """The path below ``base`` of an absolute entry URL (split in ``parts``): None when
    it names another host or a path outside the base. The scheme is not compared: behind
    a proxy the gateway may see http where the client wrote https."""
    if not base:
        return None
    host, base_path = _base_parts(base)
    if parts.netloc.lower() != host:
        return None
    path = parts.path.strip("/")
    if not base_path:
        return path
    if not path.startswith(base_path + "/"):
        return None
    return path[len(base_path) + 1:]


def _write_type(e: Entry) -> str:
    """The resource type a POST/PUT entry's URL names."""
    return e.path.split("/")[0].split("?")[0]


def _raise_invalid(pending) -> None:
    """Raise the first invalid entry's error, once the pool has answered (no-op without)."""
    if pending is not None:
        found = pending.first_error()
        if found is not None:
            raise _entry_error(*found) from None


class _EntryRequest:
    """What ``authorize`` reads of a transaction entry's request."""

    def __init__(self, query: list[tuple[str, str]]) -> None:
        self.search_items = query


def _entry_headers(request: dict) -> dict[str, str]:
    headers = {}
    for key, name in (("ifMatch", "if-match"), ("ifNoneMatch", "if-none-match"),
                      ("ifNoneExist", "if-none-exist"), ("ifModifiedSince", "if-modified-since")):
        if request.get(key):
            headers[name] = str(request[key])
    return headers


def _error_entry(exc: FhirError) -> dict:
    return {"response": {"status": render.status_line(exc.status),
                         "outcome": operation_outcome(exc.issues)}}


def _patch_body(raw: dict, where: str) -> Any:
    """A PATCH entry carries its JSON Patch as a Binary (base64) or as Parameters-less JSON."""
    resource = raw.get("resource")
    if isinstance(resource, dict) and resource.get("resourceType") == "Binary":
        import base64
        try:
            return orjson.loads(base64.b64decode(resource.get("data", "")))
        except Exception:
            raise BadRequest(f"{where}.resource: the Binary does not hold a JSON Patch",
                             expression=f"{where}.resource.data") from None
    if isinstance(resource, list):
        return resource
    raise BadRequest(f"{where}: a PATCH entry carries a JSON Patch as a Binary resource "
                     "(contentType application/json-patch+json)", expression=f"{where}.resource")
