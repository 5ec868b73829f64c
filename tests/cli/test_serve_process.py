"""What ``fhirgw serve`` sets up for its process beyond the app: the validation worker
started with the server, and the garbage collector tuned for a server."""
import os

from fastapi.testclient import TestClient

from fhirgw.app import create_app
from fhirgw.config import Settings


def test_serve_turns_prestart_on(monkeypatch, tmp_path):
    import fhirgw.cli as cli

    # serve sets FHIRGW_* variables: it gets a copy of the environment, dropped afterwards
    env = {k: v for k, v in os.environ.items() if k != "FHIRGW_VALIDATION_PRESTART"}
    monkeypatch.setattr(os, "environ", env)
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: None)
    cli.serve(host="127.0.0.1", port=8000, database=f"sqlite:///{tmp_path / 'serve.db'}",
              workers=1, config=None, log_level="warning")
    assert os.environ["FHIRGW_VALIDATION_PRESTART"] == "1"
    assert Settings().validation_prestart


def test_serve_tunes_the_collector_of_its_process(monkeypatch, tmp_path):
    """The app ``fhirgw serve`` runs freezes the startup heap and raises the gen0
    threshold when it starts; an app made with create_app leaves the collector alone."""
    import gc

    import fhirgw.cli as cli
    from fhirgw.runtime import GC_THRESHOLD

    before = gc.get_threshold()
    monkeypatch.setenv("FHIRGW_DATABASE_URL", f"sqlite:///{tmp_path / 'gc.db'}")
    monkeypatch.setenv("FHIRGW_VALIDATION_WORKERS", "0")
    try:
        plain = create_app(Settings())
        with TestClient(plain):
            assert gc.get_threshold() == before
        plain.state.router.repo.engine.dispose()
        app = cli._factory()
        with TestClient(app):
            assert gc.get_threshold() == GC_THRESHOLD and gc.get_freeze_count() > 100_000
        app.state.router.repo.engine.dispose()
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_boolean_settings_read_the_usual_words(monkeypatch):
    for value, prestart, worker in [("1", True, True), ("on", True, True), ("YES", True, True),
                                    ("0", False, False), ("off", False, False),
                                    ("False", False, False), ("", False, True),
                                    ("maybe", False, True)]:
        monkeypatch.setenv("FHIRGW_VALIDATION_PRESTART", value)
        monkeypatch.setenv("FHIRGW_WORKER", value)
        s = Settings()
        assert (s.validation_prestart, s.worker) == (prestart, worker), value
