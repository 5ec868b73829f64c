"""R4B base validation of a transaction's resources in worker processes.

Base validation (``fhirgw.model.resources.validate``, fhir.resources R4B) is the expensive,
pure and stateless part of a write's validation. For a large transaction Bundle the gateway
hands it to a ``ValidationPool`` and meanwhile runs the rest of the validation and the unit
of work; the unit waits for the answer before it commits, so a Bundle with an invalid
resource still stores nothing and answers what inline validation answers (the same status
and OperationOutcome: the error is rebuilt in the request's process from plain data).

The pool is only an accelerator and never a reason for a request to fail:

* it starts on first use, in a background thread (``spawn``: the server has threads, so no
  ``fork``); until its workers are up, validation runs inline. A worker does not import
  the parent's ``__main__`` (what ``spawn`` does by default), so a script that creates the
  app at top level is not run again in each worker;
* it is never used inside a daemonic process, nor in a process bootstrapping as a
  multiprocessing child (e.g. a spawned child importing its parent's main script);
* a dead worker (``BrokenProcessPool``), a cancelled or late answer, or a resource that
  cannot be serialised: those entries are validated inline, and a lost pool is recreated
  in the background a little later;
* a worker answer that is not a plain FHIR error (a bug, an unexpected exception) is
  re-checked inline, so whatever inline validation would raise is raised.

It does not lower the CPU spent per resource (the work is the same, plus serialisation);
it lowers the wall time of a Bundle by using a second core.
"""
from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context
import os
import sys
import threading
import time
import types
from collections.abc import Mapping
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import orjson

from ..model import errors as _errors
from ..model import resources as res
from ..model.errors import FhirError, Issue

log = logging.getLogger("fhirgw.validation")

#: the types a worker builds the R4B models of when it starts (others on first use)
WARM_TYPES = (
    "Patient", "Observation", "Condition", "Goal", "CarePlan", "Appointment", "Encounter",
    "EpisodeOfCare", "Task", "ServiceRequest", "QuestionnaireResponse", "Questionnaire",
    "Practitioner", "PractitionerRole", "Organization", "Location", "RelatedPerson",
    "CareTeam", "Consent", "Communication", "DocumentReference", "Composition",
    "MedicationStatement", "MedicationRequest", "AllergyIntolerance", "Procedure", "Flag",
    "Provenance", "DiagnosticReport", "Coverage", "Endpoint", "Immunization",
)
#: seconds a request waits for a worker's answer before it validates inline (and the pool,
#: presumed stuck, is recycled)
RESULT_TIMEOUT = 30.0
#: seconds the workers may take to start and warm up
START_TIMEOUT = 120.0
#: fewest items per chunk (smaller chunks cost more in hand-off than they save)
MIN_CHUNK = 10

Item = tuple[int, str, bytes]          # (entry index, resource type, JSON of the resource)
Found = tuple[int, FhirError] | None   # the first failing entry, if any

_INVALID, _UNEXPECTED = "invalid", "unexpected"


# ---------------------------------------------------------------- in the worker

def _worker_start() -> None:
    """Import fhir.resources R4B and build the common models once, before any task."""
    for rtype in WARM_TYPES:
        if rtype not in res.SUPPORTED:
            continue
        try:
            res.model_class(rtype).model_validate({"resourceType": rtype})
        except Exception:  # required elements missing: the model is built all the same
            pass


def _ready() -> int:
    return os.getpid()


def _error_data(exc: FhirError) -> tuple:
    """A FhirError as plain data (exceptions with keyword-only state do not pickle)."""
    return (type(exc).__name__, exc.status, exc.code, str(exc.args[0]) if exc.args else "",
            [dict(vars(i)) for i in exc.issues], dict(exc.headers or {}))


def validate_chunk(items: list[Item]) -> tuple[int, str, Any] | None:
    """Base-validate ``items`` in order; None when all are valid, else the first that is
    not: ``(index, "invalid", error data)`` for a FhirError, ``(index, "unexpected", text)``
    for anything else (the parent re-checks that one inline). Runs in a worker."""
    for index, rtype, raw in items:
        try:
            # the parent wrote ``raw`` itself (valid JSON); orjson is enough for validation
            # (a decimal's exact text does not change its verdict), and res.loads, which
            # also scans for such numbers (twice orjson's time), only takes what orjson
            # cannot parse (e.g. integers beyond 64 bits)
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            try:
                body = res.loads(raw)
            except Exception as exc:
                return index, _UNEXPECTED, repr(exc)
        try:
            res.validate(body, rtype)
        except FhirError as exc:
            return index, _INVALID, _error_data(exc)
        except Exception as exc:
            return index, _UNEXPECTED, repr(exc)
    return None


# ---------------------------------------------------------------- starting workers

_MAIN_SWAP = threading.Lock()


