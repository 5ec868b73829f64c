import pytest
from fastapi.testclient import TestClient

from fhirgw.app import create_app
from fhirgw.config import Settings
from tests.auth import authorize


@pytest.fixture
def settings(db_url):
    return Settings(database_url=db_url, base_url="http://testserver/fhir",
                    max_bundle_entries=50)


@pytest.fixture
def client(settings):
    """A TestClient of a gateway with auth on, carrying an admin token (from the token
    endpoint) in its default headers."""
    app = create_app(settings)
    with TestClient(app, base_url="http://testserver") as c:
        authorize(c, app)
        yield c
    app.state.router.repo.engine.dispose()


def patient(family="Rivera", given="Ana", mrn=None, **extra):
    body = {"resourceType": "Patient", "name": [{"family": family, "given": [given]}],
            "birthDate": "1990-04-02"}
    if mrn:
        body["identifier"] = [{"system": "urn:iop:mrn", "value": mrn}]
    body.update(extra)
    return body
