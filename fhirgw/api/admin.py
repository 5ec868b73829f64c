"""The admin API (``/admin``): the outbox and partners for operators, as plain JSON.

* ``GET /admin/outbox?status=&partner=&limit=&offset=``: rows, newest first
* ``GET /admin/outbox/{id}``: one row, with the partner's OperationOutcome if it failed
* ``POST /admin/outbox/{id}/retry``, ``POST /admin/outbox/{id}/discard``
* ``POST /admin/outbox/retry?status=dead&partner=``: every dead row (of a partner) again
* ``GET /admin/metrics``: per partner queued, sent, failed, discarded, oldest age (s)
* ``GET /admin/partners``: Organizations with FHIR Endpoints, and their settings' source

Requests need an access token of a client with scope ``fhirgw/admin`` (the first-start
admin client has it). The sync config's ``[admin] token``, when set, is accepted too.
Retries and discards, and refused requests, leave AuditEvents.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool

from ..model.errors import FhirError
from ..security.audit import denied_event, rest_event
from .auth import fhir_base

#: database ids and paging fit a signed 64-bit integer (larger ones are a 422, not a crash)
RowId = Annotated[int, Path(ge=1, le=2 ** 63 - 1)]
Limit = Annotated[int, Query(ge=1, le=100_000)]
Offset = Annotated[int, Query(ge=0, le=2 ** 62)]


def router(repo, worker) -> APIRouter:
    from ..sync import outbox as ob
    from ..sync.partners import list_partners

    engine = repo.engine
    token = worker.config.admin_token

    def audit(request: Request, event: dict) -> None:
        trail = getattr(request.app.state, "audit", None)
        if trail is not None:
            trail.record(event)

    def done(request: Request, what: str) -> None:
        """An operator's change to the outbox leaves an AuditEvent."""
        audit(request, rest_event(getattr(request.state, "principal", None), "operation", 200,
                                  description=f"admin: {what}"))

    def refuse(request: Request, status: int, message: str, principal=None, **kw):
        audit(request, denied_event(principal, "operation", status,
                                    reason=f"admin API: {message}",
                                    address=request.client.host if request.client else None))
        return HTTPException(status, message, **kw)

    def check(request: Request) -> None:
        given = request.headers.get("authorization")
        request.state.principal = None
        if token and given == f"Bearer {token}":
            return  # the sync config's own admin token
        auth = getattr(request.app.state, "auth", None)
        if auth is None or not auth.enabled:
            if token:
                raise refuse(request, 401, "admin token required")
            return
        try:
            principal = auth.principal("GET", "admin", given,
                                       fhir_base(request, request.app.state.settings))
        except FhirError:
            raise refuse(request, 401, "an access token with scope fhirgw/admin is required",
                         headers={"WWW-Authenticate": 'Bearer realm="fhirgw"'}) from None
        if not principal.scopes.admin:
            raise refuse(request, 403, "this client lacks scope fhirgw/admin", principal)
        request.state.principal = principal

    r = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(check)])

    @r.get("/outbox")
    async def outbox_list(status: str | None = None, partner: str | None = None,
                          limit: Limit = 100, offset: Offset = 0):
        return await run_in_threadpool(ob.list_rows, engine, status=status, partner=partner,
                                       limit=min(limit, 1000), offset=offset)

    @r.post("/outbox/retry")
    async def outbox_retry_all(request: Request, status: str = "dead",
                               partner: str | None = None):
        n = await run_in_threadpool(ob.retry, engine, None, status=status, partner=partner)
        worker.wake()
        done(request, f"retried {n} {status} outbox row(s)"
                      + (f" of partner {partner}" if partner else ""))
        return {"retried": n}

    @r.get("/outbox/{row_id}")
    async def outbox_show(row_id: RowId):
        row = await run_in_threadpool(ob.show, engine, row_id)
        if row is None:
            raise HTTPException(404, f"no outbox row {row_id}")
        return row

    @r.post("/outbox/{row_id}/retry")
    async def outbox_retry(request: Request, row_id: RowId):
        if not await run_in_threadpool(ob.retry, engine, row_id):
            raise HTTPException(409, f"outbox row {row_id} is not dead, discarded or pending")
        worker.wake()
        done(request, f"retried outbox row {row_id}")
        return await run_in_threadpool(ob.show, engine, row_id)

    @r.post("/outbox/{row_id}/discard")
    async def outbox_discard(request: Request, row_id: RowId):
        if not await run_in_threadpool(ob.discard, engine, row_id):
            raise HTTPException(409, f"outbox row {row_id} is not pending or dead")
        done(request, f"discarded outbox row {row_id}")
        return await run_in_threadpool(ob.show, engine, row_id)

    @r.get("/metrics")
    async def metrics():
        return {"partners": await run_in_threadpool(ob.metrics, engine),
                "worker": dict(worker.stats), "poller": dict(worker.poller.stats)}

    @r.get("/partners")
    async def partners():
        found = await run_in_threadpool(repo.run, list_partners, False)
        return [{"key": p.key, "organization": p.organization, "name": p.name,
                 "endpoint": f"Endpoint/{p.endpoint_id}", "protocol": p.protocol,
                 "address": p.address,
                 "configured": p.key in worker.config.partners} for p in found]

    return r
