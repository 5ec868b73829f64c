"""The audit trail's child writer process: used under load, same rows, never loses events."""
from __future__ import annotations

import os
import time

import pytest
from sqlalchemy import text

from fhirgw.search import SearchEngine
from fhirgw.security.audit import AuditTrail, install_rule, rest_event
from fhirgw.security.principal import Principal, Scopes
from fhirgw.store.repository import Repository
from fhirgw.store.tables import param_key

PARTNER = Principal("acme-client", "Acme Referrals", Scopes.parse("system/*.rs"),
                    organization="Organization/acme", token_id="jti-1")

ALTID = {"resourceType": "SearchParameter", "url": "http://example.org/sp/x-altid",
         "name": "XAltid", "status": "active", "description": "the client id",
         "code": "x-altid", "base": ["AuditEvent"], "type": "token",
         "expression": "AuditEvent.agent.altId"}


def _events(n, start=0):
    return [rest_event(PARTNER, "read", 200, resource_refs=[f"Observation/o{i}"],
                       patient_refs=[f"Patient/p{i % 7}"]) for i in range(start, start + n)]


def _wait_ready(trail, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if trail.child is not None and (trail.child.ready or trail.child.failed):
            return trail.child.ready
        time.sleep(0.05)
    return False


AUDIT_EVENTS = "SELECT count(*) FROM resource WHERE res_type = 'AuditEvent'"


def _count(repo, sql):
    with repo.engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


@pytest.fixture
def repo(engine):
    r = Repository(engine, SearchEngine())
    install_rule(r)
    # a stored custom parameter on AuditEvent: the child must index it too
    r.run(lambda tx: tx.create("SearchParameter", dict(ALTID), validated=True))
    return r


def test_batches_go_to_the_child_under_load(repo):
    before = _count(repo, AUDIT_EVENTS)   # the SearchParameter's write has its own
    trail = AuditTrail(repo, flush_interval=0.05, max_batch=50, offload_at=0)
    try:
        for e in _events(60):        # the first batch starts the child
            trail.record(e)
        assert trail.flush(30)
        # stored here meanwhile (the child takes a second to start), by this repo's search
        # engine, which has not loaded the stored parameter
        in_process = 0 if trail.child.ready else 60
        assert _wait_ready(trail), "the writer process did not start"
        assert trail.child.pid != os.getpid() and trail.child.info["pid"] == trail.child.pid
        # a long-running process: its collector tuned as the server's
        from fhirgw.runtime import GC_THRESHOLD
        assert tuple(trail.child.info["gc_threshold"]) == GC_THRESHOLD
        db_file = repo.engine.url.database if repo.engine.dialect.name == "sqlite" else None
        if db_file:
            with repo.engine.connect() as conn:   # everything so far in the file
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            size_before = os.path.getsize(db_file)
        for e in _events(240, start=60):
            trail.record(e)
        assert trail.flush(30)
        assert trail.written == 300 and trail.lost == 0
        assert _count(repo, AUDIT_EVENTS) - before == 300
        # every event has its index rows (the custom parameter's too): searchable as usual
        # (AuditEvent.patient is derived: the entity rows of Patients)
        assert _count(repo, "SELECT count(*) FROM sp_reference WHERE pid = "
                            f"{param_key('AuditEvent', 'entity')} AND target_type = 'Patient' "
                            "AND target_id = 'p3'") == len([i for i in range(300) if i % 7 == 3])
        # the child loaded the stored SearchParameter and indexed its events by it
        assert _count(repo, "SELECT count(*) FROM sp_token WHERE pid = "
                            f"{param_key('AuditEvent', 'x-altid')} AND code = 'acme-client'") \
            == 300 - in_process
        if db_file:
            # the child checkpoints the WAL pages it wrote (no checkpointer runs here): the
            # database file grows only when pages are copied back from the WAL
            deadline = time.monotonic() + 10
            while os.path.getsize(db_file) == size_before and time.monotonic() < deadline:
                time.sleep(0.1)
            assert os.path.getsize(db_file) > size_before
    finally:
        trail.close()
    assert trail.child.pid is None   # stopped with the trail


def test_a_dead_child_loses_nothing(repo):
    before = _count(repo, AUDIT_EVENTS)
    trail = AuditTrail(repo, flush_interval=0.05, max_batch=50, offload_at=0,
                       retry_delay=0.01)
    try:
        for e in _events(60):
            trail.record(e)
        assert trail.flush(30) and _wait_ready(trail)
        trail.child._proc.kill()
        trail.child._proc.join(5)
        for e in _events(100, start=60):
            trail.record(e)
        assert trail.flush(30)
        assert trail.lost == 0 and trail.written == 160
        assert trail.child.failed     # not used again: the thread stores the batches
        assert _count(repo, AUDIT_EVENTS) - before == 160
    finally:
        trail.close()


def test_no_child_without_load_or_for_a_memory_database():
    from fhirgw.security.audit_writer import can_offload
    from fhirgw.store.db import migrate
    from sqlalchemy import create_engine
    from sqlalchemy.pool import StaticPool

    engine = create_engine("sqlite://", poolclass=StaticPool,
                           connect_args={"check_same_thread": False})
    migrate(engine)
    repo = Repository(engine, SearchEngine())
    assert not can_offload(repo)
    trail = AuditTrail(repo, flush_interval=0.05, max_batch=10, offload_at=0)
    for e in _events(30):
        trail.record(e)
    assert trail.flush(10) and trail.written == 30
    assert trail.child is None and trail.offload_at is None
    trail.close()


def test_a_busy_writer_thread_starts_the_child(repo):
    # no backlog threshold, only the share of time spent storing
    trail = AuditTrail(repo, flush_interval=0.01, max_batch=20, offload_at=10**9,
                       offload_busy=0.0, offload_window=0.05)
    try:
        for round_ in range(10):
            for e in _events(20, start=round_ * 20):
                trail.record(e)
            assert trail.flush(30)
            time.sleep(0.02)
        assert trail.child is not None
        assert _wait_ready(trail)
    finally:
        trail.close()


def test_light_load_stays_in_process(repo):
    trail = AuditTrail(repo, flush_interval=0.01, max_batch=20, offload_window=0.3)
    try:
        for round_ in range(8):
            trail.record(_events(1, start=round_)[0])
            assert trail.flush(30)
            time.sleep(0.1)
        assert trail.child is None
    finally:
        trail.close()
