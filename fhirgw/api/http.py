"""The HTTP surface: every FHIR interaction is routed to the REST router under /fhir."""
from __future__ import annotations

import logging

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import Response
from sqlalchemy import text
from starlette._utils import get_route_path

from ..model.errors import FhirError, NotAcceptable, PayloadTooLarge, outcome_bytes
from ..model.errors import Issue
from ..rest import RestRequest, Router
from ..security.audit import denied_event, patients_of, rest_event
from .logging import AccessLog
from .negotiation import check_body_type, check_format

FHIR_JSON = "application/fhir+json; charset=utf-8"
log = logging.getLogger("fhirgw.api")
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def error_response(exc: FhirError) -> Response:
    return Response(outcome_bytes(exc.issues), status_code=exc.status,
                    media_type=FHIR_JSON, headers=exc.headers)


class FhirEndpoint:
    """The FHIR handler as a plain ASGI app, for ``FhirApp`` (which sets the scope's
    ``path_params`` as the route would): what FastAPI's middleware stack and Starlette's
    router do for a /fhir request, and nothing else (``FhirError`` -> OperationOutcome,
    anything else -> a logged 500)."""

    def __init__(self, handler, unexpected) -> None:
        self.handler = handler
        self.unexpected = unexpected

    async def __call__(self, scope, receive, send) -> None:
        request = Request(scope, receive)
        try:
            response = await self.handler(request)
        except FhirError as exc:
            response = error_response(exc)
        except Exception as exc:  # noqa: BLE001 - answered as 500, logged with its traceback
            response = await self.unexpected(request, exc)
        await response(scope, receive, send)


class FhirApp(FastAPI):
    """The gateway's FastAPI application; a request under /fhir (but for SMART discovery)
    goes straight to the FHIR handler (``fhir_endpoint``, set by ``install``) behind the
    access log, not through FastAPI's middleware stack and Starlette's router: they cost
    the event loop 40-90 µs of ~300 per read by id (8 clients, this project's machine).
    Only while the access log is the one middleware added (what the endpoint replicates):
    with any other, every request takes the whole stack again."""

    fhir_endpoint = None
    _METHODS = frozenset(METHODS)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and self.fhir_endpoint is not None and \
                scope["method"] in self._METHODS:
            path = get_route_path(scope)
            if (path == "/fhir" or path.startswith("/fhir/")) and \
                    not path.startswith("/fhir/.well-known/") and self._only_access_log():
                scope["app"] = self
                # what the route ``/fhir/{path:path}`` (or ``/fhir``) would have matched
                scope["path_params"] = {} if path == "/fhir" else {"path": path[len("/fhir/"):]}
                await self.fhir_endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def _only_access_log(self) -> bool:
        return len(self.user_middleware) == 1 and self.user_middleware[0].cls is AccessLog


