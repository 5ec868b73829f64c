"""The sync config file: partner credentials and settings, which never live in FHIR resources.

TOML (``.toml``, read with tomllib) or YAML (``.yaml``/``.yml``, PyYAML). Partners are keyed
by their Endpoint's identifier (``value``, or ``system|value``); a partner with no entry gets
``[defaults]``. Every key is optional::

    [worker]
    batch = 50            # rows claimed per round
    idle = 0.2            # seconds between outbox checks when idle (no in-process wake-up)
    lease = 60            # seconds a claimed row stays claimed (a crashed worker's rows
                          # are claimed again after this)
    threads = 2           # delivery loops (claiming their own rows) per process

    [defaults]
    timeout = 10          # seconds per HTTP request
    max_age = 604800      # seconds a delivery is retried before it dead-letters (0: forever)
    backoff_base = 1.0    # first retry after ~1 s, then doubling (full jitter) ...
    backoff_max = 300     # ... up to 5 minutes
    concurrency = 8       # deliveries in flight per partner
    bundle_size = 20      # referrals sent together in one transaction (one bad one is
                          # then sent alone, so it dead-letters alone)
    rate_limit = 0        # requests per second to the partner (0: unlimited)
    breaker_failures = 5  # consecutive failures that open the circuit
    breaker_reset = 30    # seconds the circuit stays open before one trial

    [partners."ehr-north"]            # Endpoint.identifier value
    mapping = "ehr-north.yaml"        # a file in mappings/ (or an absolute path)
    poll_interval = 5                 # seconds; default FHIRGW_POLL_INTERVAL (60)
    track_tasks = true                # poll back the referral Tasks we sent (default true)
    auth = { type = "bearer", token = "..." }
    # auth = { type = "client-credentials", token_url = "...", client_id = "...",
    #          client_secret = "...", scope = "system/*.write" }
    # auth = { type = "smart-backend", token_url = "...", client_id = "...",
    #          private_key_file = "key.pem", key_id = "...", algorithm = "RS384",
    #          scope = "system/Task.write" }
    [[partners."ehr-north".poll]]
    query = "Appointment?patient.identifier=urn:mrn|&_lastUpdated=gt{watermark}"

    [[rules]]                          # deployment routing rules
    type = "Appointment"
    criteria = "status=booked&service-type=90853"
    partner = "ehr-north"
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

MAPPINGS_DIR = Path(os.environ.get("FHIRGW_MAPPINGS_DIR") or
                    Path(__file__).resolve().parents[2] / "mappings")


class ConfigError(ValueError):
    """The sync config file is not usable (the message says where)."""


@dataclass(frozen=True)
class PollQuery:
    #: ``Type?params`` with ``{watermark}`` where the last seen meta.lastUpdated goes
    query: str


@dataclass(frozen=True)
class PartnerConfig:
    key: str = ""
    timeout: float = 10.0
    max_age: float = 7 * 24 * 3600.0
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    concurrency: int = 8
    #: referrals to one partner sent together in one transaction Bundle (1: each alone)
    bundle_size: int = 20
    rate_limit: float = 0.0
    breaker_failures: int = 5
    breaker_reset: float = 30.0
    poll_interval: float | None = None
    track_tasks: bool = True
    mapping: str | None = None
    auth: dict[str, Any] = field(default_factory=dict)
    poll: tuple[PollQuery, ...] = ()

    def http_auth(self) -> httpx.Auth | None:
        """The httpx Auth for ``auth`` (the SDK's classes)."""
        from ..client import BearerToken, ClientCredentials, SmartBackendServices

        a = dict(self.auth or {})
        kind = (a.pop("type", None) or "none").lower()
        if kind == "none":
            return None
        if kind == "bearer":
            token = a.get("token") or os.environ.get(a.get("token_env", ""), "")
            if not token:
                raise ConfigError(f"partner {self.key}: bearer auth needs token or token_env")
            return BearerToken(token)
        if kind in ("client-credentials", "client_credentials", "oauth2"):
            secret = a.get("client_secret") or os.environ.get(a.get("client_secret_env", ""), "")
            return ClientCredentials(a["token_url"], a["client_id"], secret,
                                     scope=a.get("scope"),
                                     auth_method=a.get("auth_method", "basic"))
        if kind in ("smart-backend", "smart_backend", "smart"):
            key = a.get("private_key")
            if not key and a.get("private_key_file"):
                key = Path(a["private_key_file"]).read_text()
            return SmartBackendServices(a["token_url"], a["client_id"], key,
                                        key_id=a.get("key_id"),
                                        algorithm=a.get("algorithm", "RS384"),
                                        scope=a.get("scope"))
        raise ConfigError(f"partner {self.key}: unknown auth type {kind!r} (none, bearer, "
                          "client-credentials, smart-backend)")


@dataclass(frozen=True)
class Rule:
    type: str
    criteria: tuple[tuple[str, str], ...]
    partner: str


@dataclass(frozen=True)
class WorkerConfig:
    batch: int = 50
    idle: float = 0.2
    lease: float = 60.0
    #: delivery loops per worker process (each claims its own rows; preparing one batch
    #: overlaps sending another)
    threads: int = 2


@dataclass
class SyncConfig:
    defaults: PartnerConfig = field(default_factory=PartnerConfig)
    partners: dict[str, PartnerConfig] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    default_poll_interval: float = 60.0
    admin_token: str | None = None
    source: str | None = None

    def partner(self, key: str, system: str | None = None) -> PartnerConfig:
        """The settings of the partner whose Endpoint identifier is ``key``."""
        for k in ((f"{system}|{key}" if system else None), key):
            if k and k in self.partners:
                return self.partners[k]
        return replace(self.defaults, key=key)

    def poll_interval(self, cfg: PartnerConfig) -> float:
        return max(1.0, cfg.poll_interval or self.default_poll_interval)


_PARTNER_FIELDS = {f for f in PartnerConfig.__dataclass_fields__} - {"key", "poll"}


def _partner(key: str, raw: dict, base: PartnerConfig, where: str) -> PartnerConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = set(raw) - _PARTNER_FIELDS - {"poll"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} "
                          f"(known: {sorted(_PARTNER_FIELDS | {'poll'})})")
    values = {k: v for k, v in raw.items() if k in _PARTNER_FIELDS}
    polls = raw.get("poll") or []
    if isinstance(polls, (str, dict)):
        polls = [polls]
    queries = []
    for p in polls:
        q = p if isinstance(p, str) else (p or {}).get("query")
        if not q or "?" not in q and "/" in q:
            raise ConfigError(f"{where}.poll: each needs query = 'Type?params'")
        queries.append(PollQuery(q))
    for k in ("timeout", "max_age", "backoff_base", "backoff_max", "rate_limit",
              "breaker_reset", "poll_interval"):
        if k in values and values[k] is not None:
            values[k] = float(values[k])
    return replace(base, key=key, poll=tuple(queries) or base.poll, **values)


