"""Generate a realistic IOP dataset of N resources and load it fast.

The data: partner Organizations and Practitioners, clients (Patients with names, birth
dates, addresses and an MRN ``urn:iop:mrn|MRN00001234``), EpisodesOfCare, referrals
(ServiceRequests) each with its Task (owner = the partner Organization, status, focus =
the ServiceRequest, for = the client), Appointments (client + practitioner, start/end),
Encounters, Observations (vital signs and PHQ-9 scores with UCUM quantities), Conditions and
CarePlans. Resources are generated in one stream with ``meta.lastUpdated`` rising over a
two-year window (as if written over time), references always point at resources generated
earlier. Everything is deterministic for a given ``--seed`` and ``--resources``.

Two load paths, writing the same rows:

* ``--mode bulk`` (default): resource, history and index rows built exactly as
  ``Repository._write`` builds them (``_with_meta`` body, ``SearchEngine.index_rows``), then
  ``COPY`` (PostgreSQL) or ``executemany`` (SQLite) per batch. On an empty database the
  secondary indexes are dropped before the load and rebuilt after it. Bulk data is not
  validated per resource; ``--check`` validates a sample of each type with fhir.resources.
* ``--mode repository``: ``Repository.run`` with one unit of work per batch of 500
  (``tx.update`` with the generated ids, validation skipped), for checking the bulk path.

Afterwards ``ANALYZE`` (SQLite) / ``VACUUM ANALYZE`` (PostgreSQL) so the planner has
statistics; a production server relies on autovacuum for the same.

    .venv/bin/python benchmarks/generate.py --resources 1000000 \\
        --database postgresql://postgres@127.0.0.1:5432/fhirgw_bench_1m --create
    .venv/bin/python benchmarks/generate.py --resources 10000 --database sqlite:///bench-10k.db

The database must be empty, or already hold exactly this dataset (then nothing is done).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Index, func, insert, select, text  # noqa: E402

from fhirgw.model import resources as res  # noqa: E402
from fhirgw.search import SearchEngine  # noqa: E402
from fhirgw.store.db import make_engine, migrate, normalize_url  # noqa: E402
from fhirgw.store.repository import Repository, _with_meta  # noqa: E402
from fhirgw.store.tables import (INDEX_COLUMNS, INDEX_TABLES, metadata, resource,  # noqa: E402
                                  resource_history)

MRN = "urn:iop:mrn"
NPI = "http://hl7.org/fhir/sid/us-npi"
LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
#: the dataset's clock: resources are written between T0 and T0 + two years
T0 = datetime(2024, 7, 1, tzinfo=timezone.utc)
WINDOW_US = 730 * 86400 * 1_000_000
T0_US = int(T0.timestamp() * 1_000_000)

#: share of each type in the stream (per 1000); Organization/Practitioner are made up front
WEIGHTS = {"Patient": 100, "EpisodeOfCare": 20, "ServiceRequest": 90, "Appointment": 220,
           "Encounter": 90, "Observation": 260, "Condition": 60, "CarePlan": 50}
# every ServiceRequest brings its Task (another 90 per 1000)

_SYL = ["an", "ber", "cor", "dal", "el", "fin", "gar", "hol", "is", "jan", "kel", "lin",
        "mor", "nor", "ost", "pel", "quin", "ros", "sal", "tor", "ul", "ven", "wes", "yar",
        "zen", "son", "berg", "man", "ley", "ton"]
FAMILY = sorted({(a + b + c).capitalize() for a in _SYL[:20] for b in _SYL for c in ("", "s", "son")
                 if a != b})[:1500] + ["Smith", "Garcia", "Nguyen", "Okafor", "Müller", "Ñúñez"]
GIVEN = ["James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "David",
         "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas",
         "Sarah", "Adaeze", "Maja", "Samir", "Linh", "Lucía", "Piotr", "Jordan", "Amina", "Marco",
         "Yuki", "Siobhán", "Rafael", "Noa", "Priya", "Tomás", "Camille", "Zoë", "Emre", "Ana",
         "Kwame", "Ingrid", "Mateo"]
CITIES = ["Springfield", "Riverton", "Lakeside", "Fairview", "Georgetown", "Salem", "Clinton",
          "Madison", "Ashland", "Greenville"]
OBS = [("8867-4", "Heart rate", "/min", "beats/minute", 50, 120, "vital-signs"),
       ("8480-6", "Systolic blood pressure", "mm[Hg]", "mmHg", 95, 180, "vital-signs"),
       ("29463-7", "Body weight", "kg", "kg", 45, 130, "vital-signs"),
       ("8310-5", "Body temperature", "Cel", "C", 35.5, 39.5, "vital-signs"),
       ("44261-6", "PHQ-9 total score", "{score}", "{score}", 0, 27, "survey"),
       ("70274-6", "GAD-7 total score", "{score}", "{score}", 0, 21, "survey")]
CONDITIONS = [("35489007", "Depressive disorder"), ("197480006", "Anxiety disorder"),
              ("7200002", "Alcoholism"), ("47505003", "Posttraumatic stress disorder"),
              ("5703000", "Bipolar disorder"), ("75544000", "Opioid dependence")]
SERVICES = [("304891004", "Cognitive behavioral therapy"), ("410155007", "Group therapy"),
            ("386053000", "Evaluation procedure"), ("225337009", "Suicide risk assessment"),
            ("76168009", "Counseling")]
TASK_STATUS = [("requested", 30), ("received", 10), ("accepted", 15), ("in-progress", 15),
               ("completed", 20), ("rejected", 4), ("cancelled", 6)]
APPT_STATUS = [("booked", 45), ("fulfilled", 35), ("cancelled", 10), ("noshow", 5),
               ("arrived", 5)]


def _weighted(choices):
    names = [c for c, _ in choices]
    weights = [w for _, w in choices]
    return lambda rng: rng.choices(names, weights)[0]


_task_status = _weighted(TASK_STATUS)
_appt_status = _weighted(APPT_STATUS)


def iso(us: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def ref(t: str, i: str) -> dict:
    return {"reference": f"{t}/{i}"}


class Generator:
    """A deterministic stream of (type, id, body, last_updated) for N resources."""

    def __init__(self, n: int, seed: int = 42):
        self.n = n
        self.rng = random.Random(seed)
        self.n_org = max(5, n // 500)
        self.n_prac = max(20, n // 100)
        self.orgs: list[str] = []
        self.pracs: list[str] = []
        self.patients: list[str] = []
        self.srs: list[tuple[str, str, str]] = []   # (id, patient, org)
        self.episodes: dict[str, str] = {}
        self.mrn = 0

    def _id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def __iter__(self):
        rng = self.rng
        made = 0
        per = self.n / WINDOW_US
        types = list(WEIGHTS)
        weights = [WEIGHTS[t] for t in types]

        def lu():   # the clock of the made-th resource (monotonic, jittered)
            return T0_US + int(made / per) + rng.randrange(0, max(1, int(1 / per)))

        for _ in range(self.n_org):
            if made >= self.n:
                return
            yield self.organization(lu())
            made += 1
        for _ in range(self.n_prac):
            if made >= self.n:
                return
            yield self.practitioner(lu())
            made += 1
        while made < self.n:
            t = rng.choices(types, weights)[0] if len(self.patients) >= 3 else "Patient"
            now = lu()
            if t == "ServiceRequest":
                if made + 1 >= self.n:
                    t = "Patient"
                else:
                    sr = self.service_request(now)
                    yield sr
                    yield self.task(now + 1, sr)
                    made += 2
                    continue
            yield getattr(self, t.lower())(now)
            made += 1

    # ------------------------------------------------------------ resources

    def organization(self, now):
        i = self._id()
        self.orgs.append(i)
        k = len(self.orgs)
        body = {"resourceType": "Organization", "id": i, "active": True,
                "identifier": [{"system": "urn:iop:partner", "value": f"P{k:05d}"}],
                "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type",
                                      "code": "prov"}]}],
                "name": f"{self.rng.choice(CITIES)} Behavioral Health {k}",
                "telecom": [{"system": "phone", "value": f"555-{k:07d}"}],
                "address": [{"city": self.rng.choice(CITIES), "state": "MA"}]}
        return "Organization", i, body, now

    def practitioner(self, now):
        rng = self.rng
        i = self._id()
        self.pracs.append(i)
        body = {"resourceType": "Practitioner", "id": i, "active": True,
                "identifier": [{"system": NPI, "value": f"{1000000000 + len(self.pracs)}"}],
                "name": [{"family": rng.choice(FAMILY), "given": [rng.choice(GIVEN)],
                          "prefix": ["Dr."]}],
                "gender": rng.choice(["male", "female"])}
        return "Practitioner", i, body, now

    def patient(self, now):
        rng = self.rng
        i = self._id()
        self.patients.append(i)
        self.mrn += 1
        birth = datetime(1940, 1, 1) + timedelta(days=rng.randrange(0, 365 * 65))
        given = [rng.choice(GIVEN)] + ([rng.choice(GIVEN)] if rng.random() < 0.3 else [])
        body = {"resourceType": "Patient", "id": i,
                "identifier": [{"use": "usual",
                                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                     "code": "MR"}]},
                                "system": MRN, "value": f"MRN{self.mrn:08d}"}],
                "active": True,
                "name": [{"use": "official", "family": rng.choice(FAMILY), "given": given}],
                "telecom": [{"system": "phone", "value": f"617-555-{rng.randrange(10000):04d}",
                             "use": "mobile"}],
                "gender": rng.choice(["male", "female", "female", "male", "other"]),
                "birthDate": birth.strftime("%Y-%m-%d"),
                "address": [{"line": [f"{rng.randrange(1, 999)} Main St"],
                             "city": rng.choice(CITIES), "state": "MA",
                             "postalCode": f"0{rng.randrange(1000, 2799)}"}],
                "managingOrganization": ref("Organization", rng.choice(self.orgs))}
        return "Patient", i, body, now

    def _patient(self):
        # recent clients are more active than old ones
        p = self.patients
        k = len(p)
        return p[k - 1 - min(k - 1, int(self.rng.expovariate(1 / max(1.0, k / 4))))]

    def episodeofcare(self, now):
        rng = self.rng
        i = self._id()
        pat = self._patient()
        self.episodes[pat] = i
        start = now - rng.randrange(0, 60) * 86400 * 1_000_000
        body = {"resourceType": "EpisodeOfCare", "id": i,
                "status": rng.choice(["active", "active", "finished", "waitlist"]),
                "type": [{"coding": [{"system": "urn:iop:program", "code": "iop"}]}],
                "patient": ref("Patient", pat),
                "managingOrganization": ref("Organization", rng.choice(self.orgs)),
                "period": {"start": iso(start)[:10]}}
        return "EpisodeOfCare", i, body, now

    def service_request(self, now):
        rng = self.rng
        i = self._id()
        pat, org = self._patient(), rng.choice(self.orgs)
        self.srs.append((i, pat, org))
        code, disp = rng.choice(SERVICES)
        body = {"resourceType": "ServiceRequest", "id": i,
                "identifier": [{"system": "urn:iop:referral", "value": f"R{len(self.srs):08d}"}],
                "status": rng.choice(["active", "active", "completed", "revoked"]),
                "intent": "order",
                "category": [{"coding": [{"system": SCT, "code": "3457005",
                                          "display": "Patient referral"}]}],
                "code": {"coding": [{"system": SCT, "code": code, "display": disp}]},
                "subject": ref("Patient", pat),
                "authoredOn": iso(now),
                "requester": ref("Practitioner", rng.choice(self.pracs)),
                "performer": [ref("Organization", org)]}
        return "ServiceRequest", i, body, now

    def task(self, now, sr):
        rng = self.rng
        _t, sr_id, sr_body, _lu = sr
        pat = sr_body["subject"]["reference"]
        org = sr_body["performer"][0]["reference"]
        i = self._id()
        status = _task_status(rng)
        body = {"resourceType": "Task", "id": i, "status": status, "intent": "order",
                "priority": rng.choice(["routine", "routine", "urgent"]),
                "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code",
                                     "code": "fulfill"}]},
                "focus": ref("ServiceRequest", sr_id),
                "for": {"reference": pat},
                "authoredOn": iso(now),
                "lastModified": iso(now),
                "requester": sr_body["requester"],
                "owner": {"reference": org}}
        if status in ("rejected", "cancelled"):
            body["statusReason"] = {"text": "client declined"}
        return "Task", i, body, now

    def appointment(self, now):
        rng = self.rng
        i = self._id()
        pat = self._patient()
        start = now + rng.randrange(-30, 90) * 86400 * 1_000_000 + rng.randrange(8, 18) * 3600 * 1_000_000
        start -= start % (900 * 1_000_000)
        body = {"resourceType": "Appointment", "id": i, "status": _appt_status(rng),
                "serviceType": [{"coding": [{"system": SCT, "code": rng.choice(SERVICES)[0]}]}],
                "start": iso(start), "end": iso(start + rng.choice([30, 45, 60]) * 60 * 1_000_000),
                "participant": [{"actor": ref("Patient", pat), "status": "accepted"},
                                {"actor": ref("Practitioner", rng.choice(self.pracs)),
                                 "status": "accepted"}]}
        if pat in self.episodes and rng.random() < 0.5:
            body["supportingInformation"] = [ref("EpisodeOfCare", self.episodes[pat])]
        return "Appointment", i, body, now

    def encounter(self, now):
        rng = self.rng
        i = self._id()
        pat = self._patient()
        start = now - rng.randrange(0, 7) * 86400 * 1_000_000
        body = {"resourceType": "Encounter", "id": i, "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                          "code": "AMB"},
                "subject": ref("Patient", pat),
                "participant": [{"individual": ref("Practitioner", rng.choice(self.pracs))}],
                "period": {"start": iso(start), "end": iso(start + 3600 * 1_000_000)},
                "serviceProvider": ref("Organization", rng.choice(self.orgs))}
        if pat in self.episodes:
            body["episodeOfCare"] = [ref("EpisodeOfCare", self.episodes[pat])]
        return "Encounter", i, body, now

    def observation(self, now):
        rng = self.rng
        i = self._id()
        code, disp, unit, human, lo, hi, cat = rng.choice(OBS)
        value = round(rng.uniform(lo, hi), 1 if unit in ("Cel", "kg") else 0)
        if unit not in ("Cel", "kg"):
            value = int(value)
        body = {"resourceType": "Observation", "id": i, "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                          "code": cat}]}],
                "code": {"coding": [{"system": LOINC, "code": code, "display": disp}]},
                "subject": ref("Patient", self._patient()),
                "effectiveDateTime": iso(now - rng.randrange(0, 86400) * 1_000_000),
                "performer": [ref("Practitioner", rng.choice(self.pracs))],
                "valueQuantity": {"value": value, "unit": human, "system": UCUM, "code": unit}}
        return "Observation", i, body, now

    def condition(self, now):
        rng = self.rng
        i = self._id()
        code, disp = rng.choice(CONDITIONS)
        body = {"resourceType": "Condition", "id": i,
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                               "code": rng.choice(["active", "active", "resolved"])}]},
                "code": {"coding": [{"system": SCT, "code": code, "display": disp}], "text": disp},
                "subject": ref("Patient", self._patient()),
                "onsetDateTime": iso(now - rng.randrange(0, 3650) * 86400 * 1_000_000)[:10],
                "recordedDate": iso(now)}
        return "Condition", i, body, now

    def careplan(self, now):
        rng = self.rng
        i = self._id()
        pat = self._patient()
        body = {"resourceType": "CarePlan", "id": i,
                "status": rng.choice(["active", "active", "completed", "draft"]),
                "intent": "plan",
                "category": [{"coding": [{"system": SCT, "code": "736378000",
                                          "display": "Mental health care plan"}]}],
                "subject": ref("Patient", pat),
                "period": {"start": iso(now)[:10],
                           "end": iso(now + rng.randrange(30, 180) * 86400 * 1_000_000)[:10]},
                "author": ref("Practitioner", rng.choice(self.pracs)),
                "activity": [{"detail": {"status": "scheduled",
                                         "code": {"coding": [{"system": SCT,
                                                              "code": rng.choice(SERVICES)[0]}]}}}]}
        return "CarePlan", i, body, now


# ---------------------------------------------------------------- loading

def secondary_indexes() -> list[Index]:
    return [ix for t in metadata.sorted_tables if t.name in ("resource", "resource_history")
            or t.name.startswith("sp_") for ix in t.indexes]


def ensure_indexes(engine) -> list[str]:
    """Create any index of tables.py missing in the database (after an index change)."""
    made = []
    with engine.begin() as conn:
        for ix in secondary_indexes():
            if _index_exists(conn, ix.name):
                continue
            t = time.perf_counter()
            ix.create(conn)
            made.append(f"{ix.name} ({time.perf_counter() - t:.1f}s)")
    return made


def _index_exists(conn, name: str) -> bool:
    if conn.dialect.name == "postgresql":
        return conn.execute(text("select 1 from pg_indexes where indexname = :n"),
                            {"n": name}).first() is not None
    return conn.execute(text("select 1 from sqlite_master where type='index' and name = :n"),
                        {"n": name}).first() is not None


def rows_for(search: SearchEngine, rid: int, rtype: str, rid_: str, body: dict, lu: int):
    """The rows Repository._write writes for a create: resource, history, index rows."""
    stored = _with_meta(body, rid_, 1, lu)
    data = res.dumps(stored)
    r = (rid, rtype, rid_, 1, lu, False, data)
    h = (rid, rtype, rid_, 1, lu, "POST", False, None)   # current: body in the resource row
    return r, h, {kind: [dict(zip(INDEX_COLUMNS[kind], row)) for row in rows]
                  for kind, rows in search.index_tuples(rtype, stored).items()}


_COLS = {kind: [c.name for c in t.columns if c.name != "id"] for kind, t in INDEX_TABLES.items()}
_RCOLS = ["rid", "res_type", "res_id", "version", "last_updated", "deleted", "body"]
_HCOLS = ["rid", "res_type", "res_id", "version", "last_updated", "method", "deleted", "body"]


class BulkWriter:
    def __init__(self, engine):
        self.engine = engine
        self.pg = engine.dialect.name == "postgresql"

    def write(self, rrows, hrows, irows: dict[str, list[dict]]):
        with self.engine.begin() as conn:
            dbapi = conn.connection.driver_connection
            if self.pg:
                cur = dbapi.cursor()
                self._copy(cur, "resource", _RCOLS, rrows)
                self._copy(cur, "resource_history", _HCOLS, hrows)
                for kind, rows in irows.items():
                    cols = _COLS[kind]
                    self._copy(cur, INDEX_TABLES[kind].name, cols,
                               [tuple(r[c] for c in cols) for r in rows])
            else:
                cur = dbapi.cursor()
                self._many(cur, "resource", _RCOLS, rrows)
                self._many(cur, "resource_history", _HCOLS, hrows)
                for kind, rows in irows.items():
                    cols = _COLS[kind]
                    self._many(cur, INDEX_TABLES[kind].name, cols,
                               [tuple(r[c] for c in cols) for r in rows])

    @staticmethod
    def _copy(cur, table, cols, rows):
        if not rows:
            return
        with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)

    @staticmethod
    def _many(cur, table, cols, rows):
        if rows:
            cur.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                            f"({', '.join('?' for _ in cols)})", rows)


def load_bulk(engine, gen: Generator, batch: int, fresh: bool, log=print) -> dict:
    search = SearchEngine()
    pg = engine.dialect.name == "postgresql"
    dropped = []
    if fresh:
        with engine.begin() as conn:
            for ix in secondary_indexes():
                if _index_exists(conn, ix.name):
                    ix.drop(conn)
                    dropped.append(ix)
    if not pg:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA cache_size=-1000000")
    with engine.connect() as conn:
        start_rid = (conn.execute(select(func.max(resource.c.rid))).scalar() or 0) + 1
    writer = BulkWriter(engine)
    t0 = time.perf_counter()
    t_extract = 0.0
    rid = start_rid
    rr, hh, ii = [], [], {k: [] for k in INDEX_TABLES}
    n = 0
    n_index = 0
    for rtype, rid_, body, lu in gen:
        te = time.perf_counter()
        r, h, idx = rows_for(search, rid, rtype, rid_, body, lu)
        t_extract += time.perf_counter() - te
        for kind, rows in idx.items():
            for row in rows:
                row["rid"] = rid
            ii[kind].extend(rows)
            n_index += len(rows)
        rr.append(r)
        hh.append(h)
        rid += 1
        n += 1
        if len(rr) >= batch:
            writer.write(rr, hh, ii)
            rr, hh, ii = [], [], {k: [] for k in INDEX_TABLES}
            if n % (batch * 100) == 0:
                el = time.perf_counter() - t0
                log(f"  {n:>9,} resources  {el:7.1f}s  {n / el:8.0f}/s")
    if rr:
        writer.write(rr, hh, ii)
    t_rows = time.perf_counter() - t0
    if pg:
        with engine.begin() as conn:
            conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('resource', 'rid'), "
                                 "(SELECT max(rid) FROM resource))")
    t1 = time.perf_counter()
    if dropped:
        log(f"  rebuilding {len(dropped)} indexes ...")
        with engine.begin() as conn:
            if pg:
                conn.exec_driver_sql("SET maintenance_work_mem = '1GB'")
                conn.exec_driver_sql("SET max_parallel_maintenance_workers = 2")
            for ix in dropped:
                ix.create(conn)
    t_index = time.perf_counter() - t1
    t2 = time.perf_counter()
    analyze(engine)
    t_analyze = time.perf_counter() - t2
    return {"resources": n, "index_rows": n_index, "rows_s": round(t_rows, 1),
            "extract_s": round(t_extract, 1), "index_build_s": round(t_index, 1),
            "analyze_s": round(t_analyze, 1)}


def analyze(engine) -> None:
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    else:
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()   # the engine opens a transaction; ANALYZE's statistics need it


def load_repository(engine, gen: Generator, batch: int, log=print) -> dict:
    repo = Repository(engine, SearchEngine())
    t0 = time.perf_counter()
    buf: list = []
    n = 0

    def flush(items):
        def unit(tx):
            for rtype, rid_, body, _lu in items:
                tx.update(rtype, rid_, body, validated=True)
        repo.run(unit)

    for item in gen:
        buf.append(item)
        n += 1
        if len(buf) >= batch:
            flush(buf)
            buf = []
            if n % (batch * 20) == 0:
                el = time.perf_counter() - t0
                log(f"  {n:>9,} resources  {el:7.1f}s  {n / el:8.0f}/s")
    if buf:
        flush(buf)
    t_rows = time.perf_counter() - t0
    analyze(engine)
    return {"resources": n, "rows_s": round(t_rows, 1)}


def check_sample(n: int = 2000, seed: int = 42) -> dict[str, int]:
    """Validate the first ``n`` generated resources with fhir.resources R4B."""
    counts: dict[str, int] = {}
    for rtype, _i, body, _lu in Generator(n, seed):
        res.validate(body, rtype)
        counts[rtype] = counts.get(rtype, 0) + 1
    return counts


def create_database(url: str) -> None:
    from sqlalchemy import create_engine
    url = normalize_url(url)
    if not url.startswith("postgresql"):
        return
    base, name = url.rsplit("/", 1)
    admin = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        if c.execute(text("select 1 from pg_database where datname = :n"), {"n": name}).first() is None:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


def ensure_dataset(url: str, n: int, *, seed: int = 42, mode: str = "bulk", batch: int = 500,
                   log=print) -> dict | None:
    """Load the dataset into ``url`` unless it is already there; returns load stats or None."""
    create_database(url)
    engine = make_engine(url)
    try:
        migrate(engine)
        with engine.connect() as conn:
            have = conn.execute(select(func.count()).select_from(resource)).scalar_one()
            ours = conn.execute(select(func.count()).select_from(resource)
                                .where(resource.c.rid <= n)).scalar_one()
        # the dataset is rids 1..n; a server started on it may have added its own since
        if ours == n:
            made = ensure_indexes(engine)
            if made:
                log(f"  created missing indexes: {', '.join(made)}")
                analyze(engine)
            return None
        if have:
            raise SystemExit(f"{url} holds {have} resources, not {n}: drop it first")
        gen = Generator(n, seed)
        if mode == "repository":
            return load_repository(engine, gen, batch, log)
        return load_bulk(engine, gen, batch, fresh=True, log=log)
    finally:
        engine.dispose()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resources", "-n", type=int, default=10_000)
    ap.add_argument("--database", required=True, help="sqlite:///path or postgresql://...")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--mode", choices=["bulk", "repository"], default="bulk")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--check", action="store_true",
                    help="validate a sample of the generated resources with fhir.resources first")
    args = ap.parse_args(argv)
    if args.check:
        print("validated:", check_sample())
    t = time.perf_counter()
    stats = ensure_dataset(args.database, args.resources, seed=args.seed, mode=args.mode,
                           batch=args.batch)
    if stats is None:
        print(f"{args.database} already holds the {args.resources:,}-resource dataset")
    else:
        print(f"loaded {stats} in {time.perf_counter() - t:.1f}s")
    if args.database.startswith("postgres"):
        name = args.database.rsplit("/", 1)[1]
        print(f"drop it with: psql -h 127.0.0.1 -U postgres -c 'DROP DATABASE \"{name}\" WITH (FORCE)'")
    elif args.database.startswith("sqlite:///"):
        print(f"drop it with: rm {args.database[len('sqlite:///'):]}*")


if __name__ == "__main__":
    main()
