"""SQL over datasets: check a user's SELECT for Polars' SQL context and return SQL regenerated from
the checked tree, with the dataset ids it reads.

Polars' SQL context answers more than SELECTs over the frames it is given: `read_csv('/etc/passwd')`,
`read_parquet(...)`, `read_json(...)` and `read_ipc(...)` read any file the server can, and
`CREATE TABLE`, `SHOW TABLES` and `EXPLAIN` run too. So, as for database SQL (`connectors.sqlguard`),
the user's text is never run as typed: it is parsed once with sqlglot's PostgreSQL dialect (Polars
SQL follows PostgreSQL's closely), the tree is checked, every table is rewritten as the quoted id of
the dataset it names, and the SQL Polars runs is generated from that tree without comments, then
parsed and checked again, so what runs is what was checked.

Every check fails closed:
- one statement, whose root is a query (SELECT, UNION / INTERSECT / EXCEPT, or one in parentheses);
- no node that writes, defines, sets or runs anything, at any depth (`SELECT ... INTO`, a CTE that
  is a DDL, ...), no WITH RECURSIVE, no parameters, no LATERAL, no `(x).name`;
- every function is on an allowlist of sqlglot classes (checked to run in Polars 2.1), by exact
  class: names sqlglot does not know are `exp.Anonymous` and refused unless listed by name, and known
  classes left off the list (`read_csv`, `read_parquet`, `unnest` in FROM) are refused wherever they
  are, in FROM, a subquery, a CTE or a join condition;
- a cast is to a plain built-in type;
- every table is a plain name: a CTE in scope, or a dataset id (lower-case letters, digits, `-` and
  `_`; quoted where it is not a plain identifier). No schema, no string (`FROM '/etc/passwd'`), no
  function. Whether each dataset exists is the caller's question (NOT_FOUND).
Under it, the engine registers only the datasets the query names in a fresh SQL context.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import ErrorLevel, ParseError, SqlglotError
from sqlglot.generators.postgres import PostgresGenerator

from connectors._pgnames import parse_error_place, tokens_of, too_many, visible_cte
from datagraph.errors import BadInput, TooLarge

__all__ = ["MAX_SQL_CHARS", "CheckedDatasetSql", "check_dataset_sql"]

MAX_SQL_CHARS = 20_000

# A dataset id as the server makes them (resolvers.datasets.dataset_slug, with a "-2" suffix on a clash).
_DATASET_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,79}")

_STATEMENT_MODULES = frozenset({f"sqlglot.expressions.{m}" for m in ("ddl", "dml", "properties", "constraints")})

# Nodes with no place in one read-only SELECT over datasets, with what to call them.
_REFUSED: dict[type[exp.Expr], str] = {
    exp.Into: "SELECT ... INTO",
    exp.Lock: "FOR UPDATE / FOR SHARE",
    exp.Hint: "An optimizer hint",
    exp.Parameter: "A parameter ($1, @name)",
    exp.SessionParameter: "A session variable (@@name)",
    exp.Placeholder: "A parameter placeholder",
    exp.PropertyEQ: "An assignment (:=)",
    exp.Operator: "OPERATOR(...)",
    exp.Command: "A command",
    exp.Lateral: "LATERAL",
    exp.Dot: "(x).name",
}

_QUERY_ROOTS = (exp.Select, exp.SetOperation, exp.Subquery)

_T = exp.DType
_ALLOWED_TYPES = frozenset({
    _T.TINYINT, _T.SMALLINT, _T.INT, _T.BIGINT, _T.UTINYINT, _T.USMALLINT, _T.UINT, _T.UBIGINT,
    _T.DECIMAL, _T.FLOAT, _T.DOUBLE, _T.BOOLEAN, _T.CHAR, _T.VARCHAR, _T.TEXT,
    _T.DATE, _T.TIME, _T.TIMESTAMP, _T.DATETIME, _T.INTERVAL,
})  # fmt: skip

# Polars SQL functions sqlglot has no class for, allowed by their bare name: pure functions of their
# arguments.
_ALLOWED_NAMES = frozenset({
    "quantile_cont", "quantile_disc", "log1p", "octet_length", "strptime", "strftime",
    "sind", "cosd", "tand", "asind", "acosd", "atand", "cotd",
})  # fmt: skip

# Exact classes, not subclasses; each one checked to run in Polars 2.1 as this module generates it.
_ALLOWED_FUNCTIONS: frozenset[type[exp.Func]] = frozenset({
    # logic, conditionals and types
    exp.And, exp.Or, exp.Case, exp.If, exp.Coalesce, exp.Nullif, exp.Greatest, exp.Least,
    exp.Exists, exp.Cast, exp.TryCast,
    # aggregates
    exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max, exp.Median, exp.Stddev, exp.StddevSamp,
    exp.Variance, exp.Corr, exp.CovarPop, exp.CovarSamp, exp.First, exp.Last, exp.ArrayAgg,
    exp.GroupConcat,
    # window functions
    exp.RowNumber, exp.Rank, exp.DenseRank, exp.PercentRank, exp.CumeDist, exp.Ntile,
    exp.Lag, exp.Lead, exp.FirstValue, exp.LastValue, exp.NthValue,
    # maths
    exp.Abs, exp.Ceil, exp.Floor, exp.Round, exp.Trunc, exp.Sqrt, exp.Cbrt, exp.Exp, exp.Ln, exp.Log,
    exp.Pow, exp.Sign, exp.Pi, exp.Degrees, exp.Radians, exp.Sin, exp.Cos, exp.Tan, exp.Asin,
    exp.Acos, exp.Atan, exp.Atan2, exp.Cot,
    # text
    exp.Lower, exp.Upper, exp.Length, exp.BitLength, exp.Trim, exp.Substring, exp.Replace,
    exp.Concat, exp.ConcatWs, exp.Left, exp.Right, exp.StrPosition, exp.Initcap, exp.Reverse,
    exp.SplitPart, exp.StartsWith, exp.EndsWith, exp.RegexpLike, exp.RegexpILike, exp.RegexpReplace,
    exp.Normalize, exp.StringToArray,
    # dates and times
    exp.CurrentDate, exp.CurrentTimestamp, exp.Date, exp.Timestamp, exp.Extract, exp.TimestampTrunc,
    # arrays (UNNEST in a select list is Explode, bounded by its array)
    exp.Array, exp.ArrayContains, exp.ArrayToString, exp.ArraySize, exp.Explode,
})  # fmt: skip


class _PolarsSql(Postgres):
    """PostgreSQL as sqlglot reads and writes it, but writing the few functions Polars spells
    differently: MEDIAN (not PERCENTILE_CONT), TRY_CAST (not CAST) and ARRAY_LENGTH of one argument."""

    class Generator(PostgresGenerator):
        TRANSFORMS: ClassVar[dict[type[exp.Expr], Any]] = {
            **PostgresGenerator.TRANSFORMS,
            exp.Median: lambda self, e: self.func("MEDIAN", e.this),
            exp.TryCast: lambda self, e: f"TRY_CAST({self.sql(e, 'this')} AS {self.sql(e, 'to')})",
            exp.ArraySize: lambda self, e: self.func("ARRAY_LENGTH", e.this),
        }


_DIALECT = _PolarsSql()


@dataclass(frozen=True, slots=True)
class CheckedDatasetSql:
    """A checked query: `sql` is regenerated from the checked tree without comments, each table a
    quoted dataset id; `tables` are the dataset ids it reads, sorted."""

    sql: str
    tables: tuple[str, ...]


# What a table may carry besides its name, its alias and its joins: nothing else (sqlglot reads these;
# Polars may read the same text otherwise, as `FROM ONLY a`, which it takes for table ONLY aliased a).
_TABLE_MODIFIERS = (
    "only", "sample", "version", "when", "changes", "ordinality", "partition", "hints",
    "rows_from", "pivots", "laterals", "format", "pattern", "scope_resolution", "indexed", "system_time",
)  # fmt: skip


def check_dataset_sql(text: str, *, max_chars: int = MAX_SQL_CHARS) -> CheckedDatasetSql:
    """Check that `text` is one read-only query over datasets; raise `BadInput` (or `TooLarge`)
    naming what is wrong."""
    if len(text) > max_chars:
        raise TooLarge(f"The SQL is {len(text):,} characters long; the limit is {max_chars:,}.")
    if not text.strip():
        raise BadInput("The SQL is empty: write one SELECT query over datasets.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput("The SQL holds a character that is not valid text (a lone surrogate).") from None
    try:
        tree = _parse_one(text)
        tables = _inspect(tree)
        sql = tree.sql(dialect=_DIALECT, comments=False, unsupported_level=ErrorLevel.RAISE)
        # The generator, too, must not turn the checked tree into something else.
        if _inspect(_parse_one(sql)) != tables:
            raise BadInput("The SQL could not be checked safely; try writing it more simply.")
    except RecursionError:
        raise BadInput("The SQL is nested too deeply.") from None
    except SqlglotError:
        raise BadInput("The SQL could not be checked safely; try writing it more simply.") from None
    return CheckedDatasetSql(sql=sql, tables=tables)


def _parse_one(text: str) -> exp.Expr:
    tokens = tokens_of(text, _DIALECT)
    try:
        statements = [s for s in _DIALECT.parser().parse(tokens, text) if s is not None]
    except ParseError as exc:
        raise BadInput(f"The SQL could not be parsed: {parse_error_place(exc)}.") from None
    if not statements:
        raise BadInput("The SQL is empty: write one SELECT query over datasets.")
    if len(statements) > 1:
        raise BadInput(f"Only one statement is allowed; this has {len(statements)}.")
    return statements[0]


def _inspect(tree: exp.Expr) -> tuple[str, ...]:
    """Check the tree; rewrite its dataset tables as quoted ids in place and return the ids."""
    if not isinstance(tree, _QUERY_ROOTS) or not isinstance(tree.unnest(), _QUERY_ROOTS):
        raise BadInput(f"Only a SELECT query is allowed, not {_describe(tree)}.")
    nodes = list(tree.walk())
    if (why := too_many(nodes)) is not None:
        raise BadInput(why)
    for node in nodes:
        if type(node).__module__ in _STATEMENT_MODULES or isinstance(node, tuple(_REFUSED)):
            raise BadInput(f"{_describe(node)} is not allowed in SQL over datasets.")
        if isinstance(node, exp.With) and node.args.get("recursive"):
            raise BadInput("WITH RECURSIVE is not allowed in SQL over datasets.")
    for node in nodes:
        if isinstance(node, exp.Anonymous) and node.name.lower() in _ALLOWED_NAMES:
            continue
        if isinstance(node, exp.Func) and type(node) not in _ALLOWED_FUNCTIONS:
            raise BadInput(
                f"Function {_function_name(node)} is not allowed: SQL over datasets reads only datasets,"
                " named by id, and calls no function that reads files or the network."
            )
        if isinstance(node, exp.DataType) and node.this == exp.DataType.Type.DECIMAL and not _decimal_ok(node):
            raise BadInput("DECIMAL(p, s) takes a precision from 1 to 38 and a scale from 0 to the precision.")
        if isinstance(node, exp.DataType) and node.this not in _ALLOWED_TYPES:
            raise BadInput(
                f"A cast to {_short(node.sql(dialect=_DIALECT))} is not allowed: cast to a built-in type such as"
                " integer, double precision, text, date or timestamp."
            )
    found: set[str] = set()
    for table in [n for n in nodes if isinstance(n, exp.Table)]:
        if not isinstance(table.this, exp.Identifier):
            what = _short(table.sql(dialect=_DIALECT, comments=False))
            raise BadInput(f"FROM {what} is not allowed: name a dataset by its id.")
        modifiers = [k for k in _TABLE_MODIFIERS if table.args.get(k)]
        if modifiers:
            raise BadInput(
                f"FROM {_short(table.sql(dialect=_DIALECT, comments=False))} is not allowed: a table is a dataset id,"
                " with an alias at most (no ONLY, TABLESAMPLE, PARTITION, time travel or ordinality)."
            )
        if table.args.get("db") or table.args.get("catalog"):
            raise BadInput(
                f"Table {_short(table.sql(dialect=_DIALECT, comments=False))} is not allowed: name a dataset by its"
                ' id alone, double-quoted where it is not a plain identifier ("seattle-weather").'
            )
        name = _normalize(table.this)
        if visible_cte(table, name, _normalize) is not None:
            continue
        if not _DATASET_ID.fullmatch(name):
            raise BadInput(
                f'Table "{_short(name)}" is not a dataset id: tables are datasets named by id (lower-case letters,'
                ' digits, - and _), double-quoted where the id is not a plain identifier ("seattle-weather").'
            )
        table.set("this", exp.to_identifier(name, quoted=True))
        found.add(name)
    return tuple(sorted(found))


def _decimal_ok(node: exp.DataType) -> bool:
    """Whether a DECIMAL's precision and scale are ones the engine takes (others made it panic)."""
    numbers = []
    for param in node.expressions:
        value = param.this if isinstance(param, exp.DataTypeParam) else param
        text = value.name if isinstance(value, exp.Expr) else str(value)
        if not text.isdigit():
            return False
        numbers.append(int(text))
    if len(numbers) > 2:
        return False
    precision = numbers[0] if numbers else 38
    scale = numbers[1] if len(numbers) == 2 else 0
    return 1 <= precision <= 38 and 0 <= scale <= precision


def _normalize(identifier: exp.Identifier) -> str:
    """The name as PostgreSQL reads it: unquoted names fold to lower case (without copying the node)."""
    name = str(identifier.name)
    return name if identifier.args.get("quoted") else name.lower()


def _describe(node: exp.Expr) -> str:
    if isinstance(node, exp.Command):
        return _short(node.name.upper())
    if type(node) in _REFUSED:
        return _REFUSED[type(node)]
    return str(node.key.upper())


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return _short(node.name.lower())
    return _short(node.sql(dialect=_DIALECT).split("(", 1)[0].strip().lower())


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."
