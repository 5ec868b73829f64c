"""The Repository: every FHIR interaction on storage, each inside one unit of work.

``Repository.run(fn)`` opens a write transaction, calls ``fn(tx)`` and commits; a deadlock
or serialization failure on PostgreSQL retries the whole unit. ``Tx`` names each storage
interaction of FHIR R4 (http.html) once: create, read, vread, update, patch, delete,
history, search and the conditional forms, which are written on top of the primitives.

Concurrency: on SQLite every writer begins with ``BEGIN IMMEDIATE`` (one writer at a time,
so check-then-write is atomic). On PostgreSQL each write takes a transaction-scoped advisory
lock on the resource (``Type/id``) and each conditional interaction one on its condition
(``Type?query``), so eight identical ``If-None-Exist`` creates produce one resource and two
``If-Match`` updates of the same version cannot both win, while writes to different
resources run in parallel.
"""
from __future__ import annotations

import email.utils
import functools
import hashlib
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import jsonpatch
from sqlalchemy import and_, func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from ..model import resources as res
from ..model.ids import new_id
from ..model.errors import (BadRequest, FhirError, Gone, NotFound, PreconditionFailed,
                            TooManyMatches, Unprocessable)
from . import cacheflush
from .bulk import INDEX_ROW_COLUMNS, Batch, add_index_rows
from .db import is_sqlite_file
from .fastread import FastReader
from .tables import INDEX_TABLES, resource, resource_history

T = TypeVar("T")
Validator = Callable[[dict, str], dict]


# ---------------------------------------------------------------- time

