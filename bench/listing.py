"""Listing cost: a page of 100 datasets out of 100,000 against a page of 100 out of 100 (target: at
most 2x), and the whole list of 2,000 (`{ datasets { id } }`, the request issue 18 measured at 76 ms).

Each metadata database is made directly: the store makes its tables (and indexes), then one
executemany inserts the rows (ready datasets of a few sources, each with ten columns described, as
an upload leaves them). The real server then runs under uvicorn on loopback and a separate client
times the query over HTTP: `wrk` (one connection, a C client) when it is installed, else a Python
client in this process. Usage: `python bench/listing.py [--seconds 3]`. Writes
bench/results/listing.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _systems import wrk, wrk_script  # noqa: E402
from describe import serve  # noqa: E402  (bench/describe.py)

from storage import MetadataStore  # noqa: E402

PAGE = "{ datasets(limit: 100) { id name } }"
ALL = "{ datasets { id } }"
SOURCES = ("uploads", "frames", "plugins", "shop")
TARGET = 2.0


def make_metadata(data_dir: Path, n: int) -> None:
    """A metadata database in `data_dir` with `n` ready datasets, made by SQL inserts."""
    data_dir.mkdir(parents=True)
    path = data_dir / "datagraph.sqlite3"  # where the server looks (setting metadata_url empty)
    MetadataStore(f"sqlite:///{path}").close()  # the tables and indexes, as the server makes them
    columns = json.dumps(
        [{"name": f"col{i}", "dtype": "Float64", "null_count": i, "missing_rate": i / 1000} for i in range(10)]
    )
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    rows = []
    for i in range(n):
        at = (start + dt.timedelta(seconds=i)).isoformat(sep=" ")
        origin = json.dumps({"format": "csv", "filename": f"data-{i}.csv"})
        source = SOURCES[i % len(SOURCES)]
        rows.append((f"data-{i}", f"Data set {i}", source, "ready", 1, 1000, columns, origin, at, at))
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO datasets (id, name, source_id, status, version, row_count, columns, origin, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


def wrk_p50_ms(base: str, query: str, seconds: int) -> float:
    """p50 latency of `query` POSTed over one keep-alive connection by wrk."""
    with tempfile.TemporaryDirectory() as work:
        script = wrk_script(Path(work) / "post.lua", json.dumps({"query": query}))
        return wrk(f"{base}/graphql", script, 1, seconds)["p50_ms"]


def python_p50_ms(client: httpx.Client, query: str, seconds: int) -> float:
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        client.post("/graphql", json={"query": query}).raise_for_status()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def measure(n: int, query: str, seconds: int, work: Path) -> tuple[float, int]:
    """The p50 (ms) of `query` against a server with `n` datasets, and how many datasets it answered."""
    data_dir = work / f"n{n}"
    make_metadata(data_dir, n)
    # The answer cache off: what is measured is the listing itself, not a stored answer.
    with serve(data_dir, "--workers", "1", "--answer-cache-mb", "0") as (client, _pid):
        answer = client.post("/graphql", json={"query": query}).json()
        assert "errors" not in answer, answer
        for _ in range(50):  # warm
            client.post("/graphql", json={"query": query})
        base = str(client.base_url).rstrip("/")
        p50 = wrk_p50_ms(base, query, seconds) if shutil.which("wrk") else python_p50_ms(client, query, seconds)
    return p50, len(answer["data"]["datasets"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=3, help="how long each measurement runs")
    args = parser.parse_args()
    client_name = "wrk (1 connection)" if shutil.which("wrk") else "a Python httpx client"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        small, small_n = measure(100, PAGE, args.seconds, work)
        large, large_n = measure(100_000, PAGE, args.seconds, work)
        whole, whole_n = measure(2_000, ALL, args.seconds, work)
    ratio = large / small
    met = "met" if ratio <= TARGET else "MISSED"
    lines = [
        "# Listing datasets: a page costs the same at any size",
        "",
        f"`{PAGE}` over HTTP against the real server (uvicorn, one process, SQLite metadata), p50 by {client_name};"
        " each metadata database made directly with SQL inserts. Run `python bench/listing.py`.",
        "",
        "| what | datasets | answered | p50 |",
        "|---|---:|---:|---:|",
        f"| a page of 100 | 100 | {small_n} | {small:.2f} ms |",
        f"| a page of 100 | 100,000 | {large_n} | {large:.2f} ms |",
        f"| the whole list, ids only (`{ALL}`) | 2,000 | {whole_n} | {whole:.2f} ms |",
        "",
        f"Ratio 100 of 100,000 / 100 of 100: **{ratio:.2f}x** (target at most {TARGET:g}x: {met}).",
        f"The whole list costs {whole / whole_n * 1000:.1f} µs a dataset (issue 18 measured about 38 µs before"
        " the listing was paged and its columns parsed lazily).",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, {dt.date.today().isoformat()}.",
        "",
    ]
    text = "\n".join(lines)
    out = ROOT / "bench" / "results" / "listing.md"
    out.write_text(text)
    print(text)
    if ratio > TARGET:
        sys.exit(1)


if __name__ == "__main__":
    main()
