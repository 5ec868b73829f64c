"""Search as an immutable builder (fhirpy's SearchSet, typed).

Every method returns a new builder, so a query can be kept and refined::

    booked = client.search(Appointment).where(status="booked")
    this_week = booked.where(date__ge=monday, date__lt=next_monday)   # booked is unchanged

Nothing is sent until results are asked for: iterating (which follows ``Bundle.link[next]``
lazily, page by page), ``.all()``, ``.first()`` or ``.count()``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, Self, TypeVar, cast
from urllib.parse import parse_qsl

from fhir.resources.R4B.resource import Resource

from ._core import Call, R, decode_resource, get_json, next_link, type_name
from ._query import search_params

if TYPE_CHECKING:  # pragma: no cover
    from fhir.resources.R4B.operationoutcome import OperationOutcome

__all__ = ["SearchSet", "AsyncSearchSet", "Page"]

T = TypeVar("T")


class _SyncRunner(Protocol):
    def _run(self, call: Call[T]) -> T: ...


class _AsyncRunner(Protocol):
    async def _run(self, call: Call[T]) -> T: ...


@dataclass(frozen=True)
class _Query:
    resource_type: str | None
    params: tuple[tuple[str, str], ...] = ()
    sort: tuple[str, ...] = ()
    page_size: int | None = None
    limit: int | None = None

    def pairs(self) -> list[tuple[str, str]]:
        pairs = list(self.params)
        if self.sort:
            pairs.append(("_sort", ",".join(self.sort)))
        count = self.page_size
        if count is None and self.limit is not None:
            count = max(self.limit, 1)
        if count is not None:
            pairs.append(("_count", str(count)))
        return pairs

    @property
    def path(self) -> str:
        return self.resource_type or ""


@dataclass
class Page(Generic[R]):
    """One searchset Bundle: its matches (typed), included resources and the raw JSON."""

    resources: list[R]
    included: list[Resource] = field(default_factory=list)
    total: int | None = None
    next_url: str | None = None
    outcome: OperationOutcome | None = None
    bundle: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_bundle(cls, bundle: Mapping[str, Any]) -> Page[R]:
        matches: list[R] = []
        included: list[Resource] = []
        outcome: Resource | None = None
        for entry in bundle.get("entry") or ():
            data = entry.get("resource")
            if not isinstance(data, dict):
                continue
            mode = (entry.get("search") or {}).get("mode", "match")
            if mode == "outcome" or (mode != "match" and data.get("resourceType") == "OperationOutcome"):
                outcome = decode_resource(data)
            elif mode == "include":
                included.append(decode_resource(data))
            else:
                matches.append(cast(R, decode_resource(data)))
        total = bundle.get("total")
        return cls(matches, included, total if isinstance(total, int) else None,
                   next_link(bundle), cast("OperationOutcome | None", outcome), dict(bundle))


def _raw_matches(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry") or ()
            if isinstance(e.get("resource"), dict)
            and (e.get("search") or {}).get("mode", "match") == "match"]


class _SearchBuilder(Generic[R]):
    """The immutable part shared by SearchSet and AsyncSearchSet."""

    def __init__(self, client: Any, resource_class: type[R] | None, query: _Query) -> None:
        self._client = client
        self._class = resource_class
        self._query = query

    def _replace(self, **changes: Any) -> Self:
        return type(self)(self._client, self._class, dataclasses.replace(self._query, **changes))

    # ---- refining (each returns a new builder)

    def where(self, **params: Any) -> Self:
        """Add search parameters (encoded by :func:`~fhirgw.client.search_params`).

        Calling ``where`` again with a key already present adds it again (AND); a list value
        is OR.
        """
        return self._replace(params=self._query.params + tuple(search_params(**params)))

    def params(self, query: str | Sequence[tuple[str, str]]) -> Self:
        """Add raw parameters: a query string (``"name=Ana&birthdate=ge1990"``) or pairs."""
        pairs = parse_qsl(query.lstrip("?"), keep_blank_values=True) if isinstance(query, str) \
            else [(str(k), str(v)) for k, v in query]
        return self._replace(params=self._query.params + tuple(pairs))

    def include(self, source: type[Resource] | str, param: str,
                target: type[Resource] | str | None = None, *, iterate: bool = False) -> Self:
        """``_include=Source:param[:Target]`` (``iterate=True`` for ``_include:iterate``)."""
        return self._inclusion("_include", source, param, target, iterate)

    def revinclude(self, source: type[Resource] | str, param: str,
                   target: type[Resource] | str | None = None, *, iterate: bool = False) -> Self:
        """``_revinclude=Source:param[:Target]``: resources that point at the matches."""
        return self._inclusion("_revinclude", source, param, target, iterate)

    def _inclusion(self, name: str, source: type[Resource] | str, param: str,
                   target: type[Resource] | str | None, iterate: bool) -> Self:
        value = f"{type_name(source)}:{param}" + (f":{type_name(target)}" if target else "")
        key = name + (":iterate" if iterate else "")
        return self._replace(params=self._query.params + ((key, value),))

    def sort(self, *keys: str) -> Self:
        """``_sort``: ``"-date"`` sorts descending; several keys in order of priority.
        Replaces an earlier sort."""
        return self._replace(sort=tuple(keys))

    def page_size(self, n: int) -> Self:
        """``_count``: how many matches the server puts on one page."""
        if n < 0:
            raise ValueError("page_size must be >= 0")
        return self._replace(page_size=n)

    def limit(self, n: int) -> Self:
        """Stop after ``n`` matches in all (pages are still followed lazily)."""
        if n < 0:
            raise ValueError("limit must be >= 0")
        return self._replace(limit=n)

    # ---- inspecting

    @property
    def resource_type(self) -> str | None:
        return self._query.resource_type

    def query_pairs(self) -> list[tuple[str, str]]:
        """The (name, value) pairs of the first request."""
        return self._query.pairs()

    @property
    def url(self) -> str:
        """The first request's URL relative to the base (``Appointment?status=booked&…``)."""
        import httpx

        qs = str(httpx.QueryParams(tuple(self.query_pairs())))
        return self._query.path + (f"?{qs}" if qs else "")

    def __repr__(self) -> str:
        extra = f" limit={self._query.limit}" if self._query.limit is not None else ""
        return f"<{type(self).__name__} {self.url}{extra}>"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, _SearchBuilder) and other._client is self._client
                and other._query == self._query)

    def __hash__(self) -> int:
        return hash(self._query)

    # ---- calls (pure)

    def _first_call(self) -> Call[Any]:
        return get_json(self._query.path, self._query.pairs())

    def _count_call(self) -> Call[Any]:
        pairs = [(k, v) for k, v in self._query.params if not k.startswith(("_include", "_revinclude"))]
        return get_json(self._query.path, pairs + [("_summary", "count")])

    def _first_one(self) -> Self:
        return self._replace(page_size=1, limit=1)

    @staticmethod
    def _total(bundle: Any) -> int:
        total = bundle.get("total") if isinstance(bundle, dict) else None
        if not isinstance(total, int):
            raise ValueError("the server did not report a total for _summary=count")
        return total


