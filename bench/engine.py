"""Query engine on 1,000,000 rows: uncached GraphQL vs the same plan in one process, cached latency, throughput.

1. Uncached (`cache: BYPASS`) through GraphQL over HTTP against the same `engine.Plan` run in this
   process with `engine.count` / `engine.rows` on the Parquet file the server stored (the same
   code the worker runs, so the work is the same by construction; the answers are also compared).
   Interleaved server, Polars, server, Polars ...; medians and ratios. Cases: a filter (count, and
   the first 100 rows), a 2-key group-by with 4 aggregations (400 groups), a 1M x 100k inner join
   (count, and a group-by after it).
2. Cached: one keep-alive client repeats one query (cache USE, after a warm-up); p50 and p99. The
   HTTP floor (GET /healthz) and the GraphQL floor (`{ __typename }`) are measured interleaved
   with it, to tell where the time goes.
3. Throughput: 8 clients, each its own OS process with its own keep-alive client, on a cached query
   for a fixed time; requests/s, and the CPU the server and the clients used per request (they
   share the machine's cores).

The server is the real app under uvicorn on loopback (one process, its default worker pool).
Usage: `make bench` (or `python bench/engine.py -n 3`). Writes bench/results/engine.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # ahead of bench/, so that `engine` is the package, not this file

from describe import DATA, generate, generate_users, serve, upload  # noqa: E402  (bench/describe.py)

import engine  # noqa: E402
from datagraph import jsonutil  # noqa: E402
from engine import Aggregation, Condition, Filter, GroupBy, Join, Plan, Source  # noqa: E402

CLIENTS = 8
WHERE = '[{column: "qty", op: GT, value: 500}, {column: "small", op: EQ, value: "cat3"}]'
GROUP = (
    'groupBy(by: ["small", "medium"], aggregations: [{column: "qty", fn: SUM}, {column: "price", fn: MEAN},'
    ' {column: "score", fn: MAX}, {column: "user", fn: N_UNIQUE}])'
)
JOIN = 'join(right: $right, on: ["user"])'
JOIN_GROUP = 'groupBy(by: ["tier"], aggregations: [{column: "qty", fn: SUM}, {column: "credit", fn: MEAN}])'
RESULT = "{ success error { code message } data meta { elapsedMs cached } }"
COUNT = "count(cache: $cache) " + RESULT
ROWS100 = "rows(limit: 100, cache: $cache) " + RESULT
ROWS1000 = "rows(limit: 1000, cache: $cache) " + RESULT


def query(chain: str) -> str:
    right = ", $right: ID!" if "$right" in chain else ""
    return f"query($id: ID!{right}, $cache: CacheMode!) {{ dataset(id: $id) {{ {chain} }} }}"


@dataclass(frozen=True)
class Case:
    name: str
    graphql: str
    floor: Callable[[], Any]  # the same plan and operation in this process; returns what the server's data holds

    def body(self, ids: dict[str, str], cache: str) -> bytes:
        """The JSON request: the query and the variables it declares."""
        variables = {k: v for k, v in ids.items() if f"${k}" in self.graphql}
        return json.dumps({"query": self.graphql, "variables": {**variables, "cache": cache}}).encode()


def cases(left: Source, right: Source) -> list[Case]:
    where = Filter((Condition("qty", "GT", 500), Condition("small", "EQ", "cat3")))
    group = GroupBy(
        ("small", "medium"),
        (Aggregation("qty", "SUM"), Aggregation("price", "MEAN"), Aggregation("score", "MAX"),
         Aggregation("user", "N_UNIQUE")),
    )  # fmt: skip
    join = Join(right, ("user",), "INNER")
    join_group = GroupBy(("tier",), (Aggregation("qty", "SUM"), Aggregation("credit", "MEAN")))

    def count(*steps: engine.Step) -> Callable[[], Any]:
        return lambda: {"count": engine.count(Plan(left, steps))}

    def rows(limit: int, *steps: engine.Step) -> Callable[[], Any]:
        return lambda: engine.rows(Plan(left, steps), limit=limit, offset=0).records

    return [
        Case("filter (qty > 500 and small = cat3) → count", query(f"filter(where: {WHERE}) {{ {COUNT} }}"),
             count(where)),
        Case("filter → rows(limit: 100)", query(f"filter(where: {WHERE}) {{ {ROWS100} }}"), rows(100, where)),
        Case("groupBy 2 keys, 4 aggs (400 groups) → rows", query(f"{GROUP} {{ {ROWS1000} }}"), rows(1000, group)),
        Case("join 1M x 100k on user (inner) → count", query(f"{JOIN} {{ {COUNT} }}"), count(join)),
        Case("join → groupBy tier, 2 aggs → rows", query(f"{JOIN} {{ {JOIN_GROUP} {{ {ROWS1000} }} }}"),
             rows(1000, join, join_group)),
    ]  # fmt: skip


def result_of(payload: dict[str, Any]) -> dict[str, Any]:
    """The one Result in a response: descend through the nested fields to the dict with `success`."""
    assert not payload.get("errors"), payload["errors"]
    node: Any = payload["data"]
    while "success" not in node:
        (node,) = node.values()
    assert node["success"], node
    return dict(node)


def same(a: Any, b: Any) -> bool:
    """Equal as JSON, floats to 1e-9 relative (a parallel sum may differ in its last bits)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def post(client: httpx.Client, body: str | bytes) -> httpx.Response:
    return client.post("/graphql", content=body, headers={"content-type": "application/json"})


