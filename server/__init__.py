"""The top floor: the ASGI app factory, its lifespan and resources, the GraphQL view, middleware,
endpoints (/healthz, /readyz, /metrics, exports, the web page), API keys, rate limits, request
observation and the `datagraph` command.

Layers, top to bottom (`make lint` checks them): server -> gql -> resolvers -> connectors ->
engine -> storage -> datagraph. Web state (the key ring, the limiter) lives on the Starlette app's
state; what the layers below need from here (a request's job count) is handed down as a callback.

This file imports nothing: `datagraph serve` must set PROMETHEUS_MULTIPROC_DIR before anything
imports prometheus_client, so the app (`server.app.create_app`) is loaded only when needed.
"""

__all__: list[str] = []
