"""Time series and reshaping on 1,000,000 rows x 12 (issue 21): three operations through GraphQL over HTTP
against the same done by hand in Polars in this process, with plain pandas beside them.

The table is bench/describe.py `generate` (a `user` column of 200,000 ids, a timestamp `at` over about
three years, `price` a float with 10% missing); the events are 100,000 rows of (`user`, `at`, `amount`)
drawn the same way. Both are uploaded as CSV to a real uvicorn; the floor reads the Parquet files the
server stored.

(a) `window`: a 7-day rolling mean of price per user, ordered by `at` (`period: "7d"`, `by: ["user"]`).
(b) `resample`: one row per day of `at` with the mean price and the count of ids.
(c) `joinAsof`: each row with the user's last event at or before its time (`by: ["user"]`, BACKWARD).

Each query asks for `rows(limit: 100, cache: BYPASS)`: the first 100 rows of the result. Not `count`:
a window or a left as-of join keeps the row count, so a count would let a plan skip the very work being
timed. The floor does the same in Polars as an analyst would write it (`rolling_mean_by(...).over`,
`group_by` on `dt.truncate`, `join_asof`), from `scan_parquet` to 100 rows as dicts. pandas is the seed
design's engine, but the seed's Flask server (bench/seedserver.py) has no rolling, resample or as-of
route, so plain pandas in this process stands in for it (`groupby().rolling`, `pd.Grouper`,
`merge_asof`), on frames already in memory as the seed server keeps them. The three answers are
checked to agree before timing.

Interleaved (server, floor, pandas, ...), medians and ratios; writes bench/results/timeseries.md.
Usage: `python bench/timeseries.py` (`-n` rounds, `--rows`, `--events`, `--pandas-rounds`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from describe import DATA, generate, serve, upload  # noqa: E402  (bench/describe.py)

TARGET = 1.3
LIMIT = 100
RESULT = f"rows(limit: {LIMIT}, cache: BYPASS) {{ success error {{ code message }} data meta {{ elapsedMs cached }} }}"
QUERIES = {
    "window": f"""query($id: ID!) {{ dataset(id: $id) {{ window(specs: [{{column: "price", fn: ROLLING_MEAN,
      period: "7d", orderBy: "at", by: ["user"], alias: "week_mean"}}]) {{ {RESULT} }} }} }}""",
    "resample": f"""query($id: ID!) {{ dataset(id: $id) {{ resample(on: "at", every: "1d", aggregations: [
      {{column: "price", fn: MEAN, alias: "price_mean"}}, {{column: "id", fn: COUNT, alias: "n"}}]) {{
      {RESULT} }} }} }}""",
    "joinAsof": f"""query($id: ID!, $events: ID!) {{ dataset(id: $id) {{
      joinAsof(right: $events, on: "at", by: ["user"], strategy: BACKWARD) {{ {RESULT} }} }} }}""",
}
LABELS = {
    "window": '(a) `window`: 7-day rolling mean of price per user (`period: "7d"`, `orderBy: "at"`, `by: ["user"]`)',
    "resample": '(b) `resample(on: "at", every: "1d")`: mean price and count per day',
    "joinAsof": '(c) `joinAsof(on: "at", by: ["user"])` against 100,000 events, BACKWARD',
}


def generate_events(path: Path, rows: int, users: int = 200_000) -> Path:
    """The right side of the as-of join: (user, at, amount), users and times drawn as in `generate`."""
    if path.exists():
        return path
    rng = np.random.default_rng(20261207)
    start = np.datetime64("2020-01-01")
    frame = pl.DataFrame(
        {
            "user": [f"u{v}" for v in rng.integers(0, users, rows)],
            "at": (start + rng.integers(0, 10**8, rows).astype("timedelta64[s]")).astype("datetime64[ms]"),
            "amount": rng.normal(50, 10, rows).round(2),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(path)
    return path


# --- the floor: Polars by hand ---------------------------------------------------------------------


def floor_window(table: Path, _events: Path) -> list[dict[str, Any]]:
    frame = pl.scan_parquet(table).with_columns(
        pl.col("price").rolling_mean_by("at", "7d").over("user").alias("week_mean")
    )
    return frame.head(LIMIT).collect().to_dicts()


def floor_resample(table: Path, _events: Path) -> list[dict[str, Any]]:
    frame = (
        pl.scan_parquet(table)
        .group_by(pl.col("at").dt.truncate("1d"))
        .agg(pl.col("price").mean().alias("price_mean"), pl.col("id").count().alias("n"))
        .sort("at")
    )
    return frame.head(LIMIT).collect().to_dicts()


def floor_asof(table: Path, events: Path) -> list[dict[str, Any]]:
    left = pl.scan_parquet(table).sort("at", maintain_order=True)
    right = pl.scan_parquet(events).sort("at", maintain_order=True)
    frame = left.join_asof(right, on="at", by="user", strategy="backward")
    return frame.head(LIMIT).collect().to_dicts()


FLOOR: dict[str, Callable[[Path, Path], list[dict[str, Any]]]] = {
    "window": floor_window,
    "resample": floor_resample,
    "joinAsof": floor_asof,
}


# --- pandas, in memory -----------------------------------------------------------------------------


def pandas_window(table: pd.DataFrame, _events: pd.DataFrame) -> list[dict[str, Any]]:
    # pandas 3 labels a grouped rolling by (user, at): sorted by user then time, the values come in the
    # frame's order, and go back to the file's order by its row labels.
    ordered = table.sort_values(["user", "at"], kind="stable")
    means = ordered.groupby("user", sort=True).rolling("7D", on="at")["price"].mean()
    ordered["week_mean"] = means.to_numpy()
    return list(ordered.sort_index().head(LIMIT).to_dict("records"))


def pandas_resample(table: pd.DataFrame, _events: pd.DataFrame) -> list[dict[str, Any]]:
    grouped = table.groupby(pd.Grouper(key="at", freq="1D")).agg(price_mean=("price", "mean"), n=("id", "count"))
    grouped = grouped[grouped["n"] > 0].reset_index()  # empty periods left out
    return list(grouped.head(LIMIT).to_dict("records"))


def pandas_asof(table: pd.DataFrame, events: pd.DataFrame) -> list[dict[str, Any]]:
    left = table.sort_values("at", kind="stable")
    right = events.sort_values("at", kind="stable")
    joined = pd.merge_asof(left, right, on="at", by="user", direction="backward", suffixes=("", "_right"))
    return list(joined.head(LIMIT).to_dict("records"))


PANDAS: dict[str, Callable[[pd.DataFrame, pd.DataFrame], list[dict[str, Any]]]] = {
    "window": pandas_window,
    "resample": pandas_resample,
    "joinAsof": pandas_asof,
}
CHECKED = {"window": ["id", "week_mean"], "resample": ["at", "price_mean", "n"], "joinAsof": ["id", "amount"]}


def plain(value: Any) -> Any:
    """A cell as comparable text or number: times as ISO text to the second, missing as None."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    if isinstance(value, (dt.datetime, pd.Timestamp)):
        return value.isoformat()[:19]
    if isinstance(value, str) and len(value) >= 19 and value[10] == "T":
        return value[:19]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return round(float(value), 6)
    return value


