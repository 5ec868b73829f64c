"""Reloading the stored SearchParameters (another process changed one) adds only those
that changed, and checking an expression parses it once, not once per base type."""
from __future__ import annotations

import pytest

from fhirgw.search import fhirpath
from fhirgw.search.custom import CustomParameters, check
from fhirgw.search.registry import SearchRegistry

SP = {"resourceType": "SearchParameter", "url": "http://example.org/sp/program",
      "name": "program", "status": "active", "code": "program", "base": ["Patient"],
      "type": "token", "expression": "Patient.extension('http://example.org/program')"}


@pytest.fixture
def custom(monkeypatch):
    registry = SearchRegistry()
    added: list[str] = []
    real_add = registry.add

    def add(body):
        added.append(body["url"])
        return real_add(body)

    monkeypatch.setattr(registry, "add", add)
    return CustomParameters(registry, engine=None), registry, added


def test_a_reload_adds_only_what_changed(custom):
    params, registry, added = custom
    params._reload([SP])
    assert added == [SP["url"]] and registry.get("Patient", "program") is not None
    params._reload([dict(SP)])                     # the same stored body again
    assert added == [SP["url"]]
    changed = dict(SP, expression="Patient.extension('http://example.org/program2')")
    params._reload([changed])
    assert added == [SP["url"]] * 2
    assert registry.get("Patient", "program").expression == changed["expression"]
    params._reload([])                             # deleted elsewhere
    assert registry.get("Patient", "program") is None
    params._reload([changed])                      # and stored again
    assert added == [SP["url"]] * 3 and registry.get("Patient", "program") is not None


def test_a_retired_parameter_leaves_on_reload(custom):
    params, registry, _added = custom
    params._reload([SP])
    params._reload([dict(SP, status="retired")])
    assert registry.get("Patient", "program") is None


def test_an_expression_is_parsed_once_for_all_its_base_types(monkeypatch):
    fhirpath._check_syntax.cache_clear()
    fhirpath._fhirpathpy_compiled.cache_clear()
    parsed: list[str] = []
    real = fhirpath._check_syntax.__wrapped__

    @fhirpath.functools.lru_cache(maxsize=16)
    def counting(expr):
        parsed.append(expr)
        return real(expr)

    monkeypatch.setattr(fhirpath, "_check_syntax", counting)
    body = dict(SP, url="http://example.org/sp/who", code="who",
                base=["Patient", "Practitioner", "RelatedPerson", "Person"],
                expression="name.where(use = 'official').family")
    check(body)
    assert parsed == [body["expression"]]
    with pytest.raises(ValueError, match="syntax error"):
        fhirpath.check_expression("name.where(", "Patient")
    with pytest.raises(ValueError):
        fhirpath.check_expression("name.nosuchfunction()", "Patient")
