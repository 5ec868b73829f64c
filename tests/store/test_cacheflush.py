"""SQLite: a unit of work that waits before its commit (``Tx.commit_checks``, a transaction
Bundle waiting for its parallel validation) writes its pages to the WAL first
(``store.cacheflush``); what it wrote stays invisible until the commit, and is gone when the
wait ends in an error."""
from __future__ import annotations

import os
import sys

import pytest
from sqlalchemy import create_engine, text

from fhirgw.model.errors import Unprocessable
from fhirgw.search import SearchEngine
from fhirgw.store import cacheflush
from fhirgw.store.repository import Repository

needs_flush = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not cacheflush.available(),
    reason="early page writes need CPython on Linux with a shared SQLite library")


def _patients(n: int) -> list[tuple[str, dict, str]]:
    return [("Patient", {"resourceType": "Patient", "name": [{"family": f"Flush{i}"}]},
             f"p{i}") for i in range(n)]


def _count(eng) -> int:
    with eng.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM resource WHERE res_type = 'Patient'")
                            ).scalar()


def test_this_machine_can_flush_early():
    """The probe succeeds where the CI runs (Linux, the distribution's SQLite library)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux only")
    assert cacheflush.available()


@needs_flush
def test_the_pages_reach_the_wal_before_the_wait_and_count_only_after_the_commit(
        sqlite_engine, sqlite_url):
    repo = Repository(sqlite_engine, SearchEngine())
    assert repo.flush_early
    wal = sqlite_url.removeprefix("sqlite:///") + "-wal"
    seen = {}

    def unit(tx):
        tx.create_many(_patients(50))
        seen["before"] = os.path.getsize(wal) if os.path.exists(wal) else 0

        def check():   # the wait: the rows have been sent and their pages written
            seen["during"] = os.path.getsize(wal)
            seen["others see"] = _count(sqlite_engine)   # another connection, meanwhile
        tx.commit_checks.append(check)

    repo.run(unit)
    assert seen["during"] > seen["before"] + 50 * 4096 // 10
    assert seen["others see"] == 0
    assert _count(sqlite_engine) == 50


@needs_flush
def test_a_failed_wait_leaves_nothing_behind(sqlite_engine):
    repo = Repository(sqlite_engine, SearchEngine())
    repo.run(lambda tx: tx.create_many(_patients(3)))

    def unit(tx):
        tx.create_many(_patients(80))

        def check():
            raise Unprocessable("Bundle.entry[7]: invalid")
        tx.commit_checks.append(check)

    with pytest.raises(Unprocessable):
        repo.run(unit)
    assert _count(sqlite_engine) == 3
    # the frames written for it are overwritten by the next commit, which reads right
    repo.run(lambda tx: tx.create("Patient", {"resourceType": "Patient"}, validated=True))
    assert _count(sqlite_engine) == 4
    with sqlite_engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"


def test_no_early_writes_where_they_would_not_help(engine, monkeypatch):
    """Not on PostgreSQL (nothing to call), nor when turned off, nor when the probe fails."""
    repo = Repository(engine, SearchEngine())
    if repo.is_pg:
        assert repo.flush_early is False
        return
    monkeypatch.setattr(cacheflush, "_state", {})
    monkeypatch.setenv("FHIRGW_SQLITE_CACHEFLUSH", "0")
    assert cacheflush.available() is False
    monkeypatch.setattr(cacheflush, "_state", {})
    monkeypatch.delenv("FHIRGW_SQLITE_CACHEFLUSH")
    monkeypatch.setattr(cacheflush, "_PROBE", "import sys; sys.exit(4)")
    assert cacheflush.available() is False
    memory = create_engine("sqlite://")
    try:
        assert Repository(memory, SearchEngine()).flush_early is False
    finally:
        memory.dispose()
