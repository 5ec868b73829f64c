"""SQLite WAL checkpoints run in the background, not in the committing request."""
import time

from sqlalchemy import create_engine

from fhirgw.search import SearchEngine
from fhirgw.store.db import WAL_AUTOCHECKPOINT, WalCheckpointer, make_engine, migrate
from fhirgw.store.repository import Repository


def _patients(repo, n, prefix="p"):
    repo.run(lambda tx: tx.create_many(
        [("Patient", {"resourceType": "Patient", "name": [{"family": f"F{i}"}]}, f"{prefix}{i}")
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


def _wait(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_checkpoints_only_after_its_own_commits(tmp_path):
    """A round runs only when its engine committed since the last one: a process that only
    reads (e.g. while another process writes the audit trail) copies nothing back."""
    url = f"sqlite:///{tmp_path / 'wal.db'}"
    engine = make_engine(url)
    migrate(engine)
    cp = WalCheckpointer(engine, interval=0.05)
    cp.start()
    try:
        assert _wait(lambda: cp.rounds == 1)          # the first round, on start
        time.sleep(0.3)
        assert cp.rounds == 1                          # idle: no rounds
        other = make_engine(url)                       # another process's writes
        _patients(Repository(other, SearchEngine()), 20)
        time.sleep(0.3)
        assert cp.rounds == 1
        assert WalCheckpointer(other).checkpoint()[1] > 0     # left in the WAL for it
        _patients(Repository(engine, SearchEngine()), 20, "q")  # its own commit
        assert _wait(lambda: cp.rounds == 2)
        busy, frames, done = cp.checkpoint()
        assert busy == 0 and frames == done
        other.dispose()
    finally:
        cp.stop()


def test_the_pace_follows_the_write_rate():
    cp = WalCheckpointer(create_engine("sqlite://"), interval=0.1, min_interval=0.02,
                         target_frames=4000)
    cp.wait = 0.1
    assert cp.pace(16000) == 0.025        # 16,000 new frames in 0.1 s: 4,000 every 25 ms
    cp.wait = 0.025
    assert cp.pace(20000) == 0.025        # 4,000 more in 25 ms: the same pace
    cp.wait = 0.025
    assert cp.pace(20000 + 100) == 0.1    # almost nothing new: the longest wait
    cp.wait = 0.1
    assert cp.pace(500) == 0.1            # the WAL started over (500 < 20,100)
    assert cp.pace(500 + 400_000) == 0.02  # a flood: no faster than min_interval
    assert cp.pace(-1) == 0.02            # busy (another connection checkpointing): soon
