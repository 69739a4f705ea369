"""The Starlette application: routes, the GraphQL view, body limits, and the lifespan that owns resources."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cross_web import AsyncHTTPRequestAdapter, HTTPException
from graphql import GraphQLError, OperationType, get_operation_ast, parse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types import ExecutionResult
from strawberry.types.unset import UnsetType

from connectors.sources import configured_sources
from datagraph import jsonutil
from datagraph.auth import (
    NO_KEYS_MESSAGE,
    UNAUTHENTICATED_MESSAGE,
    KeyRing,
    RequireKey,
    graphiql_served,
    keys_required,
    params_key,
    presented_key,
    production_mode,
)
from datagraph.context import Context, Resources
from datagraph.errors import error_body, send_error
from datagraph.events import EventBus
from datagraph.metrics import CONTENT_TYPE, Metrics
from datagraph.observe import Observe
from datagraph.ratelimit import Limiter, RateLimit
from datagraph.settings import Settings
from datagraph.web import STATIC, web_routes
from engine.runtime import Executor, ResultCache
from gql.schema import build_schema
from resolvers.jobs import JobTracker
from resolvers.plugins import PluginRegistry, refresh_forever
from resolvers.sources import DatabaseSources
from storage import DataDir, MetadataStore

__all__ = ["create_app"]

log = logging.getLogger("datagraph")
_EXPORT_TYPES = {
    "CSV": "text/csv; charset=utf-8",
    "PARQUET": "application/vnd.apache.parquet",
    "XLSX": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "JSON": "application/json",
}
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,64}$")
# A header a browser cannot send cross-site without a CORS preflight (CVE-2024-47082).
_PREFLIGHT_HEADERS = (b"apollo-require-preflight", b"x-api-key", b"authorization")


class _BodyTooLarge(Exception):
    pass


class GuardRequests:
    """Bound request bodies while they stream (413 with a message naming the limit), and refuse
    multipart requests that a browser could send cross-site."""

    def __init__(self, app: ASGIApp, *, json_limit: int, multipart_limit: int, settings: Settings) -> None:
        self.app = app
        self.json_limit = json_limit
        self.multipart_limit = multipart_limit
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        multipart = headers.get(b"content-type", b"").lower().startswith(b"multipart/")
        if multipart and not any(h in headers for h in _PREFLIGHT_HEADERS):
            message = "Uploads must carry an 'Apollo-Require-Preflight: true' (or API key) header."
            await send_error(send, 400, message, "BAD_INPUT")
            return
        limit = self.multipart_limit if multipart else self.json_limit
        what = (
            f"{self.settings.max_upload_mb:g} MiB upload limit (setting max_upload_mb)"
            if multipart
            else f"{self.settings.max_request_kb} KiB request limit (setting max_request_kb)"
        )
        message = f"The request is larger than the {what}."
        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            await send_error(send, 413, message, "TOO_LARGE")
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            await send_error(send, 413, message, "TOO_LARGE")


class CancelOnDisconnect:
    """Stop a request's work when its client goes away (RELIABILITY F12).

    Once the request body has been read, a disconnect before the response is complete cancels the
    handler; a job running in a worker process is killed with it, and nothing is cached.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body_read = asyncio.Event()
        responded = False

        async def tracked_receive() -> Message:
            msg = await receive()
            if msg["type"] == "http.disconnect" or not msg.get("more_body", False):
                body_read.set()
            return msg

        async def tracked_send(msg: Message) -> None:
            nonlocal responded
            await send(msg)
            if msg["type"] == "http.response.body" and not msg.get("more_body", False):
                responded = True

        async def client_gone() -> None:
            await body_read.wait()
            while (await receive())["type"] != "http.disconnect":
                pass

        handler = asyncio.ensure_future(self.app(scope, tracked_receive, tracked_send))
        watcher = asyncio.ensure_future(client_gone())
        try:
            await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            handler.cancel()
            watcher.cancel()
            raise
        if handler.done():
            watcher.cancel()
            handler.result()
            return
        if responded:  # the disconnect that follows a complete response
            await handler
            return
        log.info("client went away before its answer; cancelling %s", scope.get("path"))
        handler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await handler


