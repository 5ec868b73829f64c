"""The Repository directly, on SQLite and PostgreSQL."""
import pytest

from fhirgw.model.errors import Gone, NotFound, PreconditionFailed
from fhirgw.store.repository import Repository, clock, instant, parse_etag
from fhirgw.store.tables import param_key

#: index row keys for rows written by hand
G, N = param_key("Patient", "gender"), param_key("Patient", "name")


class NoSearch:
    def index_tuples(self, t, body):
        return {}


@pytest.fixture
def repo(engine):
    return Repository(engine, NoSearch())


def pat(**kw):
    return {"resourceType": "Patient", **kw}


def test_create_read_update_delete_history(repo):
    s = repo.run(lambda tx: tx.create("Patient", pat(gender="male")).stored)
    assert s.version == 1 and repo.read("Patient", s.res_id).resource()["gender"] == "male"
    s2 = repo.run(lambda tx: tx.update("Patient", s.res_id, pat(id=s.res_id), if_match=1).stored)
    assert s2.version == 2 and s2.last_updated > s.last_updated
    with pytest.raises(PreconditionFailed):
        repo.run(lambda tx: tx.update("Patient", s.res_id, pat(id=s.res_id), if_match=1))
    with pytest.raises(PreconditionFailed):
        repo.run(lambda tx: tx.delete("Patient", s.res_id, if_match=1))
    repo.run(lambda tx: tx.delete("Patient", s.res_id, if_match=2))
    with pytest.raises(Gone):
        repo.read("Patient", s.res_id)
    page = repo.run(lambda tx: tx.history("Patient", s.res_id))
    assert [e.version for e in page.entries] == [3, 2, 1]
    assert page.entries[0].deleted and page.entries[0].body is None
    assert repo.run(lambda tx: tx.vread("Patient", s.res_id, 1)).resource()["gender"] == "male"
    with pytest.raises(NotFound):
        repo.run(lambda tx: tx.vread("Patient", "nope", 1))


def _history_bodies(repo, res_id):
    from sqlalchemy import select
    from fhirgw.store.tables import resource_history as h
    with repo.engine.connect() as conn:
        return dict(conn.execute(select(h.c.version, h.c.body).where(h.c.res_id == res_id)).all())


def test_a_version_body_is_stored_once(repo):
    """The current version's body lives in the resource row only; an update or a deletion
    moves the version it replaces into its history row. Every version reads back alike."""
    s = repo.run(lambda tx: tx.create("Patient", pat(gender="male")).stored)
    assert _history_bodies(repo, s.res_id) == {1: None}
    repo.run(lambda tx: tx.update("Patient", s.res_id, pat(id=s.res_id, gender="female")))
    bodies = _history_bodies(repo, s.res_id)
    assert bodies[2] is None and bodies[1] == s.body
    # a batch of updates (transaction Bundles) keeps the replaced versions too
    repo.run(lambda tx: tx.update_many([("Patient", s.res_id, pat(id=s.res_id, gender="other"),
                                         None)]))
    repo.run(lambda tx: tx.delete("Patient", s.res_id))
    bodies = _history_bodies(repo, s.res_id)
    assert bodies[4] is None and all(bodies[v] for v in (1, 2, 3))
    genders = [repo.run(lambda tx: tx.vread("Patient", s.res_id, v)).resource()["gender"]
               for v in (1, 2, 3)]
    assert genders == ["male", "female", "other"]
    page = repo.run(lambda tx: tx.history("Patient", s.res_id))
    assert [e.resource()["gender"] if not e.deleted else None for e in page.entries] == \
        [None, "other", "female", "male"]
    # created again after the deletion: the new current version reads from its resource row
    repo.run(lambda tx: tx.update("Patient", s.res_id, pat(id=s.res_id, gender="unknown")))
    assert _history_bodies(repo, s.res_id)[5] is None
    assert repo.run(lambda tx: tx.vread("Patient", s.res_id, 5)).resource()["gender"] == "unknown"
    assert repo.run(lambda tx: tx.history("Patient", s.res_id)).entries[0].resource()[
        "gender"] == "unknown"


