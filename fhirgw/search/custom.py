"""SearchParameter resources stored in the server: checked on write, live at once.

* ``check(body)`` refuses a SearchParameter the engine cannot use (bad type, an expression
  that does not compile) before anything is stored.
* ``CustomParameters.on_commit`` adds (or removes, on delete or ``status=retired``) the
  parameter in this process as soon as the write commits, and starts the reindex of its
  base types, so resources written before the parameter existed are found too. Until that
  reindex is done, searches on the parameter carry a warning saying results may be partial.
* Other processes on the same database see the change within ``ttl`` seconds
  (``fhirgw.store.watch``).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from ..model.errors import BadRequest, FhirError, Issue
from ..model.resources import R4_TYPES, SUPPORTED, loads
from ..store.tables import DERIVED_PARAM_SOURCES, PARAM_PAIR_SOURCES, WHOLE_PARAM_SOURCES
from ..store.watch import StoredResourceWatcher
from .registry import SearchParam, SearchRegistry, _derivations
from .fhirpath import ancestors, check_expression, compile_expression

log = logging.getLogger("fhirgw.search")


def check(body: dict) -> None:
    """Raise BadRequest (with an expression) if the engine could not use this parameter."""
    try:
        sp = SearchParam.from_json(body, custom=True)
    except FhirError:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed definition
        raise BadRequest(f"SearchParameter is not usable: {exc}",
                         expression="SearchParameter") from None
    for b in sp.base:
        if b not in SUPPORTED and b not in ("Resource", "DomainResource"):
            raise BadRequest(f"SearchParameter.base {b!r} is not a resource type this server "
                             "serves", expression="SearchParameter.base")
        if sp.expression and b in SUPPORTED:
            try:
                check_expression(sp.expression, b)
                compile_expression(sp.expression, b)
            except Exception as exc:  # noqa: BLE001 - fhirpathpy raises many kinds
                raise BadRequest(f"SearchParameter.expression does not compile for {b}: {exc}",
                                 expression="SearchParameter.expression") from None


def _active(body: dict) -> bool:
    return body.get("status") != "retired"


def indexed_pairs(conn) -> set[tuple[str, str]]:
    """Every (type, parameter code) whose rows the gateway may have written on the database
    of ``conn``: the standard parameters of every R4 type, the SearchParameters stored there,
    and the special codes (``<code>:identifier``, ``<code>:of-type``, ``_text``). What names
    the index tables' keys back (``store.tables.PARAM_PAIR_SOURCES``)."""
    registry = _stored_registry(conn)
    pairs = set()
    for rtype in R4_TYPES:
        for code in registry.params_for(rtype):
            pairs.update({(rtype, code), (rtype, f"{code}:identifier"),
                          (rtype, f"{code}:of-type")})
        pairs.add((rtype, "_text"))
    return pairs


def derived_params(conn) -> list[tuple[str, str, str, str, str | None, tuple[str, ...]]]:
    """(search type, resource type, code, base code, column, values) of every derived
    parameter (``SearchRegistry.derived``, without the wholes of migration 0010; one per
    part of a union) with the SearchParameters stored on the database of ``conn``: what
    migration 0008 removes the rows of, and its downgrade writes again
    (``store.tables.DERIVED_PARAM_SOURCES``)."""
    registry = _stored_registry(conn)
    out = []
    for rtype in sorted(SUPPORTED):
        params = registry.params_for(rtype)
        for code, d in _derivations(params, rtype, wholes=False).items():
            for term in d.terms:   # one per part of a union
                out.append((params[code].type, rtype, code, term.base, term.column,
                            term.values))
    return out


def whole_params(conn) -> list[tuple[str, str, tuple[str, ...]]]:
    """(resource type, code, the codes of its parts) of every string parameter that keeps
    only the rows its parts do not hold (``Derived.leaves_out``: ``Patient.name`` and
    ``family``, ``given``) with the SearchParameters stored on the database of ``conn``:
    what migration 0010 removes the parts' rows from, and its downgrade copies back
    (``store.tables.WHOLE_PARAM_SOURCES``)."""
    registry = _stored_registry(conn)
    out = []
    for rtype in sorted(SUPPORTED):
        for code in registry.params_for(rtype):
            d = registry.derived(rtype, code)
            if d is not None and d.leaves_out:
                out.append((rtype, code, tuple(t.base for t in d.more)))
    return out