class _Clock:
    """Microseconds since the epoch, strictly increasing within the process."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def now(self) -> int:
        with self._lock:
            t = time.time_ns() // 1000
            if t <= self._last:
                t = self._last + 1
            self._last = t
            return t


clock = _Clock()


_SECOND = [-1, ""]  # the last whole second formatted, shared (a cache, not state)


def instant(us: int) -> str:
    """FHIR instant for epoch microseconds: ``2026-11-28T10:40:02.123456+00:00``.

    >>> instant(1_700_000_000_123_456)
    '2023-11-14T22:13:20.123456+00:00'
    """
    sec, frac = divmod(us, 1_000_000)
    cached = _SECOND
    if cached[0] != sec:  # datetime formatting costs ~10 µs; most calls share a second
        cached[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        cached[0] = sec
        return f"{cached[1]}.{frac:06d}+00:00"
    return f"{cached[1]}.{frac:06d}+00:00"


@functools.lru_cache(maxsize=4096)
def _http_date(sec: int) -> str:
    return email.utils.formatdate(sec, usegmt=True)


def http_date(us: int) -> str:
    """``Last-Modified`` form of epoch microseconds: ``Tue, 14 Nov 2023 22:13:20 GMT``.

    >>> http_date(1_700_000_000_123_456)
    'Tue, 14 Nov 2023 22:13:20 GMT'
    """
    return _http_date(us // 1_000_000)


# ---------------------------------------------------------------- results

@dataclass(frozen=True, slots=True)
class Stored:
    """One version of a resource as stored (``body`` is None for a deletion)."""

    res_type: str
    res_id: str
    version: int
    last_updated: int
    deleted: bool
    body: bytes | None
    method: str = "PUT"
    #: the written resource as a dict, when this process just wrote it (read-only: rules
    #: and the audit look at it instead of parsing ``body`` again)
    parsed: dict | None = field(default=None, compare=False, repr=False)

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    @property
    def ref(self) -> str:
        return f"{self.res_type}/{self.res_id}"

    def resource(self) -> dict:
        return res.loads(self.body) if self.body is not None else {}


@dataclass(frozen=True, slots=True)
class WriteResult:
    stored: Stored
    created: bool = False
    #: a conditional create that matched an existing resource (nothing written)
    matched: bool = False


@dataclass
class HistoryPage:
    entries: list[Stored]
    next_cursor: int | None
    total: int | None = None


@dataclass(slots=True)
class _Pending:
    """One version on its way into the tables (see ``Tx._write_many``)."""

    res_type: str
    res_id: str
    body: dict | None
    method: str
    current: Any
    now: int
    version: int
    data: bytes | None
    rules: list
    previous: dict | None
    rid: int


#: an update or deletion keeps the version it replaces: its body moves from the resource row
#: into its history row (see ``Tx._write_many``; ``store.bulk.Batch`` SQL)
_KEEP_OLD_BODY = ("UPDATE resource_history SET body = ? WHERE res_type = ? AND res_id = ? "
                  "AND version = ? AND body IS NULL")
_UPDATE_RESOURCE = ("UPDATE resource SET version = ?, last_updated = ?, deleted = ?, body = ? "
                    "WHERE rid = ?")
#: history rows with the resource row of the same version: a current version's body is
#: stored once, in ``resource.body``, and its history row's body stays NULL (so is a
#: deletion's). Databases written before keep a copy in both; either way
#: ``_history_body()`` is the version's body.
_HISTORY_WITH_CURRENT = resource_history.outerjoin(
    resource, and_(resource.c.rid == resource_history.c.rid,
                   resource.c.version == resource_history.c.version))


def _history_body():
    return func.coalesce(resource_history.c.body, resource.c.body).label("body")


#: the columns of the resource and history rows ``Tx._write_many`` inserts
#: (``store.bulk.Batch``; new resource rows have keys from ``Tx._new_rids``)
_RESOURCE_COLUMNS = ("rid", "res_type", "res_id", "version", "last_updated", "deleted", "body")
_HISTORY_COLUMNS = ("rid", "res_type", "res_id", "version", "last_updated", "method",
                    "deleted", "body")


def _lock_key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True)


def parse_etag(value: str | None) -> int | None:
    """``W/"3"`` or ``"3"`` or ``3`` -> 3."""
    if value is None:
        return None
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    v = v.strip('"')
    if not v.isdigit():
        raise BadRequest(f"If-Match must be an ETag such as W/\"3\", got {value!r}",
                         expression="If-Match")
    return int(v)


def _with_meta(body: dict, res_id: str, version: int, last_updated: int) -> dict:
    """The stored form: id and meta.versionId/lastUpdated set by the server, first keys."""
    meta = dict(body.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = instant(last_updated)
    out = {"resourceType": body["resourceType"], "id": res_id, "meta": meta}
    for k, v in body.items():
        if k not in out:
            out[k] = v
    return out


# ---------------------------------------------------------------- repository

class WriteRule:
    """A workflow rule the repository applies to every write of its ``types``, whatever
    the interaction (create, update, patch, transaction entry). Raise a FhirError to refuse
    the write; the whole unit of work then rolls back."""

    types: frozenset[str] = frozenset()

    def before_write(self, tx: "Tx", res_type: str, res_id: str, body: dict,
                     previous: dict | None) -> dict:
        """Check (and possibly complete) the new version before it is stored."""
        return body

    def after_write(self, tx: "Tx", stored: Stored, previous: dict | None) -> None:
        """React to a stored version inside the same transaction."""

    def before_commit(self, tx: "Tx") -> None:
        """Work deferred to the end of the unit of work (it sees every entry of a Bundle)."""


class Repository:
    def __init__(self, engine: Engine, search: Any, validator: Validator | None = None,
                 max_retries: int = 5):
        self.engine = engine
        self.search_engine = search
        self.validator = validator or (lambda body, rtype: res.validate(body, rtype))
        self.is_pg = engine.dialect.name == "postgresql"
        #: PostgreSQL: the name and step of ``resource.rid``'s sequence, and keys drawn
        #: from it and not handed out yet (``Tx._new_rids``)
        self.rid_sequence: tuple[str, int] | None = None
        self._rids: list[int] = []
        self._rids_lock = threading.Lock()
        self.max_retries = max_retries
        #: prepared read by id on raw connections (None: not available, e.g. in-memory DB)
        fast = FastReader(engine)
        self.fast: FastReader | None = fast if fast.usable else None
        #: workflow rules, called inside the unit of work (see ``WriteRule``)
        self.rules: list[WriteRule] = []
        #: called once the unit of work has committed, with every version it wrote
        self.after_commit: list[Callable[[list[Stored]], None]] = []
        #: SQLite file databases: a unit that waits before it commits (``commit_checks``)
        #: writes its pages to the WAL first (``store.cacheflush``); decided on first use
        self._flush_early: bool | None = None if is_sqlite_file(engine) else False

    @contextmanager
    def connect(self, write: bool = False):
        conn = self.engine.connect()
        if write:
            conn = conn.execution_options(fhirgw_write=True)
        try:
            with conn.begin():
                yield conn
        finally:
            conn.close()

    def run(self, fn: Callable[["Tx"], T], write: bool = True) -> T:
        """Call ``fn(tx)`` in one transaction; retry it on deadlock/serialization failure,
        and when the connection was lost before the commit (the server ended it while it
        waited in the pool, see ``store.db.looks_alive``: the transaction never happened).
        A connection lost during the commit is not retried: the commit may have happened."""
        attempt = 0
        while True:
            committing = False
            try:
                with self.connect(write=write) as conn:
                    tx = Tx(self, conn)
                    result = fn(tx)
                    try:
                        if tx.written:
                            for rule in self.rules:
                                rule.before_commit(tx)
                        tx.send()
                        if tx.commit_checks and self.flush_early:
                            cacheflush.flush(conn.connection.driver_connection)
                    finally:   # also after a rule failed: then a check's error comes first
                        for check in tx.commit_checks:
                            check()
                    committing = True
            except DBAPIError as exc:
                attempt += 1
                lost = exc.connection_invalidated and not committing
                if attempt > self.max_retries or not (lost or self._retryable(exc)):
                    raise
                time.sleep(0.005 * attempt)
                continue
            if tx.written:
                for callback in self.after_commit:
                    callback(tx.written)
            return result

    @property
    def flush_early(self) -> bool:
        """Does a unit that waits before its commit write its pages to the WAL first?"""
        if self._flush_early is None:
            self._flush_early = cacheflush.available()
        return self._flush_early

    def _retryable(self, exc: DBAPIError) -> bool:
        code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if code in ("40001", "40P01", "23505"):
            return True
        return "database is locked" in str(exc.orig)

    # read-only conveniences (each its own short transaction)
    def read(self, res_type: str, res_id: str) -> Stored:
        return self.run(lambda tx: tx.read(res_type, res_id), write=False)


#: PostgreSQL: resource keys a process draws from the sequence at a time (``Tx._new_rids``):
#: 16 ``nextval`` of its step (256, migration 0011). A draw is one round trip, which took
#: ~0.8 ms under the ingest benchmark's load whatever it drew: at 256 keys a draw, one in
#: every 2.5 transaction Bundles paid it (0.33 ms per Bundle on average)
RID_BLOCK = 4096


class Tx:
    """The storage interactions, inside one open transaction on ``conn``."""

    def __init__(self, repo: Repository, conn: Connection):
        self.repo = repo
        self._conn = conn
        #: the rows written so far and not sent yet (see ``conn``)
        self._unsent: Batch | None = None
        #: SQLite: the largest resource key drawn in this unit of work
        self._rid_top: int | None = None
        self.written: list[Stored] = []
        #: called last before the commit, after the rules' ``before_commit``; one that
        #: raises rolls the unit back, and its error wins over one a rule raised. (A
        #: transaction Bundle waits here for the parallel validation of its entries, so
        #: that the AuditEvent is written meanwhile.)
        self.commit_checks: list[Callable[[], None]] = []

    @property
    def conn(self) -> Connection:
        """The unit of work's connection, every write so far sent on it: a statement run
        on it sees them.

        Writes are not sent when they are made: their rows wait in one ``Batch`` until the
        connection is used for anything else, or the unit ends (``send``). The rows of
        several writes then travel together: a transaction Bundle's resources and its
        AuditEvent (written by a rule after them) go in one COPY per table on PostgreSQL,
        one set of multi-row INSERTs on SQLite, where each write had its own."""
        if self._unsent is not None:
            self.send()
        return self._conn

    def send(self) -> None:
        """Send the writes not sent yet (``Repository.run`` does before it commits)."""
        batch, self._unsent = self._unsent, None
        if batch is not None:
            batch.run()

    @contextmanager
    def savepoint(self):
        """A nested transaction: when the block raises, what it wrote is undone (the rows
        sent rolled back, those not sent yet dropped, ``written`` as before) and the error
        goes on; otherwise its writes stay part of the unit. Use this, not
        ``conn.begin_nested()``: rows written in the block may not have been sent when it
        rolls back."""
        nested = self.conn.begin_nested()   # the writes before it are sent first
        mark = len(self.written)
        try:
            yield
            self.send()
        except BaseException:
            self._unsent = None
            del self.written[mark:]
            nested.rollback()
            raise
        nested.commit()

    # ------------------------------------------------------------ locks

    def lock(self, key: str) -> None:
        if self.repo.is_pg:
            self.conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (_lock_key(key),))

    def lock_many(self, keys: list[str]) -> None:
        """Take several locks in one statement, in a fixed order (no deadlock between two
        units locking overlapping sets)."""
        if self.repo.is_pg and keys:
            ordered = sorted({_lock_key(k) for k in keys})
            self.conn.exec_driver_sql(
                "SELECT count(pg_advisory_xact_lock(k)) FROM "
                "(SELECT unnest(%s::bigint[]) AS k ORDER BY 1) AS s", (ordered,))

    # ------------------------------------------------------------ reads

    def _current_row(self, res_type: str, res_id: str):
        return self.conn.execute(
            select(resource.c.rid, resource.c.version, resource.c.last_updated,
                   resource.c.deleted, resource.c.body)
            .where(resource.c.res_type == res_type, resource.c.res_id == res_id)
        ).first()

    def read(self, res_type: str, res_id: str) -> Stored:
        row = self._current_row(res_type, res_id)
        if row is None:
            raise NotFound(f"{res_type}/{res_id} is not known", expression=f"{res_type}.id")
        if row.deleted:
            raise Gone(f"{res_type}/{res_id} was deleted (version {row.version})",
                       headers={"ETag": f'W/"{row.version}"'})
        return Stored(res_type, res_id, row.version, row.last_updated, False, row.body)

    def vread(self, res_type: str, res_id: str, version: int) -> Stored:
        h = resource_history.c
        row = self.conn.execute(
            select(h.version, h.last_updated, h.deleted, _history_body(), h.method)
            .select_from(_HISTORY_WITH_CURRENT)
            .where(h.res_type == res_type, h.res_id == res_id, h.version == version)
        ).first()
        if row is None:
            if self._current_row(res_type, res_id) is None:
                raise NotFound(f"{res_type}/{res_id} is not known")
            raise NotFound(f"{res_type}/{res_id} has no version {version}",
                           expression=f"{res_type}.meta.versionId")
        if row.deleted:
            raise Gone(f"Version {version} of {res_type}/{res_id} is a deletion")
        return Stored(res_type, res_id, row.version, row.last_updated, False, row.body, row.method)

    def history(self, res_type: str | None = None, res_id: str | None = None, *,
                since: int | None = None, at: int | None = None, count: int = 50,
                cursor: int | None = None, with_total: bool = True,
                exclude: tuple[str, ...] = ()) -> HistoryPage:
        """History newest first; ``exclude`` leaves types out (system history)."""
        h = resource_history.c
        cond = []
        if res_type is not None:
            cond.append(h.res_type == res_type)
        if exclude:
            cond.append(h.res_type.not_in(exclude))
        if res_id is not None:
            cond.append(h.res_id == res_id)
            if self._current_row(res_type, res_id) is None:
                raise NotFound(f"{res_type}/{res_id} is not known")
        if since is not None:
            cond.append(h.last_updated >= since)
        if at is not None:
            cond.append(h.last_updated <= at)
        total = None
        if with_total:
            total = self.conn.execute(select(func.count()).select_from(resource_history)
                                      .where(and_(True, *cond))).scalar_one()
        if cursor is not None:
            cond.append(h.seq < cursor)
        rows = self.conn.execute(
            select(h.seq, h.res_type, h.res_id, h.version, h.last_updated, h.deleted,
                   _history_body(), h.method)
            .select_from(_HISTORY_WITH_CURRENT)
            .where(and_(True, *cond)).order_by(h.seq.desc()).limit(count + 1)
        ).all()
        more = len(rows) > count
        rows = rows[:count]
        entries = [Stored(r.res_type, r.res_id, r.version, r.last_updated, r.deleted, r.body,
                          r.method) for r in rows]
        return HistoryPage(entries, rows[-1].seq if more and rows else None, total)

    # ------------------------------------------------------------ search

    def find(self, res_type: str, items: list[tuple[str, str]], limit: int | None = 2
             ) -> list[tuple[int, str]]:
        """(rid, id) of current resources matching a condition such as ``identifier=s|v``."""
        if not items:
            raise BadRequest(f"A conditional interaction on {res_type} needs search criteria",
                             code="invalid")
        query = self.repo.search_engine.parse(res_type, items, strict=True)
        return self.repo.search_engine.find(self.conn, res_type, query, limit=limit)

    def search(self, res_type: str, items: list[tuple[str, str]], limit: int | None = 1000
               ) -> list[Stored]:
        """Current resources matching ``items`` (a search query), in one query for the
        matches and one for their bodies. For operations that gather related resources."""
        query = self.repo.search_engine.parse(res_type, items, strict=True)
        found = self.repo.search_engine.find(self.conn, res_type, query, limit=limit)
        if not found:
            return []
        rows = self.conn.execute(
            select(resource.c.rid, resource.c.res_id, resource.c.version,
                   resource.c.last_updated, resource.c.body)
            .where(resource.c.rid.in_([rid for rid, _ in found]))
        ).all()
        by_rid = {r.rid: r for r in rows}
        return [Stored(res_type, r.res_id, r.version, r.last_updated, False, r.body)
                for rid, _ in found if (r := by_rid.get(rid)) is not None]

    # ------------------------------------------------------------ writes

    def _write(self, res_type: str, res_id: str, body: dict | None, method: str,
               current=None) -> Stored:
        """Write a new version: resource row, history row, index rows. No checks here."""
        return self._write_many([(res_type, res_id, body, method, current)])[0]

    def _write_many(self, items: list[tuple]) -> list[Stored]:
        """Write new versions of several resources with a few batched statements: one
        insert (or update) of resource rows, one of history rows, one delete and one
        insert per index table. ``items`` are (type, id, body or None, method, current row
        or None). No checks here; rules run per item."""
        pending: list[_Pending] = []
        for position, (res_type, res_id, body, method, current) in enumerate(items):
            try:
                pending.append(self._prepare(res_type, res_id, body, method, current))
            except FhirError as exc:
                exc.batch_index = position  # which item of a batch failed
                raise
        new = [p for p in pending if p.current is None]
        old = [p for p in pending if p.current is not None]
        if new:
            for p, rid in zip(new, self._new_rids(len(new))):
                p.rid = rid

        def versions(batch: Batch) -> Batch:
            """The resource and history rows (and an update's old index rows gone)."""
            batch.insert(resource.name, _RESOURCE_COLUMNS, [
                (p.rid, p.res_type, p.res_id, p.version, p.now, p.body is None, p.data)
                for p in new])
            if old:
                # the replaced versions' bodies move into their history rows
                batch.execute(_KEEP_OLD_BODY, [
                    (p.current.body, p.res_type, p.res_id, p.current.version)
                    for p in old if not p.current.deleted and p.current.body is not None])
                batch.execute(_UPDATE_RESOURCE, [
                    (p.version, p.now, p.body is None, p.data, p.rid) for p in old])
                for table in INDEX_TABLES.values():
                    batch.delete_rids(table.name, [p.rid for p in old])
            # the new versions are current: their bodies are in their resource rows only
            return batch.insert(resource_history.name, _HISTORY_COLUMNS, [
                (p.rid, p.res_type, p.res_id, p.version, p.now, p.method, p.body is None, None)
                for p in pending])

        def extract_all() -> dict[str, list[tuple]]:
            index: dict[str, list[tuple]] = {}
            extract = self.repo.search_engine.index_tuples
            for p in pending:
                if p.body is not None:
                    add_index_rows(index, p.rid, extract(p.res_type, p.body))
            return index

        # the rows join those of the unit's earlier writes not sent yet (see ``conn``)
        batch = versions(self._unsent or Batch(self._conn))
        for kind, rows in extract_all().items():
            batch.insert(INDEX_TABLES[kind].name, INDEX_ROW_COLUMNS[kind], rows)
        self._unsent = batch
        out = []
        for p in pending:
            stored = Stored(p.res_type, p.res_id, p.version, p.now, p.body is None, p.data,
                            p.method, p.body)
            self.written.append(stored)
            for rule in p.rules:
                rule.after_write(self, stored, p.previous)
            out.append(stored)
        return out

    def _prepare(self, res_type: str, res_id: str, body: dict | None, method: str,
                 current) -> _Pending:
        """One new version: the rules' say, then the stored form and its JSON."""
        rules = [r for r in self.repo.rules if res_type in r.types]
        previous = None
        if rules:
            if current is not None and not current.deleted and current.body is not None:
                previous = res.loads(current.body)
            if body is not None:
                for rule in rules:
                    body = rule.before_write(self, res_type, res_id, body, previous)
        now = clock.now()
        version = (current.version + 1) if current is not None else 1
        data = None
        if body is not None:
            body = _with_meta(body, res_id, version, now)
            data = res.dumps(body)
            res.check_no_nul(data, body, res_type)   # stored alike on both databases
        return _Pending(res_type, res_id, body, method, current, now, version, data, rules,
                        previous, current.rid if current is not None else 0)

    def _new_rids(self, n: int) -> list[int]:
        """Keys for ``n`` new resource rows. SQLite: the next ones after the largest (what
        its rowid would pick; this transaction holds the write lock, resource rows are
        never removed). PostgreSQL: from the column's sequence, each of whose values ends a
        block of keys as long as its step (migration 0011), drawn ``RID_BLOCK`` keys (or
        more) at a time by the process and handed out from there: most writes need no round
        trip for their keys (one was ~0.2-0.5 ms under load, one in each write and each
        transaction Bundle). ``nextval`` is outside transactions: keys drawn stay unique
        when the unit that drew them rolls back, and keys never used are gaps, nothing else.
        Keys follow the order they were drawn in, not the order of commits."""
        if not self.repo.is_pg:
            # asked once per unit of work: its resource rows not sent yet are not in the
            # table (the first time, there are none)
            top = self._rid_top
            if top is None:
                top = self._conn.exec_driver_sql("SELECT max(rid) FROM resource").scalar() or 0
            self._rid_top = top + n
            return list(range(top + 1, top + 1 + n))
        repo = self.repo
        with repo._rids_lock:
            pool = repo._rids
            while len(pool) < n:
                if repo.rid_sequence is None:   # looked up once (inside the query it cost
                    # ~1 ms per 100)
                    repo.rid_sequence = tuple(self._conn.exec_driver_sql(
                        "SELECT q.s, (SELECT seqincrement FROM pg_sequence WHERE seqrelid = "
                        "q.s::regclass) FROM (SELECT pg_get_serial_sequence('resource', 'rid') "
                        "AS s) AS q").one())
                seq, step = repo.rid_sequence
                # each value the sequence gives is the last key of a block of its step
                # (migration 0011): a block per ``nextval``; with steps of 1 (a database
                # before it, or after its downgrade: the values go on above every block), a
                # ``nextval`` per key. The step comes with the values (the one known may be
                # out of date). A new sequence's first value is 1: that block is key 1 alone
                blocks = -(-max(RID_BLOCK, n - len(pool)) // step)
                for last, step in self._conn.exec_driver_sql(
                        "SELECT nextval(%(s)s::regclass), (SELECT seqincrement FROM pg_sequence "
                        "WHERE seqrelid = %(s)s::regclass) FROM generate_series(1, %(n)s)",
                        {"s": seq, "n": blocks}).all():
                    pool.extend(range(max(last - step + 1, 1), last + 1))
                repo.rid_sequence = (seq, step)
            out = pool[:n]
            del pool[:n]
        return out

    def _check_version(self, res_type: str, res_id: str, current, if_match: int | None) -> None:
        if if_match is None:
            return
        if current is None or current.deleted:
            raise PreconditionFailed(
                f"If-Match W/\"{if_match}\" given but {res_type}/{res_id} does not exist",
                expression="If-Match")
        if current.version != if_match:
            raise PreconditionFailed(
                f"{res_type}/{res_id} is at version {current.version}, not {if_match} "
                "(someone else changed it; read it again and retry)", expression="If-Match")

    def create(self, res_type: str, body: dict, *, res_id: str | None = None,
               if_none_exist: list[tuple[str, str]] | None = None,
               validated: bool = False) -> WriteResult:
        """Create with a server-assigned id (any id in the body is ignored)."""
        if not validated:
            self.repo.validator(body, res_type)
        if if_none_exist:
            self.lock(f"{res_type}?{sorted(if_none_exist)}")
            found = self.find(res_type, if_none_exist)
            if len(found) > 1:
                raise TooManyMatches(
                    f"If-None-Exist matched {len(found)} {res_type} resources; "
                    "the condition must identify at most one", expression="If-None-Exist")
            if found:
                return WriteResult(self.read(res_type, found[0][1]), matched=True)
        # a fresh id cannot collide (model.ids): no lock, no lookup
        res_id = res_id or new_id()
        return WriteResult(self._write(res_type, res_id, body, "POST"), created=True)

    def create_many(self, items: list[tuple[str, dict, str]]) -> list[WriteResult]:
        """Create validated resources with fresh server ids ((type, body, id) each) in one
        batch of statements (transaction Bundles)."""
        stored = self._write_many([(t, rid, body, "POST", None) for t, body, rid in items])
        return [WriteResult(s, created=True) for s in stored]

    def update_many(self, items: list[tuple[str, str, dict, int | None]]) -> list[WriteResult]:
        """Update (or create with the given id) validated resources ((type, id, body,
        if_match) each) in one batch: one lock statement, one lookup, batched writes."""
        for position, (res_type, res_id, body, _m) in enumerate(items):
            try:
                self._check_update_body(res_type, res_id, body)
            except FhirError as exc:
                exc.batch_index = position
                raise
        keys = sorted({f"{t}/{i}" for t, i, _b, _m in items})
        self.lock_many(keys)
        from sqlalchemy import tuple_
        rows = self.conn.execute(
            select(resource.c.rid, resource.c.res_type, resource.c.res_id, resource.c.version,
                   resource.c.last_updated, resource.c.deleted, resource.c.body)
            .where(tuple_(resource.c.res_type, resource.c.res_id).in_(
                [(t, i) for t, i, _b, _m in items]))).all()
        current = {(r.res_type, r.res_id): r for r in rows}
        for position, (t, i, _b, if_match) in enumerate(items):
            try:
                self._check_version(t, i, current.get((t, i)), if_match)
            except FhirError as exc:
                exc.batch_index = position
                raise
        stored = self._write_many([(t, i, b, "PUT", current.get((t, i)))
                                   for t, i, b, _m in items])
        return [WriteResult(s, created=(current.get((s.res_type, s.res_id)) is None
                                        or current[(s.res_type, s.res_id)].deleted))
                for s in stored]

    def update(self, res_type: str, res_id: str, body: dict, *, if_match: int | None = None,
               validated: bool = False, method: str = "PUT") -> WriteResult:
        """Update, or create with the client's id when it does not exist (201)."""
        self._check_update_body(res_type, res_id, body)
        if not validated:
            self.repo.validator(body, res_type)
        self.lock(f"{res_type}/{res_id}")
        current = self._current_row(res_type, res_id)
        self._check_version(res_type, res_id, current, if_match)
        created = current is None or current.deleted
        return WriteResult(self._write(res_type, res_id, body, method, current), created=created)

    @staticmethod
    def _check_update_body(res_type: str, res_id: str, body: dict) -> None:
        if not res.is_valid_id(res_id):
            raise BadRequest(f"{res_id!r} is not a valid FHIR id ([A-Za-z0-9-.]{{1,64}})",
                             expression=f"{res_type}.id")
        body_id = body.get("id")
        if body_id is None:
            raise BadRequest("An update must carry the resource id in the body",
                             expression=f"{res_type}.id")
        if body_id != res_id:
            raise BadRequest(f"The body's id {body_id!r} does not match the URL's {res_id!r}",
                             expression=f"{res_type}.id")

    def conditional_update(self, res_type: str, items: list[tuple[str, str]], body: dict, *,
                           if_match: int | None = None) -> WriteResult:
        """PUT [type]?[criteria]: 0 matches create, 1 updates, several are 412."""
        self.repo.validator(body, res_type)
        self.lock(f"{res_type}?{sorted(items)}")
        found = self.find(res_type, items)
        if len(found) > 1:
            raise TooManyMatches(f"The condition matched {len(found)} {res_type} resources",
                                 expression=res_type)
        if found:
            res_id = found[0][1]
            if body.get("id") not in (None, res_id):
                raise BadRequest(f"The body's id {body['id']!r} differs from the matched "
                                 f"resource {res_type}/{res_id}", expression=f"{res_type}.id")
            return self.update(res_type, res_id, {**body, "id": res_id}, if_match=if_match,
                               validated=True)
        if body.get("id"):
            # a client id with no match: the spec lets the server create it with that id
            return self.update(res_type, body["id"], body, validated=True)
        return self.create(res_type, body, validated=True)

    def patch(self, res_type: str, res_id: str, operations: Any, *,
              if_match: int | None = None) -> WriteResult:
        """JSON Patch (RFC 6902) on the current version, then the same checks as update."""
        if not isinstance(operations, list):
            raise BadRequest("A JSON Patch body is an array of operations", code="structure")
        self.lock(f"{res_type}/{res_id}")
        current = self.read(res_type, res_id)
        self._check_version(res_type, res_id, current, if_match)
        try:
            patched = jsonpatch.apply_patch(current.resource(), operations)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise Unprocessable(f"The patch could not be applied: {exc}") from None
        except (TypeError, ValueError, KeyError) as exc:
            raise BadRequest(f"Malformed JSON Patch: {exc}", code="structure") from None
        if patched.get("resourceType") != res_type or patched.get("id") != res_id:
            raise Unprocessable("A patch may not change resourceType or id",
                                expression=f"{res_type}.id")
        return self.update(res_type, res_id, patched, method="PATCH")

    def delete(self, res_type: str, res_id: str, *, if_match: int | None = None
               ) -> Stored | None:
        """Delete (a new, deleted version). Deleting a deleted resource changes nothing."""
        self.lock(f"{res_type}/{res_id}")
        current = self._current_row(res_type, res_id)
        if current is None:
            raise NotFound(f"{res_type}/{res_id} is not known")
        self._check_version(res_type, res_id, current, if_match)
        if current.deleted:
            return None
        return self._write(res_type, res_id, None, "DELETE", current)

    def conditional_delete(self, res_type: str, items: list[tuple[str, str]], *,
                           multiple: bool = False, max_matches: int = 100) -> list[Stored]:
        self.lock(f"{res_type}?{sorted(items)}")
        found = self.find(res_type, items, limit=max_matches + 1)
        if len(found) > 1 and not multiple:
            raise TooManyMatches(f"The condition matched {len(found)} {res_type} resources; "
                                 "conditional delete removes at most one", expression=res_type)
        if len(found) > max_matches:
            raise PreconditionFailed(f"The condition matched more than {max_matches} resources")
        out = []
        for _rid, res_id in found:
            stored = self.delete(res_type, res_id)
            if stored is not None:
                out.append(stored)
        return out
