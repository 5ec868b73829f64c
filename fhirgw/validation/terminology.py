"""Local terminology: ValueSet expansion and code membership, with no terminology server.

A ValueSet is expanded from its ``compose``: ``include``/``exclude`` entries with concept
lists, whole code systems, ``valueSet`` imports and the simple filters (``is-a``,
``descendent-of``, ``=`` on ``concept``) over code systems that are loaded. A whole
system that is not loaded (SNOMED CT, LOINC, ICD-10, ...) cannot be enumerated; the
expansion then accepts any code of that system ("open" system) and says so, and a filter it
cannot evaluate makes the expansion *incomplete*: membership is then unknown rather than
false, and the validator reports it as information instead of an error.

Expansions are cached per ValueSet URL; the owner clears the cache when definitions change.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


def strip_version(url: str) -> str:
    """``http://x/ValueSet/a|4.0.1`` -> ``http://x/ValueSet/a``."""
    return url.split("|", 1)[0]


@dataclass(frozen=True)
class Expansion:
    """The codes a ValueSet admits.

    ``codes`` holds (system, code) pairs; ``open_systems`` the systems of which every code
    is admitted (whole systems that are not loaded); ``complete`` is False when a part of
    the ValueSet could not be evaluated (unknown import, unsupported filter).
    """

    url: str
    codes: frozenset[tuple[str, str]] = frozenset()
    open_systems: frozenset[str] = frozenset()
    complete: bool = True
    problem: str = ""
    bare_codes: frozenset[str] = field(default=frozenset(), compare=False)

    def contains(self, system: str | None, code: str | None) -> bool | None:
        """True / False, or None when the answer is unknown (incomplete expansion)."""
        if code is None:
            return False
        if system is None:
            if code in self.bare_codes:
                return True
        elif (system, code) in self.codes or system in self.open_systems:
            return True
        return None if not self.complete else False

    def contains_code(self, code: str) -> bool | None:
        """Membership of a bare ``code`` (FHIR type code: the system is implied)."""
        if code in self.bare_codes:
            return True
        if self.open_systems or not self.complete:
            return None
        return False


class _Builder:
    def __init__(self, url: str):
        self.url = url
        self.codes: set[tuple[str, str]] = set()
        self.open: set[str] = set()
        self.complete = True
        self.problems: list[str] = []

    def incomplete(self, why: str) -> None:
        self.complete = False
        self.problems.append(why)


def _walk(concepts: list[dict], parent_chain: tuple[str, ...] = ()):
    """Yield (code, ancestors) for a hierarchical concept list."""
    for c in concepts:
        yield c["code"], parent_chain
        if c.get("concept"):
            yield from _walk(c["concept"], parent_chain + (c["code"],))


