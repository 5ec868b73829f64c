"""``_summary`` and ``_elements``: reduce a resource's JSON for a search result.

Summary elements come from the R4B models' ``summary_element_property`` flags (the spec's
"isSummary"), top level; reduced resources get the ``SUBSETTED`` tag the spec asks for.
"""
from __future__ import annotations

import functools

from ..model.resources import model_class

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
             "code": "SUBSETTED", "display": "Resource encoded in summary mode"}
_ALWAYS = ("resourceType", "id", "meta")


@functools.lru_cache(maxsize=None)
def summary_elements(res_type: str) -> frozenset[str]:
    """Top-level JSON keys of ``res_type`` flagged isSummary (with their ``_x`` companions)."""
    try:
        model = model_class(res_type)
    except Exception:
        return frozenset(_ALWAYS)
    keys = set(_ALWAYS)
    for name, f in model.model_fields.items():
        if (f.json_schema_extra or {}).get("summary_element_property"):
            key = f.alias or name
            keys.add(key)
            keys.add("_" + key)
    return frozenset(keys)


def _tag(out: dict) -> dict:
    meta = dict(out.get("meta") or {})
    tags = list(meta.get("tag") or [])
    if not any(t.get("code") == "SUBSETTED" for t in tags if isinstance(t, dict)):
        tags.append(dict(SUBSETTED))
    meta["tag"] = tags
    out["meta"] = meta
    return out


def apply_elements(body: dict, summary: str | None = None,
                   elements: list[str] | None = None) -> dict:
    """A copy of ``body`` reduced per ``_summary`` (true/text/data) and/or ``_elements``.

    ``_summary=count`` and ``false`` leave bodies alone (count returns no bodies at all).
    ``_elements`` keeps the named top-level elements (``name.family`` keeps ``name``) plus
    the mandatory ``resourceType``, ``id`` and ``meta``.
    """
    if elements:
        wanted = {e.split(".", 1)[0] for e in elements} | set(_ALWAYS)
        wanted |= {"_" + w for w in wanted}
        return _tag({k: v for k, v in body.items() if k in wanted})
    if summary == "true":
        keys = summary_elements(body.get("resourceType", ""))
        return _tag({k: v for k, v in body.items() if k in keys})
    if summary == "text":
        return _tag({k: v for k, v in body.items() if k in _ALWAYS or k == "text"})
    if summary == "data":
        return _tag({k: v for k, v in body.items() if k != "text"})
    return body
