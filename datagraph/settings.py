"""Every limit and knob of the server, with its default and one line of help.

Each setting can be given as a command-line option (`--max-upload-mb 50`) or an environment
variable (`DATAGRAPH_MAX_UPLOAD_MB=50`); the command line wins. `datagraph settings` prints the
table the README carries, and a test keeps the two the same.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "graphiql_served", "keys_required", "production_mode", "settings_table"]


class Settings(BaseSettings):
    """The server's settings; frozen once built."""

    model_config = SettingsConfigDict(env_prefix="DATAGRAPH_", frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    data_dir: Path = Field(Path("var"), description="Where datasets, uploads, exports and the metadata database live.")
    metadata_url: str = Field(
        "", description="SQLAlchemy URL of the metadata database; empty means a SQLite file in the data directory."
    )
    heartbeat_s: float = Field(
        5,
        gt=0,
        description="How often a server process records in the metadata database that it is alive, in seconds;"
        " one silent for 3 times this is dead, and sweeps remove what it left.",
    )
    lease_s: float = Field(
        10,
        gt=0,
        description="How long a lease on a background duty (the scheduler, the sweeps) lasts, in seconds: its"
        " holder renews it every third of this, and another server process takes the duty over within about"
        " this long after the holder dies.",
    )
    sweep_s: float = Field(
        60,
        ge=1,
        description="How often the server process holding the sweep lease sweeps, in seconds: versions past"
        " keep_versions and keep_versions_days, expired exports, and what stopped processes left in staging.",
    )
    schedule_min_s: int = Field(10, ge=1, description="The shortest refresh schedule setSchedule accepts, in seconds.")
    schedule_retry_s: float = Field(
        5,
        gt=0,
        description="After a failed scheduled refresh, wait this long before trying again, doubled after each"
        " further failure, at most the schedule's interval; in seconds.",
    )
    shutdown_grace_s: int = Field(
        5,
        ge=0,
        description="How long a stopping server waits for open connections (websockets, requests still running)"
        " before it closes them, in seconds.",
    )
    sources: str = Field(
        "sources.yaml",
        description="The sources file (databases to read); empty for none. A missing default file means none.",
    )
    import_timeout_s: float = Field(
        3_600, gt=0, description="Deadline of one import (an upload's parsing, an importTable snapshot), in seconds."
    )
    plugins: str = Field("plugins", description="The plugins folder, watched for .py files; empty for none.")
    plugin_timeout_s: float = Field(60, gt=0, description="Deadline of one plugin fetch, in seconds.")
    http_connect_timeout_s: float = Field(5, gt=0, description="Outbound HTTP (plugins): connect timeout, in seconds.")
    http_read_timeout_s: float = Field(30, gt=0, description="Outbound HTTP: read timeout, in seconds.")
    http_attempts: int = Field(4, ge=1, le=10, description="Outbound HTTP: tries per request, the first included.")
    http_backoff_s: float = Field(
        0.5, ge=0, description="Outbound HTTP: backoff base; retry n waits up to base x 2^n (full jitter)."
    )
    http_backoff_cap_s: float = Field(8, ge=0, description="Outbound HTTP: longest wait between tries, in seconds.")
    http_retry_after_max_s: float = Field(
        30, ge=0, description="Outbound HTTP: longest Retry-After honoured, in seconds; a longer one gives up."
    )
    http_max_response_mb: float = Field(100, gt=0, description="Outbound HTTP: largest response body, in MiB.")
    http_blocked_networks: str = Field(
        "169.254.0.0/16,fe80::/10,fd00:ec2::254/128,100.100.100.200/32",
        description="Outbound HTTP: networks never connected to (comma-separated CIDRs): link-local, cloud metadata.",
    )
    webhook_url: str = Field(
        "",
        description="Where each CHECK_FAILED and SCHEMA_CHANGED dataset event is POSTed as JSON (through the"
        " outbound HTTP client: its timeouts, retries and http_blocked_networks); empty: none.",
    )
    webhook_queue: int = Field(
        100, gt=0, description="Most webhook deliveries waiting to be sent; past it the oldest is dropped (logged)."
    )
    webhook_deadline_s: float = Field(
        60, gt=0, description="Longest one webhook delivery may take, all its tries and waits included, in seconds."
    )
    checks_max_rules: int = Field(50, gt=0, description="Most data-check rules one dataset may have (setChecks).")
    checks_max_values: int = Field(
        1_000, gt=0, description="Most values one data check may list (allowed values, notNull and unique columns)."
    )
    max_upload_mb: float = Field(20, gt=0, description="Largest file an upload may carry, in MiB.")
    max_request_kb: int = Field(256, gt=0, description="Largest JSON request body, in KiB.")
    max_query_chars: int = Field(20_000, gt=0, description="Longest GraphQL query text, in characters.")
    documents_dir: str = Field(
        "",
        description="A folder of trusted GraphQL documents (.graphql files), run by documentId"
        ' ("sha256:" and the hex SHA-256 of the file\'s exact text); read at start and when its files change.'
        " Empty: none.",
    )
    persisted_only: bool = Field(
        False,
        description="Production mode for documents: run only persisted documents (documents_dir, `datagraph"
        " documents add`, or already registered by APQ); any other query text or APQ registration is refused"
        " (PERSISTED_QUERY_NOT_ALLOWED).",
    )
    persisted_max_documents: int = Field(
        10_000,
        gt=0,
        description="Most persisted documents kept in the metadata database; past it the oldest ones APQ"
        " registered make room (clients register them again), and trusted ones are never evicted.",
    )
    allowed_hosts: str = Field(
        "",
        description="Host names the server answers besides loopback ones while API keys are off"
        " (comma-separated; * for any), so a DNS-rebinding page cannot read the API.",
    )
    max_json_depth: int = Field(
        64, gt=0, description="Deepest nesting of lists and objects in a JSON body, variable or JSON value."
    )
    max_result_mb: float = Field(
        64,
        ge=0,
        description="Largest answer a worker may send back for one result (rows, sql, describe, charts ...),"
        " in MiB; over it is TOO_LARGE, found in the worker. 0: no cap.",
    )
    max_steps: int = Field(
        200,
        gt=0,
        description="Most transform steps in one plan (pipeline and clean steps, chained transforms), checked"
        " before the plan is built.",
    )
    max_input_values: int = Field(
        5_000,
        gt=0,
        description="Most values in one request's GraphQL variables, counted by their declared types (a JSON"
        " value counts once); checked before they are coerced.",
    )
    max_columns: int = Field(2_000, gt=0, description="Most columns an uploaded file may have.")
    max_rows: int = Field(5_000_000, gt=0, description="Most rows an uploaded file may have.")
    xlsx_max_uncompressed_mb: int = Field(200, gt=0, description="Largest total uncompressed size of an .xlsx, in MiB.")
    xlsx_max_ratio: int = Field(100, gt=0, description="Highest compression ratio of any entry in an .xlsx.")
    xlsx_max_entries: int = Field(1_000, gt=0, description="Most entries (files) inside an .xlsx.")
    rows_max: int = Field(10_000, gt=0, description="Most rows a single result may return.")
    join_max_rows: int = Field(
        50_000_000,
        ge=0,
        description="Most rows a join or as-of join may make, estimated from the key counts of both sides before"
        " it runs, and most rows an unpivot or cells (rows x columns) a pivot may make; over it is TOO_LARGE."
        " 0: no limit.",
    )
    pivot_max_columns: int = Field(
        1_000, ge=0, description="Most columns a pivot may make (distinct values of its columns column); 0: no limit."
    )
    page_blocks_max_mb: float = Field(
        1_024,
        ge=0,
        description="Largest dataset version (its Parquet, in MiB) whose rows are kept as Arrow blocks beside it"
        " once a page of it is asked for, so that pages are read in the server process; 0: never.",
    )
    page_thread_rows: int = Field(
        5_000,
        ge=0,
        description="Most rows a page may ask for to be read from page blocks in the server process; a larger"
        " one, or one of a frame with more than selects and slices, runs in a worker.",
    )
    datasets_max_page: int = Field(
        1_000, gt=0, description="Most datasets one page of the datasets query may ask for (its limit argument)."
    )
    export_ttl_s: int = Field(3_600, gt=0, description="How long an export's download link stays valid, in seconds.")
    export_quota_mb: int = Field(
        2_048,
        gt=0,
        description="Most disk space all unexpired exports may take together, in MiB: past it the oldest are"
        " removed (their links answer NOT_FOUND), and one export larger than it is TOO_LARGE.",
    )
    keep_versions: int = Field(
        10,
        ge=1,
        description="Versions of each dataset kept on disk, the current one included; an older one is removed a"
        " few minutes after it stops being one of them.",
    )
    keep_versions_days: float = Field(
        0,
        ge=0,
        description="Days a dataset version is kept: an older one is removed like one past keep_versions (the"
        " current one never is); 0: no age rule, only keep_versions counts.",
    )
    compact_parts: int = Field(
        16,
        ge=2,
        description="Parts a dataset version made by appendRows may have before they are compacted into one file"
        " in the background; at four times this an append rewrites the dataset whole.",
    )
    workers: int = Field(2, ge=1, description="Worker processes that parse uploads and run analysis.")
    worker_idle_s: float = Field(
        120,
        ge=0,
        description="Seconds a worker may sit idle before it is stopped; workers start with the jobs that need"
        " them, so an idle server is one process. 0: the whole pool starts with the server and stays.",
    )
    timeout_s: float = Field(
        60, gt=0, description="Deadline of one analysis or parsing job, in seconds; timeoutMs can lower it per request."
    )
    min_timeout_ms: int = Field(
        250,
        ge=1,
        description="Shortest timeoutMs a request may ask for, in ms; below it is BAD_INPUT (a deadline that short"
        " only stops workers).",
    )
    finish_grace_s: float = Field(
        2,
        ge=0,
        description="How long an analysis whose requester went away may run on to finish into the cache, in"
        " seconds, before its worker is stopped (0: at once).",
    )
    worker_memory_mb: int = Field(
        8_192, ge=0, description="Address-space cap of each worker process, in MiB (0: no cap); a query over it stops."
    )
    cache_url: str = Field(
        "", description="Result cache: empty for memory only, or a redis:// URL shared by several servers."
    )
    cache_memory_mb: int = Field(256, ge=0, description="Memory the in-process result cache may use, in MiB (LRU).")
    answer_cache_mb: int = Field(
        64,
        ge=0,
        description="Memory for whole GraphQL answers served without running them again while the datasets they"
        " read are unchanged, in MiB (LRU; 0: off). Several processes need a redis:// cache_url for it.",
    )
    cache_timeout_s: float = Field(0.25, gt=0, description="Longest a Redis cache operation may take, in seconds.")
    cache_ttl_s: int = Field(86_400, gt=0, description="How long a cached result is kept, in seconds.")
    chart_max_points: int = Field(5_000, gt=0, description="Most data points a chart spec carries inline.")
    graphql_max_depth: int = Field(8, gt=0, description="Deepest GraphQL query accepted.")
    graphql_max_aliases: int = Field(15, gt=0, description="Most aliases in one GraphQL query.")
    graphql_max_tokens: int = Field(2_000, gt=0, description="Most tokens in one GraphQL query.")
    graphql_max_field_repeats: int = Field(
        10, gt=0, description="Most times one field may be selected in one selection set."
    )
    graphql_max_errors: int = Field(5, gt=0, description="Most errors one GraphQL answer lists; the rest are counted.")
    graphql_defer: bool = Field(
        False,
        description="Allow `@defer` on fragments (and `@stream` on lists): the answer comes as multipart/mixed"
        " parts, the deferred ones as they finish. Experimental in Strawberry and in the GraphQL spec, so off"
        " by default; a client must send `Accept: multipart/mixed`.",
    )
    ws_init_timeout_s: float = Field(
        10, gt=0, description="Websocket: how long a client has to send connection_init, in seconds."
    )
    ws_max_subscriptions: int = Field(10, ge=1, description="Websocket: most subscriptions on one connection.")
    max_ws_per_client: int = Field(
        16,
        ge=1,
        description="Websocket: most open websockets per API key (per client address without keys) in one server"
        " process; the next is closed with 4429 until one closes.",
    )
    sse_keepalive_s: float = Field(
        12,
        gt=0,
        description="Server-Sent Events (/graphql/stream): how often an open stream sends a comment that keeps"
        " proxies from closing it as idle, in seconds.",
    )
    cors_origins: str = Field(
        "",
        description="Other origins whose pages may call the API (comma-separated, CORS; also allowed to"
        " subscribe); empty: same origin only.",
    )
    ws_allowed_origins: str = Field(
        "", description="Websocket: other origins whose pages may subscribe (comma-separated); empty: same origin only."
    )
    api_keys: str = Field(
        "auto",
        pattern="^(auto|on)$",
        description="API keys: auto (required unless host is a loopback address) or on (always required);"
        " made with `datagraph keys create`.",
    )
    production: str = Field(
        "auto",
        pattern="^(auto|on|off)$",
        description="Production mode: introspection and field suggestions off, GraphiQL off unless given"
        " explicitly; auto: on whenever API keys are required.",
    )
    graphiql: bool = Field(
        True, description="Serve the GraphiQL explorer on GET /graphql (in production mode only when given)."
    )
    rate_limit: str = Field(
        "2400/minute",
        description="Budget per API key (per client address without keys), e.g. 2400/minute: a request costs 1,"
        " an upload 20 more, each worker job or SQL statement it ran 5 more; empty: no limit.",
    )
    rate_limit_url: str = Field(
        "", description="Where budgets are kept: empty for the cache's Redis when cache_url is one, else memory."
    )
    log_level: str = Field("info", description="Log level: debug, info, warning or error.")
    log_format: str = Field(
        "text", pattern="^(text|json)$", description="Log lines as text or as JSON objects (one a line)."
    )
    otel_endpoint: str = Field(
        "",
        description="OpenTelemetry tracing: the OTLP/HTTP collector's base URL (e.g. http://127.0.0.1:4318; spans"
        " are POSTed to <url>/v1/traces), batched and dropped rather than waited for; empty: off.",
    )
    metrics_dir: str = Field(
        "",
        description="A folder shared by several server processes so /metrics in any of them sums all;"
        " empty: one process.",
    )

    @field_validator("http_blocked_networks")
    @classmethod
    def _cidrs(cls, value: str) -> str:
        """Refused at start-up, not at the first plugin fetch (where a typo would fail every fetch)."""
        for cidr in filter(None, map(str.strip, value.split(","))):
            ipaddress.ip_network(cidr, strict=False)  # ValueError names the bad entry
        return value

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, value: str) -> str:
        """Refused at start-up, not at the first event (a typo would lose every delivery)."""
        value = value.strip()
        if value:
            from urllib.parse import urlsplit

            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("webhook_url must be an http:// or https:// URL with a host, or empty")
        return value

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str) -> str:
        if value.strip():
            from limits import parse

            parse(value)  # ValueError names what it could not read
        return value.strip()

    @field_validator("otel_endpoint")
    @classmethod
    def _otel(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("otel_endpoint must be an http:// or https:// URL (the OTLP/HTTP collector), or empty")
        return value

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def resolved_metadata_url(self) -> str:
        return self.metadata_url or f"sqlite:///{(self.data_dir / 'datagraph.sqlite3').resolve()}"


def settings_table() -> str:
    """The settings as a Markdown table: name, environment variable, default, help."""
    lines = ["| setting | environment variable | default | what it does |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default: Any = field.default
        shown = "(empty)" if default == "" else str(default).lower() if isinstance(default, bool) else str(default)
        lines.append(f"| `--{name.replace('_', '-')}` | `DATAGRAPH_{name.upper()}` | `{shown}` | {field.description} |")
    return "\n".join(lines)


def keys_required(settings: Settings) -> bool:
    """Whether requests must carry a key: always with `api_keys=on`, else when bound beyond loopback."""
    if settings.api_keys == "on":
        return True
    host = settings.host.strip("[]")
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return True


def production_mode(settings: Settings) -> bool:
    """Whether to hide the schema (introspection, suggestions) and GraphiQL: `production`, or with
    `auto`, whenever keys are required."""
    if settings.production == "auto":
        return keys_required(settings)
    return settings.production == "on"


def graphiql_served(settings: Settings) -> bool:
    """GraphiQL is served as set, except in production mode, where it must be asked for explicitly."""
    if production_mode(settings) and "graphiql" not in settings.model_fields_set:
        return False
    return settings.graphiql
