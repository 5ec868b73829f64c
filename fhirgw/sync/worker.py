"""The delivery worker: claims outbox rows, builds each payload from the stored state,
maps it, sends it through the partner's connector, and records sent / retry / dead-letter.
It also runs the inbound poller (its own thread).

Runs inside ``fhirgw serve`` (background threads, started and stopped with the app's
lifespan, woken at once by every commit) and alone as ``fhirgw worker``.

* Retries: exponential backoff with full jitter (``backoff_base * 2**attempt``, at most
  ``backoff_max``), never sooner than the partner's ``Retry-After``; rows older than the
  partner's ``max_age`` dead-letter (0 retries forever).
* Circuit breaker per partner: ``breaker_failures`` consecutive retryable failures open it
  for ``breaker_reset`` seconds (doubling while it keeps failing, at most ``backoff_max``);
  while open the partner's rows are not claimed; then one delivery tries (half open).
* Rate limit per partner (``rate_limit`` requests/s, a token bucket) and at most
  ``concurrency`` deliveries in flight per partner.
* Payload and mapping errors dead-letter the row with the reason; nothing stops the loop.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from ..model.errors import FhirError
from ..store.repository import Repository, clock
from . import outbox as ob
from .config import PartnerConfig, SyncConfig
from .connectors import Connector, Result, connector_for
from .mapping import MappingError, for_partner
from .partners import Partner, endpoint_by_id
from .payloads import NothingToSend, PayloadError, Reader, build

log = logging.getLogger("fhirgw.sync")
SEC = 1_000_000


class Breaker:
    def __init__(self, failures: int, reset: float, max_reset: float) -> None:
        self.threshold = max(1, failures)
        self.reset = reset
        self.max_reset = max(reset, max_reset)
        self.failures = 0
        self.opened = 0
        self.open_until = 0.0
        self.lock = threading.Lock()

    def is_open(self, now: float | None = None) -> bool:
        return (now or time.monotonic()) < self.open_until

    @property
    def half_open(self) -> bool:
        return self.failures >= self.threshold and not self.is_open()

    def success(self) -> None:
        with self.lock:
            self.failures = 0
            self.opened = 0
            self.open_until = 0.0

    def failure(self) -> None:
        with self.lock:
            self.failures += 1
            if self.failures >= self.threshold:
                wait = min(self.max_reset, self.reset * (2 ** self.opened))
                self.opened += 1
                self.open_until = time.monotonic() + wait
                log.warning("sync: circuit open for %.1fs after %d failures", wait,
                            self.failures)


class RateLimiter:
    """A token bucket: ``rate`` per second, bursts of ``rate`` (0: unlimited)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = max(1.0, rate)
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        if self.rate <= 0:
            return
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            time.sleep(wait)


def backoff(cfg: PartnerConfig, attempts: int, retry_after: float | None = None) -> float:
    """Seconds until the next try: full jitter over an exponential ceiling, at least the
    partner's Retry-After.

    >>> cfg = PartnerConfig(backoff_base=1, backoff_max=300)
    >>> 0 <= backoff(cfg, 0) <= 1 and 0 <= backoff(cfg, 20) <= 300
    True
    >>> backoff(cfg, 0, retry_after=30) >= 30
    True
    """
    ceiling = min(cfg.backoff_max, cfg.backoff_base * (2 ** min(attempts, 30)))
    wait = random.uniform(ceiling / 2, ceiling)
    return max(wait, retry_after or 0.0)


class _PartnerState:
    def __init__(self, cfg: PartnerConfig) -> None:
        self.cfg = cfg
        self.breaker = Breaker(cfg.breaker_failures, cfg.breaker_reset, cfg.backoff_max)
        self.limiter = RateLimiter(cfg.rate_limit)
        self.slots = threading.Semaphore(max(1, cfg.concurrency))
        self.clients: dict[str, httpx.Client] = {}
        self.lock = threading.Lock()

    def connector(self, partner: Partner) -> Connector:
        with self.lock:
            client = self.clients.get(partner.address)
            if client is None:
                client = httpx.Client(auth=self.cfg.http_auth(), timeout=self.cfg.timeout,
                                      limits=httpx.Limits(max_connections=max(
                                          4, self.cfg.concurrency * 2)))
                self.clients[partner.address] = client
        return connector_for(partner, client)

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


