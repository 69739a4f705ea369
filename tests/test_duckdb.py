"""DuckDB files as database sources: what is DuckDB's own. The guard and pushdown tests every
database passes run on DuckDB in test_sqlguard*, test_pushdown* and test_sources; here: the file is
only ever read (a write refused by the guard and, under it, by the connection), files and the
network are out of reach, a missing, foreign or locked file answers a Problem without its path,
and another process may read the file at the same time, or write it between our queries."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from support import make_settings, running_server, serving

from connectors import databases
from connectors.linked import LinkedTable
from connectors.sources import DatabaseConfig, SourcesError, load_sources
from connectors.sqlguard import check_select
from datagraph.errors import BadInput, DatagraphError, ReadOnly, SourceUnavailable, TooLarge
from engine import Aggregation, Condition, Filter, GroupBy, Sort, SortKey

SQL = "query($s: ID!, $q: String!) { sql(source: $s, query: $q) { success data error { code message } } }"


def _make(path: Path, *statements: str) -> Path:
    with duckdb.connect(str(path)) as conn:
        for statement in statements:
            conn.execute(statement)
    return path


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DuckDB file beside a CSV the server must never read."""
    folder = tmp_path_factory.mktemp("duckshop")
    (folder / "secret.csv").write_text("password\nhunter2\n")
    return _make(
        folder / "shop.duckdb",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, item VARCHAR, total DECIMAL(8, 2), sold_at TIMESTAMP)",
        "INSERT INTO orders VALUES (1, 'tea', 3.50, '2024-03-01 10:00'), (2, 'cake', 4.25, '2024-03-01 11:30'),"
        " (3, 'tea', 3.50, '2024-03-02 09:15')",
        "CREATE VIEW tea AS SELECT * FROM orders WHERE item = 'tea'",
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')",
        "CREATE TABLE odd (h HUGEINT, m mood, ns TIMESTAMP_NS, f FLOAT, l INTEGER[], s STRUCT(a INTEGER))",
        "INSERT INTO odd VALUES (170141183460469231731687303715884105727, 'happy', '2024-01-01 00:00:00.123456789',"
        " 0.1, [1, 2], {'a': 1}), (1, 'sad', NULL, NULL, NULL, NULL)",
        "CREATE TABLE big AS SELECT range AS n, repeat('x', 100) AS s FROM range(1000)",
    )


def _config(
    path: Path | str, source_id: str = "duck", tables: tuple[str, ...] | None = None, **more: Any
) -> DatabaseConfig:
    return DatabaseConfig(
        id=source_id, name=source_id, kind="duckdb", url=f"duckdb:///{path}", schema="main", tables=tables,
        **{"statement_timeout_s": 5, "pool_size": 1, **more},
    )  # fmt: skip


