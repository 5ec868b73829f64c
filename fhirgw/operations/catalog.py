"""The OperationDefinitions of the operations this server implements, published as data.

The official ones ($validate, $document, $process-message) are the R4 definitions; fhirgw's
own ($discharge, $schedule, $medication-handoff, $reindex) are authored in ``data/``. On
start they are stored as OperationDefinition resources (``GET [base]/OperationDefinition/
fhirgw-discharge``), written only when missing or changed, and the CapabilityStatement
names their canonical URLs.
"""
from __future__ import annotations

import functools
import glob
import os

import orjson

DATA = os.path.join(os.path.dirname(__file__), "data")


@functools.lru_cache(maxsize=1)
def definitions() -> dict[str, dict]:
    """code -> OperationDefinition."""
    out = {}
    for path in sorted(glob.glob(os.path.join(DATA, "OperationDefinition-*.json"))):
        with open(path, "rb") as f:
            od = orjson.loads(f.read())
        out[od["code"]] = od
    return out


def canonical(code: str) -> str:
    od = definitions().get(code)
    return od["url"] if od else f"http://fhirgw.dev/fhir/OperationDefinition/{code}"


def publish(repo) -> int:
    """Store every definition that is missing or differs; returns how many were written."""
    from ..model.errors import Gone, NotFound

    def unit(tx) -> int:
        written = 0
        for od in definitions().values():
            try:
                current = tx.read("OperationDefinition", od["id"]).resource()
                current.pop("meta", None)
                if current == od:
                    continue
            except (NotFound, Gone):
                pass
            tx.update("OperationDefinition", od["id"], dict(od))
            written += 1
        return written
    return repo.run(unit)