class Terminology:
    """Expands ValueSets and answers membership over a set of ValueSets and CodeSystems.

    ``lookup_vs`` and ``lookup_cs`` return the resource for a canonical URL (version
    stripped) or None; the instance caches expansions, so build a new one (or call
    :meth:`clear`) when the definitions change.
    """

    def __init__(self, lookup_vs: Callable[[str], dict | None],
                 lookup_cs: Callable[[str], dict | None]):
        self._vs = lookup_vs
        self._cs = lookup_cs
        self._cache: dict[str, Expansion] = {}
        self._cs_index: dict[str, dict[str, tuple[str, ...]] | None] = {}

    def clear(self) -> None:
        self._cache = {}
        self._cs_index = {}

    # ------------------------------------------------------------ code systems

    def _codes_of(self, system: str) -> dict[str, tuple[str, ...]] | None:
        """code -> ancestors for a loaded, complete code system; None if not enumerable."""
        if system in self._cs_index:
            return self._cs_index[system]
        cs = self._cs(system)
        index: dict[str, tuple[str, ...]] | None = None
        if cs is not None and cs.get("content", "complete") == "complete" and cs.get("concept"):
            index = {}
            for code, ancestors in _walk(cs["concept"]):
                index[code] = ancestors
        self._cs_index[system] = index
        return index

    def code_in_system(self, system: str, code: str) -> bool | None:
        """Is ``code`` defined in ``system``? None when the system is not loaded."""
        index = self._codes_of(system)
        if index is None:
            return None
        return code in index

    # ------------------------------------------------------------ expansion

    def expand(self, url: str) -> Expansion:
        url = strip_version(url)
        hit = self._cache.get(url)
        if hit is not None:
            return hit
        exp = self._expand(url, frozenset())
        self._cache[url] = exp
        return exp

    def _expand(self, url: str, seen: frozenset[str]) -> Expansion:
        if url in self._cache:
            return self._cache[url]
        vs = self._vs(url)
        b = _Builder(url)
        if vs is None:
            b.incomplete(f"ValueSet {url} is not known")
            return self._finish(b)
        if url in seen:
            b.incomplete(f"ValueSet {url} imports itself")
            return self._finish(b)
        seen = seen | {url}
        compose = vs.get("compose")
        if compose:
            for inc in compose.get("include", []):
                codes, open_, complete, why = self._part(inc, seen)
                b.codes |= codes
                b.open |= open_
                if not complete:
                    b.incomplete(why)
            for exc in compose.get("exclude", []):
                codes, open_, complete, why = self._part(exc, seen)
                b.codes -= codes
                b.open -= open_
                if open_:
                    # excluding a whole system we cannot enumerate: drop its codes too
                    b.codes = {c for c in b.codes if c[0] not in open_}
                if not complete:
                    b.incomplete(why)
        elif vs.get("expansion", {}).get("contains"):
            def walk(items):
                for it in items:
                    if it.get("code") and it.get("system"):
                        b.codes.add((it["system"], it["code"]))
                    walk(it.get("contains", []))
            walk(vs["expansion"]["contains"])
        else:
            b.incomplete(f"ValueSet {url} has neither compose nor expansion")
        return self._finish(b)

    @staticmethod
    def _finish(b: _Builder) -> Expansion:
        return Expansion(url=b.url, codes=frozenset(b.codes), open_systems=frozenset(b.open),
                         complete=b.complete, problem="; ".join(b.problems),
                         bare_codes=frozenset(c for _, c in b.codes))

    def _part(self, inc: dict, seen: frozenset[str]):
        """Evaluate one include/exclude entry: (codes, open systems, complete, why)."""
        system = inc.get("system")
        codes: set[tuple[str, str]] | None = None
        open_: set[str] = set()
        complete, why = True, ""
        if system:
            if inc.get("concept"):
                codes = {(system, c["code"]) for c in inc["concept"]}
            elif inc.get("filter"):
                filtered = self._filter(system, inc["filter"])
                if filtered is None:
                    complete = False
                    why = f"filter on {system} cannot be evaluated locally"
                    codes = set()
                else:
                    codes = filtered
            else:
                index = self._codes_of(system)
                if index is None:
                    open_.add(system)
                    codes = set()
                else:
                    codes = {(system, c) for c in index}
        for imported in inc.get("valueSet", []):
            sub = self._expand(strip_version(imported), seen)
            if not sub.complete:
                complete, why = False, sub.problem
            sub_codes = set(sub.codes)
            if codes is None:
                codes, open_ = sub_codes, set(sub.open_systems) | open_
            else:  # system + valueSet: intersection
                keep = {c for c in codes if c in sub_codes or c[0] in sub.open_systems}
                if open_:
                    keep |= {c for c in sub_codes if c[0] in open_}
                    open_ = open_ & set(sub.open_systems)
                codes = keep
        return codes or set(), open_, complete, why

    def _filter(self, system: str, filters: list[dict]) -> set[tuple[str, str]] | None:
        index = self._codes_of(system)
        if index is None:
            return None
        result: set[str] | None = None
        for f in filters:
            prop, op, value = f.get("property"), f.get("op"), f.get("value")
            if prop != "concept" or op not in ("is-a", "descendent-of", "=", "in", "is-not-a"):
                return None
            if op == "=":
                hit = {value} if value in index else set()
            elif op == "in":
                wanted = set((value or "").split(","))
                hit = {c for c in index if c in wanted}
            elif op == "is-a":
                hit = {c for c, anc in index.items() if c == value or value in anc}
            elif op == "descendent-of":
                hit = {c for c, anc in index.items() if value in anc}
            else:  # is-not-a
                hit = {c for c, anc in index.items() if c != value and value not in anc}
            result = hit if result is None else result & hit
        return {(system, c) for c in (result or set())}
