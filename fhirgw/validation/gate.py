"""The validation every write passes, and the definitions stored in the server.

``WriteValidator`` is the repository's validator: R4B base validation, then the checks some
types need before they may be stored (e.g. a SearchParameter the engine can use), then
profile validation against the resource's ``meta.profile`` and the profiles a deployment
requires for its type (``FHIRGW_REQUIRED_PROFILES``). Any error-level issue refuses the
write with 422 and stores nothing; an unknown profile is only a warning.

``StoredDefinitions`` keeps the ProfileValidator in step with the StructureDefinitions,
ValueSets and CodeSystems stored in the server: usable right after the write commits, in
every process (``fhirgw.store.watch``), dropped again when deleted.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from ..model import resources as res
from ..model.errors import Issue, Unprocessable
from ..store.watch import StoredResourceWatcher
from .definitions import DefinitionError
from .validator import ProfileValidator

log = logging.getLogger("fhirgw.validation")

DEFINITION_TYPES = ("StructureDefinition", "ValueSet", "CodeSystem")
_FAILING = ("error", "fatal")


def parse_required_profiles(text: str) -> dict[str, list[str]]:
    """``"Patient=http://a|http://b;Task=http://c"`` -> {"Patient": [a, b], "Task": [c]}.

    >>> parse_required_profiles("Patient=http://x/p; Task=http://x/t|http://x/u")
    {'Patient': ['http://x/p'], 'Task': ['http://x/t', 'http://x/u']}
    """
    out: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        rtype, _, urls = part.partition("=")
        out.setdefault(rtype.strip(), []).extend(u.strip() for u in urls.split("|") if u.strip())
    return out


class WriteValidator:
    def __init__(self, profiles: ProfileValidator | None,
                 required: dict[str, list[str]] | None = None,
                 checks: dict[str, Iterable[Callable[[dict], None]]] | None = None):
        self.profiles = profiles
        self.required = required or {}
        self.checks = {k: list(v) for k, v in (checks or {}).items()}

    def __call__(self, body: dict, res_type: str) -> dict:
        res.validate(body, res_type)
        return self.beyond_base(body, res_type)

    def beyond_base(self, body: dict, res_type: str) -> dict:
        """Everything ``__call__`` checks except the R4B base validation (``res.validate``),
        for a body whose base validation runs elsewhere (``fhirgw.validation.parallel``)."""
        for check in self.checks.get(res_type, ()):
            check(body)
        if self.profiles is None:
            return body
        claimed = [p for p in ((body.get("meta") or {}).get("profile") or ())
                   if isinstance(p, str)]
        wanted = list(dict.fromkeys(claimed + self.required.get(res_type, [])))
        if not wanted:
            return body
        issues = self.profiles.validate(body, wanted)
        errors = [i for i in issues if i.severity in _FAILING]
        if errors:
            raise Unprocessable(issues=errors + [i for i in issues if i.severity == "warning"])
        for i in issues:
            if i.severity == "warning":
                log.info("validation warning on %s write: %s", res_type, i.code)
        return body

    def outcome(self, body: dict, res_type: str, profiles: list[str] | None = None) -> list[Issue]:
        """All issues (any severity) for ``$validate``: base, type checks and profiles."""
        from ..model.errors import FhirError
        try:
            res.validate(body, res_type)
        except FhirError as exc:
            return exc.issues
        issues: list[Issue] = []
        for check in self.checks.get(res_type, ()):
            try:
                check(body)
            except FhirError as exc:
                issues.extend(exc.issues)
        if self.profiles is not None:
            claimed = [p for p in ((body.get("meta") or {}).get("profile") or ())
                       if isinstance(p, str)]
            wanted = list(dict.fromkeys((profiles or []) + claimed +
                                        self.required.get(res_type, [])))
            if wanted:
                issues.extend(self.profiles.validate(body, wanted))
        return issues


class StoredDefinitions:
    """The profile validator's view of the definitions stored in the server."""

    def __init__(self, profiles: ProfileValidator, engine, ttl: float = 2.0):
        self.profiles = profiles
        self.watcher = StoredResourceWatcher(engine, DEFINITION_TYPES, self._reload, ttl)
        self._stored_urls: set[str] = set()

    def load(self) -> int:
        return self.watcher.load()

    def maybe_refresh(self) -> None:
        self.watcher.maybe_refresh()

    def _activate(self, body: dict) -> bool:
        url = body.get("url")
        if not url or body.get("status") == "retired":
            return False
        try:
            self.profiles.add(body)
        except DefinitionError as exc:
            # valid FHIR, but not a profile this validator can enforce: stored, not active
            log.warning("stored %s %s is not usable for validation: %s",
                        body.get("resourceType"), url, exc)
            return False
        return True

    def _reload(self, bodies: list[dict]) -> None:
        now = {b["url"] for b in bodies if b.get("url")}
        for url in self._stored_urls - now:
            self.profiles.remove(url)
        self._stored_urls = {b["url"] for b in bodies if self._activate(b)}

    def on_commit(self, written) -> None:
        for stored in written:
            if stored.res_type not in DEFINITION_TYPES:
                continue
            if stored.deleted:
                self.load()  # a deletion has no body naming its url
            elif self._activate(stored.resource()):
                self._stored_urls.add(stored.resource()["url"])
