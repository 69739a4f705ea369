"""Database sources: sources.yaml, status, tables, read-only SQL and snapshot imports, against the
shipped SQLite example, the real PostgreSQL and MariaDB on the machine (a schema and a
SELECT-only user of their own per run) and a DuckDB file made for the run."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient
from support import DATA, ROOT, Api, free_port, make_settings, require_service, serving
from tcpproxy import TcpProxy

from connectors.sources import DatabaseConfig, SourcesError, load_sources
from server.app import create_app

TIPS = pd.read_csv(DATA / "tips.csv")
RESULT = "success data error { code message } meta { rowCount truncated columns { name dtype } }"
PAYLOAD = "success error { code message } dataset { id name rowCount source { id kind } } job { kind status rowsOut }"
RUN = uuid.uuid4().hex[:8]
READER = f"dg_reader_{RUN}"


# ---- sources.yaml ----------------------------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(text)
    return path


def test_a_valid_file_becomes_frozen_configs_with_variables_from_the_environment(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
sources:
  shop:
    kind: postgresql
    url: postgresql://${U}:${P}@127.0.0.1:5432/shop
    tables: [Orders, customers]
    statement_timeout_s: 5
  crm: {kind: mysql, url: "mysql://root@127.0.0.1:3306/crm"}
  local: {kind: sqlite, url: "sqlite:///db/local.sqlite"}
""",
    )
    shop, crm, local = load_sources(path, {"U": "alice", "P": "s3cret"})
    assert shop.url == "postgresql+psycopg://alice:s3cret@127.0.0.1:5432/shop"
    assert shop.schema == "public" and shop.tables == ("Orders", "customers") and shop.statement_timeout_s == 5
    assert crm.url.startswith("mysql+pymysql://") and crm.schema == "crm" and crm.tables is None
    assert local.url == f"sqlite:///{(tmp_path / 'db' / 'local.sqlite').resolve()}"
    assert "s3cret" not in repr(shop)
    with pytest.raises(AttributeError):
        shop.url = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("sources:\n  shop: {kind: oracle, url: 'oracle://u:s3cret@h/db'}\n", "sources.shop.kind"),
        ("sources:\n  shop: {kind: postgresql}\n", "sources.shop.url"),
        (
            "sources:\n  shop: {kind: postgresql, url: 'postgresql://u:s3cret@h/db', colour: red}\n",
            "sources.shop.colour",
        ),
        (
            "sources:\n  shop: {kind: postgresql, url: 'postgresql://u:s3cret@h/db', pool_size: 0}\n",
            "sources.shop.pool_size",
        ),
        ("sources:\n  shop: {kind: mysql, url: 'postgresql://u:s3cret@h/db'}\n", "sources.shop.url"),
        ("sources:\n  shop: {kind: mysql, url: 'mysql://u:s3cret@h:port/db'}\n", "sources.shop.url"),
        ("sources:\n  shop: {kind: postgresql, url: 'postgresql://u:${NOPE}@h/db'}\n", "NOPE"),
        ("sources:\n  uploads: {kind: sqlite, url: 'sqlite:///x.db'}\n", "sources.uploads"),
        ("sources:\n  shop: [kind, postgresql\n", "line"),
        ("databases: {}\n", "databases"),
    ],
)
def test_a_bad_file_is_refused_with_a_message_naming_the_key_and_no_secret(
    tmp_path: Path, text: str, named: str
) -> None:
    with pytest.raises(SourcesError) as caught:
        load_sources(_write(tmp_path, text), {})
    message = str(caught.value)
    assert message.startswith("sources.yaml: ") and named in message, message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    ("url", "schema"),
    [
        ("mysql://u:s3cret@db.example:3306", "mysql"),  # no database: the fallback, never the credentials
        ("mysql://u:s3cret@db.example:3306/", "mysql"),
        ("mysql://u:s3cret@db.example/crm?charset=utf8mb4", "crm"),
        ("mariadb://u:pa/ss@db.example:3306/crm", "crm"),
        ("mysql://u:s3cret@db.example/my%2Dcrm", "my-crm"),
    ],
)
def test_a_mysql_schema_is_the_database_the_url_names(tmp_path: Path, url: str, schema: str) -> None:
    (crm,) = load_sources(_write(tmp_path, f"sources:\n  crm: {{kind: mysql, url: '{url}'}}\n"), {})
    assert crm.schema == schema


