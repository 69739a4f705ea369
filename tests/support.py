"""What the tests share besides fixtures: the GraphQL client over the real app, settings on a fresh
data directory, a real `datagraph serve` on loopback, the CLI and API keys, files ingested for the
engine in-process, the fixed budgets of the slow tier, and the checks that skip (or, under CI, fail)
when something the test needs is missing. conftest.py holds only fixtures and hooks."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from leaks import Sweep
from starlette.testclient import TestClient

from connectors import IngestLimits, ingest, sniff
from datagraph import jsonutil
from datagraph.settings import Settings
from engine import Source
from server.app import create_app
from server.auth import KEY_PREFIX, hash_key, new_key
from server.cli import main as cli_main
from storage import MetadataStore

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
SWEEP = Sweep()  # scans every response of the app for leaks; a leak fails the run (tests/leaks.py)
# Under CI the fixed budgets (load seconds, fuzz examples) are the full ones; elsewhere shorter.
FULL_BUDGETS = bool(os.environ.get("CI"))

UPLOAD = """mutation($file: Upload!, $name: String, $replace: ID) {
  uploadDataset(file: $file, name: $name, replace: $replace) {
    success error { code message }
    dataset { id name version rowCount columns { name dtype nullCount missingRate } preview { data } }
  }
}"""


def budget(short: int, full: int) -> int:
    """A fixed budget of the slow tier (load seconds, fuzz examples): `full` under CI, `short` elsewhere."""
    return full if FULL_BUDGETS else short


def upload_request(
    content: bytes,
    filename: str,
    name: str | None = None,
    headers: dict[str, str] | None = None,
    *,
    replace: str | None = None,
) -> Any:
    """The keyword arguments of a GraphQL multipart `uploadDataset` POST (httpx); with `replace`, the
    upload is a new version of that dataset."""
    variables = {"file": None, "name": name, **({"replace": replace} if replace else {})}
    ops = {"query": UPLOAD, "variables": variables}
    return {
        "data": {"operations": json.dumps(ops), "map": json.dumps({"0": ["variables.file"]})},
        "files": {"0": (filename, content, "application/octet-stream")},
        "headers": {"Apollo-Require-Preflight": "true"} if headers is None else headers,
    }


class Api:
    """A GraphQL client over the real ASGI app."""

    def __init__(self, client: TestClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    def query(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.client.post("/graphql", json={"query": query, "variables": variables or {}})
        body: dict[str, Any] = response.json()
        return body

    def data(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = self.query(query, variables)
        assert "errors" not in body, body["errors"]
        result: dict[str, Any] = body["data"]
        return result

    def upload_raw(self, content: bytes, filename: str, name: str | None = None, **headers: str) -> Any:
        return self.client.post("/graphql", **upload_request(content, filename, name, headers or None))

    def upload(self, content: bytes | Path, filename: str | None = None, name: str | None = None) -> dict[str, Any]:
        """Upload and return the `uploadDataset` payload."""
        if isinstance(content, Path):
            filename = filename or content.name
            content = content.read_bytes()
        assert filename is not None
        response = self.upload_raw(content, filename, name)
        body = response.json()
        assert "errors" not in body, body
        payload: dict[str, Any] = body["data"]["uploadDataset"]
        return payload

    def upload_ok(self, content: bytes | Path, filename: str | None = None, name: str | None = None) -> str:
        payload = self.upload(content, filename, name)
        assert payload["success"], payload["error"]
        dataset_id: str = payload["dataset"]["id"]
        return dataset_id

    def replace_ok(self, dataset_id: str, content: bytes, filename: str) -> dict[str, Any]:
        """Upload `content` as the next version of `dataset_id`; return the `uploadDataset` payload."""
        body = self.client.post("/graphql", **upload_request(content, filename, replace=dataset_id)).json()
        payload: dict[str, Any] = body["data"]["uploadDataset"]
        assert payload["success"], payload["error"]
        return payload

    def warm_workers(self) -> None:
        """Return once every worker of the app's pool has started (each has answered a job): a test
        whose deadlines are a second or two is not to be charged a worker's imports on a busy machine."""
        executor = self.client.app.state.resources.executor  # type: ignore[attr-defined]

        async def pids() -> list[int]:
            return list(await asyncio.gather(*(executor.run(os.getpid, deadline_s=120) for _ in range(executor.size))))

        assert self.client.portal is not None, "the app is not running (use TestClient as a context manager)"
        started = self.client.portal.call(pids)
        assert len(set(started)) == executor.size, started


