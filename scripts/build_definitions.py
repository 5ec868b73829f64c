"""Regenerate the vendored FHIR R4 definitions from the official package.

Reads ``hl7.fhir.r4.examples@4.0.1`` (CC0, fetched by scripts/fetch_test_data.sh) and writes:

* ``fhirgw/model/data/resource_types.json``: every concrete R4 resource type, with a flag
  saying whether fhir.resources R4B models it.
* ``fhirgw/search/data/search_parameters.json``: the official SearchParameter definitions,
  reduced to the elements the search engine reads.
* ``fhirgw/search/data/compartments.json``: the official CompartmentDefinitions (Patient,
  Encounter, RelatedPerson, Practitioner, Device) as ``{compartment: {type: [params]}}``.
"""
from __future__ import annotations

import glob
import json
import os

import orjson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, ".cache", "fhir", "hl7.fhir.r4.examples-4.0.1", "package")

KEEP = ("url", "code", "name", "base", "type", "expression", "target", "modifier",
        "comparator", "multipleOr", "multipleAnd", "chain", "component", "description")


def resource_types() -> list[dict]:
    from fhir.resources.R4B import get_fhir_model_class

    out = []
    for path in sorted(glob.glob(os.path.join(PKG, "StructureDefinition-*.json"))):
        sd = orjson.loads(open(path, "rb").read())
        if sd.get("kind") != "resource" or sd.get("derivation") != "specialization":
            continue
        if sd.get("abstract"):
            continue
        try:
            get_fhir_model_class(sd["type"])
            modeled = True
        except Exception:
            modeled = False
        out.append({"type": sd["type"], "r4b_model": modeled})
    return sorted(out, key=lambda t: t["type"])


def search_parameters() -> list[dict]:
    bundle = orjson.loads(open(os.path.join(PKG, "Bundle-searchParams.json"), "rb").read())
    out = []
    for entry in bundle["entry"]:
        sp = entry["resource"]
        out.append({k: sp[k] for k in KEEP if k in sp})
    return out


def compartments() -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    for path in sorted(glob.glob(os.path.join(PKG, "CompartmentDefinition-*.json"))):
        cd = orjson.loads(open(path, "rb").read())
        if cd.get("url", "").startswith("http://hl7.org/fhir/CompartmentDefinition/") and \
                cd.get("id") != "example":
            out[cd["code"]] = {r["code"]: list(r["param"]) for r in cd.get("resource", [])
                               if r.get("param")}
    return out


def write_compartments() -> None:
    with open(os.path.join(ROOT, "fhirgw", "search", "data", "compartments.json"), "w") as f:
        json.dump({"fhirVersion": "4.0.1", "source": "hl7.fhir.r4.examples@4.0.1",
                   "compartments": compartments()}, f, indent=0, sort_keys=True)


def main() -> None:
    types = resource_types()
    with open(os.path.join(ROOT, "fhirgw", "model", "data", "resource_types.json"), "w") as f:
        json.dump({"fhirVersion": "4.0.1", "source": "hl7.fhir.r4.examples@4.0.1",
                   "types": types}, f, indent=0)
    params = search_parameters()
    with open(os.path.join(ROOT, "fhirgw", "search", "data", "search_parameters.json"), "w") as f:
        json.dump({"fhirVersion": "4.0.1", "source": "hl7.fhir.r4.examples@4.0.1",
                   "parameters": params}, f, indent=0)
    write_compartments()
    print(f"{len(types)} resource types, {len(params)} search parameters")


if __name__ == "__main__":
    main()
