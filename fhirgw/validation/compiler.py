"""Compiling a snapshot into a tree of element rules the validator walks.

Each snapshot element becomes a :class:`Rule`: its JSON name, cardinality, allowed types
(with type profiles and reference targets), fixed or pattern value, binding, compiled
FHIRPath invariants, must-support flag, children and slices. A compiled profile is built
once per definition and reused for every resource, so validating a resource never
re-reads a StructureDefinition or re-parses an expression.

Children a snapshot does not unroll (the parts of a ``HumanName`` in a resource's base
definition) are not copied into every profile: the rule keeps its type, and the validator
walks the compiled tree of that type (or of the type profile the element names), compiled
once and shared.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import fhirpathpy
from fhirpathpy.models import models as _fhirpath_models

from .definitions import CORE_PREFIX, DefinitionError, core
from .snapshot import split_id


FHIRPATH_MODEL = _fhirpath_models["r4"]
MISSING: Any = object()
#: data types a binding can apply to (the rest are not coded)
CODED_TYPES = frozenset({"code", "Coding", "CodeableConcept", "Quantity", "string", "uri"})


@functools.lru_cache(maxsize=1)
def core_tables() -> tuple[dict[str, str], frozenset[str], frozenset[str], frozenset[str]]:
    """(JSON type suffix -> type code, resource types, primitive types, core invariant keys)."""
    suffixes: dict[str, str] = {}
    resources: set[str] = set()
    primitives: set[str] = set()
    keys: set[str] = {"ele-1"}
    defs = core()
    for url in defs.urls("StructureDefinition"):
        sd = defs.get("StructureDefinition", url)
        if sd.get("derivation") != "specialization":
            continue
        kind, t = sd.get("kind"), sd.get("type")
        if kind == "resource":
            resources.add(t)
        elif kind in ("primitive-type", "complex-type"):
            suffixes[t[:1].upper() + t[1:]] = t
            if kind == "primitive-type":
                primitives.add(t)
        for el in sd["snapshot"]["element"]:
            for c in el.get("constraint", ()):
                keys.add(c["key"])
    resources |= {"Resource", "DomainResource"}
    return suffixes, frozenset(resources), frozenset(primitives), frozenset(keys)


def type_code(t: dict) -> str:
    code = t.get("code", "")
    if code.startswith("http://hl7.org/fhirpath/System."):
        return code.rsplit(".", 1)[1].lower()
    return code


@dataclass(frozen=True)
class Invariant:
    key: str
    severity: str
    human: str
    expression: str
    fn: Callable


class TypeRef:
    """One allowed type of an element: code, type profiles and reference targets."""

    __slots__ = ("code", "profiles", "target_types", "target_profiles", "root")

    def __init__(self, code: str, profiles: tuple[str, ...], target_types: frozenset[str] | None,
                 target_profiles: tuple[str, ...]):
        self.code = code
        self.profiles = profiles            # non-core type profiles
        self.target_types = target_types    # None: any resource type
        self.target_profiles = target_profiles  # non-core target profiles
        self.root: Any = MISSING            # the compiled tree to walk below (resolved lazily)


class Rule:
    """The compiled form of one snapshot element."""

    __slots__ = ("id", "path", "name", "choice", "min", "max", "types", "by_suffix", "fixed",
                 "pattern", "strength", "value_set", "invariants", "must_support", "children",
                 "slicing", "slices", "slice_name", "discriminators", "content_ref", "profile")

    def __init__(self, el: dict, profile_url: str):
        self.id: str = el["id"]
        self.path: str = el["path"]
        last = self.path.rsplit(".", 1)[-1]
        self.choice = last.endswith("[x]")
        self.name = last[:-3] if self.choice else last
        self.min: int = int(el.get("min", 0) or 0)
        mx = el.get("max", "*")
        self.max: int | None = None if mx in ("*", None) else int(mx)
        self.types: list[TypeRef] = []
        self.by_suffix: dict[str, TypeRef] = {}
        self.fixed: Any = MISSING
        self.pattern: Any = MISSING
        for key, value in el.items():
            if key.startswith("fixed"):
                self.fixed = value
            elif key.startswith("pattern"):
                self.pattern = value
        binding = el.get("binding") or {}
        self.strength: str | None = binding.get("strength") if binding.get("valueSet") else None
        if self.strength not in ("required", "extensible"):
            self.strength = None
        self.value_set: str | None = binding.get("valueSet") if self.strength else None
        self.invariants: tuple[Invariant, ...] = ()
        self.must_support: bool = bool(el.get("mustSupport"))
        self.children: dict[str, Rule] = {}
        self.slicing: dict | None = el.get("slicing")
        self.slices: list[Rule] = []
        self.slice_name: str | None = el.get("sliceName")
        self.discriminators: list[tuple] = []
        ref = el.get("contentReference")
        self.content_ref: str | None = ref.split("#", 1)[1] if ref else None
        self.profile = profile_url

    def first_type(self) -> TypeRef | None:
        return self.types[0] if self.types else None

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Rule({self.id} {self.min}..{self.max if self.max is not None else '*'})"


class CompiledProfile:
    """A StructureDefinition ready for validation."""

    __slots__ = ("url", "type", "root", "name", "kind")

    def __init__(self, url: str, sd: dict, root: Rule):
        self.url = url
        self.type = sd.get("type")
        self.name = sd.get("name") or url
        self.kind = sd.get("kind")
        self.root = root


class Compiler:
    """Turns snapshot elements into rules; ``resolve_sd`` looks definitions up by URL."""

    def __init__(self, resolve_sd: Callable[[str], dict | None],
                 profile_of: Callable[[str], "CompiledProfile | None"], *,
                 core_invariants: bool = False):
        self.resolve_sd = resolve_sd
        self.profile_of = profile_of
        self.core_invariants = core_invariants
        self.suffixes, self.resource_types, self.primitives, self.core_keys = core_tables()

    # ------------------------------------------------------------ pieces

    @staticmethod
    @functools.lru_cache(maxsize=4096)
    def _compile_fhirpath(expression: str) -> Callable:
        return fhirpathpy.compile(expression, FHIRPATH_MODEL)

    def _invariants(self, el: dict, url: str) -> tuple[Invariant, ...]:
        out = []
        for c in el.get("constraint", ()) or ():
            key, expr = c.get("key", "?"), c.get("expression")
            if not expr:
                continue
            if not self.core_invariants and key in self.core_keys:
                continue
            try:
                fn = self._compile_fhirpath(expr)
            except Exception as exc:  # fhirpathpy raises assorted errors on bad syntax
                raise DefinitionError(f"{url}: invariant {key} of {el['id']} does not compile: "
                                      f"{expr!r}: {exc}") from None
            out.append(Invariant(key, c.get("severity", "error"), c.get("human", key), expr, fn))
        return tuple(out)

    def _target_types(self, profiles: list[str]) -> tuple[frozenset[str] | None, tuple[str, ...]]:
        types: set[str] = set()
        custom: list[str] = []
        for url in profiles:
            base = url.split("|", 1)[0]
            if base.startswith(CORE_PREFIX) and base[len(CORE_PREFIX):] in self.resource_types:
                name = base[len(CORE_PREFIX):]
                if name in ("Resource", "DomainResource"):
                    return None, ()
                types.add(name)
                continue
            sd = self.resolve_sd(base)
            if sd is None or not sd.get("type"):
                return None, ()  # an unknown target profile: do not restrict the type
            types.add(sd["type"])
            custom.append(base)
        return (frozenset(types) if types else None), tuple(custom)

    def _types(self, el: dict) -> list[TypeRef]:
        out = []
        for t in el.get("type", ()) or ():
            code = type_code(t)
            profiles = tuple(p.split("|", 1)[0] for p in t.get("profile", ()) or ()
                             if not (p.startswith(CORE_PREFIX) and p[len(CORE_PREFIX):] == code))
            targets: frozenset[str] | None = None
            custom: tuple[str, ...] = ()
            if t.get("targetProfile"):
                targets, custom = self._target_types(t["targetProfile"])
            out.append(TypeRef(code, profiles, targets, custom))
        return out

    # ------------------------------------------------------------ structure

    def compile(self, sd: dict, elements: list[dict]) -> CompiledProfile:
        url = sd.get("url", "?")
        if not elements:
            raise DefinitionError(f"{url}: no elements")
        by_id: dict[str, Rule] = {}
        root: Rule | None = None
        for el in elements:
            if "id" not in el:
                el = dict(el, id=el["path"] if not el.get("sliceName")
                          else f"{el['path']}:{el['sliceName']}")
            rule = Rule(el, url)
            rule.types = self._types(el)
            rule.invariants = self._invariants(el, url)
            if root is None:
                root = rule
                by_id[rule.id] = rule
                continue
            parent_id, last = split_id(rule.id)
            name, _, slice_name = last.partition(":")
            if slice_name:
                base = by_id.get(f"{parent_id}.{name}")
                if base is None:
                    raise DefinitionError(f"{url}: slice {rule.id} has no sliced element")
                rule.slice_name = slice_name
                base.slices.append(rule)
            else:
                parent = by_id.get(parent_id)
                if parent is None:
                    raise DefinitionError(f"{url}: element {rule.id} has no parent {parent_id}")
                parent.children[rule.name] = rule
            by_id[rule.id] = rule
        assert root is not None
        for rule in by_id.values():
            if rule.content_ref:
                target = by_id.get(rule.content_ref)
                if target is None:
                    raise DefinitionError(f"{url}: content reference #{rule.content_ref} of "
                                          f"{rule.id} not found")
                if not rule.children:
                    rule.children = target.children
                if not rule.types:
                    rule.types = target.types
            if rule.choice:
                rule.by_suffix = {t.code[:1].upper() + t.code[1:]: t for t in rule.types}
        for rule in by_id.values():
            if rule.slices:
                for s in rule.slices:
                    if s.choice:
                        s.by_suffix = {t.code[:1].upper() + t.code[1:]: t for t in s.types}
                    s.discriminators = self._discriminators(rule, s)
        return CompiledProfile(url, sd, root)

    # ------------------------------------------------------------ slicing

    def _discriminators(self, base: Rule, s: Rule) -> list[tuple]:
        """Precompute (kind, path steps, expected) per discriminator of slice ``s``.

        ``expected`` is MISSING when the slice does not constrain the discriminator; such
        a discriminator cannot tell values apart and the slice matches nothing by it.
        """
        slicing = base.slicing or {}
        discs = slicing.get("discriminator") or []
        if not discs and base.choice:
            discs = [{"type": "type", "path": "$this"}]
        if not discs and base.name in ("extension", "modifierExtension"):
            discs = [{"type": "value", "path": "url"}]
        out = []
        for d in discs:
            kind, path = d.get("type", "value"), d.get("path", "$this")
            steps = _parse_path(path)
            target = self._descend(s, steps)
            expected: Any = MISSING
            if kind in ("value", "pattern"):
                if target is not None:
                    if target.fixed is not MISSING:
                        expected = target.fixed
                    elif target.pattern is not MISSING:
                        # a value discriminator over a pattern[x] compares as a pattern
                        kind, expected = "pattern", target.pattern
                if expected is MISSING and steps and steps[-1] == ("name", "url"):
                    holder = self._descend(s, steps[:-1])
                    t = holder.first_type() if holder is not None else None
                    if t is not None and t.code == "Extension" and t.profiles:
                        expected = t.profiles[0]
            elif kind == "type":
                if target is not None and target.types:
                    codes = set()
                    for t in target.types:
                        if t.code in ("Resource", "DomainResource") and t.profiles:
                            for p in t.profiles:
                                sd = self.resolve_sd(p)
                                if sd is not None:
                                    codes.add(sd["type"])
                        else:
                            codes.add(t.code)
                    expected = frozenset(codes)
            elif kind == "profile":
                if steps and steps[-1] == ("resolve",):
                    holder = self._descend(s, steps[:-1])
                    urls = [p for t in (holder.types if holder else ()) for p in t.target_profiles]
                    if urls:
                        expected = tuple(urls)
                elif target is not None:
                    urls = [p for t in target.types for p in (t.profiles or ())]
                    urls += [p for t in target.types for p in (t.target_profiles or ())]
                    if urls:
                        expected = tuple(urls)
            elif kind == "exists":
                if target is not None:
                    expected = target.min > 0 if target.min > 0 or target.max == 0 else MISSING
            out.append((kind, steps, expected))
        return out

    def _descend(self, rule: Rule, steps: list[tuple]) -> Rule | None:
        cur: Rule | None = rule
        for step in steps:
            if cur is None:
                return None
            if step[0] == "name":
                children = cur.children or self._type_children(cur)
                cur = children.get(step[1]) if children else None
            elif step[0] == "ext":
                children = cur.children or self._type_children(cur)
                ext = children.get("extension") if children else None
                cur = None
                for sl in (ext.slices if ext else ()):
                    t = sl.first_type()
                    fixed_url = sl.children.get("url").fixed if sl.children.get("url") else MISSING
                    if (t and step[1] in t.profiles) or fixed_url == step[1]:
                        cur = sl
                        break
            elif step[0] == "resolve":
                return None
            # ofType()/as() steps keep the current rule
        return cur

    def _type_children(self, rule: Rule) -> dict[str, Rule]:
        t = rule.first_type()
        if t is None or t.code in self.primitives:
            return {}
        url = t.profiles[0] if t.profiles else CORE_PREFIX + t.code
        compiled = self.profile_of(url)
        return compiled.root.children if compiled is not None else {}


def _parse_path(path: str) -> list[tuple]:
    """A discriminator path as steps: ("name", n), ("ext", url), ("resolve",), ("type", T)."""
    steps: list[tuple] = []
    if path in ("$this", ""):
        return steps
    i = 0
    parts: list[str] = []
    depth, start = 0, 0
    while i < len(path):
        ch = path[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "." and depth == 0:
            parts.append(path[start:i])
            start = i + 1
        i += 1
    parts.append(path[start:])
    for part in parts:
        if part == "$this":
            continue
        if part.startswith("extension(") and part.endswith(")"):
            steps.append(("ext", part[len("extension("):-1].strip("'\"")))
        elif part == "resolve()":
            steps.append(("resolve",))
        elif part.startswith(("ofType(", "as(")):
            steps.append(("type", part[part.index("(") + 1:-1]))
        else:
            steps.append(("name", part.replace("[x]", "")))
    return steps
