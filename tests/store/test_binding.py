"""The sqlite3 module binds None, bool and bytes through registered pass-through adapters
(store/db.py bind_directly): the stored values are what the module stores without them."""
import sqlite3

import pytest

from fhirgw.store.db import _PASS_THROUGH, bind_directly, make_engine


@pytest.fixture
def adapters():
    saved = dict(sqlite3.adapters)
    try:
        for cls in _PASS_THROUGH:
            sqlite3.adapters.pop((cls, sqlite3.PrepareProtocol), None)
        yield sqlite3.adapters
    finally:
        sqlite3.adapters.clear()
        sqlite3.adapters.update(saved)


ROW = (None, True, False, b"{\"a\": 1}", b"", 7, 2.5, "x")


def _stored(con):
    con.execute("CREATE TABLE t (a, b, c, d, e, f, g, h)")
    con.execute("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?)", ROW)
    con.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [ROW, ROW])
    return con.execute("SELECT *, typeof(a), typeof(b), typeof(c), typeof(d), typeof(e) "
                       "FROM t").fetchall()


def test_values_are_stored_as_without_the_adapters(adapters, tmp_path):
    without = _stored(sqlite3.connect(":memory:"))
    make_engine(f"sqlite:///{tmp_path / 'b.db'}")   # a SQLite engine registers them
    assert all((cls, sqlite3.PrepareProtocol) in adapters for cls in _PASS_THROUGH)
    with_them = _stored(sqlite3.connect(":memory:"))
    assert with_them == without
    assert with_them[0] == (None, 1, 0, b"{\"a\": 1}", b"", 7, 2.5, "x",
                            "null", "integer", "integer", "blob", "blob")


def test_an_adapter_registered_before_is_left_alone(adapters):
    sqlite3.register_adapter(bytes, lambda b: b.decode())
    bind_directly()
    con = sqlite3.connect(":memory:")
    assert con.execute("SELECT typeof(?)", (b"abc",)).fetchone() == ("text",)
    assert con.execute("SELECT typeof(?)", (None,)).fetchone() == ("null",)
