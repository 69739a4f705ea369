"""http_csv: a CSV or Parquet file at a URL (told apart by content, not by name)."""

from __future__ import annotations

import io
from typing import Any

import polars as pl

from datagraph.plugin import DataSourcePlugin, Param


class HttpCsv(DataSourcePlugin):
    name = "http_csv"
    version = "1.0.0"
    description = "A CSV or Parquet file at a URL."
    params = (Param("url", str, description="Where the file is (http or https)."),)

    async def fetch(self, params: dict[str, Any], http: Any) -> pl.DataFrame:
        body: bytes = await http.get_bytes(params["url"])
        if body[:4] == b"PAR1":
            return pl.read_parquet(io.BytesIO(body))
        return pl.read_csv(io.BytesIO(body), infer_schema_length=None, try_parse_dates=True)
