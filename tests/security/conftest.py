from tests.api.conftest import client, settings  # noqa: F401  (shared fixtures)
