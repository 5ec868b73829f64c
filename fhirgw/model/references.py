"""Helpers over references: local ids, and rewriting links inside a resource."""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_HREF = re.compile(r'((?:href|src)=)"([^"]*)"')


def rewrite_links(node: Any, mapping: dict[str, str],
                  conditional: Callable[[str], str] | None = None,
                  is_conditional: Callable[[str], bool] | None = None) -> Any:
    """A copy of ``node`` with every link to a key of ``mapping`` replaced by its value:
    ``reference`` values, uri-typed strings that equal a key exactly, and ``href``/``src``
    in narrative ``div``s. ``conditional`` resolves references that ``is_conditional``
    recognises (``Patient?identifier=...``).

    >>> rewrite_links({"subject": {"reference": "urn:uuid:1"}, "url": "urn:uuid:1",
    ...                "text": {"div": '<div><a href="urn:uuid:1">x</a></div>'}},
    ...               {"urn:uuid:1": "Patient/9"})
    {'subject': {'reference': 'Patient/9'}, 'url': 'Patient/9', 'text': {'div': '<div><a href="Patient/9">x</a></div>'}}
    """
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                if v in mapping:
                    v = mapping[v]
                elif conditional is not None and is_conditional is not None and is_conditional(v):
                    v = conditional(v)
                out[k] = v
            elif k == "div" and isinstance(v, str) and mapping:
                out[k] = _HREF.sub(lambda m: f'{m.group(1)}"{mapping.get(m.group(2), m.group(2))}"', v)
            else:
                out[k] = rewrite_links(v, mapping, conditional, is_conditional)
        return out
    if isinstance(node, list):
        return [rewrite_links(v, mapping, conditional, is_conditional) for v in node]
    if isinstance(node, str) and node in mapping:
        return mapping[node]
    return node


def local_id(reference: dict | None, res_type: str) -> str | None:
    """The id in ``{"reference": "Type/id"}`` when it names a local ``res_type``.

    >>> local_id({"reference": "Organization/acme"}, "Organization")
    'acme'
    >>> local_id({"reference": "http://elsewhere/fhir/Organization/acme"}, "Organization") is None
    True
    """
    ref = (reference or {}).get("reference") or ""
    head, _, rid = ref.partition("/")
    return rid if head == res_type and rid and "/" not in rid else None