def test_history_rows_written_with_their_body_still_read(repo):
    """Databases written before bodies were stored once hold a copy in the history row of
    the current version too; reads and the next update work the same."""
    from sqlalchemy import update
    from fhirgw.store.tables import resource_history as h
    s = repo.run(lambda tx: tx.create("Patient", pat(gender="male")).stored)
    with repo.engine.begin() as conn:
        conn.execute(update(h).where(h.c.res_id == s.res_id).values(body=s.body))
    assert repo.run(lambda tx: tx.vread("Patient", s.res_id, 1)).body == s.body
    repo.run(lambda tx: tx.update("Patient", s.res_id, pat(id=s.res_id, gender="female")))
    assert _history_bodies(repo, s.res_id)[1] == s.body
    assert [e.resource()["gender"] for e in repo.run(
        lambda tx: tx.history("Patient", s.res_id)).entries] == ["female", "male"]


def test_failed_unit_of_work_stores_nothing(repo):
    def unit(tx):
        tx.create("Patient", pat())
        raise PreconditionFailed("boom")
    with pytest.raises(PreconditionFailed):
        repo.run(unit)
    assert repo.run(lambda tx: tx.history()).total == 0


def test_history_paging_is_by_cursor(repo):
    for i in range(7):
        repo.run(lambda tx: tx.create("Patient", pat()))
    seen, cursor = [], None
    while True:
        page = repo.run(lambda tx: tx.history("Patient", count=3, cursor=cursor))
        seen += [e.res_id for e in page.entries]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(seen) == len(set(seen)) == 7


def test_stored_body_carries_server_meta_first(repo):
    s = repo.run(lambda tx: tx.create("Patient", pat(meta={"tag": [{"code": "x"}]},
                                                     active=True)).stored)
    body = s.resource()
    assert list(body)[:3] == ["resourceType", "id", "meta"]
    assert body["meta"]["tag"] == [{"code": "x"}] and body["meta"]["versionId"] == "1"


def test_clock_is_strictly_increasing():
    ts = [clock.now() for _ in range(1000)]
    assert ts == sorted(set(ts))
    assert instant(1_700_000_000_123_456) == "2023-11-14T22:13:20.123456+00:00"


@pytest.mark.parametrize("raw,expected", [('W/"3"', 3), ('"4"', 4), ("5", 5), (None, None)])
def test_parse_etag(raw, expected):
    assert parse_etag(raw) == expected


AWKWARD = ["tab\there", "line\nbreak", "back\\slash", "\\N", "quote's \"double\"", "ünïcödé 😀",
           "comma,semi;pipe|", "carriage\rreturn", ""]


