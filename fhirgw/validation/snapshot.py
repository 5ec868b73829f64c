"""Snapshot generation: a differential applied over its base definition's snapshot.

A profile written as a differential (``derivation = constraint``) names only what it
changes. Validation needs the full element list, so the differential is laid over the base
definition's snapshot (generated first, recursively, if the base is itself a differential):

* an element whose id exists in the base is merged: the differential's cardinality, types,
  fixed/pattern value, binding, slicing and must-support replace the base's; its
  constraints are added to the base's;
* an element below a data type the base does not unroll (``Patient.name.family``) makes
  the generator unroll that type: the type's own snapshot (or that of the type profile the
  element names) is copied in below the element;
* a slice (``Patient.identifier:mrn``) is a copy of the sliced element and its children,
  inserted after the element's subtree and earlier slices;
* a choice element named by its type (``Observation.valueQuantity``) constrains
  ``value[x]`` to that type.

The output is a list of element dicts in snapshot order; elements taken from the base are
shallow copies, so nothing in the base definitions is ever modified.
"""
from __future__ import annotations

from typing import Callable

from .definitions import CORE_PREFIX, DefinitionError



class SnapshotError(DefinitionError):
    """A differential cannot be applied to its base."""


def split_id(element_id: str) -> tuple[str, str]:
    """``Patient.identifier:mrn.system`` -> (``Patient.identifier:mrn``, ``system``)."""
    depth = 0
    for i in range(len(element_id) - 1, -1, -1):
        ch = element_id[i]
        if ch == "]":
            depth += 1
        elif ch == "[":
            depth -= 1
        elif ch == "." and depth == 0:
            return element_id[:i], element_id[i + 1:]
    return "", element_id


def derive_id(element: dict) -> str:
    eid = element.get("id")
    if eid:
        return eid
    path = element.get("path")
    if not path:
        raise SnapshotError("a differential element has neither id nor path")
    if element.get("sliceName"):
        return f"{path}:{element['sliceName']}"
    return path


def _type_code(t: dict) -> str:
    code = t.get("code", "")
    if code.startswith("http://hl7.org/fhirpath/System."):
        return code.rsplit(".", 1)[1].lower()
    return code