# Heavy self-joins (diamonds on "cut": about 827 million rows) are how tests hold a worker busy.
UNGUARDED = {"join_max_rows": 10**15}
GUARDED = {"join_max_rows": Settings.model_fields["join_max_rows"].default}


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings on a fresh data directory, with no database sources or plugins unless given, and one
    worker process, started on demand as the server's defaults start it (with the first job, not with
    the app: a worker costs a second of CPU to start, and many apps run no job at all) and stopped
    after worker_idle_s's 120 s, longer than a test: tests about the pool ask for more workers, and for
    worker_idle_s 0 (the whole pool started with the app) when they count its workers. The
    TestClient's host name is allowed (setting allowed_hosts). The join guard (join_max_rows) is
    lifted: many tests need a join that runs for seconds (deadlines, kills, cancels, load), which is
    exactly what the guard refuses; the guard's own tests set it (`GUARDED`)."""
    defaults = {"data_dir": tmp_path / "data", "sources": "", "plugins": "", "workers": 1, **UNGUARDED}
    # Starlette's TestClient sends "Host: testserver"; a real server on loopback needs no entry.
    return Settings(**{**defaults, "allowed_hosts": "testserver", **overrides})


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[Api]:
    """The real app on `settings`, its lifespan running (workers, cache, ...), as an `Api`."""
    with TestClient(create_app(settings)) as client:
        yield Api(client, settings)


@contextlib.contextmanager
def serving_with(folder: Path, *files: str) -> Iterator[Api]:
    """The real app on a fresh data directory in `folder`, with these shared CSVs uploaded once:
    for a module's tests that only read."""
    with serving(make_settings(folder)) as app:
        for name in files:
            app.upload_ok(DATA / name)
        yield app


def ingested(content: bytes | Path, folder: Path, dataset_id: str) -> Source:
    """A file parsed as an upload is parsed (the worker's `connectors.ingest`, run in this process) into
    a Parquet file in `folder`: the engine's `Source` of dataset `dataset_id`, version 1. For testing
    the engine's operations in-process, where their semantics live, without an app."""
    if isinstance(content, Path):
        raw = content
    else:
        raw = folder / f"{dataset_id}.csv"
        raw.write_bytes(content)
    defaults = Settings(sources="", plugins="")
    limits = IngestLimits(
        max_columns=defaults.max_columns,
        max_rows=defaults.max_rows,
        xlsx_max_uncompressed=defaults.xlsx_max_uncompressed_mb * 1024 * 1024,
        xlsx_max_ratio=defaults.xlsx_max_ratio,
        xlsx_max_entries=defaults.xlsx_max_entries,
    )
    out = folder / f"{dataset_id}.parquet"
    ingest(raw, sniff(raw, raw.name, limits), out, limits)
    return Source(dataset_id, 1, out)


def staged_files(data_dir: Path) -> list[Path]:
    """The files in `data_dir`'s staging folder, in any process's staging area (`staging/<process>/`;
    a running process's empty area is no leftover)."""
    staging = data_dir / "staging"
    return sorted(p for p in staging.rglob("*") if p.is_file()) if staging.exists() else []


def as_json(value: Any) -> Any:
    """`value` as a client receives it: through the app's JSON encoding (NaN as null, dates as ISO text)."""
    return jsonutil.loads(jsonutil.dumps(value))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(work: Path, *args: str, env: dict[str, str] | None = None, workers: int | None = 1) -> Iterator[str]:
    """A real `datagraph serve` under uvicorn on loopback, as a user starts it; yields its base URL.
    It has `workers` worker processes, started with it and never stopped for idleness (None: as the
    environment or the defaults say: started on demand, stopped when idle)."""
    port = free_port()
    log = open(work / "server.log", "w")  # noqa: SIM115 - closed below
    pool = ["--workers", str(workers), "--worker-idle-s", "0"] if workers is not None else []
    if not any(a.startswith("--join-max-rows") for a in args):  # as make_settings: heavy joins allowed
        pool += ["--join-max-rows", str(UNGUARDED["join_max_rows"])]
    command = [str(ROOT / ".venv/bin/datagraph"), "serve", "--port", str(port), "--data-dir", str(work / "data")]
    proc = subprocess.Popen(
        [*command, *pool, *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=work,
        env={**os.environ, **(env or {})},
    )
    base = f"http://127.0.0.1:{port}"
    _SERVER_PIDS[base] = proc.pid
    SWEEP.serving(base)
    try:
        wait_until_serving(base, work / "server.log")
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # say where it hangs (the server dumps its threads on SIGUSR1)
            os.kill(proc.pid, signal.SIGUSR1)
            time.sleep(1)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            pytest.fail("the server did not stop within 10 s of SIGTERM:\n" + (work / "server.log").read_text()[-6000:])
        finally:
            log.close()


@contextlib.contextmanager
def entered_together(*managers: contextlib.AbstractContextManager[Any]) -> Iterator[list[Any]]:
    """Enter `managers` at once, each in a thread of its own (independent servers that start side by
    side: their imports and worker spawns overlap), yield what each gave, and leave them all. When
    one fails to enter, those that entered are left and its error is raised."""
    with contextlib.ExitStack() as stack:
        with concurrent.futures.ThreadPoolExecutor(len(managers)) as pool:
            futures = [pool.submit(manager.__enter__) for manager in managers]
        values: list[Any] = []
        error: BaseException | None = None
        for manager, future in zip(managers, futures, strict=True):
            try:
                values.append(future.result())
            except BaseException as exc:  # pytest.fail's Failed too
                error = error or exc
            else:
                stack.push(manager)
        if error is not None:
            raise error
        yield values


PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def scratch_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (the metadata store of several server processes); its
    SQLAlchemy URL. Dropped afterwards, whoever is still connected. Skips, or under CI fails, when
    PostgreSQL is not running."""
    require_service(5432, "PostgreSQL")
    name = f"dg_scratch_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
        admin.dispose()


@contextlib.contextmanager
def scratch_schema(dialect: str, prefix: str) -> Iterator[tuple[sa.Engine, str]]:
    """An engine on the test database of `dialect` ("postgresql" or "mysql") and a new, empty schema
    in it (a MariaDB database), named from `prefix`; dropped afterwards. Skips, or under CI fails,
    when the database is not running."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    if dialect == "postgresql":
        require_service(5432, "PostgreSQL")
        engine = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test")
        create, drop = f"CREATE SCHEMA {name}", f"DROP SCHEMA {name} CASCADE"
    else:
        require_service(3306, "MariaDB")
        engine = sa.create_engine("mysql+pymysql://root@127.0.0.1:3306/test")
        create, drop = f"CREATE DATABASE {name}", f"DROP DATABASE {name}"
    with engine.begin() as conn:
        conn.exec_driver_sql(create)
    try:
        yield engine, name
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(drop)
        engine.dispose()


@contextlib.contextmanager
def fresh_redis(url: str) -> Iterator[Any]:
    """A client of the Redis database at `url`, emptied before and after (skips, or under CI fails,
    when Redis is not running)."""
    import redis

    require_service(6379, "Redis")
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


def wait_for(check: Callable[[], Any], seconds: float, what: str, *, every: float = 0.05) -> Any:
    """Poll `check` until it returns something true, and return that; fail naming `what` after
    `seconds` (a generous bound on a busy machine: tests assert what happens, not how fast)."""
    deadline = time.monotonic() + seconds
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what} (waited {seconds:g} s)"
        time.sleep(every)
    return value


