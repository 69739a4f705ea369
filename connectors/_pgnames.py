"""PostgreSQL's functional notation, closed: `t.f` means `f(t)` when t has no column f.

PostgreSQL reads a qualified name `t.x` (or `s.t.x`) as the column x of the FROM item t when t has
one, and otherwise as a call of a function x on t's whole row: `orders.row_to_json`, `orders.count`,
or a function someone planted that takes the table's row type. The syntax cannot tell the two
apart, so the names are looked up. Every qualified name must be a column of every FROM item of
that name anywhere in the query (a superset of the one PostgreSQL picks): a real table's columns as
the database lists them (`columns_of`, asked once per query and only when needed), a CTE's or a
subquery's from its select list, a table function's from its alias. A FROM item whose columns
cannot be known that way (an unnamed `count(*)` in a subquery, say) answers no qualified name:
the check fails closed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, SqlglotError
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers
from sqlglot.tokenizer_core import Token

from datagraph.errors import BadInput

__all__ = [
    "MAX_CTES",
    "MAX_TABLES",
    "ColumnsOf",
    "check_qualified_columns",
    "parse_error_place",
    "tokens_of",
    "too_many",
    "visible_cte",
]

# Past these a query is refused before its names are resolved: each table looks through the CTEs in
# scope, so a query of thousands of each (20,000 characters hold 600 CTEs and 5,000 tables) would
# keep the server busy for half a minute before anything ran.
MAX_TABLES = 256
MAX_CTES = 64

# The columns of each "schema.table" asked for, in the table's order; a table it does not know is left out.
ColumnsOf = Callable[[tuple[str, ...]], Mapping[str, Sequence[str]]]

# A `SELECT *` over `SELECT *`s can double its columns at each step; no select list of PostgreSQL's
# holds more than this, so past it they are not counted (and nothing is read through them).
_MAX_COLUMNS = 1664


def tokens_of(text: str, dialect: Dialect) -> list[Token]:
    """The SQL's tokens; BadInput when a quote, quoted name or comment is left open."""
    try:
        return list(dialect.tokenize(text))
    except SqlglotError:
        raise BadInput("The SQL could not be parsed: a quote, quoted name or comment is not closed.") from None


def parse_error_place(exc: ParseError) -> str:
    """Where sqlglot stopped reading, in the user's terms (near what, at which line and column)."""
    if not exc.errors:
        return "check the syntax"
    error = exc.errors[0]
    near = str(error.get("highlight") or "").strip()
    near = near if len(near) <= 30 else near[:27] + "..."
    return f"error near {near!r} at line {error.get('line')}, column {error.get('col')}"


def too_many(nodes: list[exp.Expr]) -> str | None:
    """Why a query's tree is too big to check cheaply, if it is: more than MAX_TABLES tables or
    MAX_CTES CTEs, or two CTEs of the same name in one WITH."""
    tables = sum(1 for n in nodes if isinstance(n, exp.Table))
    if tables > MAX_TABLES:
        return f"The SQL names {tables:,} tables; at most {MAX_TABLES} may be read in one query."
    withs = [n for n in nodes if isinstance(n, exp.With)]
    ctes = sum(len(w.expressions) for w in withs)
    if ctes > MAX_CTES:
        return f"The SQL defines {ctes:,} CTEs (WITH ... AS); at most {MAX_CTES} are allowed."
    for with_ in withs:
        names = [str(cte.alias_or_name).lower() for cte in with_.expressions]
        if len(set(names)) != len(names):
            return "A WITH defines the same name twice; give each CTE its own name."
    return None


def visible_cte(table: exp.Table, name: str, normalize: Callable[[exp.Identifier], str]) -> exp.CTE | None:
    """The CTE a bare table name refers to, if a WITH in scope defines it: a CTE sees the ones before
    it, the query body all of them."""
    child: exp.Expr = table
    parent = table.parent
    while parent is not None:
        visible: list[exp.Expr] = []
        with_ = parent.args.get("with_")
        if isinstance(parent, exp.With) and isinstance(child, exp.CTE):
            visible = parent.expressions[: next(i for i, c in enumerate(parent.expressions) if c is child)]
        elif isinstance(parent, exp.Query) and isinstance(with_, exp.With) and with_ is not child:
            visible = with_.expressions
        for cte in reversed(visible):  # a later CTE of the same name would be an error; the last wins
            if isinstance(cte, exp.CTE) and normalize(cte.args["alias"].this) == name:
                return cte
        child, parent = parent, parent.parent
    return None


@dataclass(frozen=True, slots=True)
class _Item:
    """A FROM item: the name qualified columns use for it, and its columns (None: not known)."""

    name: str
    table: str | None  # "schema.table" of a real table named without an alias (for s.t.x)
    columns: tuple[str, ...] | None


