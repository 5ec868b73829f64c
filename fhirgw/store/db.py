"""Engines for SQLite (embedded default, WAL) and PostgreSQL, and schema migration on start."""
from __future__ import annotations

import logging
import os
import select
import sqlite3
import threading

from sqlalchemy import create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.engine import Engine

from .tables import metadata

log = logging.getLogger("fhirgw.store")

#: WAL pages a commit may leave before SQLite checkpoints in the committing connection
#: (a safety net: ``WalCheckpointer`` normally checkpoints long before, in the background)
WAL_AUTOCHECKPOINT = 16384

MIGRATIONS = os.path.join(os.path.dirname(__file__), "migrations")


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and use the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def is_sqlite_file(engine: Engine) -> bool:
    """A SQLite database in a file (WAL), not in memory."""
    return is_sqlite(engine) and (engine.url.database or "") not in ("", ":memory:")


#: parameter types the sqlite3 module binds only after asking for an adapter, and the C
#: callables that hand each over unchanged (a bool as its int): NULL index columns, the
#: ``deleted`` flags, the bodies
_PASS_THROUGH = {type(None): {}.get, bool: int, bytes: bytes}


def bind_directly() -> None:
    """Let the sqlite3 module bind None, bool and bytes without its adapter search.

    It binds int, float and str directly; any other value it first looks up in its adapter
    registry, then asks the ``PrepareProtocol`` type for ``__adapt__`` (a failed attribute
    lookup on a type formats an AttributeError message, which is then dropped) and the value
    for ``__conform__``: ~3,300 instructions a value. A 100-resource transaction binds
    ~1,300 such values (NULL columns of index rows, flags, bodies): 3.7% of the server's
    instructions per Bundle (callgrind). A registered C callable is found by the first
    lookup. What is stored does not change (NULL, an integer, a BLOB). Process-wide, as the
    registry is; a type someone registered an adapter for is left alone."""
    for cls, adapter in _PASS_THROUGH.items():
        if (cls, sqlite3.PrepareProtocol) not in sqlite3.adapters:
            sqlite3.register_adapter(cls, adapter)


