"""The SQL guard under generated queries (issue 16, item 10).

A small grammar writes queries that mix what a source allows with what it does not: tables outside
the allowlist and in the catalogue, functions off the list or called through a schema, casts to
catalogue and user-defined types, PostgreSQL's functional notation (`t.f` is `f(t)`), MariaDB's
sequence tables, in joins, subqueries, CTEs and unions, with quoting, case and comments varied.
The invariant: whatever the guard accepts reads, once its regenerated SQL is parsed again, only
allowlisted tables and functions, casts only to built-in types, and names only columns after a dot.
The everyday tests check the guard alone (fixed seed); the slow one runs what it accepts on
PostgreSQL as a user that may read only the allowlisted tables, beside functions planted to shadow
built-ins, and checks that nothing it was not allowed to read or call ran.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial

import pytest
import sqlalchemy as sa
import sqlglot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlglot import exp
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers
from support import budget, require_service

from connectors import databases
from connectors.sources import DatabaseConfig
from connectors.sqlguard import check_select
from datagraph.errors import DatagraphError, ReadOnly

COLUMNS = {"orders": ("id", "customer_id", "total", "note"), "customers": ("id", "name")}
# Names after a dot that are no column: PostgreSQL would call the function of that name on the row.
NOTATION = ("row_to_json", "to_jsonb", "count", "pg_typeof", "planted", "text", "regclass")
# What the grammar names after a dot when it means a column: the tables', its subqueries' (c0, c1), its
# table functions' (x), and those of the tables outside the allowlist (id).
KNOWN_COLUMNS = frozenset({"*", "c0", "c1", "x"}.union(*COLUMNS.values()))
assert not KNOWN_COLUMNS & set(NOTATION)

ALLOWED_CALLS = ("lower({})", "upper({})", "abs({})", "length({})", "coalesce({}, NULL)", "round({})", "max({})")
REFUSED_CALLS = {
    "postgres": (
        "pg_sleep(0)", "pg_read_file('/etc/passwd')", "set_config('search_path', 'x', true)", "version()",
        "current_setting('is_superuser')", "txid_current()", "pg_catalog.lower({})", "{schema}.lower({})",
        "public.upper({})", "query_to_xml('SELECT 1', true, true, '')", "row_to_json(ROW(1))",
    ),
    "mysql": (
        "SLEEP(0)", "BENCHMARK(10, MD5('a'))", "LOAD_FILE('/etc/passwd')", "DATABASE()", "USER()", "VERSION()",
        "{schema}.f({})", "mysql.lower({})",
    ),
    "duckdb": (
        "read_text('/etc/passwd')", "current_setting('threads')", "getvariable('x')", "version()",
        "query('SELECT 1')", "{schema}.lower({})", "system.main.lower({})", "repeat('x', 1000000000)",
        "list_transform([1], y -> y + 1)",
    ),
}  # fmt: skip
CASTS = {
    "postgres": (
        "{}::int", "CAST({} AS text)", "{}::varchar(5)", "{}::numeric(10, 2)", "{}::date",
        "{}::regclass", "{}::pg_catalog.regclass", "{}::oid", "{}::regrole", "{}::{schema}.mood",
        "{}::pg_catalog.text", '{}::"regtype"', "CAST({} AS pg_catalog.regproc)",
    ),
    "mysql": ("CAST({} AS SIGNED)", "CAST({} AS CHAR)", "CAST({} AS DECIMAL(10, 2))", "CAST({} AS DATE)"),
    "duckdb": (
        "{}::INTEGER", "CAST({} AS VARCHAR)", "{}::DECIMAL(10, 2)", "{}::DATE", "CAST({} AS BIGINT)",
        "{}::HUGEINT", "{}::{schema}.mood", "CAST({} AS STRUCT(a INTEGER))", "{}::MAP(INTEGER, INTEGER)",
    ),
}  # fmt: skip
OUTSIDE = {
    "postgres": (
        "secrets", "pg_authid", "pg_catalog.pg_authid", "pg_catalog.pg_class", "information_schema.tables",
        "other.orders", '"Orders"', "pg_user",
    ),
    "mysql": (
        "secrets", "mysql.user", "information_schema.tables", "performance_schema.threads", "seq_1_to_1000000",
        "{schema}.seq_1_to_9_step_2", "SEQ_1_TO_3", "otherdb.orders",
    ),
    "duckdb": (
        "secrets", "duckdb_tables", "{schema}.sqlite_master", "DUCKDB_SETTINGS", "information_schema.tables",
        "pg_catalog.pg_class", "system.main.duckdb_databases", "'/etc/passwd'", "'secrets.csv'", "other.orders",
    ),
}  # fmt: skip
TABLE_FUNCTIONS = {
    "postgres": (
        "unnest(ARRAY[1, 2])", "pg_catalog.unnest(ARRAY[1, 2])", "{schema}.unnest(ARRAY[1, 2])",
        "generate_series(1, 3)", "pg_catalog.generate_series(1, 3)",
    ),
    "mysql": (),
    "duckdb": (
        "unnest([1, 2])", "{schema}.unnest([1, 2])", "range(3)", "read_csv('/etc/passwd')", "glob('/etc/*')",
        "duckdb_settings()",
    ),
}  # fmt: skip
SEPARATORS = (" ", " ", " ", "\n", " /* c */ ", " -- c\n", "\t")


@dataclass(frozen=True)
class Item:
    """A FROM item as the grammar wrote it: its text, the name columns use for it, its columns."""

    sql: str
    name: str
    columns: tuple[str, ...]


@dataclass
class Grammar:
    dialect: str
    schema: str
    bad_one_in: int  # how often a choice takes what the source does not allow
    ctes: list[str] = field(default_factory=list)

    def quote(self, name: str) -> str:
        return f"`{name}`" if self.dialect == "mysql" else f'"{name}"'


def one(draw: st.DrawFn, g: Grammar, good: list[str], bad: list[str] | tuple[str, ...]) -> str:
    """One of `good`, or now and then (one time in `g.bad_one_in`) one of `bad`."""
    if bad and draw(st.integers(1, g.bad_one_in)) == 1:
        return draw(st.sampled_from(bad))
    return draw(st.sampled_from(good))


@st.composite
def items(draw: st.DrawFn, g: Grammar, depth: int, taken: str = "") -> Item:
    alias = draw(st.sampled_from([a for a in ("a", "b", "s", "t", None) if a != taken]))
    kind = one(
        draw,
        g,
        ["allowed", "allowed", "allowed"] + ["derived"] * (depth > 0) + ["cte"] * bool(g.ctes),
        ["outside", "function"],
    )
    if kind == "allowed":
        table = draw(st.sampled_from(sorted(COLUMNS)))
        spellings = [table, g.quote(table), f"{g.schema}.{table}", f"{g.quote(g.schema)}.{g.quote(table)}"]
        if g.dialect != "mysql":  # MariaDB's table names are case-sensitive: ORDERS is another table there
            spellings.append(table.upper())
        spelled = draw(st.sampled_from(spellings))
        return Item(f"{spelled} AS {alias}" if alias else spelled, alias or table, COLUMNS[table])
    if kind == "outside":
        table = draw(st.sampled_from(OUTSIDE[g.dialect])).format(schema=g.schema)
        return Item(f"{table} AS {alias or 'x'}", alias or "x", ("id",))
    if kind == "function" and TABLE_FUNCTIONS[g.dialect]:
        call = draw(st.sampled_from(TABLE_FUNCTIONS[g.dialect])).format(schema=g.schema)
        return Item(f"{call} AS {alias or 'u'}(x)", alias or "u", ("x",))
    if kind == "cte":
        cte = draw(st.sampled_from(g.ctes))
        return Item(f"{cte} AS {alias}" if alias else cte, alias or cte, ("c0",))
    inner = draw(selects(g, depth - 1))
    return Item(f"({inner}) AS {alias or 'd'}", alias or "d", ("c0",))


@st.composite
def expressions(draw: st.DrawFn, g: Grammar, scope: list[Item], depth: int) -> str:
    item = draw(st.sampled_from(scope))
    option = one(
        draw,
        g,
        ["column", "qualified", "qualified", "literal", "call", "text", "cast", "binary"]
        + ["scalar", "exists"] * (depth > 0),
        ["notation", "session"],
    )
    if option == "column" and len(scope) == 1:  # (in a join, a bare name is most often ambiguous)
        return draw(st.sampled_from(item.columns))
    if option in ("column", "qualified"):
        return f"{item.name}.{draw(st.sampled_from(item.columns))}"
    if option == "notation":
        name = draw(st.sampled_from(NOTATION))
        return draw(st.sampled_from([f"{item.name}.{name}", f"({item.name}).{name}", f"{g.schema}.orders.{name}"]))
    if option == "literal":
        return draw(st.sampled_from(["1", "'x'", "NULL", "2.5"]))
    if option == "session":
        return draw(st.sampled_from(["current_user", "user", "session_user"]))
    if option == "text":  # a built-in on a varchar column: what a function planted beside the table would shadow
        texts = [c for c in item.columns if c in ("name", "note")] or ["'x'"]
        call = draw(st.sampled_from(["lower({})", "upper({})", "length({})"]))
        return call.format(f"{item.name}.{draw(st.sampled_from(texts))}")
    inner = draw(expressions(g, scope, depth - 1)) if depth > 0 else draw(st.sampled_from(item.columns))
    if option == "call":
        return one(draw, g, list(ALLOWED_CALLS), REFUSED_CALLS[g.dialect]).replace("{schema}", g.schema).format(inner)
    if option == "cast":
        return one(draw, g, CASTS[g.dialect][:5], CASTS[g.dialect][5:]).replace("{schema}", g.schema).format(inner)
    if option == "binary":
        other = draw(st.sampled_from(item.columns))
        return f"{inner} {draw(st.sampled_from(['+', '=', '<', '||' if g.dialect == 'postgres' else '-']))} {other}"
    sub = draw(selects(g, depth - 1, single=True))
    return f"({sub} LIMIT 1)" if option == "scalar" else f"EXISTS ({sub})"


@st.composite
def selects(draw: st.DrawFn, g: Grammar, depth: int, single: bool = False) -> str:
    """SELECT ... AS c0[, ...] FROM ...: every query's first column is c0, as CTEs and derived tables expect."""
    scope = [draw(items(g, depth))]
    joins = ""
    if draw(st.integers(0, 2)) == 0:
        other = draw(items(g, 0, taken=scope[0].name))
        scope.append(other)
        joins = f" JOIN {other.sql} ON {scope[0].name}.{scope[0].columns[0]} = {other.name}.{other.columns[0]}"
    count = 1 if single else draw(st.integers(1, 2))
    projections = [f"{draw(expressions(g, scope, depth))} AS c{i}" for i in range(count)]
    if not single and draw(st.integers(0, 5)) == 0:
        projections = [draw(st.sampled_from(["*", f"{scope[0].name}.*"]))]
    where = f" WHERE {draw(expressions(g, scope, depth))} IS NOT NULL" if draw(st.booleans()) else ""
    return f"SELECT {', '.join(projections)} FROM {scope[0].sql}{joins}{where}"


