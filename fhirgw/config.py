"""Settings, from arguments or FHIRGW_* environment variables."""
from __future__ import annotations

import os
from dataclasses import dataclass, field


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _env_bool(name: str, default: bool) -> bool:
    """1/true/yes/on or 0/false/no/off (any case); unset, empty or anything else: default."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return default


@dataclass
class Settings:
    #: SQLAlchemy URL: ``sqlite:///./fhirgw.db`` (default) or ``postgresql+psycopg://...``
    database_url: str = field(default_factory=lambda: os.environ.get(
        "FHIRGW_DATABASE_URL", "sqlite:///./fhirgw.db"))
    #: the public base URL; empty means derived from each request (``http://host/fhir``)
    base_url: str = field(default_factory=lambda: os.environ.get("FHIRGW_BASE_URL", ""))
    #: most entries accepted in one batch/transaction Bundle (413 above)
    max_bundle_entries: int = field(default_factory=lambda: _env_int(
        "FHIRGW_MAX_BUNDLE_ENTRIES", 1000))
    #: largest request body in bytes (413 above)
    max_body_bytes: int = field(default_factory=lambda: _env_int(
        "FHIRGW_MAX_BODY_BYTES", 32 * 1024 * 1024))
    #: search page size when _count is absent, and the largest _count honoured
    default_count: int = field(default_factory=lambda: _env_int("FHIRGW_DEFAULT_COUNT", 20))
    max_count: int = field(default_factory=lambda: _env_int("FHIRGW_MAX_COUNT", 1000))
    #: most resources a conditional delete with multiple matches removes
    max_conditional_delete: int = field(default_factory=lambda: _env_int(
        "FHIRGW_MAX_CONDITIONAL_DELETE", 100))
    #: connection pool size per process
    pool_size: int = field(default_factory=lambda: _env_int("FHIRGW_POOL_SIZE", 10))
    #: worker processes for the R4B base validation of large transactions, overlapped with
    #: their unit of work (fhirgw/validation/parallel.py); 0 turns it off. Default 1 with
    #: two or more CPUs, else 0
    validation_workers: int = field(default_factory=lambda: _env_int(
        "FHIRGW_VALIDATION_WORKERS", 1 if (os.cpu_count() or 1) >= 2 else 0))
    #: start those workers with the app instead of on the first large transaction (which
    #: then validates inline while they start, a second or two); ``fhirgw serve`` sets it
    validation_prestart: bool = field(default_factory=lambda: _env_bool(
        "FHIRGW_VALIDATION_PRESTART", False))
    #: fewest POST/PUT entries a transaction needs to validate in the workers (smaller ones
    #: validate inline: the hand-off would cost more than it saves)
    parallel_validation_min: int = field(default_factory=lambda: _env_int(
        "FHIRGW_PARALLEL_VALIDATION_MIN", 20))
    #: profiles every write of a type must meet: ``Patient=url|url;Task=url``
    required_profiles: str = field(default_factory=lambda: os.environ.get(
        "FHIRGW_REQUIRED_PROFILES", ""))
    #: system URI of the business identifiers the gateway assigns (Task, ServiceRequest, ...)
    identifier_system: str = field(default_factory=lambda: os.environ.get(
        "FHIRGW_IDENTIFIER_SYSTEM", "http://fhirgw.dev/fhir/sid/business-id"))
    #: apply migrations on start
    migrate: bool = True
    # ---- security (fhirgw/security)
    #: "enabled" (default: every FHIR request needs a bearer token) or "disabled" (local
    #: development only: refused on a non-loopback address, warned about on every start)
    auth: str = field(default_factory=lambda: os.environ.get("FHIRGW_AUTH", "enabled"))
    #: access token lifetime in seconds
    token_lifetime: int = field(default_factory=lambda: _env_int("FHIRGW_TOKEN_LIFETIME", 300))

    @property
    def auth_enabled(self) -> bool:
        value = self.auth.strip().lower()
        if value not in ("enabled", "disabled"):
            raise ValueError(f"FHIRGW_AUTH must be 'enabled' or 'disabled', not {self.auth!r}")
        return value == "enabled"
    # ---- sync (fhirgw/sync): partner config file, default poll interval, in-process worker
    #: TOML/YAML file of partner settings keyed by Endpoint identifier (empty: defaults only)
    sync_config: str = field(default_factory=lambda: os.environ.get("FHIRGW_SYNC_CONFIG", ""))
    #: seconds between inbound polls of a partner, unless its config says otherwise (>= 1)
    poll_interval: float = field(default_factory=lambda: max(1.0, float(
        os.environ.get("FHIRGW_POLL_INTERVAL") or 60)))
    #: run the delivery/poll worker inside ``fhirgw serve``
    worker: bool = field(default_factory=lambda: _env_bool("FHIRGW_WORKER", True))
