"""Plugins: loading plugin files, and running a plugin's fetch in a worker process.

Both run in worker processes, never in the server: a plugin file is someone's code, and its
import can hang, crash or eat memory like its fetch can; a worker is killed at its deadline and
capped in memory. `inspect_file` executes a file's text into a fresh module (a new name for each
version of the text, so nothing shared is ever reloaded) and describes the plugins it defines.
`run_plugin` does the same with the text the server's registry holds (so an edit swaps plugins
atomically), checks the parameters, calls `fetch` with the worker's HTTP client, checks what it
returned and writes it as Parquet.

Each worker keeps one event loop and one `HttpClient` (its pooled httpx client) for its life.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import io
import re
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from connectors.http import HttpClient, HttpSettings, HttpStats, NotModified
from datagraph.errors import BadInput, DatagraphError, Timeout, TooLarge
from datagraph.plugin import DTYPES, DataSourcePlugin, Param, ParamError, validate_params
from engine import ColumnInfo, column_infos, dtype_name

__all__ = ["PluginInfo", "PluginLimits", "PluginRun", "digest", "inspect_file", "plugin_timeout_message", "run_plugin"]

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_loaded: dict[str, dict[str, type[DataSourcePlugin]]] = {}  # digest -> the plugins that text defines
_runtime: tuple[asyncio.AbstractEventLoop, HttpClient] | None = None


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """What the API lists about a plugin: plain data, made in a worker and kept by the server."""

    name: str
    version: str
    description: str
    params: list[dict[str, Any]]
    schema: dict[str, str] | None
    refresh_s: int | None
    cache_ttl_s: int | None


@dataclass(frozen=True, slots=True)
class PluginLimits:
    max_rows: int
    max_columns: int
    deadline_s: float
    http: HttpSettings


@dataclass(slots=True)
class PluginRun:
    rows: int = 0
    columns: list[ColumnInfo] = field(default_factory=list)
    data_hash: str = ""
    not_modified: bool = False
    validators: dict[str, dict[str, str]] = field(default_factory=dict)
    stats: HttpStats = field(default_factory=HttpStats)


def digest(code: str) -> str:
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


def data_hash(frame: pl.DataFrame) -> str:
    """A digest of a frame's schema and rows (the same data, the same digest), without numpy: a
    plugin fetch must work with the runtime packages alone (`make run`), and numpy is not one. The
    row hashes go through Polars' own Arrow IPC writer (about 40 ms for a million rows)."""
    buffer = io.BytesIO()
    frame.hash_rows(seed=7).to_frame("h").write_ipc_stream(buffer, compression="uncompressed")
    return hashlib.sha256(str(frame.schema).encode() + buffer.getvalue()).hexdigest()


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = re.sub(r"(?<![\w.])/[^\s:'\"]+", "<path>", text)  # no server path in a reason
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _check_class(cls: type[DataSourcePlugin]) -> None:
    if not isinstance(cls.name, str) or not _NAME.match(cls.name):
        raise ValueError(f"{cls.__name__}.name must be lower-case letters, digits and '_' (got {cls.name!r})")
    if cls.fetch is DataSourcePlugin.fetch:
        raise ValueError(f"{cls.__name__} does not define fetch")
    if not isinstance(cls.params, tuple) or not all(isinstance(p, Param) for p in cls.params):
        raise ValueError(f"{cls.__name__}.params must be a tuple of Param")
    names = [p.name for p in cls.params]
    if len(set(names)) != len(names):
        raise ValueError(f"{cls.__name__}.params names a parameter twice")
    if cls.schema is not None:
        bad = [t for t in dict(cls.schema).values() if t not in DTYPES]
        if bad:
            raise ValueError(f"{cls.__name__}.schema: unknown type {bad[0]!r}; use one of {', '.join(DTYPES)}")


def _load(stem: str, code: str) -> dict[str, type[DataSourcePlugin]]:
    """The plugins `code` defines, executed into a fresh module (cached by the text's digest)."""
    key = digest(code)
    known = _loaded.get(key)
    if known is not None:
        return known
    module = types.ModuleType(f"datagraph_plugin_{re.sub(r'[^a-zA-Z0-9_]', '_', stem)}_{key[:16]}")
    module.__file__ = f"plugins/{stem}.py"
    sys.modules[module.__name__] = module  # dataclasses and pickling look modules up by name
    try:
        exec(compile(code, module.__file__, "exec"), module.__dict__)  # noqa: S102  (the plugin's own code)
    except BaseException:
        del sys.modules[module.__name__]
        raise
    found: dict[str, type[DataSourcePlugin]] = {}
    for value in list(vars(module).values()):
        if isinstance(value, type) and issubclass(value, DataSourcePlugin) and value.__module__ == module.__name__:
            _check_class(value)
            if value.name in found:
                raise ValueError(f"two plugins are named {value.name!r}")
            found[value.name] = value
    if not found:
        raise ValueError("the file defines no DataSourcePlugin subclass")
    _loaded[key] = found
    return found


def _info(cls: type[DataSourcePlugin]) -> PluginInfo:
    return PluginInfo(
        name=cls.name,
        version=str(cls.version),
        description=str(cls.description),
        params=[p.describe() for p in cls.params],
        schema=dict(cls.schema) if cls.schema is not None else None,
        refresh_s=cls.refresh_s,
        cache_ttl_s=cls.cache_ttl_s,
    )


