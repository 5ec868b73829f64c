"""SQLite: write a transaction's pages to the WAL before it must wait to commit.

A transaction Bundle's unit of work ends by waiting for the parallel validation of its
entries (``validation.parallel``), then commits. A SQLite commit writes every page the
transaction changed to the WAL (~500 pages for 100 resources, two ``write`` calls and a
checksum each: ~2 ms), and nothing else can happen meanwhile: the validation worker is done
and idle, the request waits. ``sqlite3_db_cacheflush`` writes those pages while the
transaction is still open; the commit then writes the last page and the commit frame.
Called just before the wait (``Repository.run``), the pages are written while the worker is
still validating. If the transaction rolls back instead, the frames written are never part
of a commit: readers, which read the WAL up to the last commit, never see them, and the next
write overwrites them (SQLite does the same when its page cache spills mid-transaction).
Side by side on the ingest benchmark (3 rounds of 100 Bundles, 3 times): 0.9-1.4 ms less per
Bundle, median.

Python's ``sqlite3`` module does not offer the call. The C function is taken from the SQLite
library the module is linked to, as mapped in this process (Linux ``/proc/self/maps``), and
the connection's ``sqlite3 *`` is read from the module's connection object, the first field
after the object header in CPython. Whether that holds for this interpreter and library is
tried once per process in a child process (``_PROBE``: it opens a database, finds the
handle, checks that SQLite names the database's file for it and that a flush writes to the
WAL), so that a layout this code does not know cannot crash the server: it is then not used
(``available()`` False) and the commit writes the pages as before.
"""
from __future__ import annotations

import ctypes
import logging
import os
import subprocess
import sys
import threading

log = logging.getLogger("fhirgw.store")

#: run in a child process with this interpreter: exit status 0 when the flush works here
_PROBE = r"""
import ctypes, os, sqlite3, sys, tempfile
sys.path.insert(0, sys.argv[1])
from cacheflush import _library, _handle
lib = _library()
if lib is None:
    sys.exit(3)
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "probe.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO t VALUES (?)", [(os.urandom(512),) for _ in range(200)])
    db = _handle(conn)
    lib.sqlite3_db_filename.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.sqlite3_db_filename.restype = ctypes.c_char_p
    named = lib.sqlite3_db_filename(db, b"main")
    if named is None or os.path.realpath(named.decode()) != os.path.realpath(path):
        sys.exit(4)
    before = os.path.getsize(path + "-wal")
    if lib.sqlite3_db_cacheflush(db) != 0 or os.path.getsize(path + "-wal") <= before:
        sys.exit(5)
    conn.execute("ROLLBACK")
    if conn.execute("SELECT count(*) FROM t").fetchone()[0] != 0:
        sys.exit(6)
    conn.close()
"""

_lock = threading.Lock()
_state: dict[str, object] = {}


def _library():
    """The SQLite library this process has mapped (the one ``sqlite3`` is linked to), with
    ``sqlite3_db_cacheflush`` typed; None when there is none to find (not Linux, a static
    build)."""
    import sqlite3  # noqa: F401 - maps the library

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libsqlite3.so" in line}
    except OSError:
        return None
    if len(paths) != 1:   # none, or two SQLite libraries: which one is the module's?
        return None
    lib = ctypes.CDLL(paths.pop())
    lib.sqlite3_db_cacheflush.argtypes = [ctypes.c_void_p]
    lib.sqlite3_db_cacheflush.restype = ctypes.c_int
    return lib


def _handle(conn) -> int | None:
    """The ``sqlite3 *`` of a ``sqlite3.Connection``: CPython's connection object holds it
    right after its object header."""
    return ctypes.c_void_p.from_address(id(conn) + 2 * ctypes.sizeof(ctypes.c_void_p)).value


def available() -> bool:
    """Can this process flush a SQLite transaction's pages early? Tried once (see the module
    text); ``FHIRGW_SQLITE_CACHEFLUSH=0`` says no without trying."""
    with _lock:
        if "ok" not in _state:
            _state["ok"] = _try()
        return bool(_state["ok"])


def _try() -> bool:
    if os.environ.get("FHIRGW_SQLITE_CACHEFLUSH", "1") == "0":
        return False
    if sys.implementation.name != "cpython" or not sys.platform.startswith("linux"):
        return False
    try:
        done = subprocess.run([sys.executable, "-I", "-c", _PROBE, os.path.dirname(__file__)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("SQLite early page writes not used: the probe did not run (%s)", exc)
        return False
    if done.returncode != 0:
        log.info("SQLite early page writes not used here (probe status %s)", done.returncode)
        return False
    lib = _library()
    if lib is None:
        return False
    _state["lib"] = lib
    return True


def flush(conn) -> None:
    """Write the dirty pages of the write transaction open on ``conn`` (a
    ``sqlite3.Connection``) to the WAL now. Only after ``available()`` said yes; a flush that
    cannot take its lock (SQLite's BUSY) leaves the pages to the commit."""
    _state["lib"].sqlite3_db_cacheflush(_handle(conn))
