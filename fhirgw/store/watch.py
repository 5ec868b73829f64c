"""Keep an in-memory view in step with stored resources of some types, across processes.

Stored SearchParameters and StructureDefinitions/ValueSets/CodeSystems change how the
gateway behaves. The process that writes one applies it after commit; every other process
on the same database notices within ``ttl`` seconds, by comparing a fingerprint of those
types (row count and newest ``last_updated``, one index lookup) and reloading on change.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from sqlalchemy import false, func, select
from sqlalchemy.engine import Engine

from ..model.resources import loads
from .tables import resource


class StoredResourceWatcher:
    def __init__(self, engine: Engine, types: Iterable[str],
                 reload: Callable[[list[dict]], None], ttl: float = 2.0):
        self.engine = engine
        self.types = sorted(types)
        self.reload = reload
        self.ttl = ttl
        self._fingerprint: tuple | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def _fingerprint_of(self, conn) -> tuple:
        return tuple(conn.execute(select(func.count(), func.max(resource.c.last_updated))
                                  .where(resource.c.res_type.in_(self.types))).one())

    def load(self) -> int:
        """Hand every current stored resource of the watched types to ``reload``."""
        with self._lock:
            with self.engine.connect() as conn:
                fp = self._fingerprint_of(conn)
                rows = conn.execute(select(resource.c.body).where(
                    resource.c.res_type.in_(self.types), resource.c.deleted == false())).all()
            bodies = [loads(b) for (b,) in rows]
            self.reload(bodies)
            self._fingerprint = fp
            self._checked = time.monotonic()
            return len(bodies)

    def maybe_refresh(self) -> None:
        """Reload when the stored resources changed since the last look (at most every ttl)."""
        now = time.monotonic()
        if now - self._checked < self.ttl:
            return
        with self._lock:
            if now - self._checked < self.ttl:
                return
            self._checked = now
            with self.engine.connect() as conn:
                changed = self._fingerprint_of(conn) != self._fingerprint
        if changed:
            self.load()