@st.composite
def queries(draw: st.DrawFn, dialect: str, schema: str, bad_one_in: int = 6) -> str:
    g = Grammar(dialect, schema, bad_one_in)
    prefix = ""
    if draw(st.integers(0, 2)) == 0:
        body = draw(selects(g, 0, single=True))
        g.ctes.append(draw(st.sampled_from(["recent", "everything", "orders"])))  # a CTE may shadow a table
        prefix = f"WITH {g.ctes[0]} AS ({body}) "
    query = draw(selects(g, 1))
    if draw(st.integers(0, 4)) == 0:
        query = f"{query} UNION ALL {draw(selects(g, 0))}"
    words = (prefix + query).split(" ")
    rnd = draw(st.randoms(use_true_random=False))
    return words[0] + "".join(rnd.choice(SEPARATORS) + word for word in words[1:])


# ---- the invariant --------------------------------------------------------------------------------------------------

ALLOWED_FUNCTIONS = frozenset(
    type(node)
    for node in sqlglot.parse_one(
        "SELECT "
        + ", ".join(c.format("x") for c in ALLOWED_CALLS)
        + ", CAST(x AS INT), a AND b OR c, EXISTS (SELECT 1)"
        ", UNNEST(ARRAY[1])"
    ).find_all(exp.Func)
)
BUILT_IN_TYPES = frozenset(
    node.this
    for node in sqlglot.parse_one(
        "SELECT CAST(x AS INT), CAST(x AS TEXT), CAST(x AS VARCHAR(5)), CAST(x AS NUMERIC(10, 2)), CAST(x AS DATE), "
        "CAST(x AS CHAR), CAST(x AS BIGINT)",
        read="postgres",
    ).find_all(exp.DataType)
) | {exp.DType.BIGINT, exp.DType.CHAR, exp.DType.DECIMAL, exp.DType.UBIGINT}