class _WorkerProcess(multiprocessing.context.SpawnProcess):
    """A spawned process that does not import the parent's ``__main__``: multiprocessing
    runs the main script again in every spawned child (as ``__mp_main__``) so that objects
    defined there unpickle; the workers need nothing from it (their functions live here),
    and a script without an ``if __name__ == "__main__":`` guard would run again in each.
    While the child's start-up data is written, ``sys.modules["__main__"]`` is a bare
    module (a few milliseconds, once per worker)."""

    def start(self) -> None:
        with _MAIN_SWAP:
            main = sys.modules.get("__main__")
            sys.modules["__main__"] = types.ModuleType("__main__")
            try:
                super().start()
            finally:
                if main is not None:
                    sys.modules["__main__"] = main


class _WorkerContext(multiprocessing.context.SpawnContext):
    Process = _WorkerProcess


# ---------------------------------------------------------------- in the request's process

def rebuild_error(data: tuple) -> FhirError:
    """The FhirError ``_error_data`` described: same class, status, code, message, issues."""
    name, status, code, message, issues, headers = data
    cls = getattr(_errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, FhirError)):
        cls = FhirError
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.status, exc.code = status, code
    exc.issues = [Issue(**i) for i in issues]
    exc.headers = headers
    return exc


def _inline(indices: list[int], originals: Mapping[int, tuple[str, Any]]) -> Found:
    """Base validation in this process, as without a pool (any other exception propagates,
    as it would inline)."""
    for index in indices:
        rtype, body = originals[index]
        try:
            res.validate(body, rtype)
        except FhirError as exc:
            return index, exc
    return None


class _Chunk:
    __slots__ = ("indices", "future", "executor", "found", "resolved")

    def __init__(self, indices: list[int], future: Future | None, executor) -> None:
        self.indices = indices
        self.future = future
        self.executor = executor
        self.found: Found = None
        self.resolved = False


class PendingValidation:
    """The base validation of some entries of one request, running in the pool. Used by
    the request's thread only; each chunk's answer is kept, so asking again (a retried
    unit of work) does not wait again."""

    def __init__(self, pool: "ValidationPool", chunks: list[_Chunk],
                 originals: Mapping[int, tuple[str, Any]]) -> None:
        self.pool = pool
        self.chunks = chunks  # contiguous, ascending ranges of entry indices
        self.originals = originals
        self.indices = frozenset(i for c in chunks for i in c.indices)

    def first_error(self, upto: int | None = None) -> Found:
        """The failing entry with the lowest index (at most ``upto``), waiting for the
        answers that decide it; None when those entries are all valid."""
        for chunk in self.chunks:
            if upto is not None and chunk.indices[0] > upto:
                return None
            found = self._resolve(chunk)
            if found is not None:
                return found if upto is None or found[0] <= upto else None
        return None

    def cancel(self) -> None:
        """Drop the answers nobody will read (the request failed for another reason)."""
        for chunk in self.chunks:
            if not chunk.resolved and chunk.future is not None:
                chunk.future.cancel()

    def _resolve(self, chunk: _Chunk) -> Found:
        if chunk.resolved:
            return chunk.found
        out: Any = None
        inline = True  # unless the worker answered
        try:
            out = chunk.future.result(timeout=self.pool.result_timeout)
            inline = False
        except BrokenProcessPool:
            self.pool.lost(chunk.executor, "a validation worker died")
        except FutureTimeout:
            chunk.future.cancel()
            self.pool.lost(chunk.executor, f"no answer in {self.pool.result_timeout:g} s",
                           kill=True)
        except CancelledError:  # the pool was shut down meanwhile
            pass
        except Exception:  # e.g. an answer that would not unpickle: this request inline
            log.exception("parallel validation failed; validating inline")
        if inline:
            self.pool.fallbacks += 1
            found = _inline(chunk.indices, self.originals)
        elif out is None:
            found = None
        else:
            index, kind, data = out
            if kind == _INVALID:
                found = index, rebuild_error(data)
            else:  # not a FhirError in the worker: this entry and those after it inline
                log.warning("parallel validation of entry %s: %s; validating inline",
                            index, data)
                found = _inline(chunk.indices[chunk.indices.index(index):], self.originals)
        chunk.found, chunk.resolved = found, True
        return found