class GraphQLView(GraphQL[Context, None]):
    """Strawberry's ASGI view with orjson, a local GraphiQL page and a query-length limit."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(
            build_schema(settings),
            graphql_ide="graphiql" if graphiql_served(settings) else None,
            multipart_uploads_enabled=True,
            # GET needs no preflight: in production, queries come by POST only (mutations always do).
            allow_queries_via_get=not production_mode(settings),
            subscription_protocols=[GRAPHQL_TRANSPORT_WS_PROTOCOL],
            connection_init_wait_timeout=dt.timedelta(seconds=settings.ws_init_timeout_s),
            max_subscriptions_per_connection=settings.ws_max_subscriptions,
            # Browsers on other origins may not subscribe (with the user's cookies) unless listed;
            # clients that send no Origin (scripts) and same-origin pages always may.
            allowed_origins=_origins(settings.ws_allowed_origins) + _origins(settings.cors_origins),
        )
        self.settings = settings
        self.keys_required = keys_required(settings)

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        header_key = presented_key(request.headers) if isinstance(request, WebSocket) else None
        return Context(
            resources=request.app.state.resources, base_url=str(request.base_url).rstrip("/"), header_key=header_key
        )

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        if self.keys_required:
            key = params_key(context.connection_params) or context.header_key
            if context.resources.keys.check(key) is None:
                raise ConnectionRejectionError({"message": UNAUTHENTICATED_MESSAGE, "code": "UNAUTHENTICATED"})
        return UnsetType()  # acknowledge with no payload

    def encode_json(self, data: object) -> str:
        # Text, not bytes: over a websocket, bytes go out as binary frames, which browser clients
        # of graphql-transport-ws (a Blob in event.data) cannot read.
        return jsonutil.dumps(data).decode("utf-8")

    async def process_result(self, request: Request, result: ExecutionResult) -> GraphQLHTTPResponse:
        """At most `graphql_max_errors` errors in an answer (a query with 10,000 bad directives must not
        make the server write 10,000 errors); the rest are counted."""
        answer = await super().process_result(request, result)
        errors, limit = answer.get("errors"), self.settings.graphql_max_errors
        if errors and len(errors) > limit:
            more = {"message": f"{len(errors) - limit} more errors not shown (setting graphql_max_errors)."}
            answer["errors"] = [*errors[:limit], more]
        return answer

    async def render_graphql_ide(self, request: Request) -> HTMLResponse:
        return HTMLResponse((STATIC / "graphiql.html").read_text("utf-8"))

    # One override for both overloads (HTTP and websocket requests) of the base class's `run`.
    async def run(self, request: Request | WebSocket, **kwargs: Any) -> Any:  # type: ignore[override]
        # Strawberry answers its HTTP refusals as plain text; clients parse JSON errors everywhere.
        try:
            return await super().run(request, **kwargs)
        except (HTTPException, StarletteHTTPException) as exc:  # the latter: Starlette's multipart parser
            code = "TOO_LARGE" if exc.status_code == 413 else "BAD_INPUT"
            reason = exc.reason if isinstance(exc, HTTPException) else exc.detail
            return Response(error_body(reason, code), status_code=exc.status_code, media_type="application/json")
        finally:
            if isinstance(request, Request):
                await request.close()  # every uploaded part's temporary file, used or not

    async def parse_http_body(self, request: AsyncHTTPRequestAdapter) -> GraphQLRequestData | list[GraphQLRequestData]:
        data = await super().parse_http_body(request)
        for item in data if isinstance(data, list) else [data]:
            if item.query and len(item.query) > self.settings.max_query_chars:
                raise HTTPException(
                    413,
                    f"The query is longer than {self.settings.max_query_chars:,} characters (setting max_query_chars).",
                )
            if item.protocol == "http" and item.query and _asks_subscription(item.query, item.operation_name):
                raise HTTPException(
                    400,
                    "Subscriptions run over a websocket (graphql-transport-ws) at /graphql; send queries and"
                    " mutations over HTTP.",
                )
        return data


def _origins(listed: str) -> list[str]:
    return [o.strip() for o in listed.split(",") if o.strip()]


def _asks_subscription(query: str, operation_name: str | None) -> bool:
    """Whether the operation to run is a subscription (parsed only when the word is there at all)."""
    if "subscription" not in query:
        return False
    try:
        operation = get_operation_ast(parse(query), operation_name)
    except GraphQLError:
        return False  # validation answers it in the usual way
    return operation is not None and operation.operation == OperationType.SUBSCRIPTION


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> Response:
    res: Resources = request.app.state.resources
    return Response(res.metrics.exposition(), media_type=CONTENT_TYPE)


async def readyz(request: Request) -> Response:
    """Whether the server can answer: its metadata store, result cache and worker pool; and how every
    source is (a source that is down does not make the server unready: the others keep working)."""
    res: Resources = request.app.state.resources
    try:
        await asyncio.to_thread(res.metadata.ping)
        metadata = "ok"
    except Exception:
        log.exception("readyz: metadata store check failed")
        metadata = "unavailable"
    pool = res.executor.stats()
    cache = res.cache.stats
    checks = await asyncio.gather(*(res.databases.check(cfg) for cfg in res.databases.configs.values()))
    sources = {c.id: check.status for c, check in zip(res.databases.configs.values(), checks, strict=True)}
    sources.update({f"plugin:{name}": "OK" for name in res.plugins.available()})
    sources.update({f"plugin file:{stem}": "UNAVAILABLE" for stem, _ in res.plugins.unavailable()})
    body = {
        "status": "ok" if metadata == "ok" and pool.workers > 0 else "unavailable",
        "metadata": metadata,
        "cache": {
            "backend": res.cache.backend,
            "status": await res.cache.check(),
            "hits": cache.hits,
            "misses": cache.misses,
        },
        "rateLimit": None if res.limiter is None else {"limit": res.limiter.describe(), "backend": res.limiter.backend},
        "workers": {
            "workers": pool.workers,
            "busy": pool.busy,
            "queued": pool.queued,
            "jobs": pool.jobs,
            "killed": pool.killed,
            "crashed": pool.crashed,
        },
        "events": {"subscribers": res.events.subscribers, "published": res.events.published},
        "sources": sources,
        "plugins": {
            "available": len(res.plugins.available()),
            "unavailable": len(res.plugins.unavailable()),
            "http": {
                "requests": res.plugins.http.requests,
                "retries": res.plugins.http.retries,
                "blocked": res.plugins.http.blocked,
                "status": {str(k): v for k, v in sorted(res.plugins.http.status.items())},
            },
        },
    }
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)


async def download_export(request: Request) -> Response:
    res: Resources = request.app.state.resources
    token = request.path_params["token"]
    record = res.metadata.get_export(token) if _TOKEN.match(token) else None
    if record is None or record.expires_at < dt.datetime.now(dt.UTC):
        body = {"error": {"code": "NOT_FOUND", "message": "This export link is unknown or has expired; export again."}}
        return JSONResponse(body, status_code=404)
    path = res.files.export_file(record.token, record.filename.rsplit(".", 1)[-1])
    if not path.exists():
        return JSONResponse(
            {"error": {"code": "NOT_FOUND", "message": "This export's file is gone; export again."}}, 404
        )
    return FileResponse(path, media_type=_EXPORT_TYPES.get(record.format), filename=record.filename)


def _sweep_exports(res: Resources) -> None:
    """Expired exports, and dataset versions two or more behind that stopped being current a while ago."""
    res.files.sweep_versions({r.id: r.version for r in res.metadata.list_datasets()}, grace_s=300)
    for record in res.metadata.expired_exports():
        res.files.export_file(record.token, record.filename.rsplit(".", 1)[-1]).unlink(missing_ok=True)
        res.metadata.delete_export(record.token)


async def _sweep_forever(res: Resources, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.to_thread(_sweep_exports, res)
        except Exception:  # a failed sweep is retried next time; it must not stop the server
            log.exception("export sweep failed")


async def open_resources(settings: Settings, metrics: Metrics) -> Resources:
    """Create the data directory, metadata store, cache and worker pool; clear what a crash left behind."""
    files = DataDir(settings.data_dir)
    metadata = MetadataStore(settings.resolved_metadata_url)
    metadata.sweep_pending()
    metadata.sweep_jobs()
    records = metadata.list_datasets()
    files.sweep(
        {r.id: r.version for r in records},
        metadata.export_tokens(),
        kept_uploads={str(r.origin["stored_as"]) for r in records if r.origin.get("stored_as")},
    )
    executor = Executor(
        settings.workers, memory_mb=settings.worker_memory_mb, timeout_s=settings.timeout_s, metrics=metrics
    )
    await executor.start()
    cache = ResultCache(
        memory_bytes=settings.cache_memory_mb * 1024 * 1024,
        url=settings.cache_url,
        timeout_s=settings.cache_timeout_s,
        ttl_s=settings.cache_ttl_s,
        metrics=metrics,
    )
    databases = DatabaseSources(configured_sources(settings.sources))
    plugins = PluginRegistry(Path(settings.plugins) if settings.plugins else None)
    events = EventBus(
        settings.cache_url if settings.cache_url.startswith("redis") else "", timeout_s=settings.cache_timeout_s
    )
    await events.start()
    res = Resources(
        settings=settings, metadata=metadata, files=files, executor=executor, cache=cache, databases=databases,
        plugins=plugins, events=events, keys=KeyRing(metadata), jobs=JobTracker(events), metrics=metrics,
        limiter=Limiter(settings) if settings.rate_limit else None,
    )  # fmt: skip
    if keys_required(settings) and res.keys.count() == 0:
        await res.close()
        raise RuntimeError(NO_KEYS_MESSAGE)
    await plugins.scan(Context(res))
    _sweep_exports(res)
    return res


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI application; resources are created when its lifespan starts."""
    settings = settings or Settings()
    view = GraphQLView(settings)
    app_metrics = Metrics(settings.metrics_dir)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        res = await open_resources(settings, app_metrics)
        app.state.resources = res
        sweeper = asyncio.create_task(_sweep_forever(res, 60))
        watcher = asyncio.create_task(res.plugins.watch(Context(res)))
        refresher = asyncio.create_task(refresh_forever(Context(res)))
        gc.collect()
        gc.freeze()  # long-lived start-up objects out of the collector's way (p99 spikes, PERFORMANCE.md)
        try:
            yield
        finally:
            for task in (sweeper, watcher, refresher):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(watcher, refresher)
            await res.close()

    routes = [
        *web_routes(),
        Route("/graphql", view, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", view),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/exports/{token}", download_export),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(CancelOnDisconnect)
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
    if settings.cors_origins:  # outside the key check: a preflight carries no key
        app.add_middleware(
            CORSMiddleware,
            allow_origins=_origins(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["content-type", "authorization", "x-api-key", "apollo-require-preflight", "x-request-id"],
            expose_headers=["x-request-id", "retry-after"],
            max_age=600,
        )
    app.add_middleware(Observe, metrics=app_metrics)
    return app
