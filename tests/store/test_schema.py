import pytest
from sqlalchemy import inspect

from fhirgw.store.tables import param_key


def test_migrations_create_every_table(engine):
    names = set(inspect(engine).get_table_names())
    assert {"resource", "resource_history", "sp_token", "sp_string", "sp_date",
            "sp_reference", "alembic_version"} <= names


def test_text_and_url_indexes_are_partial_and_used(engine):
    from fhirgw.search import SearchEngine
    from fhirgw.store.repository import Repository

    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            defs = dict(conn.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE name IN "
                "('ix_sp_token_text', 'ix_sp_reference_url')").all())
        else:
            defs = dict(conn.exec_driver_sql(
                "SELECT indexname, indexdef FROM pg_indexes WHERE indexname IN "
                "('ix_sp_token_text', 'ix_sp_reference_url')").all())
    assert "IS NOT NULL" in defs["ix_sp_token_text"].upper().replace("(TEXT IS", "TEXT IS")
    assert "IS NOT NULL" in defs["ix_sp_reference_url"].upper()

    repo = Repository(engine, SearchEngine())
    repo.run(lambda tx: tx.create("Condition", {
        "resourceType": "Condition", "subject": {"reference": "http://other.example/Patient/9"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F33.1",
                             "display": "Major depressive disorder, recurrent, moderate"}]}},
        validated=True))
    found = repo.run(lambda tx: tx.search("Condition", [("code:text", "major depressive")]),
                     write=False)
    assert len(found) == 1
    found = repo.run(lambda tx: tx.search(
        "Condition", [("subject", "http://other.example/Patient/9")]), write=False)
    assert len(found) == 1
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT rid FROM sp_token WHERE pid = ? "
                "AND text >= 'major' AND text < 'majos'",
                (param_key("Condition", "code"),)).all())
        assert "ix_sp_token_text" in plan


def test_references_are_looked_up_by_target_through_the_value_index(engine):
    """Migration 0006 dropped the index by target alone: lookups by target name the
    referring type and parameter, and use (pid, target_id, target_type)."""
    names = {i["name"] for i in inspect(engine).get_indexes("sp_reference")}
    assert "ix_sp_reference_target" not in names
    assert "ix_sp_reference_value" in names
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT rid FROM sp_reference WHERE pid IN (?, ?)"
                " AND target_type = 'Patient' AND target_id IN ('a', 'b')",
                (param_key("Observation", "patient"),
                 param_key("Observation", "subject"))).all())
        assert "ix_sp_reference_value" in plan and "SCAN" not in plan


def test_index_columns_are_the_tables_without_rid_in_order():
    from fhirgw.store.tables import INDEX_COLUMNS, INDEX_TABLES

    for kind, table in INDEX_TABLES.items():
        assert [c.name for c in table.columns] == ["rid", *INDEX_COLUMNS[kind]]


def _collations(engine) -> dict[tuple[str, str], str | None]:
    with engine.connect() as conn:
        return {(t, c): coll for t, c, coll in conn.exec_driver_sql(
            "SELECT table_name, column_name, collation_name FROM information_schema.columns "
            "WHERE table_schema = current_schema()").all()}


def test_key_columns_compare_in_c_order_on_postgresql(pg_url):
    """Migration 0005: every key column of the resource, history and index tables is
    COLLATE "C" on PostgreSQL, on a new database and on one migrated from 0004 (SQLite
    compares bytes already)."""
    from fhirgw.store.db import make_engine, migrate

    engine = make_engine(pg_url)
    try:
        migrate(engine)
        _check_c_collation(engine, migrate)
    finally:
        engine.dispose()