class SearchSet(_SearchBuilder[R]):
    """A search for :class:`~fhirgw.client.Client`; iterate it, or ``.all()`` /
    ``.first()`` / ``.count()``."""

    _client: _SyncRunner

    def pages(self) -> Iterator[Page[R]]:
        """Each page in turn, following ``next`` links (the limit is not applied here)."""
        bundle = self._client._run(self._first_call())
        while True:
            page: Page[R] = Page.from_bundle(bundle)
            yield page
            if page.next_url is None:
                return
            bundle = self._client._run(get_json(page.next_url))

    def __iter__(self) -> Iterator[R]:
        limit = self._query.limit
        if limit == 0:
            return
        seen = 0
        for page in self.pages():
            for resource in page.resources:
                yield resource
                seen += 1
                if limit is not None and seen >= limit:
                    return

    def iter_json(self) -> Iterator[dict[str, Any]]:
        """The matches as the server's JSON (no model), following ``next`` links."""
        limit, seen = self._query.limit, 0
        bundle = self._client._run(self._first_call())
        while True:
            for data in _raw_matches(bundle):
                if limit is not None and seen >= limit:
                    return
                yield data
                seen += 1
            url = next_link(bundle)
            if url is None:
                return
            bundle = self._client._run(get_json(url))

    def all(self) -> list[R]:
        """Every match (up to the limit), as a list."""
        return list(self)

    def first(self) -> R | None:
        """The first match, or None; asks the server for a page of one."""
        return next(iter(self._first_one()), None)

    def count(self) -> int:
        """How many resources match (``_summary=count``; no resources are fetched)."""
        return self._total(self._client._run(self._count_call()))


class AsyncSearchSet(_SearchBuilder[R]):
    """A search for :class:`~fhirgw.client.AsyncClient`; ``async for`` it, or await
    ``.all()`` / ``.first()`` / ``.count()``."""

    _client: _AsyncRunner

    async def pages(self) -> AsyncGenerator[Page[R], None]:
        """Each page in turn, following ``next`` links (the limit is not applied here)."""
        bundle = await self._client._run(self._first_call())
        while True:
            page: Page[R] = Page.from_bundle(bundle)
            yield page
            if page.next_url is None:
                return
            bundle = await self._client._run(get_json(page.next_url))

    async def __aiter__(self) -> AsyncGenerator[R, None]:
        limit = self._query.limit
        if limit == 0:
            return
        seen = 0
        async with aclosing(self.pages()) as pages:
            async for page in pages:
                for resource in page.resources:
                    yield resource
                    seen += 1
                    if limit is not None and seen >= limit:
                        return

    async def iter_json(self) -> AsyncGenerator[dict[str, Any], None]:
        """The matches as the server's JSON (no model), following ``next`` links."""
        limit, seen = self._query.limit, 0
        bundle = await self._client._run(self._first_call())
        while True:
            for data in _raw_matches(bundle):
                if limit is not None and seen >= limit:
                    return
                yield data
                seen += 1
            url = next_link(bundle)
            if url is None:
                return
            bundle = await self._client._run(get_json(url))

    async def all(self) -> list[R]:
        return [r async for r in self]

    async def first(self) -> R | None:
        async with aclosing(self._first_one().__aiter__()) as it:
            async for resource in it:
                return resource
        return None

    async def count(self) -> int:
        return self._total(await self._client._run(self._count_call()))
