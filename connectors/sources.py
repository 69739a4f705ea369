"""`sources.yaml`: the databases a server may read, validated once at start-up into frozen objects.

    sources:
      shop:                          # the source id used in the API
        kind: postgresql             # postgresql | mysql | sqlite | duckdb
        url: postgresql://${SHOP_USER}:${SHOP_PASSWORD}@127.0.0.1:5432/shop
        schema: public               # optional: where unqualified table names live
        tables: [orders, customers]  # optional allowlist
        statement_timeout_s: 60      # optional
        pool_size: 5                 # optional
        memory_limit_mb: 2048        # optional, duckdb only: memory for one query

`${VAR}` is replaced from the environment (a missing variable is an error naming it). A relative
SQLite or DuckDB path (`duckdb:///data/shop.duckdb`) is relative to the file. A bad file raises
`SourcesError` with a message naming the key, never a value: the URL carries secrets, so it is
kept out of every repr, message and log.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["DEFAULT_FILE", "RESERVED_IDS", "DatabaseConfig", "SourcesError", "configured_sources", "load_sources"]

DEFAULT_FILE = "sources.yaml"
RESERVED_IDS = frozenset({"uploads", "frames", "plugins"})
_ID = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# The URL schemes each kind accepts, and the SQLAlchemy driver each one runs on. PyMySQL, because
# aiomysql and asyncmy switch multi-statements on (see RELIABILITY.md in ../shared/, beside the repository).
_SCHEMES = {
    "postgresql": ({"postgresql", "postgres", "postgresql+psycopg"}, "postgresql+psycopg"),
    "mysql": ({"mysql", "mariadb", "mysql+pymysql"}, "mysql+pymysql"),
    "sqlite": ({"sqlite"}, "sqlite"),
    "duckdb": ({"duckdb"}, "duckdb"),
}
_DEFAULT_SCHEMA = {"postgresql": "public", "sqlite": "main", "duckdb": "main"}
_FILE_KINDS = ("sqlite", "duckdb")  # a database in one file, named by its path


class SourcesError(Exception):
    """The sources file is unreadable or invalid; the message names the key."""


DUCKDB_MEMORY_MB = 2048  # a DuckDB source's memory_limit_mb when sources.yaml gives none


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    id: str
    name: str
    kind: str  # postgresql | mysql | sqlite | duckdb
    url: str = field(repr=False)  # SQLAlchemy URL with its driver; holds secrets
    schema: str  # where unqualified table names live
    tables: tuple[str, ...] | None  # the allowlist as written, or None for every table in `schema`
    statement_timeout_s: float
    pool_size: int
    memory_limit_mb: int = DUCKDB_MEMORY_MB  # DuckDB's memory for one query (it never spills to disk here)

    @property
    def dialect(self) -> str:
        """The sqlglot dialect of this source."""
        return {"postgresql": "postgres", "mysql": "mysql", "sqlite": "sqlite", "duckdb": "duckdb"}[self.kind]

    @property
    def sql_schema(self) -> str | None:
        """The schema to name in SQLAlchemy calls and generated SQL: None for SQLite (its `main`)."""
        return None if self.kind == "sqlite" else self.schema

    @property
    def allowed_tables(self) -> frozenset[str] | None:
        """The allowlist as "schema.table" (a bare name qualified with `schema`), or None for every
        table in `schema`. Names match exactly as the database spells them, for SQL, imports and
        linked tables alike."""
        if self.tables is None:
            return None
        qualified = (t if "." in t else f"{self.schema}.{t}" for t in self.tables)
        # DuckDB's names are case-blind, quoted or not: the guard folds them, and so does the list.
        return frozenset(t.lower() for t in qualified) if self.kind == "duckdb" else frozenset(qualified)

    def allows(self, table: str) -> bool:
        """Whether the table `table` of `schema`, as the database spells it, is one this source serves."""
        allowed = self.allowed_tables
        key = f"{self.schema}.{table}"
        return allowed is None or (key.lower() if self.kind == "duckdb" else key) in allowed


class _Source(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["postgresql", "mysql", "sqlite", "duckdb"]
    url: str = Field(min_length=1)
    name: str | None = Field(None, min_length=1, max_length=100)
    schema_: str | None = Field(None, alias="schema", min_length=1, max_length=63)
    tables: list[str] | None = None
    statement_timeout_s: float = Field(60, gt=0, le=3600)
    pool_size: int = Field(5, ge=1, le=50)
    memory_limit_mb: int | None = Field(None, ge=64, le=1_048_576)


def _expand(value: Any, where: str, env: Mapping[str, str], missing: list[str]) -> Any:
    """`value` with `${VAR}` replaced from `env`; each variable that is not set is added to
    `missing` as "<yaml path>: ..." (and replaced by nothing, so the rest can still be checked)."""
    if isinstance(value, str):

        def var(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                missing.append(f"{where}: the environment variable {name} is not set")
                return ""
            return env[name]

        return _VAR.sub(var, value)
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}" if where else str(k), env, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{where}[{i}]", env, missing) for i, v in enumerate(value)]
    return value


def _driver_url(source_id: str, spec: _Source, base: Path) -> str:
    accepted, driver = _SCHEMES[spec.kind]
    scheme, sep, rest = spec.url.partition("://")
    if not sep or scheme.lower() not in accepted:
        raise SourcesError(f"sources.{source_id}.url: a {spec.kind} source needs a {spec.kind}:// URL")
    if spec.kind not in _FILE_KINDS:
        return f"{driver}://{rest}"
    path = rest[1:] if rest.startswith("/") else rest  # sqlite:///relative, sqlite:////absolute
    if spec.kind == "duckdb" and "?" in path:  # the connector opens the file read-only its own way
        raise SourcesError(f"sources.{source_id}.url: a duckdb URL names the file only, with no ?options")
    if not path or path.startswith(":memory:") or path.startswith(("md:", "motherduck:")):
        raise SourcesError(f"sources.{source_id}.url: a {spec.kind} source needs a database file")
    return f"{driver}:///{(base / path).resolve()}"


def _schema(source_id: str, spec: _Source, url: str) -> str:
    if spec.schema_:
        return spec.schema_
    if spec.kind == "mysql":  # the database named in the URL
        try:
            database = make_url(url).database
        except (ArgumentError, ValueError):  # their text holds the URL, secrets and all
            raise SourcesError(f"sources.{source_id}.url: not a valid {spec.kind} URL") from None
        return database or "mysql"
    return _DEFAULT_SCHEMA[spec.kind]


def load_sources(path: Path, env: Mapping[str, str] | None = None) -> tuple[DatabaseConfig, ...]:
    """The database sources in `path`, checked; `SourcesError` names the file and, for every
    problem in it (all of them at once, not the first), its place as a YAML path."""
    try:
        return _load(path, os.environ if env is None else env)
    except SourcesError as exc:
        raise SourcesError(f"{path.name}: {exc}") from None


def _load(path: Path, env: Mapping[str, str]) -> tuple[DatabaseConfig, ...]:
    try:
        raw = yaml.safe_load(path.read_text("utf-8"))
    except OSError as exc:
        raise SourcesError(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SourcesError(f"not valid YAML{f' at line {mark.line + 1}' if mark is not None else ''}") from None
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise SourcesError("expected a mapping with a 'sources' key")
    problems: list[str] = []
    unknown = sorted(str(k) for k in raw if k != "sources")
    problems += [f"{k[:40]}: not a key of this file (it has one: sources)" for k in unknown]
    sources = raw.get("sources") or {}
    if not isinstance(sources, dict):
        problems.append("sources: expected a mapping of source ids to sources")
        sources = {}
    configs = []
    for source_id, given in sources.items():
        where = f"sources.{str(source_id)[:40]}"
        if not isinstance(source_id, str) or not _ID.match(source_id) or source_id in RESERVED_IDS:
            problems.append(
                f"{where}: a source id is lower-case letters, digits, '-' and '_',"
                f" starts with a letter, and is not one of {', '.join(sorted(RESERVED_IDS))}"
            )
        if not isinstance(given, dict):
            problems.append(f"{where}: expected a mapping (kind, url and the optional keys)")
            continue
        missing: list[str] = []
        expanded = _expand(given, where, env, missing)
        problems += missing
        try:
            spec = _Source.model_validate(expanded)
        except ValidationError as exc:
            for error in exc.errors():
                loc = ".".join(str(p) for p in error["loc"])
                problems.append(f"{where}{'.' + loc if loc else ''}: {error['msg']}")
            continue
        if missing:
            continue  # its URL is incomplete: any other complaint about it would mislead
        if spec.memory_limit_mb is not None and spec.kind != "duckdb":
            problems.append(f"{where}.memory_limit_mb: only a duckdb source takes it")
            continue
        try:
            url = _driver_url(str(source_id), spec, path.parent)
            schema = _schema(str(source_id), spec, url)
        except SourcesError as exc:
            problems.append(str(exc))
            continue
        configs.append(
            DatabaseConfig(
                id=str(source_id),
                name=spec.name or str(source_id),
                kind=spec.kind,
                url=url,
                schema=schema,
                tables=tuple(spec.tables) if spec.tables is not None else None,
                statement_timeout_s=spec.statement_timeout_s,
                pool_size=spec.pool_size,
                memory_limit_mb=spec.memory_limit_mb or DUCKDB_MEMORY_MB,
            )
        )
    if len(problems) == 1:
        raise SourcesError(problems[0])
    if problems:
        raise SourcesError(f"{len(problems)} problems:\n" + "\n".join(f"  {p}" for p in problems))
    return tuple(configs)


def configured_sources(setting: str) -> tuple[DatabaseConfig, ...]:
    """The sources the `sources` setting names: none when empty, or when the default file is absent."""
    if not setting:
        return ()
    path = Path(setting)
    if setting == DEFAULT_FILE and not path.exists():
        return ()
    return load_sources(path)
