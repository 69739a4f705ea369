"""The systems bench/journey.py compares, each behind the same small interface (the floor is in
bench/_measure.py).

- `Datagraph`: the real app under `datagraph serve` (uvicorn) on a free loopback port, fresh data
  directory, default settings except the ones raised for a 134 MB upload and a load test.
- `Seed`: bench/seedserver.py (Flask + pandas + SQLite) under werkzeug's threaded WSGI server (or
  uvicorn's WSGI interface: `journey.py --seed-server uvicorn`).
- `Floor`: Polars in one separate process on the same Parquet the server stored, and raw reads of
  the file; timed inside that process, so nothing but the work is counted. It runs at niceness 0
  unless told otherwise (`journey.py --floor-nice 5`, as datagraph's workers run).

Every step returns the seconds it took, measured by the client around the request(s) (the
response body read, not parsed) and an answer to check that the systems agree.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent

# The journey's queries, the same on every system.
WHERE = [{"column": "qty", "op": "GT", "value": 500}, {"column": "small", "op": "EQ", "value": "cat3"}]
BY = ["small", "medium"]
AGGS = [
    {"column": "qty", "fn": "SUM"},
    {"column": "price", "fn": "MEAN"},
    {"column": "score", "fn": "MAX"},
    {"column": "user", "fn": "N_UNIQUE"},
]
ON = ["user"]
PAGE = 1000
UNCACHED = ["upload", "upload_users", "upload_xlsx", "describe", "filter", "group_by", "join", "export"]
CACHED = ["describe", "filter", "group_by", "join", "export"]

RESULT = "{ success error { code message } data meta { cached } }"
Q_UPLOAD = """mutation($f: Upload!) { uploadDataset(file: $f) { success error { code message }
  dataset { id rowCount columns { name dtype nullCount missingRate } preview { data } } } }"""
Q_DESCRIBE = f"query($id: ID!) {{ dataset(id: $id) {{ describe {RESULT} }} }}"
Q_FILTER = f"""query($id: ID!, $where: [Condition!]!) {{ dataset(id: $id) {{ filter(where: $where) {{
  count {RESULT} rows(limit: 100) {RESULT} }} }} }}"""
Q_GROUP = f"""query($id: ID!, $by: [String!]!, $aggs: [Aggregation!]!) {{ dataset(id: $id) {{
  groupBy(by: $by, aggregations: $aggs) {{ rows(limit: 1000) {RESULT} }} }} }}"""
Q_JOIN = f"""query($id: ID!, $right: ID!, $on: [String!]!) {{ dataset(id: $id) {{
  join(right: $right, on: $on) {{ summary {RESULT} }} }} }}"""
Q_EXPORT = f"""query($id: ID!, $where: [Condition!]!) {{ dataset(id: $id) {{ filter(where: $where) {{
  export(format: CSV) {RESULT} }} }} }}"""
Q_ROWS = f"query($id: ID!, $offset: Int!) {{ dataset(id: $id) {{ rows(limit: {PAGE}, offset: $offset) {RESULT} }} }}"

# Raised for the benchmark, each a documented setting ("raise for benchmarks"): a 134 MB upload over
# the 20 MiB default, and a per-client request budget that a load test from one address would spend.
DATAGRAPH_ENV = {
    "DATAGRAPH_MAX_UPLOAD_MB": "1024",
    "DATAGRAPH_RATE_LIMIT": "100000000/minute",
    "DATAGRAPH_LOG_LEVEL": "warning",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


@contextlib.contextmanager
def process(argv: list[str], env: dict[str, str], ready: str, log: Path) -> Iterator[tuple[httpx.Client, int]]:
    """A server process in its own session, once GET `ready` answers 200; a keep-alive client and its pid."""
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*argv, "--port", str(port)], env={**os.environ, **env}, stdout=out, stderr=out, start_new_session=True
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=900)
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[1]} exited with {proc.returncode}; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(ready).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"{argv[1]} did not start; see {log}")
        yield client, proc.pid
    finally:
        client.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def post_json(client: httpx.Client, url: str, body: Any) -> httpx.Response:
    return client.post(url, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def results_in(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Every Result (a dict with `success`) in a GraphQL response, each checked for success."""
    assert not payload.get("errors"), payload["errors"]
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "success" in node and "meta" in node:
                assert node["success"], node.get("error")
                found.append(node)
            else:
                for value in node.values():
                    walk(value)

    walk(payload["data"])
    return found


