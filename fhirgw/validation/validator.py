"""The profile validator: definitions in, issues out.

:class:`ProfileValidator` owns the loaded definitions and everything derived from them
(generated snapshots, compiled profiles, ValueSet expansions) in one immutable
:class:`_State`. ``add``/``remove`` publish a new state under a lock (copy on write), so a
validation already running keeps a consistent view and the next one sees the change at
once; readers never lock. Compilation is lazy: a profile is compiled the first time a
resource needs it, then reused.
"""
from __future__ import annotations

import os
import threading
from typing import Iterable

from ..model.errors import Issue
from .compiler import CompiledProfile, Compiler
from .definitions import CORE_PREFIX, KINDS, DefinitionError, Definitions, Layered
from .engine import Walker
from .snapshot import generate
from .terminology import Expansion, Terminology, strip_version

#: where the repository keeps the IOP profiles, relative to this file (repo checkout or
#: editable install) and as installed package data
_HERE = os.path.dirname(os.path.abspath(__file__))
_CANDIDATES = (
    os.path.join(_HERE, "..", "..", "profiles"),
    os.path.join(_HERE, "profiles"),
)


def default_profiles_dir() -> str | None:
    """The folder of the IOP profiles.

    ``FHIRGW_PROFILES`` (one or more folders separated by ``os.pathsep``) wins; otherwise
    ``profiles/`` at the repository root (next to the ``fhirgw`` package: a checkout or an
    editable install), otherwise ``fhirgw/validation/profiles`` (a copy shipped as package
    data). None when there is none.
    """
    env = os.environ.get("FHIRGW_PROFILES")
    if env:
        return env
    for cand in _CANDIDATES:
        if os.path.isdir(cand):
            return os.path.normpath(cand)
    return None


class _State:
    """One consistent view: definitions plus the caches derived from them."""

    def __init__(self, user: Definitions, *, core_invariants: bool):
        self.user = user
        self.defs = Layered(user)
        self.terminology = Terminology(self.defs.vs, self.defs.cs)
        self._compiler = Compiler(self.defs.sd, self.profile, core_invariants=core_invariants)
        self._snapshots: dict[str, list[dict]] = {}
        self._profiles: dict[str, CompiledProfile] = {}
        self._failed: dict[str, str] = {}
        self._building: set[str] = set()
        self._lock = threading.RLock()

    def knows(self, url: str) -> bool:
        return self.defs.sd(url) is not None

    def snapshot(self, url: str) -> list[dict] | None:
        url = strip_version(url)
        hit = self._snapshots.get(url)
        if hit is not None:
            return hit
        sd = self.defs.sd(url)
        if sd is None:
            return None
        with self._lock:
            if url in self._building:
                raise DefinitionError(f"{url}: circular base definitions")
            self._building.add(url)
            try:
                elements = generate(sd, self.snapshot)
            finally:
                self._building.discard(url)
            self._snapshots[url] = elements
            return elements

    def profile(self, url: str) -> CompiledProfile | None:
        """The compiled profile for ``url``; None if unknown; DefinitionError if unusable."""
        url = strip_version(url)
        hit = self._profiles.get(url)
        if hit is not None:
            return hit
        if url in self._failed:
            raise DefinitionError(self._failed[url])
        sd = self.defs.sd(url)
        if sd is None:
            return None
        with self._lock:
            hit = self._profiles.get(url)
            if hit is not None:
                return hit
            try:
                compiled = self._compiler.compile(sd, self.snapshot(url))
            except DefinitionError as exc:
                self._failed[url] = str(exc)
                raise
            self._profiles[url] = compiled
            return compiled

    def type_profile(self, type_code: str) -> CompiledProfile | None:
        try:
            return self.profile(CORE_PREFIX + type_code)
        except DefinitionError:
            return None

    def expansion(self, url: str) -> Expansion:
        return self.terminology.expand(url)


