"""The read-only SQL guard: every SQL bad input from RELIABILITY.md, and the queries it must let through."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from support import make_settings, require_service, serving

from connectors import databases
from connectors.sources import DatabaseConfig
from connectors.sqlguard import CheckedSql, check_select, limited
from datagraph.errors import BadInput, DatagraphError, ReadOnly, TooLarge

DEFAULT_SCHEMA = {"postgres": "public", "mysql": "shop", "sqlite": "main", "duckdb": "main"}
ORDERS = ("id", "customer_id", "total", "note", "data", "tags", "created_at", "ordered_at", "status")
# The columns of the tables these queries read (PostgreSQL checks a qualified name `t.x` against them).
COLUMNS = {"public.orders": ORDERS, "public.customers": ("id", "name"), "public.archived_orders": ORDERS}


def columns_of(tables: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return {t: COLUMNS[t] for t in tables if t in COLUMNS}


def check(sql: str, dialect: str = "postgres", allowed: frozenset[str] | None = None) -> CheckedSql:
    return check_select(
        sql, dialect=dialect, default_schema=DEFAULT_SCHEMA[dialect], allowed_tables=allowed, columns=columns_of
    )


def refused(sql: str, dialect: str, error: type[DatagraphError], allowed: frozenset[str] | None = None) -> str:
    """Check `sql`, expecting exactly `error`; return its message."""
    with pytest.raises(DatagraphError) as info:
        check(sql, dialect, allowed)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value.message}"
    assert info.value.code == error.code
    return info.value.message


# (dialect, sql, what the message must name)
WRITES_AND_COMMANDS = [
    ("postgres", "SELECT 1; DROP TABLE t", "one statement"),
    ("mysql", "SELECT 1; DROP TABLE t", "one statement"),
    ("postgres", "SELECT 1; SELECT 2", "one statement"),
    ("postgres", "DROP TABLE t", "drop"),
    ("mysql", "DELETE FROM orders", "delete"),
    ("postgres", "WITH x AS (DELETE FROM orders RETURNING *) SELECT * FROM x", "delete"),
    ("postgres", "WITH x AS (UPDATE orders SET total = 0 RETURNING *) SELECT * FROM x", "update"),
    ("postgres", "WITH x AS (INSERT INTO orders (id) VALUES (1) RETURNING *) SELECT * FROM x", "insert"),
    ("postgres", "SELECT * INTO stolen FROM orders", "into"),
    ("mysql", "SELECT * FROM orders INTO OUTFILE '/tmp/orders.txt'", "into"),
    ("mysql", "SELECT * INTO OUTFILE '/tmp/orders.txt' FROM orders", "into"),
    ("mysql", "SELECT id INTO DUMPFILE '/tmp/id' FROM orders", "into"),
    ("mysql", "SELECT id INTO @v FROM orders", "into"),
    ("postgres", "DO $$ BEGIN DELETE FROM orders; END $$", "do"),
    ("postgres", "CALL wipe()", "call"),
    ("mysql", "CALL wipe()", "call"),
    ("postgres", "SET search_path = pg_catalog", "set"),
    ("mysql", "SET @a = 1", "set"),
    ("postgres", "SELECT * FROM orders FOR UPDATE", "for update"),
    ("postgres", "SELECT * FROM orders FOR SHARE", "for share"),
    ("mysql", "SELECT * FROM orders FOR UPDATE", "for update"),
    ("mysql", "SELECT * FROM orders LOCK IN SHARE MODE", "for share"),
    ("postgres", "SELECT * FROM (SELECT * FROM orders FOR UPDATE) s", "for update"),
    ("postgres", "COPY orders TO '/tmp/orders.csv'", "copy"),
    ("postgres", "BEGIN", "begin"),
    ("postgres", "GRANT SELECT ON orders TO someone", "grant"),
    ("postgres", "TRUNCATE orders", "truncate"),
    ("postgres", "EXPLAIN ANALYZE DELETE FROM orders", "explain"),
    ("postgres", "VALUES (1)", "values"),
    ("mysql", "USE mysql", "use"),
    ("sqlite", "PRAGMA writable_schema = 1", "pragma"),
    ("sqlite", "ATTACH DATABASE '/tmp/other.db' AS other", "attach"),
    ("mysql", "SELECT /*+ MAX_EXECUTION_TIME(0) */ * FROM orders", "hint"),
    ("mysql", "SELECT @a := 1", "assignment"),
    ("mysql", "SELECT @@secure_file_priv", "server variable"),
    ("postgres", "SELECT * FROM orders WHERE id = $1", "parameter"),
    ("postgres", "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r) SELECT * FROM r", "recursive"),
    ("duckdb", "SELECT 1; DROP TABLE t", "one statement"),
    ("duckdb", "DELETE FROM orders", "delete"),
    ("duckdb", "WITH x AS (DELETE FROM orders RETURNING *) SELECT * FROM x", "delete"),
    ("duckdb", "INSERT INTO orders SELECT * FROM orders", "insert"),
    ("duckdb", "CREATE TABLE stolen AS SELECT * FROM orders", "create"),
    ("duckdb", "SELECT * INTO stolen FROM orders", "into"),
    ("duckdb", "COPY orders TO '/tmp/orders.csv'", "copy"),
    ("duckdb", "COPY (SELECT * FROM orders) TO '/tmp/orders.parquet' (FORMAT parquet)", "copy"),
    ("duckdb", "ATTACH '/tmp/other.duckdb' AS other", "attach"),
    ("duckdb", "DETACH other", "detach"),
    ("duckdb", "INSTALL httpfs", "install"),
    ("duckdb", "LOAD httpfs", "load"),
    ("duckdb", "PRAGMA enable_external_access", "pragma"),
    ("duckdb", "SET enable_external_access = true", "set"),
    ("duckdb", "RESET threads", "reset"),
    ("duckdb", "USE other", "use"),
    ("duckdb", "CALL pragma_version()", "call"),
    ("duckdb", "SUMMARIZE orders", "summarize"),
    ("duckdb", "DESCRIBE orders", "describe"),
    ("duckdb", "SHOW TABLES", "show"),
    ("duckdb", "PIVOT orders ON status USING sum(total)", "pivot"),
    ("duckdb", "VACUUM", "vacuum"),
    ("duckdb", "SELECT * FROM orders WHERE id = $1", "parameter"),
    ("duckdb", "SELECT * FROM orders WHERE id = ?", "placeholder"),
    ("duckdb", "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r) SELECT * FROM r", "recursive"),
]


@pytest.mark.parametrize(("dialect", "sql", "named"), WRITES_AND_COMMANDS)
def test_guard_refuses_writes_commands_and_locks(dialect: str, sql: str, named: str) -> None:
    message = refused(sql, dialect, ReadOnly)
    assert named in message.lower()


FUNCTIONS = [
    ("postgres", "SELECT pg_read_file('/etc/passwd')", "pg_read_file"),
    ("postgres", "SELECT lo_import('/etc/passwd')", "lo_import"),
    ("mysql", "SELECT LOAD_FILE('/etc/passwd')", "load_file"),
    ("postgres", "SELECT * FROM read_csv('/etc/passwd')", "read_csv"),
    ("postgres", "SELECT read_csv('/etc/passwd')", "read_csv"),
    ("mysql", "SELECT * FROM read_csv('/etc/passwd')", "read_csv"),
    ("postgres", "SELECT query_to_xml('DELETE FROM orders RETURNING *', true, true, '')", "query_to_xml"),
    ("postgres", "SELECT * FROM dblink('host=10.0.0.1', 'DELETE FROM orders') AS t(a int)", "dblink"),
    ("postgres", "SELECT set_config('search_path', 'pg_catalog', false)", "set_config"),
    ("postgres", "SELECT pg_sleep(3600)", "pg_sleep"),
    ("postgres", "SELECT id FROM orders WHERE pg_sleep(3600) IS NULL", "pg_sleep"),
    ("mysql", "SELECT SLEEP(3600)", "sleep"),
    ("mysql", "SELECT BENCHMARK(1000000000, MD5('a'))", "benchmark"),
    ("postgres", "SELECT * FROM generate_series(1, 1e12)", "generate_series"),
    ("postgres", "SELECT generate_series(1, 1e12)", "generate_series"),
    ("postgres", "SELECT nextval('orders_id_seq')", "nextval"),
    ("postgres", "SELECT repeat('x', 1000000000)", "repeat"),
    ("postgres", "SELECT public.upper(name) FROM customers", "upper"),
    ("postgres", "WITH x AS (SELECT pg_sleep(10)) SELECT * FROM x", "pg_sleep"),
    # Posexplode subclasses the allowed Explode: classes are allowed exactly, not by inheritance.
    ("postgres", "SELECT posexplode(tags) FROM orders", "posexplode"),
    # DuckDB: everything that reads files, the network, the catalogue or the settings.
    ("duckdb", "SELECT * FROM read_csv('/etc/passwd')", "read_csv"),
    ("duckdb", "SELECT * FROM read_csv_auto('/etc/passwd')", "read_csv_auto"),
    ("duckdb", "SELECT * FROM read_parquet('s3://bucket/x.parquet')", "read_parquet"),
    ("duckdb", "SELECT * FROM read_json('/etc/x.json')", "read_json"),
    ("duckdb", "SELECT * FROM read_json_auto('/etc/x.json')", "read_json_auto"),
    ("duckdb", "SELECT * FROM read_text('/etc/passwd')", "read_text"),
    ("duckdb", "SELECT * FROM read_blob('/etc/passwd')", "read_blob"),
    ("duckdb", "SELECT read_text('/etc/passwd')", "read_text"),
    ("duckdb", "SELECT * FROM glob('/etc/*')", "glob"),
    ("duckdb", "SELECT * FROM sniff_csv('/etc/passwd')", "sniff_csv"),
    ("duckdb", "SELECT * FROM parquet_metadata('/tmp/x.parquet')", "parquet_metadata"),
    ("duckdb", "SELECT * FROM sqlite_scan('/tmp/x.db', 't')", "sqlite_scan"),
    ("duckdb", "SELECT * FROM postgres_scan('host=10.0.0.1', 'public', 't')", "postgres_scan"),
    ("duckdb", "SELECT * FROM iceberg_scan('s3://b/t')", "iceberg_scan"),
    ("duckdb", "SELECT * FROM duckdb_settings()", "duckdb_settings"),
    ("duckdb", "SELECT * FROM duckdb_databases()", "duckdb_databases"),
    ("duckdb", "SELECT * FROM duckdb_extensions()", "duckdb_extensions"),
    ("duckdb", "SELECT * FROM pragma_database_list()", "pragma_database_list"),
    ("duckdb", "SELECT current_setting('temp_directory')", "current_setting"),
    ("duckdb", "SELECT getvariable('secret')", "getvariable"),
    ("duckdb", "SELECT query('SELECT 1')", "query"),
    ("duckdb", "SELECT * FROM query_table('orders')", "query_table"),
    ("duckdb", "SELECT * FROM range(1000000000000)", "range"),
    ("duckdb", "SELECT * FROM generate_series(1, 1000000000000)", "generate_series"),
    ("duckdb", "SELECT repeat('x', 1000000000)", "repeat"),
    ("duckdb", "SELECT list_transform(tags, x -> x || '!') FROM orders", "list_transform"),
    ("duckdb", "SELECT COLUMNS('.*') FROM orders", "columns"),
    ("duckdb", "SELECT main.upper(note) FROM orders", "upper"),
    ("duckdb", "WITH x AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM x", "read_csv"),
    ("duckdb", "SELECT id FROM orders WHERE id IN (SELECT 1 FROM glob('/etc/*'))", "glob"),
]


@pytest.mark.parametrize(("dialect", "sql", "function"), FUNCTIONS)
def test_guard_refuses_functions_off_the_allowlist(dialect: str, sql: str, function: str) -> None:
    message = refused(sql, dialect, ReadOnly)
    assert message == f"Function {function} is not allowed."


@pytest.mark.parametrize("dialect", ["postgres", "mysql"])
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 /*!50000 , LOAD_FILE('/etc/passwd') */",
        "SELECT 1 /*!, LOAD_FILE('/etc/passwd') */",
        "SELECT 1 /*M!100000 , LOAD_FILE('/etc/passwd') */",
    ],
)
def test_guard_refuses_mysql_executable_comments(dialect: str, sql: str) -> None:
    assert "executable comments" in refused(sql, dialect, ReadOnly).lower()


TABLES = [
    ("postgres", "SELECT * FROM pg_catalog.pg_authid", "pg_catalog.pg_authid"),
    ("postgres", "SELECT rolpassword FROM orders, pg_catalog.pg_authid", "pg_catalog.pg_authid"),
    ("postgres", "SELECT * FROM information_schema.tables", "information_schema.tables"),
    ("postgres", "SELECT * FROM sales.orders", "sales.orders"),
    ("postgres", "SELECT * FROM orders WHERE id IN (SELECT id FROM sales.orders)", "sales.orders"),
    ("postgres", "WITH x AS (SELECT * FROM sales.secrets) SELECT * FROM x", "sales.secrets"),
    ("postgres", 'SELECT * FROM "public.x".y', "public.x.y"),
    ("mysql", "SELECT * FROM mysql.user", "mysql.user"),
    ("mysql", "SELECT * FROM performance_schema.threads", "performance_schema.threads"),
    ("mysql", "SELECT * FROM otherdb.orders", "otherdb.orders"),
    ("sqlite", "SELECT * FROM temp.scratch", "temp.scratch"),
    ("duckdb", "SELECT * FROM information_schema.tables", "information_schema.tables"),
    ("duckdb", "SELECT * FROM pg_catalog.pg_settings", "pg_catalog.pg_settings"),
    ("duckdb", "SELECT * FROM temp.scratch", "temp.scratch"),
    ("duckdb", "SELECT * FROM other.orders", "other.orders"),
]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM '/etc/passwd'",
        'SELECT * FROM "/etc/passwd"',
        "SELECT * FROM 'https://example.com/x'",
        "SELECT * FROM 's3://bucket/key'",
        "SELECT * FROM '..\\secret'",
        "SELECT * FROM 'data.csv'",
        "SELECT * FROM orders JOIN 'C:/x' ON true",
    ],
)
def test_duckdb_refuses_a_file_or_url_as_a_table(sql: str) -> None:
    message = refused(sql, "duckdb", ReadOnly)
    assert message.startswith("Table main.") and ("file or URL" in message or "is not one" in message)


@pytest.mark.parametrize(("dialect", "sql", "table"), TABLES)
def test_guard_refuses_tables_outside_the_default_schema(dialect: str, sql: str, table: str) -> None:
    assert refused(sql, dialect, ReadOnly) == f"Table {table} is not one this source allows."


def test_guard_refuses_names_with_a_database_part() -> None:
    assert "otherdb.public.orders" in refused("SELECT * FROM otherdb.public.orders", "postgres", ReadOnly)
    assert "system.main.duckdb_tables" in refused("SELECT * FROM system.main.duckdb_tables", "duckdb", ReadOnly)


def test_allowlist_permits_orders_and_refuses_customers() -> None:
    allowed = frozenset({"public.orders"})
    assert check("SELECT id, total FROM orders", allowed=allowed).tables == ("public.orders",)
    assert check("SELECT id FROM public.orders", allowed=allowed).tables == ("public.orders",)
    message = refused(
        "SELECT * FROM orders JOIN customers ON customers.id = orders.customer_id", "postgres", ReadOnly, allowed
    )
    assert message == "Table public.customers is not one this source allows."


def test_allowlist_also_covers_tables_in_subqueries_and_ctes() -> None:
    allowed = frozenset({"public.orders"})
    sql = "WITH c AS (SELECT * FROM customers) SELECT * FROM orders WHERE customer_id IN (SELECT id FROM c)"
    assert "public.customers" in refused(sql, "postgres", ReadOnly, allowed)


def test_unqualified_table_is_pinned_to_the_default_schema() -> None:
    # On PostgreSQL an unqualified pg_authid would find pg_catalog.pg_authid through search_path.
    checked = check("SELECT * FROM pg_authid")
    assert checked.sql == "SELECT * FROM public.pg_authid"
    assert checked.tables == ("public.pg_authid",)


def test_mixed_case_default_schema_is_quoted_so_it_does_not_fold() -> None:
    checked = check_select("SELECT * FROM orders", dialect="postgres", default_schema="Shop", allowed_tables=None)
    assert checked == CheckedSql(sql='SELECT * FROM "Shop".orders', tables=("Shop.orders",))
    with pytest.raises(ReadOnly, match=r"^Table shop\.orders is not one this source allows\.$"):
        check_select("SELECT * FROM shop.orders", dialect="postgres", default_schema="Shop", allowed_tables=None)


def test_cte_name_is_not_a_table_but_a_qualified_name_is() -> None:
    checked = check("WITH orders AS (SELECT 1 AS id) SELECT * FROM orders, public.orders AS real_orders")
    assert checked.tables == ("public.orders",)
    assert checked.sql.startswith("WITH orders AS (SELECT 1 AS id) SELECT * FROM orders, public.orders")


def test_cte_is_visible_only_in_its_scope() -> None:
    # A CTE sees only the CTEs before it, and a CTE inside a subquery is not visible outside it.
    later = check("WITH a AS (SELECT * FROM b), b AS (SELECT 1 AS x) SELECT * FROM a")
    assert later.tables == ("public.b",)
    inner = check("SELECT * FROM (WITH c AS (SELECT 1 AS x) SELECT * FROM c) AS s, c")
    assert inner.tables == ("public.c",)
    message = refused("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a", "postgres", ReadOnly, frozenset())
    assert message == "Table public.b is not one this source allows."


def test_table_names_are_folded_as_the_server_folds_them() -> None:
    # PostgreSQL folds unquoted names to lower case; MySQL on Linux compares table names exactly.
    assert check('SELECT * FROM Orders JOIN "customers" ON TRUE').tables == ("public.customers", "public.orders")
    assert "public.Orders" in refused('SELECT * FROM "Orders"', "postgres", ReadOnly, frozenset({"public.orders"}))
    assert "shop.Orders" in refused("SELECT * FROM Orders", "mysql", ReadOnly, frozenset({"shop.orders"}))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT 1 -- ; DROP TABLE t", "SELECT 1"),
        ("SELECT /* x */ 1", "SELECT 1"),
        ("SELECT 1 /* ; DROP TABLE t */", "SELECT 1"),
        ("/* hi */ SELECT id -- the id\nFROM orders", "SELECT id FROM public.orders"),
    ],
)
def test_comments_are_dropped_from_the_regenerated_sql(text: str, expected: str) -> None:
    assert check(text).sql == expected


def test_text_over_the_limit_is_too_large() -> None:
    text = "SELECT 1" + " " * 20_000
    assert "20,000" in refused(text, "postgres", TooLarge)
    with pytest.raises(TooLarge, match="100"):
        check_select(
            "SELECT 1" + " " * 100, dialect="postgres", default_schema="public", allowed_tables=None, max_chars=100
        )


@pytest.mark.parametrize("text", ["", "   \n\t", "-- only a comment", "/* nothing */", ";"])
def test_empty_sql_is_bad_input(text: str) -> None:
    assert "empty" in refused(text, "postgres", BadInput).lower()


def test_parse_error_is_bad_input_without_echoing_the_text() -> None:
    text = "SELECT " + "x" * 5_000 + " FROM ("
    message = refused(text, "postgres", BadInput)
    assert message.startswith("The SQL could not be parsed: ")
    assert len(message) < 150
    assert "sqlglot" not in message


@pytest.mark.parametrize("text", ["SELECT 'abc", 'SELECT "abc', "SELECT 1 /* never closed"])
def test_unclosed_quote_or_comment_is_bad_input(text: str) -> None:
    assert "not closed" in refused(text, "postgres", BadInput)


def test_deep_nesting_is_bad_input() -> None:
    text = "SELECT " + "(" * 3_000 + "1" + ")" * 3_000
    assert "nested" in refused(text, "postgres", BadInput)


def test_unknown_dialect_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="dialect"):
        check_select("SELECT 1", dialect="oracle", default_schema="public", allowed_tables=None)


JOIN = "SELECT o.id, c.name FROM orders AS o JOIN customers AS c ON c.id = o.customer_id WHERE o.total > 10"


@pytest.mark.parametrize(
    ("dialect", "schema"), [("postgres", "public"), ("mysql", "shop"), ("sqlite", "main"), ("duckdb", "main")]
)
def test_join_reads_both_tables_qualified(dialect: str, schema: str) -> None:
    checked = check(JOIN, dialect)
    assert checked.tables == (f"{schema}.customers", f"{schema}.orders")
    assert f"FROM {schema}.orders AS o JOIN {schema}.customers AS c" in checked.sql


ALLOWED_QUERIES = [
    (
        "postgres",
        "WITH big AS (SELECT customer_id, SUM(total) AS spent FROM orders GROUP BY customer_id) "
        "SELECT c.name, big.spent FROM big JOIN customers c ON c.id = big.customer_id",
    ),
    (
        "postgres",
        "SELECT customer_id, COUNT(*) AS n, AVG(total), MIN(total), MAX(total), STDDEV(total), VARIANCE(total) "
        "FROM orders GROUP BY customer_id HAVING COUNT(*) > 2 ORDER BY n DESC LIMIT 10 OFFSET 5",
    ),
    (
        "mysql",
        "SELECT customer_id, COUNT(DISTINCT id), GROUP_CONCAT(id SEPARATOR ','), SUM(total) "
        "FROM orders GROUP BY customer_id HAVING SUM(total) > 100 ORDER BY 2 DESC LIMIT 5, 10",
    ),
    (
        "postgres",
        "SELECT id, ROW_NUMBER() OVER (PARTITION BY customer_id ORDER BY created_at), "
        "RANK() OVER w, LAG(total) OVER w, SUM(total) OVER (ORDER BY created_at ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) "
        "FROM orders WINDOW w AS (ORDER BY total)",
    ),
    ("mysql", "SELECT id, DENSE_RANK() OVER (ORDER BY total DESC), NTILE(4) OVER (ORDER BY total) FROM orders"),
    (
        "postgres",
        "SELECT CASE WHEN total > 100 THEN 'big' WHEN total IS NULL THEN 'none' ELSE 'small' END, "
        "COALESCE(note, ''), NULLIF(total, 0), GREATEST(total, 1), CAST(total AS TEXT), total::numeric(10, 2) FROM orders",
    ),
    (
        "postgres",
        "SELECT date_trunc('month', created_at), EXTRACT(YEAR FROM created_at), now(), CURRENT_DATE, "
        "created_at + INTERVAL '1 day', to_char(created_at, 'YYYY-MM'), to_date('2024-01-01', 'YYYY-MM-DD') FROM orders",
    ),
    (
        "mysql",
        "SELECT DATE_FORMAT(created_at, '%Y-%m'), YEAR(created_at), MONTH(created_at), "
        "DATE_ADD(created_at, INTERVAL 1 DAY), DATEDIFF(CURDATE(), created_at), IFNULL(note, ''), IF(total > 1, 1, 0) FROM orders",
    ),
    (
        "postgres",
        "SELECT lower(name), upper(name), length(name), trim(name), substring(name FROM 1 FOR 3), "
        "replace(name, 'a', 'b'), name || '!', concat(name, '?'), split_part(name, ' ', 1) "
        "FROM customers WHERE name ILIKE 'a%' AND name ~ '^A'",
    ),
    (
        "postgres",
        "SELECT round(total, 2), abs(total), floor(total), ceil(total), sqrt(abs(total)), power(total, 2) FROM orders",
    ),
    (
        "postgres",
        "SELECT id FROM orders WHERE EXISTS (SELECT 1 FROM customers WHERE customers.id = orders.customer_id)",
    ),
    ("postgres", "SELECT data->>'key', data->'nested' FROM orders"),
    ("postgres", "SELECT DISTINCT ON (customer_id) customer_id, total FROM orders ORDER BY customer_id, total DESC"),
    ("postgres", "(SELECT id FROM orders)"),
    ("mysql", "SELECT `id` FROM `orders` WHERE `total` BETWEEN 1 AND 2 AND id IN (1, 2, 3)"),
    ("sqlite", "SELECT id, total FROM orders ORDER BY total DESC LIMIT 3"),
    (
        "duckdb",
        "WITH big AS (SELECT customer_id, SUM(total) AS spent FROM orders GROUP BY ALL) "
        "SELECT c.name, big.spent FROM big JOIN customers c ON c.id = big.customer_id ORDER BY ALL",
    ),
    (
        "duckdb",
        "SELECT customer_id, COUNT(*) AS n, AVG(total), MEDIAN(total), STDDEV(total), quantile_cont(total, 0.9) "
        "FROM orders GROUP BY customer_id HAVING COUNT(*) > 2 ORDER BY n DESC LIMIT 10 OFFSET 5",
    ),
    (
        "duckdb",
        "SELECT id, ROW_NUMBER() OVER (PARTITION BY customer_id ORDER BY created_at), LAG(total) OVER w "
        "FROM orders WINDOW w AS (ORDER BY total) QUALIFY ROW_NUMBER() OVER (ORDER BY total) <= 3",
    ),
    (
        "duckdb",
        "SELECT date_trunc('month', created_at), EXTRACT(YEAR FROM created_at), date_part('dow', created_at), "
        "created_at + INTERVAL 1 DAY, strftime(created_at, '%Y-%m'), epoch_ms(created_at), time_bucket(INTERVAL '1 hour', created_at) "
        "FROM orders",
    ),
    ("duckdb", "FROM orders SELECT id, total WHERE total > 1"),
    ("duckdb", "SELECT * EXCLUDE (data) FROM orders USING SAMPLE 10"),
    ("duckdb", "SELECT lower(note), regexp_matches(note, '^a'), note ILIKE 'a%', list_contains(tags, 'x') FROM orders"),
]


@pytest.mark.parametrize(("dialect", "sql"), ALLOWED_QUERIES)
def test_guard_allows_ordinary_analysis_queries(dialect: str, sql: str) -> None:
    checked = check(sql, dialect)
    assert checked.tables
    assert all(table.startswith(DEFAULT_SCHEMA[dialect] + ".") for table in checked.tables)
    assert check(checked.sql, dialect) == checked  # the regenerated SQL is itself accepted unchanged


@pytest.mark.parametrize("dialect", ["postgres", "mysql"])
def test_union_of_allowed_tables(dialect: str) -> None:
    allowed = frozenset({f"{DEFAULT_SCHEMA[dialect]}.orders", f"{DEFAULT_SCHEMA[dialect]}.archived_orders"})
    checked = check("SELECT id FROM orders UNION ALL SELECT id FROM archived_orders", dialect, allowed)
    assert checked.tables == tuple(sorted(allowed))
    assert "UNION ALL" in checked.sql


def test_union_with_a_refused_table_is_refused() -> None:
    sql = "SELECT id FROM orders UNION SELECT usesysid FROM pg_catalog.pg_user"
    assert "pg_catalog.pg_user" in refused(sql, "postgres", ReadOnly, frozenset({"public.orders"}))


@pytest.fixture
def numbers() -> sqlite3.Connection:
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE numbers (n INTEGER NOT NULL)")
    connection.executemany("INSERT INTO numbers VALUES (?)", [(n,) for n in range(50)])
    return connection


def test_limited_caps_rows_on_a_real_database(numbers: sqlite3.Connection) -> None:
    checked = check("SELECT n FROM numbers ORDER BY n", "sqlite")
    assert len(numbers.execute(checked.sql).fetchall()) == 50
    sql = limited(checked.sql, 10, "sqlite")
    assert sql == "SELECT n FROM main.numbers ORDER BY n LIMIT 10"  # the query's own LIMIT: order kept everywhere
    assert limited("SELECT n FROM main.numbers ORDER BY n LIMIT 5", 10, "sqlite").endswith("LIMIT 5")
    assert limited("SELECT n FROM main.numbers ORDER BY n LIMIT 50 OFFSET 3", 10, "sqlite").endswith(
        "LIMIT 10 OFFSET 3"
    )
    assert numbers.execute(sql).fetchall() == [(n,) for n in range(10)]
    assert len(numbers.execute(limited(checked.sql, 100, "sqlite")).fetchall()) == 50


def test_limited_works_on_ctes_and_unions(numbers: sqlite3.Connection) -> None:
    checked = check(
        "WITH low AS (SELECT n FROM numbers WHERE n < 5) SELECT n FROM low UNION ALL SELECT n FROM numbers", "sqlite"
    )
    assert len(numbers.execute(limited(checked.sql, 7, "sqlite")).fetchall()) == 7


@pytest.mark.parametrize("limit", [-1, True, 2.5])
def test_limited_refuses_a_bad_limit(limit: object) -> None:
    with pytest.raises(BadInput, match="row limit"):
        limited("SELECT 1", limit, "postgres")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "query",
    [
        "SELECT n FROM numbers ORDER BY n",
        "SELECT n FROM numbers ORDER BY n LIMIT 5",
        "SELECT n FROM numbers ORDER BY n LIMIT 50 OFFSET 3",
        "SELECT n FROM numbers LIMIT (SELECT 30)",
        "WITH low AS (SELECT n FROM numbers WHERE n < 5) SELECT n FROM low UNION ALL SELECT n FROM numbers",
    ],
)
def test_check_select_with_a_limit_gives_what_limited_gives(numbers: sqlite3.Connection, query: str) -> None:
    checked = check(query, "sqlite")
    capped = check_select(query, dialect="sqlite", default_schema="main", allowed_tables=None, limit=10)
    assert capped == CheckedSql(limited(checked.sql, 10, "sqlite"), checked.tables)
    assert len(numbers.execute(capped.sql).fetchall()) <= 10
    with pytest.raises(BadInput, match="row limit"):
        check_select(query, dialect="sqlite", default_schema="main", allowed_tables=None, limit=-1)


@pytest.mark.parametrize(
    ("dialect", "sql"),
    [
        ("postgres", "SELECT user"),
        ("postgres", "SELECT current_role FROM orders"),
        ("mysql", "SELECT current_role"),
        ("postgres", "SELECT 10::regrole::text"),
        ("postgres", "SELECT 'orders'::regclass"),
        ("postgres", "SELECT lpad('x', 1000000000)"),
    ],
)
def test_session_names_catalogue_casts_and_padding_bombs_are_refused(dialect: str, sql: str) -> None:
    refused(sql, dialect, ReadOnly)


@pytest.mark.parametrize(
    ("dialect", "sql"),
    [
        ("mysql", "SELECT NOW() AS at, UNIX_TIMESTAMP(ordered_at) AS ts, WEEKDAY(ordered_at) AS wd FROM orders"),
        ("postgres", "SELECT age(ordered_at) AS a, date_part('dow', ordered_at) AS d FROM orders"),
        ("sqlite", "SELECT strftime('%Y', ordered_at) AS y FROM orders"),
        ("duckdb", "SELECT date_part('dow', ordered_at) AS d, epoch_ms(ordered_at) AS ms FROM orders"),
    ],
)
def test_ordinary_builtins_sqlglot_does_not_know_are_allowed_by_name(dialect: str, sql: str) -> None:
    assert check(sql, dialect).tables == (f"{DEFAULT_SCHEMA[dialect]}.orders",)


@pytest.mark.parametrize(
    ("dialect", "sql", "function"),
    [
        ("postgres", "SELECT pg_catalog.age(ordered_at) FROM orders", "age"),  # only the bare name
        ("mysql", "SELECT age(ordered_at) FROM orders", "age"),  # only on its own dialect
        ("duckdb", "SELECT julianday(ordered_at) FROM orders", "julianday"),  # SQLite's, not DuckDB's
        ("duckdb", "SELECT main.epoch_ms(ordered_at) FROM orders", "epoch_ms"),
        ("postgres", "SELECT now_or_never() FROM orders", "now_or_never"),
    ],
)
def test_named_builtins_stay_within_their_dialect_and_bare_name(dialect: str, sql: str, function: str) -> None:
    assert function in refused(sql, dialect, ReadOnly)


# ---- issue 16, item 10: catalogue casts, qualified functions, functional notation, sequence tables -----------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'pg_authid'::pg_catalog.regclass",
        "SELECT CAST('pg_authid' AS pg_catalog.regclass)",
        "SELECT 10::pg_catalog.regrole::text",
        "SELECT 'lower'::pg_catalog.regproc",
        "SELECT 1::pg_catalog.oid",
        "SELECT '1'::oid",
        "SELECT id::oid FROM orders",
        "SELECT 'x'::public.mood",  # a domain's CHECK can call any function
        "SELECT 'x'::mood",
        "SELECT ARRAY['x']::public.mood[]",
        "SELECT '(1,x)'::pg_catalog.pg_authid",
        "SELECT 'x'::information_schema.sql_identifier",
        "SELECT 'x'::pg_catalog.text",  # built in, but named through a schema
    ],
)
def test_casts_to_catalogue_user_defined_or_schema_qualified_types_are_refused(sql: str) -> None:
    message = refused(sql, "postgres", ReadOnly)
    assert "cast" in message.lower()


def test_casts_to_built_in_types_stay_allowed_while_others_are_refused() -> None:
    checked = check(
        "SELECT CAST(total AS numeric(10, 2)), id::text, note::varchar(5), created_at::date, created_at::timestamptz,"
        " id::bigint, (total > 1)::boolean, ARRAY[id]::int[], data::jsonb, CAST(id AS double precision) FROM orders"
    )
    assert checked.tables == ("public.orders",)
    assert check("SELECT CAST(total AS SIGNED), CAST(note AS CHAR(3)) FROM orders", "mysql").tables == ("shop.orders",)
    refused("SELECT CAST(total AS pg_catalog.numeric) FROM orders", "postgres", ReadOnly)


@pytest.mark.parametrize(
    ("sql", "function"),
    [
        ("SELECT * FROM pg_catalog.unnest(ARRAY[1])", "pg_catalog.unnest"),
        ("SELECT u FROM public.unnest(ARRAY[1]) AS u", "public.unnest"),
        ("SELECT x FROM pg_catalog.unnest(ARRAY[1]) WITH ORDINALITY AS u(x, n)", "pg_catalog.unnest"),
        ("SELECT o.id FROM orders AS o JOIN public.unnest(ARRAY[1]) AS u ON TRUE", "public.unnest"),
    ],
)
def test_schema_qualified_functions_in_from_are_refused(sql: str, function: str) -> None:
    assert refused(sql, "postgres", ReadOnly) == f"Function {function} is not allowed: call it by its bare name."


# Each shape reads a real column (accepted) or a name that is no column, which PostgreSQL would call
# as a function on the row (refused): `t.row_to_json` is row_to_json(t), `o.count` is count(o).
FUNCTIONAL_NOTATION = [
    "SELECT orders.{} FROM orders",
    "SELECT o.{} FROM orders AS o",
    "SELECT public.orders.{} FROM orders",
    "SELECT c.name FROM customers AS c WHERE EXISTS (SELECT 1 FROM orders AS o WHERE o.{} IS NOT NULL)",
    "WITH recent AS (SELECT id, total FROM orders) SELECT recent.{} FROM recent",
    "WITH everything AS (SELECT * FROM orders) SELECT e.{} FROM everything AS e",
    "SELECT s.{} FROM (SELECT o.* FROM orders AS o) AS s",
    "SELECT s.{} FROM (SELECT id, total AS amount FROM orders UNION ALL SELECT id, 1 FROM customers) AS s",
    "SELECT x.{} FROM (SELECT * FROM orders JOIN customers ON customers.id = orders.customer_id) AS x",
]


@pytest.mark.parametrize("shape", FUNCTIONAL_NOTATION)
def test_qualified_names_must_be_columns_so_postgresql_functional_notation_is_refused(shape: str) -> None:
    assert check(shape.format("id")).tables  # a real column, however the FROM item is made
    for name in ("row_to_json", "count", "planted", '"Id"'):
        message = refused(shape.format(name), "postgres", BadInput)
        assert "is not a column of" in message and "function" in message


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT (o).planted FROM orders AS o",
        "SELECT (o.note).upper FROM orders AS o",
        "SELECT ('pg_authid').regclass",  # regclass('pg_authid'), a catalogue cast in disguise
    ],
)
def test_field_selection_on_an_expression_is_refused(sql: str) -> None:
    assert "(x).name" in refused(sql, "postgres", ReadOnly)


def test_qualified_names_are_checked_against_renamed_and_missing_columns() -> None:
    # AS o(a) renames orders' first column: o.id is then no column of o, but o.a and o.total are.
    assert check("SELECT o.a, o.total FROM orders AS o(a)").tables == ("public.orders",)
    refused("SELECT o.id FROM orders AS o(a)", "postgres", BadInput)
    assert check("SELECT u.x, u.n FROM orders, unnest(tags) WITH ORDINALITY AS u(x, n)").tables
    refused("SELECT u.row_to_json FROM orders, unnest(tags) AS u(x)", "postgres", BadInput)
    refused("SELECT s.count FROM (SELECT count(*) FROM orders) AS s", "postgres", BadInput)  # unnamed: unknown
    refused("SELECT nowhere.id FROM orders", "postgres", BadInput)
    # Without the columns of its tables a qualified name cannot be checked, and is refused.
    with pytest.raises(BadInput, match="not a column"):
        check_select("SELECT o.id FROM orders AS o", dialect="postgres", default_schema="public", allowed_tables=None)


@pytest.mark.parametrize(
    ("sql", "allowed"),
    [
        ("SELECT * FROM seq_1_to_1000000000", None),
        ("SELECT count(*) FROM shop.seq_1_to_100000 AS a, shop.seq_1_to_100000 AS b", None),
        ("SELECT * FROM seq_1_to_9_step_2", None),
        ("SELECT id FROM orders WHERE id IN (SELECT seq FROM seq_1_to_3)", None),
        ("SELECT * FROM seq_1_to_3", frozenset({"shop.seq_1_to_3"})),  # even when listed
    ],
)
def test_mariadb_sequence_engine_tables_are_refused(sql: str, allowed: frozenset[str] | None) -> None:
    message = refused(sql, "mysql", ReadOnly, allowed)
    assert "seq_1_to_" in message and "SEQUENCE" in message
    assert check("WITH seq_1_to_3 AS (SELECT 1 AS seq) SELECT seq FROM seq_1_to_3", "mysql").tables == ()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM pragma_database_list",  # names the database file's absolute path
        "SELECT file FROM main.PRAGMA_DATABASE_LIST",
        "SELECT sql FROM sqlite_master",
        "SELECT sql FROM sqlite_schema WHERE name = 'numbers'",
        "SELECT * FROM pragma_compile_options",
        "SELECT * FROM dbstat",
        "SELECT value FROM json_each WHERE json = '[1, 2]'",
    ],
)
def test_sqlite_tables_the_engine_makes_up_are_refused(sql: str, tmp_path: Path) -> None:
    path = tmp_path / "shop.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE numbers (n INTEGER)")
        assert connection.execute(sql).fetchall()  # SQLite answers it in any database
    assert "SQLite makes it up" in refused(sql, "sqlite", ReadOnly)
    assert "makes it up" in refused(
        "SELECT * FROM sqlite_schema", "sqlite", ReadOnly, frozenset({"main.sqlite_schema"})
    )


def test_duckdb_views_the_engine_makes_up_are_refused(tmp_path: Path) -> None:
    """DuckDB answers `main.duckdb_tables`, `main.sqlite_master`, ... in any file from its system
    catalogue: every such view it has is refused, allowlisted or not, while a CTE of the name is fine."""
    import duckdb

    path = tmp_path / "shop.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute("CREATE TABLE numbers (n INTEGER)")
    with duckdb.connect(str(path), read_only=True) as connection:
        internal = "SELECT view_name FROM duckdb_views() WHERE internal AND schema_name = 'main'"
        made_up = [v for (v,) in connection.execute(internal).fetchall()]
        for view in made_up:  # each one answers as a table of the file's
            assert connection.execute(f"SELECT count(*) FROM main.{view}").fetchone() is not None
    assert {"duckdb_tables", "duckdb_columns", "sqlite_master", "pragma_database_list"} <= set(made_up)
    for view in made_up:
        assert "DuckDB makes it up" in refused(f"SELECT * FROM {view}", "duckdb", ReadOnly)
        assert "DuckDB makes it up" in refused(f"SELECT * FROM main.{view.upper()}", "duckdb", ReadOnly)
        assert "makes it up" in refused(f"SELECT * FROM {view}", "duckdb", ReadOnly, frozenset({f"main.{view}"}))
    assert check("WITH duckdb_tables AS (SELECT 1 AS n) SELECT n FROM duckdb_tables", "duckdb").tables == ()


# ---- the same gaps against the real databases ---------------------------------------------------------------------

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MARIADB_URL = "mysql+pymysql://root@127.0.0.1:3306"


def _config(kind: str, url: str, schema: str) -> DatabaseConfig:
    return DatabaseConfig(
        id=f"guard_{kind}", name=schema, kind=kind, url=url, schema=schema, tables=None, statement_timeout_s=10,
        pool_size=1,
    )  # fmt: skip


def _through_the_connector(cfg: DatabaseConfig, query: str) -> list[dict[str, Any]]:
    """`query` as the `sql` field runs it: checked (reading the columns on PostgreSQL), then read-only."""
    checked = check_select(
        query, dialect=cfg.dialect, default_schema=cfg.schema, allowed_tables=cfg.allowed_tables, limit=11,
        columns=partial(databases.table_columns, cfg) if cfg.kind == "postgresql" else None,
    )  # fmt: skip
    return databases.query_rows(cfg, checked.sql, 10).records


@dataclass
class Planted:
    """A PostgreSQL schema with a table t and functions planted beside it, and a way to run SQL there
    the way the connector did before search_path was pinned (the schema first, pg_catalog implied)."""

    cfg: DatabaseConfig
    admin: sa.Engine

    def raw(self, query: str) -> list[Any]:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'SET LOCAL search_path = "{self.cfg.schema}"')
            return [tuple(row) for row in conn.exec_driver_sql(query.format(schema=self.cfg.schema))]


@pytest.fixture(scope="module")
def planted() -> Iterator[Planted]:
    require_service(5432, "PostgreSQL")
    schema = f"dg_planted_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_URL)
    planted = "LANGUAGE sql AS $$ SELECT 'PLANTED'::text $$"
    with admin.begin() as conn:
        for statement in [
            f"CREATE SCHEMA {schema}",
            f"CREATE TABLE {schema}.t (id int, name varchar(20))",
            f"INSERT INTO {schema}.t VALUES (1, 'Ann'), (2, 'Bob')",
            f"CREATE FUNCTION {schema}.planted({schema}.t) RETURNS text {planted}",
            f"CREATE FUNCTION {schema}.lower(varchar) RETURNS text {planted}",
            f"CREATE FUNCTION {schema}.unnest(int[]) RETURNS SETOF text {planted}",
            f"CREATE FUNCTION {schema}.always(varchar, varchar) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$",
            f"CREATE OPERATOR {schema}.= (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = {schema}.always)",
        ]:
            conn.exec_driver_sql(statement)
    try:
        yield Planted(_config("postgresql", PG_URL, schema), admin)
    finally:
        databases.dispose_engines()
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.mark.parametrize(
    ("query", "leak", "refusal"),
    [
        ("SELECT 10::pg_catalog.regrole::text AS r", "postgres", ReadOnly),  # a role's name from the catalogue
        ("SELECT 'pg_authid'::pg_catalog.regclass::oid::text AS r", "1260", ReadOnly),
        ("SELECT t.planted AS r FROM t", "PLANTED", BadInput),  # planted(t), through functional notation
        ("SELECT {schema}.t.planted AS r FROM t", "PLANTED", BadInput),
        ("SELECT (t).planted AS r FROM t", "PLANTED", ReadOnly),
        ("SELECT t.row_to_json::text AS r FROM t", '"name":"Ann"', BadInput),  # row_to_json(t), off the list
        ("SELECT r FROM {schema}.unnest(ARRAY[1]) AS r", "PLANTED", ReadOnly),
    ],
)
def test_postgresql_gaps_reproduced_are_refused(
    planted: Planted, query: str, leak: str, refusal: type[DatagraphError]
) -> None:
    assert leak in str(planted.raw(query))  # what the source answered before
    with pytest.raises(refusal):
        _through_the_connector(planted.cfg, query.format(schema=planted.cfg.schema))


def test_search_path_is_pinned_so_a_planted_function_or_operator_cannot_shadow_a_builtin(planted: Planted) -> None:
    # lower(varchar) and varchar = varchar in the source's schema fit a varchar column better than the
    # built-ins (text): with the schema on the path they won (CVE-2018-1058).
    assert planted.raw("SELECT lower(name) FROM t ORDER BY id") == [("PLANTED",), ("PLANTED",)]
    assert planted.raw("SELECT id FROM t WHERE name = 'nobody' ORDER BY id") == [(1,), (2,)]
    rows = _through_the_connector(planted.cfg, "SELECT lower(name) AS low, t.id FROM t WHERE name = 'Ann'")
    assert rows == [{"low": "ann", "id": 1}]
    with databases.read_only(planted.cfg) as conn:
        assert conn.exec_driver_sql("SHOW search_path").scalar() == "pg_catalog, pg_temp"


def test_sql_answers_functional_notation_with_a_problem_and_reads_qualified_columns(
    planted: Planted, tmp_path: Path
) -> None:
    sources = tmp_path / "sources.yaml"
    sources.write_text(f"sources:\n  db:\n    kind: postgresql\n    url: {PG_URL}\n    schema: {planted.cfg.schema}\n")
    query = '{ sql(source: "db", query: "%s") { success data error { code message } } }'
    with serving(make_settings(tmp_path, sources=str(sources))) as api:
        notation = api.data(query % "SELECT t.planted FROM t")["sql"]
        assert notation["success"] is False and notation["error"]["code"] == "BAD_INPUT"
        assert notation["error"]["message"].startswith("t.planted is not a column of t")
        fine = api.data(query % "SELECT t.id, lower(t.name) AS low FROM t ORDER BY t.id")["sql"]
        assert fine["data"] == [{"id": 1, "low": "ann"}, {"id": 2, "low": "bob"}]


@pytest.fixture(scope="module")
def mariadb() -> Iterator[DatabaseConfig]:
    require_service(3306, "MariaDB")
    name = f"dg_guard_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(MARIADB_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield _config("mysql", f"{MARIADB_URL}/{name}", name)
    finally:
        databases.dispose_engines()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name}")
        admin.dispose()


def test_mariadb_sequence_table_reproduced_is_refused(mariadb: DatabaseConfig) -> None:
    with databases.read_only(mariadb) as conn:  # the SEQUENCE engine answers in an empty database
        assert conn.exec_driver_sql(f"SELECT count(*) FROM {mariadb.schema}.seq_1_to_100000").scalar() == 100_000
    for query in ("SELECT count(*) AS n FROM seq_1_to_100000", f"SELECT * FROM {mariadb.schema}.seq_1_to_3"):
        with pytest.raises(ReadOnly, match="SEQUENCE"):
            _through_the_connector(mariadb, query)
