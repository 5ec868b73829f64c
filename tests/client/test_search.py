"""The immutable search builder, its encoding doctests, and paging over 1,000+ results."""
from __future__ import annotations

import doctest
import uuid
from datetime import date, datetime, timezone

import httpx
import pytest
from fhir.resources.R4B.appointment import Appointment, AppointmentParticipant
from fhir.resources.R4B.meta import Meta
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.reference import Reference

from fhirgw.client import AsyncClient, Client, _config, _core, _exceptions, _iop, _query
from tests.auth import credentials, token_url

from .conftest import TAG_SYSTEM, tagged


@pytest.mark.parametrize("module", [_query, _config, _core, _exceptions, _iop])
def test_doctests(module):
    """The encoder's documentation is its doctests; they must stay true."""
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_every_call_returns_a_new_builder(client):
    base = client.search(Appointment)
    booked = base.where(status="booked")
    dated = booked.where(date__ge=date(2026, 1, 1))
    assert base.query_pairs() == []
    assert booked.query_pairs() == [("status", "booked")]
    assert dated.query_pairs() == [("status", "booked"), ("date", "ge2026-01-01")]
    for derived in (booked.sort("-date"), booked.page_size(5), booked.limit(3),
                    booked.include(Appointment, "patient"), booked.revinclude(Observation, "subject")):
        assert derived is not booked and derived != booked
    assert booked.query_pairs() == [("status", "booked")]
    assert booked == base.where(status="booked")     # equal queries compare equal


def test_the_issue_example_encodes_as_fhir(client):
    p = Patient(id="p1")
    s = (client.search(Appointment)
         .where(patient=p, date__ge=date(2026, 1, 1), status=["booked", "arrived"])
         .include(Appointment, "patient").sort("-date").page_size(50))
    assert s.query_pairs() == [("patient", "Patient/p1"), ("date", "ge2026-01-01"),
                               ("status", "booked,arrived"), ("_include", "Appointment:patient"),
                               ("_sort", "-date"), ("_count", "50")]
    assert s.url.startswith("Appointment?patient=Patient%2Fp1&date=ge2026-01-01")


def _group(client, tag, n_patients=3):
    meta = Meta(**tagged(tag))
    with client.transaction() as tx:
        patients = [tx.create(Patient(meta=meta, name=[{"family": f"Group{i}"}]))
                    for i in range(n_patients)]
        for day in (5, 12, 19):
            tx.create(Appointment(
                meta=meta, status="booked" if day != 12 else "arrived",
                start=datetime(2026, 1, day, 17, tzinfo=timezone.utc),
                end=datetime(2026, 1, day, 20, tzinfo=timezone.utc),
                participant=[AppointmentParticipant(actor=p.reference, status="accepted")
                             for p in patients]))
        tx.create(Appointment(meta=meta, status="cancelled",
                              start=datetime(2025, 12, 1, 17, tzinfo=timezone.utc),
                              end=datetime(2025, 12, 1, 18, tzinfo=timezone.utc),
                              participant=[AppointmentParticipant(actor=patients[0].reference,
                                                                  status="accepted")]))
    return [p.resource for p in patients]


def test_search_with_models_dates_lists_include_sort(client, tag):
    patients = _group(client, tag)
    s = (client.search(Appointment)
         .where(_tag=f"{TAG_SYSTEM}|{tag}", patient=patients[0], date__ge=date(2026, 1, 1),
                status=["booked", "arrived"])
         .include(Appointment, "patient").sort("-date").page_size(2))
    found = s.all()
    assert all(isinstance(a, Appointment) for a in found)
    assert [a.start.day for a in found] == [19, 12, 5]
    pages = list(s.pages())
    assert [len(p.resources) for p in pages] == [2, 1]
    assert {type(r).__name__ for p in pages for r in p.included} == {"Patient"}
    assert s.count() == 3
    assert s.limit(2).count() == 3                    # count ignores the limit
    assert s.first().start.day == 19
    assert s.where(status="noshow").first() is None
    assert len(s.limit(2).all()) == 2
    assert s.limit(0).all() == []
    # reference values as strings and Reference models
    by_ref = client.search(Appointment).where(_tag=f"{TAG_SYSTEM}|{tag}",
                                              actor=Reference(reference=f"Patient/{patients[1].id}"))
    assert by_ref.count() == 3
    # chained: appointments of patients named Group2
    chained = client.search(Appointment).where(_tag=f"{TAG_SYSTEM}|{tag}",
                                               patient__Patient__family="Group2")
    assert chained.count() == 3
    # raw query strings and untyped searches
    raw = client.search("Appointment").params(f"_tag={TAG_SYSTEM}|{tag}&status=cancelled")
    assert [a.status for a in raw] == ["cancelled"]


PAGING_TOTAL = 1050


@pytest.fixture(scope="module")
def paging_tag(gateway, admin_credentials):
    """1,050 Observations, loaded in two transactions."""
    tag = "paging-" + uuid.uuid4().hex[:8]
    with Client(gateway, auth=credentials(gateway, *admin_credentials)) as c:
        for start in (0, 525):
            with c.transaction() as tx:
                for i in range(start, start + 525):
                    tx.create(Observation(meta=Meta(**tagged(tag)), status="final",
                                          code={"text": "PHQ-9"}, valueInteger=i))
    return tag


class CountingTransport(httpx.HTTPTransport):
    """A real transport that records the URL of each request it sends."""

    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_request(self, request):
        self.urls.append(str(request.url))
        return super().handle_request(request)


def test_paging_over_1000_results_follows_next_links(gateway, auth, paging_tag):
    counter = CountingTransport()
    with Client(gateway, transport=counter, auth=auth) as c:
        s = c.search(Observation).where(_tag=f"{TAG_SYSTEM}|{paging_tag}").page_size(200)
        values = [o.valueInteger for o in s]
        assert sorted(values) == list(range(PAGING_TOTAL))
        # the SDK got its token first (through the same transport), once
        assert counter.urls.pop(0) == token_url(gateway)
        assert len(counter.urls) == 6                  # 200 x 5 + 50, one request each
        assert all("_cursor=" in u for u in counter.urls[1:])   # next links, no page counter
        assert s.count() == PAGING_TOTAL

        counter.urls.clear()
        it = iter(s)                                   # lazy: nothing sent until asked
        assert counter.urls == []
        first = [next(it) for _ in range(201)]
        assert len(first) == 201 and len(counter.urls) == 2
        counter.urls.clear()
        assert len(s.limit(450).all()) == 450 and len(counter.urls) == 3


@pytest.mark.anyio
async def test_async_iteration_pages_too(gateway, auth, paging_tag):
    async with AsyncClient(gateway, auth=auth) as c:
        s = c.search(Observation).where(_tag=f"{TAG_SYSTEM}|{paging_tag}").page_size(500)
        seen = [o.valueInteger async for o in s]
        assert len(set(seen)) == PAGING_TOTAL
        assert await s.count() == PAGING_TOTAL
        assert len(await s.limit(7).all()) == 7
        first = await s.sort("_lastUpdated").first()
        assert isinstance(first, Observation)
        pages = [len(p.resources) async for p in s.pages()]
        assert pages == [500, 500, 50]
        raw = [r async for r in s.limit(3).iter_json()]
        assert len(raw) == 3 and raw[0]["resourceType"] == "Observation"
