"""Push latency: from `appendRows` returning to the watch's new result arriving, with 1,000 idle
subscribers connected to the same server process.

The real server under uvicorn on loopback (one process). 1,000 websocket connections each hold a
`datasetEvents` subscription on another dataset (idle: every event still reaches their queues and
is filtered there). One connection watches `count` of a filter on tips. Each round appends one
row over HTTP and waits for the push; the latency is push arrival - appendRows response (0 when the
push came first), and, for reference, push arrival - request start. Usage: `python bench/events.py`.
Writes bench/results/events.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from describe import serve, upload  # noqa: E402  (bench/describe.py)

DATA = ROOT.parent / "shared" / "data"
WATCH = """subscription($d: ID!) { watch(dataset: $d, result: COUNT,
  steps: [{filter: [{column: "day", op: EQ, value: "Sun"}]}]) { success data } }"""
IDLE = "subscription($d: ID) { datasetEvents(dataset: $d) { kind } }"
APPEND = 'mutation($d: ID!) { appendRows(dataset: $d, rows: [{day: "Sun", tip: 1.0}]) { success } }'


async def open_ws(base: str) -> ClientConnection:
    ws = await connect(base.replace("http://", "ws://") + "/graphql", subprotocols=["graphql-transport-ws"])  # type: ignore[list-item]
    await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
    assert json.loads(await ws.recv())["type"] == "connection_ack"
    return ws


async def subscribe(ws: ClientConnection, query: str, variables: dict[str, Any]) -> None:
    await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": variables}}))


async def next_data(ws: ClientConnection) -> dict[str, Any]:
    while True:
        message = json.loads(await ws.recv())
        if message["type"] == "next":
            data: dict[str, Any] = message["payload"]["data"]
            return data


async def run(base: str, tips: str, idle: int, rounds: int) -> dict[str, list[float]]:
    idlers = []
    for i in range(idle):
        ws = await open_ws(base)
        await subscribe(ws, IDLE, {"d": f"nothing-{i}"})
        idlers.append(ws)
    watcher = await open_ws(base)
    await subscribe(watcher, WATCH, {"d": tips})
    await next_data(watcher)
    times: dict[str, list[float]] = {"after_response": [], "after_request": []}
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for _ in range(rounds + 3):
            pushed = asyncio.ensure_future(next_data(watcher))
            started = time.perf_counter()
            response = await client.post("/graphql", json={"query": APPEND, "variables": {"d": tips}})
            returned = time.perf_counter()
            assert response.json()["data"]["appendRows"]["success"], response.text
            await pushed
            arrived = time.perf_counter()
            times["after_response"].append(max(0.0, arrived - returned))
            times["after_request"].append(arrived - started)
            await asyncio.sleep(0.05)
    for key in times:
        times[key] = times[key][3:]  # warm-up rounds
    await watcher.close()
    await asyncio.gather(*(ws.close() for ws in idlers))
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    work = Path(tempfile.mkdtemp(prefix="bench-events-"))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        client, _ = cleanup.enter_context(serve(work / "data", "--ws-max-subscriptions", "10"))
        tips = upload(client, DATA / "tips.csv")
        base = str(client.base_url).rstrip("/")
        times = asyncio.run(run(base, tips, args.idle, args.rounds))
    after = sorted(times["after_response"])
    whole = sorted(times["after_request"])
    p50, p99 = statistics.median(after), after[int(len(after) * 0.99) - 1]
    lines = [
        "# Push latency benchmark",
        "",
        f"{dt.date.today().isoformat()}, Python {platform.python_version()}, one server process on loopback,"
        f" {args.idle:,} idle subscribers, {len(after)} appends.",
        "",
        "| what | p50 ms | p99 ms | target |",
        "|---|---:|---:|---|",
        f"| appendRows returned → watch push arrived | {p50 * 1000:.1f} | {p99 * 1000:.1f} | p50 ≤ 20 ms:"
        f" {'met' if p50 <= 0.02 else '**missed**'} |",
        f"| appendRows sent → watch push arrived | {statistics.median(whole) * 1000:.1f} |"
        f" {whole[int(len(whole) * 0.99) - 1] * 1000:.1f} | (reference) |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    (ROOT / "bench" / "results" / "events.md").write_text(text)


if __name__ == "__main__":
    main()
