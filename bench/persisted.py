"""What persisted documents cost per request (issue 19, item 2), in-process, straight through the ASGI
middleware stack from the persisted-documents middleware inwards (no HTTP client, no socket):

- floor: a plain cached POST given to the stack below the middleware (as if it were not there);
- plain: the same request through the middleware (its body searched for the two names only);
- apq: the same query as an APQ hash-only POST (LRU look-up, body rewritten);
- get: the same query as a persisted GET (ETag computed from the metadata);
- 304: that GET with a current If-None-Match.

Interleaved rounds, medians, ratios against the floor of the same round. Run:
`.venv/bin/python bench/persisted.py` (about 15 s).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from datagraph.settings import Settings  # noqa: E402
from server.app import create_app  # noqa: E402
from server.persisted import PersistedDocuments  # noqa: E402

QUERY = '{ dataset(id: "tips") { rowCount describe(columns: ["tip"]) { success data meta { cached } } } }'
DIGEST = hashlib.sha256(QUERY.encode()).hexdigest()
EXT = {"persistedQuery": {"version": 1, "sha256Hash": DIGEST}}
N = 400
ROUNDS = 11


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", sources="", plugins="", workers=1, rate_limit="",
                            allowed_hosts="testserver")  # fmt: skip
        with TestClient(create_app(settings)) as client:
            tips = (ROOT.parent / "shared" / "data" / "tips.csv").read_bytes()
            ops = {"query": "mutation($f: Upload!) { uploadDataset(file: $f) { success } }", "variables": {"f": None}}
            client.post(
                "/graphql",
                data={"operations": json.dumps(ops), "map": json.dumps({"0": ["variables.f"]})},
                files={"0": ("tips.csv", tips)},
                headers={"Apollo-Require-Preflight": "true"},
            )
            client.post("/graphql", json={"query": QUERY, "extensions": EXT})  # registered, and cached
            node: Any = client.app.middleware_stack  # type: ignore[attr-defined]
            while not isinstance(node, PersistedDocuments):
                node = node.app
            tag = client.get("/graphql", params={"extensions": json.dumps(EXT)}).headers["etag"].encode()
            assert client.portal is not None
            results: dict[str, list[float]] = {k: [] for k in ("floor", "plain", "apq", "get", "304")}
            for _ in range(ROUNDS):
                for name in results:
                    results[name].append(client.portal.call(_timed, client.app, node, name, tag))
    floor, floor_min = statistics.median(results["floor"]), min(results["floor"])
    print(f"{N} requests a round, {ROUNDS} rounds: microseconds per request, median and best round (ratio to floor)")
    for name, values in results.items():
        median, best = statistics.median(values), min(values)
        spread = (max(values) - best) / median
        print(
            f"  {name:6} median {median:7.1f} us x{median / floor:5.2f}   best {best:7.1f} us x{best / floor_min:5.2f}"
            f"   (max-min {spread:.0%} of median)"
        )


async def _timed(app: Any, node: PersistedDocuments, name: str, tag: bytes) -> float:
    target = node.app if name == "floor" else node
    body = json.dumps({"query": QUERY} if name in ("floor", "plain") else {"extensions": EXT}).encode()
    method = "GET" if name in ("get", "304") else "POST"
    query_string = urlencode({"extensions": json.dumps(EXT)}).encode() if method == "GET" else b""
    headers = [(b"host", b"testserver"), (b"content-type", b"application/json")]
    if name == "304":
        headers.append((b"if-none-match", tag))
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    base = {"type": "http", "method": method, "path": "/graphql", "headers": headers, "app": app,
            "query_string": query_string, "scheme": "http", "root_path": "", "client": ("127.0.0.1", 1)}  # fmt: skip
    started = time.perf_counter()
    for _ in range(N):
        await target(dict(base), receive, send)
    elapsed = (time.perf_counter() - started) / N * 1e6
    assert set(statuses) == {304 if name == "304" else 200}, (name, set(statuses))
    return elapsed


if __name__ == "__main__":
    main()