def test_the_allowlist_is_qualified_once_for_every_use(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
sources:
  shop: {kind: postgresql, url: "postgresql://u@h/shop", schema: sales, tables: [Orders, sales.customers, hr.staff]}
  crm: {kind: mysql, url: "mysql://u@h/crm"}
  local: {kind: sqlite, url: "sqlite:///local.sqlite", tables: [orders]}
""",
    )
    shop, crm, local = load_sources(path, {})
    assert shop.allowed_tables == frozenset({"sales.Orders", "sales.customers", "hr.staff"})
    assert crm.allowed_tables is None and local.allowed_tables == frozenset({"main.orders"})
    assert (shop.sql_schema, crm.sql_schema, local.sql_schema) == ("sales", "crm", None)


def test_the_server_does_not_start_on_a_bad_sources_file(tmp_path: Path) -> None:
    bad = _write(tmp_path, "sources:\n  shop: {kind: postgresql, url: 'postgresql://u:s3cret@h/db', pool: 3}\n")
    args = ["serve", "--sources", str(bad), "--data-dir", str(tmp_path / "d"), "--port", str(free_port())]
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode != 0
    assert "sources.shop.pool" in done.stderr and "s3cret" not in done.stderr + done.stdout


# ---- the shipped example (SQLite) ------------------------------------------------------------------------------


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Api]:
    settings = make_settings(tmp_path, sources=str(ROOT / "sources.yaml"))
    with TestClient(create_app(settings)) as client:
        yield Api(client, settings)


def test_the_shipped_sources_file_works_out_of_the_box(shop: Api) -> None:
    got = shop.data("{ sources { id kind status problem { code } tables } }")["sources"]
    by_id = {s["id"]: s for s in got}
    assert by_id["shop"] == {
        "id": "shop",
        "kind": "DATABASE",
        "status": "OK",
        "problem": None,
        "tables": ["customers", "orders"],
    }
    assert by_id["uploads"]["tables"] == []
    answer = shop.data(
        '{ sql(source: "shop", query: "SELECT status, count(*) AS n FROM orders GROUP BY status ORDER BY status") { %s } }'
        % RESULT
    )["sql"]
    assert answer["success"], answer["error"]
    assert sum(r["n"] for r in answer["data"]) == 500
    assert [c["name"] for c in answer["meta"]["columns"]] == ["status", "n"]


def test_a_table_imported_from_the_example_is_a_dataset_like_any_other(shop: Api) -> None:
    payload = shop.data('mutation { importTable(source: "shop", table: "orders") { %s } }' % PAYLOAD)["importTable"]
    assert payload["success"], payload["error"]
    assert payload["dataset"]["rowCount"] == 500 and payload["dataset"]["source"] == {"id": "shop", "kind": "DATABASE"}
    assert payload["job"] == {"kind": "importTable", "status": "SUCCEEDED", "rowsOut": 500}
    dataset = payload["dataset"]["id"]
    total = shop.data(
        '{ dataset(id: "%s") { groupBy(by: ["status"], aggregations: [{column: "amount", fn: SUM}]) { rows { data } } } }'
        % dataset
    )
    rows = total["dataset"]["groupBy"]["rows"]["data"]
    direct = shop.data(
        '{ sql(source: "shop", query: "SELECT status, sum(amount) AS s FROM orders GROUP BY status") { data } }'
    )["sql"]["data"]
    assert {r["status"]: round(r["amount_sum"], 6) for r in rows} == {r["status"]: round(r["s"], 6) for r in direct}
    listed = shop.data('{ source(id: "shop") { datasets { id } } }')["source"]["datasets"]
    assert listed == [{"id": dataset}]


def test_import_refuses_a_table_outside_the_allowlist_and_an_unknown_source(shop: Api) -> None:
    payload = shop.data('mutation { importTable(source: "shop", table: "sqlite_master") { %s } }' % PAYLOAD)[
        "importTable"
    ]
    assert payload["error"]["code"] == "NOT_FOUND" and "sqlite_master" in payload["error"]["message"]
    payload = shop.data('mutation { importTable(source: "nope", table: "orders") { %s } }' % PAYLOAD)["importTable"]
    assert payload["error"]["code"] == "NOT_FOUND" and "nope" in payload["error"]["message"]
    both = shop.data('mutation { importTable(source: "shop", table: "orders", query: "SELECT 1") { %s } }' % PAYLOAD)
    assert both["importTable"]["error"]["code"] == "BAD_INPUT"
    assert shop.data("{ datasets { id } }")["datasets"] == []
    assert shop.data("{ jobs { kind } }")["jobs"] == []  # refused before any work started


def test_sql_caps_rows_and_says_truncated(shop: Api) -> None:
    answer = shop.data('{ sql(source: "shop", query: "SELECT id FROM orders ORDER BY id", limit: 7) { %s } }' % RESULT)[
        "sql"
    ]
    assert [r["id"] for r in answer["data"]] == list(range(1, 8)) and answer["meta"]["truncated"] is True
    whole = shop.data('{ sql(source: "shop", query: "SELECT id FROM customers") { %s } }' % RESULT)["sql"]
    assert whole["meta"]["rowCount"] == 50 and whole["meta"]["truncated"] is False
    over = shop.data('{ sql(source: "shop", query: "SELECT 1", limit: 1000000) { %s } }' % RESULT)["sql"]
    assert over["error"]["code"] == "BAD_INPUT" and "rows_max" in over["error"]["message"]


# ---- PostgreSQL and MariaDB -----------------------------------------------------------------------------------

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MY_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/test"


def _load_tips(conn: sa.Connection, table: str) -> None:
    conn.exec_driver_sql(
        f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, total_bill NUMERIC(8,2), tip DOUBLE PRECISION, sex VARCHAR(10),"
        " smoker VARCHAR(5), day VARCHAR(5), time VARCHAR(10), size INTEGER)"
    )
    rows = [
        {"id": i, **{k: (None if pd.isna(v) else v) for k, v in r.items()}}
        for i, r in enumerate(TIPS.to_dict("records"))
    ]
    conn.execute(
        sa.text(f"INSERT INTO {table} VALUES (:id, :total_bill, :tip, :sex, :smoker, :day, :time, :size)"),
        rows,
    )


@pytest.fixture(scope="module")
def pg() -> Iterator[dict[str, Any]]:
    """A schema with tips and a secret table, and a role that may only read tips."""
    require_service(5432, "PostgreSQL")
    schema = f"dg_{RUN}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        _load_tips(conn, f"{schema}.tips")
        conn.exec_driver_sql(f"CREATE TABLE {schema}.secrets (v TEXT)")
        conn.exec_driver_sql(f"INSERT INTO {schema}.secrets VALUES ('hidden')")
        conn.exec_driver_sql(f"CREATE ROLE {READER} LOGIN")
        conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA {schema} TO {READER}")
        conn.exec_driver_sql(f"GRANT SELECT ON {schema}.tips TO {READER}")
    try:
        yield {
            "admin": admin,
            "schema": schema,
            "url": f"postgresql://{READER}@127.0.0.1:5432/test",
            "kind": "postgresql",
        }
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
            conn.exec_driver_sql(f"DROP ROLE {READER}")
        admin.dispose()


@pytest.fixture(scope="module")
def maria() -> Iterator[dict[str, Any]]:
    require_service(3306, "MariaDB")
    schema = f"dg_{RUN}"
    admin = sa.create_engine(MY_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {schema}")
        _load_tips(conn, f"{schema}.tips")
        conn.exec_driver_sql(f"CREATE TABLE {schema}.secrets (v TEXT)")
        conn.exec_driver_sql(f"INSERT INTO {schema}.secrets VALUES ('hidden')")
        for host in ("localhost", "127.0.0.1"):
            conn.exec_driver_sql(f"CREATE USER '{READER}'@'{host}'")
            conn.exec_driver_sql(f"GRANT SELECT ON {schema}.tips TO '{READER}'@'{host}'")
    try:
        yield {"admin": admin, "schema": schema, "url": f"mysql://{READER}@127.0.0.1:3306/{schema}", "kind": "mysql"}
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {schema}")
            for host in ("localhost", "127.0.0.1"):
                conn.exec_driver_sql(f"DROP USER '{READER}'@'{host}'")
        admin.dispose()


class _Committing:
    """A DuckDB engine whose connections commit (duckdb-engine has no AUTOCOMMIT), held only while used,
    so the server can open the file between the test's writes."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def connect(self) -> Any:
        return self.engine.begin()


@pytest.fixture(scope="module")
def duck(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A DuckDB file with tips and a secret table (a file has no users: the allowlist is its only guard)."""
    path = tmp_path_factory.mktemp("duck") / "tips.duckdb"
    writer = sa.create_engine(f"duckdb:///{path}", poolclass=sa.pool.NullPool)
    with writer.begin() as conn:
        _load_tips(conn, "main.tips")
        conn.exec_driver_sql("CREATE TABLE main.secrets (v TEXT)")
        conn.exec_driver_sql("INSERT INTO main.secrets VALUES ('hidden')")
    yield {"admin": _Committing(writer), "schema": "main", "url": f"duckdb:///{path}", "kind": "duckdb"}
    writer.dispose()


@pytest.fixture(scope="module", params=["pg", "maria", "duck"])
def db(request: pytest.FixtureRequest) -> dict[str, Any]:
    info: dict[str, Any] = request.getfixturevalue(request.param)
    return info


def _sources_file(tmp_path: Path, db: dict[str, Any], *, timeout_s: float = 5, extra: str = "") -> str:
    schema_line = f"    schema: {db['schema']}\n" if db["kind"] == "postgresql" else ""
    text = (
        "sources:\n"
        f"  live:\n    kind: {db['kind']}\n    url: {db['url']}\n{schema_line}"
        f"    statement_timeout_s: {timeout_s}\n"
        f"{extra}"
    )
    path = tmp_path / "sources.yaml"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, db: dict[str, Any]) -> Iterator[tuple[Api, dict[str, Any]]]:
    """One app per database for the module: its tests read the source (or link or snapshot it under
    names of their own), and those that try to change it assert it stayed as it was."""
    work = tmp_path_factory.mktemp(f"live-{db['kind']}")
    # A DuckDB file has no users or grants: its allowlist keeps the secrets out, as a grant does elsewhere.
    extra = "    tables: [tips]\n" if db["kind"] == "duckdb" else ""
    sources = _sources_file(work, db, timeout_s=2, extra=extra)
    settings = make_settings(work, sources=sources, worker_idle_s=0)  # warmed below
    with serving(settings) as api:
        api.warm_workers()  # the first test's 7 s client deadline is for its query, not the worker's start-up
        yield api, db


def _fingerprint(db: dict[str, Any]) -> tuple[Any, ...]:
    with db["admin"].connect() as conn:
        tips = conn.exec_driver_sql(f"SELECT count(*), sum(tip), sum(size) FROM {db['schema']}.tips").one()
        secrets = conn.exec_driver_sql(f"SELECT count(*) FROM {db['schema']}.secrets").scalar()
    return (*tuple(tips), secrets)


def _sql(api: Api, query: str, **kw: Any) -> dict[str, Any]:
    args = "".join(f", {k}: {v}" for k, v in kw.items())
    answer: dict[str, Any] = api.data(
        'query($q: String!) { sql(source: "live", query: $q%s) { %s } }' % (args, RESULT), {"q": query}
    )["sql"]
    return answer


def test_status_tables_and_a_select_match_pandas(live: tuple[Api, dict[str, Any]]) -> None:
    api, db = live
    source = api.data('{ source(id: "live") { kind status tables } }')["source"]
    assert source["kind"] == "DATABASE" and source["status"] == "OK"
    # The catalogue as the source's user sees it: PostgreSQL lists every table in the schema (reading
    # secrets is still refused), MariaDB only those the user has a grant on, DuckDB its allowlist.
    expected_tables = ["secrets", "tips"] if db["kind"] == "postgresql" else ["tips"]
    assert source["tables"] == expected_tables
    answer = _sql(api, "SELECT day, sum(tip) AS tips, count(*) AS n FROM tips GROUP BY day ORDER BY day")
    assert answer["success"], answer["error"]
    expected = TIPS.groupby("day")["tip"].agg(["sum", "count"]).sort_index()
    assert [r["day"] for r in answer["data"]] == list(expected.index)
    assert [round(r["tips"], 6) for r in answer["data"]] == [round(v, 6) for v in expected["sum"]]
    assert [r["n"] for r in answer["data"]] == list(expected["count"])


def test_a_schema_qualified_allowlist_entry_is_listed_queried_and_imported(tmp_path: Path, db: dict[str, Any]) -> None:
    # sql() always took "schema.table"; the catalogue once compared bare names only and left it out.
    extra = f"    tables: [{db['schema']}.tips]\n"
    settings = make_settings(tmp_path, sources=_sources_file(tmp_path, db, extra=extra))
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        assert api.data('{ source(id: "live") { tables } }')["source"]["tables"] == ["tips"]
        assert _sql(api, "SELECT count(*) AS n FROM tips")["data"] == [{"n": len(TIPS)}]
        assert _sql(api, "SELECT v FROM secrets")["error"]["code"] == "READ_ONLY"
        payload = api.data('mutation { importTable(source: "live", table: "tips") { %s } }' % PAYLOAD)["importTable"]
        assert payload["success"], payload["error"]
        assert payload["dataset"]["rowCount"] == len(TIPS)


def test_a_snapshot_import_holds_the_same_rows_as_the_table(live: tuple[Api, dict[str, Any]]) -> None:
    api, _ = live
    payload = api.data('mutation { importTable(source: "live", table: "tips", name: "Tips copy") { %s } }' % PAYLOAD)[
        "importTable"
    ]
    assert payload["success"], payload["error"]
    assert payload["dataset"]["rowCount"] == len(TIPS) and payload["dataset"]["name"] == "Tips copy"
    stats = api.data(
        '{ dataset(id: "%s") { describe(columns: ["total_bill", "tip"]) { data } } }' % payload["dataset"]["id"]
    )["dataset"]["describe"]["data"]
    by_column = {s["column"]: s for s in stats}
    assert by_column["total_bill"]["mean"] == pytest.approx(TIPS["total_bill"].mean())
    assert by_column["tip"]["std"] == pytest.approx(TIPS["tip"].std())
    from_query = api.data(
        'mutation($q: String!) { importTable(source: "live", query: $q) { %s } }' % PAYLOAD,
        {"q": "SELECT day, count(*) AS n FROM tips WHERE size > 2 GROUP BY day"},
    )["importTable"]
    assert from_query["success"], from_query["error"]
    assert from_query["dataset"]["rowCount"] == TIPS[TIPS["size"] > 2]["day"].nunique()


def test_a_query_past_the_statement_timeout_answers_timeout_and_the_pool_stays_healthy(
    live: tuple[Api, dict[str, Any]],
) -> None:
    api, db = live
    started = time.monotonic()
    more = ", tips e" if db["kind"] == "duckdb" else ""  # DuckDB counts billions of rows a second
    slow = _sql(api, f"SELECT count(*) AS n FROM tips a, tips b, tips c, tips d{more}")  # 3.5e9 rows
    assert slow["success"] is False and slow["error"]["code"] == "TIMEOUT", slow
    assert "2 s" in slow["error"]["message"]
    assert time.monotonic() - started < 10
    for _ in range(3):  # the pooled connections that timed out answer again
        again = _sql(api, "SELECT count(*) AS n FROM tips")
        assert again["data"] == [{"n": len(TIPS)}]
    assert _fingerprint(db)[0] == len(TIPS)


BAD_SQL = [
    "SELECT 1; DROP TABLE tips",
    "SELECT 1; DELETE FROM tips",
    "/* x */ DELETE FROM tips",
    "WITH x AS (DELETE FROM tips RETURNING *) SELECT * FROM x",
    "SELECT * INTO copy_of_tips FROM tips",
    "SELECT * FROM tips INTO OUTFILE '/tmp/x'",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT lo_import('/etc/passwd')",
    "SELECT LOAD_FILE('/etc/passwd')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT query_to_xml('DELETE FROM tips', true, true, '')",
    "SELECT * FROM dblink('dbname=test', 'DELETE FROM tips') AS t(x int)",
    "DO $$ BEGIN DELETE FROM tips; END $$",
    "CALL some_procedure()",
    "SELECT set_config('statement_timeout', '0', false)",
    "SET statement_timeout = 0",
    "SELECT * FROM tips FOR UPDATE",
    "SELECT 1 /*!50000 , LOAD_FILE('/etc/passwd') */",
    "SELECT pg_sleep(3600)",
    "SELECT SLEEP(3600)",
    "SELECT BENCHMARK(100000000, MD5('x'))",
    "SELECT * FROM generate_series(1, 1e12)",
    "SELECT * FROM pg_catalog.pg_authid",
    "SELECT * FROM mysql.user",
    "SELECT * FROM secrets",
    "SELECT * FROM information_schema.tables",
    "UPDATE tips SET tip = 0",
    "TRUNCATE tips",
    "DROP TABLE tips",
    "SELECT * FROM tips WHERE",
]


@pytest.mark.parametrize("query", BAD_SQL)
def test_bad_sql_is_refused_and_the_data_is_unchanged(live: tuple[Api, dict[str, Any]], query: str) -> None:
    api, db = live
    before = _fingerprint(db)
    answer = _sql(api, query)
    assert answer["success"] is False, answer
    assert answer["error"]["code"] in {"READ_ONLY", "BAD_INPUT"}, answer["error"]
    message = answer["error"]["message"]
    assert READER not in message and "127.0.0.1" not in message and "Traceback" not in message
    assert _fingerprint(db) == before


def test_the_databases_own_permissions_hold_under_the_guard(tmp_path: Path, db: dict[str, Any]) -> None:
    if db["kind"] == "duckdb":
        pytest.skip("a DuckDB file has no users or grants: the allowlist is its only permission")
    # An allowlist that names a table the database user may not read: the guard lets it through,
    # the SELECT-only grant stops it, and the answer is in our words.
    settings = make_settings(tmp_path, sources=_sources_file(tmp_path, db, extra="    tables: [tips, secrets]\n"))
    with TestClient(create_app(settings)) as client:
        answer = Api(client, settings).data('{ sql(source: "live", query: "SELECT v FROM secrets") { %s } }' % RESULT)[
            "sql"
        ]
    assert answer["error"]["code"] == "READ_ONLY" and "may not read" in answer["error"]["message"]
    assert "hidden" not in str(answer)


# ---- faults ----------------------------------------------------------------------------------------------------


def test_a_source_that_is_down_answers_quickly_and_the_others_keep_working(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens there
    (tmp_path / "sources.yaml").write_text(
        "sources:\n"
        f"  down: {{kind: postgresql, url: 'postgresql://someone:s3cret@127.0.0.1:{dead}/x'}}\n"
        f"  shop: {{kind: sqlite, url: 'sqlite:///{ROOT / 'examples' / 'shop.sqlite'}'}}\n"
    )
    settings = make_settings(tmp_path, sources=str(tmp_path / "sources.yaml"))
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        started = time.monotonic()
        answer = api.data('{ sql(source: "down", query: "SELECT 1") { %s } }' % RESULT)["sql"]
        assert time.monotonic() - started < 15  # a refused connection, not a wait for a timeout (loaded CI: seconds)
        assert answer["error"]["code"] == "SOURCE_UNAVAILABLE"
        assert "s3cret" not in str(answer) and str(dead) not in answer["error"]["message"]
        source = api.data('{ source(id: "down") { status problem { code message } tables } }')["source"]
        assert source["status"] == "UNREACHABLE" and source["problem"]["code"] == "SOURCE_UNAVAILABLE"
        assert source["tables"] == []
        checked = api.data('mutation { checkSource(id: "down") { success error { code } source { status } } }')
        assert checked["checkSource"] == {
            "success": False,
            "error": {"code": "SOURCE_UNAVAILABLE"},
            "source": {"status": "UNREACHABLE"},
        }
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["sources"] == {"down": "UNREACHABLE", "shop": "OK"}
        assert "s3cret" not in ready.text
        ok = api.data('{ sql(source: "shop", query: "SELECT count(*) AS n FROM orders") { data } }')["sql"]
        assert ok["data"] == [{"n": 500}]


def test_a_database_killed_mid_query_answers_unavailable_and_the_next_query_works(
    tmp_path: Path, pg: dict[str, Any]
) -> None:
    settings = make_settings(tmp_path, sources=_sources_file(tmp_path, pg, timeout_s=30))
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        assert _sql(api, "SELECT 1 AS one")["data"] == [{"one": 1}]

        import threading

        killed: list[int] = []

        def kill_when_running() -> None:
            # Terminate the reader's backend once its query is running (the database going away).
            deadline = time.monotonic() + 20
            while not killed and time.monotonic() < deadline:
                time.sleep(0.2)
                with pg["admin"].connect() as conn:
                    killed.extend(
                        conn.exec_driver_sql(
                            "SELECT pg_terminate_backend(pid)::int FROM pg_stat_activity"
                            f" WHERE usename = '{READER}' AND state = 'active' AND strpos(lower(query), 'count') > 0"
                        ).scalars()
                    )

        killer = threading.Thread(target=kill_when_running)
        killer.start()
        answer = _sql(api, "SELECT count(*) AS n FROM tips a, tips b, tips c, tips d")
        killer.join()
        assert killed == [1], "the query never showed up as running"
        assert answer["error"]["code"] == "SOURCE_UNAVAILABLE", answer
        assert READER not in answer["error"]["message"]
        assert _sql(api, "SELECT count(*) AS n FROM tips")["data"] == [{"n": len(TIPS)}]


def test_config_objects_pickle_for_the_workers() -> None:
    import pickle

    cfg = DatabaseConfig("a", "A", "sqlite", "sqlite:///x", "main", None, 1.0, 1)
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_a_snapshot_describes_its_columns_as_the_written_file_does(tmp_path: Path) -> None:
    import sqlite3

    import polars as pl

    from connectors.databases import snapshot
    from engine import lazy_column_infos

    path = tmp_path / "mixed.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (a, b, c, d)")
        # In batches of 3 a column's type changes along the way: all null, then integers, then floats.
        rows = [(None, 1, "x", None), (None, None, "y", None), (None, 3, None, None), (1, 2.5, "z", None)]
        conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", rows * 2 + [(2, None, None, None)])
    cfg = DatabaseConfig("m", "M", "sqlite", f"sqlite:///{path}", "main", None, 5.0, 1)
    for sql, expected_rows in (("SELECT * FROM t", 9), ("SELECT * FROM t WHERE 0", 0)):
        out = tmp_path / f"out{expected_rows}.parquet"
        total, columns = snapshot(cfg, sql, out, batch_rows=3, max_rows=100)
        assert total == expected_rows and columns == lazy_column_infos(pl.scan_parquet(out))
    assert [(c.dtype, c.null_count) for c in columns] == [("String", 0)] * 4  # the empty result


def test_the_readme_sources_example_is_a_valid_file(tmp_path: Path) -> None:
    readme = (ROOT / "docs/databases.md").read_text("utf-8").split("# Database sources", 1)[1]
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    (warehouse,) = load_sources(_write(tmp_path, block), {"WAREHOUSE_USER": "u", "WAREHOUSE_PASSWORD": "p"})
    assert warehouse.tables == ("events", "accounts") and warehouse.pool_size == 5


# ---- LINK: a dataset over the live table, with the work pushed down as SQL -------------------------------------

PIPELINES = [
    '{filter: [{column: "size", op: GE, value: 3}]}, {groupBy: {by: ["day", "sex"], aggregations: [{column: "tip", fn: MEAN}, {column: "total_bill", fn: SUM}, {column: "size", fn: COUNT}]}}',
    '{filter: [{column: "day", op: IN, value: ["Sat", "Sun"]}, {column: "tip", op: BETWEEN, value: [2, 4.5]}]}, {sort: [{column: "total_bill", descending: true}, {column: "id"}]}, {slice: {offset: 3, limit: 20}}',
    '{select: ["day", "time", "tip"]}, {groupBy: {by: ["time"], aggregations: [{column: "tip", fn: MAX}, {column: "day", fn: N_UNIQUE}, {column: "tip", fn: STD}]}}',
    # Not pushable past the clean step: the database filters, Polars does the rest.
    '{filter: [{column: "smoker", op: EQ, value: "Yes"}]}, {clean: [{rename: {from: "tip", to: "gratuity"}}]}, {groupBy: {by: ["day"], aggregations: [{column: "gratuity", fn: MEDIAN}, {column: "gratuity", fn: FIRST}]}}',
]


def _link(api: Api, table: str = "tips", name: str = "tips live") -> str:
    payload = api.data(
        'mutation { importTable(source: "live", table: "%s", name: "%s", mode: LINK) { %s } }' % (table, name, PAYLOAD)
    )["importTable"]
    assert payload["success"], payload["error"]
    dataset_id: str = payload["dataset"]["id"]
    return dataset_id


def _pipeline_rows(api: Api, dataset: str, steps: str) -> list[dict[str, Any]]:
    answer = api.data(
        '{ dataset(id: "%s") { pipeline(steps: [%s]) { rows(limit: 1000) { success error { message } data meta { cached } } } } }'
        % (dataset, steps)
    )["dataset"]["pipeline"]["rows"]
    assert answer["success"], answer["error"]
    assert answer["meta"]["cached"] is False
    data: list[dict[str, Any]] = answer["data"]
    return data


def _rounded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: round(v, 9) if isinstance(v, float) else v for k, v in r.items()} for r in rows]


def test_a_linked_table_answers_as_its_snapshot_does(live: tuple[Api, dict[str, Any]]) -> None:
    api, _ = live
    linked = api.data(
        'mutation { importTable(source: "live", table: "tips", mode: LINK) { %s dataset { columns { name dtype nullCount } } } }'
        % PAYLOAD
    )["importTable"]
    assert linked["success"], linked["error"]
    assert linked["dataset"]["rowCount"] == len(TIPS) and linked["dataset"]["source"]["kind"] == "DATABASE"
    assert {c["name"]: c["dtype"] for c in linked["dataset"]["columns"]}["tip"] == "Float64"
    snapshot = api.data('mutation { importTable(source: "live", table: "tips", name: "snap") { %s } }' % PAYLOAD)
    snap_id = snapshot["importTable"]["dataset"]["id"]
    for steps in PIPELINES:
        assert _rounded(_pipeline_rows(api, linked["dataset"]["id"], steps)) == _rounded(
            _pipeline_rows(api, snap_id, steps)
        ), steps


def test_count_and_filters_run_in_the_database(live: tuple[Api, dict[str, Any]]) -> None:
    api, _ = live
    dataset = _link(api)
    q = (
        '{ dataset(id: "%s") { filter(where: [{column: "day", op: EQ, value: "Sun"}]) { count { data meta { cached } } explain { data } } } }'
        % dataset
    )
    got = api.data(q)["dataset"]["filter"]
    assert got["count"]["data"] == {"count": int((TIPS["day"] == "Sun").sum())}
    explained = got["explain"]["data"]
    assert explained["pushedSteps"] == 1 and "WHERE" in explained["sql"].upper()
    assert "Sun" not in explained["sql"]  # the value travels as a bound parameter
    assert [c["name"] for c in explained["columns"]][:3] == ["id", "total_bill", "tip"]


def test_a_linked_table_is_live_and_never_cached(live: tuple[Api, dict[str, Any]]) -> None:
    api, db = live
    dataset = _link(api)
    q = '{ dataset(id: "%s") { count { data meta { cached } } } }' % dataset
    assert api.data(q)["dataset"]["count"] == {"data": {"count": len(TIPS)}, "meta": {"cached": False}}
    with db["admin"].connect() as conn:
        conn.exec_driver_sql(f"INSERT INTO {db['schema']}.tips (id, tip, size) VALUES (100000, 1.5, 2)")
    try:
        assert api.data(q)["dataset"]["count"] == {"data": {"count": len(TIPS) + 1}, "meta": {"cached": False}}
    finally:
        with db["admin"].connect() as conn:
            conn.exec_driver_sql(f"DELETE FROM {db['schema']}.tips WHERE id = 100000")


def test_a_linked_table_joins_an_uploaded_dataset(live: tuple[Api, dict[str, Any]]) -> None:
    api, _ = live
    dataset = _link(api)
    days = api.upload_ok(b"day,weekend\nThur,no\nFri,no\nSat,yes\nSun,yes\n", "days.csv")
    got = api.data(
        '{ dataset(id: "%s") { join(right: "%s", on: ["day"]) { groupBy(by: ["weekend"], aggregations: [{column: "tip", fn: SUM}]) { rows { data } } } } }'
        % (dataset, days)
    )["dataset"]["join"]["groupBy"]["rows"]["data"]
    weekend = TIPS["day"].isin(["Sat", "Sun"])
    assert [r["weekend"] for r in got] == ["no", "yes"]
    assert [round(r["tip_sum"], 6) for r in got] == [
        round(TIPS[~weekend]["tip"].sum(), 6),
        round(TIPS[weekend]["tip"].sum(), 6),
    ]


def test_work_that_cannot_be_pushed_is_bounded_by_the_row_cap(tmp_path: Path, pg: dict[str, Any]) -> None:
    settings = make_settings(tmp_path, sources=_sources_file(tmp_path, pg), max_rows=100)
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        dataset = _link(api)
        whole = api.data(
            '{ dataset(id: "%s") { describe(columns: ["tip"]) { success error { code message } } } }' % dataset
        )
        assert whole["dataset"]["describe"]["error"]["code"] == "TOO_LARGE"
        assert "filter" in whole["dataset"]["describe"]["error"]["message"]
        small = api.data(
            '{ dataset(id: "%s") { filter(where: [{column: "size", op: GE, value: 5}]) { describe(columns: ["tip"]) { success data } } } }'
            % dataset
        )["dataset"]["filter"]["describe"]
        assert small["success"] and small["data"][0]["count"] == int((TIPS["size"] >= 5).sum())
        counted = api.data('{ dataset(id: "%s") { count { data } } }' % dataset)["dataset"]["count"]["data"]
        assert counted == {"count": len(TIPS)}  # counted by the database: no rows come back


def test_link_needs_a_table(live: tuple[Api, dict[str, Any]]) -> None:
    api, _ = live
    payload = api.data('mutation { importTable(source: "live", query: "SELECT 1", mode: LINK) { %s } }' % PAYLOAD)
    assert payload["importTable"]["error"]["code"] == "BAD_INPUT"


def test_a_source_that_goes_away_and_comes_back_answers_again(tmp_path: Path, pg: dict[str, Any]) -> None:
    proxy = TcpProxy(5432)
    proxy.start()
    via_proxy = {**pg, "url": f"postgresql://{READER}@127.0.0.1:{proxy.port}/test"}
    settings = make_settings(tmp_path, sources=_sources_file(tmp_path, via_proxy))
    try:
        with TestClient(create_app(settings)) as client:
            api = Api(client, settings)
            assert _sql(api, "SELECT count(*) AS n FROM tips")["data"] == [{"n": len(TIPS)}]
            proxy.cut()
            started = time.monotonic()
            down = _sql(api, "SELECT count(*) AS n FROM tips")
            assert down["error"]["code"] == "SOURCE_UNAVAILABLE" and time.monotonic() - started < 5
            checked = api.data('mutation { checkSource(id: "live") { success source { status } } }')["checkSource"]
            assert checked == {"success": False, "source": {"status": "UNREACHABLE"}}
            assert client.get("/readyz").json()["sources"] == {"live": "UNREACHABLE"}
            proxy.start()  # the database is back: the first query after it works
            assert _sql(api, "SELECT count(*) AS n FROM tips")["data"] == [{"n": len(TIPS)}]
            assert api.data('mutation { checkSource(id: "live") { success source { status } } }')["checkSource"] == {
                "success": True,
                "source": {"status": "OK"},
            }
    finally:
        proxy.cut()


def test_a_black_holed_source_meets_the_client_deadline_and_its_connection_is_not_reused(
    tmp_path: Path, pg: dict[str, Any]
) -> None:
    proxy = TcpProxy(5432)
    proxy.start()
    via_proxy = {**pg, "url": f"postgresql://{READER}@127.0.0.1:{proxy.port}/test"}
    # One worker, so the query after the black hole goes to the worker holding the pooled connection.
    settings = make_settings(tmp_path, sources=_sources_file(tmp_path, via_proxy, timeout_s=1), workers=1)
    try:
        with TestClient(create_app(settings)) as client:
            api = Api(client, settings)
            assert _sql(api, "SELECT count(*) AS n FROM tips")["data"] == [{"n": len(TIPS)}]
            proxy.black_hole = True  # the statement timeout can never come back through it
            started = time.monotonic()
            lost = _sql(api, "SELECT count(*) AS n FROM tips")
            waited = time.monotonic() - started
            assert lost["error"]["code"] == "TIMEOUT" and 1 < waited < 10, (lost, waited)
            proxy.black_hole = False
            # The worker holding the stuck connection was killed with it; the next query works.
            assert _sql(api, "SELECT count(*) AS n FROM tips")["data"] == [{"n": len(TIPS)}]
            assert client.get("/readyz").json()["workers"]["killed"] == 1
    finally:
        proxy.cut()


def test_the_row_limit_keeps_the_querys_order(live: tuple[Api, dict[str, Any]]) -> None:
    # MariaDB drops an ORDER BY inside a derived table: the limit goes on the query itself.
    api, _ = live
    answer = _sql(api, "SELECT id FROM tips ORDER BY id DESC", limit=5)
    assert [r["id"] for r in answer["data"]] == [243, 242, 241, 240, 239] and answer["meta"]["truncated"] is True
    joined = _sql(api, "SELECT a.id, b.id AS other FROM tips a JOIN tips b ON a.id = b.id ORDER BY a.id", limit=2)
    assert joined["data"] == [{"id": 0, "other": 0}, {"id": 1, "other": 1}]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("SELECT CAST('NaN' AS NUMERIC) AS x", [{"x": None}]),  # a NaN numeric made Polars panic
        ("SELECT CAST('10.0.0.1' AS INET) AS ip", [{"ip": "10.0.0.1"}]),  # not a JSON type: as text
    ],
)
def test_values_polars_cannot_hold_come_back_plain(
    pg: dict[str, Any], tmp_path: Path, query: str, expected: Any
) -> None:
    settings = make_settings(tmp_path, sources=_sources_file(tmp_path, pg))
    with TestClient(create_app(settings)) as client:
        answer = _sql(Api(client, settings), query)
    assert answer["success"], answer["error"]
    assert answer["data"] == expected


def test_query_mistakes_are_bad_input_not_an_unavailable_source(live: tuple[Api, dict[str, Any]]) -> None:
    api, _ = live
    twice = _sql(api, "SELECT id, id FROM tips")
    assert twice["error"]["code"] == "BAD_INPUT" and "two columns" in twice["error"]["message"]
    many = _sql(api, "SELECT (SELECT id FROM tips) AS x")  # a subquery with more than one row
    assert many["error"]["code"] == "BAD_INPUT", many
