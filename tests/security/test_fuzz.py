"""Fuzz the HTTP API from its own OpenAPI document (schemathesis): whatever the generated
request, the gateway answers without a 5xx, and a request that fails (4xx) stores nothing.

A slice of the 500+ operations keeps this within CI time: the types the IOP lives on, the
Bundle endpoint, the token endpoint and the admin API. Requests carry an admin token (the
interesting failures are past authentication); one pass runs without a token.
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from sqlalchemy import func, select
from starlette.testclient import TestClient

from fhirgw.store.tables import resource_history
from tests.auth import admin_token

TYPES = ("Patient", "Task", "ServiceRequest", "Consent", "AuditEvent", "Condition")
PATHS = "|".join([rf"/fhir/{t}(/.*)?" for t in TYPES] + [r"/fhir", r"/auth/token",
                                                           r"/admin/.*", r"/fhir/metadata"])


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    from fhirgw.app import create_app
    from fhirgw.config import Settings

    db = f"sqlite:///{tmp_path_factory.mktemp('fuzz')}/fhirgw.db"
    app = create_app(Settings(database_url=db, base_url="http://testserver/fhir",
                              worker=False))
    with TestClient(app, base_url="http://testserver") as http:
        app.state.fuzz_token = admin_token(app, http)
        yield app
    app.state.router.repo.engine.dispose()


def _schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app).include(
        path_regex=f"^({PATHS})$")


def _operations(schema, method: str | None = None):
    for result in schema.get_all_operations():
        op = result.ok()
        if method is None or op.method.upper() == method:
            yield op


def _stored(app) -> int:
    """Versions stored, audit records aside (a denied request is audited on purpose)."""
    with app.state.router.repo.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(resource_history)
                            .where(resource_history.c.res_type != "AuditEvent")).scalar()


def test_no_server_errors_and_nothing_stored_on_failure(gateway):
    headers = {"Authorization": f"Bearer {gateway.state.fuzz_token}"}
    ran = 0
    for op in _operations(_schema(gateway)):
        @settings(max_examples=8, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def check(case):
            before = _stored(gateway)
            response = case.call(headers=headers)
            assert response.status_code < 500, (case.method, case.formatted_path,
                                                response.text[:500])
            if response.status_code >= 400:
                assert _stored(gateway) == before, (case.method, case.formatted_path,
                                                    response.status_code)
                if case.path.startswith("/fhir"):
                    assert response.json()["resourceType"] == "OperationOutcome"

        check()
        ran += 1
    assert ran > 40  # the slice really was fuzzed


def test_without_a_token_nothing_but_metadata_answers(gateway):
    for op in _operations(_schema(gateway), "GET"):
        @settings(max_examples=2, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def check(case):
            response = case.call()
            assert response.status_code < 500
            if case.path.startswith("/fhir") and case.path != "/fhir/metadata":
                assert response.status_code == 401, (case.formatted_path,
                                                     response.status_code)

        check()
