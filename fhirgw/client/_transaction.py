"""Transactions and batches: collect entries, send one Bundle, map the answer back.

::

    with client.transaction() as tx:
        p = tx.create(patient)                       # an Entry; p.reference is urn:uuid:…
        tx.create(EpisodeOfCare(status="active", patient=p.reference))
    tx.result[p]          # the Patient the server created (also p.resource)

A ``transaction`` is atomic: it succeeds whole, or raises the error of the failing entry and
stores nothing. A ``batch`` runs each entry on its own: ``result[entry]`` raises that entry's
error (``result.errors`` lists them), the others succeed. Leaving the ``with`` block with an
exception sends nothing.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Generic, Literal, Protocol, TypeVar, cast

from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.resource import Resource

from ._core import (
    Call,
    Query,
    R,
    decode_resource,
    encode_query,
    error_from_outcome,
    new_urn,
    parse_status,
    post_bundle,
    resource_id,
    to_json,
    type_name,
    version_tag,
)
from ._exceptions import DecodeError, ResponseError

__all__ = ["Entry", "TransactionResult", "Transaction", "AsyncTransaction"]

T = TypeVar("T")
Kind = Literal["transaction", "batch"]


class Entry(Generic[R]):
    """One entry of a transaction or batch. Before the commit it gives ``reference`` (to
    point other entries at it); after, ``resource``, ``status``, ``location`` and ``etag``."""

    def __init__(self, index: int, method: str, url: str, *, resource: dict[str, Any] | None = None,
                 full_url: str | None = None, if_none_exist: str | None = None,
                 if_match: str | None = None) -> None:
        self.index = index
        self.method = method
        self.url = url
        self.full_url = full_url
        self._json = resource
        self._if_none_exist = if_none_exist
        self._if_match = if_match
        self.status: int | None = None
        self.location: str | None = None
        self.etag: str | None = None
        self.error: ResponseError | None = None
        self._resource: R | None = None

    @property
    def reference(self) -> Reference:
        """A Reference to this entry's resource: its ``urn:uuid`` before the server assigns
        an id (the server rewrites it), ``Type/id`` afterwards or for updates."""
        if self._resource is not None and self._resource.id:
            return Reference(reference=f"{type_name(self._resource)}/{self._resource.id}")
        if self.full_url:
            return Reference(reference=self.full_url)
        return Reference(reference=self.url.split("?")[0])

    @property
    def resource(self) -> R:
        """The resource the server returned for this entry (after the commit)."""
        if self.error is not None:
            raise self.error
        if self._resource is None:
            if self.status is None:
                raise LookupError(f"entry {self.index} ({self.method} {self.url}) has not been "
                                  "sent yet: leave the with-block or call commit() first")
            raise LookupError(f"entry {self.index} ({self.method} {self.url}) returned no resource")
        return self._resource

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status < 400

    def to_json(self) -> dict[str, Any]:
        request: dict[str, Any] = {"method": self.method, "url": self.url}
        if self._if_none_exist:
            request["ifNoneExist"] = self._if_none_exist
        if self._if_match:
            request["ifMatch"] = self._if_match
        entry: dict[str, Any] = {}
        if self.full_url:
            entry["fullUrl"] = self.full_url
        if self._json is not None:
            entry["resource"] = self._json
        entry["request"] = request
        return entry

    def _apply(self, data: Mapping[str, Any], kind: Kind) -> None:
        response = data.get("response") or {}
        self.status = parse_status(str(response.get("status", "")))
        self.location = response.get("location")
        self.etag = response.get("etag")
        if isinstance(data.get("resource"), dict):
            self._resource = cast(R, decode_resource(data["resource"]))
        if self.status >= 400:
            outcome = response.get("outcome")
            model = OperationOutcome.model_validate(outcome) if isinstance(outcome, dict) else None
            self.error = error_from_outcome(self.status, model, method=self.method,
                                            url=f"{kind} entry {self.index}: {self.url}")

    def __repr__(self) -> str:
        state = f" -> {self.status}" if self.status is not None else ""
        return f"<Entry {self.index} {self.method} {self.url}{state}>"


class TransactionResult:
    """The answer to a transaction or batch: ``result[entry]`` is that entry's resource."""

    def __init__(self, entries: list[Entry[Any]], bundle: dict[str, Any]) -> None:
        self.entries = entries
        self.bundle = bundle

    def __getitem__(self, entry: Entry[R]) -> R:
        if entry not in self.entries:
            raise KeyError(entry)
        return entry.resource

    def __iter__(self) -> Iterator[Entry[Any]]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def resources(self) -> list[Resource]:
        """The resources returned, in entry order (failed entries and deletes left out)."""
        return [e._resource for e in self.entries if e._resource is not None and e.error is None]

    @property
    def errors(self) -> dict[Entry[Any], ResponseError]:
        """Failed entries of a batch and their errors (a transaction either has none or raised)."""
        return {e: e.error for e in self.entries if e.error is not None}