def inspect_file(stem: str, code: str) -> tuple[list[PluginInfo], str | None]:
    """The plugins a file defines, or why it is unavailable (one line, no path)."""
    try:
        return [_info(cls) for cls in _load(stem, code).values()], None
    except Exception as exc:
        return [], _short(exc)


def _get_runtime(settings: HttpSettings) -> tuple[asyncio.AbstractEventLoop, HttpClient]:
    global _runtime
    if _runtime is None:
        loop = asyncio.new_event_loop()
        _runtime = (loop, HttpClient(settings))
    return _runtime


class SyncHttp:
    """The host's client for a plain `def fetch` on a thread: the same calls, blocking."""

    def __init__(self, session: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._session = session
        self._loop = loop

    def get_json(self, url: str, **kw: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(self._session.get_json(url, **kw), self._loop).result()

    def get_bytes(self, url: str, **kw: Any) -> bytes:
        body: bytes = asyncio.run_coroutine_threadsafe(self._session.get_bytes(url, **kw), self._loop).result()
        return body


def _as_frame(result: Any, plugin: str) -> pl.DataFrame:
    if isinstance(result, pl.DataFrame):
        return result
    if isinstance(result, pl.LazyFrame):
        return result.collect()
    if hasattr(result, "__arrow_c_stream__"):  # an Arrow table (pyarrow or any Arrow library)
        return pl.DataFrame(result)
    raise BadInput(f'The plugin "{plugin}" returned {type(result).__name__}, not a DataFrame or an Arrow table.')


def _check_output(frame: pl.DataFrame, cls: type[DataSourcePlugin], limits: PluginLimits) -> None:
    if frame.width == 0:
        raise BadInput(f'The plugin "{cls.name}" returned no columns.')
    if frame.height > limits.max_rows:
        raise TooLarge(
            f'The plugin "{cls.name}" returned {frame.height:,} rows, more than {limits.max_rows:,} (setting max_rows).'
        )
    if frame.width > limits.max_columns:
        raise TooLarge(f'The plugin "{cls.name}" returned {frame.width:,} columns, more than {limits.max_columns:,}.')
    if cls.schema is not None:
        got = {name: dtype_name(dtype) for name, dtype in frame.schema.items()}
        want = dict(cls.schema)
        if got != want:
            missing = [n for n in want if n not in got]
            extra = [n for n in got if n not in want]
            wrong = [f"{n} is {got[n]}, not {t}" for n, t in want.items() if n in got and got[n] != t]
            detail = "; ".join(
                [
                    *(f"missing column {n}" for n in missing[:3]),
                    *(f"unexpected column {n}" for n in extra[:3]),
                    *wrong[:3],
                ]
            )
            raise BadInput(f'The plugin "{cls.name}" returned data that does not match its schema: {detail}.')


def plugin_timeout_message(plugin: str, seconds: float) -> str:
    return f'The plugin "{plugin}" did not finish within {seconds:g} s and was stopped (setting plugin_timeout_s).'


def run_plugin(
    stem: str,
    code: str,
    plugin: str,
    params: Mapping[str, Any] | None,
    out: Path,
    limits: PluginLimits,
    validators: dict[str, dict[str, str]],
) -> PluginRun:
    """Check the parameters, run `fetch`, check its result and write it to `out` as Parquet."""
    try:
        cls = _load(stem, code)[plugin]
    except Exception as exc:
        raise BadInput(f'The plugin "{plugin}" is unavailable: {_short(exc)}') from None
    try:
        checked = validate_params(cls.params, params)
    except ParamError as exc:
        raise BadInput(f"{plugin}: {exc}") from None
    loop, client = _get_runtime(limits.http)
    session = client.session(deadline_s=limits.deadline_s, validators=validators)
    instance = cls()

    is_async = asyncio.iscoroutinefunction(instance.fetch)

    async def call() -> Any:
        if is_async:
            return await asyncio.wait_for(instance.fetch(checked, session), limits.deadline_s)
        # A plain `def fetch` runs on a thread with a blocking view of the same client. A thread
        # cannot be stopped: past the deadline the server kills this whole worker instead.
        sync_fetch: Any = instance.fetch
        # In this context, so its requests' spans have the job's as their parent.
        in_context = contextvars.copy_context().run
        return await loop.run_in_executor(None, in_context, sync_fetch, checked, SyncHttp(session, loop))

    run = PluginRun(stats=session.stats)
    try:
        result = loop.run_until_complete(call())
    except NotModified:
        run.not_modified = True
        return run
    except TimeoutError:
        stopped = Timeout(plugin_timeout_message(plugin, limits.deadline_s))
        stopped.http_stats = session.stats  # type: ignore[attr-defined]  # counted even when the fetch failed
        raise stopped from None
    except MemoryError:  # the worker answers TOO_LARGE for it
        raise
    except DatagraphError as exc:
        exc.http_stats = session.stats  # type: ignore[attr-defined]  # counted even when the fetch failed
        raise
    except Exception as exc:
        failed = BadInput(f'The plugin "{plugin}" failed: {_short(exc)}')
        failed.http_stats = session.stats  # type: ignore[attr-defined]
        raise failed from None
    frame = _as_frame(result, plugin)
    _check_output(frame, cls, limits)
    frame.write_parquet(out, compression="lz4")
    run.rows = frame.height
    run.columns = column_infos(frame)
    run.data_hash = data_hash(frame)
    run.validators = session.validators
    return run