#: Pools hand out the connection used last (``pool_use_lifo``), not the one idle longest.
#: Each connection keeps caches of its own: SQLite's page cache (64 MiB here), which a
#: connection drops whole when it finds that another one committed since its last
#: transaction, and on PostgreSQL the backend's catalog, plan and buffer state. Handed out in
#: turn (SQLAlchemy's default), a server writing one request at a time used its pooled
#: connections one after another: on SQLite each 100-resource transaction then read ~300
#: pages back from the file (``pread``; ~60 with the last connection again), on PostgreSQL
#: three backends each warmed up for every third one. The connections left at the bottom
#: of the stack idle (on PostgreSQL, ``looks_alive`` replaces one the server closed).
POOL_LIFO = True


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        bind_directly()
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=pool_size, max_overflow=20, pool_use_lifo=POOL_LIFO)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):
            # take transaction control away from pysqlite: we say BEGIN ourselves
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            if ":memory:" not in url and url != "sqlite://":
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            # a checkpoint copies the WAL into the database and fsyncs both; SQLite's default
            # (every 1,000 pages, in whichever commit crosses it) made one 100-entry
            # transaction in two pay it, ~40% of the ingest time on this machine
            cur.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT}")
            cur.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache per connection
            cur.execute("PRAGMA temp_store=MEMORY")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # writers take the database lock up front, so two writers never deadlock on
            # lock upgrade and a check-then-insert (conditional create) is atomic
            if conn.get_execution_options().get("fhirgw_write"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")
        return engine
    engine = create_engine(url, pool_size=pool_size, max_overflow=20, pool_use_lifo=POOL_LIFO)
    event.listen(engine, "checkout", _check_alive)
    return engine


def looks_alive(dbapi_conn) -> bool:
    """Is an idle pooled PostgreSQL connection still usable, judged without a round trip?

    A connection the server ended (a restart, ``pg_terminate_backend``, an idle timeout)
    has received the server's last words and the end of its socket. So: not closed or
    broken, outside any transaction, and when something waits on its socket, libpq reads
    it (``consume_input``) and still finds the connection good: what an idle connection
    may legitimately receive (a notification, a notice, a TLS session ticket) keeps it;
    the end of the socket does not. This replaces SQLAlchemy's ``pool_pre_ping``, which
    asked the server (``SELECT 1``) at every checkout: a round trip (~0.1 ms on an idle
    loopback, more when the server waits for a core) on every request, before its own
    work. A peer that vanished without closing the socket passes both checks alike and
    fails at the first statement (``Repository.run`` then runs the unit again)."""
    try:
        if dbapi_conn.closed or dbapi_conn.broken:
            return False
        pgconn = dbapi_conn.pgconn
        if pgconn.transaction_status != 0:   # libpq PQTRANS_IDLE
            return False
        readable, _w, _x = select.select([pgconn.socket], [], [], 0)
        if not readable:
            return True
        pgconn.consume_input()   # raises once the server has closed the socket
        return pgconn.status == 0 and pgconn.transaction_status == 0   # CONNECTION_OK, idle
    except Exception:  # noqa: BLE001 - whatever goes wrong here, take a fresh connection
        return False


def _check_alive(dbapi_conn, _record, _proxy) -> None:
    """Pool checkout: a connection that does not look alive is replaced (the pool retries
    with a new one when this raises ``DisconnectionError``)."""
    if not looks_alive(dbapi_conn):
        raise DisconnectionError("the pooled PostgreSQL connection was closed by the server")


class WalCheckpointer:
    """Checkpoints a SQLite WAL database in a background thread, so that no request pays for
    copying the WAL back and fsyncing (``PRAGMA wal_checkpoint(PASSIVE)``: it never blocks
    readers or writers). sqlite3 releases the GIL while it does I/O, so the work overlaps
    with requests. Nothing to do (and no thread) for PostgreSQL or an in-memory database.

    It checkpoints only after a commit on its engine since the last round: each process
    copies back what it wrote. A process that only reads (the server while its audit writer
    process stores the read events) then spends no CPU copying another process's pages.

    Its pace follows the write rate: after each round, the next comes when ``target_frames``
    new WAL frames are due at the rate since the last one (between ``min_interval`` and
    ``interval`` later). At a fixed 0.5 s (how it ran before) the ingest benchmark's ~30,000
    pages a second made each round copy ~60 MB, which slowed the requests running beside
    it to two or three times their usual time, and let the WAL reach
    ``WAL_AUTOCHECKPOINT`` with ~15,000 frames not yet copied: the commit crossing it
    copied them itself (~95 ms). (Writers that commit during a round keep the WAL from
    starting over, which it does only when a write transaction begins with every frame
    copied; under a steady stream of writes the commit crossing ``WAL_AUTOCHECKPOINT``
    still checkpoints, but finds all but the last round's frames copied: ~15 ms.)"""

    def __init__(self, engine: Engine, interval: float = 0.1, *, min_interval: float = 0.02,
                 target_frames: int = 4000):
        self.engine = engine
        self.interval = interval
        self.min_interval = min_interval
        self.target_frames = target_frames
        #: the current wait between rounds, and the WAL's frames at the last round
        self.wait = interval
        self._frames = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: set by every commit on ``engine``, cleared by each round
        self._dirty = True
        self.rounds = 0

    @property
    def applies(self) -> bool:
        return is_sqlite_file(self.engine)

    def _committed(self, _conn) -> None:
        self._dirty = True

    def start(self) -> None:
        if self.applies and self._thread is None:
            event.listen(self.engine, "commit", self._committed)
            self._thread = threading.Thread(target=self._run, name="fhirgw-wal-checkpoint",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
            event.remove(self.engine, "commit", self._committed)

    def checkpoint(self) -> tuple[int, int, int]:
        """One passive checkpoint: (busy, WAL frames, frames checkpointed)."""
        raw = self.engine.raw_connection()   # outside a transaction (no BEGIN)
        try:
            return tuple(raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
                         .fetchone())
        finally:
            raw.close()

    def _run(self) -> None:
        while not self._stop.wait(self.wait):
            if not self._dirty:
                self.wait = self.interval
                continue
            self._dirty = False
            try:
                _busy, frames, _done = self.checkpoint()
                self.rounds += 1
            except Exception:  # noqa: BLE001 - retried next time; the safety net remains
                self._dirty = True
                log.warning("WAL checkpoint failed", exc_info=True)
                continue
            self.wait = self.pace(frames)

    def pace(self, frames: int) -> float:
        """The wait after a round that found ``frames`` in the WAL, ``self.wait`` after the
        one before: the time ``target_frames`` new frames take at the rate since then."""
        if frames < 0:   # busy: another connection was checkpointing; soon again
            return self.min_interval
        new = frames - self._frames if frames >= self._frames else frames  # a new WAL
        self._frames = frames
        if new <= 0:
            return self.interval
        return min(self.interval, max(self.min_interval, self.wait * self.target_frames / new))


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent; safe from many processes)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS)
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # several workers starting together: one migrates, the others wait
            conn.exec_driver_sql("SELECT pg_advisory_lock(7321456)")
        try:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
        finally:
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_unlock(7321456)")
                conn.commit()


def create_all(engine: Engine) -> None:
    """Schema straight from the tables (used by the baseline migration)."""
    metadata.create_all(engine)