def allowlisted(sql: str, dialect: str, allowed: frozenset[str]) -> None:
    """Assert what the accepted `sql` reads: allowlisted tables (or its own CTEs), allowlisted
    functions by their bare names, built-in casts, and after a dot only names that are columns."""
    tree = normalize_identifiers(sqlglot.parse_one(sql, read=dialect), dialect=dialect)
    ctes = {cte.alias for cte in tree.find_all(exp.CTE)}
    for table in tree.find_all(exp.Table):
        assert not table.args.get("catalog"), sql
        if isinstance(table.this, exp.Func):
            assert table.args.get("db") is None, sql
        elif table.args.get("db") is None:
            assert table.name in ctes, sql
        else:
            assert f"{table.db}.{table.name}" in allowed, sql
            assert not table.name.lower().startswith("seq_"), sql
    for func in tree.find_all(exp.Func):
        assert type(func) in ALLOWED_FUNCTIONS, (type(func).__name__, sql)
    assert tree.find(exp.Dot, exp.ObjectIdentifier) is None, sql
    for data_type in tree.find_all(exp.DataType):
        assert data_type.this in BUILT_IN_TYPES, (data_type.this, sql)
    if dialect == "postgres":
        for column in tree.find_all(exp.Column):
            assert not column.table or column.name in KNOWN_COLUMNS, sql
            assert column.table or column.name not in ("user", "current_user", "session_user"), sql