class _Names:
    """The FROM items of one (normalized) query and their columns."""

    def __init__(self, tables: tuple[str, ...], columns_of: ColumnsOf | None) -> None:
        self._tables = tables
        self._columns_of = columns_of
        self._known: dict[str, tuple[str, ...]] | None = None
        self._outputs: dict[int, tuple[str, ...] | None] = {}

    def real(self, key: str) -> tuple[str, ...] | None:
        if self._known is None:
            found = self._columns_of(self._tables) if self._columns_of is not None and self._tables else {}
            self._known = {k: tuple(v) for k, v in found.items()}
        return self._known.get(key)

    def item(self, node: exp.Expr) -> _Item | None:
        """The FROM item `node` is, or None when it is none (or one this check does not know)."""
        alias = node.args.get("alias")
        alias = alias if isinstance(alias, exp.TableAlias) else None
        alias_name = alias.name if alias is not None and alias.this is not None else None
        renames = [c.name for c in alias.columns] if alias is not None else []
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier):
            schema = node.args.get("db")
            if isinstance(schema, exp.Identifier):
                key = f"{schema.name}.{node.name}"
                columns = self.real(key)
            else:  # a CTE: the guard qualified every other bare name
                key = None
                cte = visible_cte(node, node.name, lambda i: i.name)
                columns = None if cte is None else self.outputs(cte)
            return _Item(alias_name or node.name, key if alias_name is None else None, _renamed(columns, renames))
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Func):
            return self._function(node.this, alias_name, renames)
        if isinstance(node, exp.Lateral) and isinstance(node.this, exp.Func):
            return self._function(node.this, alias_name, renames)
        if isinstance(node, exp.Subquery | exp.Lateral) and alias_name is not None:
            return _Item(alias_name, None, _renamed(self.outputs(node.this), renames))
        if isinstance(node, exp.Func) and isinstance(node.parent, exp.From | exp.Join):
            return self._function(node, alias_name, renames)
        if alias_name is not None and not isinstance(node, exp.CTE):
            return _Item(alias_name, None, None)  # VALUES and the like: nothing is known
        return None

    def _function(self, func: exp.Func, alias_name: str | None, renames: list[str]) -> _Item:
        """FROM unnest(...) AS u(x): its columns are the alias's (and WITH ORDINALITY's); a function
        returning one column without them names the column after the alias, as PostgreSQL does."""
        name = alias_name or func.sql_name().lower()
        ordinality = func.args.get("offset")
        if renames:
            extra = [ordinality.name] if isinstance(ordinality, exp.Identifier) else []
            return _Item(name, None, (*renames, *extra))
        return _Item(name, None, None if ordinality else (name,))

    def outputs(self, query: exp.Expr) -> tuple[str, ...] | None:
        """The column names a CTE or subquery gives its readers (None: not known)."""
        if id(query) not in self._outputs:
            self._outputs[id(query)] = None  # while it is worked out (no query refers to itself)
            self._outputs[id(query)] = self._work_out(query)
        return self._outputs[id(query)]

    def _work_out(self, query: exp.Expr) -> tuple[str, ...] | None:
        if isinstance(query, exp.CTE):
            renames = [c.name for c in query.args["alias"].columns]
            return _renamed(self.outputs(query.this), renames)
        while isinstance(query, exp.Subquery):
            query = query.this
        if isinstance(query, exp.SetOperation):
            return self.outputs(query.left)
        if not isinstance(query, exp.Select):
            return None
        names: list[str] = []
        for projection in query.expressions:
            star = isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star)
            if isinstance(projection, exp.Star) or star:
                for item in _from_items(query, self, projection.args.get("table")):
                    if item is None or item.columns is None:
                        return None
                    names.extend(item.columns)
            else:
                names.append(projection.output_name)  # "" for an unnamed expression: it cannot be named
            if len(names) > _MAX_COLUMNS:
                return None
        return tuple(n for n in names if n)


def _from_items(select: exp.Select, names: _Names, only: exp.Expr | None) -> Iterator[_Item | None]:
    """The FROM items `*` (or `only.*`) reads in `select`, in order; None for one not known."""
    from_ = select.args.get("from_")
    nodes = ([from_.this] if isinstance(from_, exp.From) else []) + [j.this for j in select.args.get("joins") or []]
    for node in nodes:
        item = names.item(node)
        if only is None or item is None or item.name == only.name:
            yield item


def _renamed(columns: tuple[str, ...] | None, renames: list[str]) -> tuple[str, ...] | None:
    """`AS t(a, b)` renames the first columns, as PostgreSQL does."""
    if columns is None or not renames:
        return columns
    if len(renames) > len(columns):
        return None
    return (*renames, *columns[len(renames) :])


def check_qualified_columns(
    tree: exp.Expr, dialect: Dialect, tables: tuple[str, ...], columns_of: ColumnsOf | None
) -> None:
    """Raise BadInput unless every qualified name in the checked `tree` (its tables qualified, as
    "schema.table" in `tables`) is a column, not a function called on a row."""
    normalized = normalize_identifiers(tree.copy(), dialect=dialect)
    refs = [
        c
        for c in normalized.find_all(exp.Column)
        if isinstance(c.args.get("table"), exp.Identifier) and not isinstance(c.this, exp.Star)
    ]
    if not refs:
        return
    names = _Names(tables, columns_of)
    by_name: dict[str, list[_Item]] = {}
    by_table: dict[str, list[_Item]] = {}
    for node in normalized.walk():
        if (item := names.item(node)) is not None:
            by_name.setdefault(item.name, []).append(item)
            if item.table is not None:
                by_table.setdefault(item.table, []).append(item)
    for ref in refs:
        shown = _short(".".join(p.name for p in ref.parts))
        if ref.args.get("catalog") is not None:
            raise BadInput(f"Name columns as table.column, not {shown}.")
        schema = ref.args.get("db")
        if isinstance(schema, exp.Identifier):
            candidates = by_table.get(f"{schema.name}.{ref.table}", [])
        else:
            candidates = by_name.get(ref.table, [])
        if not candidates or any(i.columns is None or ref.name not in i.columns for i in candidates):
            raise BadInput(
                f"{shown} is not a column of {_short(ref.table)}, and PostgreSQL would read it as a call of the"
                f" function {_short(ref.name)} on its row: name a column it has (give a computed column an alias)."
            )


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."