class Datagraph:
    name = "datagraph"

    def __init__(self, client: httpx.Client, pid: int, data_dir: Path) -> None:
        self.client, self.pid, self.data_dir = client, pid, data_dir
        self.ids: dict[str, str] = {}

    def parquet(self, key: str) -> Path:
        """The Parquet file the server stored for an upload (what the floor reads)."""
        return self.data_dir / "datasets" / self.ids[key] / "v1.parquet"

    def upload(self, key: str, path: Path) -> tuple[float, Any]:
        ops = json.dumps({"query": Q_UPLOAD, "variables": {"f": None}})
        with open(path, "rb") as fh:
            seconds, r = timed(
                self.client.post,
                "/graphql",
                data={"operations": ops, "map": json.dumps({"0": ["variables.f"]})},
                files={"0": (path.name, fh, "application/octet-stream")},
                headers={"Apollo-Require-Preflight": "true"},
            )
        payload = r.json()["data"]["uploadDataset"]
        assert payload["success"], payload["error"]
        self.ids[key] = payload["dataset"]["id"]
        return seconds, payload["dataset"]["rowCount"]

    def _query(self, query: str, cached: bool, **variables: Any) -> tuple[float, list[dict[str, Any]]]:
        seconds, r = timed(post_json, self.client, "/graphql", {"query": query, "variables": variables})
        results = results_in(r.json())
        assert all(res["meta"]["cached"] == cached for res in results), [res["meta"] for res in results]
        return seconds, results

    def describe(self, cached: bool = False) -> tuple[float, Any]:
        seconds, (res,) = self._query(Q_DESCRIBE, cached, id=self.ids["main"])
        return seconds, {r["column"]: r for r in res["data"]}

    def filter(self, cached: bool = False) -> tuple[float, Any]:
        seconds, (count, rows) = self._query(Q_FILTER, cached, id=self.ids["main"], where=WHERE)
        return seconds, (count["data"]["count"], len(rows["data"]))

    def group_by(self, cached: bool = False) -> tuple[float, Any]:
        seconds, (res,) = self._query(Q_GROUP, cached, id=self.ids["main"], by=BY, aggs=AGGS)
        return seconds, res["data"]

    def join(self, cached: bool = False) -> tuple[float, Any]:
        seconds, (res,) = self._query(Q_JOIN, cached, id=self.ids["main"], right=self.ids["users"], on=ON)
        (info,) = res["data"]["joins"]
        return seconds, (res["data"]["rows"], info["matchedLeftRows"])

    def export(self, cached: bool = False) -> tuple[float, Any]:
        t0 = time.perf_counter()
        r = post_json(
            self.client, "/graphql", {"query": Q_EXPORT, "variables": {"id": self.ids["main"], "where": WHERE}}
        )
        (res,) = results_in(r.json())
        assert res["meta"]["cached"] == cached, res["meta"]
        download = self.client.get(res["data"]["url"])
        seconds = time.perf_counter() - t0
        assert download.status_code == 200
        return seconds, download.content.count(b"\n") - 1

    def rows(self, offset: int) -> tuple[float, Any]:
        seconds, (res,) = self._query(Q_ROWS, False, id=self.ids["main"], offset=offset)
        return seconds, res["data"]

    def cached_requests(self) -> list[tuple[str, str, bytes]]:
        """The cached JSON queries as raw requests, for the load clients."""
        ids = self.ids
        bodies = [
            {"query": Q_DESCRIBE, "variables": {"id": ids["main"]}},
            {"query": Q_FILTER, "variables": {"id": ids["main"], "where": WHERE}},
            {"query": Q_GROUP, "variables": {"id": ids["main"], "by": BY, "aggs": AGGS}},
            {"query": Q_JOIN, "variables": {"id": ids["main"], "right": ids["users"], "on": ON}},
        ]
        return [("POST", "/graphql", json.dumps(b).encode()) for b in bodies]


