"""The web page at `/`: a single page of plain ES modules from `static/`, with no build step."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

__all__ = ["PAGE_POLICY", "web_routes"]

STATIC = Path(__file__).resolve().parent.parent / "static"

# The page and everything it runs come from this server: no CDN, no other host (scripts, styles,
# images, fetches and the websocket: CSP3's 'self' covers ws: and wss: to the same host). Vega runs
# with its expression interpreter, so no 'unsafe-eval'; vega-embed and vega-tooltip add <style>
# elements, hence 'unsafe-inline' for styles only.
PAGE_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


async def home(request: Request) -> Response:
    page = STATIC / "index.html"
    if not page.is_file():
        return RedirectResponse("/graphql")
    headers = {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": PAGE_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return FileResponse(page, headers=headers)


def web_routes() -> list[BaseRoute]:
    """Routes of the web page (the static files themselves are mounted at /static by the app)."""
    return [Route("/", home)]