class ValidationPool:
    """``workers`` processes validating with fhir.resources R4B (see the module text).

    ``submit`` answers None whenever the pool cannot take the work now (off, too few
    entries, not started yet, lost): the caller then validates inline, as without a pool.
    """

    def __init__(self, workers: int, min_entries: int = 20, *, retry_after: float = 5.0,
                 result_timeout: float = RESULT_TIMEOUT) -> None:
        self.workers = max(0, int(workers))
        self.min_entries = max(1, int(min_entries))
        self.retry_after = retry_after
        self.result_timeout = result_timeout
        #: Bundles validated in the pool, and hand-offs that had to fall back inline
        self.submitted = 0
        self.fallbacks = 0
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._starting = False
        self._closed = False
        self._failures = 0
        self._retry_at = 0.0

    # ------------------------------------------------------------ state

    @property
    def enabled(self) -> bool:
        """Would this process ever use the pool?"""
        if self.workers <= 0 or self._closed:
            return False
        me = multiprocessing.current_process()
        return not me.daemon and not getattr(me, "_inheriting", False)

    def ready(self) -> bool:
        self._check_pid()
        return self._executor is not None

    def _check_pid(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's executor is not ours
            self._reset()

    def worker_pids(self) -> list[int]:
        """The live worker processes (for operations and tests)."""
        ex = self._executor
        procs = getattr(ex, "_processes", None) or {}
        return [p.pid for p in list(procs.values()) if p.is_alive()]

    # ------------------------------------------------------------ start and stop

    def start(self, wait: float | None = None) -> bool:
        """Start the workers in the background unless running or starting; with ``wait``,
        wait up to that many seconds for them. Whether the pool is ready."""
        self._check_pid()
        if not self.enabled:
            return False
        with self._lock:
            begin = (self._executor is None and not self._starting
                     and time.monotonic() >= self._retry_at)
            if begin:
                self._starting = True
        if begin:
            threading.Thread(target=self._start, name="fhirgw-validation-pool",
                             daemon=True).start()
        if wait:
            deadline = time.monotonic() + wait
            while self._executor is None and self._starting and time.monotonic() < deadline:
                time.sleep(0.02)
        return self._executor is not None

    def _start(self) -> None:
        ex = None
        try:
            ex = ProcessPoolExecutor(self.workers, mp_context=_WorkerContext(),
                                     initializer=_worker_start)
            for f in [ex.submit(_ready) for _ in range(self.workers)]:
                f.result(timeout=START_TIMEOUT)
        except Exception as exc:
            if ex is not None:
                _discard(ex, kill=True)
            with self._lock:
                self._failures += 1
                self._retry_at = time.monotonic() + self._backoff()
                self._starting = False
            if not self._closed:
                log.warning("validation workers did not start (%s); validating inline", exc)
            return
        with self._lock:
            keep = not self._closed and self._pid == os.getpid()
            if keep:
                self._executor, self._failures = ex, 0
            self._starting = False
        if keep:
            log.info("parallel validation: %d worker process(es) ready", self.workers)
        else:
            _discard(ex)

    def _backoff(self) -> float:
        return min(60.0, self.retry_after * 2 ** max(0, self._failures - 1))

    def lost(self, executor, reason: str, *, kill: bool = False) -> None:
        """``executor`` failed: forget it; a later request starts a new one."""
        with self._lock:
            if executor is None or self._executor is not executor:
                return
            self._executor = None
            self._failures += 1
            self._retry_at = time.monotonic() + self._backoff()
        log.warning("parallel validation: %s; validating inline, new workers in %.0f s",
                    reason, self._retry_at - time.monotonic())
        _discard(executor, kill=kill)

    def close(self) -> None:
        """Stop the workers (app shutdown); queued work is cancelled."""
        with self._lock:
            self._closed = True
            ex, self._executor = self._executor, None
        if ex is not None and self._pid == os.getpid():
            # let the executor's thread finish its shutdown (the workers end their current
            # chunk; queued ones are cancelled): Python 3.11 may report a closed pipe if
            # the interpreter exits meanwhile
            thread = getattr(ex, "_executor_manager_thread", None)
            _discard(ex)
            if thread is not None:
                thread.join(timeout=5)

    # ------------------------------------------------------------ work

    def wanted(self, count: int) -> bool:
        """Should ``count`` entries go to the pool? Starts it (in the background) when
        they should and it is not running: this request still validates inline."""
        if count < self.min_entries or not self.enabled:
            return False
        if self.ready():
            return True
        self.start()
        return False

    def submit(self, items: list[Item],
               originals: Mapping[int, tuple[str, Any]]) -> PendingValidation | None:
        """Hand ``items`` (ascending entry indices) to the workers, in one contiguous chunk
        per worker. ``originals`` maps each index to (type, parsed resource), for inline
        validation when the pool fails. None when the pool cannot take them now."""
        if not items or not self.wanted(len(items)):
            return None
        ex = self._executor
        if ex is None:
            return None
        parts = max(1, min(self.workers, len(items) // MIN_CHUNK))
        size = -(-len(items) // parts)
        chunks: list[_Chunk] = []
        try:
            for start in range(0, len(items), size):
                part = items[start:start + size]
                chunks.append(_Chunk([i for i, _t, _b in part], ex.submit(validate_chunk, part),
                                     ex))
        except Exception as exc:  # broken or shut down between the check and the submit
            for c in chunks:
                c.future.cancel()
            self.lost(ex, f"the pool refused work ({exc.__class__.__name__})")
            return None
        self.submitted += 1
        return PendingValidation(self, chunks, originals)


def _discard(ex: ProcessPoolExecutor, *, kill: bool = False) -> None:
    procs = list((getattr(ex, "_processes", None) or {}).values()) if kill else []
    try:
        ex.shutdown(wait=False, cancel_futures=True)
    except Exception:  # already broken or shut down
        pass
    for p in procs:  # a stuck worker would not read the shutdown sentinel
        try:
            p.terminate()
        except Exception:
            pass