def guard(
    sql: str, dialect: str, schema: str, allowed: frozenset[str], cfg: DatabaseConfig | None = None
) -> str | None:
    """The SQL the guard would run for `sql` (its columns from `cfg`, or the grammar's), or None if refused."""
    if cfg is not None:
        columns = partial(databases.table_columns, cfg)
    else:
        known = {f"{schema}.{table}": names for table, names in COLUMNS.items()}
        columns = lambda tables: {t: known[t] for t in tables if t in known}  # noqa: E731
    try:
        return check_select(
            sql, dialect=dialect, default_schema=schema, allowed_tables=allowed, columns=columns, limit=20
        ).sql
    except DatagraphError:
        return None


def _allowed(schema: str) -> frozenset[str]:
    return frozenset(f"{schema}.{table}" for table in COLUMNS)


def fuzz(examples: int) -> settings:
    """A fixed seed, so a run is repeatable and the everyday tier stays quick."""
    return settings(
        max_examples=examples, deadline=None, derandomize=True, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )  # fmt: skip


def test_what_the_guard_accepts_on_postgresql_reads_only_the_allowlist() -> None:
    seen: dict[str, list[str]] = {"accepted": [], "refused": []}

    @fuzz(200)
    @given(queries("postgres", "public"))
    def each(sql: str) -> None:
        checked = guard(sql, "postgres", "public", _allowed("public"))
        seen["refused" if checked is None else "accepted"].append(sql)
        if checked is not None:
            allowlisted(checked, "postgres", _allowed("public"))

    each()
    # The invariant says something only if the grammar reaches both sides, and the gaps of item 10.
    assert len(seen["accepted"]) >= 30 and len(seen["refused"]) >= 30, {k: len(v) for k, v in seen.items()}
    refused = "\n".join(seen["refused"])
    gaps = {
        "a catalogue cast": ("::pg_catalog.regclass", "::regclass", "::oid", "::regrole", 'regtype"', ".regproc)"),
        "a schema-qualified function in FROM": ("pg_catalog.unnest(", "public.unnest(", "pg_catalog.generate_series("),
        "functional notation": tuple(f".{name}" for name in NOTATION),
        "a catalogue table": ("pg_authid", "pg_class", "pg_user", "information_schema."),
        "a comment": ("/* c */", "-- c"),
    }
    for gap, spellings in gaps.items():
        assert any(s in refused for s in spellings), gap