class ProfileValidator:
    """Validates FHIR R4 resources (parsed JSON) against StructureDefinitions.

    ``ProfileValidator(*paths)`` loads the StructureDefinitions, ValueSets and CodeSystems in
    the given files, folders and unpacked npm packages; with no argument it loads the IOP
    profiles (see :func:`default_profiles_dir`). The FHIR R4 core definitions are always
    available underneath.

    ``core_invariants=True`` also evaluates the invariants of the base specification
    (dom-*, ext-1, per-resource rules); by default only the invariants a profile adds are
    evaluated, the base being checked by model validation. ``must_support=False`` drops the
    information issues for absent must-support elements.
    """

    def __init__(self, *dirs_or_files: str | os.PathLike, core_invariants: bool = False,
                 must_support: bool = True):
        user = Definitions()
        paths: Iterable = dirs_or_files
        if not dirs_or_files:
            default = default_profiles_dir()
            paths = default.split(os.pathsep) if default else ()
        for path in paths:
            user.load(os.fspath(path))
        self._core_invariants = core_invariants
        self._must_support = must_support
        self._write_lock = threading.Lock()
        self._state = _State(user, core_invariants=core_invariants)

    # ------------------------------------------------------------ definitions

    def add(self, resource: dict) -> None:
        """Make a StructureDefinition, ValueSet or CodeSystem usable at once.

        A StructureDefinition is compiled here, so a broken one is rejected with
        :class:`DefinitionError` (a ValueError) instead of failing later validations.
        """
        with self._write_lock:
            user = self._state.user.copy()
            user.add_resource(resource)
            state = _State(user, core_invariants=self._core_invariants)
            if resource.get("resourceType") == "StructureDefinition":
                state.profile(resource["url"])
            self._state = state

    def check(self, resource: dict) -> None:
        """Raise DefinitionError if ``add(resource)`` would; changes nothing (a dry run)."""
        user = self._state.user.copy()
        user.add_resource(resource)
        if resource.get("resourceType") == "StructureDefinition":
            _State(user, core_invariants=self._core_invariants).profile(resource["url"])

    def load(self, path: str | os.PathLike) -> int:
        """Load more definitions from a file, folder or npm package; returns how many."""
        with self._write_lock:
            user = self._state.user.copy()
            n = user.load(os.fspath(path))
            self._state = _State(user, core_invariants=self._core_invariants)
            return n

    def remove(self, url: str) -> None:
        """Forget the definition(s) with this canonical URL (no-op when unknown)."""
        with self._write_lock:
            user = self._state.user.copy()
            changed = False
            for kind in KINDS:
                if user._tables[kind].pop(strip_version(url), None) is not None:
                    changed = True
            if changed:
                self._state = _State(user, core_invariants=self._core_invariants)

    def knows(self, profile_url: str) -> bool:
        """Is there a StructureDefinition with this URL (loaded or core)?"""
        return self._state.knows(profile_url)

    def profiles(self) -> list[str]:
        """URLs of the StructureDefinitions loaded on top of the core."""
        return sorted(self._state.user.urls("StructureDefinition"))

    def compile(self, profile_url: str) -> CompiledProfile:
        """Compile (and cache) one profile now; raises DefinitionError if unusable."""
        prof = self._state.profile(profile_url)
        if prof is None:
            raise DefinitionError(f"unknown profile {profile_url}")
        return prof

    def expand(self, value_set_url: str) -> Expansion:
        """The local expansion of a ValueSet (cached)."""
        return self._state.expansion(value_set_url)

    # ------------------------------------------------------------ validation

    def validate(self, resource: dict, profiles: list[str] | None = None) -> list[Issue]:
        """Validate ``resource`` against ``profiles`` (default: its ``meta.profile``).

        Returns the issues found (errors, warnings, information), never raises for content
        problems: an unknown profile is a warning, an unusable one an error.
        """
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            return [Issue("the content is not a FHIR resource (no resourceType)",
                          code="structure", expression=[])]
        rtype = resource["resourceType"]
        if profiles is None:
            meta = resource.get("meta") or {}
            profiles = [p for p in (meta.get("profile") or ()) if isinstance(p, str)]
        state = self._state
        walker = Walker(state, must_support=self._must_support)
        issues: list[Issue] = []
        for url in dict.fromkeys(profiles):
            try:
                prof = state.profile(url)
            except DefinitionError as exc:
                issues.append(Issue(f"profile {url} cannot be used: {exc}", code="processing",
                                    severity="error", expression=[rtype]))
                continue
            if prof is None:
                issues.append(Issue(f"profile {url} is not known, so the resource was not "
                                    "checked against it", code="not-found", severity="warning",
                                    expression=[rtype]))
                continue
            walker.resource(prof, resource, rtype)
        issues.extend(_dedupe(walker.issues))
        return issues


def _dedupe(issues: list[Issue]) -> list[Issue]:
    seen: set[tuple] = set()
    out = []
    for i in issues:
        key = (i.severity, i.code, i.diagnostics, tuple(i.expression))
        if key not in seen:
            seen.add(key)
            out.append(i)
    return out
