"""The Repository directly, on SQLite and PostgreSQL."""
import pytest

from fhirgw.model.errors import Gone, NotFound, PreconditionFailed
from fhirgw.store.repository import Repository, clock, instant, parse_etag


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
