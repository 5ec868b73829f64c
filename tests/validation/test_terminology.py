"""Local ValueSet expansion: include/exclude, concept lists, whole systems, imports, filters."""
from __future__ import annotations

from fhirgw.validation.terminology import Terminology

CS = {
    "http://x/cs/colors": {"url": "http://x/cs/colors", "content": "complete", "concept": [
        {"code": "warm", "concept": [{"code": "red"}, {"code": "orange"}]},
        {"code": "cool", "concept": [{"code": "blue"}, {"code": "green"}]}]},
}


def _term(*valuesets):
    vs = {v["url"]: v for v in valuesets}
    return Terminology(vs.get, CS.get)


def _vs(url, include, exclude=None):
    compose = {"include": include}
    if exclude:
        compose["exclude"] = exclude
    return {"resourceType": "ValueSet", "url": url, "compose": compose}


def test_concept_list_and_exclude():
    t = _term(_vs("http://x/vs/a", [{"system": "http://x/cs/colors"}],
                  [{"system": "http://x/cs/colors", "concept": [{"code": "red"}]}]))
    exp = t.expand("http://x/vs/a|1.0")
    assert exp.complete
    assert exp.contains("http://x/cs/colors", "blue") is True
    assert exp.contains("http://x/cs/colors", "red") is False
    assert exp.contains("http://other", "blue") is False
    assert exp.contains_code("orange") is True


def test_unknown_whole_system_is_open():
    exp = _term(_vs("http://x/vs/b", [{"system": "http://loinc.org"}])).expand("http://x/vs/b")
    assert exp.contains("http://loinc.org", "44261-6") is True
    assert exp.contains("http://snomed.info/sct", "1") is False


def test_filters_and_imports():
    t = _term(_vs("http://x/vs/warm", [{"system": "http://x/cs/colors",
                                         "filter": [{"property": "concept", "op": "is-a",
                                                     "value": "warm"}]}]),
              _vs("http://x/vs/warm-only", [{"valueSet": ["http://x/vs/warm"]}],
                  [{"system": "http://x/cs/colors", "concept": [{"code": "warm"}]}]),
              _vs("http://x/vs/desc", [{"system": "http://x/cs/colors",
                                         "filter": [{"property": "concept",
                                                     "op": "descendent-of", "value": "cool"}]}]))
    warm = t.expand("http://x/vs/warm")
    assert {c for _, c in warm.codes} == {"warm", "red", "orange"}
    only = t.expand("http://x/vs/warm-only")
    assert {c for _, c in only.codes} == {"red", "orange"}
    assert {c for _, c in t.expand("http://x/vs/desc").codes} == {"blue", "green"}


def test_unknown_value_set_and_filter_are_unknown_not_false():
    t = _term(_vs("http://x/vs/snomed", [{"system": "http://snomed.info/sct",
                                           "filter": [{"property": "concept", "op": "is-a",
                                                       "value": "404684003"}]}]))
    assert t.expand("http://x/vs/missing").contains("http://a", "b") is None
    exp = t.expand("http://x/vs/snomed")
    assert not exp.complete and exp.contains("http://snomed.info/sct", "1") is None


def test_expansion_is_cached_until_cleared():
    vs = _vs("http://x/vs/c", [{"system": "http://x/cs/colors", "concept": [{"code": "red"}]}])
    t = _term(vs)
    first = t.expand("http://x/vs/c")
    assert t.expand("http://x/vs/c") is first
    t.clear()
    assert t.expand("http://x/vs/c") is not first
