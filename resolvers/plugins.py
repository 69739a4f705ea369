"""Fetching a plugin into a dataset, and refreshing plugin datasets on their schedule.

The registry of plugin files (the folder, watched) is `connectors.registry`.

`fetch_plugin` runs the plugin in a worker under `plugin_timeout_s` and the worker memory cap.
The same plugin with the same parameters always lands in the same dataset: the first fetch makes
it, each later one adds a version, unless the upstream answered "not modified" or the data is the
same as the current version's, in which case the version stays. A plugin's `refresh_s` is the
default schedule of its datasets (`refresh_defaults`), run by the one scheduler
(`resolvers.freshness`) with the schedules set by setSchedule.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path
from typing import Any

from connectors.http import HttpSettings, HttpStats
from connectors.plugins import (
    PluginInfo,
    PluginLimits,
    PluginRun,
    plugin_timeout_message,
    run_plugin,
)  # fmt: skip
from datagraph import jsonutil
from datagraph.errors import BadInput, DatagraphError, NotFound
from datagraph.settings import Settings
from resolvers.context import Context, Resources
from resolvers.datasets import Produced, dataset_job, display_name
from storage import DatasetRecord

__all__ = ["PLUGINS", "fetch_plugin", "http_settings", "refresh_defaults"]

PLUGINS = "plugins"  # the source id of datasets plugins make
log = logging.getLogger("datagraph.plugins")


def http_settings(settings: Settings) -> HttpSettings:
    return HttpSettings(
        connect_timeout_s=settings.http_connect_timeout_s,
        read_timeout_s=settings.http_read_timeout_s,
        attempts=settings.http_attempts,
        backoff_s=settings.http_backoff_s,
        backoff_cap_s=settings.http_backoff_cap_s,
        retry_after_max_s=settings.http_retry_after_max_s,
        max_response_bytes=int(settings.http_max_response_mb * 1024 * 1024),
        blocked_networks=tuple(settings.http_blocked_networks.split(",")),  # checked by the client
    )


def refresh_defaults(ctx: Context) -> dict[str, int]:
    """The schedule each plugin dataset has from its plugin's `refresh_s` (dataset id: seconds), for
    the plugins this process has loaded; `resolvers.freshness` runs them."""
    available = ctx.resources.plugins.available()
    if not any(info.refresh_s for _, info in available.values()):
        return {}  # nothing asks to be refreshed: no need to read the datasets
    found: dict[str, int] = {}
    for record in ctx.resources.metadata.list_datasets(source_id=PLUGINS):
        entry = available.get(str(record.origin.get("plugin", "")))
        if entry is not None and entry[1].refresh_s:
            found[record.id] = max(1, int(entry[1].refresh_s))
    return found


def _key(info: PluginInfo, params: dict[str, Any] | None) -> str:
    """What identifies a plugin's dataset: the plugin and its parameters, defaults filled in (so
    leaving one out and spelling out its default are the same fetch), canonically."""
    given = dict(params or {})
    full: dict[str, Any] = {}
    for param in info.params:
        value = given.pop(param["name"], None)
        value = param["default"] if value is None else value
        if param["type"] == "number" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # 1 and 1.0 are the same parameter value
        elif param["type"] == "integer" and isinstance(value, float) and value.is_integer():
            value = int(value)
        full[param["name"]] = value
    return jsonutil.canonical_hash({"plugin": info.name, "params": {**full, **given}})


_SECRETISH = re.compile(r"token|secret|password|passwd|api[-_]?key|auth|cookie", re.IGNORECASE)


def _redacted(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters as jobs show them: header values and anything named like a secret hidden."""
    shown: dict[str, Any] = {}
    for name, value in params.items():
        if name == "headers" and isinstance(value, dict):
            shown[name] = dict.fromkeys(value, "***")
        elif _SECRETISH.search(name):
            shown[name] = "***"
        else:
            shown[name] = value
    return shown


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _age_s(record: DatasetRecord) -> float:
    """Seconds since the plugin last fetched this dataset (changed or not)."""
    fetched = record.origin.get("fetched_at")
    at = dt.datetime.fromisoformat(fetched) if isinstance(fetched, str) else record.updated_at
    return (dt.datetime.now(dt.UTC) - at).total_seconds()


