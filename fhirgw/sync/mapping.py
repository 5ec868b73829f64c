"""The mapping engine: a partner's declarative mapping file (YAML or JSON, in ``mappings/``)
translates resources going out to the partner and coming in from it.

    partner: ehr-north
    identifier_systems:            # ours -> theirs going out; reversed coming in
      "http://fhirgw.dev/fhir/sid/business-id": "urn:oid:2.16.840.1.113883.3.7204.1"
    out:
      codes:                       # code translation through a ConceptMap in mappings/
        - path: ServiceRequest.code
          conceptmap: ConceptMap-ehr-north-services.json
          unmapped: error          # error (default: dead-letters the delivery) or keep
      rename:                      # element renames (same resource)
        - {from: ServiceRequest.patientInstruction, to: ServiceRequest.note.text}
      defaults:                    # set when absent
        - {path: ServiceRequest.priority, value: routine}
      remove: [Patient.telecom]
    in:
      codes:
        - {path: Task.businessStatus, conceptmap: ConceptMap-ehr-north-services.json,
           reverse: true, unmapped: keep}

Paths are FHIRPath-like: a resource type, then element names; lists are walked
element-wise (``ServiceRequest.code`` is a CodeableConcept, ``Task.output.type`` reaches
every output). A code path may name a CodeableConcept, a Coding, or a ``code`` element.

>>> m = Mapping.from_dict({"identifier_systems": {"urn:ours": "urn:theirs"},
...     "out": {"defaults": [{"path": "Task.priority", "value": "routine"}]}})
>>> m.apply({"resourceType": "Task", "identifier": [{"system": "urn:ours", "value": "1"}]}, "out")
{'resourceType': 'Task', 'identifier': [{'system': 'urn:theirs', 'value': '1'}], 'priority': 'routine'}
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import mapping_path


class MappingError(ValueError):
    """A resource cannot be mapped (the message says which element and why)."""


# ---------------------------------------------------------------- paths

def _split(path: str) -> tuple[str, list[str]]:
    parts = [p for p in path.strip().split(".") if p]
    if len(parts) < 2 or not parts[0][:1].isupper():
        raise MappingError(f"path {path!r} must be Type.element[.element...]")
    return parts[0], parts[1:]


def get_path(node: Any, segs: list[str]) -> list[Any]:
    """Every value at ``segs`` under ``node`` (lists flattened).

    >>> get_path({"a": [{"b": 1}, {"b": 2}, {}]}, ["a", "b"])
    [1, 2]
    """
    current = [node]
    for s in segs:
        nxt = []
        for n in current:
            if isinstance(n, dict) and s in n:
                v = n[s]
                nxt.extend(v if isinstance(v, list) else [v])
        current = nxt
    return current


def parents(node: Any, segs: list[str]) -> list[dict]:
    """The dicts holding the last segment of ``segs``."""
    return [p for p in get_path(node, segs[:-1]) if isinstance(p, dict)] if len(segs) > 1 \
        else ([node] if isinstance(node, dict) else [])


def set_path(node: dict, segs: list[str], value: Any) -> None:
    """Set ``value`` at ``segs``, creating objects on the way (into the first list item)."""
    for s in segs[:-1]:
        nxt = node.get(s)
        if isinstance(nxt, list):
            if not nxt:
                nxt.append({})
            nxt = nxt[0]
        if not isinstance(nxt, dict):
            nxt = {}
            node[s] = nxt
        node = nxt
    node[segs[-1]] = copy.deepcopy(value)


# ---------------------------------------------------------------- ConceptMaps

@dataclass
class ConceptMap:
    url: str
    #: (source system, code) -> (target system, code, display)
    forward: dict[tuple[str | None, str], tuple[str | None, str, str | None]]
    reverse: dict[tuple[str | None, str], tuple[str | None, str, str | None]]

    @classmethod
    def from_resource(cls, cm: dict) -> ConceptMap:
        if cm.get("resourceType") != "ConceptMap":
            raise MappingError("a conceptmap file must hold a ConceptMap resource")
        fwd, rev = {}, {}
        for g in cm.get("group") or []:
            src, tgt = g.get("source"), g.get("target")
            for el in g.get("element") or []:
                for t in el.get("target") or []:
                    if t.get("equivalence") in ("unmatched", "disjoint") or not t.get("code"):
                        continue
                    fwd.setdefault((src, el["code"]), (tgt, t["code"], t.get("display")))
                    rev.setdefault((tgt, t["code"]), (src, el["code"], el.get("display")))
        return cls(cm.get("url") or "", fwd, rev)

    def translate(self, system: str | None, code: str, reverse: bool = False):
        table = self.reverse if reverse else self.forward
        return table.get((system, code)) or (table.get((None, code)) if system is None else None)

    def knows_system(self, system: str | None, reverse: bool = False) -> bool:
        table = self.reverse if reverse else self.forward
        return any(s == system for s, _c in table)


@dataclass
class CodeRule:
    path: str
    conceptmap: ConceptMap
    reverse: bool = False
    unmapped: str = "error"


@dataclass
class Direction:
    codes: list[CodeRule] = field(default_factory=list)
    rename: list[tuple[str, str]] = field(default_factory=list)
    defaults: list[tuple[str, Any]] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)


@dataclass
class Mapping:
    name: str = ""
    identifier_systems: dict[str, str] = field(default_factory=dict)
    out: Direction = field(default_factory=Direction)
    inbound: Direction = field(default_factory=Direction)

    # ------------------------------------------------------------ loading

    @classmethod
    def load(cls, name: str) -> Mapping:
        p = mapping_path(name)
        try:
            text = p.read_text()
        except OSError as exc:
            raise MappingError(f"mapping file {p}: {exc}") from None
        try:
            if p.suffix == ".json":
                data = json.loads(text)
            else:
                import yaml
                data = yaml.safe_load(text) or {}
        except Exception as exc:  # noqa: BLE001
            raise MappingError(f"mapping file {p}: {exc}") from None
        return cls.from_dict(data, base=p.parent, name=str(p))

    @classmethod
    def from_dict(cls, data: dict, base: Path | None = None, name: str = "") -> Mapping:
        maps: dict[str, ConceptMap] = {}

        def conceptmap(ref: str) -> ConceptMap:
            if ref not in maps:
                p = Path(ref)
                if not p.is_absolute():
                    p = (base or mapping_path(".")) / ref
                try:
                    maps[ref] = ConceptMap.from_resource(json.loads(p.read_text()))
                except (OSError, ValueError) as exc:
                    raise MappingError(f"{name}: ConceptMap {ref}: {exc}") from None
            return maps[ref]

        def direction(raw: dict | None, default_reverse: bool) -> Direction:
            raw = raw or {}
            d = Direction()
            for c in raw.get("codes") or []:
                _split(c["path"])
                d.codes.append(CodeRule(c["path"], conceptmap(c["conceptmap"]),
                                        bool(c.get("reverse", default_reverse)),
                                        c.get("unmapped", "error")))
            for r in raw.get("rename") or []:
                t1, _ = _split(r["from"])
                t2, _ = _split(r["to"])
                if t1 != t2:
                    raise MappingError(f"{name}: rename {r['from']} -> {r['to']} changes type")
                d.rename.append((r["from"], r["to"]))
            for r in raw.get("defaults") or []:
                _split(r["path"])
                d.defaults.append((r["path"], r["value"]))
            for r in raw.get("remove") or []:
                _split(r)
                d.remove.append(r)
            return d

        if not isinstance(data, dict):
            raise MappingError(f"{name}: a mapping file holds a mapping (an object)")
        return cls(name or data.get("partner", ""), dict(data.get("identifier_systems") or {}),
                   direction(data.get("out"), False), direction(data.get("in"), False))

    # ------------------------------------------------------------ applying

    @property
    def is_identity(self) -> bool:
        return not self.identifier_systems and not any(
            d.codes or d.rename or d.defaults or d.remove for d in (self.out, self.inbound))

    def apply(self, resource: dict, direction: str) -> dict:
        """A mapped copy of ``resource`` (``direction`` "out" or "in"); MappingError if a
        rule cannot be met."""
        if direction not in ("out", "in"):
            raise ValueError("direction is 'out' or 'in'")
        if self.is_identity:
            return resource
        body = copy.deepcopy(resource)
        rtype = body.get("resourceType")
        systems = self.identifier_systems if direction == "out" else \
            {v: k for k, v in self.identifier_systems.items()}
        if systems:
            _rewrite_identifiers(body, systems)
        d = self.out if direction == "out" else self.inbound
        for path in d.remove:
            t, segs = _split(path)
            if t == rtype:
                for p in parents(body, segs):
                    p.pop(segs[-1], None)
        for src, dst in d.rename:
            t, s1 = _split(src)
            if t != rtype:
                continue
            _t, s2 = _split(dst)
            values = get_path(body, s1)
            if not values:
                continue
            for p in parents(body, s1):
                p.pop(s1[-1], None)
            set_path(body, s2, values if len(values) > 1 else values[0])
        for rule in d.codes:
            t, segs = _split(rule.path)
            if t == rtype:
                _translate(body, segs, rule)
        for path, value in d.defaults:
            t, segs = _split(path)
            if t == rtype and not get_path(body, segs):
                set_path(body, segs, value)
        return body

    def apply_all(self, resource: dict, direction: str) -> dict:
        """Like ``apply``; a Bundle has each entry's resource mapped."""
        if resource.get("resourceType") != "Bundle":
            return self.apply(resource, direction)
        out = dict(resource)
        out["entry"] = []
        for i, e in enumerate(resource.get("entry") or []):
            e = dict(e)
            if isinstance(e.get("resource"), dict):
                try:
                    e["resource"] = self.apply(e["resource"], direction)
                except MappingError as exc:
                    raise MappingError(f"Bundle.entry[{i}]: {exc}") from None
            out["entry"].append(e)
        return out


