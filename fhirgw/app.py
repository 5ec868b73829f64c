"""create_app(settings): wires the rooms into a FastAPI application; nothing else."""
from __future__ import annotations

import logging

from fastapi import FastAPI

from . import __version__
from .api import openapi
from .api.auth import Auth
from .api.http import FhirApp, install
from .api.lifespan import run_with_app
from .api.logging import AccessLog
from .config import Settings
from .operations.catalog import publish as publish_operations
from .operations.reindex import Reindexer
from .rest import Router
from .store.db import WalCheckpointer, make_engine, migrate
from .store.repository import Repository
from .security import SecurityLabels
from .security.access import PartnerWrites
from .security.audit import AuditTrail
from .security.audit import install_rule as install_audit_rule
from .workflows import rules as workflow_rules


log = logging.getLogger("fhirgw")


def _default_search_engine(settings: Settings):
    from .search import SearchEngine

    # absolute references to this server index as local Type/id
    return SearchEngine(base_urls=[settings.base_url] if settings.base_url else [])


def _install_sync(app: FastAPI, repo: Repository, settings: Settings):
    """Sync (fhirgw/sync): the outbox routing rule, the /admin API and, unless
    ``settings.worker`` is off, the delivery/poll worker, run with the app and woken when a
    commit queued deliveries."""
    from .api.admin import router as admin_router
    from .sync import setup

    rule, worker = setup(repo, settings)
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


def create_app(settings: Settings | None = None, search_engine=None) -> FhirApp:
    """The gateway as an ASGI app; ``search_engine`` defaults to the official R4 one."""
    from .search.custom import CustomParameters
    from .search.custom import check as check_search_parameter
    from .validation import ProfileValidator
    from .validation.gate import StoredDefinitions, WriteValidator, parse_required_profiles
    from .validation.parallel import ValidationPool

    settings = settings or Settings()
    engine = make_engine(settings.database_url, pool_size=settings.pool_size)
    if settings.migrate:
        migrate(engine)
    search = search_engine or _default_search_engine(settings)
    profiles = ProfileValidator()
    validator = WriteValidator(profiles, parse_required_profiles(settings.required_profiles),
                               checks={"SearchParameter": [check_search_parameter]})
    repo = Repository(engine, search, validator=validator)
    repo.rules.extend(workflow_rules(settings))
    repo.rules.append(SecurityLabels())  # 42 CFR Part 2 / behavioral-health labels on write
    repo.rules.append(PartnerWrites())   # what a partner client may change
    definitions = StoredDefinitions(profiles, engine)
    definitions.load()
    repo.after_commit.append(definitions.on_commit)

    # stored SearchParameters: loaded now, live on write, reindexed in the background
    custom = CustomParameters(search.registry, engine)
    custom.load()
    reindexer = Reindexer(repo)
    custom.start_reindex = lambda url, types: reindexer.start(
        types, on_done=lambda job: custom.reindexed(url))
    repo.after_commit.append(custom.on_commit)

    publish_operations(repo)
    router = Router(repo, settings, custom_params=custom, reindexer=reindexer,
                    watchers=[custom, definitions])
    app = FhirApp(title="fhirgw", version=__version__,
                  description="FHIR R4 gateway for virtual mental-health IOPs. "
                              "The FHIR API lives under /fhir.")
    app.state.settings = settings
    app.state.router = router
    auth = Auth(settings, engine)
    app.state.auth = auth
    if not auth.enabled:
        log.warning("FHIRGW_AUTH=disabled: every request is treated as a fully trusted local "
                    "developer. Never use this outside local development.")
    install(app, router, auth)
    openapi.install(app, search.registry)
    app.add_middleware(AccessLog)
    _install_sync(app, repo, settings)
    # ---- audit (fhirgw/security/audit): writes in their transaction (the last rule),
    # reads, searches and refusals through a batched background writer
    install_audit_rule(repo)
    trail = AuditTrail(repo)
    router.audit = trail
    auth.audit = trail
    app.state.audit = trail
    if getattr(app.state, "sync_worker", None) is not None:
        app.state.sync_worker.audit = trail   # deliveries are disclosures
    run_with_app(app, stop=trail.close)
    checkpointer = WalCheckpointer(engine)   # SQLite: WAL checkpoints off the request path
    run_with_app(app, start=checkpointer.start, stop=checkpointer.stop)
    # the R4B base validation of large transactions in worker processes (validation/
    # parallel.py), started on first use (or with the app: ``serve``), stopped with the app
    pool = ValidationPool(settings.validation_workers, settings.parallel_validation_min)
    router.validation_pool = pool
    app.state.validation_pool = pool
    run_with_app(app, start=pool.start if settings.validation_prestart else None,
                 stop=pool.close)
    return app
