"""Configuration values: the retry policy and the defaults. Pure: no I/O here.

The clients ask a :class:`Retry` two questions, after an error answer and after a failed
exchange: "wait how long and try again, or give up?" (``None`` means give up). Only the
waiting itself differs between :class:`~fhirgw.client.Client` (``time.sleep``) and
:class:`~fhirgw.client.AsyncClient` (``asyncio.sleep``).
"""
from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

__all__ = ["Retry", "DEFAULT_TIMEOUT", "DEFAULT_RETRY", "retry_after_seconds"]

#: connect 10 s, everything else 60 s (transactions of 1,000 entries take a while)
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)

#: methods that can be sent twice without changing the outcome
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

# failures where the request certainly never reached the server: always safe to resend
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date).

    >>> retry_after_seconds("3")
    3.0
    >>> retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0)
    10.0
    >>> retry_after_seconds("soon") is None, retry_after_seconds(None) is None
    (True, True)
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:  # pragma: no cover - older Pythons
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class Retry:
    """When to resend a request, and how long to wait first.

    * ``total``: resends after the first try (``Retry(total=0)`` never retries).
    * statuses in ``statuses`` (429, 500, 502, 503, 504) are retried; 429 for any request
      (a rate-limited request was not processed), 5xx only for requests that are safe to
      send twice: GET/HEAD/PUT/DELETE, a conditional create (``If-None-Exist``) and
      ``_search`` POSTs. A plain create or a transaction is never sent twice after a 5xx.
    * connection failures before the request left (connect errors, pool timeouts) are
      retried for any request; a read timeout or a dropped connection only for safe ones.
    * the wait is ``backoff_factor * 2**attempt`` (0.5, 1, 2, 4 … s), at most
      ``backoff_max``, spread by ``jitter`` (a fraction, 0 for exact waits); a
      ``Retry-After`` header wins when ``respect_retry_after`` (still capped by
      ``backoff_max``).

    >>> r = Retry(total=3, backoff_factor=0.5, jitter=0)
    >>> [r.backoff(a) for a in range(4)]
    [0.5, 1.0, 2.0, 4.0]
    >>> r.delay_for_status(0, "POST", 503, {}, safe=False) is None   # a create: not resent
    True
    >>> r.delay_for_status(0, "POST", 429, {"retry-after": "7"}, safe=False)
    7.0
    >>> r.delay_for_status(3, "GET", 503, {}, safe=True) is None     # retries used up
    True
    """

    total: int = 3
    backoff_factor: float = 0.5
    backoff_max: float = 30.0
    jitter: float = 0.1
    statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 500, 502, 503, 504}))
    respect_retry_after: bool = True

    def backoff(self, attempt: int) -> float:
        """The wait before resend number ``attempt + 1`` (no Retry-After)."""
        delay: float = min(self.backoff_max, self.backoff_factor * (2 ** attempt))
        if self.jitter:
            delay *= 1.0 + float(random.uniform(-self.jitter, self.jitter))
        return max(0.0, delay)

    def delay_for_status(self, attempt: int, method: str, status: int,
                         headers: Mapping[str, str], *, safe: bool) -> float | None:
        """Seconds to wait before resending after an error ``status``, or None to give up."""
        if attempt >= self.total or status not in self.statuses:
            return None
        if status != 429 and not safe:
            return None
        if self.respect_retry_after:
            after = retry_after_seconds(headers.get("retry-after"))
            if after is not None:
                return min(after, self.backoff_max)
        return self.backoff(attempt)

    def delay_for_error(self, attempt: int, exc: Exception, *, safe: bool) -> float | None:
        """Seconds to wait before resending after a transport failure, or None to give up."""
        if attempt >= self.total or not isinstance(exc, httpx.TransportError):
            return None
        if not safe and not isinstance(exc, _NOT_SENT):
            return None
        return self.backoff(attempt)


#: what a client uses when given no ``retry=``
DEFAULT_RETRY = Retry()
