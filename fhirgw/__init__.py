"""fhirgw: a FHIR R4 interoperability gateway for virtual mental-health IOPs."""

__version__ = "0.1.0"
FHIR_VERSION = "4.0.1"


def __getattr__(name: str) -> object:
    """``fhirgw.Client`` / ``fhirgw.AsyncClient``, imported on first use so that
    ``import fhirgw`` stays light."""
    if name in ("Client", "AsyncClient"):
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'fhirgw' has no attribute {name!r}")
