"""Database sources on the real PostgreSQL: snapshot import, and a group-by pushed down to the database.

1. Import: `importTable` of a 1,000,000-row table through GraphQL over HTTP (a worker streams it
   in batches into Parquet and the dataset is committed), against `pl.read_database` of the same
   `SELECT *` in this process (rows into one DataFrame, nothing written). Interleaved; medians.
2. Pushdown: a 10,000,000-row table linked (`mode: LINK`); a 1-key group-by with 3 aggregations
   through GraphQL, against the same SELECT the worker sends (compiled by `connectors.pushdown`)
   run directly through SQLAlchemy from this process: the database's own time. Interleaved; medians;
   the difference is what datagraph adds. The workers' peak memory (VmHWM) before and after says
   whether the rows ever left the database.

Needs PostgreSQL on 127.0.0.1:5432 (trust auth, database `test`); the tables are made once, in
the schema `bench_sources`, and kept for later runs. Usage: `python bench/sources.py -n 5`.
Writes bench/results/sources.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import psycopg
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from describe import serve  # noqa: E402  (bench/describe.py)

from bench.engine import ms  # noqa: E402  (bench/engine.py; a plain `engine` is the package)
from connectors.pushdown import push_down  # noqa: E402
from engine import Aggregation, Condition, Filter, GroupBy, Slice  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432/test"
SCHEMA = "bench_sources"
IMPORT_ROWS = 1_000_000
BIG_ROWS = 10_000_000
GROUP = (
    'groupBy(by: ["day"], aggregations:'
    ' [{column: "amount", fn: SUM}, {column: "qty", fn: MEAN}, {column: "user_id", fn: N_UNIQUE}])'
)
PAYLOAD = "success error { message } dataset { id rowCount }"


def make_table(conn: psycopg.Connection[Any], name: str, rows: int) -> None:
    """`name` with `rows` rows of a personal-events shape, unless it is already there."""
    exists = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s AND table_name = %s", (SCHEMA, name)
    ).fetchone()
    if exists and exists[0]:
        count = conn.execute(f"SELECT count(*) FROM {SCHEMA}.{name}").fetchone()
        if count and count[0] == rows:
            return
        conn.execute(f"DROP TABLE {SCHEMA}.{name}")
    print(f"making {SCHEMA}.{name} ({rows:,} rows) ...", flush=True)
    conn.execute(
        f"""CREATE TABLE {SCHEMA}.{name} AS
        SELECT g AS id, (g * 7919) % 5000 AS user_id,
               (ARRAY['Mon','Tue','Wed','Thu','Fri','Sat','Sun'])[1 + g % 7] AS day,
               ((g * 104729) % 100000) / 100.0::float8 AS amount, (g % 13) AS qty,
               timestamp '2025-01-01' + (g % 525600) * interval '1 minute' AS at
        FROM generate_series(1::bigint, {rows}) AS g"""
    )
    conn.execute(f"ANALYZE {SCHEMA}.{name}")


def worker_peaks(server_pid: int) -> list[int]:
    """VmHWM (peak resident memory, KiB) of the server's worker processes."""
    peaks = []
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            status = Path(f"/proc/{child}/status").read_text()
            peaks += [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")]
    return peaks


def graphql(client: httpx.Client, query: str) -> dict[str, Any]:
    body = client.post("/graphql", json={"query": query}).json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", "--rounds", type=int, default=5)
    args = parser.parse_args()
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        make_table(conn, "events_1m", IMPORT_ROWS)
        make_table(conn, "events_10m", BIG_ROWS)
        conn.execute(f"CREATE INDEX IF NOT EXISTS events_10m_id ON {SCHEMA}.events_10m (id)")
    work = Path(tempfile.mkdtemp(prefix="bench-sources-"))
    sources = work / "sources.yaml"
    sources.write_text(
        f"sources:\n  pg:\n    kind: postgresql\n    url: {PG}\n    schema: {SCHEMA}\n    statement_timeout_s: 600\n"
    )
    engine = sa.create_engine(PG.replace("postgresql://", "postgresql+psycopg://"))
    imports: dict[str, list[float]] = {"server": [], "polars": []}
    pushdown: dict[str, dict[str, list[float]]] = {}
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        client, server_pid = cleanup.enter_context(
            serve(work / "data", "--sources", str(sources), "--max-rows", str(BIG_ROWS), "--timeout-s", "600")
        )
        # 1. Import, interleaved with read_database in this process.
        for _ in range(args.rounds):
            started = time.perf_counter()
            payload = graphql(
                client,
                'mutation { importTable(source: "pg", table: "events_1m") { %s } }' % PAYLOAD,
            )["importTable"]
            imports["server"].append(time.perf_counter() - started)
            assert payload["success"] and payload["dataset"]["rowCount"] == IMPORT_ROWS, payload
            started = time.perf_counter()
            with engine.connect() as conn:
                frame = pl.read_database(f"SELECT * FROM {SCHEMA}.events_1m", conn)
            imports["polars"].append(time.perf_counter() - started)
            assert frame.height == IMPORT_ROWS
            del frame

        # 2. Pushdown on the 10M-row table.
        linked = graphql(
            client,
            'mutation { importTable(source: "pg", table: "events_10m", mode: LINK) { %s } }' % PAYLOAD,
        )["importTable"]
        assert linked["success"], linked
        dataset = linked["dataset"]["id"]
        table = sa.Table("events_10m", sa.MetaData(), schema=SCHEMA, autoload_with=engine)
        aggs = (Aggregation("amount", "SUM"), Aggregation("qty", "MEAN"), Aggregation("user_id", "N_UNIQUE"))
        recent = Filter((Condition("id", "LE", 20_000),))  # served by the index: the overhead shows
        cases = {
            "whole table": ("", [GroupBy(("day",), aggs)]),
            "20,000 rows by index": (
                'filter(where: [{column: "id", op: LE, value: 20000}]) { ',
                [recent, GroupBy(("day",), aggs)],
            ),
        }
        before = worker_peaks(server_pid)
        for name, (prefix, steps) in cases.items():
            close = "}" if prefix else ""
            frame = f'{{ dataset(id: "{dataset}") {{ {prefix}{GROUP} {{ %s }} {close} }} }}'
            query = frame % "rows { success data }"
            # What the worker sends for `rows` (limit 100): the steps and the page as one SELECT.
            same_sql = push_down(table, [*steps, Slice(0, 101)], "postgresql").query
            first = graphql(client, frame % "explain { data }")["dataset"]  # also warms connections
            first = first.get("filter", first)["groupBy"]
            assert first["explain"]["data"]["pushedSteps"] == len(steps), first["explain"]
            pushdown[name] = {"server": [], "database": []}
            with engine.connect() as direct:
                for _ in range(args.rounds):
                    started = time.perf_counter()
                    answer = graphql(client, query)["dataset"]
                    pushdown[name]["server"].append(time.perf_counter() - started)
                    rows = answer.get("filter", answer)["groupBy"]["rows"]
                    assert rows["success"] and len(rows["data"]) == 7, rows
                    started = time.perf_counter()
                    direct_rows = direct.execute(same_sql).all()
                    direct.rollback()
                    pushdown[name]["database"].append(time.perf_counter() - started)
                    assert len(direct_rows) == 7
        after = worker_peaks(server_pid)

    imp_server, imp_polars = statistics.median(imports["server"]), statistics.median(imports["polars"])
    lines = [
        "# Database sources benchmark",
        "",
        f"{dt.date.today().isoformat()}, {platform.python_version()}, polars {pl.__version__}, PostgreSQL on loopback,"
        f" medians of {args.rounds} interleaved rounds.",
        "",
        "| what | datagraph | reference | ratio / difference | target | met? |",
        "|---|---:|---:|---:|---|---|",
        f"| import {IMPORT_ROWS:,} rows: importTable over GraphQL vs `pl.read_database` in one process (s)"
        f" | {imp_server:.2f} | {imp_polars:.2f} | {imp_server / imp_polars:.2f}x | ≤ 1.5x"
        f" | {'yes' if imp_server / imp_polars <= 1.5 else '**no**'} |",
        *[
            f"| group-by of {BIG_ROWS:,} linked rows ({name}) over GraphQL vs the same SQL run directly (ms)"
            f" | {ms(server)} | {ms(db)} | {(server - db) * 1000:+,.1f} ms | a few ms"
            f" | {'yes' if server - db < 0.01 else '**no**'} |"
            for name, t in pushdown.items()
            for server, db in [(statistics.median(t["server"]), statistics.median(t["database"]))]
        ],
        "",
        f"Worker peak memory (VmHWM) before and after the pushed-down group-bys: {before} KiB → {after} KiB.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = ROOT / "bench" / "results" / "sources.md"
    out.write_text(text)


if __name__ == "__main__":
    main()
