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
* a dead worker, a late answer, or a resource that cannot be serialised: those entries
  are validated inline, and a lost pool is recreated in the background a little later;
* a worker answer that is not a plain FHIR error (a bug, an unexpected exception) is
  re-checked inline, so whatever inline validation would raise is raised.

It does not lower the CPU spent per resource (the work is the same, plus serialisation);
it lowers the wall time of a Bundle by using a second core.

The request's own thread talks to the workers: it writes the work into a worker's pipe
when it submits and reads the answer when it needs it. No thread sits in between (what a
``ProcessPoolExecutor`` has: a manager thread and a queue feeder, each of which needs the
GIL to pass the work on, and gets it only when the busy request thread is made to drop it,
every 5 ms: the worker started late). On the ingest benchmark (in process, 100-entry
Bundles) requests waited 0.7-3.4 ms per Bundle for answers that needed ~10 ms of CPU in a
~17 ms request; without the intermediaries, 0.3-0.6 ms. A worker takes its work in order:
several requests may hand work to the same worker, and whichever of them waits reads the
answers in order and passes on the others'.

For a transaction the worker gets the request body as received and the positions of the
entries to validate, and parses it itself: the request thread does not serialise each
resource again.

A large transaction's body goes to the workers as soon as the request's thread has it,
before that thread parses it (``submit_early``): each worker picks the entries it would
have been handed from the body itself (``select``: POST and PUT entries of a supported
type, split as ``plan`` splits them) and starts on them while the request parses,
authorizes and resolves. The request then adopts that work (``adopt``) for the entries it
would have handed over, if each worker's pick is exactly what it would have sent; a pick
that differs (an entry's URL naming another type than its resource, say) is validated
inline, as after a lost worker. The validation that is the longer of the two halves of a
Bundle's work when the host is busy starts ~1 ms earlier (the parse and the entries, on
the request's side, no longer come first).
"""
from __future__ import annotations

import collections
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import os
import pickle
import re
import signal
import sys
import threading
import time
import types
from collections.abc import Mapping
from typing import Any

try:
    import fcntl
except ImportError:  # not a Unix: pipes keep their default size
    fcntl = None  # type: ignore[assignment]

import orjson

from ..model import errors as _errors
from ..model import resources as res
from ..model.errors import FhirError, Issue
from ..model.jsontypes import compile_checks
from ..runtime import tune_gc

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
#: most of a request's items its own thread may validate (see ``ValidationPool.balance``)
MAX_INLINE_SHARE = 0.5
#: smallest body handed to the workers before it is parsed (``submit_early``): 20 entries
#: (``ValidationPool.min_entries``) take a few KB at the least
EARLY_MIN_BYTES = 8192
#: what a transaction Bundle's body holds (a batch's, unless one of its resources says so)
_TRANSACTION = re.compile(rb'"type"\s*:\s*"transaction"')
#: bytes of work a worker's pipe holds (Linux ``F_SETPIPE_SZ``, best effort): a request
#: handing work to a busy worker does not wait for it to read (a 100-entry Bundle is ~300 KB)
PIPE_BYTES = 1 << 20

#: (entry index, resource type, JSON of the resource); None instead of the JSON: the
#: resource is ``Bundle.entry[index].resource`` of the body handed over with the items
Item = tuple[int, str, bytes | None]
Found = tuple[int, FhirError] | None   # the first failing entry, if any

_INVALID, _UNEXPECTED = "invalid", "unexpected"


# ---------------------------------------------------------------- in the worker

def warm_models() -> None:
    """Build the common R4B models, import the classes their fields reach
    (``resources.preload``) and compile their JSON type checks
    (``jsontypes.compile_checks``), so that the first requests do not pay for it."""
    for rtype in WARM_TYPES:
        if rtype not in res.SUPPORTED:
            continue
        try:
            res.model_class(rtype).model_validate({"resourceType": rtype})
        except Exception:  # required elements missing: the model is built all the same
            pass
    res.preload(WARM_TYPES)
    compile_checks(res.model_class(t) for t in WARM_TYPES if t in res.SUPPORTED)


def _worker_start() -> None:
    """Import fhir.resources R4B and build the common models once, before any task; then
    freeze that heap out of the garbage collector's scans (``runtime.tune_gc``): a full
    collection over it held one Bundle's answer up by ~40 ms."""
    warm_models()
    tune_gc()


def _parse(raw: bytes) -> Any:
    # JSON the parent wrote itself: orjson is enough for validation (a decimal's exact text
    # does not change its verdict; orjson refused to write an integer beyond 64 bits), and
    # res.loads, which also scans for such numbers (twice orjson's time), only takes what
    # orjson cannot parse
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return res.loads(raw)


#: every byte to a space but the digits, which become "0": a run of 19 zeros then marks a
#: number (or a string) with 19 digits or more in a row
_DIGITS = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_LONG_RUN = b"0" * 19


def _parse_body(body: bytes) -> Any:
    """The Bundle as received, with the values the parent's ``res.loads`` gave it, as far as
    validation can tell. orjson reads an integer beyond 64 bits (19 digits or more) as a
    float, which would change the verdict: a body with such a run of digits anywhere goes to
    ``res.loads``, as does one orjson refuses. Otherwise only a decimal's exact text
    differs (which does not change the verdict, see ``_parse``), and ``res.loads``' scan
    for such decimals (three times orjson's time on a 100-resource Bundle) is skipped: a
    run of digits is found by one ``translate`` and one substring search."""
    if _LONG_RUN in body.translate(_DIGITS):
        return res.loads(body)
    return _parse(body)


def _error_data(exc: FhirError) -> tuple:
    """A FhirError as plain data (exceptions with keyword-only state do not pickle)."""
    return (type(exc).__name__, exc.status, exc.code, str(exc.args[0]) if exc.args else "",
            [dict(vars(i)) for i in exc.issues], dict(exc.headers or {}))


def plan(count: int, workers: int, share: float) -> tuple[int, list[range]]:
    """How ``count`` items of a request are shared out: how many of the last ones the
    request keeps to validate itself (``share`` of them, but never all), and the ranges of
    the others that go to the workers, one contiguous range per worker (at most
    ``workers``, none smaller than ``MIN_CHUNK`` unless there is only one). The request
    (``submit``, ``adopt``) and the workers (``validate_early``) share it out alike."""
    kept = min(count - 1, int(count * share)) if count else 0
    given = count - kept
    parts = max(1, min(workers, given // MIN_CHUNK))
    size = max(1, -(-given // parts))
    return kept, [range(start, min(start + size, given)) for start in range(0, given, size)]


def select(bundle: Any) -> list[tuple[int, str]]:
    """(index, resource type) of each entry of a transaction Bundle that its request hands
    to base validation, as far as the body alone tells: POST and PUT entries whose
    resource is of a supported type (the request names the type from the entry's URL;
    where the two differ, the request does not take the worker's verdict). Empty for
    anything but a transaction."""
    if not isinstance(bundle, dict) or bundle.get("type") != "transaction":
        return []
    entries = bundle.get("entry")
    out = []
    for index, entry in enumerate(entries if isinstance(entries, list) else ()):
        if not isinstance(entry, dict):
            continue
        request, resource = entry.get("request"), entry.get("resource")
        if not isinstance(request, dict) or not isinstance(resource, dict) or \
                str(request.get("method") or "").upper() not in ("POST", "PUT"):
            continue
        rtype = resource.get("resourceType")
        if isinstance(rtype, str) and rtype in res.SUPPORTED:
            out.append((index, rtype))
    return out


def validate_early(body: bytes, part: int, workers: int,
                   share: float) -> tuple[tuple[int, str, Any] | None, list[tuple[int, str]]]:
    """A worker's share of a transaction it was sent whole (``submit_early``): the entries
    ``select`` finds, shared out by ``plan`` over ``workers``, range ``part`` of them,
    validated as ``validate_chunk`` does; with the (index, type) pairs of that range."""
    try:
        bundle = _parse_body(body)
    except Exception:  # not JSON: the request refuses it itself
        return None, []
    picked = select(bundle)
    _kept, ranges = plan(len(picked), workers, share)
    mine = [picked[j] for j in ranges[part]] if part < len(ranges) else []
    return validate_chunk([(i, t, None) for i, t in mine], entries=bundle["entry"]
                          if mine else None), mine


def validate_chunk(items: list[Item], body: bytes | None = None,
                   entries: list | None = None) -> tuple[int, str, Any] | None:
    """Base-validate ``items`` in order; None when all are valid, else the first that is
    not: ``(index, "invalid", error data)`` for a FhirError, ``(index, "unexpected", text)``
    for anything else (the parent re-checks that one inline). ``entries``: the Bundle's
    entries, parsed already (else parsed from ``body`` when an item needs it). Runs in a
    worker."""
    for index, rtype, raw in items:
        try:
            if raw is not None:
                resource = _parse(raw)
            else:
                if entries is None:
                    # the body as received, with the values the parent parsed from it
                    entries = _parse_body(body)["entry"]
                resource = entries[index]["resource"]
        except Exception as exc:
            return index, _UNEXPECTED, repr(exc)
        try:
            res.validate(resource, rtype)
        except FhirError as exc:
            return index, _INVALID, _error_data(exc)
        except Exception as exc:
            return index, _UNEXPECTED, repr(exc)
    return None


def _serve(work: multiprocessing.connection.Connection,
           answers: multiprocessing.connection.Connection) -> None:
    """A worker's life: warm up, say so (its pid), then answer each message of work
    ``(items, body)`` with ``validate_chunk``'s answer, when it began and ended that work
    (``time.monotonic``) and None, in order, until the parent closes its end of the pipe.
    A message ``(None, body, (part, workers, share))`` is answered with
    ``validate_early``'s answer and the (index, type) pairs it validated in place of None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is for the server; it closes us
    _worker_start()
    answers.send_bytes(pickle.dumps(os.getpid()))
    while True:
        try:
            message = work.recv_bytes()
        except (EOFError, OSError):
            return
        items, body, *early = pickle.loads(message)
        started = time.monotonic()   # one clock for every process of the machine
        picked = None
        if items is None:   # the whole body: this worker's share (``submit_early``)
            found, picked = validate_early(body, *early[0])
        else:
            found = validate_chunk(items, body)
        answer = pickle.dumps((found, started, time.monotonic(), picked),
                              pickle.HIGHEST_PROTOCOL)
        try:
            answers.send_bytes(answer)
        except OSError:   # the parent closed its end (stopping): nobody to answer
            return


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


class WorkerLost(Exception):
    """The worker died, stopped answering, or answered something unreadable."""


class _Job:
    __slots__ = ("answer", "done")

    def __init__(self) -> None:
        self.answer: Any = None
        self.done = False


class _Worker:
    """One worker process and the two pipes to it. Work is written in order (``send``);
    answers come back in the same order, read by whichever request waits for one
    (``wait``), which hands each answer to its job."""

    def __init__(self) -> None:
        work_r, self._work = multiprocessing.Pipe(duplex=False)
        self._answers, answers_w = multiprocessing.Pipe(duplex=False)
        if fcntl is not None:
            try:
                fcntl.fcntl(self._work.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031),
                            PIPE_BYTES)
            except OSError:  # not Linux, or above /proc/sys/fs/pipe-max-size: the default
                pass
        self.process = _WorkerProcess(target=_serve, args=(work_r, answers_w),
                                      name="fhirgw-validation", daemon=True)
        self.process.start()
        work_r.close()
        answers_w.close()
        self.pid: int | None = None
        self._sending = threading.Lock()
        self._cond = threading.Condition()
        self._inflight: collections.deque[_Job] = collections.deque()
        self._reader = False
        self.broken: str | None = None

    def ready(self, timeout: float) -> None:
        """Wait for the worker's hello (its pid) after its warm-up."""
        if not self._answers.poll(timeout):
            raise TimeoutError(f"no worker ready in {timeout:g} s")
        self.pid = pickle.loads(self._answers.recv_bytes())

    @property
    def load(self) -> int:
        return len(self._inflight)

    def send(self, items: list[Item] | None, body: bytes | None,
             early: tuple[int, int, float] | None = None) -> _Job:
        """Write work: ``items`` of ``body``, or (``items`` None) this worker's ``early``
        share of the whole of ``body`` (part, workers, share)."""
        message = pickle.dumps((items, body) if early is None else (items, body, early),
                               pickle.HIGHEST_PROTOCOL)
        self.collect()
        job = _Job()
        with self._sending:  # the order of _inflight is the order in the pipe
            if self.broken:
                raise WorkerLost(self.broken)
            self._inflight.append(job)
            try:
                self._work.send_bytes(message)
            except (OSError, ValueError) as exc:
                self._fail(f"the worker's pipe broke ({exc.__class__.__name__})")
                raise WorkerLost(self.broken) from exc
        return job

    def wait(self, job: _Job, timeout: float) -> Any:
        """The answer to ``job``: read here, or by another request reading the answers
        before it. WorkerLost when the worker dies, or answers nothing in ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not job.done:
                if self.broken:
                    raise WorkerLost(self.broken)
                if not self._reader:
                    self._reader = True
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkerLost(f"no answer in {timeout:g} s")
                self._cond.wait(left)
            else:
                return job.answer
        self._read(job, deadline, timeout)   # this thread reads, until its own answer arrives
        if not job.done:
            raise WorkerLost(self.broken)
        return job.answer

    def _read(self, job: _Job | None, deadline: float = 0.0, timeout: float = 0.0) -> None:
        """The reader's loop (the caller took the reader's part; this gives it back): hand
        out answers until ``job`` has its own, waiting until ``deadline`` (then the worker
        is lost: no answer in ``timeout``), or, with no ``job``, those already in the pipe."""
        try:
            while job is None or not job.done:
                try:
                    if job is None:
                        ready = self._answers.poll(0)
                    else:
                        left = deadline - time.monotonic()
                        ready = left > 0 and self._answers.poll(left)
                except (EOFError, OSError, ValueError):   # dead, or its pipe closed (stop)
                    self._fail(self.broken or "the worker died")
                    break
                if not ready:
                    if job is not None:
                        self._fail(f"no answer in {timeout:g} s")
                    break
                if not self._take_answer():
                    break
        finally:
            with self._cond:
                self._reader = False
                self._cond.notify_all()

    def _take_answer(self) -> bool:
        """Read the next answer and hand it to the oldest job without one (the reader's
        part); False when the worker is lost."""
        try:
            answer = pickle.loads(self._answers.recv_bytes())
        except (EOFError, OSError, ValueError):   # dead, or its pipe closed (stop)
            self._fail(self.broken or "the worker died")
            return False
        except Exception as exc:  # an answer that does not unpickle
            self._fail(f"an unreadable answer ({exc.__class__.__name__})")
            return False
        with self._cond:
            head = self._inflight.popleft() if self._inflight else None
            if head is not None:
                head.answer, head.done = answer, True
                self._cond.notify_all()
        if head is None:   # out of step with its work: trust it no more
            self._fail("an answer to no work")
            return False
        return True

    def collect(self) -> None:
        """Hand out the answers already in the pipe, without waiting, unless a request is
        reading them. ``send`` does before it writes: answers that no request waits for
        (work sent early and never adopted: a batch, a request refused before its
        entries) are read off as work keeps coming, so they do not fill the answers' pipe
        and stall the worker (and then the requests writing to it)."""
        with self._cond:
            if self._reader or not self._inflight or self.broken:
                return
            self._reader = True
        self._read(None)

    def _fail(self, reason: str) -> None:
        with self._cond:
            if not self.broken:
                self.broken = reason
            self._cond.notify_all()

    def stop(self, *, kill: bool = False) -> None:
        """Close the pipes (the worker ends when it has read what was sent); ``kill``: do
        not wait for that."""
        self._fail("stopped")
        for conn in (self._work, self._answers):
            try:
                conn.close()
            except OSError:
                pass
        if kill and self.process.is_alive():
            self.process.terminate()


class _Workers:
    """One start of the pool: its workers live and are lost together."""

    def __init__(self, workers: list[_Worker]) -> None:
        self.workers = workers

    def stop(self, *, kill: bool = False, wait: float = 0.0) -> None:
        for w in self.workers:
            w.stop(kill=kill)
        deadline = time.monotonic() + wait
        for w in self.workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.terminate()


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
    """Some entries' validation: ``answer()`` waits for the worker's answer (raising
    WorkerLost when there will be none)."""
    __slots__ = ("indices", "answer", "owner", "found", "resolved", "started", "finished",
                 "expected")

    def __init__(self, indices: list[int], answer, owner: _Workers | None,
                 expected: list[tuple[int, str]] | None = None) -> None:
        self.indices = indices
        #: work sent early (``ValidationPool.adopt``): the (index, type) pairs the worker
        #: must have picked for its answer to count
        self.expected = expected
        self.answer = answer
        self.owner = owner
        self.found: Found = None
        self.resolved = False
        #: when the worker began and ended this chunk (None: it did not answer)
        self.started: float | None = None
        self.finished: float | None = None


class PendingValidation:
    """The base validation of some entries of one request, running in the pool. Used by
    the request's thread only; each chunk's answer is kept, so asking again (a retried
    unit of work) does not wait again."""

    def __init__(self, pool: "ValidationPool", chunks: list[_Chunk],
                 originals: Mapping[int, tuple[str, Any]], kept: int = 0) -> None:
        self.pool = pool
        #: how many of the request's items it kept to validate itself
        self.kept = kept
        self.chunks = chunks  # contiguous, ascending ranges of entry indices
        self.originals = originals
        self.indices = frozenset(i for c in chunks for i in c.indices)
        self.settled = False

    def first_error(self, upto: int | None = None) -> Found:
        """The failing entry with the lowest index (at most ``upto``), waiting for the
        answers that decide it; None when those entries are all valid. Asked for every
        entry (``upto`` None: the request's last look, before it commits), it also tells the
        pool how the request's wait and the workers' work lined up (``balance``)."""
        asked = time.monotonic() if upto is None and not self.settled else None
        found = self._first(upto)
        if asked is not None:
            self.settled = True
            done = [c for c in self.chunks if c.finished is not None]
            if done and len(done) == len(self.chunks):
                work = sum(c.finished - c.started for c in done)
                items = sum(len(c.indices) for c in done)
                self.pool.balance(asked - max(c.finished for c in done), work / items,
                                  items + self.kept)
        return found

    def _first(self, upto: int | None) -> Found:
        for chunk in self.chunks:
            if upto is not None and chunk.indices[0] > upto:
                return None
            found = self._resolve(chunk)
            if found is not None:
                return found if upto is None or found[0] <= upto else None
        return None

    def _resolve(self, chunk: _Chunk) -> Found:
        if chunk.resolved:
            return chunk.found
        out: Any = None
        inline = True  # unless the worker answered
        try:
            out, chunk.started, chunk.finished, picked = chunk.answer()
            inline = chunk.expected is not None and picked != chunk.expected
            if inline:   # the worker's pick is not what this request hands over
                log.debug("early validation picked other entries; validating inline")
        except WorkerLost as exc:
            self.pool.lost(chunk.owner, str(exc), kill=True)
        except Exception:  # anything else: this request inline
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
        #: of those submitted, how many were adopted from work sent early
        self.early = 0
        #: the share of a request's items its own thread validates (``balance``)
        self.inline_share = 0.0
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._running: _Workers | None = None
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
        return self._running is not None

    @property
    def state(self) -> str:
        """``ready`` (workers up), ``starting`` (warming up: large transactions validate
        inline meanwhile), ``idle`` (not started: the first large transaction starts them,
        or they were lost and start again after a pause) or ``off``."""
        self._check_pid()
        if not self.enabled:
            return "off"
        if self._running is not None:
            return "ready"
        return "starting" if self._starting else "idle"

    def _check_pid(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's workers are not ours
            self._reset()

    def worker_pids(self) -> list[int]:
        """The live worker processes (for operations and tests)."""
        running = self._running
        return [w.pid for w in (running.workers if running else ())
                if w.pid is not None and w.process.is_alive()]

    # ------------------------------------------------------------ start and stop

    def start(self, wait: float | None = None) -> bool:
        """Start the workers in the background unless running or starting; with ``wait``,
        wait up to that many seconds for them. Whether the pool is ready."""
        self._check_pid()
        if not self.enabled:
            return False
        with self._lock:
            begin = (self._running is None and not self._starting
                     and time.monotonic() >= self._retry_at)
            if begin:
                self._starting = True
        if begin:
            threading.Thread(target=self._start, name="fhirgw-validation-pool",
                             daemon=True).start()
        if wait:
            deadline = time.monotonic() + wait
            while self._running is None and self._starting and time.monotonic() < deadline:
                time.sleep(0.02)
        return self._running is not None

    def _start(self) -> None:
        started: list[_Worker] = []
        try:
            for _ in range(self.workers):
                started.append(_Worker())
            deadline = time.monotonic() + START_TIMEOUT
            for w in started:
                w.ready(max(0.0, deadline - time.monotonic()))
        except Exception as exc:
            _Workers(started).stop(kill=True)
            with self._lock:
                self._failures += 1
                self._retry_at = time.monotonic() + self._backoff()
                self._starting = False
            if not self._closed:
                log.warning("validation workers did not start (%s); validating inline", exc)
            return
        running = _Workers(started)
        with self._lock:
            keep = not self._closed and self._pid == os.getpid()
            if keep:
                self._running, self._failures = running, 0
            self._starting = False
        if keep:
            log.info("parallel validation: %d worker process(es) ready", self.workers)
        else:
            running.stop(wait=5)

    def _backoff(self) -> float:
        return min(60.0, self.retry_after * 2 ** max(0, self._failures - 1))

    def lost(self, running: _Workers | None, reason: str, *, kill: bool = False) -> None:
        """``running`` failed: forget it; a later request starts new workers."""
        with self._lock:
            if running is None or self._running is not running:
                return
            self._running = None
            self._failures += 1
            self._retry_at = time.monotonic() + self._backoff()
        log.warning("parallel validation: %s; validating inline, new workers in %.0f s",
                    reason, self._retry_at - time.monotonic())
        running.stop(kill=kill)

    def close(self) -> None:
        """Stop the workers (app shutdown): each finishes what it was sent, then ends."""
        with self._lock:
            self._closed = True
            running, self._running = self._running, None
        if running is not None and self._pid == os.getpid():
            running.stop(wait=5)

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

    def balance(self, slack: float, per_item: float, items: int) -> None:
        """Move work between the workers and the requests' own threads, after a request
        that handed ``items`` entries over (some kept, see ``submit``) asked for the
        answers ``slack`` seconds after the workers were done (negative: it waited), at
        ``per_item`` seconds of the workers' time per entry.

        A request's thread has work of its own meanwhile (rules, references, index rows,
        SQL); when the worker takes longer, the request waits with a core idle, so it keeps
        the last entries to validate itself (``inline_share``, at most
        ``MAX_INLINE_SHARE``), and gives them back when the worker has time to spare.
        Half the difference moves: the entries kept cost the request's thread about what
        they cost the worker, so the two meet in the middle; each step goes half way
        again, which damps the noise of single requests."""
        if items <= 0 or per_item <= 0:
            return
        move = -slack / (2 * per_item) / items   # as a share of the request's items
        with self._lock:
            share = self.inline_share + move / 2
            self.inline_share = min(MAX_INLINE_SHARE, max(0.0, share))

    def submit(self, items: list[Item], originals: Mapping[int, tuple[str, Any]],
               body: bytes | None = None) -> PendingValidation | None:
        """Hand ``items`` (ascending entry indices) to the workers, in one contiguous chunk
        per worker, the least busy first, but for the last ``inline_share`` of them, which
        the request validates itself (they are not in ``PendingValidation.indices``).
        ``body``: the Bundle the items without JSON come from (see ``Item``). ``originals``
        maps each index to (type, parsed resource), for inline validation when the pool
        fails. None when the pool cannot take them now."""
        if not items or not self.wanted(len(items)):
            return None
        running = self._running
        if running is None:
            return None
        kept, ranges = plan(len(items), len(running.workers), self.inline_share)
        workers = sorted(running.workers, key=lambda w: w.load)
        chunks: list[_Chunk] = []
        try:
            for n, span in enumerate(ranges):
                part = items[span.start:span.stop]
                worker = workers[n % len(workers)]
                job = worker.send(part, body if any(r is None for _i, _t, r in part) else None)
                chunks.append(_Chunk([i for i, _t, _r in part], _answer(worker, job,
                                                                     self.result_timeout),
                                     running))
        except WorkerLost as exc:  # died between the check and the hand-off
            self.lost(running, f"a worker could not take work ({exc})", kill=True)
            return None
        self.submitted += 1
        return PendingValidation(self, chunks, originals, kept)

    def submit_early(self, body: bytes) -> "EarlyValidation | None":
        """Hand a transaction's whole ``body`` to every worker before the request parses
        it (see the module text); ``adopt`` takes the work up once the request knows its
        entries. None when the pool cannot take it now, or the body cannot be a large
        transaction (smaller than ``EARLY_MIN_BYTES``, or no ``"type": "transaction"`` in
        it)."""
        if len(body) < EARLY_MIN_BYTES or not _TRANSACTION.search(body) or \
                not self.enabled or not self.ready():
            return None
        running = self._running
        if running is None:
            return None
        share, count = self.inline_share, len(running.workers)
        jobs = []
        try:
            for part, worker in enumerate(sorted(running.workers, key=lambda w: w.load)):
                jobs.append((worker, worker.send(None, body, (part, count, share))))
        except WorkerLost as exc:
            self.lost(running, f"a worker could not take work ({exc})", kill=True)
            return None
        return EarlyValidation(running, jobs, share)

    def adopt(self, early: "EarlyValidation", items: list[Item],
              originals: Mapping[int, tuple[str, Any]]) -> PendingValidation | None:
        """The validation of ``items`` (as for ``submit``) by the work ``early`` sent: each
        worker's range of them, as ``plan`` shares them out with the share the work was
        sent with. None when that work cannot serve (the workers were lost since, or the
        request would not use the pool for ``items``): the caller submits or validates
        inline, and the early answers are dropped unread."""
        if not items or early.running is not self._running or not self.wanted(len(items)):
            return None
        kept, ranges = plan(len(items), len(early.jobs), early.share)
        chunks = []
        for (worker, job), span in zip(early.jobs, ranges):
            part = items[span.start:span.stop]
            chunks.append(_Chunk([i for i, _t, _r in part],
                                 _answer(worker, job, self.result_timeout), early.running,
                                 expected=[(i, t) for i, t, _r in part]))
        self.submitted += 1
        self.early += 1
        return PendingValidation(self, chunks, originals, kept)


class EarlyValidation:
    """A transaction's body handed to every worker whole (``ValidationPool.submit_early``)
    and not yet adopted: the pool it went to, each worker with its job, and the share of
    the entries the request keeps that the workers assumed."""
    __slots__ = ("running", "jobs", "share")

    def __init__(self, running: _Workers, jobs: list[tuple[_Worker, _Job]],
                 share: float) -> None:
        self.running = running
        self.jobs = jobs
        self.share = share


def _answer(worker: _Worker, job: _Job, timeout: float):
    return lambda: worker.wait(job, timeout)
