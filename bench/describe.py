"""Upload-to-describe on 1,000,000 rows x 12 columns: this server vs pandas vs Polars in one process.

Runs the three side by side, interleaved (A B C A B C ...) so that machine noise hits all alike,
and prints medians and ratios. The server is the real app under uvicorn on loopback, with the
upload limit raised for the 118 MB file. Usage: `make bench` (or `python bench/describe.py -n 3`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import Plan, Source, describe  # noqa: E402

DATA = ROOT / "bench" / "data"
UPLOAD = "mutation($f: Upload!) { uploadDataset(file: $f) { success error { message } dataset { id } } }"
DESCRIBE = "query($id: ID!) { dataset(id: $id) { describe { success error { message } data } } }"


def generate(path: Path, rows: int = 1_000_000) -> Path:
    """Deterministic mixed-type data: ints, floats with nulls, low/high-cardinality text, dates, timestamps."""
    if path.exists():
        return path
    rng = np.random.default_rng(20261121)
    low = np.array([f"cat{i}" for i in range(8)])
    mid = np.array([f"group-{i:02d}" for i in range(50)])
    floats = rng.normal(100, 15, rows)
    floats[rng.random(rows) < 0.1] = np.nan
    start = np.datetime64("2020-01-01")
    frame = pl.DataFrame(
        {
            "id": np.arange(rows),
            "qty": rng.integers(0, 1000, rows),
            "price": floats,
            "score": rng.random(rows),
            "small": low[rng.integers(0, 8, rows)],
            "medium": mid[rng.integers(0, 50, rows)],
            "user": [f"u{v}" for v in rng.integers(0, 200_000, rows)],
            "token": [f"t{v:x}" for v in rng.permutation(rows)],
            "day": (start + rng.integers(0, 1500, rows).astype("timedelta64[D]")).astype("datetime64[ms]"),
            "at": (start + rng.integers(0, 10**8, rows).astype("timedelta64[s]")).astype("datetime64[ms]"),
            "flag": rng.random(rows) < 0.3,
            "ratio": rng.exponential(2.0, rows),
        }
    ).with_columns(pl.col("day").dt.date(), pl.col("price").fill_nan(None))
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_pandas(csv: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    frame = pd.read_csv(csv)
    t1 = time.perf_counter()
    frame.describe(include="all")
    t2 = time.perf_counter()
    return {"load": t1 - t0, "describe": t2 - t1, "total": t2 - t0}


def run_polars(csv: Path, work: Path) -> dict[str, float]:
    """Polars in one process doing what the server does: read (whole-column typing), Parquet, describe."""
    from connectors import IngestLimits, ingest

    limits = IngestLimits(2000, 5_000_000, 200 << 20, 100, 1000)
    out = work / "polars.parquet"
    t0 = time.perf_counter()
    ingest(csv, "csv", out, limits)
    t1 = time.perf_counter()
    describe(Plan(Source("bench", 1, out)))
    t2 = time.perf_counter()
    out.unlink()
    return {"load": t1 - t0, "describe": t2 - t1, "total": t2 - t0}


def generate_users(path: Path, rows: int = 100_000) -> Path:
    """The right side of the join: one row per user u0 .. u{rows-1}, a 5-value tier and a float."""
    if path.exists():
        return path
    rng = np.random.default_rng(20261122)
    tiers = np.array(["bronze", "silver", "gold", "platinum", "staff"])
    frame = pl.DataFrame(
        {
            "user": [f"u{i}" for i in range(rows)],
            "tier": tiers[rng.integers(0, 5, rows)],
            "credit": rng.normal(500, 120, rows).round(2),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(path)
    return path


@contextlib.contextmanager
def serve(data_dir: Path, *args: str) -> Iterator[tuple[httpx.Client, int]]:
    """The real server under uvicorn on loopback (upload limit raised for the big files; `args` are
    more command-line options), once it answers /readyz; yields a keep-alive client and its pid."""
    port = free_port()
    env = dict(os.environ, DATAGRAPH_MAX_UPLOAD_MB="1024", DATAGRAPH_LOG_LEVEL="warning")
    server = subprocess.Popen(
        [str(ROOT / ".venv/bin/datagraph"), "serve", "--port", str(port), "--data-dir", str(data_dir), *args],
        env=env, start_new_session=True,
    )  # fmt: skip
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
    try:
        for _ in range(150):
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield client, server.pid
    finally:
        client.close()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)


def upload(client: httpx.Client, csv: Path) -> str:
    """Upload a CSV through the GraphQL multipart request; return the dataset id."""
    ops = json.dumps({"query": UPLOAD, "variables": {"f": None}})
    with open(csv, "rb") as fh:
        r = client.post(
            "/graphql",
            data={"operations": ops, "map": json.dumps({"0": ["variables.f"]})},
            files={"0": (csv.name, fh, "text/csv")},
            headers={"Apollo-Require-Preflight": "true"},
        )
    payload = r.json()["data"]["uploadDataset"]
    assert payload["success"], payload
    return str(payload["dataset"]["id"])


def run_server(client: httpx.Client, csv: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    dataset_id = upload(client, csv)
    t1 = time.perf_counter()
    d = client.post("/graphql", json={"query": DESCRIBE, "variables": {"id": dataset_id}}).json()
    assert d["data"]["dataset"]["describe"]["success"], d
    t2 = time.perf_counter()
    client.post(
        "/graphql",
        json={
            "query": "mutation($id: ID!) { deleteDataset(id: $id) { success } }",
            "variables": {"id": dataset_id},
        },
    )
    return {"load": t1 - t0, "describe": t2 - t1, "total": t2 - t0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", "--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    csv = generate(DATA / f"mixed_{args.rows}.csv", args.rows)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    results: dict[str, list[dict[str, float]]] = {"pandas": [], "polars": [], "server": []}
    with serve(work / "data") as (client, _):
        for _ in range(args.rounds):
            results["pandas"].append(run_pandas(csv))
            results["polars"].append(run_polars(csv, work))
            results["server"].append(run_server(client, csv))
    med = {
        k: {m: statistics.median(r[m] for r in v) for m in ("load", "describe", "total")} for k, v in results.items()
    }
    size_mb = csv.stat().st_size / 1e6
    lines = [
        f"# describe benchmark, {dt.date.today().isoformat()}",
        "",
        f"{args.rows:,} rows x 12 columns, {size_mb:.1f} MB CSV; {platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}, polars {pl.__version__}, pandas {pd.__version__};"
        f" median of {args.rounds} interleaved rounds.",
        "",
        "| | load (s) | describe (s) | load + describe (s) |",
        "|---|---:|---:|---:|",
    ]
    for name, label in (("pandas", "pandas read_csv + describe(include='all')"),
                        ("polars", "Polars in one process (same parse + describe)"),
                        ("server", "datagraph: multipart upload + GraphQL describe")):  # fmt: skip
        m = med[name]
        lines.append(f"| {label} | {m['load']:.2f} | {m['describe']:.2f} | {m['total']:.2f} |")
    ratio_describe = med["server"]["describe"] / med["polars"]["describe"]
    speedup_total = med["pandas"]["total"] / med["server"]["total"]
    lines += [
        "",
        f"- GraphQL describe / in-process Polars describe: **{ratio_describe:.2f}x** (target <= 1.2x)",
        f"- upload-to-first-describe, pandas time / datagraph time: **{speedup_total:.2f}x faster** (target >= 1.4x)",
    ]
    report = "\n".join(lines)
    (ROOT / "bench" / "results" / "describe.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
