"""SQLite WAL checkpoints run in the background, not in the committing request."""
import time

from sqlalchemy import create_engine

from fhirgw.search import SearchEngine
from fhirgw.store.db import WAL_AUTOCHECKPOINT, WalCheckpointer, make_engine, migrate
from fhirgw.store.repository import Repository


def _patients(repo, n):
    repo.run(lambda tx: tx.create_many(
        [("Patient", {"resourceType": "Patient", "name": [{"family": f"F{i}"}]}, f"p{i}")
         for i in range(n)]))


def test_commits_leave_the_wal_to_the_checkpointer(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    migrate(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == WAL_AUTOCHECKPOINT
    repo = Repository(engine, SearchEngine())
    _patients(repo, 200)
    cp = WalCheckpointer(engine)
    busy, frames, done = cp.checkpoint()
    assert busy == 0 and frames > 0 and done == frames   # the commits left it to us
    assert cp.checkpoint()[1:] == (frames, frames)       # nothing new: nothing more to copy


def test_background_thread_checkpoints_and_stops(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    migrate(engine)
    repo = Repository(engine, SearchEngine())
    cp = WalCheckpointer(engine, interval=0.05)
    assert cp.applies
    cp.start()
    try:
        _patients(repo, 50)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            _busy, frames, done = cp.checkpoint()
            if frames == done:
                break
            time.sleep(0.05)
        assert frames == done
        assert cp._thread is not None and cp._thread.is_alive()
    finally:
        cp.stop()
    assert cp._thread is None


def test_nothing_to_do_for_memory_or_postgresql():
    assert not WalCheckpointer(create_engine("sqlite://")).applies
    assert not WalCheckpointer(make_engine("postgresql+psycopg://u@127.0.0.1:1/x")).applies