def parse(data: dict, *, default_poll_interval: float = 60.0, source: str | None = None
          ) -> SyncConfig:
    from urllib.parse import parse_qsl

    data = data or {}
    defaults = _partner("", data.get("defaults") or {}, PartnerConfig(), "defaults")
    partners = {str(k): _partner(str(k), v, defaults, f"partners.{k}")
                for k, v in (data.get("partners") or {}).items()}
    rules = []
    for i, r in enumerate(data.get("rules") or []):
        if not isinstance(r, dict) or not r.get("type") or not r.get("partner"):
            raise ConfigError(f"rules[{i}]: needs type and partner (and criteria)")
        crit = r.get("criteria") or ""
        rules.append(Rule(r["type"], tuple(parse_qsl(crit, keep_blank_values=True)),
                          str(r["partner"])))
    w = data.get("worker") or {}
    worker = WorkerConfig(batch=int(w.get("batch", 50)), idle=float(w.get("idle", 0.2)),
                          lease=float(w.get("lease", 60.0)),
                          threads=max(1, int(w.get("threads", 2))))
    admin = (data.get("admin") or {}).get("token")
    return SyncConfig(defaults, partners, rules, worker, max(1.0, default_poll_interval),
                      admin, source)


def load(path: str | os.PathLike | None, *, default_poll_interval: float = 60.0) -> SyncConfig:
    """Read the config file (TOML or YAML); no path gives the defaults."""
    if not path:
        return parse({}, default_poll_interval=default_poll_interval)
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read sync config {p}: {exc}") from None
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text.decode())
    except Exception as exc:  # noqa: BLE001 - any parse error is a config error
        raise ConfigError(f"{p}: {exc}") from None
    return parse(data, default_poll_interval=default_poll_interval, source=str(p))


def mapping_path(name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() or p.exists() else MAPPINGS_DIR / name
