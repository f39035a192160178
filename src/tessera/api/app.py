"""The ASGI application: OAuth authorization server and management API."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from tessera import __version__
from tessera.api import errors
from tessera.api.middleware import (
    BodyLimitMiddleware,
    InputGuardMiddleware,
    Lane,
    RequestIDMiddleware,
)
from tessera.api.routers import access, audit, authz, authzen, identities, keys, monitor, oauth
from tessera.api.routers import ca as ca_router
from tessera.api.routers import federation as federation_router
from tessera.api.routers import secrets as secrets_router
from tessera.config import Settings
from tessera.container import Services, build
from tessera.db import migrate
from tessera.jobs import Job, JobRunner, exclusive_job
from tessera.watch import watch_jobs

log = logging.getLogger("tessera.api")


class NotMigrated(RuntimeError):
    """The database schema is missing or behind this version of Tessera."""


def check_ready(services: Services) -> None:
    missing = migrate.pending(services.engine)
    if missing:
        raise NotMigrated(
            f"the database at {services.engine.url.render_as_string(hide_password=True)} is not "
            "migrated to this version of Tessera; run `tessera init` (or `tessera db upgrade`) "
            "first")


def default_jobs(services: Services) -> list[Job]:
    def purge_jtis() -> None:
        with services.sessions() as session:
            services.tokens.purge_expired(session)
            session.commit()

    def purge_token_state() -> None:
        with services.sessions() as session:
            services.lifecycle.purge(session)
            session.commit()

    def rotate_keys() -> None:
        with services.sessions() as session:
            done = services.key_rotation.tick(session)
            session.commit()
        if done:
            services.keys.invalidate()

    return [Job("purge-used-jtis", 60.0, purge_jtis),
            Job("purge-token-state", 300.0, purge_token_state),
            Job("rotate-signing-keys", 60.0, rotate_keys), *access_jobs(services),
            *watch_jobs(services)]


def access_jobs(services: Services) -> list[Job]:
    """JIT access, approvals, webhooks and secret leases: each on one node at a time."""

    def expire_access() -> None:
        with services.sessions() as session:
            services.access.expire_undecided(session)
            services.approvals.expire_due(session)
            services.identities.purge_expired_grants(session)
            session.commit()

    def end_leases() -> None:
        services.secrets.end_all_due(services.sessions)

    def deliver_webhooks() -> None:
        services.webhooks.deliver_due(services.sessions)

    def exclusive(name: str, interval: float, run: Callable[[], object]) -> Job:
        return exclusive_job(name, interval, run, engine=services.engine,
                             sessions=services.sessions, clock=services.clock,
                             node_id=services.settings.node_id)

    return [exclusive("access-expiry", 30.0, expire_access),
            exclusive("secret-leases", 15.0, end_leases),
            exclusive("webhook-deliveries", 10.0, deliver_webhooks)]


class TesseraAPI(FastAPI):
    """FastAPI with lanes: `lanes[(method, path)]` serves that route ahead of the middleware
    stack (see `tessera.api.middleware.Lane`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lanes: dict[tuple[str, str], ASGIApp] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            lane = self.lanes.get((scope["method"], scope["path"]))
            if lane is not None:
                scope["app"] = self
                await lane(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _release_stream(services: Services) -> None:
    """This worker stops: another takes the monitor's stream at its next pass."""
    if services.monitor is None:
        return
    try:
        with services.sessions() as session:
            services.monitor.release(session)
            session.commit()
    except Exception:  # the database is gone: the lease runs out by itself
        log.warning("could not release the monitor's stream", exc_info=True)


def create_app(settings: Settings | None = None, services: Services | None = None, *,
               run_jobs: bool = True) -> FastAPI:
    """Build the app; with no arguments, settings come from the TESSERA_* environment."""
    owned = services is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = app.state.services
        check_ready(svc)
        runner = JobRunner(default_jobs(svc) if run_jobs else [])
        runner.start()
        try:
            yield
        finally:
            runner.stop()
            if run_jobs:
                _release_stream(svc)
            if owned:
                svc.close()

    if services is None:
        services = build(settings or Settings())
    telemetry = services.settings.http_telemetry
    app = TesseraAPI(title="Tessera", version=__version__, lifespan=lifespan,
                  description="Identity and access control plane for AI systems.",
                  telemetry={"tracing": telemetry, "metrics": telemetry, "logs": telemetry})
    app.state.services = services
    errors.install(app)
    app.include_router(oauth.router)
    # Routes are matched in order: the two hot paths (tokens, AuthZEN) come first.
    app.include_router(authzen.router)
    app.include_router(identities.router)
    app.include_router(audit.router)
    for router in access.routers:
        app.include_router(router)
    app.include_router(secrets_router.router)
    app.include_router(authz.router)
    authzen.install(app)
    app.include_router(ca_router.router)
    app.include_router(federation_router.router)
    app.include_router(monitor.router)
    app.include_router(keys.router)

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    # Innermost of the three: the body limit applies before the guard buffers a body.
    app.add_middleware(InputGuardMiddleware)
    app.add_middleware(BodyLimitMiddleware, limit=services.settings.max_body_bytes)
    app.add_middleware(RequestIDMiddleware)
    if not telemetry:  # a lane would bypass FastAPI's per-request spans and metrics
        app.lanes[("POST", "/oauth2/token")] = Lane(oauth.token_parts,
                                                     limit=services.settings.max_body_bytes)
    return app