def _state(folder: Path) -> dict[str, str]:
    """Every file in the folder and a digest of its bytes: the file, and nothing written beside it."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def cfg(shop: Path) -> Iterator[DatabaseConfig]:
    yield _config(shop)
    databases.dispose_engines()


# ---- sources.yaml ---------------------------------------------------------------------------------------------


def test_a_duckdb_source_names_its_file_relative_to_sources_yaml(tmp_path: Path) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text("sources:\n  shop: {kind: duckdb, url: 'duckdb:///data/shop.duckdb', tables: [Orders]}\n")
    (shop,) = load_sources(path, {})
    assert shop.url == f"duckdb:///{(tmp_path / 'data' / 'shop.duckdb').resolve()}"
    assert (shop.schema, shop.dialect, shop.sql_schema) == ("main", "duckdb", "main")
    # DuckDB's names are case-blind, quoted or not: the allowlist is too.
    assert shop.allowed_tables == frozenset({"main.orders"}) and shop.allows("ORDERS") and not shop.allows("items")


@pytest.mark.parametrize(
    "url",
    ["duckdb:///:memory:", "duckdb://", "duckdb:///shop.duckdb?access_mode=read_write", "md:shop", "sqlite:///x.db"],
)
def test_a_duckdb_url_must_name_a_file_and_nothing_else(tmp_path: Path, url: str) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text(f"sources:\n  shop: {{kind: duckdb, url: '{url}'}}\n")
    with pytest.raises(SourcesError, match=r"sources\.shop\.url"):
        load_sources(path, {})


def test_memory_limit_is_a_duckdb_key(tmp_path: Path) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text(
        "sources:\n  a: {kind: duckdb, url: 'duckdb:///a.duckdb', memory_limit_mb: 256}\n  b: {kind: duckdb, url: 'duckdb:///b.duckdb'}\n"
    )
    assert [s.memory_limit_mb for s in load_sources(path, {})] == [256, 2048]
    path.write_text("sources:\n  pg: {kind: postgresql, url: 'postgresql://u@h/db', memory_limit_mb: 256}\n")
    with pytest.raises(SourcesError, match=r"sources\.pg\.memory_limit_mb: only a duckdb source"):
        load_sources(path, {})


# ---- read-only, twice over ------------------------------------------------------------------------------------

WRITES = [
    "INSERT INTO main.orders VALUES (9, 'x', 1, NULL)",
    "UPDATE main.orders SET total = 0",
    "DELETE FROM main.orders",
    "CREATE TABLE main.stolen AS SELECT * FROM main.orders",
    "DROP TABLE main.orders",
    "ALTER TABLE main.orders ADD COLUMN x INTEGER",
]
OUTSIDE = [
    "COPY main.orders TO '{folder}/out.csv'",
    "EXPORT DATABASE '{folder}/dump'",
    "ATTACH '{folder}/other.duckdb' AS other",
    "SELECT * FROM read_csv('{folder}/secret.csv')",
    "SELECT * FROM '{folder}/secret.csv'",
    "SELECT * FROM glob('{folder}/*')",
    "SELECT * FROM read_text('{folder}/secret.csv')",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "SET threads = 64",
    "PRAGMA memory_limit = '100GB'",
]


@pytest.mark.parametrize("statement", WRITES + OUTSIDE)
def test_a_hand_crafted_write_or_read_outside_is_refused_by_the_guard_and_by_the_connection(
    cfg: DatabaseConfig, shop: Path, statement: str
) -> None:
    text = statement.format(folder=shop.parent)
    before = _state(shop.parent)
    with pytest.raises((ReadOnly, BadInput)):  # layer 1: the guard
        check_select(text, dialect="duckdb", default_schema="main", allowed_tables=None)
    # Layer 2: sent as it is, past the guard, the connection itself refuses it.
    with pytest.raises(DatagraphError) as refused, databases.read_only(cfg) as conn:
        conn.exec_driver_sql(text).fetchall()
    assert isinstance(refused.value, ReadOnly), (type(refused.value).__name__, refused.value.message)
    assert str(shop.parent) not in refused.value.message and "hunter2" not in refused.value.message
    assert _state(shop.parent) == before
    assert databases.query_rows(cfg, "SELECT count(*) AS n FROM main.orders", 10).records == [{"n": 3}]


def test_a_query_past_the_memory_limit_is_too_large_and_the_next_one_runs(shop: Path) -> None:
    """One hostile query cannot take the worker's memory: DuckDB stops at the source's limit (and
    spills nothing to disk beside the file)."""
    cfg = _config(shop, "tight", memory_limit_mb=128, statement_timeout_s=60)
    before = _state(shop.parent)
    hog = check_select(
        "SELECT list(a.s || b.s) AS l FROM big a, big b, big c", dialect="duckdb", default_schema="main",
        allowed_tables=None, limit=10,
    ).sql  # fmt: skip
    try:
        with pytest.raises(TooLarge, match=r"more memory than the source allows \(128 MiB, memory_limit_mb"):
            databases.query_rows(cfg, hog, 10)
        assert databases.query_rows(cfg, "SELECT count(*) AS n FROM main.big", 10).records == [{"n": 1000}]
    finally:
        databases.dispose_engines()
    assert _state(shop.parent) == before


def test_tables_views_snapshot_and_odd_types(cfg: DatabaseConfig, tmp_path: Path) -> None:
    # The file's own tables and views, not DuckDB's catalogue views.
    assert databases.list_tables(cfg) == ["big", "odd", "orders", "tea"]
    assert databases.list_tables(_config(cfg.url.removeprefix("duckdb:///"), tables=("ORDERS",))) == ["orders"]
    rows, columns = databases.snapshot(
        cfg, "SELECT * FROM main.orders ORDER BY id", tmp_path / "o.parquet", batch_rows=2, max_rows=100
    )
    assert rows == 3 and [c.name for c in columns] == ["id", "item", "total", "sold_at"]
    # Types a fetch changes or SQL compares otherwise are fetched, never pushed.
    odd = LinkedTable("duck", "odd", cfg, max_rows=100)
    frame, remaining = odd.scan((Sort((SortKey("h"),)),))
    assert remaining == (Sort((SortKey("h"),)),)
    fetched = frame.collect()
    assert fetched.height == 2 and set(fetched["m"].to_list()) == {"happy", "sad"}


def test_a_linked_duckdb_table_pushes_filters_groups_and_counts(cfg: DatabaseConfig) -> None:
    orders = LinkedTable("duck", "orders", cfg, max_rows=100)
    steps: tuple[Any, ...] = (
        Filter((Condition("item", "EQ", "tea"),)),
        GroupBy(("item",), (Aggregation("total", "SUM"), Aggregation("id", "COUNT"))),
    )
    sql, pushed = orders.sql(steps)
    assert pushed == 2 and "GROUP BY" in sql and "tea" not in sql
    frame, remaining = orders.scan(steps)
    assert remaining == () and frame.collect().to_dicts() == [{"item": "tea", "total_sum": 7.0, "id_count": 2}]
    assert orders.count(steps[:1]) == 2


# ---- files that will not open -----------------------------------------------------------------------------------

_HOLD = textwrap.dedent(
    """
    import sys, duckdb
    conn = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "ro")
    conn.execute("SELECT count(*) FROM main.orders").fetchall()
    print("holding", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    """
)


@pytest.fixture
def holder() -> Iterator[Any]:
    """Another process holding a DuckDB file open, as a writer ("rw") or a reader ("ro"), until released."""
    started: list[subprocess.Popen[str]] = []

    def hold(path: Path, mode: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD, str(path), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
        return proc

    yield hold
    for proc in started:
        if proc.poll() is None:
            proc.communicate("", timeout=30)


def _release(proc: subprocess.Popen[str]) -> None:
    proc.communicate("", timeout=30)


def test_missing_foreign_and_locked_files_answer_a_problem_without_their_path(
    tmp_path: Path, shop: Path, holder: Any
) -> None:
    locked = _make(tmp_path / "locked.duckdb", "CREATE TABLE orders (id INTEGER)")
    (tmp_path / "notes.duckdb").write_text("not a database at all\n" * 100)
    sqlite = tmp_path / "shop.sqlite"
    import sqlite3

    with sqlite3.connect(sqlite) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER)")
    (tmp_path / "folder.duckdb").mkdir()
    files = {
        "shop": (shop, None),
        "missing": (tmp_path / "gone.duckdb", "does not exist"),
        "text": (tmp_path / "notes.duckdb", "not a DuckDB database"),
        "sqlite": (sqlite, "not a DuckDB database"),
        "folder": (tmp_path / "folder.duckdb", "not a file"),
        "locked": (locked, "locked by a process writing to it"),
    }
    sources = tmp_path / "sources.yaml"
    sources.write_text(
        "sources:\n"
        + "".join(
            f"  {name}: {{kind: duckdb, url: 'duckdb:///{path}', tables: [orders]}}\n"
            for name, (path, _) in files.items()
        )
    )
    writer = holder(locked, "rw")
    with serving(make_settings(tmp_path, sources=str(sources))) as api:
        for name, (path, why) in files.items():
            source = api.data('{ source(id: "%s") { status problem { code message } } }' % name)["source"]
            answer = api.data(SQL, {"s": name, "q": "SELECT count(*) AS n FROM orders"})["sql"]
            if why is None:  # the other sources keep working
                assert source == {"status": "OK", "problem": None} and answer["data"] == [{"n": 3}]
                hidden = api.data(SQL, {"s": name, "q": "SELECT * FROM odd"})["sql"]
                assert hidden["error"]["code"] == "READ_ONLY"
                continue
            assert source["status"] == "UNREACHABLE" and source["problem"]["code"] == "SOURCE_UNAVAILABLE", source
            assert answer["error"]["code"] == "SOURCE_UNAVAILABLE", answer
            for message in (source["problem"]["message"], answer["error"]["message"]):
                assert f'"{name}"' in message and why in message, message
                assert str(tmp_path) not in message and path.name not in message and "/" not in message
        _release(writer)  # the writer is done: the file answers at once
        fresh = api.data('mutation { checkSource(id: "locked") { success source { status } } }')["checkSource"]
        assert fresh == {"success": True, "source": {"status": "OK"}}


def test_another_process_reads_the_file_at_the_same_time_and_a_writer_gets_it_between_queries(
    cfg: DatabaseConfig, shop: Path, holder: Any
) -> None:
    """A second server on the same file opens it read-only too: both read at once. Neither keeps
    the file between queries, so its owner can write it then."""
    reader = holder(shop, "ro")  # another process, reading, holding its connection open
    assert databases.query_rows(cfg, "SELECT count(*) AS n FROM main.orders", 10).records == [{"n": 3}]
    # While another process holds it, no writer can have it (DuckDB's own lock) ...
    with pytest.raises(duckdb.IOException):
        duckdb.connect(str(shop)).close()
    _release(reader)
    # ... and we do not hold it: after our query, a writer in another process opens it at once.
    write = subprocess.run(
        [sys.executable, "-c", "import sys, duckdb; duckdb.connect(sys.argv[1]).execute('CHECKPOINT')", str(shop)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert write.returncode == 0, write.stderr[-500:]
    assert databases.query_rows(cfg, "SELECT count(*) AS n FROM main.orders", 10).records == [{"n": 3}]


@pytest.mark.slow  # two real servers
def test_two_server_processes_read_one_file_at_the_same_time(tmp_path: Path, shop: Path) -> None:
    """Two `datagraph serve` processes on one sources.yaml (each its own data directory) query the
    file at once, in turn and together; each links and snapshots it; the file stays as it was."""
    from concurrent.futures import ThreadPoolExecutor

    sources = tmp_path / "sources.yaml"
    sources.write_text(f"sources:\n  shop: {{kind: duckdb, url: 'duckdb:///{shop}', tables: [orders, big]}}\n")
    before = _state(shop.parent)
    query = {"query": SQL, "variables": {"s": "shop", "q": "SELECT count(*) AS n FROM big a, big b"}}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        running_server(tmp_path / "a", "--sources", str(sources)) as a,
        running_server(tmp_path / "b", "--sources", str(sources)) as b,
    ):

        def ask(base: str) -> Any:
            return httpx.post(base + "/graphql", json=query, timeout=60).json()["data"]["sql"]

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(ask, [a, b] * 3))
        assert all(x["data"] == [{"n": 1_000_000}] for x in answers), answers
        imports = 'mutation($m: ImportMode!) { importTable(source: "shop", table: "orders", mode: $m) {'
        imports += " success dataset { rowCount } } }"
        for base in (a, b):
            for mode in ("LINK", "SNAPSHOT"):
                body = {"query": imports, "variables": {"m": mode}}
                made = httpx.post(base + "/graphql", json=body, timeout=60).json()["data"]["importTable"]
                assert made == {"success": True, "dataset": {"rowCount": 3}}, made
    assert _state(shop.parent) == before


def test_an_unopenable_file_is_source_unavailable_for_the_connector_too(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "gone.duckdb", "gone")
    try:
        with pytest.raises(SourceUnavailable, match='"gone" cannot be opened: its file does not exist'):
            databases.ping(cfg)
        with pytest.raises(SourceUnavailable):
            databases.list_tables(cfg)
    finally:
        databases.dispose_engines()
    assert not (tmp_path / "gone.duckdb").exists()  # opening read-only never creates the file
