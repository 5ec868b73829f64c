"""Sync with partners: the transactional outbox, the delivery worker, connectors, the
inbound poller and the mapping engine (see README, "Sync with partners").

``install(app, repo, settings)`` adds the outbox routing rule to the repository, the admin
API under ``/admin``, and (unless ``settings.worker`` is off) starts the worker with the
app's lifespan and wakes it when a commit queued deliveries.
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


def install(app, repo, settings, config: SyncConfig | None = None):
    from ..api.admin import router as admin_router
    from ..api.lifespan import run_with_app

    rule, worker = setup(repo, settings, config)
    app.state.sync_worker = worker
    app.state.sync_config = worker.config
    app.include_router(admin_router(repo, worker))
    if settings.worker:
        written = [rule.rows_written]

        def wake_on_new_rows(_stored) -> None:
            # only a commit that queued deliveries wakes the worker (an ingest of
            # thousands of unrouted resources must not make it poll after each one)
            if rule.rows_written != written[0]:
                written[0] = rule.rows_written
                worker.wake()
        repo.after_commit.append(wake_on_new_rows)
        run_with_app(app, start=worker.start, stop=worker.stop)
    return worker


__all__ = ["SyncConfig", "install", "load", "setup"]
