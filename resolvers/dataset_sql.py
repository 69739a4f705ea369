"""SQL over datasets: a checked SELECT over the current versions of the datasets it names, as a plan
that every frame field answers from (rows, describe, chart, export, saveFrame, chained transforms).

The query is checked in the server process (`connectors.datasetsql`); the worker runs only the SQL
regenerated from the checked tree, over the Parquet files of the datasets it names. The plan's cache
key is that SQL and the versions of those datasets, so a new version of any of them is a new answer.
Linked database tables are refused: their rows live in the database, and SQL over datasets reads
only what the server stores.
"""

from __future__ import annotations

from connectors.datasetsql import check_dataset_sql
from datagraph.errors import BadInput, DatagraphError, NotFound
from engine import Plan, Source, SqlRoot
from resolvers.context import Context
from resolvers.datasets import dataset_source, get_dataset

__all__ = ["dataset_sql_plan", "dataset_sql_view"]


def dataset_sql_plan(ctx: Context, query: str) -> Plan:
    """The plan of `query` over the datasets' current versions; `BadInput` for SQL that is refused,
    `NotFound` naming a table that is no dataset."""
    checked = check_dataset_sql(query)
    if not checked.tables:
        raise BadInput("The SQL reads no dataset: name at least one in FROM, by its id.")
    sources: list[Source] = []
    for table in checked.tables:
        record = get_dataset(ctx, table)
        if record is None:
            raise NotFound(f'There is no dataset "{table}" (SQL tables are dataset ids; see the datasets query).')
        if record.origin.get("mode") == "LINK":
            raise BadInput(
                f'The dataset "{table}" is a linked database table, which SQL over datasets does not read:'
                " query it with sql(source:, query:), or import it as a snapshot (importTable, mode SNAPSHOT)."
            )
        sources.append(dataset_source(ctx, record))
    return Plan(SqlRoot(checked.sql, tuple(sources)))


def dataset_sql_view(ctx: Context, query: str) -> Plan:
    """`dataset_sql_plan`, or when the SQL is refused a plan whose every result answers that problem
    (a frame field returns a frame, so the problem shows in the results, as a `Result`'s error)."""
    try:
        return dataset_sql_plan(ctx, query)
    except DatagraphError as exc:
        return Plan(SqlRoot("", ())).refuse(exc.message, type(exc))