IDENTITY = Mapping()


def _rewrite_identifiers(node: Any, systems: dict[str, str]) -> None:
    if isinstance(node, dict):
        if "value" in node and isinstance(node.get("system"), str) and node["system"] in systems:
            node["system"] = systems[node["system"]]
        for v in node.values():
            if isinstance(v, (dict, list)):
                _rewrite_identifiers(v, systems)
    elif isinstance(node, list):
        for v in node:
            _rewrite_identifiers(v, systems)


def _translate(body: dict, segs: list[str], rule: CodeRule) -> None:
    cm = rule.conceptmap
    where = f"{body.get('resourceType')}.{'.'.join(segs)}"

    def coding(c: dict) -> bool:
        system, code = c.get("system"), c.get("code")
        if not code:
            return False
        hit = cm.translate(system, code, rule.reverse)
        if hit is None:
            return False
        c["system"], c["code"] = hit[0], hit[1]
        if hit[2]:
            c["display"] = hit[2]
        elif "display" in c:
            del c["display"]
        return True

    def missing(what: str) -> MappingError:
        return MappingError(f"{where}: {what} has no translation in ConceptMap "
                            f"{cm.url or '(no url)'}")

    for value in get_path(body, segs):
        if isinstance(value, dict) and isinstance(value.get("coding"), list):
            codings = [c for c in value["coding"] if isinstance(c, dict)]
            mapped = [coding(c) for c in codings]
            if rule.unmapped == "error" and codings and not any(mapped):
                raise missing(" / ".join(f"{c.get('system') or ''}|{c.get('code')}"
                                         for c in codings))
        elif isinstance(value, dict) and "code" in value:
            if not coding(value) and rule.unmapped == "error":
                raise missing(f"{value.get('system') or ''}|{value.get('code')}")
    # plain code elements (e.g. Appointment.status)
    for p in parents(body, segs):
        v = p.get(segs[-1])
        if isinstance(v, str):
            hit = cm.translate(None, v, rule.reverse)
            if hit is None and rule.unmapped == "error":
                raise MappingError(f"{where}: code {v!r} has no translation in ConceptMap "
                                   f"{cm.url or '(no url)'}")
            if hit is not None:
                p[segs[-1]] = hit[1]


_cache: dict[str, Mapping] = {}


def for_partner(name: str | None) -> Mapping:
    """The partner's mapping (cached); no name is the identity mapping."""
    if not name:
        return IDENTITY
    if name not in _cache:
        _cache[name] = Mapping.load(name)
    return _cache[name]
