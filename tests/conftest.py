"""Shared fixtures: a fresh database per test module, on SQLite and on PostgreSQL.

PostgreSQL runs on 127.0.0.1:5432 (trust auth). Each test run creates its own database and
drops it at the end. Without a PostgreSQL the ``pg`` cases skip, except under CI=true, where
a missing PostgreSQL is a failure.
"""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text

PG_ADMIN_URL = os.environ.get("FHIRGW_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_admin():
    try:
        eng = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.execute(text("select 1"))
        return eng
    except Exception as exc:  # pragma: no cover - depends on the machine
        return exc


@pytest.fixture(scope="session")
def pg_admin():
    eng = _pg_admin()
    if isinstance(eng, Exception):
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required under CI=true but did not answer: {eng}")
        pytest.skip(f"no PostgreSQL at {PG_ADMIN_URL}: {eng}")
    return eng


@contextmanager
def fresh_pg_database(pg_admin, prefix: str = "fhirgw_t_"):
    """A new empty PostgreSQL database (its URL), dropped afterwards."""
    name = prefix + uuid.uuid4().hex[:12]
    with pg_admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with pg_admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def pg_url(pg_admin):
    with fresh_pg_database(pg_admin) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path}/fhirgw.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request):
    """A URL of an empty database; every test using it runs on both databases."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


def _migrated(url: str):
    """An engine on ``url`` with the schema migrated; the caller disposes of it."""
    from fhirgw.store.db import make_engine, migrate

    eng = make_engine(url)
    migrate(eng)
    return eng


@pytest.fixture
def engine(db_url):
    eng = _migrated(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(sqlite_url):
    """A migrated SQLite file database alone (for what only SQLite has, e.g. its WAL)."""
    eng = _migrated(sqlite_url)
    yield eng
    eng.dispose()
