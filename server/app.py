"""The ASGI application factory: routes, middleware, and the lifespan that starts the resources."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from datagraph.metrics import Metrics
from datagraph.settings import Settings, keys_required, production_mode
from server.answers import AnswerCache
from server.auth import RequireKey
from server.endpoints import download_export, healthz, metrics, readyz
from server.middleware import CancelOnDisconnect, GuardRequests, HostGuard
from server.observe import Observe
from server.persisted import PersistedDocuments
from server.ratelimit import RateLimit
from server.resources import running
from server.sse import GraphQLStream
from server.tracing import TraceRequests
from server.view import GraphQLView, origins
from server.web import STATIC, web_routes

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI application; resources are created when its lifespan starts."""
    settings = settings or Settings()
    view = GraphQLView(settings)
    app_metrics = Metrics(settings.metrics_dir)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with running(settings, app_metrics) as (res, web):
            app.state.resources = res
            app.state.web = web
            view.keys = web.keys
            view.documents = web.documents
            gc.collect()
            gc.freeze()  # long-lived start-up objects out of the collector's way (p99 spikes, PERFORMANCE.md)
            yield

    routes = [
        *web_routes(),
        Route("/graphql", view, methods=["GET", "POST"]),
        # graphql-sse (server/sse.py); a Route matches its whole path, so /graphql does not take this one.
        Route("/graphql/stream", GraphQLStream(view), methods=["GET", "POST"]),
        WebSocketRoute("/graphql", view),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/exports/{token}", download_export),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(CancelOnDisconnect)
    if settings.answer_cache_mb > 0:  # inside every gate: a hit passes them all first
        app.add_middleware(
            AnswerCache,
            max_bytes=settings.answer_cache_mb * 1024 * 1024,
            schema=view.schema._schema,  # type: ignore[attr-defined]
            get_queries=not production_mode(settings),
            metrics=app_metrics,
        )
    # Persisted documents become plain operations before the answer cache sees them (inside the rate
    # limit: a registration spends budget like any request).
    app.add_middleware(PersistedDocuments, settings=settings, schema=view.schema._schema)  # type: ignore[attr-defined]
    if settings.rate_limit:
        app.add_middleware(RateLimit)
    if keys_required(settings):
        app.add_middleware(RequireKey)
    app.add_middleware(
        GuardRequests,
        json_limit=settings.max_request_kb * 1024,
        multipart_limit=settings.max_upload_bytes + 64 * 1024,
        settings=settings,
    )
    if not keys_required(settings):  # with keys on, the key is the guard
        hosts = frozenset(h.strip().lower() for h in settings.allowed_hosts.split(",") if h.strip())
        app.add_middleware(HostGuard, allowed=hosts)
    if settings.cors_origins:  # outside the key check: a preflight carries no key
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["content-type", "authorization", "x-api-key", "apollo-require-preflight", "x-request-id"],
            expose_headers=["x-request-id", "retry-after"],
            max_age=600,
        )
    app.add_middleware(Observe, metrics=app_metrics)
    if settings.otel_endpoint:  # outermost: the request's span is the parent of all it does
        app.add_middleware(TraceRequests)
    return app