class Seed:
    name = "seed"

    def __init__(self, client: httpx.Client, pid: int) -> None:
        self.client, self.pid = client, pid
        self.ids: dict[str, str] = {}
        self.stored: dict[str, float] = {}

    def upload(self, key: str, path: Path) -> tuple[float, Any]:
        with open(path, "rb") as fh:
            seconds, r = timed(self.client.post, "/api/sources", files={"file": (path.name, fh)})
        body = r.json()
        assert body["success"], body
        self.ids[key] = body["data"]["id"]
        self.stored[key] = body["meta"]["storeMs"] / 1000  # of which loading the frame into SQLite
        return seconds, body["meta"]["rowCount"]

    def _post(self, url: str, cached: bool, body: dict[str, Any]) -> tuple[float, Any]:
        seconds, r = timed(post_json, self.client, url, body)
        answer = r.json()
        assert answer["success"], answer
        assert answer["meta"]["cached"] == cached, answer["meta"]
        return seconds, answer["data"]

    def describe(self, cached: bool = False) -> tuple[float, Any]:
        seconds, data = self._post("/api/analyze/describe", cached, {"dataset": self.ids["main"]})
        return seconds, {r["column"]: r for r in data}

    def filter(self, cached: bool = False) -> tuple[float, Any]:
        seconds, data = self._post("/api/analyze/filter", cached, {"dataset": self.ids["main"], "where": WHERE})
        return seconds, (data["count"], len(data["rows"]))

    def group_by(self, cached: bool = False) -> tuple[float, Any]:
        body = {"dataset": self.ids["main"], "by": BY, "aggregations": AGGS}
        return self._post("/api/analyze/groupby", cached, body)

    def join(self, cached: bool = False) -> tuple[float, Any]:
        body = {"left": self.ids["main"], "right": self.ids["users"], "on": ON, "how": "INNER"}
        seconds, data = self._post("/api/analyze/join", cached, body)
        return seconds, (data["rows"], data["matchedLeftRows"])

    def export(self, cached: bool = False) -> tuple[float, Any]:
        body = {"dataset": self.ids["main"], "where": WHERE, "format": "csv"}
        seconds, r = timed(post_json, self.client, "/api/export", body)
        assert r.status_code == 200 and r.headers["x-cache"] == ("hit" if cached else "miss"), r.headers
        return seconds, r.content.count(b"\n") - 1

    def rows(self, offset: int) -> tuple[float, Any]:
        url = f"/api/sources/{self.ids['main']}/rows?limit={PAGE}&offset={offset}"
        seconds, r = timed(self.client.get, url)
        answer = r.json()
        assert answer["success"] and not answer["meta"]["cached"], answer["meta"]
        return seconds, answer["data"]

    def cached_requests(self) -> list[tuple[str, str, bytes]]:
        ids = self.ids
        bodies = [
            ("/api/analyze/describe", {"dataset": ids["main"]}),
            ("/api/analyze/filter", {"dataset": ids["main"], "where": WHERE}),
            ("/api/analyze/groupby", {"dataset": ids["main"], "by": BY, "aggregations": AGGS}),
            ("/api/analyze/join", {"left": ids["main"], "right": ids["users"], "on": ON, "how": "INNER"}),
        ]
        return [("POST", url, json.dumps(b).encode()) for url, b in bodies]


@contextlib.contextmanager
def datagraph(work: Path) -> Iterator[Datagraph]:
    data_dir = work / "datagraph"
    argv = [str(ROOT / ".venv/bin/datagraph"), "serve", "--data-dir", str(data_dir)]
    with process(argv, DATAGRAPH_ENV, "/readyz", work / "datagraph.log") as (client, pid):
        yield Datagraph(client, pid, data_dir)


@contextlib.contextmanager
def seed(work: Path, server: str = "werkzeug") -> Iterator[Seed]:
    argv = [sys.executable, str(ROOT / "bench/seedserver.py"), "--data-dir", str(work / "seed")]
    argv += ["--max-upload-mb", "1024", "--server", server]
    with process(argv, {}, "/api/sources", work / "seed.log") as (client, pid):
        yield Seed(client, pid)


# wrk's Lua: the POST body, and at the end the count of non-2xx answers and socket errors.
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = %s
done = function(summary, latency, requests)
  io.write(string.format("NON2XX %%d ERRORS %%d\\n", summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def wrk_script(path: Path, body: str) -> Path:
    """A wrk Lua script at `path` that POSTs the JSON `body` and reports non-2xx answers and errors."""
    path.write_text(LUA % json.dumps(body))
    return path


def wrk(url: str, script: Path, connections: int, seconds: float) -> dict[str, float]:
    """Drive `url` with wrk for `seconds` (`script` from `wrk_script`): p50 in ms, requests/s, and
    how many answers were not 2xx or failed."""
    threads = min(connections, 2)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    bad = re.search(r"NON2XX (\d+) ERRORS (\d+)", out)
    if not (p50 and rps and bad):
        raise RuntimeError("could not read wrk's output:\n" + out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p50.group(2)]
    return {
        "p50_ms": float(p50.group(1)) * scale,
        "rps": float(rps.group(1)),
        "bad": int(bad.group(1)) + int(bad.group(2)),
    }
