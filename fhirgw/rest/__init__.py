"""The FHIR REST semantics, independent of HTTP: one table of (method, path) -> handler.

The HTTP layer (fhirgw/api) turns a request into a ``RestRequest`` and the answer back into
a response; Bundle processing (``bundle.py``) sends each entry through the same router, so
batch and transaction never re-implement an interaction.
"""
from .router import RestRequest, RestResponse, Router

__all__ = ["RestRequest", "RestResponse", "Router"]