def _check_c_collation(engine, migrate):
    import importlib

    m = importlib.import_module("fhirgw.store.migrations.versions.0005_c_collation_keys")
    # the index tables' type and parameter columns became pid (0007)
    columns = [(t, c, n) for t, c, n in m.COLUMNS if (t, c) in _collations(engine)]
    keys = [(t, c) for t, c, _n in columns]
    assert len(keys) == 6
    assert all(_collations(engine)[k] == "C" for k in keys)
    # a database from before 0005: the columns in the database's default collation
    with engine.begin() as conn:
        for t, c, n in columns:
            conn.exec_driver_sql(f'ALTER TABLE {t} ALTER COLUMN {c} TYPE varchar({n}) '
                                 'COLLATE "default"')
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0004'")
    assert all(_collations(engine)[k] is None for k in keys)
    migrate(engine)
    assert all(_collations(engine)[k] == "C" for k in keys)
    # joins between them (a reverse chain, _include) still plan and run
    from fhirgw.search import SearchEngine
    from fhirgw.store.repository import Repository
    repo = Repository(engine, SearchEngine())
    pid = repo.run(lambda tx: tx.create("Patient", {"resourceType": "Patient"},
                                        validated=True)).stored.res_id
    repo.run(lambda tx: tx.create("Observation", {
        "resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "subject": {"reference": f"Patient/{pid}"}}, validated=True))
    found = repo.run(lambda tx: tx.search("Patient", [("_has:Observation:subject:status",
                                                       "final")]), write=False)
    assert len(found) == 1


def _alembic(eng, direction: str, revision: str) -> None:
    """Alembic's ``upgrade`` or ``downgrade`` to ``revision`` on ``eng``, committed."""
    from alembic import command
    from alembic.config import Config

    from fhirgw.store.db import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS)
    with eng.connect() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, direction)(cfg, revision)
        conn.commit()


def _downgrade(eng, revision: str) -> None:
    _alembic(eng, "downgrade", revision)


def test_an_existing_database_loses_the_target_index_on_upgrade(db_url):
    """A database made before migration 0006 has the index; starting the gateway (which
    migrates) drops it, and a downgrade brings it back."""
    import fhirgw.search  # noqa: F401 - names the index keys for 0007's downgrade
    from fhirgw.store.db import make_engine, migrate

    eng = make_engine(db_url)
    try:
        migrate(eng)
        _downgrade(eng, "0005")
        assert "ix_sp_reference_target" in {
            i["name"] for i in inspect(eng).get_indexes("sp_reference")}
        migrate(eng)
        assert "ix_sp_reference_target" not in {
            i["name"] for i in inspect(eng).get_indexes("sp_reference")}
    finally:
        eng.dispose()


def test_index_rows_convert_to_parameter_keys_and_back(db_url):
    """Migration 0007: index rows keyed by type and parameter as two strings (a database
    from before it, made here by its downgrade) become rows keyed by ``pid``; every search
    finds what it found before, special codes (``:of-type``, ``:identifier``, ``_text``)
    and a custom SearchParameter's rows included."""
    from sqlalchemy import text

    from fhirgw.search import SearchEngine
    from fhirgw.store.db import make_engine, migrate
    from fhirgw.store.repository import Repository

    eng = make_engine(db_url)
    try:
        migrate(eng)
        search = SearchEngine()
        repo = Repository(eng, search)
        custom = {"resourceType": "SearchParameter", "url": "http://example.org/sp/nick",
                  "name": "nick", "status": "active", "code": "nick", "base": ["Patient"],
                  "type": "string", "expression": "Patient.name.where(use='nickname').given",
                  "description": "nickname"}
        search.registry.add(custom)
        repo.run(lambda tx: tx.create("SearchParameter", custom, validated=True))
        pid = repo.run(lambda tx: tx.create("Patient", {
            "resourceType": "Patient", "gender": "female",
            "text": {"status": "generated", "div": "<div>Maja Lindqvist, IOP client</div>"},
            "name": [{"family": "Lindqvist", "given": ["Maja"]},
                     {"use": "nickname", "given": ["Mai"]}],
            "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/"
                                                 "CodeSystem/v2-0203", "code": "MR"}]},
                            "system": "urn:mrn", "value": "MRN-7"}]},
            validated=True)).stored.res_id
        repo.run(lambda tx: tx.create("Observation", {
            "resourceType": "Observation", "status": "final", "code": {"text": "PHQ-9"},
            "subject": {"reference": f"Patient/{pid}"},
            "performer": [{"identifier": {"system": "urn:npi", "value": "123"}}]},
            validated=True))
        queries = [("Patient", [("family", "lindq")]), ("Patient", [("gender", "female")]),
                   ("Patient", [("identifier:of-type", "http://terminology.hl7.org/CodeSystem/"
                                 "v2-0203|MR|MRN-7")]),
                   ("Patient", [("_text", "client")]), ("Patient", [("nick", "mai")]),
                   ("Observation", [("subject", f"Patient/{pid}")]),
                   ("Observation", [("performer:identifier", "urn:npi|123")]),
                   ("Patient", [("_has:Observation:subject:status", "final")])]

        def found():
            return [sorted(h[1] for h in repo.run(lambda tx, t=t, q=q: tx.find(t, q, limit=None)))
                    for t, q in queries]

        def count(conn):
            return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar()
                    for t in ("sp_token", "sp_string", "sp_reference", "sp_date")}

        before = found()
        assert all(before), before
        _downgrade(eng, "0007")   # the layout 0007 made (0008's downgrade adds rows)
        with eng.connect() as conn:
            rows = count(conn)
        _downgrade(eng, "0006")
        with eng.connect() as conn:
            assert {"res_type", "param"} <= {c["name"] for c in inspect(conn).get_columns(
                "sp_string")}
            assert count(conn) == rows
            assert conn.execute(text(
                "SELECT count(*) FROM sp_string WHERE res_type = 'Patient' AND "
                "param = 'nick' AND norm = 'mai'")).scalar() == 1
        _alembic(eng, "upgrade", "0007")
        assert "pid" in {c["name"] for c in inspect(eng).get_columns("sp_string")}
        with eng.connect() as conn:
            assert count(conn) == rows
        migrate(eng)
        assert found() == before
    finally:
        eng.dispose()


