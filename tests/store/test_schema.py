from sqlalchemy import inspect


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
                "EXPLAIN QUERY PLAN SELECT rid FROM sp_token WHERE res_type = 'Condition' "
                "AND param = 'code' AND text >= 'major' AND text < 'majos'").all())
        assert "ix_sp_token_text" in plan


def test_references_are_looked_up_by_target_through_the_value_index(engine):
    """Migration 0006 dropped the index by target alone: lookups by target name the
    referring type and parameter, and use (res_type, param, target_id, target_type)."""
    names = {i["name"] for i in inspect(engine).get_indexes("sp_reference")}
    assert "ix_sp_reference_target" not in names
    assert "ix_sp_reference_value" in names
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT rid FROM sp_reference WHERE res_type = 'Observation'"
                " AND param IN ('patient', 'subject') AND target_type = 'Patient'"
                " AND target_id IN ('a', 'b')").all())
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
    keys = [(t, c) for t, c, _n in m.COLUMNS]
    assert len(keys) == 22
    assert all(_collations(engine)[k] == "C" for k in keys)
    # a database from before 0005: the columns in the database's default collation
    with engine.begin() as conn:
        for t, c, n in m.COLUMNS:
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


def test_an_existing_database_loses_the_target_index_on_upgrade(db_url):
    """A database made before migration 0006 has the index; starting the gateway (which
    migrates) drops it, and a downgrade brings it back."""
    from alembic import command
    from alembic.config import Config

    from fhirgw.store.db import MIGRATIONS, make_engine, migrate

    eng = make_engine(db_url)
    try:
        migrate(eng)
        cfg = Config()
        cfg.set_main_option("script_location", MIGRATIONS)
        with eng.connect() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0005")
            conn.commit()
        assert "ix_sp_reference_target" in {
            i["name"] for i in inspect(eng).get_indexes("sp_reference")}
        migrate(eng)
        assert "ix_sp_reference_target" not in {
            i["name"] for i in inspect(eng).get_indexes("sp_reference")}
    finally:
        eng.dispose()