@pytest.mark.parametrize("copy_min", [1, 10_000], ids=["copy", "pipeline"])
def test_bulk_rows_keep_awkward_values(engine, copy_min, monkeypatch):
    """Batched writes (on PostgreSQL COPY, or INSERTs in one pipeline; executemany on
    SQLite) store every value as given: control characters, backslashes, COPY's own null
    marker, non-ASCII, floats, NULLs and the bytes of the body."""
    from sqlalchemy import select

    import fhirgw.store.bulk as bulk
    monkeypatch.setattr(bulk, "COPY_MIN_ROWS", copy_min)

    from fhirgw.search import SearchEngine
    from fhirgw.store.tables import resource, sp_number, sp_string, sp_token

    repo = Repository(engine, SearchEngine())
    bodies = [{"resourceType": "Patient", "name": [{"family": v, "text": v}],
               "identifier": [{"system": f"urn:sys:{v}", "value": v}]} for v in AWKWARD[:-1]]
    bodies.append({"resourceType": "RiskAssessment", "status": "final",
                   "subject": {"reference": "Patient/x"},
                   "prediction": [{"probabilityDecimal": 0.125}, {"probabilityDecimal": 1e-7}]})
    stored = repo.run(lambda tx: [w.stored for w in tx.create_many(
        [(b["resourceType"], b, f"id{i}") for i, b in enumerate(bodies)])])
    assert len(stored) == len(bodies)
    for s, sent in zip(stored, bodies):
        back = repo.read(s.res_type, s.res_id).resource()
        assert {k: v for k, v in back.items() if k not in ("id", "meta")} == sent
    with engine.connect() as c:
        raw = dict(c.execute(select(resource.c.res_id, resource.c.body)).all())
        assert all(raw[s.res_id] == s.body for s in stored)     # bytes, byte for byte
        exact = {r.exact for r in c.execute(select(sp_string.c.exact).where(
            sp_string.c.pid == param_key("Patient", "family")))}
        codes = {(r.system, r.code) for r in c.execute(select(sp_token.c.system, sp_token.c.code)
                                                       .where(sp_token.c.pid == param_key("Patient", "identifier")))}
        probs = sorted(r.value for r in c.execute(select(sp_number.c.value)))
    assert exact == set(AWKWARD[:-1])
    assert codes == {(f"urn:sys:{v}", v) for v in AWKWARD[:-1]}
    assert probs == [1e-7, 0.125]
    # a search finds them by exact value through the same rows
    hits = repo.run(lambda tx: tx.find("Patient", [("family:exact", "ünïcödé 😀")]))
    assert [h[1] for h in hits] == ["id5"]
    hits = repo.run(lambda tx: tx.find("Patient", [("family:exact", "back\\\\slash")]))
    assert [h[1] for h in hits] == ["id2"]


@pytest.mark.parametrize("copy_min", [1, 10_000], ids=["copy", "pipeline"])
def test_bulk_insert_errors_are_sqlalchemy_errors(engine, copy_min, monkeypatch):
    """A duplicate key in a batched insert (COPY or a pipeline on PostgreSQL) raises
    SQLAlchemy's IntegrityError, as a single INSERT does: the repository's retry logic
    sees it."""
    from sqlalchemy.exc import IntegrityError

    import fhirgw.store.bulk as bulk
    monkeypatch.setattr(bulk, "COPY_MIN_ROWS", copy_min)

    from fhirgw.search import SearchEngine
    from fhirgw.store.bulk import Batch

    repo = Repository(engine, SearchEngine())
    repo.run(lambda tx: tx.create_many([("Patient", pat(), "dup"), ("Patient", pat(), "p2")]))
    with pytest.raises(IntegrityError):
        repo.run(lambda tx: tx.create_many([("Patient", pat(), "p3"), ("Patient", pat(), "dup")]))
    with engine.begin() as conn, pytest.raises(IntegrityError):
        Batch(conn).insert("sp_token", ("rid", "pid", "system", "code", "text"),
                           [(1, 17, None, "a", None),
                            (None, 17, None, "b", None)]).run()
    # the failed unit stored nothing
    assert sorted(e.res_id for e in repo.run(lambda tx: tx.history("Patient")).entries) == \
        ["dup", "p2"]


@pytest.mark.parametrize("count", [0, 1, 3, 4, 5, 17, 64, 255, 256, 341, 600])
@pytest.mark.parametrize("limit", [None, 13])
def test_sqlite_multi_row_inserts_keep_rows_and_order(sqlite_url, count, limit):
    """SQLite batches take rows 256, 64, 16 and 4 at a time (within the driver's limit on
    parameters), the rest one by one: every row arrives as given, in order."""
    import sqlite3

    from sqlalchemy import text

    from fhirgw.store.bulk import Batch
    from fhirgw.store.db import make_engine, migrate

    engine = make_engine(sqlite_url)
    migrate(engine)
    rows = [(i, 11, f"s{i % 7}" if i % 3 else None, f"c{i}", "t" if i % 2 else None)
            for i in range(count)]
    with engine.begin() as conn:
        if limit is not None:   # room for 2 rows of 6 columns: one by one only
            conn.connection.driver_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER,
                                                       limit)
        Batch(conn).insert("sp_token", ("rid", "pid", "system", "code", "text"),
                           rows).run()
        got = conn.execute(text("SELECT rid, pid, system, code, text FROM sp_token "
                                "ORDER BY rowid")).all()
    assert [tuple(r) for r in got] == rows
    engine.dispose()


