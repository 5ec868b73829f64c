"""Walking a resource against a compiled profile and collecting issues.

One :class:`Walker` validates one resource (and the resources nested in it: contained
resources, Bundle entries). Every issue names the element at fault as a FHIRPath location
built while walking: ``Patient.name[0].family``, ``Bundle.entry[2].resource.status``.

Issue codes follow http://hl7.org/fhir/issue-type: ``required`` (too few), ``structure``
(too many, wrong type, wrong reference target), ``value`` (fixed / pattern),
``code-invalid`` (bindings), ``invariant``, ``informational`` (must-support, unchecked
terminology), ``not-found`` (unknown profile).
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from fhirpathpy.engine.nodes import ResourceNode

from ..model.errors import Issue
from .compiler import CODED_TYPES, MISSING, CompiledProfile, Rule, TypeRef, core_tables
from .definitions import CORE_PREFIX
from .terminology import strip_version

if TYPE_CHECKING:  # pragma: no cover
    from .validator import _State

_REF_RE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?$")
_MAX_DEPTH = 40


def matches_pattern(pattern: Any, value: Any) -> bool:
    """FHIR pattern semantics: every element of the pattern is present, and equal, in value."""
    if isinstance(pattern, dict):
        if not isinstance(value, dict):
            return False
        for k, p in pattern.items():
            v = value.get(k)
            if v is None or not matches_pattern(p, v):
                return False
        return True
    if isinstance(pattern, list):
        if not isinstance(value, list):
            value = [value]
        return all(any(matches_pattern(p, v) for v in value) for p in pattern)
    if isinstance(value, list):
        return any(matches_pattern(pattern, v) for v in value)
    return pattern == value


def _describe(value: Any) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 120 else text[:117] + "..."


class Walker:
    """Validates one resource; ``issues`` collects what it finds."""

    def __init__(self, state: "_State", must_support: bool = True):
        self.state = state
        self.issues: list[Issue] = []
        self.must_support = must_support
        self.suffixes, self.resource_types, self.primitives, _ = core_tables()
        self._resources: list[dict] = []       # stack of resources being walked
        self._contained: list[dict] = []       # contained index per stack level
        self._bundle: dict[str, dict] | None = None
        self._depth = 0
        self._conformance: dict[tuple[int, str], bool] = {}

    # ------------------------------------------------------------ issues

    def _issue(self, severity: str, code: str, loc: str, text: str) -> None:
        self.issues.append(Issue(f"{loc}: {text}", code=code, severity=severity, expression=[loc]))

    # ------------------------------------------------------------ resources

    def resource(self, profile: CompiledProfile, res: dict, loc: str) -> None:
        """Validate ``res`` (a resource at ``loc``) against ``profile``."""
        rtype = res.get("resourceType")
        if profile.type != rtype:
            self._issue("error", "structure", loc,
                        f"the resource is a {rtype}, but profile {profile.url} is for "
                        f"{profile.type}")
            return
        if self._depth > _MAX_DEPTH:
            return
        self._depth += 1
        contained = {}
        for c in res.get("contained", ()) or ():
            if isinstance(c, dict) and c.get("id"):
                contained[c["id"]] = c
        saved_bundle = self._bundle
        if rtype == "Bundle":
            self._bundle = self._bundle_index(res)
        self._resources.append(res)
        self._contained.append(contained)
        try:
            root = profile.root
            if root.invariants:
                self._invariants(root, res, loc)
            self.children(root.children, res, loc)
        finally:
            self._resources.pop()
            self._contained.pop()
            self._bundle = saved_bundle
            self._depth -= 1

    @staticmethod
    def _bundle_index(bundle: dict) -> dict[str, dict]:
        index: dict[str, dict] = {}
        for entry in bundle.get("entry", ()) or ():
            if not isinstance(entry, dict):
                continue
            res = entry.get("resource")
            if not isinstance(res, dict):
                continue
            if entry.get("fullUrl"):
                index[entry["fullUrl"]] = res
            if res.get("resourceType") and res.get("id"):
                index[f"{res['resourceType']}/{res['id']}"] = res
        return index

    def _nested(self, rule: Rule, tref: TypeRef | None, res: dict, loc: str) -> None:
        """A resource inside a resource: validate it against what applies to it."""
        rtype = res.get("resourceType")
        if not isinstance(rtype, str):
            self._issue("error", "structure", loc, "a nested resource has no resourceType")
            return
        urls = [u for u in (tref.profiles if tref else ()) if self.state.knows(u)]
        if not urls:
            meta = res.get("meta") or {}
            urls = [u for u in (meta.get("profile") or ()) if self.state.knows(u)]
        if not urls:
            urls = [CORE_PREFIX + rtype]
        for url in urls:
            prof = self.state.profile(url)
            if prof is not None:
                self.resource(prof, res, loc)

    # ------------------------------------------------------------ elements

    def value(self, rule: Rule, v: Any, loc: str, tcode: str | None, tref: TypeRef | None) -> None:
        """Check one value of an element (cardinality is the caller's)."""
        if rule.fixed is not MISSING and v != rule.fixed:
            self._issue("error", "value", loc, f"value must be exactly {_describe(rule.fixed)}, "
                        f"found {_describe(v)}")
        if rule.pattern is not MISSING and not matches_pattern(rule.pattern, v):
            self._issue("error", "value", loc,
                        f"value must match the pattern {_describe(rule.pattern)}")
        if rule.value_set is not None and tcode in CODED_TYPES:
            self._binding(rule, v, loc, tcode)
        if tref is not None and tcode == "Reference" and isinstance(v, dict) and \
                (tref.target_types is not None or tref.target_profiles):
            self._reference(tref, v, loc)
        if rule.invariants:
            self._invariants(rule, v, loc)
        if not isinstance(v, dict):
            return
        if tcode in self.resource_types:
            self._nested(rule, tref, v, loc)
            return
        if rule.children:
            self.children(rule.children, v, loc)
            if tref is not None and tref.profiles:
                self._type_profile(tref, v, loc, tcode)
        elif tcode is not None and tcode not in self.primitives:
            self._type_profile(tref, v, loc, tcode)

    def _type_profile(self, tref: TypeRef | None, v: dict, loc: str, tcode: str) -> None:
        """Walk the compiled tree of the value's type (or its type profiles)."""
        roots = self._type_roots(tref, tcode)
        for root in roots:
            self.value(root, v, loc, tcode, None)

    def _type_roots(self, tref: TypeRef | None, tcode: str) -> list[Rule]:
        if tref is not None:
            if tref.root is MISSING:
                tref.root = self._resolve_type_roots(tref.profiles, tcode)
            return tref.root
        return self._resolve_type_roots((), tcode)

    def _resolve_type_roots(self, profiles: tuple[str, ...], tcode: str) -> list[Rule]:
        roots = []
        for url in profiles:
            prof = self.state.profile(url) if self.state.knows(url) else None
            if prof is not None:
                roots.append(prof.root)
        if not roots:
            prof = self.state.type_profile(tcode)
            if prof is not None:
                roots.append(prof.root)
        return roots

    def children(self, children: dict[str, Rule], obj: dict, loc: str) -> None:
        for name, rule in children.items():
            if rule.choice:
                self._choice(rule, obj, loc)
                continue
            raw = obj.get(name)
            if raw is None:
                ext = obj.get("_" + name)
                if ext is None:
                    if rule.min:
                        self._issue("error", "required", f"{loc}.{name}",
                                    f"minimum required = {rule.min}, but only found 0 "
                                    f"(from {rule.profile})")
                    elif self.must_support and rule.must_support:
                        self._issue("information", "informational", f"{loc}.{name}",
                                    "must-support element is absent")
                    if rule.slices:
                        self._slices(rule, [], f"{loc}.{name}", True, None, None)
                    continue
                count = len(ext) if isinstance(ext, list) else 1
                self._cardinality(rule, count, f"{loc}.{name}")
                continue
            tref = rule.types[0] if rule.types else None
            tcode = tref.code if tref else None
            if isinstance(raw, list):
                ext = obj.get("_" + name)
                count = max(len(raw), len(ext) if isinstance(ext, list) else 0)
                self._cardinality(rule, count, f"{loc}.{name}")
                for i, item in enumerate(raw):
                    if item is not None:
                        self.value(rule, item, f"{loc}.{name}[{i}]", tcode, tref)
                if rule.slices:
                    self._slices(rule, raw, f"{loc}.{name}", True, tcode, tref)
            else:
                self._cardinality(rule, 1, f"{loc}.{name}")
                self.value(rule, raw, f"{loc}.{name}", tcode, tref)
                if rule.slices:
                    self._slices(rule, [raw], f"{loc}.{name}", False, tcode, tref)

    def _cardinality(self, rule: Rule, count: int, loc: str) -> None:
        if count < rule.min:
            self._issue("error", "required", loc, f"minimum required = {rule.min}, but only "
                        f"found {count} (from {rule.profile})")
        if rule.max is not None and count > rule.max:
            what = "is not allowed" if rule.max == 0 else f"maximum allowed = {rule.max}, " \
                f"but found {count}"
            self._issue("error", "structure", loc, f"{what} (from {rule.profile})")

    def _choice(self, rule: Rule, obj: dict, loc: str) -> None:
        name = rule.name
        found = []
        for key in obj:
            if not key.startswith(name) or len(key) == len(name):
                continue
            suffix = key[len(name):]
            tref = rule.by_suffix.get(suffix)
            if tref is None:
                if suffix in self.suffixes:
                    allowed = ", ".join(t.code for t in rule.types) or "none"
                    self._issue("error", "structure", f"{loc}.{key}",
                                f"type {self.suffixes[suffix]} is not allowed for "
                                f"{rule.path} (allowed: {allowed}; from {rule.profile})")
                    found.append((key, None, None))
                continue
            found.append((key, obj[key], tref))
        if not found:
            prim = [k for k in obj if k.startswith("_" + name) and k[len(name) + 1:] in rule.by_suffix]
            if prim:
                return self._cardinality(rule, 1, f"{loc}.{name}")
            if rule.min:
                self._issue("error", "required", f"{loc}.{name}",
                            f"minimum required = {rule.min}, but only found 0 (from {rule.profile})")
            elif self.must_support and rule.must_support:
                self._issue("information", "informational", f"{loc}.{name}",
                            "must-support element is absent")
            return
        self._cardinality(rule, len(found), f"{loc}.{found[0][0]}")
        for key, value, tref in found:
            if tref is None or value is None:
                continue
            self.value(rule, value, f"{loc}.{key}", tref.code, tref)
            if rule.slices:
                self._slices(rule, [value], f"{loc}.{key}", False, tref.code, tref)

    # ------------------------------------------------------------ slicing

    def _slices(self, rule: Rule, values: list, loc: str, indexed: bool, tcode: str | None,
                tref: TypeRef | None) -> None:
        counts = [0] * len(rule.slices)
        closed = (rule.slicing or {}).get("rules") == "closed"
        for i, v in enumerate(values):
            if v is None:
                continue
            vloc = f"{loc}[{i}]" if indexed else loc
            hit = None
            for n, s in enumerate(rule.slices):
                if self._matches(s, v, tcode):
                    hit = n
                    break
            if hit is None:
                near = self._near_slice(rule, v, tcode)
                if near is not None:
                    # it is of the slice's type but does not conform to the slice's profile:
                    # report why, at the value's own location, as a validator would
                    self.value(near, v, vloc, near.types[0].code if near.types else tcode,
                               near.types[0] if near.types else tref)
                    continue
                if closed:
                    self._issue("error", "structure", vloc, "the value matches none of the slices "
                                f"of {rule.path} and the slicing is closed (from {rule.profile})")
                elif rule.name in ("extension", "modifierExtension") and isinstance(v, dict):
                    self._known_extension(v, vloc)
                continue
            counts[hit] += 1
            s = rule.slices[hit]
            stref = s.types[0] if s.types else tref
            if s.choice and tcode:
                stref = s.by_suffix.get(tcode[:1].upper() + tcode[1:], stref)
            self.value(s, v, vloc, stref.code if stref else tcode, stref)
        for n, s in enumerate(rule.slices):
            if counts[n] < s.min:
                self._issue("error", "required", loc, f"slice '{s.slice_name}': minimum required "
                            f"= {s.min}, but only found {counts[n]} (from {rule.profile})")
            if s.max is not None and counts[n] > s.max:
                self._issue("error", "structure", loc, f"slice '{s.slice_name}': maximum allowed "
                            f"= {s.max}, but found {counts[n]} (from {rule.profile})")

    def _known_extension(self, ext: dict, loc: str) -> None:
        url = ext.get("url")
        if isinstance(url, str) and self.state.knows(url):
            prof = self.state.profile(url)
            if prof is not None and prof.type == "Extension":
                self.value(prof.root, ext, loc, "Extension", None)

    def _near_slice(self, rule: Rule, v: Any, tcode: str | None) -> Rule | None:
        """The first slice ``v`` would match if its profile discriminators were ignored."""
        for s in rule.slices:
            kinds = {d[0] for d in s.discriminators}
            if "profile" in kinds and len(kinds) > 1 and \
                    self._matches(s, v, tcode, ignore_profile=True):
                return s
        return None

    def _matches(self, s: Rule, v: Any, tcode: str | None, ignore_profile: bool = False) -> bool:
        if not s.discriminators:
            return False
        for kind, steps, expected in s.discriminators:
            if kind == "profile" and ignore_profile:
                continue
            if expected is MISSING:
                return False
            if kind == "type":
                if isinstance(v, dict) and "resourceType" in v and not steps:
                    actual = v["resourceType"]
                elif not steps:
                    actual = tcode
                else:
                    got = self._at(v, steps)
                    actual = None
                    if got and isinstance(got[0], dict) and "resourceType" in got[0]:
                        actual = got[0]["resourceType"]
                    if actual is None:
                        return False
                if actual not in expected:
                    return False
                continue
            got = self._at(v, steps)
            if kind == "exists":
                if bool(got) != expected:
                    return False
            elif kind == "value":
                if not any(g == expected for g in got):
                    return False
            elif kind == "pattern":
                if not any(matches_pattern(expected, g) for g in got):
                    return False
            elif kind == "profile":
                if not any(isinstance(g, dict) and any(self._conforms(g, u) for u in expected)
                           for g in got):
                    return False
        return True

    def _at(self, v: Any, steps: list[tuple]) -> list:
        cur = [v]
        for step in steps:
            nxt: list = []
            for x in cur:
                if step[0] == "name":
                    if isinstance(x, dict) and step[1] in x:
                        y = x[step[1]]
                        nxt.extend(y if isinstance(y, list) else [y])
                    elif isinstance(x, dict):
                        # a choice name (value) matches valueX keys
                        for k, y in x.items():
                            if k.startswith(step[1]) and k[len(step[1]):] in self.suffixes:
                                nxt.append(y)
                elif step[0] == "ext":
                    if isinstance(x, dict):
                        nxt.extend(e for e in x.get("extension", ()) or ()
                                   if isinstance(e, dict) and e.get("url") == step[1])
                elif step[0] == "resolve":
                    if isinstance(x, dict) and x.get("reference"):
                        target = self._resolve(x["reference"])
                        if target is not None:
                            nxt.append(target)
                else:  # ofType / as: keep
                    nxt.append(x)
            cur = nxt
        return cur

    def _conforms(self, res: dict, url: str) -> bool:
        key = (id(res), url)
        hit = self._conformance.get(key)
        if hit is not None:
            return hit
        prof = self.state.profile(url) if self.state.knows(url) else None
        if prof is None:
            ok = url.startswith(CORE_PREFIX) and res.get("resourceType") == url[len(CORE_PREFIX):]
        elif prof.type != res.get("resourceType"):
            ok = False
        else:
            self._conformance[key] = True  # provisional: breaks reference cycles
            sub = Walker(self.state, must_support=False)
            sub._bundle = self._bundle
            sub._conformance = self._conformance
            sub.resource(prof, res, res.get("resourceType", "Resource"))
            ok = not any(i.severity == "error" for i in sub.issues)
        self._conformance[key] = ok
        return ok

    # ------------------------------------------------------------ references

    def _resolve(self, ref: str) -> dict | None:
        if ref.startswith("#"):
            return self._contained[-1].get(ref[1:]) if self._contained else None
        if self._bundle is not None:
            hit = self._bundle.get(ref)
            if hit is not None:
                return hit
            m = _REF_RE.search(ref)
            if m and not ref.startswith(("urn:",)):
                tail = ref[m.start(1):].split("/_history/")[0]
                return self._bundle.get(tail)
        return None

    def _reference(self, tref: TypeRef, v: dict, loc: str) -> None:
        ref = v.get("reference")
        rtype = v.get("type") if isinstance(v.get("type"), str) else None
        target = None
        if isinstance(ref, str):
            target = self._resolve(ref)
            if target is not None:
                rtype = target.get("resourceType") or rtype
            elif rtype is None:
                m = _REF_RE.search(ref)
                if m:
                    rtype = m.group(1)
        if rtype is None:
            return
        if tref.target_types is not None and rtype not in tref.target_types:
            allowed = ", ".join(sorted(tref.target_types))
            self._issue("error", "structure", loc, f"reference to a {rtype} is not allowed here "
                        f"(allowed: {allowed})")
            return
        if target is not None and tref.target_profiles:
            if not any(self._conforms(target, u) for u in tref.target_profiles
                       if self.state.knows(u)):
                self._issue("error", "structure", loc, "the referenced resource does not conform "
                            f"to {' or '.join(tref.target_profiles)}")

    # ------------------------------------------------------------ terminology

    def _binding(self, rule: Rule, v: Any, loc: str, tcode: str) -> None:
        exp = self.state.expansion(rule.value_set)
        result: bool | None
        if tcode in ("code", "string", "uri"):
            if not isinstance(v, str):
                return
            result, shown = exp.contains_code(v), repr(v)
        elif tcode == "Coding":
            if not isinstance(v, dict) or not v.get("code"):
                return
            result, shown = exp.contains(v.get("system"), v.get("code")), _coding(v)
        elif tcode == "Quantity":
            if not isinstance(v, dict) or not v.get("code"):
                return
            result, shown = exp.contains(v.get("system"), v.get("code")), _coding(v)
        else:  # CodeableConcept
            if not isinstance(v, dict):
                return
            codings = [c for c in v.get("coding", ()) or () if isinstance(c, dict) and c.get("code")]
            if not codings:
                if rule.strength == "required":
                    self._issue("error", "code-invalid", loc, "no code provided, and a code from "
                                f"the required ValueSet {strip_version(rule.value_set)} is needed")
                return
            results = [exp.contains(c.get("system"), c.get("code")) for c in codings]
            result = True if True in results else (None if None in results else False)
            shown = ", ".join(_coding(c) for c in codings)
        if result is True:
            return
        if result is None:
            self._issue("information", "informational", loc,
                        f"{shown} could not be checked against {rule.strength} ValueSet "
                        f"{strip_version(rule.value_set)}: {exp.problem or 'the ValueSet is not fully known'}")
            return
        severity = "error" if rule.strength == "required" else "warning"
        self._issue(severity, "code-invalid", loc, f"{shown} is not in the {rule.strength} "
                    f"ValueSet {strip_version(rule.value_set)}")

    # ------------------------------------------------------------ invariants

    def _invariants(self, rule: Rule, v: Any, loc: str) -> None:
        res = self._resources[-1] if self._resources else v
        env = {"resource": res, "rootResource": self._resources[0] if self._resources else v}
        node = v if (isinstance(v, dict) and "resourceType" in v) else \
            ResourceNode.create_node(v, rule.path.replace("[x]", ""))
        for inv in rule.invariants:
            try:
                out = inv.fn(node, env)
            except Exception as exc:  # an engine failure must not crash validation
                self._issue("warning", "invariant", loc, f"constraint {inv.key} could not be "
                            f"evaluated ({type(exc).__name__}: {exc}): {inv.expression}")
                continue
            if out and all(x is False for x in out):
                sev = "error" if inv.severity == "error" else "warning"
                self._issue(sev, "invariant", loc, f"constraint {inv.key} failed: {inv.human} "
                            f"[{inv.expression}] (from {rule.profile})")


def _coding(c: dict) -> str:
    system, code = c.get("system"), c.get("code")
    return f"{system}#{code}" if system else repr(code)
