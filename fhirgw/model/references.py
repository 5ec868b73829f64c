"""Helpers over references: local ids, and rewriting links inside a resource."""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_HREF = re.compile(r'((?:href|src)=)"([^"]*)"')


def rewrite_links(node: Any, mapping: dict[str, str],
                  conditional: Callable[[str], str] | None = None,
                  is_conditional: Callable[[str], bool] | None = None) -> Any:
    """``node`` with every link to a key of ``mapping`` replaced by its value:
    ``reference`` values, uri-typed strings that equal a key exactly, and ``href``/``src``
    in narrative ``div``s. ``conditional`` resolves references that ``is_conditional``
    recognises (``Patient?identifier=...``).

    ``node`` is never changed: what holds a replaced link is copied, every part without
    one is shared with ``node`` (``node`` itself comes back when nothing changed). A
    transaction's resources are mostly codings and text without links: copying every dict
    and list of them cost about twice the walk.

    >>> rewrite_links({"subject": {"reference": "urn:uuid:1"}, "url": "urn:uuid:1",
    ...                "text": {"div": '<div><a href="urn:uuid:1">x</a></div>'}},
    ...               {"urn:uuid:1": "Patient/9"})
    {'subject': {'reference': 'Patient/9'}, 'url': 'Patient/9', 'text': {'div': '<div><a href="Patient/9">x</a></div>'}}
    >>> same = {"code": {"coding": [{"code": "x"}]}}
    >>> rewrite_links(same, {"urn:uuid:1": "Patient/9"}) is same
    True
    """
    resolve = conditional if is_conditional is not None else None

    def href(m: re.Match) -> str:
        return f'{m.group(1)}"{mapping.get(m.group(2), m.group(2))}"'

    def walk(node: Any) -> Any:
        cls = node.__class__
        if cls is dict:
            items = node.items()
        elif cls is list:
            items = enumerate(node)   # keys are ints: never "reference" nor "div"
        elif cls is str:
            return mapping.get(node, node)
        else:
            return node
        out = None
        for k, v in items:
            vc = v.__class__
            if vc is str:
                if k == "reference":
                    new = mapping.get(v)
                    if new is None:
                        if resolve is None or not is_conditional(v):
                            continue
                        new = resolve(v)
                elif k == "div":
                    if not mapping:
                        continue
                    new = _HREF.sub(href, v)
                    if new == v:   # links elsewhere only (``sub`` returns a new string)
                        continue
                else:
                    new = mapping.get(v)
                    if new is None:
                        continue
            elif vc is dict or vc is list:
                new = walk(v)
            else:
                continue
            if new is not v:
                if out is None:
                    out = cls(node)   # a shallow copy; the parts not changed are shared
                out[k] = new
        return node if out is None else out

    try:
        return walk(node)
    finally:
        # ``walk`` refers to itself through its closure: a cycle that reference counting
        # cannot free, holding ``conditional`` (in a transaction: the unit of work and all
        # it holds) until the garbage collector's next run
        walk = None  # noqa: F841


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
