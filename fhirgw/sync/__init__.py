"""Sync with partners: the transactional outbox, the delivery worker, connectors, the
inbound poller and the mapping engine (see README, "Sync with partners").

``setup(repo, settings)`` adds the outbox routing rule to the repository and makes the
worker; ``fhirgw.app`` mounts the admin API (``api/admin.py``) and runs the worker with the
app.
"""
from __future__ import annotations

from .config import SyncConfig, load
from .routing import OutboxRule


def setup(repo, settings, config: SyncConfig | None = None):
    """The routing rule on ``repo`` (last, so it sees what other rules wrote) and a Worker."""
    from .worker import Worker

    config = config or load(settings.sync_config or None,
                            default_poll_interval=settings.poll_interval)
    rule = OutboxRule(config, settings)
    repo.rules.append(rule)
    worker = Worker(repo, config, settings)
    return rule, worker


__all__ = ["SyncConfig", "load", "setup"]
