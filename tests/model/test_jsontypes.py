"""The JSON type check of primitives (fhirgw/model/jsontypes.py): the compiled check of
the common types accepts only what the walk accepts, so that, with or without it, the
verdict and the error are the walk's."""
from __future__ import annotations

import copy
import random

import pytest

from fhirgw.model import jsontypes as J
from fhirgw.model.errors import InvalidResource
from fhirgw.model.resources import SUPPORTED, loads, model_class
from tests.integration.examples import load_examples

EXAMPLES = load_examples().examples
#: what a primitive is replaced by: every JSON type, and a float subclass (a decimal read
#: losslessly), so that each kind meets a value it must refuse
REPLACEMENTS = ["text", 1, -3, 1.5, loads(b"1.50"), True, False, None, [], {}, [1],
                ["x", None], [{"a": 1}], 12345678901234567890123]


def walk_ok(resource: dict, rtype: str) -> bool:
    return J._all_ok(resource, J._schema(model_class(rtype)))


def verdict(resource: dict, rtype: str):
    try:
        J.check_json_types(resource, rtype)
    except InvalidResource as exc:
        return exc.outcome()
    return None


def leaves(node, path=()):
    """The paths of the values in ``node`` (containers and primitives)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield path + (k,)
            yield from leaves(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield path + (i,)
            yield from leaves(v, path + (i,))


def replaced(node, path, value):
    """A copy of ``node`` with the value at ``path`` replaced."""
    out = copy.deepcopy(node)
    where = out
    for step in path[:-1]:
        where = where[step]
    where[path[-1]] = value
    return out


@pytest.fixture(scope="module")
def compiled():
    """Every served type compiled (the gateway compiles the common ones only)."""
    J.compile_checks(model_class(t) for t in sorted(SUPPORTED))
    return True


@pytest.mark.skipif(not EXAMPLES, reason="official examples not fetched (make test-data)")
def test_compiled_checks_accept_only_what_the_walk_accepts(compiled):
    """Official examples (600 of them, at random, seeded) and 12 of the values of each, each
    replaced in turn by a value of every JSON type: the compiled check never accepts what
    the walk refuses, and the verdicts (the errors included) are the walk's."""
    rng = random.Random(20261129)
    checked = refused = 0
    for ex in rng.sample(EXAMPLES, min(600, len(EXAMPLES))):
        resource = loads(ex.raw)
        model = model_class(ex.rtype)
        fast = J._FAST[model]
        paths = [p for p in leaves(resource) if p[-1] != "resourceType"]
        for path in [()] + rng.sample(paths, min(12, len(paths))):
            parent = resource
            for step in path[:-1]:
                parent = parent[step]
            kept = parent[path[-1]] if path else None
            for value in REPLACEMENTS if path else [None]:
                if path:
                    parent[path[-1]] = value
                try:
                    fast.validate_python(resource)
                    fast_ok = True
                except J.ValidationError:
                    fast_ok = False
                ok = walk_ok(resource, ex.rtype)
                assert ok or not fast_ok, (ex.name, path, value)
                if not ok:   # the error, found by the walk either way
                    del J._FAST[model]
                    try:
                        expected = verdict(resource, ex.rtype)
                    finally:
                        J._FAST[model] = fast
                    assert expected is not None and verdict(resource, ex.rtype) == expected
                checked += 1
                refused += not ok
            if path:
                parent[path[-1]] = kept
    assert checked > 50_000 and refused > 3_000   # the values reach checked elements


def test_compiled_check_sees_nested_and_contained_elements(compiled):
    rtype = "Patient"
    good = {"resourceType": rtype, "active": True, "multipleBirthInteger": 2,
            "contact": [{"name": {"family": "x", "period": {"start": "2020-01-01"}}}],
            "contained": [{"resourceType": "Practitioner", "active": False}],
            "extension": [{"url": "u", "valueDecimal": loads(b"1.50")},
                          {"url": "v", "extension": [{"url": "w", "valueBoolean": True}]}]}
    fast = J._FAST[model_class(rtype)]
    fast.validate_python(good)
    bad = [
        ("contact", 0, "name", "period", "start", 20200101),
        ("contained", 0, "active", 0),
        ("extension", 1, "extension", 0, "valueBoolean", "true"),
        ("extension", 0, "valueDecimal", "1.50"),
        ("multipleBirthInteger", 2.0),
        ("active", 1),
    ]
    for *path, value in bad:
        case = replaced(good, tuple(path), value)
        with pytest.raises(J.ValidationError):
            fast.validate_python(case)
        assert not walk_ok(case, rtype)
        with pytest.raises(InvalidResource):
            J.check_json_types(case, rtype)


def test_the_warm_types_are_compiled_when_a_server_warms_up():
    from fhirgw.validation.parallel import WARM_TYPES, warm_models

    warm_models()
    assert all(model_class(t) in J._FAST for t in WARM_TYPES if t in SUPPORTED)