#: how each kind of delivery is sent, as the AuditEvent subtype
_SUBTYPE = {"referral": "transaction", "message": "operation", "document": "update",
            "resource": "update"}


class Worker:
    def __init__(self, repo: Repository, config: SyncConfig, settings, *,
                 poll: bool = True, name: str = "sync") -> None:
        self.repo = repo
        self.engine = repo.engine
        self.config = config
        self.settings = settings
        self.base = (settings.base_url or "http://localhost/fhir").rstrip("/")
        self.poll_enabled = poll
        self.name = name
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._states: dict[str, _PartnerState] = {}
        self._states_lock = threading.Lock()
        total = max(4, min(64, config.defaults.concurrency * 4))
        self._pool = ThreadPoolExecutor(max_workers=total, thread_name_prefix=f"{name}-send")
        from .poller import Poller
        self.poller = Poller(self)
        self.stats = {"sent": 0, "retried": 0, "dead": 0, "rounds": 0}
        #: where disclosure AuditEvents go (security.audit.AuditTrail); None: nowhere
        self.audit = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        for i in range(self.config.worker.threads):
            t = threading.Thread(target=self._deliver_loop, name=f"{self.name}-deliver-{i}",
                                 daemon=True)
            t.start()
            self._threads.append(t)
        if self.poll_enabled:
            p = threading.Thread(target=self.poller.loop, name=f"{self.name}-poll", daemon=True)
            p.start()
            self._threads.append(p)
        log.info("sync worker started (%s)", self.config.source or "no config file")

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self.poller.wake()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()
        self._pool.shutdown(wait=True, cancel_futures=False)
        for s in self._states.values():
            s.close()

    def wake(self, *_args) -> None:
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def state(self, key: str, system: str | None = None) -> _PartnerState:
        with self._states_lock:
            s = self._states.get(key)
            if s is None:
                s = self._states[key] = _PartnerState(self.config.partner(key, system))
            return s

    # ------------------------------------------------------------ delivery

    def _deliver_loop(self) -> None:
        while not self._stop.is_set():
            try:
                n = self.run_once()
            except Exception:
                log.exception("sync: delivery round failed")
                n = 0
                self._stop.wait(1.0)
            if n == 0:
                if self._wake.wait(self.config.worker.idle):
                    self._wake.clear()

    def run_once(self) -> int:
        """Claim one batch, deliver it, record the results; returns the groups handled."""
        now = time.monotonic()
        exclude = frozenset(k for k, s in self._states.items() if s.breaker.is_open(now))
        groups = ob.claim(self.engine, limit=self.config.worker.batch,
                          lease=self.config.worker.lease, exclude=exclude)
        if not groups:
            return 0
        self.stats["rounds"] += 1
        outcomes: list[ob.Outcome] = []
        ready: list[tuple] = []
        trial: set[str] = set()
        t0 = time.perf_counter()
        prepared_all = self._prepare_batch(groups)
        self.stats["prepare_s"] = self.stats.get("prepare_s", 0) + time.perf_counter() - t0
        for g, prepared in zip(groups, prepared_all):
            if isinstance(prepared, ob.Outcome):
                outcomes.append(prepared)
                continue
            st = prepared[2]
            if st.breaker.is_open() or (st.breaker.half_open and g.partner in trial):
                # circuit open (or half open with its one trial taken): back, unchanged
                wait = max(0.5, st.breaker.open_until - time.monotonic())
                outcomes.append(ob.Outcome(g, "release",
                                           next_attempt_at=clock.now() + int(wait * SEC)))
                continue
            if st.breaker.half_open:
                trial.add(g.partner)
            ready.append(prepared)
        # referrals to one REST partner travel together: one transaction of many referrals
        units: list[list[tuple]] = []
        by_partner: dict[str, list[tuple]] = {}
        for item in ready:
            g, partner, st, payload = item
            if payload.kind == "referral" and st.cfg.bundle_size > 1 and \
                    g.partner not in trial:
                chunk = by_partner.setdefault(g.partner, [])
                chunk.append(item)
                if len(chunk) >= st.cfg.bundle_size:
                    units.append(chunk)
                    by_partner[g.partner] = []
            else:
                units.append([item])
        units += [c for c in by_partner.values() if c]
        t0 = time.perf_counter()
        for f in [self._pool.submit(self._send_unit, u) for u in units]:
            outcomes.extend(f.result())
        t1 = time.perf_counter()
        ob.record(self.engine, outcomes)
        self.stats["send_s"] = self.stats.get("send_s", 0) + t1 - t0
        self.stats["record_s"] = self.stats.get("record_s", 0) + time.perf_counter() - t1
        return len(groups)

    def _prepare_batch(self, groups: list[ob.Claimed]) -> list:
        """What ``_prepare`` gives for each group, built in one read transaction with the
        batch's reads prefetched together (see ``payloads.Reader``). A group that fails
        unexpectedly there is built again alone, in its own transaction, as before."""
        def batch(tx):
            endpoints = {eid: endpoint_by_id(tx, eid)
                         for eid in dict.fromkeys(g.endpoint_id for g in groups)}
            reader = Reader(tx)
            reader.prefetch([g.res_key for g in groups if g.kind == "referral" and
                             endpoints.get(g.endpoint_id) is not None])
            out = []
            for g in groups:
                try:
                    out.append(self._prepare(g, endpoints.get(g.endpoint_id), tx, reader))
                except Exception:  # retried alone below
                    log.debug("sync: preparing %s in its batch failed", g.res_key,
                              exc_info=True)
                    out.append(None)
            return out
        try:
            prepared = self.repo.run(batch, write=False)
        except Exception:  # each group alone below
            log.exception("sync: preparing a batch of %d failed; one at a time", len(groups))
            prepared = [None] * len(groups)
        return [p if p is not None else self._prepare_alone(g)
                for g, p in zip(groups, prepared)]

    def _prepare_alone(self, g: ob.Claimed):
        try:
            return self.repo.run(lambda tx: self._prepare(
                g, endpoint_by_id(tx, g.endpoint_id), tx), write=False)
        except Exception as exc:
            log.exception("sync: preparing %s for %s failed", g.res_key, g.partner)
            return self._retry(g, self.state(g.partner).cfg, Result(
                False, True, None, f"internal error: {type(exc).__name__}: {exc}"))

    def _prepare(self, g: ob.Claimed, partner: Partner | None, tx, reader: Reader | None = None):
        """(group, partner, state, payload), or the Outcome when nothing can be sent."""
        if partner is None:
            return ob.Outcome(g, "dead", error=f"Endpoint/{g.endpoint_id} of partner "
                              f"{g.partner} is gone or no longer an active FHIR endpoint")
        st = self.state(g.partner, partner.system)
        try:
            mapping = for_partner(st.cfg.mapping)
            payload = build(tx, g.kind, g.res_key, partner, mapping, base=self.base,
                            identifier_system=self.settings.identifier_system, reader=reader)
        except NothingToSend as exc:
            return ob.Outcome(g, "discarded", error=str(exc))
        except MappingError as exc:
            self.stats["dead"] += 1
            return ob.Outcome(g, "dead", error=f"mapping error: {exc}")
        except (PayloadError, FhirError) as exc:
            self.stats["dead"] += 1
            return ob.Outcome(g, "dead", error=f"cannot build the delivery: {exc}")
        return g, partner, st, payload

    def _send_unit(self, unit: list[tuple]) -> list[ob.Outcome]:
        try:
            if len(unit) == 1:
                return [self._send(*unit[0])]
            return self._send_together(unit)
        except Exception as exc:
            log.exception("sync: delivery to %s failed unexpectedly", unit[0][0].partner)
            return [self._retry(g, st.cfg, Result(False, True, None,
                                                  f"internal error: {type(exc).__name__}: {exc}"))
                    for g, _p, st, _pl in unit]

    def _call(self, st: _PartnerState, partner: Partner, payload) -> Result:
        with st.slots:
            st.limiter.acquire()
            return st.connector(partner).deliver(payload)

    def _send(self, g: ob.Claimed, partner: Partner, st: _PartnerState, payload
              ) -> ob.Outcome:
        outcome = self._judge(g, st, payload, self._call(st, partner, payload))
        self._audit(g, partner, payload, outcome)
        return outcome

    def _audit(self, g: ob.Claimed, partner: Partner, payload, outcome: ob.Outcome) -> None:
        """A disclosure AuditEvent for what reached the partner."""
        if self.audit is None or outcome.status != "sent":
            return
        from ..security.audit import disclosure_event
        refs = list(dict.fromkeys([g.res_key, *getattr(payload, "disclosed", ())]))
        self.audit.record(disclosure_event(
            None, partner.organization or f"Endpoint/{partner.endpoint_id}",
            outcome.response_status or 200, recipient_name=partner.name or None,
            partner=partner.key, address=partner.address, resource_refs=refs,
            patient_refs=sorted(getattr(payload, "patients", ())),
            interaction=_SUBTYPE.get(payload.kind, "operation"), purpose="TREAT"))

    def _judge(self, g: ob.Claimed, st: _PartnerState, payload, result: Result,
               response=None) -> ob.Outcome:
        if result.ok:
            st.breaker.success()
            self.stats["sent"] += 1
            return ob.Outcome(g, "sent", response_status=result.status,
                              links=_links(payload, response if response is not None
                                           else result.response))
        if result.retry:
            st.breaker.failure()
            return self._retry(g, st.cfg, result)
        st.breaker.success()   # the partner answered: it is up
        self.stats["dead"] += 1
        log.warning("sync: %s to %s dead-lettered: %s", g.res_key, g.partner, result.error)
        return ob.Outcome(g, "dead", error=result.error, response_status=result.status,
                          outcome=result.outcome)

    def _send_together(self, unit: list[tuple]) -> list[ob.Outcome]:
        """Several referrals to one partner as one transaction; if the partner refuses it,
        each is sent alone (so one bad referral dead-letters alone)."""
        from ..security.disclosure import merge_meta
        from .payloads import Payload

        g0, partner, st, _p = unit[0]
        entries: list[dict] = []
        where: dict[str, int] = {}
        offsets = []
        for _g, _pa, _st, payload in unit:
            index = []
            for e in payload.body["entry"]:
                if e["fullUrl"] not in where:      # a client in two referrals: once
                    where[e["fullUrl"]] = len(entries)
                    entries.append(e)
                index.append(where[e["fullUrl"]])
            offsets.append(index)
        combined_body = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        meta = merge_meta(payload.body for _g, _pa, _st, payload in unit)
        if meta:  # the Part 2 high-water mark and notices of every referral in it
            combined_body["meta"] = meta
        combined = Payload("POST", "", combined_body, "referral")
        result = self._call(st, partner, combined)
        if result.permanent:
            return [self._send(*item) for item in unit]
        out = []
        resp_entries = (result.response or {}).get("entry") or [] if result.ok else []
        for (g, _pa, _st, payload), index in zip(unit, offsets):
            sub = {"entry": [resp_entries[i] if i < len(resp_entries) else {} for i in index]}
            out.append(self._judge(g, st, payload, result, sub))
            self._audit(g, partner, payload, out[-1])
        return out

    def _retry(self, g: ob.Claimed, cfg: PartnerConfig, result: Result) -> ob.Outcome:
        now = clock.now()
        if cfg.max_age and now - g.created_at > cfg.max_age * SEC:
            self.stats["dead"] += 1
            return ob.Outcome(g, "dead", error=f"gave up after {cfg.max_age:.0f}s "
                              f"(max_age); last error: {result.error}",
                              response_status=result.status, outcome=result.outcome)
        wait = backoff(cfg, g.attempts, result.retry_after)
        self.stats["retried"] += 1
        log.info("sync: %s to %s will be retried in %.1fs: %s", g.res_key, g.partner, wait,
                 result.error)
        return ob.Outcome(g, "pending", error=result.error, response_status=result.status,
                          outcome=result.outcome, next_attempt_at=now + int(wait * SEC))

    def drain(self, timeout: float = 30.0) -> None:
        """Deliver until nothing is due (tests and ``fhirgw worker --once``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.run_once():
            pass


def _links(payload, response) -> list[tuple[str, str, bool]]:
    """Partner ids of the referral Tasks, from the transaction-response locations."""
    out = []
    entries = (response or {}).get("entry") or [] if isinstance(response, dict) else []
    for ref, index in payload.track:
        if index < len(entries):
            loc = ((entries[index] or {}).get("response") or {}).get("location") or ""
            parts = loc.split("/_history")[0].rstrip("/").split("/")
            if len(parts) >= 2 and parts[-2] == "Task":
                out.append((ref, parts[-1], ref not in payload.closed))
    return out
