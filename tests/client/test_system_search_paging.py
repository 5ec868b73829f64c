"""Regression: system-level search ``GET [base]?_type=Patient`` once dropped ``_type``
from its ``self`` and ``next`` links, so page 2 onwards returned every type."""
from __future__ import annotations

from fhir.resources.R4B.meta import Meta
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient

from .conftest import TAG_SYSTEM, tagged


def test_system_search_keeps_type_across_pages(client, tag):
    with client.transaction() as tx:
        for _ in range(3):
            tx.create(Patient(meta=Meta(**tagged(tag))))
            tx.create(Observation(meta=Meta(**tagged(tag)), status="final", code={"text": "x"}))
    found = client.search().params(f"_type=Patient&_tag={TAG_SYSTEM}|{tag}").page_size(1)
    pages = list(found.pages())
    assert all("_type=Patient" in (p.bundle["link"][0]["url"]) for p in pages)
    assert {type(r).__name__ for p in pages for r in p.resources} == {"Patient"}
