import pytest

from .helpers import Store


@pytest.fixture
def store(engine):
    return Store(engine)