def _stored_registry(conn) -> SearchRegistry:
    """The official parameters and the SearchParameters stored on ``conn``'s database."""
    registry = SearchRegistry()
    for (body,) in conn.exec_driver_sql(
            "SELECT body FROM resource WHERE res_type = 'SearchParameter' AND NOT deleted "
            "AND body IS NOT NULL").all():
        try:
            registry.add(loads(bytes(body)))
        except Exception:  # noqa: BLE001 - one that does not load any more has no rows to name
            continue
    return registry


PARAM_PAIR_SOURCES.append(indexed_pairs)
DERIVED_PARAM_SOURCES.append(derived_params)
WHOLE_PARAM_SOURCES.append(whole_params)


class CustomParameters:
    def __init__(self, registry: SearchRegistry, engine, ttl: float = 2.0):
        self.registry = registry
        self.watcher = StoredResourceWatcher(engine, ["SearchParameter"], self._reload, ttl)
        #: url -> base types, while their reindex is running
        self.pending: dict[str, tuple[str, ...]] = {}
        #: called with the base types to reindex when a parameter is added
        self.start_reindex: Callable[[str, list[str]], None] | None = None
        #: the registry's url of each stored parameter -> the body it holds for it: a reload
        #: adds only what changed
        self._applied: dict[str, dict] = {}

    def load(self) -> int:
        """Make the registry hold exactly the official parameters plus the stored ones."""
        return self.watcher.load()

    def maybe_refresh(self) -> None:
        self.watcher.maybe_refresh()

    def _reload(self, bodies: list[dict]) -> None:
        wanted = {(sp.get("url") or sp.get("id")): sp for sp in bodies if _active(sp)}
        for p in list(self.registry):
            if p.custom and p.url not in wanted:
                self.registry.remove(p.url)
                self._applied.pop(p.url, None)
        for url, sp in wanted.items():
            if self._applied.get(url) == sp and self.registry.by_url(url) is not None:
                continue   # unchanged since it was added (here, or by the last reload)
            try:
                self._applied[self.registry.add(sp).url] = sp
            except FhirError as exc:  # stored before a rule tightened: skip, say so
                log.warning("stored SearchParameter %s not loaded: %s", sp.get("url"), exc)

    # ------------------------------------------------------------ writes

    def on_commit(self, written) -> None:
        for stored in written:
            if stored.res_type != "SearchParameter":
                continue
            if stored.deleted or not _active(stored.resource()):
                # the deleted version has no body to name its url: reload what is stored
                self.load()
                continue
            body = stored.resource()
            sp = self.registry.add(body)
            self._applied[sp.url] = body
            # the types it can apply to: those with one of its bases among their ancestors
            # (asking every served type rebuilt ~140 parameter tables per stored parameter)
            bases = set(sp.base)
            types = sorted(t for t in SUPPORTED if bases.intersection(ancestors(t))
                           and self.registry.get(t, sp.code) is sp)
            if types and self.start_reindex is not None:
                self.pending[sp.url] = tuple(types)
                self.start_reindex(sp.url, types)

    def reindexed(self, url: str) -> None:
        self.pending.pop(url, None)

    def warnings_for(self, query) -> list[Issue]:
        """A warning for each searched parameter whose reindex is still running, and for
        each that a running reindex writes rows for: an official parameter derived from
        another (``SearchRegistry.derived``) whose pairing a custom one ended has rows of
        its own again, which the reindex of its type writes."""
        if not self.pending:
            return []
        reindexing = {t for types in self.pending.values() for t in types}
        official = _official()
        out = []
        for c in getattr(query, "criteria", []):
            p = getattr(c, "param", None)
            if p is None:
                continue
            if p.url in self.pending:
                what = "was added recently and existing resources are still being reindexed"
            elif any(t in reindexing and (paired := official.derived(t, p.code)) is not None
                     and self.registry.derived(t, p.code) != paired
                     for t in getattr(c, "res_types", ())):
                what = ("reads rows of its own since a SearchParameter added recently "
                        "replaced one it was derived from, and existing resources are "
                        "still being reindexed")
            else:
                continue
            out.append(Issue(f"Search parameter {p.code!r} {what}; results may be incomplete "
                             "until the reindex finishes", code="incomplete", severity="warning"))
        return out


_OFFICIAL_REGISTRY: list[SearchRegistry] = []


def _official() -> SearchRegistry:
    """The official parameters alone (what pairs when no custom one interferes)."""
    if not _OFFICIAL_REGISTRY:
        _OFFICIAL_REGISTRY.append(SearchRegistry())
    return _OFFICIAL_REGISTRY[0]
