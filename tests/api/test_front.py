"""/fhir requests go straight to the FHIR handler (``api.http.FhirApp``), not through
FastAPI's middleware stack; what that stack did for them still happens."""
import json
import logging

from fastapi.testclient import TestClient
from starlette.middleware.base import BaseHTTPMiddleware

from fhirgw.app import create_app
from tests.auth import authorize


def _stack_spy(app) -> list[str]:
    """Record the paths that reach FastAPI's middleware stack."""
    seen: list[str] = []
    stack = app.build_middleware_stack()

    async def spy(scope, receive, send):
        if scope["type"] == "http":
            seen.append(scope["path"])
        await stack(scope, receive, send)

    app.middleware_stack = spy
    return seen


def test_fhir_requests_skip_the_middleware_stack_and_the_rest_takes_it(settings):
    app = create_app(settings)
    with TestClient(app, base_url="http://testserver") as c:
        authorize(c, app)
        seen = _stack_spy(app)
        assert c.get("/fhir/metadata").status_code == 200
        assert c.get("/fhir/Patient").status_code == 200
        assert c.get("/fhir/Nope/1").status_code == 404
        assert c.get("/healthz").status_code == 200
        assert c.get("/fhir/.well-known/smart-configuration").status_code == 200
    app.state.router.repo.engine.dispose()
    assert seen == ["/healthz", "/fhir/.well-known/smart-configuration"]


def test_an_unexpected_error_is_a_logged_500_outcome_with_a_request_id(settings, caplog,
                                                                      monkeypatch):
    app = create_app(settings)
    with TestClient(app, base_url="http://testserver", raise_server_exceptions=False) as c:
        authorize(c, app)

        def broken(_request):
            raise RuntimeError("a bug")

        monkeypatch.setattr(app.state.router, "handle", broken)
        with caplog.at_level(logging.INFO):
            r = c.get("/fhir/Patient?name=x", headers={"X-Request-Id": "req-500"})
    app.state.router.repo.engine.dispose()
    assert r.status_code == 500
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "exception"
    assert "a bug" not in r.text   # the details go to the log, not to the client
    assert r.headers["x-request-id"] == "req-500"
    errors = [rec for rec in caplog.records if rec.name == "fhirgw.api"]
    assert errors and errors[0].exc_info and "a bug" in str(errors[0].exc_info[1])
    access = [json.loads(rec.getMessage()) for rec in caplog.records
              if rec.name == "fhirgw.access"]
    assert [(a["request_id"], a["status"]) for a in access] == [("req-500", 500)]


def test_a_method_the_fhir_routes_do_not_take_answers_as_before(client):
    r = client.request("OPTIONS", "/fhir/Patient")
    assert r.status_code == 405
    assert "GET" in r.headers["allow"]


def test_another_middleware_sees_fhir_requests_again(settings):
    app = create_app(settings)
    seen: list[str] = []

    class Tap(BaseHTTPMiddleware):
        async def dispatch(self, request, call_next):
            seen.append(request.url.path)
            return await call_next(request)

    app.add_middleware(Tap)
    with TestClient(app, base_url="http://testserver") as c:
        authorize(c, app)
        r = c.get("/fhir/metadata")
    app.state.router.repo.engine.dispose()
    assert r.status_code == 200 and r.headers["x-request-id"]
    assert "/fhir/metadata" in seen


def test_a_root_path_still_reaches_the_fhir_handler(settings):
    app = create_app(settings)
    with TestClient(app, base_url="http://testserver", root_path="/gw") as c:
        authorize(c, app)
        seen = _stack_spy(app)
        r = c.get("/gw/fhir/metadata")
    app.state.router.repo.engine.dispose()
    assert r.status_code == 200 and r.json()["resourceType"] == "CapabilityStatement"
    assert seen == []
