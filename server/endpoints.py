"""The plain HTTP endpoints beside /graphql: liveness, readiness, metrics and export downloads."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from datagraph.metrics import CONTENT_TYPE
from resolvers.context import Resources
from server.resources import WebState

__all__ = ["download_export", "healthz", "metrics", "readyz"]

log = logging.getLogger("datagraph")
_EXPORT_TYPES = {
    "CSV": "text/csv; charset=utf-8",
    "PARQUET": "application/vnd.apache.parquet",
    "XLSX": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "JSON": "application/json",
}
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,64}$")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _download_name(asked: str | None, filename: str) -> str:
    """The file name a download is saved under: `?name=` (the web page names an export after what
    it holds, "titanic-filtered-by-class"), reduced to letters, digits, dots, dashes and
    underscores, with the export's own extension; else the export's own name."""
    stem = _NAME_UNSAFE.sub("-", asked or "").strip(".-")[:100]
    return f"{stem}.{filename.rsplit('.', 1)[-1]}" if stem else filename


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> Response:
    res: Resources = request.app.state.resources
    return Response(res.metrics.exposition(), media_type=CONTENT_TYPE)


async def readyz(request: Request) -> Response:
    """Whether the server can answer: its metadata store, result cache and worker pool; and how every
    source is (a source that is down does not make the server unready: the others keep working)."""
    res: Resources = request.app.state.resources
    web: WebState = request.app.state.web
    limiter = web.limiter
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
        "status": "ok" if metadata == "ok" and pool.ready else "unavailable",
        "metadata": metadata,
        "cache": {
            "backend": res.cache.backend,
            "status": await res.cache.check(),
            "hits": cache.hits,
            "misses": cache.misses,
        },
        "rateLimit": None if limiter is None else {"limit": limiter.describe(), "backend": limiter.backend},
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
    filename = _download_name(request.query_params.get("name"), record.filename)
    return FileResponse(path, media_type=_EXPORT_TYPES.get(record.format), filename=filename)