def agree(name: str, served: list[dict[str, Any]], floor: list[dict[str, Any]], panda: list[dict[str, Any]]) -> None:
    assert len(served) == len(floor) == len(panda) == LIMIT, (name, len(served), len(floor), len(panda))
    for got in (served, floor, panda):
        want = panda
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            left = [plain(a[c]) for c in CHECKED[name]]
            right = [plain(b[c]) for c in CHECKED[name]]
            assert left == right, (name, i, left, right)


def post(client: httpx.Client, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/graphql", json={"query": query, "variables": variables})
    body = r.json()
    assert not body.get("errors"), body["errors"]
    return dict(body["data"])


def served_rows(client: httpx.Client, name: str, variables: dict[str, Any]) -> tuple[list[dict[str, Any]], float]:
    answer = post(client, QUERIES[name], variables)["dataset"][name]["rows"]
    assert answer["success"] and not answer["meta"]["cached"], answer
    return list(answer["data"]), answer["meta"]["elapsedMs"] / 1000


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    answer = fn()
    return time.perf_counter() - t0, answer


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}" if seconds >= 1 else f"{seconds * 1000:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", "--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--pandas-rounds", type=int, default=3, help="pandas is slow: timed in the first rounds only")
    args = parser.parse_args()
    table_csv = generate(DATA / f"mixed_{args.rows}.csv", args.rows)
    events_csv = generate_events(DATA / f"events_{args.events}.csv", args.events)
    work = Path(tempfile.mkdtemp(prefix="bench-timeseries-"))
    data_dir = work / "data"
    names = list(QUERIES)
    times: dict[str, dict[str, list[float]]] = {
        n: {"server": [], "resolver": [], "floor": [], "pandas": []} for n in names
    }
    # No page blocks: a dataset's first page makes them in the background (storage/_blocks.py), which
    # would compete with the timed rounds; none of these queries reads them.
    os.environ["DATAGRAPH_PAGE_BLOCKS_MAX_MB"] = "0"
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        client, _ = cleanup.enter_context(serve(data_dir))
        table_id, events_id = upload(client, table_csv), upload(client, events_csv)
        table = data_dir / "datasets" / table_id / "v1.parquet"
        events = data_dir / "datasets" / events_id / "v1.parquet"
        assert table.exists() and events.exists(), (table, events)
        variables = {"id": table_id, "events": events_id}
        frames = pd.read_csv(table_csv, parse_dates=["at"]), pd.read_csv(events_csv, parse_dates=["at"])
        checks: dict[str, int] = {}
        print("uploaded; checking the answers agree", file=sys.stderr)
        for name in names:  # a warm-up of each side, which also checks that they agree
            served = served_rows(client, name, {k: v for k, v in variables.items() if f"${k}" in QUERIES[name]})[0]
            floor = FLOOR[name](table, events)
            agree(name, served, floor, PANDAS[name](*frames))
            checks[name] = sum(1 for row in served for c in CHECKED[name] if plain(row[c]) is not None)
        for round_ in range(args.rounds):
            print(f"round {round_ + 1} of {args.rounds}", file=sys.stderr)
            for name in names:
                used = {k: v for k, v in variables.items() if f"${k}" in QUERIES[name]}
                seconds, (_, resolver) = timed(lambda n=name, u=used: served_rows(client, n, u))  # type: ignore[misc]
                times[name]["server"].append(seconds)
                times[name]["resolver"].append(resolver)
                times[name]["floor"].append(timed(lambda n=name: FLOOR[n](table, events))[0])  # type: ignore[misc]
                if round_ < args.pandas_rounds:
                    times[name]["pandas"].append(timed(lambda n=name: PANDAS[n](*frames))[0])  # type: ignore[misc]

    med = {n: {k: statistics.median(v) for k, v in t.items() if v} for n, t in times.items()}
    lines = [
        f"# time series benchmark, {dt.date.today().isoformat()}",
        "",
        f"{args.rows:,} rows x 12 columns (bench/describe.py `generate`: 200,000 users, `at` a timestamp over"
        f" about 3 years, price 10% missing) and {args.events:,} events (user, at, amount), both uploaded as CSV."
        f" {platform.platform()}, {os.cpu_count()} cores; Python {platform.python_version()}, polars"
        f" {pl.__version__}, pandas {pd.__version__}. One uvicorn process; every query asks for"
        f" `rows(limit: {LIMIT}, cache: BYPASS)`. Median of {args.rounds} interleaved rounds (pandas: the first"
        f" {min(args.pandas_rounds, args.rounds)}).",
        "",
        "| operation | datagraph (HTTP) | Polars by hand | ratio | target | met? | pandas in memory"
        " | pandas / datagraph |",
        "|---|---:|---:|---:|---|---|---:|---:|",
    ]
    for name in names:
        m = med[name]
        ratio = m["server"] / m["floor"]
        lines.append(
            f"| {LABELS[name]} | {ms(m['server'])} ms | {ms(m['floor'])} ms | {ratio:.2f}x | ≤ {TARGET}x |"
            f" {'yes' if ratio <= TARGET else '**no**'} | {ms(m['pandas'])} ms | {m['pandas'] / m['server']:.1f}x |"
        )
    lines += [
        "",
        "The first 100 rows agree, server, floor and pandas: "
        + "; ".join(f"{n} on {', '.join(CHECKED[n])} ({checks[n]} values)" for n in names)
        + ".",
        "",
        "Where the server's time goes (medians, ms): the resolver (`meta.elapsedMs`, planning and running the"
        " query) and the rest (HTTP, GraphQL, encoding 100 rows).",
        "",
        "| operation | request | resolver | rest |",
        "|---|---:|---:|---:|",
        *(
            f"| {n} | {ms(med[n]['server'])} | {ms(med[n]['resolver'])} | {ms(med[n]['server'] - med[n]['resolver'])} |"
            for n in names
        ),
        "",
        "The floor, from `scan_parquet` of the stored Parquet to 100 rows as dicts: (a)"
        ' `pl.col("price").rolling_mean_by("at", "7d").over("user")`; (b) `group_by(pl.col("at").dt.truncate("1d"))`'
        ' then `sort("at")`; (c) both sides `sort("at")` then `join_asof(on="at", by="user")`. pandas, on frames'
        " already in memory (the seed server keeps uploads in memory, but has no route for these):"
        ' `sort_values(["user", "at"]).groupby("user").rolling("7D", on="at")["price"].mean()`,'
        ' `groupby(pd.Grouper(key="at", freq="1D"))` without empty days, and `merge_asof(..., by="user")`.',
    ]
    report = "\n".join(lines)
    (ROOT / "bench" / "results" / "timeseries.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
