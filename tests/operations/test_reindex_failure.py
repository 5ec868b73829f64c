"""A reindex job whose database goes away fails as a job (status, error), never as an
unhandled exception in its thread."""
from __future__ import annotations

from types import SimpleNamespace

from sqlalchemy.exc import OperationalError

from fhirgw.operations.reindex import Reindexer, ReindexJob


def test_a_job_whose_count_fails_is_marked_failed():
    def run(fn, write=True):
        raise OperationalError("SELECT count(*)", {}, Exception("connection terminated"))

    repo = SimpleNamespace(run=run, search_engine=None)
    job = Reindexer(repo).run(ReindexJob("j1", ["Patient"]))
    assert job.status == "failed"
    assert "OperationalError" in job.error
    assert job.finished
