"""open_meteo: hourly weather for a place and a date range, from Open-Meteo's historical API
(https://open-meteo.com, free, no key). Give a known city or a latitude and longitude.

The API answers `{"hourly": {"time": [...], "temperature_2m": [...], ...}}`; each variable becomes
a column beside `time`. `base_url` points it at another Open-Meteo server (the tests use a local
one that replays a recorded answer).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl

from datagraph.plugin import DataSourcePlugin, Param

CITIES = {
    "lisbon": (38.72, -9.14), "porto": (41.15, -8.61), "madrid": (40.42, -3.70), "paris": (48.85, 2.35),
    "london": (51.51, -0.13), "berlin": (52.52, 13.41), "new york": (40.71, -74.01), "tokyo": (35.68, 139.69),
}  # fmt: skip


class OpenMeteo(DataSourcePlugin):
    name = "open_meteo"
    version = "1.0.0"
    description = "Hourly weather (temperature, precipitation, ...) for a city or coordinates and a date range."
    params = (
        Param(
            "city",
            str,
            required=False,
            description=f"One of: {', '.join(sorted(CITIES))}; or give latitude and longitude.",
        ),
        Param("latitude", float, required=False, min=-90, max=90),
        Param("longitude", float, required=False, min=-180, max=180),
        Param("start_date", dt.date, description="First day, e.g. 2025-01-01."),
        Param("end_date", dt.date, description="Last day (at most 366 days after start_date)."),
        Param(
            "hourly",
            str,
            required=False,
            default="temperature_2m,precipitation",
            description="Comma-separated variables.",
        ),
        Param("base_url", str, required=False, default="https://archive-api.open-meteo.com/v1/archive"),
    )

    async def fetch(self, params: dict[str, Any], http: Any) -> pl.DataFrame:
        if params["city"] is not None:
            if params["city"].lower() not in CITIES:
                raise ValueError(f"unknown city {params['city']!r}; give latitude and longitude instead")
            lat, lon = CITIES[params["city"].lower()]
        elif params["latitude"] is not None and params["longitude"] is not None:
            lat, lon = params["latitude"], params["longitude"]
        else:
            raise ValueError("give a city, or both latitude and longitude")
        start, end = params["start_date"], params["end_date"]
        if end < start or (end - start).days > 366:
            raise ValueError("end_date must be on or after start_date, and at most 366 days later")
        query = {
            "latitude": lat, "longitude": lon, "start_date": start.isoformat(), "end_date": end.isoformat(),
            "hourly": params["hourly"], "timezone": "UTC",
        }  # fmt: skip
        body = await http.get_json(params["base_url"], params=query)
        hourly = body.get("hourly") if isinstance(body, dict) else None
        if not isinstance(hourly, dict) or "time" not in hourly:
            raise ValueError("the answer has no hourly data")
        frame = pl.DataFrame(hourly, strict=False)
        numbers = [c for c in frame.columns if c != "time"]
        return frame.with_columns(
            pl.col("time").str.to_datetime("%Y-%m-%dT%H:%M"), pl.col(numbers).cast(pl.Float64)
        ).with_columns(pl.lit(lat).alias("latitude"), pl.lit(lon).alias("longitude"))