def _find(ctx: Context, key: str) -> DatasetRecord | None:
    found = [r for r in ctx.resources.metadata.list_datasets(source_id=PLUGINS) if r.origin.get("key") == key]
    return found[0] if found else None


async def fetch_plugin(
    ctx: Context,
    *,
    plugin: str,
    params: dict[str, Any] | None,
    name: str | None,
    job_id: str,
    into: DatasetRecord | None = None,
) -> DatasetRecord:
    """Run a plugin's fetch and store the result: a new dataset, or a new version of the dataset the
    same plugin and parameters made before (the same version when nothing changed). With `into` (a
    refresh), the dataset to refresh, whatever the plugin's parameters have become since."""
    res = ctx.resources
    registry = res.plugins
    if params is not None and not isinstance(params, dict):
        raise BadInput("params must be an object of parameter names and values.")
    entry = registry.available().get(plugin)
    if entry is None:
        broken = registry.files.get(plugin)
        if broken is not None and broken.reason:
            raise BadInput(f'The plugin "{plugin}" is unavailable: {broken.reason}')
        names = ", ".join(sorted(registry.available())) or "none"
        raise NotFound(f'There is no plugin "{plugin[:80]}"; available: {names}.')
    file, info = entry
    key = _key(info, params)
    async with registry.locks.hold(str(into.origin.get("key", key)) if into is not None else key):
        existing = ctx.resources.metadata.get_dataset(into.id) if into is not None else _find(ctx, key)
        if into is not None and existing is None:
            raise NotFound(f'There is no dataset "{into.id}" any more (it was deleted).')
        if existing is not None and info.cache_ttl_s and _age_s(existing) < info.cache_ttl_s:
            return existing  # fetched moments ago: the plugin asks not to call its upstream again yet
        validators = dict(existing.origin.get("validators") or {}) if existing else {}
        limits = PluginLimits(
            max_rows=ctx.settings.max_rows,
            max_columns=ctx.settings.max_columns,
            deadline_s=ctx.settings.plugin_timeout_s,
            http=http_settings(ctx.settings),
        )
        steps = {"plugin": plugin, "version": info.version, "params": _redacted(params or {})}
        # The origin keeps the parameters as given (a refresh needs them); jobs show them redacted.
        origin = {"key": existing.origin.get("key", key) if into and existing else key, **steps, "params": params or {}}
        origin["fetched_at"] = _now_iso()
        if into is not None:
            steps["refresh"] = into.id

        async def produce(parquet: Path) -> Produced | None:
            try:
                run: PluginRun = await res.executor.run(
                    run_plugin, file.stem, file.code, plugin, params, parquet, limits, validators,
                    deadline_s=ctx.settings.plugin_timeout_s + 2,
                    timeout_message=plugin_timeout_message(plugin, ctx.settings.plugin_timeout_s),
                )  # fmt: skip
            except DatagraphError as exc:
                _count(res, plugin, exc.code, getattr(exc, "http_stats", HttpStats()))  # failed fetches count too
                raise
            _count(res, plugin, "ok", run.stats)
            if run.not_modified and existing is None:
                raise BadInput(f'The upstream of plugin "{plugin}" answered 304 Not Modified to a first fetch.')
            if existing is not None and (run.not_modified or run.data_hash == existing.origin.get("data_hash")):
                return None  # the version stays
            origin.update(data_hash=run.data_hash, validators=run.validators)
            return Produced(run.rows, run.rows, run.columns)

        title = display_name(name or plugin)
        return await dataset_job(
            ctx, job_id=job_id, kind="fetchPlugin", steps=steps, title=title, source_id=PLUGINS,
            origin=origin, produce=produce, into=existing,
        )  # fmt: skip


def _count(res: Resources, plugin: str, outcome: str, stats: HttpStats) -> None:
    """A fetch's outcome and its upstream requests, in the registry's totals and the metrics."""
    res.plugins.http.merge(stats)
    metrics = res.metrics
    metrics.plugin_fetches.labels(plugin, outcome).inc()
    for code, count in stats.status.items():
        metrics.upstream_responses.labels(str(code)).inc(count)
    for code, count in stats.retried.items():
        metrics.upstream_retries.labels(str(code) if code else "none").inc(count)