@fuzz(100)
@given(queries("mysql", "shop"))
def test_what_the_guard_accepts_on_mariadb_reads_only_the_allowlist(sql: str) -> None:
    checked = guard(sql, "mysql", "shop", _allowed("shop"))
    if checked is not None:
        allowlisted(checked, "mysql", _allowed("shop"))


@fuzz(budget(60, 300))
@given(queries("duckdb", "main"))
def test_what_the_guard_accepts_on_duckdb_reads_only_the_allowlist(sql: str) -> None:
    checked = guard(sql, "duckdb", "main", _allowed("main"))
    if checked is not None:
        allowlisted(checked, "duckdb", _allowed("main"))


def test_what_the_guard_accepts_runs_on_a_duckdb_file_without_reading_anything_else(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """In-process and quick: what the guard accepts runs through the connector on a file beside a
    secrets table; each answers rows or a Problem, and no row holds the secret."""
    import duckdb

    path = tmp_path_factory.mktemp("fuzz") / "shop.duckdb"
    with duckdb.connect(str(path)) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER, customer_id INTEGER, total DOUBLE, note VARCHAR)")
        conn.execute("CREATE TABLE customers (id INTEGER, name VARCHAR)")
        conn.execute("CREATE TABLE secrets (id INTEGER, secret VARCHAR)")
        conn.execute("INSERT INTO orders VALUES (1, 1, 9.5, 'n'), (2, 2, 20.0, NULL)")
        conn.execute("INSERT INTO customers VALUES (1, 'ann'), (2, 'bob')")
        conn.execute("INSERT INTO secrets VALUES (1, 'TOPSECRET')")
    cfg = DatabaseConfig(
        id="fuzz_duck", name="fuzz", kind="duckdb", url=f"duckdb:///{path}", schema="main", tables=None,
        statement_timeout_s=5, pool_size=1,
    )  # fmt: skip
    ran = {"rows": 0, "problems": 0, "refused": 0}

    @fuzz(budget(25, 200))
    @given(queries("duckdb", "main"))
    def each(sql: str) -> None:
        checked = guard(sql, "duckdb", "main", _allowed("main"))
        if checked is None:
            ran["refused"] += 1
            return
        try:
            rows = databases.query_rows(cfg, checked, 20)
        except DatagraphError:
            ran["problems"] += 1
            return
        ran["rows"] += 1
        assert "TOPSECRET" not in repr(rows.records), sql

    try:
        each()
    finally:
        databases.dispose_engines()
    assert ran["rows"] >= 3 and ran["refused"] >= 5, ran