def wait_until_serving(base: str, log: Path, seconds: float = 60) -> None:
    """Return once the server at `base` answers /healthz; fail with its log after `seconds` (a bound
    for a machine whose cores other work shares: a start is some seconds of imports, many times that
    when the machine is busy)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    pytest.fail("the server did not answer /healthz: " + log.read_text())


_SERVER_PIDS: dict[str, int] = {}


def server_pid(base: str) -> int:
    """The pid of the `datagraph serve` that `running_server` started at `base`."""
    return _SERVER_PIDS[base]


def upload_over_http(base: str, path: Path, headers: dict[str, str] | None = None) -> str:
    """Upload a file to a running server over HTTP; return the dataset id."""
    response = httpx.post(
        base + "/graphql", **upload_request(path.read_bytes(), path.name, headers=headers), timeout=60
    )
    payload = response.json()["data"]["uploadDataset"]
    assert payload["success"], payload
    dataset_id: str = payload["dataset"]["id"]
    return dataset_id


def datagraph_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the `datagraph` command with `args`, as a user does; its output is captured as text."""
    return subprocess.run(
        [str(ROOT / ".venv/bin/datagraph"), *args], capture_output=True, text=True, timeout=60, check=check
    )


def datagraph_main(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The `datagraph` command's own `main` with `args`, run in this process, its output captured as
    text and its exit turned into a return code as the interpreter would (`sys.exit("message")`: the
    message on stderr, code 1): for a test that runs the command many times, where each process start
    (about 2 s of imports) proves nothing new once one run by `datagraph_cli` has shown the installed
    command works."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli_main(list(args))
        except SystemExit as exc:
            if isinstance(exc.code, str):
                print(exc.code, file=err)
                code = 1
            else:
                code = exc.code or 0
    done = subprocess.CompletedProcess(["datagraph", *args], code, out.getvalue(), err.getvalue())
    if check:
        done.check_returncode()
    return done


def create_key(data_dir: Path, name: str) -> str:
    """Make an API key called `name` with `datagraph keys create`; return the key it printed."""
    out = datagraph_cli("keys", "create", "--name", name, "--data-dir", str(data_dir)).stdout
    key = out.strip().splitlines()[-1]
    assert key.startswith(KEY_PREFIX) and len(key) > 40, out
    return key


def add_key(data_dir: Path, name: str) -> str:
    """An API key called `name`, recorded as `datagraph keys create` records it (hashed, in the data
    directory's metadata store) but in this process: for tests where the key is only a means (the
    command itself is tested with `create_key`, and costs a process start)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    store = MetadataStore(Settings(data_dir=data_dir, sources="", plugins="").resolved_metadata_url)
    try:
        key = new_key()
        assert store.add_key(name, hash_key(key)), f"there is already a key called {name!r}"
    finally:
        store.close()
    return key


def require(missing: str | None, *, ci: str | None = None) -> None:
    """Nothing when `missing` is None; else skip, saying what is missing, or under CI (which
    provides everything) fail instead, saying also `ci`: how CI gets it."""
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{missing}, and CI needs it" + (f" ({ci})" if ci else ""))
    pytest.skip(missing)


def require_service(port: int, name: str) -> None:
    """Skip unless `name` listens on 127.0.0.1:`port`; under CI a missing service fails instead."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        require(f"{name} is not running on 127.0.0.1:{port}", ci=".ci/run starts it")
