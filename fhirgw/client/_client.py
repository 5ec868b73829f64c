"""Client (sync) and AsyncClient: the same API over one core; only the I/O differs.

Each method builds a :class:`~fhirgw.client._core.Call` with the shared core and hands it to
``_run``, which sends it with httpx, retries as the :class:`~fhirgw.client.Retry` policy
says, maps error answers to exceptions and decodes the result.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, overload

import httpx
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.resource import Resource
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task

from . import _core as core
from ._auth import auth_from
from ._config import DEFAULT_RETRY, DEFAULT_TIMEOUT, Retry
from ._core import Call, Query, R, Request
from ._iop import Cadence, Referral, add_referral, discharge_call, medication_handoff_call, task_with_status
from ._search import AsyncSearchSet, SearchSet, _Query
from ._transaction import AsyncTransaction, Transaction

__all__ = ["Client", "AsyncClient"]

T = TypeVar("T")
Operations = Sequence[Mapping[str, Any]]
TimeoutTypes = float | httpx.Timeout | None

USER_AGENT = "fhirgw-client/0.1.0"


def _retry(retry: Retry | int | None) -> Retry:
    if retry is None:
        return Retry(total=0)
    if isinstance(retry, int):
        return Retry(total=retry)
    return retry


def _base(base_url: str) -> str:
    return str(base_url).rstrip("/") + "/"


def _patch_call(target: Any, args: tuple[Any, ...], if_match: bool | int | str | None) -> Call[Any]:
    """``patch(resource, ops)`` or ``patch(Type, id, ops)``."""
    if isinstance(target, Resource):
        if len(args) != 1:
            raise TypeError("patch(resource, operations) takes the operations only")
        rid, operations, rtype = core.resource_id(target), args[0], type(target)
    else:
        if len(args) != 2:
            raise TypeError("patch(Type, id, operations)")
        (rid, operations), rtype = args, target
    tag = None if if_match is None or if_match is False else \
        core.version_tag(if_match, target if isinstance(target, Resource) else None)
    return core.patch(rtype, rid, operations, if_match=tag)


def _delete_call(target: type[Resource] | Resource | str, rid: str | None,
                 if_match: bool | int | str | None) -> Call[None]:
    if rid is None:
        if isinstance(target, Resource):
            rid = core.resource_id(target)
        elif isinstance(target, str) and "/" in target:
            target, rid = target.split("/", 1)
        else:
            raise TypeError("delete(resource), delete(Type, id) or delete('Type/id')")
    tag = None if if_match is None or if_match is False else \
        core.version_tag(if_match, target if isinstance(target, Resource) else None)
    return core.delete(core.type_name(target), rid, if_match=tag)


def _history_call(target: type[Resource] | Resource, rid: str | None, since: Any,
                  count: int | None) -> tuple[Call[Any], type[Resource]]:
    rtype = type(target) if isinstance(target, Resource) else target
    if rid is None and isinstance(target, Resource):
        rid = core.resource_id(target)
    url = core.type_name(rtype) + (f"/{rid}" if rid else "") + "/_history"
    params: list[tuple[str, str]] = []
    if since is not None:
        params.append(("_since", since.isoformat() if hasattr(since, "isoformat") else str(since)))
    if count is not None:
        params.append(("_count", str(count)))
    return core.get_json(url, params), rtype


def _raw_call(method: str, url: str, params: Sequence[tuple[str, str]], json: Any,
              content: bytes | None, headers: Mapping[str, str] | None) -> Call[Any]:
    body = content if content is not None else (None if json is None else core.dumps(json))
    req = Request(method.upper(), url, params=tuple(params),
                  headers=tuple((headers or {}).items()), body=body)
    return Call(req, core.expect_json)


def _search_class(resource_type: type[R] | str | None) -> tuple[type[R] | None, str | None]:
    if resource_type is None:
        return None, None
    if isinstance(resource_type, str):
        core.model_class(resource_type)  # refuse unknown types early
        return None, resource_type
    return resource_type, core.type_name(resource_type)


class _ClientBase:
    def __init__(self, base_url: str, *, auth: str | httpx.Auth | None,
                 timeout: TimeoutTypes, retry: Retry | int | None,
                 headers: Mapping[str, str] | None) -> None:
        self.base_url = _base(base_url)
        self.retry = _retry(retry)
        self._auth = auth_from(auth)
        self._timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        self._headers = {"User-Agent": USER_AGENT, **(headers or {})}

    def _http_kwargs(self, request: Request) -> dict[str, Any]:
        return {"params": list(request.params) or None, "headers": request.http_headers(),
                "content": request.body}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.base_url}>"


class Client(_ClientBase):
    """A FHIR R4 client for fhirgw (or any FHIR R4 server), returning R4B models.

    ``auth`` is a bearer token string or an auth object (:class:`ClientCredentials`,
    :class:`SmartBackendServices`, any ``httpx.Auth``); ``retry`` a :class:`Retry`, a number
    of retries, or None for none; ``transport`` any ``httpx.BaseTransport`` (tests pass
    ``httpx.MockTransport`` or use respx). Use it as a context manager, or call ``close()``.
    """

    def __init__(self, base_url: str, *, auth: str | httpx.Auth | None = None,
                 timeout: TimeoutTypes = None, retry: Retry | int | None = DEFAULT_RETRY,
                 headers: Mapping[str, str] | None = None,
                 transport: httpx.BaseTransport | None = None, verify: bool | str = True,
                 limits: httpx.Limits | None = None) -> None:
        super().__init__(base_url, auth=auth, timeout=timeout, retry=retry, headers=headers)
        self._http = httpx.Client(base_url=self.base_url, auth=self._auth, timeout=self._timeout,
                                  headers=self._headers, transport=transport, verify=verify,
                                  limits=limits or httpx.Limits(max_keepalive_connections=10))
        self._sleep: Callable[[float], None] = time.sleep
        self.referrals = Referrals(self)

    # ---- I/O: the only part that differs from AsyncClient

    def _send(self, request: Request) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(request.method, request.url,
                                              **self._http_kwargs(request))
            except httpx.TransportError as exc:
                delay = self.retry.delay_for_error(attempt, exc, safe=request.retry_safe)
                if delay is None:
                    raise core.transport_error(exc, request) from exc
            else:
                if response.status_code < 400:
                    return response
                delay = self.retry.delay_for_status(attempt, request.method, response.status_code,
                                                    response.headers, safe=request.retry_safe)
                if delay is None:
                    raise core.error_from_response(response, request)
            attempt += 1
            self._sleep(delay)

    def _run(self, call: Call[T]) -> T:
        return call.decode(self._send(call.request))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- the FHIR interactions

    def create(self, resource: R, *, if_none_exist: Query | None = None) -> R:
        """POST a new resource; with ``if_none_exist`` (a dict, pairs or query string) the
        server returns the one existing match instead of creating a second."""
        return self._run(core.create(resource, if_none_exist=if_none_exist))

    def read(self, resource_type: type[R], rid: str) -> R:
        """GET ``Type/id``; raises NotFound (unknown) or Gone (deleted)."""
        return self._run(core.read(resource_type, rid))

    def vread(self, resource_type: type[R], rid: str, vid: str | int) -> R:
        """GET one version, ``Type/id/_history/vid``."""
        return self._run(core.vread(resource_type, rid, vid))

    def update(self, resource: R, *, if_match: bool | int | str | None = None,
               condition: Query | None = None) -> R:
        """PUT the resource. ``if_match=True`` sends its ``meta.versionId`` (a stale version
        raises PreconditionFailed); ``condition`` makes it a conditional update."""
        return self._run(core.update(resource, if_match=if_match, condition=condition))

    @overload
    def patch(self, target: R, operations: Operations, /, *,
              if_match: bool | int | str | None = None) -> R: ...

    @overload
    def patch(self, target: type[R], rid: str, operations: Operations, /, *,
              if_match: int | str | None = None) -> R: ...

    def patch(self, target: Any, *args: Any, if_match: bool | int | str | None = None) -> Any:
        """JSON Patch: ``patch(resource, ops)`` or ``patch(Type, id, ops)``."""
        return self._run(_patch_call(target, args, if_match))

    def delete(self, target: type[Resource] | Resource | str, rid: str | None = None, *,
               if_match: bool | int | str | None = None) -> None:
        """DELETE: ``delete(resource)``, ``delete(Type, id)`` or ``delete("Type/id")``."""
        self._run(_delete_call(target, rid, if_match))

    def history(self, target: type[R] | R, rid: str | None = None, *, since: Any = None,
                count: int | None = None) -> list[R]:
        """Versions of one resource (or of a type), newest first; follows ``next`` links."""
        call, rtype = _history_call(target, rid, since, count)
        out: list[Any] = []
        bundle = self._run(call)
        while True:
            out += core.history_resources(bundle, rtype)
            url = core.next_link(bundle)
            if url is None:
                return out
            bundle = self._run(core.get_json(url))

    @overload
    def search(self, resource_type: type[R]) -> SearchSet[R]: ...

    @overload
    def search(self, resource_type: str | None = None) -> SearchSet[Resource]: ...

    def search(self, resource_type: Any = None) -> Any:
        """An immutable search builder; a type (or its name), or None for all types."""
        cls, name = _search_class(resource_type)
        return SearchSet(self, cls, _Query(name))

    def transaction(self) -> Transaction:
        """An atomic transaction, sent when the ``with`` block ends (or on ``commit()``)."""
        return Transaction(self, "transaction")

    def batch(self) -> Transaction:
        """A batch: like a transaction, but each entry succeeds or fails on its own."""
        return Transaction(self, "batch")

    def capabilities(self) -> CapabilityStatement:
        """The server's CapabilityStatement (``GET metadata``)."""
        return self._run(core.Call(Request("GET", "metadata"),
                                   core.expect_resource(CapabilityStatement)))

    def operation(self, url: str, parameters: Mapping[str, Any] | Resource | None = None, *,
                  method: str = "POST") -> Resource:
        """Call a FHIR operation, e.g. ``operation("Patient/1/$everything", method="GET")``."""
        return self._run(core.operation(url, parameters, method=method))

    def request(self, method: str, url: str, *, params: Sequence[tuple[str, str]] = (),
                json: Any = None, content: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> Any:
        """A raw FHIR request (``url`` relative to the base); the answer's JSON, or None when
        empty. Errors raise as usual; GET/PUT/DELETE are retried, POST/PATCH are not."""
        return self._run(_raw_call(method, url, params, json, content, headers))

    # ---- IOP workflows

    def discharge(self, episode: Resource | str, *, follow_up: Cadence | None = None,
                  count: int | None = None, date: Any = None) -> Bundle:
        """``EpisodeOfCare/{id}/$discharge``: finish the episode, schedule ``count``
        follow-ups at ``follow_up`` cadence; returns the discharge summary document."""
        return self._run(discharge_call(episode, follow_up=follow_up, count=count, date=date))

    def medication_handoff(self, patient: Resource | str, *,
                           recipient: Resource | Reference | str, note: str | None = None) -> Bundle:
        """``Patient/{id}/$medication-handoff``: send the medication list to ``recipient``;
        returns the message Bundle."""
        return self._run(medication_handoff_call(patient, recipient=recipient, note=note))


class AsyncClient(_ClientBase):
    """The async twin of :class:`Client`: the same methods, awaited (``async with``,
    ``async for`` over searches)."""

    def __init__(self, base_url: str, *, auth: str | httpx.Auth | None = None,
                 timeout: TimeoutTypes = None, retry: Retry | int | None = DEFAULT_RETRY,
                 headers: Mapping[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, verify: bool | str = True,
                 limits: httpx.Limits | None = None) -> None:
        super().__init__(base_url, auth=auth, timeout=timeout, retry=retry, headers=headers)
        self._http = httpx.AsyncClient(base_url=self.base_url, auth=self._auth,
                                       timeout=self._timeout, headers=self._headers,
                                       transport=transport, verify=verify,
                                       limits=limits or httpx.Limits(max_keepalive_connections=10))
        self._sleep: Callable[[float], Any] = asyncio.sleep
        self.referrals = AsyncReferrals(self)

    async def _send(self, request: Request) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(request.method, request.url,
                                                    **self._http_kwargs(request))
            except httpx.TransportError as exc:
                delay = self.retry.delay_for_error(attempt, exc, safe=request.retry_safe)
                if delay is None:
                    raise core.transport_error(exc, request) from exc
            else:
                if response.status_code < 400:
                    return response
                delay = self.retry.delay_for_status(attempt, request.method, response.status_code,
                                                    response.headers, safe=request.retry_safe)
                if delay is None:
                    raise core.error_from_response(response, request)
            attempt += 1
            await self._sleep(delay)

    async def _run(self, call: Call[T]) -> T:
        return call.decode(await self._send(call.request))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def create(self, resource: R, *, if_none_exist: Query | None = None) -> R:
        return await self._run(core.create(resource, if_none_exist=if_none_exist))

    async def read(self, resource_type: type[R], rid: str) -> R:
        return await self._run(core.read(resource_type, rid))

    async def vread(self, resource_type: type[R], rid: str, vid: str | int) -> R:
        return await self._run(core.vread(resource_type, rid, vid))

    async def update(self, resource: R, *, if_match: bool | int | str | None = None,
                     condition: Query | None = None) -> R:
        return await self._run(core.update(resource, if_match=if_match, condition=condition))

    @overload
    async def patch(self, target: R, operations: Operations, /, *,
                    if_match: bool | int | str | None = None) -> R: ...

    @overload
    async def patch(self, target: type[R], rid: str, operations: Operations, /, *,
                    if_match: int | str | None = None) -> R: ...

    async def patch(self, target: Any, *args: Any,
                    if_match: bool | int | str | None = None) -> Any:
        return await self._run(_patch_call(target, args, if_match))

    async def delete(self, target: type[Resource] | Resource | str, rid: str | None = None, *,
                     if_match: bool | int | str | None = None) -> None:
        await self._run(_delete_call(target, rid, if_match))

    async def history(self, target: type[R] | R, rid: str | None = None, *, since: Any = None,
                      count: int | None = None) -> list[R]:
        call, rtype = _history_call(target, rid, since, count)
        out: list[Any] = []
        bundle = await self._run(call)
        while True:
            out += core.history_resources(bundle, rtype)
            url = core.next_link(bundle)
            if url is None:
                return out
            bundle = await self._run(core.get_json(url))

    @overload
    def search(self, resource_type: type[R]) -> AsyncSearchSet[R]: ...

    @overload
    def search(self, resource_type: str | None = None) -> AsyncSearchSet[Resource]: ...

    def search(self, resource_type: Any = None) -> Any:
        cls, name = _search_class(resource_type)
        return AsyncSearchSet(self, cls, _Query(name))

    def transaction(self) -> AsyncTransaction:
        return AsyncTransaction(self, "transaction")

    def batch(self) -> AsyncTransaction:
        return AsyncTransaction(self, "batch")

    async def capabilities(self) -> CapabilityStatement:
        return await self._run(core.Call(Request("GET", "metadata"),
                                         core.expect_resource(CapabilityStatement)))

    async def operation(self, url: str, parameters: Mapping[str, Any] | Resource | None = None,
                        *, method: str = "POST") -> Resource:
        return await self._run(core.operation(url, parameters, method=method))

    async def request(self, method: str, url: str, *, params: Sequence[tuple[str, str]] = (),
                      json: Any = None, content: bytes | None = None,
                      headers: Mapping[str, str] | None = None) -> Any:
        return await self._run(_raw_call(method, url, params, json, content, headers))

    async def discharge(self, episode: Resource | str, *, follow_up: Cadence | None = None,
                        count: int | None = None, date: Any = None) -> Bundle:
        return await self._run(discharge_call(episode, follow_up=follow_up, count=count,
                                              date=date))

    async def medication_handoff(self, patient: Resource | str, *,
                                 recipient: Resource | Reference | str,
                                 note: str | None = None) -> Bundle:
        return await self._run(medication_handoff_call(patient, recipient=recipient, note=note))


# ---------------------------------------------------------------- referrals

Target = Organization | Reference | str | None


def _task_id(task: Task | Reference | str) -> str:
    if isinstance(task, Reference):
        task = str(task.reference)
    if isinstance(task, str):
        return task.split("/")[-1]
    return core.resource_id(task)


class Referrals:
    """``client.referrals``: the closed referral loop (ServiceRequest + Task)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, service_request: ServiceRequest, to: Target = None, *,
               requester: Resource | Reference | str | None = None,
               description: str | None = None) -> Referral:
        """Store the ServiceRequest and a Task ``requested`` for ``to`` in one transaction."""
        tx = self._client.transaction()
        sr, task = add_referral(tx, service_request, to, requester=requester,
                                description=description)
        tx.commit()
        return Referral(sr.resource if sr else service_request, task.resource)

    def update_status(self, task: Task | Reference | str, status: str,
                      reason: str | None = None) -> Task:
        """Move the Task to ``status`` (checked against the referral state machine; a reason
        is required for rejected/cancelled/on-hold/failed). Given a Task model, its version is
        sent as If-Match, so a concurrent change raises PreconditionFailed."""
        current = task if isinstance(task, Task) else self._client.read(Task, _task_id(task))
        return self._client.update(task_with_status(current, status, reason), if_match=True)

    def for_owner(self, owner: Organization | Reference | str) -> SearchSet[Task]:
        """The referral Tasks owned by an organization (a partner's work list)."""
        return self._client.search(Task).where(owner=core.reference_to(owner), code="fulfill")


class AsyncReferrals:
    """``client.referrals`` of :class:`AsyncClient`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, service_request: ServiceRequest, to: Target = None, *,
                     requester: Resource | Reference | str | None = None,
                     description: str | None = None) -> Referral:
        tx = self._client.transaction()
        sr, task = add_referral(tx, service_request, to, requester=requester,
                                description=description)
        await tx.commit()
        return Referral(sr.resource if sr else service_request, task.resource)

    async def update_status(self, task: Task | Reference | str, status: str,
                            reason: str | None = None) -> Task:
        current = task if isinstance(task, Task) else await self._client.read(Task, _task_id(task))
        return await self._client.update(task_with_status(current, status, reason),
                                         if_match=True)

    def for_owner(self, owner: Organization | Reference | str) -> AsyncSearchSet[Task]:
        return self._client.search(Task).where(owner=core.reference_to(owner), code="fulfill")