def test_sqlite_multi_row_insert_errors_are_sqlalchemy_errors(sqlite_url):
    from sqlalchemy.exc import IntegrityError

    from fhirgw.store.bulk import Batch
    from fhirgw.store.db import make_engine, migrate

    engine = make_engine(sqlite_url)
    migrate(engine)
    rows = [(i, 11, None, "c", None) for i in range(70)]
    rows[40] = (None, 11, None, "c", None)   # rid may not be NULL
    with engine.begin() as conn, pytest.raises(IntegrityError):
        Batch(conn).insert("sp_token", ("rid", "pid", "system", "code", "text"),
                           rows).run()
    engine.dispose()


class Extracting:
    """A search engine stand-in whose extraction can be made to fail on one resource."""

    def __init__(self, fail_on: str | None = None):
        self.fail_on = fail_on

    def index_tuples(self, t, body):
        if body.get("gender") == self.fail_on:
            raise RuntimeError("extraction failed")
        return {"token": [(param_key(t, "gender"), None, body.get("gender"), None)]}


def test_batched_writes_store_the_same_in_any_batch_size(engine):
    """What a batch stores is what writes one by one store (versions, bodies kept once,
    an update's old index rows replaced)."""
    from sqlalchemy import text
    repo = Repository(engine, Extracting())
    made = repo.run(lambda tx: tx.create_many(
        [("Patient", pat(gender="male" if i % 2 else "female"), f"p{i}") for i in range(30)]))
    assert [w.stored.version for w in made] == [1] * 30
    updated = repo.run(lambda tx: tx.update_many(
        [("Patient", f"p{i}", pat(id=f"p{i}", gender="other"), 1) for i in range(30)]))
    assert [w.stored.version for w in updated] == [2] * 30
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM resource_history")).scalar() == 60
        assert c.execute(text("SELECT code, count(*) FROM sp_token GROUP BY code")).all() == \
            [("other", 30)]
        assert c.execute(text("SELECT count(*) FROM resource_history WHERE version = 1 "
                              "AND body IS NOT NULL")).scalar() == 30


def _count_inserts(monkeypatch) -> list[tuple[str, int]]:
    """(table, rows) of every multi-row insert (SQLite) or COPY (PostgreSQL) from now on."""
    import fhirgw.store.bulk as bulk
    seen: list[tuple[str, int]] = []
    real_copy, real_insert = bulk._copy, bulk._sqlite_insert
    monkeypatch.setattr(bulk, "_copy", lambda conn, table, columns, rows: (
        seen.append((table, len(rows))), real_copy(conn, table, columns, rows))[1])
    monkeypatch.setattr(bulk, "_sqlite_insert", lambda conn, cur, table, columns, rows: (
        seen.append((table, len(rows))), real_insert(conn, cur, table, columns, rows))[1])
    return seen


def test_a_units_writes_travel_together(engine, monkeypatch):
    """The rows of a unit's writes wait until the unit ends (or uses its connection for
    anything else): two batches of creates, and a single create after them (a Bundle's
    AuditEvent), go in one insert per table."""
    repo = Repository(engine, Extracting())
    seen = _count_inserts(monkeypatch)

    def unit(tx):
        tx.create_many([("Patient", pat(gender="male"), f"a{i}") for i in range(20)])
        tx.create_many([("Patient", pat(gender="female"), f"b{i}") for i in range(20)])
        tx.create("Patient", pat(gender="other"), validated=True)
        assert seen == []   # nothing sent yet
    repo.run(unit)
    assert sorted(seen) == [("resource", 41), ("resource_history", 41), ("sp_token", 41)]
    from sqlalchemy import text
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM sp_token")).scalar() == 41