class _Snapshot:
    def __init__(self, elements: list[dict], resolve: Callable[[str], list[dict] | None],
                 source: str):
        self.els = [dict(e) for e in elements]
        self.resolve = resolve
        self.source = source
        self._reindex()

    def _reindex(self) -> None:
        self.pos = {e["id"]: i for i, e in enumerate(self.els)}

    def _subtree_end(self, start: int, prefix: str, with_slices: bool) -> int:
        """Index after the last element below ``prefix`` (and its slices)."""
        end = start + 1
        while end < len(self.els):
            eid = self.els[end]["id"]
            if eid.startswith(prefix + ".") or (with_slices and eid.startswith(prefix + ":")):
                end += 1
            else:
                break
        return end

    def find(self, eid: str) -> int:
        hit = self.pos.get(eid)
        if hit is not None:
            return hit
        return self._create(eid)

    def _has_children(self, i: int) -> bool:
        eid = self.els[i]["id"]
        return i + 1 < len(self.els) and self.els[i + 1]["id"].startswith(eid + ".")

    def _create(self, eid: str) -> int:
        parent_id, last = split_id(eid)
        if not parent_id:
            raise SnapshotError(f"element {eid!r} is not in the base definition")
        name, _, slice_name = last.partition(":")
        if slice_name:
            base_id = f"{parent_id}.{name}"
            b = self.find(base_id)
            own_end = self._subtree_end(b, base_id, with_slices=False)
            insert_at = self._subtree_end(b, base_id, with_slices=True)
            copies = []
            for el in self.els[b:own_end]:
                c = dict(el)
                c["id"] = eid + el["id"][len(base_id):]
                copies.append(c)
            copies[0]["sliceName"] = slice_name
            copies[0].pop("slicing", None)
            self.els[insert_at:insert_at] = copies
            self._reindex()
            return insert_at
        p = self.find(parent_id)
        if not self._has_children(p):
            self._unroll(p)
            hit = self.pos.get(eid)
            if hit is not None:
                return hit
        # a choice element named by its type: Observation.valueQuantity -> value[x]
        for cand_id, i in list(self.pos.items()):
            cparent, clast = split_id(cand_id)
            if cparent == parent_id and clast.endswith("[x]") and \
                    name.startswith(clast[:-3]) and len(name) > len(clast) - 3:
                suffix = name[len(clast) - 3:]
                tcodes = [_type_code(t) for t in self.els[i].get("type", [])]
                for code in tcodes:
                    if code[:1].upper() + code[1:] == suffix:
                        return i
        raise SnapshotError(f"element {eid!r} is not in the base definition")

    def _unroll(self, i: int) -> None:
        """Copy the children of element i's type (or content reference) in below it."""
        el = self.els[i]
        eid, path = el["id"], el["path"]
        if el.get("contentReference"):
            ref = el["contentReference"].lstrip("#")
            src = self.pos.get(ref)
            if src is None:
                raise SnapshotError(f"content reference {ref!r} of {eid} not found")
            end = self._subtree_end(src, ref, with_slices=False)
            children = [(e["id"], e["path"]) for e in self.els[src + 1:end]]
            template = self.els[src + 1:end]
            new = []
            for e, (cid, cpath) in zip(template, children):
                c = dict(e)
                c["id"] = eid + cid[len(ref):]
                c["path"] = path + cpath[len(self.els[src]["path"]):]
                new.append(c)
        else:
            types = el.get("type") or []
            codes = {_type_code(t) for t in types}
            if len(codes) != 1:
                raise SnapshotError(f"cannot constrain below {eid}: it has "
                                    f"{len(codes)} types; constrain one choice type")
            t = types[0]
            elements = None
            for prof in t.get("profile", []) or []:
                elements = self.resolve(prof)
                if elements:
                    break
            if not elements:
                elements = self.resolve(CORE_PREFIX + _type_code(t))
            if not elements:
                raise SnapshotError(f"no definition for type {_type_code(t)!r} of {eid}")
            root_id, root_path = elements[0]["id"], elements[0]["path"]
            new = []
            for e in elements[1:]:
                c = dict(e)
                c["id"] = eid + e["id"][len(root_id):]
                c["path"] = path + e["path"][len(root_path):]
                new.append(c)
        self.els[i + 1:i + 1] = new
        self._reindex()

    def merge(self, i: int, diff: dict) -> None:
        el = self.els[i]
        for key, value in diff.items():
            if key in ("id", "path"):
                continue
            if key == "constraint":
                added = []
                for c in value:
                    c = dict(c)
                    c.setdefault("source", self.source)
                    added.append(c)
                keys = {c.get("key") for c in added}
                el["constraint"] = [c for c in el.get("constraint", [])
                                    if c.get("key") not in keys] + added
            elif key.startswith("fixed") or key.startswith("pattern"):
                for old in [k for k in el if k.startswith(("fixed", "pattern"))]:
                    del el[old]
                el[key] = value
            else:
                el[key] = value


def generate(sd: dict, resolve: Callable[[str], list[dict] | None]) -> list[dict]:
    """The snapshot elements of ``sd`` (its own when present, otherwise generated).

    ``resolve(url)`` returns the snapshot elements of another definition (base definitions
    and type profiles), generating them as needed.
    """
    own = (sd.get("snapshot") or {}).get("element")
    if own:
        return own
    url = sd.get("url", "?")
    if sd.get("derivation") != "constraint":
        raise SnapshotError(f"{url}: only constraint profiles can be generated from a "
                            "differential (derivation = constraint)")
    base_url = sd.get("baseDefinition")
    base = resolve(base_url) if base_url else None
    if not base:
        raise SnapshotError(f"{url}: base definition {base_url!r} is not known")
    snap = _Snapshot(base, resolve, url)
    diff = (sd.get("differential") or {}).get("element") or []
    for d in diff:
        eid = derive_id(d)
        i = snap.find(eid)
        if i == 0 and d.get("path", eid).split(".")[0] != snap.els[0]["path"].split(".")[0]:
            raise SnapshotError(f"{url}: differential root {eid!r} does not match the base")
        snap.merge(i, d)
        last = split_id(eid)[1]
        if snap.els[i]["id"].endswith("[x]") and not last.endswith("[x]") and ":" not in last \
                and "type" not in d:
            # Observation.valueQuantity: keep only the named type
            suffix_of = {(_type_code(t)[:1].upper() + _type_code(t)[1:]): t
                         for t in snap.els[i].get("type", [])}
            chosen = [t for sfx, t in suffix_of.items() if last.endswith(sfx)]
            if chosen:
                snap.els[i]["type"] = chosen[:1]
        if d.get("sliceName") and i > 0:
            snap.els[i]["sliceName"] = d["sliceName"]
    return snap.els
