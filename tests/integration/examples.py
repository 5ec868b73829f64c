"""The official FHIR R4 examples (hl7.fhir.r4.examples 4.0.1) and a strict JSON comparison.

``scripts/fetch_test_data.sh`` (run by ``make test``) puts the package under .cache/fhir.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / ".cache" / "fhir" / "hl7.fhir.r4.examples-4.0.1" / "package"
#: files above this size are left out to keep the run short: at 128 KiB, 157 files (105
#: StructureDefinitions, 19 CodeSystems, 14 spec-wide Bundles, 10 ValueSets, ...; 155 MB of
#: the 191 MB), leaving 5,136 examples of served types.
#: FHIRGW_EXAMPLE_MAX_BYTES=0 takes every file.
MAX_BYTES = int(os.environ.get("FHIRGW_EXAMPLE_MAX_BYTES", 128 * 1024)) or 1 << 40


@dataclass
class Example:
    name: str           # file name, e.g. Observation-example.json
    rtype: str
    raw: bytes


@dataclass
class ExampleSet:
    examples: list[Example]     # served types, within MAX_BYTES
    too_big: list[str]
    unsupported: list[str]      # R4 types the gateway does not serve
    not_resources: list[str]    # package.json, .index.json, ...


def load_examples() -> ExampleSet:
    out = ExampleSet([], [], [], [])
    if not PACKAGE.is_dir():
        return out
    from fhirgw.model.resources import SUPPORTED

    for path in sorted(PACKAGE.glob("*.json")):
        raw = path.read_bytes()
        try:
            head = json.loads(raw)
        except ValueError:
            out.not_resources.append(path.name)
            continue
        rtype = head.get("resourceType") if isinstance(head, dict) else None
        if not isinstance(rtype, str) or path.name in ("package.json", ".index.json"):
            out.not_resources.append(path.name)
        elif rtype not in SUPPORTED:
            out.unsupported.append(path.name)
        elif len(raw) > MAX_BYTES:
            out.too_big.append(path.name)
        else:
            out.examples.append(Example(path.name, rtype, raw))
    return out


class Num(str):
    """A JSON number kept as its exact text, so 72.50 != 72.5 in comparisons."""

    def __eq__(self, other):
        return type(other) is Num and str.__eq__(self, other)

    def __ne__(self, other):
        return not self.__eq__(other)

    __hash__ = str.__hash__

    def __repr__(self):
        return f"Num({str(self)})"


def strict(raw: bytes, drop=("id", "meta")):
    """Parse JSON keeping every number's text; drop the top-level keys the server owns."""
    data = json.loads(raw, parse_float=Num, parse_int=Num)
    if isinstance(data, dict):
        for k in drop:
            data.pop(k, None)
    return data


def first_difference(a, b, path="$") -> str | None:
    """Where two parsed JSON values first differ (for a readable failure message)."""
    if type(a) is not type(b):
        return f"{path}: {a!r:.80} != {b!r:.80}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}: only in {'sent' if k in a else 'read'}"
            d = first_difference(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items sent, {len(b)} read"
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{path}: sent {a!r:.80}, read {b!r:.80}"


def batch_body(examples: list[Example]) -> bytes:
    """A batch Bundle of POSTs built from the files' own bytes (no re-serialization)."""
    entries = [b'{"request":{"method":"POST","url":"' + e.rtype.encode() + b'"},"resource":'
               + e.raw + b"}" for e in examples]
    return b'{"resourceType":"Bundle","type":"batch","entry":[' + b",".join(entries) + b"]}"


def chunks(examples: list[Example], max_entries: int = 200, max_bytes: int = 4_000_000):
    batch: list[Example] = []
    size = 0
    for e in examples:
        if batch and (len(batch) >= max_entries or size + len(e.raw) > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(e)
        size += len(e.raw)
    if batch:
        yield batch