def test_what_a_unit_reads_sees_its_writes_not_sent_yet(engine, monkeypatch):
    """Reading, searching or running any statement on ``tx.conn`` first sends the writes
    waiting: the unit sees what it wrote."""
    from sqlalchemy import text
    repo = Repository(engine, Extracting())
    seen = _count_inserts(monkeypatch)

    def unit(tx):
        made = tx.create_many([("Patient", pat(gender="male"), f"c{i}") for i in range(20)])
        assert seen == []
        assert tx.read("Patient", made[3].stored.res_id).version == 1   # sends first
        assert ("sp_token", 20) in seen
        tx.create_many([("Patient", pat(gender="female"), f"d{i}") for i in range(5)])
        assert tx.conn.execute(text("SELECT count(*) FROM sp_token")).scalar() == 25
        updated = tx.update_many([("Patient", "c1", pat(id="c1", gender="other"), 1)])
        assert updated[0].stored.version == 2
        assert tx.conn.execute(text(
            "SELECT code FROM sp_token t JOIN resource r ON r.rid = t.rid "
            "WHERE r.res_id = 'c1'")).scalars().all() == ["other"]
    repo.run(unit)


def test_a_failing_batch_leaves_nothing_whichever_side_fails(engine):
    """The extraction failing, or the rows failing when they are sent (a duplicate id, at
    the end of the unit): the unit rolls back, the error is the one raised, and the
    connection is usable for the next unit."""
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError
    repo = Repository(engine, Extracting(fail_on="female"), max_retries=0)
    items = [("Patient", pat(gender="male" if i < 29 else "female"), f"q{i}") for i in range(30)]
    with pytest.raises(RuntimeError, match="extraction failed"):
        repo.run(lambda tx: tx.create_many(items))
    dup = [("Patient", pat(gender="male"), "same") for _ in range(25)]
    with pytest.raises(IntegrityError):
        repo.run(lambda tx: tx.create_many(dup))
    repo.run(lambda tx: tx.create_many([("Patient", pat(gender="male"), f"r{i}")
                                        for i in range(25)]))
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM resource")).scalar() == 25
        assert c.execute(text("SELECT count(*) FROM sp_token")).scalar() == 25


def test_a_commit_check_error_wins_over_rows_failing_when_sent(engine):
    """A unit's commit checks (a transaction Bundle's parallel validation) run after its
    rows are sent, also when sending them failed: their error is the answer."""
    from sqlalchemy import text
    repo = Repository(engine, Extracting(), max_retries=0)

    def unit(tx):
        tx.create_many([("Patient", pat(gender="male"), "twice") for _ in range(2)])
        tx.commit_checks.append(lambda: (_ for _ in ()).throw(PreconditionFailed("checked")))
    with pytest.raises(PreconditionFailed, match="checked"):
        repo.run(unit)
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM resource")).scalar() == 0


