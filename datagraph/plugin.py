"""The contract an API-pull plugin implements: everything a plugin author needs is in this file.

A plugin is a `.py` file in the plugins folder defining a subclass of `DataSourcePlugin`:

    from datagraph.plugin import DataSourcePlugin, Param

    class Quotes(DataSourcePlugin):
        name = "quotes"
        version = "1.0"
        description = "Daily quotes for a symbol."
        params = (Param("symbol", str, description="Ticker, e.g. ACME"),)

        async def fetch(self, params, http):
            rows = await http.get_json("https://quotes.example/api", params={"s": params["symbol"]})
            return pl.DataFrame(rows)

The server loads each file into a fresh module, lists its plugins (`plugins`), validates the
parameters a user sends against `params` before `fetch` runs, and runs `fetch` in a worker
process under a deadline and a memory cap, with `http`: the host's HTTP client (timeouts,
retries with backoff, a response size cap, blocked networks, conditional requests). A plugin
never makes its own client. What `fetch` returns (a Polars DataFrame or an Arrow table) is
checked against `schema` and the row cap, and stored as a dataset; fetching again with the same
parameters makes a new version of that dataset, unless the upstream answered "not modified".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

__all__ = ["DTYPES", "DataSourcePlugin", "Http", "NotModified", "Param", "ParamError", "validate_params"]

# The column types a plugin may declare in `schema` (the API's dtype names).
DTYPES = ("Int64", "Float64", "String", "Boolean", "Date", "Datetime")


class NotModified(Exception):
    """Raised by `http` on a 304: the upstream's data did not change since the validators given."""


_TYPES: dict[type, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "list",
    dict: "object",
}


class ParamError(ValueError):
    """A parameter a user sent is missing, of the wrong type or out of range; the message says which."""


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of `fetch`: a name, a type, whether it is required, and its limits."""

    name: str
    type: type = str  # str | int | float | bool | list | dict | dt.date
    required: bool = True
    default: Any = None
    description: str = ""
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None

    def describe(self) -> dict[str, Any]:
        """The parameter as the API lists it."""
        return {
            "name": self.name,
            "type": "date" if self.type is dt.date else _TYPES.get(self.type, self.type.__name__),
            "required": self.required,
            "default": self.default.isoformat() if isinstance(self.default, dt.date) else self.default,
            "description": self.description,
            **({"choices": list(self.choices)} if self.choices else {}),
            **({"min": self.min} if self.min is not None else {}),
            **({"max": self.max} if self.max is not None else {}),
        }


class Http(Protocol):
    """The host's HTTP client as `fetch` gets it. Every call raises a clear error the host reports."""

    async def get_json(
        self, url: str, *, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        """GET `url` and parse the JSON body."""
        ...

    async def get_bytes(
        self, url: str, *, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> bytes:
        """GET `url` and return the body (at most the host's size cap)."""
        ...


class DataSourcePlugin:
    """Subclass this in a file in the plugins folder. Class attributes describe the plugin."""

    name: ClassVar[str] = ""
    """Unique name users fetch it by: lower-case letters, digits and '_'."""
    version: ClassVar[str] = "0.1.0"
    """The plugin's own version, shown in `plugins`."""
    description: ClassVar[str] = ""
    """One line for people choosing a plugin."""
    params: ClassVar[tuple[Param, ...]] = ()
    """The parameters `fetch` takes; checked before it runs."""
    schema: ClassVar[Mapping[str, str] | None] = None
    """Optional output columns and their types (from DTYPES); a result that differs is refused."""
    refresh_s: ClassVar[int | None] = None
    """Optional: the host re-fetches each dataset this plugin made this often, in seconds."""
    cache_ttl_s: ClassVar[int | None] = None
    """Optional: a fetch with the same parameters within this many seconds of the last one answers
    the dataset as it is, without calling `fetch` (for upstreams with rate limits)."""

    async def fetch(self, params: dict[str, Any], http: Http) -> Any:
        """Return the data as a Polars DataFrame or an Arrow table. A plain `def fetch` also works;
        the host runs it off the event loop."""
        raise NotImplementedError


def _coerce(param: Param, value: Any) -> Any:
    kind = param.type
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind is dt.date:
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                pass
    elif isinstance(value, kind):
        return value
    wanted = "a date like 2025-01-31" if kind is dt.date else f"a {_TYPES.get(kind, kind.__name__)}"
    raise ParamError(f'Parameter "{param.name}" must be {wanted}, got {type(value).__name__}.')


def validate_params(declared: tuple[Param, ...], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The parameters `fetch` gets: `given` checked against `declared`, defaults filled in."""
    given = dict(given or {})
    known = {p.name for p in declared}
    unknown = sorted(set(given) - known)
    if unknown:
        names = ", ".join(sorted(known)) or "none"
        raise ParamError(f'Unknown parameter "{unknown[0]}"; this plugin takes: {names}.')
    out: dict[str, Any] = {}
    for param in declared:
        if given.get(param.name) is None:
            if param.required and param.default is None:
                raise ParamError(
                    f'Parameter "{param.name}" is required' + (f": {param.description}" if param.description else ".")
                )
            out[param.name] = param.default
            continue
        value = _coerce(param, given[param.name])
        if param.choices is not None and value not in param.choices:
            raise ParamError(f'Parameter "{param.name}" must be one of {", ".join(map(str, param.choices))}.')
        if param.min is not None and value < param.min:
            raise ParamError(f'Parameter "{param.name}" must be at least {param.min:g}.')
        if param.max is not None and value > param.max:
            raise ParamError(f'Parameter "{param.name}" must be at most {param.max:g}.')
        out[param.name] = value
    return out