def test_derived_parameters_lose_their_rows_and_get_them_back(db_url):
    """Migration 0008: the rows of derived parameters (``Condition.patient``,
    ``Appointment.patient``, ``Patient.phone``, ``Patient.phonetic``) that an earlier version
    wrote are deleted on upgrade; a downgrade writes them again, the same rows the earlier
    extraction made; the searches find the same before, between and after."""
    from sqlalchemy import text

    from fhirgw.search import SearchEngine
    from fhirgw.search.extract import Indexer
    from fhirgw.store.db import make_engine, migrate
    from fhirgw.store.repository import Repository
    from fhirgw.store.tables import param_key

    eng = make_engine(db_url)
    try:
        migrate(eng)
        search = SearchEngine()
        repo = Repository(eng, search)
        person = {"resourceType": "Patient", "name": [{"family": "Lindqvist"}],
                  "telecom": [{"system": "phone", "value": "555-0101"},
                              {"system": "email", "value": "maja@example.org"}]}
        p = repo.run(lambda tx: tx.create("Patient", person, validated=True)).stored.res_id
        g = repo.run(lambda tx: tx.create("Group", {"resourceType": "Group", "type": "person",
                                                    "actual": True}, validated=True)).stored.res_id
        made = [
            person,
            {"resourceType": "Condition", "subject": {"reference": f"Patient/{p}"}},
            {"resourceType": "Condition", "subject": {"reference": f"Group/{g}"}},
            {"resourceType": "Appointment", "status": "booked", "participant": [
                {"actor": {"reference": f"Patient/{p}"}, "status": "accepted"}]},
            {"resourceType": "Observation", "status": "final",
             "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
             "component": [{"code": {"coding": [{"system": "http://loinc.org",
                                                 "code": "8480-6"}]}}]}]
        for body in made[1:]:
            repo.run(lambda tx, b=body: tx.create(b["resourceType"], b, validated=True))
        keys = {"reference": [param_key("Condition", "patient"),
                              param_key("Appointment", "patient")],
                "token": [param_key("Patient", "phone"), param_key("Patient", "email"),
                          param_key("Observation", "combo-code")],
                "string": [param_key("Patient", "phonetic")]}

        def derived_rows(conn):
            return {kind: sorted(tuple(r) for r in conn.execute(text(
                f"SELECT * FROM sp_{kind} WHERE pid IN ({', '.join(str(k) for k in ks)})")))
                for kind, ks in keys.items()}

        queries = [("Condition", [("patient", p)]), ("Condition", [("subject", f"Group/{g}")]),
                   ("Appointment", [("patient", p)]), ("Patient", [("phone", "555-0101")]),
                   ("Patient", [("email", "maja@example.org")]), ("Patient", [("phonetic", "lind")]),
                   ("Observation", [("combo-code", "8480-6")])]

        def found():
            return [sorted(h[1] for h in repo.run(lambda tx, t=t, q=q: tx.find(t, q, limit=None)))
                    for t, q in queries]

        before = found()
        assert [len(x) for x in before] == [1, 1, 1, 1, 1, 1, 1]
        with eng.connect() as conn:
            assert derived_rows(conn) == {"reference": [], "token": [], "string": []}
        _downgrade(eng, "0007")
        with eng.connect() as conn:
            written = derived_rows(conn)
        # what the extraction wrote before (their own rows) is what came back, without rid
        old = Indexer(search.registry, derive=False)
        for kind, ks in keys.items():
            expected = sorted(r for body in made
                              for r in old.tuples(body["resourceType"], body)[kind]
                              if r[0] in ks)
            assert sorted(r[1:] for r in written[kind]) == expected, kind
        assert len(written["reference"]) == 2 and len(written["token"]) == 4 \
            and len(written["string"]) == 1
        migrate(eng)
        with eng.connect() as conn:
            assert derived_rows(conn) == {"reference": [], "token": [], "string": []}
        assert found() == before
    finally:
        eng.dispose()


