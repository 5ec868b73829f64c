"""Reindex jobs queue behind one background thread: the jobs queued while a pass runs go
together in the next pass, over the union of their types."""
from __future__ import annotations

import threading
import time

from fhirgw.operations.reindex import Reindexer, ReindexJob


class Recording(Reindexer):
    """A reindexer whose passes only record their types; the first one waits for ``go``."""

    def __init__(self) -> None:
        super().__init__(repo=None)
        self.passes: list[list[str] | None] = []
        self.go = threading.Event()
        self.fail_on: set[str] = set()

    def run(self, job: ReindexJob, progress=None) -> ReindexJob:
        if not self.passes:
            self.go.wait(3)
        self.passes.append(job.types)
        job.status = "running"
        job.total = job.done = 7
        if progress:
            progress(job)
        if self.fail_on & set(job.types or ()):
            job.status, job.error = "failed", "boom"
        else:
            job.status = "completed"
        job.finished = time.time()
        return job


def _until(cond, timeout=10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _wait(jobs) -> None:
    _until(lambda: all(j.status not in ("queued", "running") for j in jobs))


def test_jobs_queued_during_a_pass_share_the_next_one():
    r = Recording()
    done: list[str] = []
    first = r.start(["Patient"], on_done=lambda j: done.append(j.id))
    _until(lambda: first.status == "running")   # the first pass has begun, waits for go
    later = [r.start(types, on_done=lambda j: done.append(j.id))
             for types in (["Observation"], ["Condition", "Patient"], ["Observation"])]
    assert [j.status for j in later] == ["queued"] * 3
    r.go.set()
    _wait([first, *later])
    assert r.passes == [["Patient"], ["Condition", "Observation", "Patient"]]
    assert sorted(done) == sorted(j.id for j in [first, *later])
    assert all(j.status == "completed" and j.total == j.done == 7 and j.finished
               for j in [first, *later])
    # each job still names the types it asked for
    assert later[1].parameters()["parameter"][-2:] == [
        {"name": "type", "valueCode": "Condition"}, {"name": "type", "valueCode": "Patient"}]
    assert r.get(later[0].id) is later[0]


def test_a_job_for_every_type_makes_its_pass_cover_every_type():
    r = Recording()
    first = r.start(["Patient"])
    _until(lambda: first.status == "running")
    jobs = [r.start(["Observation"]), r.start(None)]
    r.go.set()
    _wait([first, *jobs])
    assert r.passes[-1] is None


def test_a_failed_pass_fails_its_jobs_and_a_failing_callback_stops_nothing():
    r = Recording()
    r.fail_on = {"Goal"}
    r.go.set()
    calls: list[str] = []

    def bad(job):
        calls.append(job.id)
        raise RuntimeError("callback bug")

    a = r.start(["Goal"], on_done=bad)
    _wait([a])
    b = r.start(["Patient"], on_done=lambda j: calls.append(j.id))
    _wait([b])
    assert a.status == "failed" and a.error == "boom"
    assert b.status == "completed"
    assert calls == [a.id, b.id]