# ---- the slow tier: what is accepted, run on PostgreSQL ---------------------------------------------------------------

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="module")
def reader() -> Iterator[DatabaseConfig]:
    """A schema with orders, customers (allowed) and secrets, functions planted to shadow built-ins,
    and a login role that may read only orders and customers."""
    require_service(5432, "PostgreSQL")
    suffix = uuid.uuid4().hex[:8]
    schema, role = f"dg_fuzz_{suffix}", f"dg_fuzz_reader_{suffix}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    planted = "LANGUAGE sql AS $$ SELECT 'PLANTED'::text $$"
    with admin.connect() as conn:
        for statement in [
            f"CREATE SCHEMA {schema}",
            f"CREATE TABLE {schema}.orders (id int, customer_id int, total numeric, note varchar(20))",
            f"CREATE TABLE {schema}.customers (id int, name varchar(20))",
            f"CREATE TABLE {schema}.secrets (id int, secret text)",
            f"INSERT INTO {schema}.orders VALUES (1, 1, 9.5, 'first'), (2, 2, -3, NULL)",
            f"INSERT INTO {schema}.customers VALUES (1, 'Ann'), (2, 'Bob')",
            f"INSERT INTO {schema}.secrets VALUES (1, 'SECRET')",
            f"CREATE FUNCTION {schema}.lower(varchar) RETURNS text {planted}",
            f"CREATE DOMAIN {schema}.mood AS text CHECK ({schema}.lower(VALUE::varchar) = 'PLANTED')",
            f"CREATE FUNCTION {schema}.upper(varchar) RETURNS text {planted}",
            f"CREATE FUNCTION {schema}.length(varchar) RETURNS text {planted}",
            f"CREATE FUNCTION {schema}.planted({schema}.orders) RETURNS text {planted}",
            f"CREATE FUNCTION {schema}.planted({schema}.customers) RETURNS text {planted}",
            f"CREATE FUNCTION {schema}.unnest(int[]) RETURNS SETOF text {planted}",
            f"CREATE ROLE {role} LOGIN",
            f"GRANT USAGE ON SCHEMA {schema} TO {role}",
            f"GRANT SELECT ON {schema}.orders, {schema}.customers TO {role}",
        ]:
            conn.exec_driver_sql(statement)
    cfg = DatabaseConfig(
        id="fuzz", name="fuzz", kind="postgresql", url=f"postgresql+psycopg://{role}@127.0.0.1:5432/test",
        schema=schema, tables=("orders", "customers"), statement_timeout_s=5, pool_size=1,
    )  # fmt: skip
    try:
        yield cfg
    finally:
        databases.dispose_engines()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
            conn.exec_driver_sql(f"DROP OWNED BY {role}")
            conn.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()


@pytest.mark.slow
def test_what_the_guard_accepts_runs_on_postgresql_without_reading_or_calling_anything_else(
    reader: DatabaseConfig,
) -> None:
    schema = reader.schema
    with pytest.raises(ReadOnly), databases.read_only(reader) as conn:  # the reader may not read secrets
        conn.exec_driver_sql(f"SELECT * FROM {schema}.secrets")
    ran = {"accepted": 0, "answered": 0}

    @fuzz(budget(150, 400))
    @given(queries("postgres", schema, bad_one_in=3))
    def run(sql: str) -> None:
        checked = guard(sql, "postgres", schema, reader.allowed_tables or frozenset(), reader)
        if checked is None:
            return
        ran["accepted"] += 1
        allowlisted(checked, "postgres", reader.allowed_tables or frozenset())
        try:
            rows = databases.query_rows(reader, checked, 20).records
        except ReadOnly as exc:  # 42501: the reader was refused something
            raise AssertionError(f"{sql!r} read past its grants: {exc.message}") from None
        except DatagraphError:
            return  # a type mismatch, a missing column, ...: the database refused it as written
        ran["answered"] += 1
        assert "PLANTED" not in repr(rows) and "SECRET" not in repr(rows), sql

    run()
    assert ran["answered"] >= 10, ran