def test_postgresql_bodies_are_compressed_with_lz4(pg_url):
    """Migration 0009: new bodies on PostgreSQL use LZ4 (where the server has it); its
    downgrade goes back to the default."""
    from fhirgw.store.db import make_engine, migrate

    def methods(eng):
        with eng.connect() as conn:
            return dict(conn.exec_driver_sql(
                "SELECT attrelid::regclass::text, attcompression FROM pg_attribute "
                "WHERE attname = 'body' AND attrelid IN ('resource'::regclass, "
                "'resource_history'::regclass)").all())

    eng = make_engine(pg_url)
    try:
        migrate(eng)
        with eng.connect() as conn:
            lz4 = conn.exec_driver_sql("SELECT count(*) FROM pg_settings WHERE name = "
                                       "'default_toast_compression' AND 'lz4' = ANY(enumvals)"
                                       ).scalar()
        if not lz4:
            pytest.skip("this PostgreSQL is built without LZ4")
        assert methods(eng) == {"resource": "l", "resource_history": "l"}
        _downgrade(eng, "0008")
        assert methods(eng) == {"resource": "p", "resource_history": "p"}
        migrate(eng)
        assert methods(eng) == {"resource": "l", "resource_history": "l"}
    finally:
        eng.dispose()


def test_the_rows_of_names_and_addresses_that_their_parts_hold_go_and_come_back(db_url):
    """Migration 0010: ``Patient.name`` and ``address`` (and the other wholes,
    ``SearchRegistry.derived`` with ``leaves_out``) lose the rows that ``family``,
    ``given``, ``address-city``, ... hold for the same resource on upgrade; a downgrade
    writes them again, the rows the earlier extraction made; the searches find the same
    before, between and after."""
    from sqlalchemy import text

    from fhirgw.search import SearchEngine
    from fhirgw.search.extract import Indexer
    from fhirgw.store.db import make_engine, migrate
    from fhirgw.store.repository import Repository
    from fhirgw.store.tables import param_key

    eng = make_engine(db_url)
    try:
        migrate(eng)
        search = SearchEngine()
        repo = Repository(eng, search)
        made = [
            {"resourceType": "Patient",
             "name": [{"text": "Dr. Maja Lindqvist", "prefix": ["Dr."], "family": "Lindqvist",
                       "given": ["Maja", "Elin"]}, {"use": "nickname", "given": ["Mai"]}],
             "address": [{"line": ["1 Main St"], "city": "Springfield", "state": "IL",
                          "postalCode": "62701", "text": "Springfield"}]},
            {"resourceType": "Practitioner", "name": [{"family": "House", "suffix": ["MD"]}]},
            {"resourceType": "Location", "name": "Clinic",
             "address": {"city": "Shelbyville", "country": "US"}}]
        for body in made:
            repo.run(lambda tx, b=body: tx.create(b["resourceType"], b, validated=True))
        keys = sorted(param_key(t, c) for t, c in (
            ("Patient", "name"), ("Patient", "address"), ("Practitioner", "name"),
            ("Practitioner", "address"), ("Location", "address")))

        def whole_rows(conn):
            return sorted(tuple(r)[1:] for r in conn.execute(text(
                f"SELECT * FROM sp_string WHERE pid IN ({', '.join(map(str, keys))})")))

        queries = [("Patient", [("name", "maja")]), ("Patient", [("name", "dr")]),
                   ("Patient", [("name:exact", "Springfield")]), ("Patient", [("name", "mai")]),
                   ("Patient", [("address", "springfield")]), ("Patient", [("address", "1 main")]),
                   ("Practitioner", [("name", "md")]), ("Practitioner", [("name", "hou")]),
                   ("Location", [("address", "shelby")]), ("Location", [("address", "us")])]

        def found():
            return [sorted(h[1] for h in repo.run(lambda tx, t=t, q=q: tx.find(t, q, limit=None)))
                    for t, q in queries]

        before = found()
        assert [len(x) for x in before] == [1, 1, 0, 1, 1, 1, 1, 1, 1, 1]
        with eng.connect() as conn:
            now = whole_rows(conn)
        # the strings of fields without a parameter of their own, and a text that is also
        # a city: kept (written by the extraction, which does not compare the values)
        assert sorted(r[-1] for r in now) == ["1 Main St", "Dr.", "Dr. Maja Lindqvist", "MD",
                                              "Springfield"]
        _downgrade(eng, "0009")
        with eng.connect() as conn:
            written = whole_rows(conn)
        # the earlier extraction's rows, without rid
        old = Indexer(search.registry, derive=False)
        expected = sorted(r for body in made for r in old.tuples(body["resourceType"], body)
                          ["string"] if r[0] in keys)
        assert written == expected
        assert found() == before
        migrate(eng)
        with eng.connect() as conn:
            # the text that is also a city goes with the rest (the parts hold it)
            assert sorted(r[-1] for r in whole_rows(conn)) == ["1 Main St", "Dr.",
                                                               "Dr. Maja Lindqvist", "MD"]
        assert found() == before
    finally:
        eng.dispose()


def test_postgresql_resource_keys_step_by_blocks(pg_url):
    """Migration 0011: each value of ``resource.rid``'s sequence ends a block of 256 keys
    (``Tx._new_rids``); its downgrade steps by 1 again."""
    from fhirgw.store.db import make_engine, migrate

    def step(eng):
        with eng.connect() as conn:
            return conn.exec_driver_sql(
                "SELECT seqincrement FROM pg_sequence WHERE seqrelid = "
                "pg_get_serial_sequence('resource', 'rid')::regclass").scalar()

    eng = make_engine(pg_url)
    try:
        migrate(eng)
        assert step(eng) == 256
        _downgrade(eng, "0010")
        assert step(eng) == 1
        migrate(eng)
        assert step(eng) == 256
    finally:
        eng.dispose()
