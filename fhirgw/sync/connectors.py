"""Connectors: one ``Connector`` interface, one implementation per protocol (httpx's
transport pattern). A connector sends a ``Payload`` and says what happened as a ``Result``;
it never touches the database. Tests swap the transport (respx, or a real partner).

Classification (the same for every protocol):

* 2xx with a readable answer: delivered (a transaction-response entry that failed, or a
  message response ``fatal-error``, is permanent; ``transient-error`` is retried);
* 408, 429 and 5xx, timeouts, connection errors, unreadable 2xx answers: retried, after
  ``Retry-After`` when the partner gives one;
* any other 4xx: permanent (dead-letter), keeping the partner's OperationOutcome.
"""
from __future__ import annotations

import email.utils
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from .partners import Partner
from .payloads import Payload

FHIR_JSON = "application/fhir+json"


@dataclass
class Result:
    ok: bool
    retry: bool = False
    status: int | None = None
    error: str = ""
    outcome: dict | None = None
    retry_after: float | None = None
    response: Any = None

    @property
    def permanent(self) -> bool:
        return not self.ok and not self.retry


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date).

    >>> retry_after("7")
    7.0
    >>> retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0)
    10.0
    >>> retry_after("soon") is None
    True
    """
    if not value:
        return None
    v = value.strip()
    if v.isdigit():
        return float(v)
    try:
        when = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _json(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        return None


def _outcome_text(outcome: dict | None) -> str:
    if not isinstance(outcome, dict):
        return ""
    return "; ".join(str(i.get("diagnostics") or (i.get("details") or {}).get("text") or
                         i.get("code")) for i in outcome.get("issue") or [] if isinstance(i, dict))


def classify(response: httpx.Response) -> Result | None:
    """The Result of a non-2xx answer (None for 2xx: the protocol reads the body)."""
    code = response.status_code
    if 200 <= code < 300:
        return None
    data = _json(response)
    outcome = data if isinstance(data, dict) and data.get("resourceType") == "OperationOutcome" \
        else None
    text = _outcome_text(outcome) or response.text[:300].strip() or response.reason_phrase
    err = f"HTTP {code} from {response.request.method} {response.request.url}: {text}"
    if code in (408, 429) or code >= 500:
        return Result(False, True, code, err, outcome, retry_after(response.headers.get(
            "retry-after")))
    return Result(False, False, code, err, outcome)


def transport_failure(exc: Exception, request: str) -> Result:
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    return Result(False, True, None, f"{request} {kind}: {type(exc).__name__}: {exc}")


class Connector(ABC):
    """Talks to one partner over one protocol."""

    protocol: str = ""

    def __init__(self, partner: Partner, client: httpx.Client) -> None:
        self.partner = partner
        self.client = client

    def url(self, path: str) -> str:
        if path.startswith("http://") or path.startswith("https://"):
            return path
        return f"{self.partner.address}/{path}" if path else self.partner.address

    def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        headers = {"Accept": FHIR_JSON}
        content = None
        if body is not None:
            headers["Content-Type"] = FHIR_JSON
            content = orjson.dumps(body)
        return self.client.request(method, self.url(path), content=content, headers=headers)

    def deliver(self, payload: Payload) -> Result:
        label = f"{payload.method} {self.url(payload.path)}"
        try:
            response = self.request(payload.method, payload.path, payload.body)
        except httpx.TransportError as exc:
            return transport_failure(exc, label)
        failed = classify(response)
        if failed is not None:
            return failed
        return self.accept(payload, response)

    @abstractmethod
    def accept(self, payload: Payload, response: httpx.Response) -> Result:
        """Read a 2xx answer."""

    def search(self, query: str) -> Iterator[dict]:  # pragma: no cover - REST only
        raise NotImplementedError(f"{self.protocol} partners cannot be searched")


class FhirRestConnector(Connector):
    """A FHIR REST server: transactions, conditional updates, searches with paging."""

    protocol = "rest"

    def accept(self, payload: Payload, response: httpx.Response) -> Result:
        if payload.kind == "message":
            return FhirMessagingConnector.accept(self, payload, response)  # type: ignore[arg-type]
        data = _json(response)
        if payload.kind == "referral":
            if not isinstance(data, dict) or data.get("resourceType") != "Bundle" or \
                    not isinstance(data.get("entry"), list):
                return Result(False, True, response.status_code,
                              "malformed transaction-response from the partner "
                              f"({response.headers.get('content-type')}: "
                              f"{response.text[:120]!r})")
            for i, e in enumerate(data["entry"]):
                status = str(((e or {}).get("response") or {}).get("status") or "")
                if not status[:1] == "2":
                    oo = ((e or {}).get("response") or {}).get("outcome")
                    return Result(False, False, response.status_code,
                                  f"transaction entry {i} answered {status}: "
                                  f"{_outcome_text(oo)}", oo)
            return Result(True, status=response.status_code, response=data)
        if response.content and data is None:
            return Result(False, True, response.status_code,
                          f"malformed response from the partner: {response.text[:120]!r}")
        return Result(True, status=response.status_code, response=data)

    def search(self, query: str, max_pages: int = 100) -> Iterator[dict]:
        """Every resource of a search (``Type?params`` or an absolute URL), following
        ``next`` links on the partner's own host. Raises ``SearchFailed``."""
        url = self.url(query)
        host = httpx.URL(self.partner.address).host
        for _ in range(max_pages):
            try:
                response = self.client.get(url, headers={"Accept": FHIR_JSON})
            except httpx.TransportError as exc:
                raise SearchFailed(transport_failure(exc, f"GET {url}")) from None
            failed = classify(response)
            if failed is not None:
                raise SearchFailed(failed)
            data = _json(response)
            if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
                raise SearchFailed(Result(False, True, response.status_code,
                                          f"GET {url}: not a searchset Bundle"))
            for e in data.get("entry") or []:
                r = (e or {}).get("resource")
                mode = ((e or {}).get("search") or {}).get("mode", "match")
                if isinstance(r, dict) and mode == "match":
                    yield r
            nxt = next((link.get("url") for link in data.get("link") or []
                        if link.get("relation") == "next"), None)
            if not nxt or httpx.URL(nxt).host != host:
                return
            url = nxt


class FhirMessagingConnector(Connector):
    """A FHIR messaging partner: message Bundles to ``$process-message``."""

    protocol = "msg"

    def accept(self, payload: Payload, response: httpx.Response) -> Result:
        data = _json(response)
        if response.status_code in (202, 204) and data is None:
            return Result(True, status=response.status_code)   # accepted asynchronously
        if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
            return Result(False, True, response.status_code,
                          f"malformed $process-message response: {response.text[:120]!r}")
        entries = data.get("entry") or []
        header = (entries[0].get("resource") or {}) if entries else {}
        answer = (header.get("response") or {})
        code = answer.get("code", "ok")
        outcome = next((e.get("resource") for e in entries[1:]
                        if (e.get("resource") or {}).get("resourceType") == "OperationOutcome"),
                       None)
        if code == "ok":
            return Result(True, status=response.status_code, response=data)
        err = f"message response {code}: {_outcome_text(outcome) or 'no details'}"
        return Result(False, code == "transient-error", response.status_code, err, outcome)


class SearchFailed(Exception):
    def __init__(self, result: Result) -> None:
        super().__init__(result.error)
        self.result = result


CONNECTORS: dict[str, type[Connector]] = {"rest": FhirRestConnector, "msg": FhirMessagingConnector}


def connector_for(partner: Partner, client: httpx.Client) -> Connector:
    return CONNECTORS[partner.protocol](partner, client)