class _Builder:
    """Collects entries; shared by the sync and async transaction."""

    def __init__(self, kind: Kind = "transaction") -> None:
        self.kind: Kind = kind
        self.entries: list[Entry[Any]] = []
        self.result: TransactionResult | None = None

    def _add(self, entry: Entry[R]) -> Entry[R]:
        if self.result is not None:
            raise RuntimeError(f"this {self.kind} was already sent")
        self.entries.append(entry)
        return entry

    def create(self, resource: R, *, if_none_exist: Query | None = None) -> Entry[R]:
        """POST the resource; others point at it with ``entry.reference`` (a urn:uuid)."""
        body = to_json(resource)
        body.pop("id", None)
        return self._add(Entry(len(self.entries), "POST", type_name(resource), resource=body,
                               full_url=new_urn(),
                               if_none_exist=None if if_none_exist is None
                               else encode_query(if_none_exist)))

    def update(self, resource: R, *, if_match: bool | int | str | None = None,
               condition: Query | None = None) -> Entry[R]:
        """PUT the resource at ``Type/id`` (or at ``Type?condition``)."""
        url = (f"{type_name(resource)}?{encode_query(condition)}" if condition is not None
               else f"{type_name(resource)}/{resource_id(resource, 'the')}")
        tag = None if if_match is None or if_match is False else version_tag(if_match, resource)
        return self._add(Entry(len(self.entries), "PUT", url, resource=to_json(resource),
                               if_match=tag))

    def delete(self, target: type[Resource] | Resource | str, rid: str | None = None) -> Entry[Resource]:
        """DELETE ``Type/id``: a resource, or a type and an id."""
        if rid is None and isinstance(target, Resource):
            rid = resource_id(target)
        if rid is None:
            raise ValueError("delete needs a resource with an id, or a type and an id")
        return self._add(Entry(len(self.entries), "DELETE", f"{type_name(target)}/{rid}"))

    def read(self, resource_type: type[R], rid: str) -> Entry[R]:
        """GET ``Type/id`` inside the Bundle (after the writes, in a transaction)."""
        return self._add(Entry(len(self.entries), "GET", f"{type_name(resource_type)}/{rid}"))

    def to_bundle(self) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": self.kind,
                "entry": [e.to_json() for e in self.entries]}

    def _call(self) -> Call[Any]:
        return post_bundle(self.to_bundle())

    def _finish(self, bundle: Any) -> TransactionResult:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise DecodeError(f"the {self.kind} answer is not a Bundle")
        answers = bundle.get("entry") or []
        if len(answers) != len(self.entries):
            raise DecodeError(f"the {self.kind} answer has {len(answers)} entries for "
                              f"{len(self.entries)} sent")
        for entry, answer in zip(self.entries, answers):
            entry._apply(answer, self.kind)
        self.result = TransactionResult(self.entries, bundle)
        return self.result

    def __len__(self) -> int:
        return len(self.entries)


class _SyncRunner(Protocol):
    def _run(self, call: Call[T]) -> T: ...


class _AsyncRunner(Protocol):
    async def _run(self, call: Call[T]) -> T: ...


class Transaction(_Builder):
    """A transaction or batch of :class:`~fhirgw.client.Client`; sent on leaving ``with``."""

    def __init__(self, client: _SyncRunner, kind: Kind = "transaction") -> None:
        super().__init__(kind)
        self._client = client

    def commit(self) -> TransactionResult:
        """Send the Bundle (once); raises the failing entry's error for a transaction."""
        if self.result is not None:
            return self.result
        if not self.entries:
            return self._finish({"resourceType": "Bundle", "entry": []})
        return self._finish(self._client._run(self._call()))

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.commit()


class AsyncTransaction(_Builder):
    """A transaction or batch of :class:`~fhirgw.client.AsyncClient`; sent on leaving
    ``async with``."""

    def __init__(self, client: _AsyncRunner, kind: Kind = "transaction") -> None:
        super().__init__(kind)
        self._client = client

    async def commit(self) -> TransactionResult:
        if self.result is not None:
            return self.result
        if not self.entries:
            return self._finish({"resourceType": "Bundle", "entry": []})
        return self._finish(await self._client._run(self._call()))

    async def __aenter__(self) -> AsyncTransaction:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            await self.commit()
