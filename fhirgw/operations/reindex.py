"""``$reindex``: rebuild search index rows, in batches, with progress.

A job walks the current resources of its types in ``rid`` order, a batch per unit of work
(short transactions: writers are never blocked for long), and records its progress. Jobs
start on their own when a SearchParameter is added, or by ``POST [base]/$reindex`` /
``POST [base]/[type]/$reindex``; their status is ``GET [base]/$reindex-status/[job]``
(202 with ``X-Progress`` while running, 200 with a Parameters resource when done), following
the FHIR asynchronous request pattern.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import false, func, select

from ..store.repository import Repository
from ..store.tables import resource

log = logging.getLogger("fhirgw.reindex")


@dataclass
class ReindexJob:
    id: str
    types: list[str] | None
    total: int = 0
    done: int = 0
    status: str = "queued"          # queued | running | completed | failed
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def parameters(self) -> dict:
        params = [{"name": "job", "valueString": self.id},
                  {"name": "status", "valueCode": self.status},
                  {"name": "processed", "valueInteger": self.done},
                  {"name": "total", "valueInteger": self.total}]
        for t in self.types or []:
            params.append({"name": "type", "valueCode": t})
        if self.error:
            params.append({"name": "error", "valueString": self.error})
        return {"resourceType": "Parameters", "parameter": params}


class Reindexer:
    def __init__(self, repo: Repository, batch: int = 500):
        self.repo = repo
        self.batch = batch
        self.jobs: dict[str, ReindexJob] = {}
        self._lock = threading.Lock()
        #: jobs waiting for the next pass, with their completion callbacks
        self._queued: list[tuple[ReindexJob, Callable[[ReindexJob], None] | None]] = []
        self._worker: threading.Thread | None = None

    def count(self, types: list[str] | None) -> int:
        def unit(tx):
            stmt = select(func.count()).select_from(resource).where(resource.c.deleted == false())
            if types:
                stmt = stmt.where(resource.c.res_type.in_(types))
            return tx.conn.execute(stmt).scalar_one()
        return self.repo.run(unit, write=False)

    def run(self, job: ReindexJob, progress: Callable[[ReindexJob], None] | None = None) -> ReindexJob:
        """Run a job to the end in this thread."""
        engine = self.repo.search_engine
        job.status = "running"
        after = 0
        try:
            job.total = self.count(job.types)   # fails like the rest (database gone, ...)
            while True:
                done, after = self.repo.run(lambda tx: engine.reindex_batch(
                    tx.conn, job.types, after_rid=after, limit=self.batch))
                job.done += done
                if progress:
                    progress(job)
                if done < self.batch:
                    break
            job.status = "completed"
        except Exception as exc:  # noqa: BLE001 - a job records its failure
            log.exception("reindex job %s failed", job.id)
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
        job.finished = time.time()
        return job

    def start(self, types: list[str] | None, on_done: Callable[[ReindexJob], None] | None = None
              ) -> ReindexJob:
        """Queue a job and return it at once. One background thread works the queue: the
        jobs queued while a pass runs go together in the next pass, over the union of their
        types (each job reports that pass's progress and outcome, and ``on_done`` is called
        for each once it is over). Storing a SearchParameter queues a job; a thread and a
        pass over every resource of its types for each, all at once, made a burst of them
        (a package's 1,400 definitions loaded as a batch) cost quadratic time."""
        job = ReindexJob(uuid.uuid4().hex, sorted(types) if types else None)
        with self._lock:
            self.jobs[job.id] = job
            self._queued.append((job, on_done))
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="reindex", daemon=True)
                self._worker.start()
        return job

    def _work(self) -> None:
        while True:
            with self._lock:
                batch, self._queued = self._queued, []
                if not batch:
                    self._worker = None
                    return
            jobs = [job for job, _ in batch]
            if any(job.types is None for job in jobs):
                types = None
            else:
                types = sorted({t for job in jobs for t in job.types or ()})

            def progress(p: ReindexJob) -> None:
                for job in jobs:
                    job.status, job.total, job.done = p.status, p.total, p.done

            for job in jobs:
                job.status = "running"
            shared = self.run(ReindexJob(jobs[0].id, types), progress)
            for job, on_done in batch:
                job.status, job.total, job.done = shared.status, shared.total, shared.done
                job.error, job.finished = shared.error, shared.finished
                if on_done is not None:
                    try:
                        on_done(job)
                    except Exception:  # noqa: BLE001 - the next jobs still run
                        log.exception("reindex job %s: its completion callback failed", job.id)

    def get(self, job_id: str) -> ReindexJob | None:
        return self.jobs.get(job_id)