# ---- 1. uncached: server vs in-process Polars ------------------------------------------------------------------


def run_uncached(client: httpx.Client, case: Case, variables: dict[str, str]) -> dict[str, float]:
    body = case.body(variables, "BYPASS")
    t0 = time.perf_counter()
    res = result_of(post(client, body).json())
    t1 = time.perf_counter()
    assert not res["meta"]["cached"], res["meta"]
    return {"total": t1 - t0, "resolver": res["meta"]["elapsedMs"] / 1000}


def run_floor(case: Case) -> float:
    t0 = time.perf_counter()
    case.floor()
    return time.perf_counter() - t0


# ---- 2. cached latency, one client -----------------------------------------------------------------------------


def latencies(
    client: httpx.Client, requests: list[tuple[str, str, bytes]], n: int, server_pid: int, block: int = 200
) -> list[tuple[list[float], float]]:
    """Each request n times, in interleaved blocks: seconds per request, and the server's CPU seconds
    per request (its CPU time read around each block). GC is off in this client meanwhile."""
    times: list[list[float]] = [[] for _ in requests]
    cpu = [0.0 for _ in requests]
    headers = {"content-type": "application/json"}
    gc.collect()
    gc.disable()
    try:
        for _ in range(max(1, n // block)):
            for i, (method, url, body) in enumerate(requests):
                cpu0 = cpu_seconds(server_pid)
                for _ in range(block):
                    t0 = time.perf_counter()
                    r = client.request(method, url, content=body or None, headers=headers)
                    times[i].append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        raise RuntimeError(f"{url}: HTTP {r.status_code}")
                cpu[i] += cpu_seconds(server_pid) - cpu0
    finally:
        gc.enable()
    return [(t, c / len(t)) for t, c in zip(times, cpu, strict=True)]


# ---- 3. throughput, CLIENTS processes --------------------------------------------------------------------------


def load_client(base: str, body: bytes, duration: float, start: Barrier, out: Any) -> None:
    """One load-generating process: a keep-alive client posting `body` back to back for `duration` s."""
    headers = {"content-type": "application/json"}
    gc.disable()
    with httpx.Client(base_url=base, timeout=30) as client:
        for _ in range(20):  # connect and warm up
            client.post("/graphql", content=body, headers=headers)
        start.wait()
        cpu0 = time.process_time()
        times: list[float] = []
        errors = 0
        end = time.perf_counter() + duration
        while (t0 := time.perf_counter()) < end:
            r = client.post("/graphql", content=body, headers=headers)
            times.append(time.perf_counter() - t0)
            errors += r.status_code != 200 or b'"success":true' not in r.content
        out.put((times, errors, time.process_time() - cpu0))


def run_throughput(base: str, body: bytes, duration: float, server_pid: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")  # a fork would copy this process's Polars threads' state
    start = ctx.Barrier(CLIENTS + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=load_client, args=(base, body, duration, start, out)) for _ in range(CLIENTS)]
    for p in procs:
        p.start()
    start.wait(timeout=120)
    cpu0, t0 = cpu_seconds(server_pid), time.perf_counter()
    results = [out.get(timeout=duration + 60) for _ in procs]
    wall, server_cpu = time.perf_counter() - t0, cpu_seconds(server_pid) - cpu0
    for p in procs:
        p.join(10)
    times = [t for r in results for t in r[0]]
    done = len(times)
    return {
        "rps": done / duration,
        "requests": done,
        "errors": sum(r[1] for r in results),
        "p50": percentile(times, 50),
        "p99": percentile(times, 99),
        "server_cpu_per_req": server_cpu / done,
        "client_cpu_per_req": sum(r[2] for r in results) / done,
        "wall": wall,
        "server_cpu": server_cpu,
    }


# ---- report -----------------------------------------------------------------------------------------------------


def versions() -> str:
    names = ("polars", "strawberry-graphql", "graphql-core", "starlette", "uvicorn", "httpx", "orjson")
    return ", ".join(f"{n} {metadata.version(n)}" for n in names)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def ms(seconds: float) -> str:
    """Milliseconds to show: one decimal from 10 ms up, two below; thousands separated."""
    return f"{seconds * 1000:,.1f}" if seconds >= 0.01 else f"{seconds * 1000:,.2f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", "--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=2000, help="cached requests per measured query")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of the throughput run")
    args = parser.parse_args()
    csv = generate(DATA / f"mixed_{args.rows}.csv", args.rows)
    users_csv = generate_users(DATA / "users_100000.csv")
    work = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    data_dir = work / "data"
    uncached: dict[str, dict[str, list[float]]] = {}
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        client, server_pid = cleanup.enter_context(serve(data_dir))
        base = str(client.base_url).rstrip("/")
        left_id, right_id = upload(client, csv), upload(client, users_csv)
        left = Source(left_id, 1, data_dir / "datasets" / left_id / "v1.parquet")
        right = Source(right_id, 1, data_dir / "datasets" / right_id / "v1.parquet")
        assert left.path.exists() and right.path.exists(), (left, right)
        variables = {"id": left_id, "right": right_id}
        all_cases = cases(left, right)

        # 1. Uncached. One warm-up of each side per case, which also checks that both answer the same.
        for case in all_cases:
            served = result_of(post(client, case.body(variables, "BYPASS")).json())
            local = jsonutil.loads(jsonutil.dumps(case.floor()))
            assert same(served["data"], local), f"{case.name}: the server and the in-process plan disagree"
            uncached[case.name] = {"total": [], "resolver": [], "polars": []}
        for _ in range(args.rounds):
            for case in all_cases:
                timing = run_uncached(client, case, variables)
                uncached[case.name]["total"].append(timing["total"])
                uncached[case.name]["resolver"].append(timing["resolver"])
                uncached[case.name]["polars"].append(run_floor(case))

        # 2. Cached latency: the filter count and the 400-row group-by, with the HTTP and GraphQL floors.
        filter_count, group_rows = all_cases[0], all_cases[2]
        cached_bodies = {c.name: c.body(variables, "USE") for c in (filter_count, group_rows)}
        for body in cached_bodies.values():
            for _ in range(200):  # the first stores the result; the rest warm the parser and validation caches
                res = result_of(post(client, body).json())
            assert res["meta"]["cached"], res["meta"]
        typename = json.dumps({"query": "{ __typename }"}).encode()
        requests = [("GET", "/healthz", b""), ("POST", "/graphql", typename)]
        requests += [("POST", "/graphql", b) for b in cached_bodies.values()]
        for method, url, body in requests[:2]:
            for _ in range(200):
                client.request(method, url, content=body or None, headers={"content-type": "application/json"})
        lat = latencies(client, requests, args.requests, server_pid)
        response_bytes = len(post(client, cached_bodies[group_rows.name]).content)

        # 3. Throughput on the cached filter count.
        load = run_throughput(base, cached_bodies[filter_count.name], args.duration, server_pid)
        assert load["errors"] == 0, load

    lines = [
        f"# engine benchmark, {dt.date.today().isoformat()}",
        "",
        f"{args.rows:,} rows x 12 columns joined with 100,000 rows x 3 columns (both uploaded as CSV, stored as"
        f" Parquet); {platform.platform()}, {cpu_model()}, {os.cpu_count()} cores; Python"
        f" {platform.python_version()}, {versions()}. One uvicorn process with its default worker pool; the"
        f" load generator runs on the same {os.cpu_count()} cores.",
        "",
        f"Uncached: `cache: BYPASS`, server and in-process `engine` interleaved, median of {args.rounds} rounds."
        f" Cached: one keep-alive httpx client, {args.requests:,} requests per query, interleaved with the floors."
        f" Throughput: {CLIENTS} client processes, {args.duration:g} s.",
        "",
        "| what | server ms | Polars ms | ratio | target | met? |",
        "|---|---:|---:|---:|---|---|",
    ]
    breakdown = [
        "| uncached case | HTTP + GraphQL (ms) | worker round trip (ms) | Polars in one process (ms) |",
        "|---|---:|---:|---:|",
    ]
    for name, t in uncached.items():
        total, resolver, polars = (statistics.median(t[k]) for k in ("total", "resolver", "polars"))
        ratio = total / polars
        met = "yes" if ratio <= 1.3 else "**no**"
        lines.append(f"| uncached: {name} | {ms(total)} | {ms(polars)} | {ratio:.2f}x | ≤ 1.3x | {met} |")
        breakdown.append(f"| {name} | {ms(total - resolver)} | {ms(resolver - polars)} | {ms(polars)} |")
    labels = ("cached: filter → count", f"cached: groupBy → 400 rows ({response_bytes / 1000:.0f} kB)")
    for label, (times, _) in zip(labels, lat[2:], strict=True):
        p50, p99 = percentile(times, 50), percentile(times, 99)
        met = "yes" if p50 <= 0.001 else "**no**"
        lines.append(f"| {label}, p50 (p99) | {ms(p50)} ({ms(p99)}) | | | p50 ≤ 1 ms | {met} |")
    met = "yes" if load["rps"] >= 3000 else "**no**"
    lines.append(
        f"| throughput: cached filter → count, {CLIENTS} client processes | {load['rps']:,.0f} req/s | | |"
        f" ≥ 3000 req/s | {met} |"
    )
    floors = ("GET /healthz (HTTP floor)", "`{ __typename }` (GraphQL floor)", *labels)
    cached_rows = [
        f"| {label} | {ms(percentile(t, 50))} | {ms(percentile(t, 99))} | {c * 1e6:.0f} |"
        for label, (t, c) in zip(floors, lat, strict=True)
    ]
    lines += [
        "",
        "Where the uncached time goes (medians; HTTP + GraphQL = request time - the resolver's `meta.elapsedMs`;"
        " worker round trip = `elapsedMs` - the same plan in one process: pickling, pipes, the worker's own run):",
        "",
        *breakdown,
        "",
        "Cached requests from one keep-alive client, interleaved in blocks of 200 with the HTTP and GraphQL floors"
        " (server CPU: the server process's user + system time around each block):",
        "",
        "| request | p50 ms | p99 ms | server CPU µs / request |",
        "|---|---:|---:|---:|",
        *cached_rows,
        "",
        f"Throughput: {load['requests']:,} requests in {args.duration:g} s, {load['errors']} errors; latency under"
        f" load p50 {ms(load['p50'])} ms, p99 {ms(load['p99'])} ms. CPU per request: the server"
        f" {load['server_cpu_per_req'] * 1e6:.0f} µs, the {CLIENTS} httpx clients"
        f" {load['client_cpu_per_req'] * 1e6:.0f} µs together, on {os.cpu_count()} shared cores; the server process"
        f" used {load['server_cpu'] / load['wall']:.2f} of a core. At that cost one server process tops out near"
        f" {1 / load['server_cpu_per_req']:,.0f} req/s even with a core to itself.",
    ]
    report = "\n".join(lines)
    (ROOT / "bench" / "results" / "engine.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
