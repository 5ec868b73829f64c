"""fhirgw's Python SDK: typed FHIR R4 (fhir.resources R4B models) over httpx, sync and async.

    from fhirgw.client import Client
    from fhir.resources.R4B.patient import Patient

    with Client("http://127.0.0.1:8000/fhir") as client:
        p = client.create(Patient(name=[{"family": "Rivera"}]))
        for appt in client.search(Appointment).where(patient=p).sort("-date"):
            ...

See README.md beside this file. Exceptions are documented in ``_exceptions.py``.
"""
from ._auth import BearerToken, ClientCredentials, SmartBackendServices
from ._client import AsyncClient, AsyncReferrals, Client, Referrals
from ._config import DEFAULT_TIMEOUT, Retry
from ._exceptions import (
                          AuthError,
                          BadRequest,
                          Conflict,
                          DecodeError,
                          FhirClientError,
                          Forbidden,
                          Gone,
                          InvalidTransition,
                          MethodNotAllowed,
                          NotFound,
                          PayloadTooLarge,
                          PreconditionFailed,
                          ResponseError,
                          ServerError,
                          Timeout,
                          TooManyRequests,
                          TransportError,
                          Unauthorized,
                          UnprocessableEntity,
                          UnsupportedFormat,
                          ValidationError,
)
from ._iop import TASK_TRANSITIONS, Referral
from ._query import search_params
from ._search import AsyncSearchSet, Page, SearchSet
from ._transaction import AsyncTransaction, Entry, Transaction, TransactionResult

__all__ = [
    "Client", "AsyncClient", "Referrals", "AsyncReferrals", "Referral", "TASK_TRANSITIONS",
    "SearchSet", "AsyncSearchSet", "Page", "search_params",
    "Transaction", "AsyncTransaction", "Entry", "TransactionResult",
    "BearerToken", "ClientCredentials", "SmartBackendServices",
    "Retry", "DEFAULT_TIMEOUT",
    "FhirClientError", "TransportError", "Timeout", "DecodeError", "AuthError",
    "InvalidTransition", "ResponseError", "BadRequest", "ValidationError",
    "UnprocessableEntity", "Unauthorized", "Forbidden", "NotFound", "MethodNotAllowed",
    "UnsupportedFormat", "Conflict", "Gone", "PreconditionFailed", "PayloadTooLarge",
    "TooManyRequests", "ServerError",
]
