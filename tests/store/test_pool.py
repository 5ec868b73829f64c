"""PostgreSQL pooled connections: checked at checkout without a round trip
(``store.db.looks_alive``), replaced when the server has ended them."""
from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine

from fhirgw.search import SearchEngine
from fhirgw.store.db import looks_alive, make_engine, migrate
from fhirgw.store.repository import Repository


@pytest.fixture
def pg_engine(pg_url):
    eng = make_engine(pg_url, pool_size=4)
    migrate(eng)
    yield eng
    eng.dispose()


def _patient(n: int) -> dict:
    return {"resourceType": "Patient", "name": [{"family": f"Pool{n}"}]}


def _backend_pids(eng, n: int) -> list[int]:
    """Check out ``n`` connections at once (so the pool holds ``n``), return their pids."""
    conns = [eng.connect() for _ in range(n)]
    try:
        return [c.exec_driver_sql("SELECT pg_backend_pid()").scalar() for c in conns]
    finally:
        for c in conns:
            c.close()


def test_units_go_on_after_the_server_ended_every_pooled_connection(pg_engine, pg_url):
    repo = Repository(pg_engine, SearchEngine())
    repo.run(lambda tx: tx.create("Patient", _patient(1), validated=True))
    pids = _backend_pids(pg_engine, 3)
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        ended = c.exec_driver_sql("SELECT count(*) FROM (SELECT pg_terminate_backend(p) "
                                  "FROM unnest(%(p)s::int[]) AS p) AS t",
                                  {"p": pids}).scalar()
    admin.dispose()
    assert ended == 3
    # every connection in the pool is dead; each unit still gets a live one
    for n in range(2, 6):
        stored = repo.run(lambda tx, n=n: tx.create("Patient", _patient(n), validated=True))
        assert repo.run(lambda tx, s=stored.stored: tx.read("Patient", s.res_id),
                        write=False).version == 1
    found = repo.run(lambda tx: tx.search("Patient", [("family", "Pool")]), write=False)
    assert len(found) == 5


def test_a_live_connection_is_checked_out_without_a_round_trip(pg_engine, pg_url):
    """The server's record of a pooled backend's last statement is still the previous
    unit's after the next checkout: nothing was sent to check it."""
    with pg_engine.connect() as c:
        pid = c.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        c.exec_driver_sql("SELECT 'the previous unit'")
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        with pg_engine.connect() as c:
            assert c.connection.driver_connection.info.backend_pid == pid   # the same one
            with admin.connect() as a:
                last = a.exec_driver_sql("SELECT query FROM pg_stat_activity WHERE pid = %(p)s",
                                         {"p": pid}).scalar()
            assert last in ("SELECT 'the previous unit'", "ROLLBACK")
    finally:
        admin.dispose()


def test_looks_alive_refuses_closed_and_mid_transaction_connections(pg_engine):
    raw = pg_engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert looks_alive(conn)
        conn.execute("SELECT 1")   # psycopg opens a transaction: not idle
        assert not looks_alive(conn)
        conn.rollback()
        assert looks_alive(conn)
    finally:
        raw.close()
    raw = pg_engine.raw_connection()
    conn = raw.driver_connection
    conn.close()
    assert not looks_alive(conn)
    raw.invalidate()


def test_a_connection_that_received_a_notification_is_kept(pg_engine, pg_url):
    """Something waiting on an idle connection's socket is not the end of it: libpq reads
    it, and the same backend serves the next checkout."""
    with pg_engine.connect() as c:
        pid = c.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        c.exec_driver_sql("LISTEN fhirgw_pool_test")
        c.commit()
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as a:
            a.exec_driver_sql("NOTIFY fhirgw_pool_test, 'hello'")
    finally:
        admin.dispose()
    time.sleep(0.2)   # the notification reaches the pooled connection's socket
    with pg_engine.connect() as c:
        raw = c.connection.driver_connection
        assert raw.info.backend_pid == pid
        assert c.exec_driver_sql("SELECT pg_backend_pid()").scalar() == pid


def test_the_pool_hands_out_the_connection_used_last(engine):
    """Both databases: a unit gets the connection the previous one returned (its page cache
    or backend warm), not the one that waited longest (``store.db.POOL_LIFO``)."""
    first, second = engine.connect(), engine.connect()
    first_raw, second_raw = first.connection.dbapi_connection, second.connection.dbapi_connection
    assert first_raw is not second_raw
    first.close()
    second.close()   # returned last
    for _ in range(3):
        with engine.connect() as c:
            assert c.connection.dbapi_connection is second_raw