def test_resource_keys_come_from_a_block_drawn_per_process(engine, monkeypatch):
    """PostgreSQL: keys are drawn from the sequence RID_BLOCK at a time and handed out by
    the repository (one process), so most writes need no round trip for them; a larger
    write draws what it needs. Keys never repeat: across units, threads, units that roll
    back, and repositories (processes) sharing the database."""
    import threading

    from sqlalchemy import event, text

    import fhirgw.store.repository as R
    from fhirgw.model.ids import new_id
    pg = engine.dialect.name == "postgresql"
    monkeypatch.setattr(R, "RID_BLOCK", 200)   # fewer keys to write than the 4,096
    draws = []
    listener = lambda conn, cur, stmt, *a: draws.append(1) if "nextval" in stmt else None
    event.listen(engine, "before_cursor_execute", listener)
    try:
        repo, other = Repository(engine, NoSearch()), Repository(engine, NoSearch())
        repo.run(lambda tx: tx.create_many([("Patient", pat(), f"k{i}") for i in range(10)]))
        for i in range(20):
            repo.run(lambda tx: tx.create("Patient", pat(), validated=True))
        assert len(draws) == (1 if pg else 0)
        repo.run(lambda tx: tx.create_many(
            [("Patient", pat(), f"big{i}") for i in range(R.RID_BLOCK + 5)]))
        with pytest.raises(NotFound):
            def failing(tx):
                tx.create("Patient", pat(), validated=True)
                raise NotFound("the unit fails after drawing a key")
            repo.run(failing)

        def worker(r):
            for _ in range(15):
                r.run(lambda tx: tx.create_many([("Patient", pat(), new_id()) for _ in range(3)]))
        threads = [threading.Thread(target=worker, args=(r,)) for r in (repo, repo, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    with engine.connect() as c:
        rids = [r for (r,) in c.execute(text("SELECT rid FROM resource"))]
        first = sorted(r for (r,) in c.execute(text(
            "SELECT rid FROM resource ORDER BY rid LIMIT 30")))
    assert len(rids) == len(set(rids)) == 10 + 20 + R.RID_BLOCK + 5 + 3 * 15 * 3
    assert first == list(range(first[0], first[0] + 30))   # one block, handed out in order
    assert min(rids) >= 1   # the first block of a new database begins at 1
    if pg:
        # one nextval a block: the sequence's step is the block (migration 0011); a
        # database whose sequence steps by 1 (before it) still gets unique keys
        assert repo.rid_sequence[1] == 256
        old = Repository(engine, NoSearch())
        with engine.begin() as c:
            seq = c.execute(text("SELECT pg_get_serial_sequence('resource', 'rid')")).scalar()
            c.execute(text(f"ALTER SEQUENCE {seq} INCREMENT BY 1"))
        try:
            old.run(lambda tx: tx.create_many([("Patient", pat(), new_id()) for _ in range(5)]))
            repo.run(lambda tx: tx.create_many([("Patient", pat(), new_id())
                                                for _ in range(R.RID_BLOCK)]))
        finally:
            with engine.begin() as c:
                c.execute(text(f"ALTER SEQUENCE {seq} INCREMENT BY 256"))
        assert old.rid_sequence[1] == 1
        with engine.connect() as c:
            rids = [r for (r,) in c.execute(text("SELECT rid FROM resource"))]
        assert len(rids) == len(set(rids))


def test_a_batch_runs_its_statements_in_order(engine, monkeypatch):
    """store.bulk.Batch: statements run in the order given, whether they travel by COPY or
    in the pipeline between COPYs (an update deletes a resource's old index rows before its
    new ones go in); a failing statement fails the batch with SQLAlchemy's error."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    import fhirgw.store.bulk as bulk
    from fhirgw.store.bulk import Batch
    monkeypatch.setattr(bulk, "COPY_MIN_ROWS", 3)
    cols = ("pid", "system", "code", "text", "rid")
    rows = [(G, None, f"c{i}", None, 7) for i in range(5)]
    with engine.begin() as conn:
        (Batch(conn).insert("sp_token", cols, rows)                  # COPY on PostgreSQL
         .execute("DELETE FROM sp_token WHERE rid = ?", [(7,)])       # pipelined
         .insert("sp_token", cols, rows[:2])                          # pipelined
         .execute("UPDATE sp_token SET text = ? WHERE code = ?", [("t", "c1")])
         .insert("sp_token", cols, rows[2:])                          # COPY
         .run())
        got = conn.execute(text("SELECT code, text FROM sp_token ORDER BY code")).all()
    assert [tuple(r) for r in got] == [("c0", None), ("c1", "t"), ("c2", None), ("c3", None),
                                       ("c4", None)]
    with pytest.raises(DBAPIError):
        with engine.begin() as conn:
            Batch(conn).insert("sp_token", cols, rows[:1]).execute(
                "INSERT INTO no_such_table (x) VALUES (?)", [(1,)]).run()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sp_token")).scalar() == 5


def test_a_batch_deletes_by_resource_key_in_large_sets(engine):
    """Batch.delete_rids: one statement per table on PostgreSQL, IN lists of 500 on SQLite;
    only the rows of the keys given go."""
    from sqlalchemy import text

    from fhirgw.store.bulk import Batch
    cols = ("pid", "system", "code", "text", "rid")
    with engine.begin() as conn:
        Batch(conn).insert("sp_token", cols, [(G, None, "x", None, rid)
                                              for rid in range(1, 1301)]).run()
        Batch(conn).delete_rids("sp_token", list(range(2, 1301, 2))).delete_rids(
            "sp_token", []).run()
        left = [r for (r,) in conn.execute(text("SELECT rid FROM sp_token ORDER BY rid"))]
    assert left == list(range(1, 1301, 2))


def test_inserts_join_earlier_ones_only_past_other_inserts(engine):
    """Batch.insert: rows for a table join an earlier insert into it when only inserts
    come between (inserts commute), never past another statement (an update's DELETE of
    old index rows must run before its new rows go in); the lists given stay as they were."""
    from sqlalchemy import text

    from fhirgw.store.bulk import Batch
    cols = ("pid", "system", "code", "text", "rid")
    first = [(G, None, "a", None, 1)]
    with engine.begin() as conn:
        batch = (Batch(conn).insert("sp_token", cols, first)
                 .insert("sp_string", ("pid", "norm", "exact", "rid"),
                         [(N, "x", "X", 1)])
                 .insert("sp_token", cols, [(G, None, "b", None, 1)])
                 .execute("DELETE FROM sp_token WHERE rid = ?", [(1,)])
                 .insert("sp_token", cols, [(G, None, "c", None, 1)]))
        assert [(t, len(rows)) for t, _sql, _c, rows in batch.steps] == [
            ("sp_token", 2), ("sp_string", 1), (None, 1), ("sp_token", 1)]
        assert first == [(G, None, "a", None, 1)]
        batch.run()
        assert conn.execute(text("SELECT code FROM sp_token")).scalars().all() == ["c"]


def test_a_savepoint_undoes_what_its_block_wrote_sent_or_not(engine):
    """Tx.savepoint: when the block raises, its writes are gone, both those already sent
    (a read inside the block sent them) and those still waiting; the writes before it and
    after it stay, and ``written`` (what the AuditEvent names) forgets the undone ones."""
    from sqlalchemy import text
    repo = Repository(engine, Extracting())
    kept = []

    def unit(tx):
        tx.create_many([("Patient", pat(gender="male"), "before")])
        with pytest.raises(NotFound):
            with tx.savepoint():
                tx.create_many([("Patient", pat(gender="female"), "sent")])
                tx.read("Patient", "sent")          # sends what waits
                tx.create_many([("Patient", pat(gender="other"), "waiting")])
                raise NotFound("an entry failed")
        with tx.savepoint():
            tx.create_many([("Patient", pat(gender="unknown"), "inside")])
        tx.create_many([("Patient", pat(gender="male"), "after")])
        kept.extend(s.res_id for s in tx.written)
    repo.run(unit)
    assert kept == ["before", "inside", "after"]
    with engine.connect() as c:
        assert sorted(c.execute(text("SELECT res_id FROM resource")).scalars()) == [
            "after", "before", "inside"]
        assert sorted(c.execute(text("SELECT code FROM sp_token")).scalars()) == [
            "male", "male", "unknown"]
        assert c.execute(text("SELECT count(*) FROM resource_history")).scalar() == 3
