"""Storing audit events in a child process, for an ``AuditTrail`` under sustained load.

Every read is audited. Storing one AuditEvent (its resource and history rows and ~17 index
rows) costs more CPU than serving the read, and in the server process that work competes
with the requests for the interpreter lock: on a 2-core machine the server could serve
reads about as fast as one core could both serve and audit them. A ``ChildWriter`` moves
the storing into a separate process with its own interpreter: the trail's writer thread
sends each batch over a pipe (one ``orjson`` document, a few µs per event) and waits for the
child's answer, without holding the lock, while the child stores the batch in one unit of
work, exactly as the thread would have (same database, same search engine, the stored
custom SearchParameters included, the same ``AuditRule``).

The child is an implementation detail of the trail: it is started (``spawn``, so no thread
state is forked) only when events pile up, answers every batch with ``ok`` or the error,
stops when the trail closes, and exits by itself when its parent goes away (the pipe
closes). Nothing is started for an in-memory database (another process cannot see it) or
inside a daemonic process (which may not have children).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import threading

import orjson

log = logging.getLogger("fhirgw.audit")

_STOP = b""


def can_offload(repo) -> bool:
    """Whether another process can store into ``repo``'s database."""
    url = repo.engine.url
    if url.get_backend_name() == "sqlite" and (url.database or "") in ("", ":memory:"):
        return False
    return not multiprocessing.current_process().daemon


class ChildWriter:
    """One child process storing batches of AuditEvents into ``repo``'s database.

    ``start()`` returns at once; ``ready`` tells when the child has connected and loaded the
    search parameters (until then, and after any failure, the trail writes in-process).
    ``write(batch)`` stores one batch or raises; ``close()`` stops the child."""

    def __init__(self, repo, start_timeout: float = 60.0):
        self.url = repo.engine.url.render_as_string(hide_password=False)
        self.base_urls = [u.rstrip("/") for u in repo.search_engine.indexer.base_urls]
        self.start_timeout = start_timeout
        self._conn = None
        self._proc = None
        self._ready = threading.Event()
        self._failed = False
        self._closed = False
        self._lock = threading.Lock()
        #: what the child reported when it was ready (its pid, its collector's thresholds)
        self.info: dict = {}

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self._failed

    @property
    def failed(self) -> bool:
        return self._failed

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the child in the background (its imports take a second or so)."""
        threading.Thread(target=self._start, name="fhirgw-audit-child-start",
                         daemon=True).start()

    def _start(self) -> None:
        try:
            ctx = multiprocessing.get_context("spawn")
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_child_main, args=(child, self.url, self.base_urls),
                               name="fhirgw-audit-writer", daemon=True)
            proc.start()
            child.close()
            if not parent.poll(self.start_timeout):
                raise TimeoutError(f"no answer in {self.start_timeout:.0f} s")
            status, detail = orjson.loads(parent.recv_bytes())
            if status != "ready":
                raise RuntimeError(detail)
            self.info = detail or {}
            with self._lock:
                if self._closed:   # the trail closed while the child was starting
                    parent.send_bytes(_STOP)
                    parent.close()
                    proc.join(5)
                    return
                self._conn, self._proc = parent, proc
            self._ready.set()
            log.info("audit trail: storing events in child process %s", proc.pid)
        except Exception:  # noqa: BLE001 - the trail goes on writing in-process
            self._failed = True
            log.warning("audit trail: the writer process did not start; events are stored "
                        "in-process", exc_info=True)

    def write(self, batch: list[dict]) -> None:
        """Store ``batch`` in one unit of work in the child; raises when that failed (the
        child is then considered gone if the pipe broke)."""
        try:
            self._conn.send_bytes(orjson.dumps(batch))
            status, detail = orjson.loads(self._conn.recv_bytes())
        except (EOFError, OSError) as exc:
            self._failed = True
            raise RuntimeError(f"the audit writer process is gone: {exc}") from None
        if status != "ok":
            raise RuntimeError(f"the audit writer process could not store the batch: {detail}")

    def close(self, timeout: float = 10.0) -> None:
        self._ready.clear()
        with self._lock:
            self._closed = True
            conn, proc = self._conn, self._proc
            self._conn = self._proc = None
        if conn is not None:
            try:
                conn.send_bytes(_STOP)
            except OSError:
                pass
            conn.close()
        if proc is not None:
            proc.join(timeout)
            if proc.is_alive():
                proc.terminate()
                proc.join(1)


def _child_main(conn, url: str, base_urls: list[str]) -> None:
    """The child: connect, load the search parameters, then store what comes."""
    try:
        from ..search import SearchEngine
        from ..search.custom import CustomParameters
        from ..store.db import WalCheckpointer, make_engine
        from ..store.repository import Repository
        from .audit import install_rule, store_batch

        engine = make_engine(url, pool_size=1)
        # SQLite: the child copies back the WAL pages it writes (the server's checkpointer
        # only handles what the server commits)
        checkpointer = WalCheckpointer(engine)
        search = SearchEngine(base_urls=base_urls)
        custom = CustomParameters(search.registry, engine)   # stored SearchParameters
        custom.load()
        repo = Repository(engine, search)
        install_rule(repo)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which goes on alone
        conn.send_bytes(orjson.dumps(["error", f"{type(exc).__name__}: {exc}"]))
        return
    import gc

    from ..runtime import tune_gc
    tune_gc()   # a long-running writer: its startup heap (the search registry) frozen
    conn.send_bytes(orjson.dumps(["ready", {"pid": os.getpid(),
                                            "gc_threshold": gc.get_threshold()}]))
    checkpointer.start()
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            break   # the parent is gone
        if data == _STOP:
            break
        try:
            batch = orjson.loads(data)
            custom.maybe_refresh()
            store_batch(repo, batch)
            reply = ["ok", len(batch)]
        except Exception as exc:  # noqa: BLE001 - the parent retries or counts them lost
            reply = ["error", f"{type(exc).__name__}: {exc}"]
        try:
            conn.send_bytes(orjson.dumps(reply))
        except OSError:
            break
    checkpointer.stop()
    engine.dispose()
