"""``date_range``: full instants take a fast path (``datetime.fromisoformat``); it must give
what the general parser gives, and refuse what it refuses."""
import random
import re

import pytest

from fhirgw.search import values
from fhirgw.search.values import DateFormatError, date_range


def _general(value: str):
    saved, values._RE_INSTANT = values._RE_INSTANT, re.compile(r"(?!)")   # never matches
    try:
        return date_range(value)
    finally:
        values._RE_INSTANT = saved


def _answer(fn, value):
    try:
        return fn(value)
    except DateFormatError:
        return "refused"


EDGES = ["2026-11-28T18:44:05.961388+00:00", "2026-11-28T18:44:05Z", "2026-11-28T18:44:05.1-05:30",
         "1969-12-31T23:59:59.999999+14:00", "2024-02-29T12:00:00+23:59", "0001-01-01T00:00:00Z",
         "2026-02-30T10:00:00Z", "2026-13-01T00:00:00Z", "2026-01-01T24:00:00Z",
         "2026-01-01T00:00:60Z", "2026-01-01T00:00:00.1234567Z", "2026-01-01T00:00:00+2:00",
         "2026-01-01T00:00:00", "2026-01-01T00:00Z", "2026-01-01"]


def _random_instants(n: int):
    rnd = random.Random(20261128)
    for _ in range(n):
        frac = rnd.choice(["", "." + str(rnd.randint(0, 999999)).zfill(6)[:rnd.randint(1, 6)]])
        yield (f"{rnd.randint(1, 9998):04d}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 31):02d}"
               f"T{rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}:{rnd.randint(0, 59):02d}"
               f"{frac}{rnd.choice(['Z', '+00:00', '-05:00', '+14:00', '-12:00', '+05:45'])}")


@pytest.mark.parametrize("value", EDGES)
def test_edges_agree(value):
    assert _answer(date_range, value) == _answer(_general, value)


def test_random_instants_agree():
    for value in _random_instants(2000):
        assert _answer(date_range, value) == _answer(_general, value), value


def test_precision_sets_the_width():
    low, high = date_range("2026-01-05T10:00:00.5Z")
    assert high - low == 100_000 - 1
    low, high = date_range("2026-01-05T10:00:00+01:00")
    assert high - low == 1_000_000 - 1 and low == date_range("2026-01-05T09:00:00Z")[0]
