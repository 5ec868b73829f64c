"""FHIR R4 search: SearchParameter registry, index extraction, query parsing, SQL compilation.

Public API::

    engine = SearchEngine()                       # official R4 SearchParameters
    rows = engine.index_rows("Patient", patient)  # {"token": [...], "string": [...], ...}
    q = engine.parse("Patient", [("name", "smith"), ("_count", "10")], base_url=base)
    engine.find(conn, "Patient", q)               # [(rid, res_id), ...] (conditional ops)
    page = engine.search(conn, None, q, cursor=None)   # SearchPage

and :func:`apply_elements` for ``_summary`` / ``_elements``.
"""
from . import custom as _custom  # noqa: F401 - names the index keys for the store
from .elements import apply_elements
from .engine import MAX_INCLUDES, SearchEngine, SearchPage
from .parse import Criterion, Include, SearchQuery, SortKey
from .registry import SearchParam, SearchRegistry
from .sql import COMPARTMENTS

__all__ = ["SearchEngine", "SearchQuery", "SearchPage", "SearchRegistry", "SearchParam",
           "Criterion", "Include", "SortKey", "apply_elements", "COMPARTMENTS", "MAX_INCLUDES"]
