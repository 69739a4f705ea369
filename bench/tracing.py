"""What tracing costs a request: the code before tracing existed, tracing off, and tracing on (to a
local collector that takes every batch), in-process (the real app through Starlette's TestClient,
one worker process), for a cached answer and an uncached `describe`.

Each variant runs in a process of its own (two trees of the same packages cannot share one), the
three interleaved round by round so machine noise hits all alike; each round reports its median
per request, and the summary is the median over rounds, with ratios to "before".

Usage: `python bench/tracing.py --before DIR` where DIR holds the project as it was before tracing
(`git archive <commit> | tar -x -C DIR`); `-r` rounds, `-n` requests per round.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
QUERY = "query($id: ID!) { dataset(id: $id) { describe%s { success data } } }"


def child(variant: str, endpoint: str, n: int) -> None:
    """Run in a variant's process: upload once, then time `n` cached and `n` uncached describes."""
    import numpy as np
    from starlette.testclient import TestClient

    from datagraph.settings import Settings
    from server.app import create_app

    rng = np.random.default_rng(7)
    rows = "\n".join(f"{i},{rng.integers(0, 100)},{rng.random():.4f},c{i % 9}" for i in range(20_000))
    csv = ("id,qty,score,kind\n" + rows + "\n").encode()
    work = Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    extra = {"otel_endpoint": endpoint} if variant == "on" else {}
    settings = Settings(
        data_dir=work, sources="", plugins="", workers=1, worker_idle_s=0, allowed_hosts="testserver",
        rate_limit="", **extra,
    )  # fmt: skip
    upload = "mutation($f: Upload!) { uploadDataset(file: $f) { success dataset { id } } }"
    with TestClient(create_app(settings)) as client:
        ops = {"query": upload, "variables": {"f": None}}
        answer = client.post(
            "/graphql",
            data={"operations": json.dumps(ops), "map": json.dumps({"0": ["variables.f"]})},
            files={"0": ("b.csv", csv, "text/csv")},
            headers={"Apollo-Require-Preflight": "true"},
        ).json()
        dataset_id = answer["data"]["uploadDataset"]["dataset"]["id"]
        timings: dict[str, list[float]] = {"cached": [], "uncached": []}
        for name, arg in (("cached", ""), ("uncached", "(cache: BYPASS)")):
            body = {"query": QUERY % arg, "variables": {"id": dataset_id}}
            for i in range(n + 3):  # the first three warm up (the first cached one fills the caches)
                started = time.perf_counter()
                got = client.post("/graphql", json=body).json()
                took = time.perf_counter() - started
                assert got["data"]["dataset"]["describe"]["success"], got
                if i >= 3:
                    timings[name].append(took * 1000)
    print(json.dumps({k: statistics.median(v) for k, v in timings.items()}))


class _Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="the project's tree before tracing")
    parser.add_argument("-r", "--rounds", type=int, default=5)
    parser.add_argument("-n", "--requests", type=int, default=40)
    args = parser.parse_args()
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{sink.server_address[1]}"
    trees = {"before": Path(args.before).resolve(), "off": ROOT, "on": ROOT}
    results: dict[str, list[dict[str, float]]] = {v: [] for v in trees}
    variants = list(trees)
    for round_ in range(args.rounds):
        order = variants[round_ % 3 :] + variants[: round_ % 3]  # rotate who goes first
        for variant in order:
            env = {**os.environ, "PYTHONPATH": str(trees[variant])}
            done = subprocess.run(
                [sys.executable, str(ROOT / "bench/tracing.py"), "--child", variant, endpoint, str(args.requests)],
                cwd=trees[variant], env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            results[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"round {round_ + 1}: " + "  ".join(f"{v} {results[v][-1]}" for v in variants), flush=True)
    print("\nmedian over rounds, ms per request (min-max of the round medians); ratio to before")
    for op in ("cached", "uncached"):
        base = statistics.median(r[op] for r in results["before"])
        for variant in variants:
            values = [r[op] for r in results[variant]]
            med = statistics.median(values)
            print(f"  {op:9} {variant:7} {med:8.3f} ({min(values):.3f}-{max(values):.3f})  x{med / base:.3f}")
    print("\nmedian over rounds of the round's ratio to before (paired: the same round's noise)")
    for op in ("cached", "uncached"):
        for variant in variants[1:]:
            ratios = [r[op] / b[op] for r, b in zip(results[variant], results["before"], strict=True)]
            print(f"  {op:9} {variant:7} x{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
    sink.shutdown()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.path.remove(str(Path(__file__).resolve().parent))  # bench/engine.py is not the package
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