def install(app: FastAPI, router: Router, auth) -> None:
    """The /fhir routes, behind ``auth`` (``api.auth.Auth``)."""
    from .auth import fhir_base
    from .auth import install as install_auth

    settings = router.settings

    @app.exception_handler(FhirError)
    async def _fhir_error(_request: Request, exc: FhirError):
        return error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):
        log.exception("unhandled error")
        return Response(outcome_bytes([Issue("Internal server error; it has been logged",
                                             code="exception", severity="fatal")]),
                        status_code=500, media_type=FHIR_JSON)

    def base_of(request: Request) -> str:
        return fhir_base(request, settings)

    inline_reads = router.repo.fast is not None and router.repo.fast.is_sqlite
    install_auth(app, auth, base_of)  # /auth/token and discovery, before the /fhir routes

    async def fhir(request: Request) -> Response:
        path = request.path_params.get("path", "")
        headers = request.headers
        fmt = check_format(request.query_params.get("_format"), headers.get("accept"))
        base = base_of(request)
        try:
            principal = auth.principal(request.method, path, headers.get("authorization"),
                                       base)
        except FhirError as exc:
            if router.audit is not None:
                router.audit.record(denied_event(
                    None, None, exc.status, address=request.client.host
                    if request.client else None, reason="no valid access token"))
            raise
        target = router.simple_read_target(request.method, path,
                                           request.query_params.multi_items())
        if target is not None and fmt == "json" and not principal.is_partner and \
                principal.scopes.allows(target[0], "r"):
            # hot path: a read by id; SQLite WAL reads take microseconds and never wait
            # for writers, so they run right here instead of hopping to a worker thread
            inm = headers.get("if-none-match")
            if inline_reads:
                fast = router.read_fast(target[0], target[1], inm)
            else:
                fast = await anyio.to_thread.run_sync(router.read_fast, target[0], target[1], inm)
            if fast is not None:
                if router.audit is not None:
                    ref = f"{target[0]}/{target[1]}"
                    event = rest_event(principal, "read", fast.status, resource_refs=(ref,),
                                       patient_refs=patients_of(fast.stored.body, ref))
                    if router.audit.congested:  # it would wait: not on the event loop
                        await anyio.to_thread.run_sync(router.audit.record, event)
                    else:
                        router.audit.record(event)
                return Response(fast.body if request.method == "GET" else None,
                                status_code=fast.status, headers=fast.headers,
                                media_type=FHIR_JSON)
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_body_bytes:
            raise PayloadTooLarge(f"The body is {length} bytes; the limit is "
                                  f"{settings.max_body_bytes}")
        body = await request.body() if request.method in ("POST", "PUT", "PATCH") else None
        if body is not None and len(body) > settings.max_body_bytes:
            raise PayloadTooLarge(f"The body is larger than {settings.max_body_bytes} bytes")
        check_body_type(headers.get("content-type"), bool(body))
        rreq = RestRequest(
            method=request.method, path=path,
            query=request.query_params.multi_items(),
            headers={k: v for k, v in headers.items()},
            body=body, base=base, format=fmt, principal=principal)
        rresp = await anyio.to_thread.run_sync(router.handle, rreq)
        if fmt == "html" and rresp.status < 300 and not (
                rresp.media_type or "").startswith("text/html"):
            raise NotAcceptable("Only some operations render HTML (e.g. Composition/[id]/"
                                "$document); ask for application/fhir+json",
                                expression="_format")
        media = rresp.media_type or FHIR_JSON
        out_headers = dict(rresp.headers)
        if request.method == "HEAD":
            return Response(None, status_code=rresp.status, headers=out_headers,
                            media_type=media)
        return Response(rresp.body, status_code=rresp.status, headers=out_headers,
                        media_type=media if rresp.body is not None else None)

    # plain Starlette routes: the handler reads the request itself, so FastAPI's parameter
    # resolution (a pydantic pass per request) is not needed on the hottest path
    app.router.add_route("/fhir", fhir, methods=METHODS, include_in_schema=False)
    app.router.add_route("/fhir/{path:path}", fhir, methods=METHODS, include_in_schema=False)
    # Starlette tries routes in order: the /fhir ones (discovery, then the catch-all, in the
    # order they were added) go first, so a FHIR request does not test the docs, OpenAPI and
    # token routes on its way (about 1 µs each)
    routes = app.router.routes
    routes[:] = [r for r in routes if getattr(r, "path", "").startswith("/fhir")] + \
        [r for r in routes if not getattr(r, "path", "").startswith("/fhir")]
    if isinstance(app, FhirApp):
        app.fhir_endpoint = AccessLog(FhirEndpoint(fhir, _unexpected))

    @app.get("/healthz", include_in_schema=False)
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz():
        try:
            with router.repo.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            log.warning("readiness check failed: %s", type(exc).__name__)
            return Response(b'{"status":"unavailable"}', status_code=503,
                            media_type="application/json")
        # the validation workers (validation/parallel.py) are an accelerator: while they
        # start, large transactions validate inline, slower but correct, so they do not
        # make the gateway unready; their state is reported for whoever waits for warm-up
        pool = getattr(app.state, "validation_pool", None)
        return {"status": "ready", "validationWorkers": pool.state if pool else "off"}
