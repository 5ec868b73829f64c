"""Build the vendored FHIR R4 core definitions the profile validator stands on.

The validator needs the official R4 StructureDefinitions (every resource, data type,
core profile and core extension, with their snapshots) to generate snapshots from
differentials, and the ValueSets and CodeSystems bound with strength ``required`` or
``extensible`` to check codes. The full npm package ``hl7.fhir.r4.examples@4.0.1`` is
190 MB; this script keeps only what validation reads (paths, cardinality, types, fixed and
pattern values, bindings, invariants, slicing) and writes one compact JSON file,
``fhirgw/validation/data/r4-core.json``, shipped as package data.

Run after ``scripts/fetch_test_data.sh``::

    python -m fhirgw.validation.build_core [PACKAGE_DIR]
"""
from __future__ import annotations

import glob
import os
import sys

import orjson

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "data", "r4-core.json")
DEFAULT_PACKAGE = os.path.join(HERE, "..", "..", ".cache", "fhir", "hl7.fhir.r4.examples-4.0.1",
                               "package")

#: element keys the validator reads; everything else (text, mappings, examples) is dropped
_ELEMENT_KEYS = {"id", "path", "sliceName", "min", "max", "type", "contentReference", "binding",
                 "constraint", "mustSupport", "slicing"}
#: ele-1 ("has a value or children") sits on every element of every definition; it is
#: a third of the file and base (model) validation already rejects empty elements
_DROPPED_CONSTRAINTS = {"ele-1"}
_SD_KEYS = {"resourceType", "url", "version", "name", "kind", "abstract", "type",
            "baseDefinition", "derivation", "context"}


def _compact_element(el: dict) -> dict:
    out = {k: v for k, v in el.items()
           if k in _ELEMENT_KEYS or k.startswith("fixed") or k.startswith("pattern")}
    if "binding" in out:
        out["binding"] = {k: v for k, v in out["binding"].items() if k in ("strength", "valueSet")}
    if "constraint" in out:
        out["constraint"] = [{k: c[k] for k in ("key", "severity", "human", "expression", "source")
                              if k in c} for c in out["constraint"]
                             if c.get("key") not in _DROPPED_CONSTRAINTS]
        if not out["constraint"]:
            del out["constraint"]
    if "type" in out:
        out["type"] = [{k: t[k] for k in ("code", "profile", "targetProfile") if k in t}
                       for t in out["type"]]
    return out


def _compact_sd(sd: dict) -> dict:
    out = {k: v for k, v in sd.items() if k in _SD_KEYS}
    out["snapshot"] = {"element": [_compact_element(e) for e in sd["snapshot"]["element"]]}
    return out


def _compact_concepts(concepts: list[dict]) -> list[dict]:
    out = []
    for c in concepts:
        item = {"code": c["code"]}
        if c.get("concept"):
            item["concept"] = _compact_concepts(c["concept"])
        out.append(item)
    return out


def _compact_vs(vs: dict) -> dict:
    out = {k: vs[k] for k in ("resourceType", "url", "version", "name") if k in vs}
    if "compose" in vs:
        compose = {}
        for part in ("include", "exclude"):
            if part in vs["compose"]:
                compose[part] = [{k: v for k, v in inc.items()
                                  if k in ("system", "version", "concept", "filter", "valueSet")}
                                 for inc in vs["compose"][part]]
                for inc in compose[part]:
                    if "concept" in inc:
                        inc["concept"] = [{"code": c["code"]} for c in inc["concept"]]
        out["compose"] = compose
    return out


def _compact_cs(cs: dict) -> dict:
    out = {k: cs[k] for k in ("resourceType", "url", "version", "name", "content",
                              "caseSensitive", "valueSet") if k in cs}
    out["concept"] = _compact_concepts(cs.get("concept", []))
    return out


def build(package_dir: str) -> dict:
    def load(pattern: str) -> list[dict]:
        return [orjson.loads(open(f, "rb").read())
                for f in sorted(glob.glob(os.path.join(package_dir, pattern)))]

    sds = [sd for sd in load("StructureDefinition-*.json") if "snapshot" in sd
           and sd.get("kind") != "logical"]
    valuesets = {vs["url"]: vs for vs in load("ValueSet-*.json")}
    codesystems = {cs["url"]: cs for cs in load("CodeSystem-*.json")}

    wanted_vs: set[str] = set()
    for sd in sds:
        for el in sd["snapshot"]["element"]:
            b = el.get("binding") or {}
            if b.get("strength") in ("required", "extensible") and b.get("valueSet"):
                wanted_vs.add(b["valueSet"].split("|")[0])
    keep_vs: dict[str, dict] = {}
    keep_cs: dict[str, dict] = {}
    todo = list(wanted_vs)
    while todo:
        url = todo.pop()
        if url in keep_vs or url not in valuesets:
            continue
        vs = valuesets[url]
        keep_vs[url] = _compact_vs(vs)
        for part in ("include", "exclude"):
            for inc in vs.get("compose", {}).get(part, []):
                todo.extend(v.split("|")[0] for v in inc.get("valueSet", []))
                system = inc.get("system")
                if system in codesystems and system not in keep_cs:
                    keep_cs[system] = _compact_cs(codesystems[system])
    return {"fhirVersion": "4.0.1",
            "source": "hl7.fhir.r4.examples@4.0.1",
            "StructureDefinition": [_compact_sd(sd) for sd in sds],
            "ValueSet": sorted(keep_vs.values(), key=lambda v: v["url"]),
            "CodeSystem": sorted(keep_cs.values(), key=lambda c: c["url"])}


def main(argv: list[str]) -> int:
    package_dir = argv[1] if len(argv) > 1 else DEFAULT_PACKAGE
    if not os.path.isdir(package_dir):
        print(f"no package at {package_dir}; run scripts/fetch_test_data.sh first", file=sys.stderr)
        return 1
    data = build(package_dir)
    with open(OUT, "wb") as f:
        f.write(orjson.dumps(data))
    print(f"wrote {OUT}: {len(data['StructureDefinition'])} StructureDefinitions, "
          f"{len(data['ValueSet'])} ValueSets, {len(data['CodeSystem'])} CodeSystems, "
          f"{os.path.getsize(OUT) // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
