"""http_json: any JSON API. The records are found at a dotted path in the answer; nested fields
become columns named with dots (`address.city`).

Header values may name an environment variable of the server as `${DATAGRAPH_PLUGIN_X}`. Only
variables with that prefix can be read, and only for the hosts listed in `DATAGRAPH_PLUGIN_X_HOSTS`
(comma-separated), so a request cannot send a secret to a server of its choosing. The client drops
the headers on a redirect to another host.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

import polars as pl

from datagraph.plugin import DataSourcePlugin, Param

_SECRET = re.compile(r"\$\{(DATAGRAPH_PLUGIN_[A-Z0-9_]+)\}")


def records_at(body: Any, path: str) -> list[Any]:
    """The list at `path` ("data.items"; "" for the answer itself)."""
    node = body
    for part in [p for p in path.split(".") if p]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise ValueError(f'records_path "{path}" does not lead to a list: no "{part}" in the answer')
    if not isinstance(node, list):
        raise ValueError(f'records_path "{path}" leads to {type(node).__name__}, not a list of records')
    return node


def with_secrets(headers: dict[str, Any] | None, url: str) -> dict[str, str]:
    host = (urlsplit(url).hostname or "").lower()

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        hosts = {h.strip().lower() for h in os.environ.get(f"{name}_HOSTS", "").split(",") if h.strip()}
        if host not in hosts:
            raise ValueError(f"the secret {name} may only be sent to the hosts listed in {name}_HOSTS")
        if name not in os.environ:
            raise ValueError(f"the environment variable {name} is not set on the server")
        return os.environ[name]

    return {str(k): _SECRET.sub(value, str(v)) for k, v in (headers or {}).items()}


class HttpJson(DataSourcePlugin):
    name = "http_json"
    version = "1.0.0"
    description = "Any JSON API: the list of records at records_path, nested fields flattened into columns."
    params = (
        Param("url", str, description="The API's URL (http or https)."),
        Param(
            "records_path", str, required=False, default="", description="Dotted path to the records, e.g. data.items."
        ),
        Param("params", dict, required=False, description="Query-string parameters."),
        Param(
            "headers", dict, required=False, description="Request headers; ${DATAGRAPH_PLUGIN_X} reads a server secret."
        ),
    )

    async def fetch(self, params: dict[str, Any], http: Any) -> pl.DataFrame:
        body = await http.get_json(
            params["url"], params=params["params"], headers=with_secrets(params["headers"], params["url"])
        )
        records = records_at(body, params["records_path"])
        if not records:
            raise ValueError("the answer holds no records")
        if not all(isinstance(r, dict) for r in records):
            return pl.DataFrame({"value": records}, strict=False)
        return pl.json_normalize(records, separator=".", infer_schema_length=None)
