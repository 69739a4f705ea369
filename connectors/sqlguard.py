"""Read-only SQL, layer 1: check a user's SELECT and return SQL regenerated from the checked tree.

Drivers cannot be trusted to refuse `SELECT 1; DROP TABLE t`, and sqlglot reads some text
differently from the server (MySQL runs the `/*!50000 ... */` comments that sqlglot drops). So the
user's text is never sent as typed: it is parsed once for the source's dialect, the tree is checked,
every table is qualified with its schema, and the SQL the server runs is generated from that tree
without comments. The generated SQL is parsed and checked again, so what runs is what was checked.
Layer 2, underneath, is a read-only transaction with a statement timeout.

Every check fails closed:
- one statement, whose root is a query (SELECT, UNION / INTERSECT / EXCEPT, or one in parentheses);
- no node that writes, defines, locks, sets session state or runs a command, at any depth (a
  DELETE inside a CTE is found as well as one at the top), and no WITH RECURSIVE;
- every function is on an allowlist of sqlglot classes: names sqlglot does not know (`pg_sleep`,
  `dblink`) are `exp.Anonymous` and refused, and so are known classes left off the list
  (`read_csv`, `generate_series`);
- functions are called by their bare name: `pg_catalog.unnest(...)` or `public.f(...)` could be
  anything of that name, so no schema-qualified call, in FROM or anywhere else, and no `(x).name`;
- a cast is to a built-in type (or an array of one): not to a catalogue type (`oid`, `regclass`,
  ...: they read the catalogue), a schema-qualified or user-defined type (a domain's CHECK can call
  any function);
- every table is in the allowed set or, without one, in the default schema. An unqualified name is
  a CTE only where a WITH in scope defines it; any other is qualified with the default schema, so
  PostgreSQL's search_path cannot turn `pg_authid` into `pg_catalog.pg_authid`. Tables the engine
  makes up (MariaDB's `seq_1_to_1000000000`, SQLite's `sqlite_schema` and `pragma_database_list`,
  DuckDB's `duckdb_tables`, `duckdb_settings`, ...) are refused wherever they are asked for;
- on PostgreSQL, a qualified name `t.x` must be a column of t (`_pgnames`): otherwise PostgreSQL
  calls a function x on t's row.
DuckDB's file-reading functions (`read_csv`, `read_parquet`, `glob`, ...), `query(...)`,
`COLUMNS(...)`, lambdas and PIVOT are refused by the same allowlists; under the guard the file is
opened read-only with external access off (connectors._duckdb). Under all of it the connector pins
PostgreSQL's search_path to `pg_catalog, pg_temp`, so the bare
names resolve to the built-ins and nothing planted in a user schema can shadow one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ErrorLevel, ParseError, SqlglotError
from sqlglot.tokenizer_core import TokenType

from connectors._pgnames import ColumnsOf, check_qualified_columns, parse_error_place, tokens_of, too_many, visible_cte
from datagraph.errors import BadInput, ReadOnly, TooLarge

__all__ = ["DIALECTS", "CheckedSql", "ColumnsOf", "check_select", "limited"]

DIALECTS = ("postgres", "mysql", "sqlite", "duckdb")

# MySQL runs /*! ... */ and MariaDB /*M! ... */ as code; sqlglot reads both as comments.
_EXECUTABLE_COMMENT = re.compile(r"/\*m?!", re.IGNORECASE)

# Where sqlglot keeps statements and their parts: anything from these modules is refused, so a
# statement class added by a later sqlglot is refused before anyone lists it here.
_STATEMENT_MODULES = frozenset({f"sqlglot.expressions.{m}" for m in ("ddl", "dml", "properties", "constraints")})

# Nodes outside those modules that have no place in a read-only query, with what to call them.
_REFUSED: dict[type[exp.Expr], str] = {
    exp.Into: "SELECT ... INTO",
    exp.Lock: "FOR UPDATE / FOR SHARE",
    # MySQL's /*+ MAX_EXECUTION_TIME(0) */ would lift the statement timeout of layer 2.
    exp.Hint: "An optimizer hint",
    exp.Parameter: "A variable or parameter (@name, $1)",
    exp.SessionParameter: "A server variable (@@name)",
    exp.Placeholder: "A parameter placeholder",
    exp.PropertyEQ: "An assignment (:=)",
    exp.Operator: "OPERATOR(...)",
    exp.LockingStatement: "LOCKING",
    exp.Grant: "GRANT",
    exp.Revoke: "REVOKE",
    exp.Analyze: "ANALYZE",
    exp.Cache: "CACHE",
    exp.Uncache: "UNCACHE",
    exp.Refresh: "REFRESH",
    exp.Put: "PUT",
    exp.Get: "GET",
    exp.StoredProcedure: "A stored procedure",
    exp.Block: "A block",
    exp.MultitableInserts: "INSERT",
}
_NAMES: dict[type[exp.Expr], str] = {exp.TruncateTable: "TRUNCATE", exp.LoadData: "LOAD DATA", exp.Transaction: "BEGIN"}

_QUERY_ROOTS = (exp.Select, exp.SetOperation, exp.Subquery)

# The types a cast may name: built-in scalars, and arrays of them (an array's element type is a node
# of its own, checked in its turn). Anything else sqlglot parses as USERDEFINED (a domain, whose
# CHECK can call any function; `pg_catalog.regclass`; `"MyType"`) or as a catalogue type (oid,
# regclass, regrole, ...: a cast to one reads the catalogue) and is refused.
_T = exp.DType
_ALLOWED_TYPES = frozenset({
    _T.TINYINT, _T.SMALLINT, _T.MEDIUMINT, _T.INT, _T.BIGINT, _T.UTINYINT, _T.USMALLINT, _T.UMEDIUMINT,
    _T.UINT, _T.UBIGINT, _T.DECIMAL, _T.UDECIMAL, _T.FLOAT, _T.DOUBLE, _T.BOOLEAN,
    _T.CHAR, _T.NCHAR, _T.VARCHAR, _T.NVARCHAR, _T.BPCHAR, _T.TEXT, _T.CHARACTER_SET,
    _T.BINARY, _T.VARBINARY, _T.BLOB, _T.UUID, _T.JSON, _T.JSONB, _T.INET, _T.ARRAY,
    _T.DATE, _T.TIME, _T.TIMETZ, _T.TIMESTAMP, _T.TIMESTAMPTZ, _T.DATETIME, _T.YEAR, _T.INTERVAL,
})  # fmt: skip

# Tables the engines make up in any database, whatever it holds (measured): MariaDB's SEQUENCE
# engine answers any name like seq_1_to_1000000000 or seq_1_to_9_step_2 with as many rows as it asks
# for; SQLite answers its schema table and its eponymous virtual tables (pragma_database_list names
# the database file's path; dbstat, json_each, ...). Refused, allowlisted or not.
_MADE_UP_TABLES = {
    "mysql": (re.compile(r"seq_[0-9]+_to_[0-9]", re.IGNORECASE), "MariaDB's SEQUENCE engine makes up its rows"),
    "sqlite": (
        re.compile(r"sqlite_|pragma_|(dbstat|json_each|json_tree|generate_series)$", re.IGNORECASE),
        "SQLite makes it up: it is no table of the database's",
    ),
    # DuckDB answers `main.duckdb_tables`, `main.sqlite_master`, ... from its system catalogue
    # (measured on 2.0: every internal view of `system.main`), whatever the file holds.
    "duckdb": (
        re.compile(r"duckdb_|sqlite_|pragma_", re.IGNORECASE),
        "DuckDB makes it up from its catalogue: it is no table of the file's",
    ),
}

# Bare words the databases answer with the session's user or role rather than a column.
_SESSION_NAMES = frozenset({"user", "current_role", "current_user", "session_user", "system_user"})

# Built-ins sqlglot parses as unknown (`Anonymous`) functions, allowed by their bare, unqualified
# name on their own dialect: pure functions of their arguments or of the clock, nothing else.
_ALLOWED_NAMES: dict[str, frozenset[str]] = {
    "mysql": frozenset({
        "now", "curdate", "curtime", "utc_timestamp", "utc_date", "unix_timestamp", "weekday", "dayname",
        "monthname", "dayofweek", "dayofyear", "quarter", "week", "yearweek", "adddate", "subdate",
        "time_to_sec", "sec_to_time", "field", "crc32", "json_unquote", "truncate", "ifnull",
    }),
    "postgres": frozenset({
        "age", "make_date", "make_time", "make_timestamp", "make_interval", "date_part", "to_timestamp",
        "to_date", "jsonb_build_object", "json_build_object", "to_jsonb", "to_json", "jsonb_agg", "json_agg",
        "regexp_match", "cardinality", "every", "isfinite",
    }),
    "sqlite": frozenset({"strftime", "julianday", "unixepoch", "ifnull", "instr", "printf", "total"}),
    "duckdb": frozenset({
        "date_part", "datepart", "epoch_ms", "make_date", "make_time", "make_timestamp", "isfinite", "isnan",
        "isinf", "ifnull", "strlen", "list_value", "dayname", "monthname", "yearweek", "nullif",
    }),
}  # fmt: skip

# Exact classes, not subclasses: ExplodingGenerateSeries, say, must not ride in on a parent's entry.
_ALLOWED_FUNCTIONS: frozenset[type[exp.Func]] = frozenset({
    # logic, conditionals and types
    exp.And, exp.Or, exp.Xor, exp.Case, exp.If, exp.Coalesce, exp.Nullif, exp.Greatest, exp.Least,
    exp.Exists, exp.Cast, exp.TryCast, exp.Collate,
    # aggregates
    exp.Count, exp.CountIf, exp.Sum, exp.Avg, exp.Min, exp.Max, exp.Median, exp.Mode,
    exp.Stddev, exp.StddevPop, exp.StddevSamp, exp.Variance, exp.VariancePop,
    exp.PercentileCont, exp.PercentileDisc, exp.Corr, exp.CovarPop, exp.CovarSamp,
    exp.RegrSlope, exp.RegrIntercept, exp.RegrR2, exp.RegrCount, exp.RegrAvgx, exp.RegrAvgy,
    exp.ArrayAgg, exp.GroupConcat, exp.LogicalAnd, exp.LogicalOr, exp.AnyValue, exp.Grouping,
    exp.BitwiseAndAgg, exp.BitwiseOrAgg, exp.BitwiseXorAgg, exp.JSONArrayAgg, exp.JSONObjectAgg,
    # window functions
    exp.RowNumber, exp.Rank, exp.DenseRank, exp.PercentRank, exp.CumeDist, exp.Ntile,
    exp.Lag, exp.Lead, exp.FirstValue, exp.LastValue, exp.NthValue,
    # maths
    exp.Abs, exp.Ceil, exp.Floor, exp.Round, exp.Trunc, exp.Sqrt, exp.Cbrt, exp.Exp, exp.Ln, exp.Log,
    exp.Pow, exp.Sign, exp.Pi, exp.Degrees, exp.Radians, exp.Sin, exp.Cos, exp.Tan, exp.Asin,
    exp.Acos, exp.Atan, exp.Atan2, exp.Cot, exp.Rand, exp.WidthBucket,
    # text (REPEAT and SPACE are left out: one call can build a gigabyte)
    exp.Lower, exp.Upper, exp.Length, exp.Trim, exp.Substring, exp.SubstringIndex, exp.Replace,
    exp.Concat, exp.ConcatWs, exp.Left, exp.Right, exp.StrPosition, exp.Initcap,
    exp.Reverse, exp.SplitPart, exp.Translate, exp.Ascii, exp.Chr, exp.StartsWith, exp.EndsWith,
    exp.RegexpLike, exp.RegexpILike, exp.RegexpReplace, exp.RegexpExtract, exp.MD5, exp.SHA,
    exp.SHA2, exp.Hex, exp.Format, exp.ToChar, exp.ToNumber, exp.NumberToStr, exp.Elt,
    # dates and times
    exp.CurrentDate, exp.CurrentTime, exp.CurrentTimestamp, exp.Localtime, exp.Localtimestamp,
    exp.Date, exp.DateAdd, exp.DateSub, exp.DateDiff, exp.DateTrunc, exp.TimestampTrunc,
    exp.DateBin, exp.Extract, exp.Year, exp.Quarter, exp.Month, exp.Week, exp.WeekOfYear, exp.Day,
    exp.DayOfMonth, exp.DayOfWeek, exp.DayOfWeekIso, exp.DayOfYear, exp.Dayname, exp.Monthname,
    exp.Hour, exp.Minute, exp.Second, exp.LastDay, exp.StrToDate, exp.StrToTime, exp.TimeToStr,
    exp.UnixToTime, exp.TimeToUnix, exp.StrToUnix, exp.TsOrDsToDate, exp.TsOrDsToTimestamp,
    exp.TsOrDsAdd, exp.TsOrDsDiff, exp.TimestampAdd, exp.TimestampSub, exp.TimestampDiff,
    exp.DateFromParts, exp.ConvertTimezone, exp.JustifyDays, exp.JustifyHours,
    exp.JustifyInterval, exp.AddMonths, exp.MonthsBetween, exp.DateStrToDate, exp.TimeStrToTime,
    # JSON and arrays (UNNEST is bounded by its array; GENERATE_SERIES is not, and is refused)
    exp.JSONExtract, exp.JSONExtractScalar, exp.JSONBExtract, exp.JSONBExtractScalar,
    exp.JSONBContains, exp.JSONObject, exp.JSONArray, exp.Array, exp.ArraySize, exp.ArrayContains,
    exp.ArrayToString, exp.Unnest, exp.Explode,
})  # fmt: skip


@dataclass(frozen=True, slots=True)
class CheckedSql:
    """A checked query: `sql` is regenerated from the checked tree without comments; `tables` are
    the tables it reads as "schema.table"."""

    sql: str
    tables: tuple[str, ...]


def check_select(
    text: str,
    *,
    dialect: str,
    default_schema: str,
    allowed_tables: frozenset[str] | None,
    max_chars: int = 20_000,
    limit: int | None = None,
    columns: ColumnsOf | None = None,
) -> CheckedSql:
    """Check that `text` is one read-only query over allowed tables; raise `BadInput`, `TooLarge`
    or `ReadOnly` naming what is wrong. `allowed_tables` of None allows any table in `default_schema`.
    With `limit`, `sql` returns at most that many rows, as `limited` makes it (without parsing again).
    On PostgreSQL `columns` lists the columns of the tables the query reads, asked only when the
    query has a qualified name `t.x`; without it no such name is accepted."""
    if len(text) > max_chars:
        raise TooLarge(f"The SQL is {len(text):,} characters long; the limit is {max_chars:,}.")
    if not text.strip():
        raise BadInput("The SQL is empty: write one SELECT query.")
    if _EXECUTABLE_COMMENT.search(text):
        raise ReadOnly("Executable comments are not allowed: remove /*! ... */.")
    sql_dialect = _dialect(dialect)
    try:
        tree = _parse_one(text, sql_dialect)
        tables = _inspect(tree, sql_dialect, default_schema, allowed_tables)
        sql = tree.sql(dialect=sql_dialect, comments=False, unsupported_level=ErrorLevel.RAISE)
        # The generator, too, must not turn the checked tree into something else.
        again = _parse_one(sql, sql_dialect)
        if _inspect(again, sql_dialect, default_schema, allowed_tables) != tables:
            raise BadInput("The SQL could not be checked safely; try writing it more simply.")
        if dialect == "postgres":
            check_qualified_columns(again, sql_dialect, tables, columns)
    except RecursionError:
        raise BadInput("The SQL is nested too deeply.") from None
    except SqlglotError:
        raise BadInput("The SQL could not be checked safely; try writing it more simply.") from None
    if limit is not None:
        _check_limit(limit)
        sql = _limit(again, limit, sql_dialect)
    return CheckedSql(sql=sql, tables=tables)


def limited(checked_sql: str, limit: int, dialect: str) -> str:
    """Checked SQL that returns at most `limit` rows: the query's own LIMIT, lowered to `limit` when
    it is above it or absent. Not a wrapping `SELECT * FROM (...) LIMIT n`: MariaDB drops an ORDER BY
    inside a derived table, and a wrapper refuses repeated column names (measured)."""
    _check_limit(limit)
    sql_dialect = _dialect(dialect)
    return _limit(_parse_one(checked_sql, sql_dialect), limit, sql_dialect)


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise BadInput(f"The row limit must be a whole number, 0 or more, not {limit!r}.")


def _limit(query: exp.Expr, limit: int, sql_dialect: Dialect) -> str:
    """The SQL of a checked `query` with at most `limit` rows (see `limited`)."""
    if not isinstance(query, exp.Query):
        raise ValueError("limited() takes the SQL that check_select returned")
    current = query.args.get("limit")
    bound = current.expression if isinstance(current, exp.Limit) else None
    if isinstance(bound, exp.Literal) and bound.is_int and int(bound.this) <= limit:
        return query.sql(dialect=sql_dialect, comments=False)
    if current is not None and not (isinstance(bound, exp.Literal) and bound.is_int):
        # A LIMIT that is an expression: keep it, and bound the rows outside it.
        wrapped = exp.select("*").from_(query.subquery("_q")).limit(limit)
        return wrapped.sql(dialect=sql_dialect, comments=False)
    return query.limit(limit).sql(dialect=sql_dialect, comments=False)


def _dialect(name: str) -> Dialect:
    if name not in DIALECTS:
        raise ValueError(f"dialect must be one of {DIALECTS}, not {name!r}")
    return Dialect.get_or_raise(name)


def _parse_one(text: str, dialect: Dialect) -> exp.Expr:
    tokens = tokens_of(text, dialect)
    try:
        statements = [s for s in dialect.parser().parse(tokens, text) if s is not None]
    except ParseError as exc:
        if any(token.token_type == TokenType.INTO for token in tokens):
            # MySQL's INTO OUTFILE / DUMPFILE does not parse; it is refused for what it is.
            raise ReadOnly("SELECT ... INTO is not allowed in a read-only query.") from None
        raise BadInput(f"The SQL could not be parsed: {parse_error_place(exc)}.") from None
    if not statements:
        raise BadInput("The SQL is empty: write one SELECT query.")
    if len(statements) > 1:
        raise ReadOnly(f"Only one statement is allowed; this has {len(statements)}.")
    return statements[0]


def _inspect(tree: exp.Expr, dialect: Dialect, default_schema: str, allowed: frozenset[str] | None) -> tuple[str, ...]:
    """Check the tree; qualify its tables in place and return them."""
    if not isinstance(tree, _QUERY_ROOTS) or not isinstance(tree.unnest(), _QUERY_ROOTS):
        raise ReadOnly(f"Only a SELECT query is allowed, not {_describe(tree)}.")
    nodes = list(tree.walk())
    if (why := too_many(nodes)) is not None:
        raise BadInput(why)
    for node in nodes:
        if type(node).__module__ in _STATEMENT_MODULES or isinstance(node, tuple(_REFUSED)):
            raise ReadOnly(f"{_describe(node)} is not allowed in a read-only query.")
        if isinstance(node, exp.With) and node.args.get("recursive"):
            raise ReadOnly("WITH RECURSIVE is not allowed in a read-only query.")
    dialect_name = type(dialect).__name__.lower()
    named = _ALLOWED_NAMES.get(dialect_name, frozenset())
    for node in nodes:
        if isinstance(node, exp.ObjectIdentifier) or (isinstance(node, exp.DataType) and _is_catalogue_type(node)):
            raise ReadOnly("Casts to the database's catalogue types (oid, regclass, regrole, ...) are not allowed.")
        if isinstance(node, exp.DataType) and node.this not in _ALLOWED_TYPES:
            raise ReadOnly(
                f"A cast to {_short(node.sql(dialect=dialect))} is not allowed: cast to a built-in type such as"
                " integer, numeric, text, date or timestamp."
            )
        named_session = isinstance(node, exp.Column) and not node.table and node.name.lower() in _SESSION_NAMES
        if named_session and not node.this.quoted:
            raise ReadOnly(f"{node.name.upper()} is not allowed: it names the database session.")
    for node in nodes:
        if isinstance(node, exp.Anonymous) and node.name.lower() in named and not isinstance(node.parent, exp.Dot):
            continue  # an ordinary built-in sqlglot has no class for, called by its bare name
        if isinstance(node, exp.Func) and type(node) not in _ALLOWED_FUNCTIONS:
            raise ReadOnly(f"Function {_function_name(node, dialect)} is not allowed.")
    for node in nodes:
        if isinstance(node, exp.Dot):  # (t).f, ('pg_authid').regclass: PostgreSQL calls f(t), regclass(...)
            raise ReadOnly(
                f"{_short(node.sql(dialect=dialect))} is not allowed: PostgreSQL may read (x).name as a call"
                " of the function name on x. Name columns as table.column."
            )
    default = _normalize(_schema_identifier(default_schema, dialect), dialect)
    found: set[str] = set()
    for table in [n for n in nodes if isinstance(n, exp.Table)]:
        if isinstance(table.this, exp.Func):  # FROM unnest(...): the function was checked above
            if table.args.get("db") or table.args.get("catalog"):
                qualified = table.sql(dialect=dialect, comments=False).split("(", 1)[0].strip().lower()
                raise ReadOnly(f"Function {_short(qualified)} is not allowed: call it by its bare name.")
            continue
        if not isinstance(table.this, exp.Identifier) or table.args.get("catalog"):
            raise ReadOnly(f"Name tables as schema.table or table, not {_short(table.sql(dialect=dialect))}.")
        name = _normalize(table.this, dialect)
        if not isinstance(table.args.get("db"), exp.Identifier):
            if _is_cte(table, name, dialect):
                continue
            table.set("db", _schema_identifier(default_schema, dialect))
        schema = _normalize(table.args["db"], dialect)
        key = f"{schema}.{name}"
        if "." in schema or "." in name:  # "a.b".c and a."b.c" would share one key
            raise ReadOnly(f"Table {_short(key)} is not one this source allows.")
        if dialect_name == "duckdb" and any(c in name for c in "/\\:"):
            # DuckDB reads `FROM 'file'` (a string, parsed as a quoted name) as a file or URL to scan.
            raise ReadOnly(f"Table {_short(key)} is not one this source allows: it names a file or URL.")
        if (key not in allowed) if allowed is not None else schema != default:
            raise ReadOnly(f"Table {key} is not one this source allows.")
        made_up, why = _MADE_UP_TABLES.get(dialect_name, (None, ""))
        if made_up is not None and made_up.match(name):
            raise ReadOnly(f"Table {_short(key)} is not one this source allows ({why}).")
        found.add(key)
    return tuple(sorted(found))


def _is_cte(table: exp.Table, name: str, dialect: Dialect) -> bool:
    """True when a WITH in scope defines `name`: a CTE sees the ones before it, the query body all."""
    return visible_cte(table, name, lambda identifier: _normalize(identifier, dialect)) is not None


def _is_catalogue_type(node: exp.DataType) -> bool:
    """`pg_catalog.regclass`, `"regrole"`, `oid`: however it is spelled, a type that reads the catalogue."""
    if node.this != exp.DType.USERDEFINED:
        return False
    last = node.args.get("kind")
    while isinstance(last, exp.Dot):
        last = last.expression
    name = last.name.lower() if isinstance(last, exp.Expr) else str(last or "").lower()
    return name.startswith("reg") or name == "oid"


def _normalize(identifier: exp.Identifier, dialect: Dialect) -> str:
    """The name as the server sees it: folded or not as the dialect folds unquoted names."""
    return dialect.normalize_identifier(identifier.copy()).name


def _schema_identifier(schema: str, dialect: Dialect) -> exp.Identifier:
    identifier = exp.to_identifier(schema)
    if identifier.quoted or _normalize(identifier, dialect) == schema:
        return identifier
    return exp.to_identifier(schema, quoted=True)  # "MySchema" must not fold to myschema


def _describe(node: exp.Expr) -> str:
    if isinstance(node, exp.Command):
        return _short(node.name.upper())
    if type(node) in _REFUSED:
        return _REFUSED[type(node)]
    return _NAMES.get(type(node), node.key.upper())


def _function_name(node: exp.Func, dialect: Dialect) -> str:
    if isinstance(node, exp.Anonymous):
        return _short(node.name.lower())
    return _short(node.sql(dialect=dialect).split("(", 1)[0].strip().lower())


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."
