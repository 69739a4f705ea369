"""Three real `datagraph serve` processes on one PostgreSQL metadata database, one Redis and one data
directory, behind a round-robin TCP proxy (tests/rrproxy.py), as the README's "Several servers"
deploys them. Every request goes through the proxy on a connection of its own, so consecutive
requests land on consecutive nodes, and the proxy says which node took each: the journey (upload,
describe, filter, group-by, join, export and its download, subscriptions seeing an append made
through another node), API keys, the shared rate limit; then faults: the scheduler's node SIGKILLed
mid-refresh, and the sweeper's node SIGKILLed in the middle of uploads.

The nodes start side by side once for the module (slow tier); the tests run in file order and the
fault tests come last, each killing one node (the proxy skips a dead one). Two tests need no node
(everyday tier): the proxy's own, and one that keeps the README section's settings true."""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import sqlalchemy as sa
import uvicorn
from rrproxy import RoundRobin
from support import (
    DATA,
    ROOT,
    SWEEP,
    datagraph_main,
    free_port,
    fresh_redis,
    scratch_postgres_database,
    upload_request,
    wait_for,
    wait_until_serving,
)
from upstream import Reply, Upstream
from websockets.exceptions import ConnectionClosed
from wsclient import Ws

from datagraph.settings import Settings
from server.auth import KEYS_TTL_S, hash_key, new_key
from server.ratelimit import UPLOAD_COST
from storage import MetadataStore

NODES = 3
REDIS = "redis://127.0.0.1:6379/12"  # this module's own Redis database (test_webhook has 14)
BUDGET_UPLOADS = 50  # the rate limit in multipart requests (each costs 1 + UPLOAD_COST)
RATE_LIMIT = f"{BUDGET_UPLOADS * (1 + UPLOAD_COST)}/hour"  # per hour: no window edge within a test
SWEEP_EVERY_S = 60  # the servers' periodic sweep (server/resources.py)
TIPS_ROWS = 244
DAYS = b"day,weekend\nThur,false\nFri,false\nSat,true\nSun,true\n"


@dataclass
class Node:
    """One `datagraph serve` process (and its workers, in its own process group)."""

    index: int
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the server and its worker processes at once, as a machine or container dies."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        wait_for(lambda: not _group_alive(self.proc.pid), 10, f"node {self.index}'s workers outlived it")

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
                pytest.fail(f"node {self.index} did not stop within 15 s of SIGTERM:\n" + self.log.read_text()[-4000:])


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group `pgid` still runs (a zombie waiting for its reaper does not)."""
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
    return False


@dataclass
class Cluster:
    nodes: list[Node]
    proxy: RoundRobin
    data: Path  # the shared data directory
    metadata_url: str
    engine: sa.Engine  # the test's own look into the shared metadata database
    upstream: Upstream
    work: Path
    # One connection a request (no keep-alive), so consecutive requests go round the nodes; one client,
    # so that each request does not pay for building a TLS context (a tenth of a second on a busy machine).
    http: httpx.Client

    @property
    def url(self) -> str:
        return self.proxy.url

    def key(self, name: str) -> str:
        """A new API key called `name`, recorded in the shared metadata database as `datagraph keys
        create` records it; every node takes it once it re-reads the keys (within KEYS_TTL_S)."""
        key = new_key()
        with _store(self.metadata_url) as store:
            assert store.add_key(name, hash_key(key))
        time.sleep(KEYS_TTL_S + 0.1)
        return key

    def process_id(self, node: Node) -> str:
        """The id `node` registered under (its staging area is `staging/<id>/`)."""
        with self.engine.connect() as conn:
            found = conn.execute(sa.text("SELECT id FROM processes WHERE pid = :pid"), {"pid": node.proc.pid}).all()
        assert len(found) == 1, found
        return str(found[0][0])

    def registered(self) -> set[str]:
        with self.engine.connect() as conn:
            return {str(row[0]) for row in conn.execute(sa.text("SELECT id FROM processes"))}

    def lease_holder(self, name: str) -> str:
        with self.engine.connect() as conn:
            return str(conn.execute(sa.text("SELECT holder FROM leases WHERE name = :n"), {"n": name}).scalar_one())

    def next_due(self, dataset: str) -> float:
        """When the dataset's schedule is next due (seconds since the epoch, by the database's clock)."""
        with self.engine.connect() as conn:
            due = conn.execute(sa.text("SELECT next_due FROM schedules WHERE dataset_id = :d"), {"d": dataset})
            return float(due.scalar_one().timestamp())

    def claimed_by(self, dataset: str) -> str | None:
        """The process running a refresh of the dataset's schedule now, if any (or the schedule is gone)."""
        with self.engine.connect() as conn:
            found = conn.execute(sa.text("SELECT claimed_by FROM schedules WHERE dataset_id = :d"), {"d": dataset})
            row = found.first()
        return None if row is None or row[0] is None else str(row[0])

    def job_status(self, job_id: str) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.text("SELECT status FROM jobs WHERE id = :j"), {"j": job_id}).first()
        return None if row is None else str(row[0])


@contextlib.contextmanager
def _store(url: str) -> Iterator[MetadataStore]:
    store = MetadataStore(url)
    try:
        yield store
    finally:
        store.close()


def _start(index: int, work: Path, env: dict[str, str]) -> Node:
    """Start a node without waiting for it (the three start side by side)."""
    folder = work / f"node{index}"
    folder.mkdir()
    port = free_port()
    log = folder / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/datagraph"), "serve", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: SIGKILL takes its workers too
            cwd=folder,
            env={**os.environ, **env},
        )
    return Node(index, port, proc, log)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("several")
    data = work / "shared-data"  # the one data directory (a shared mount in a real deployment)
    plugins = work / "plugins"
    plugins.mkdir()
    shutil.copy(ROOT / "plugins" / "http_json.py", plugins)  # the one plugin the tests fetch with
    upstream = Upstream()
    with contextlib.ExitStack() as stack:
        stack.callback(upstream.close)
        metadata_url = stack.enter_context(scratch_postgres_database())
        stack.enter_context(fresh_redis(REDIS))
        operator = new_key()  # a key, so that nodes requiring keys start
        with _store(metadata_url) as store:  # the tables, made once
            store.add_key("operator", hash_key(operator))
        env = {
            "DATAGRAPH_METADATA_URL": metadata_url,
            "DATAGRAPH_CACHE_URL": REDIS,
            "DATAGRAPH_DATA_DIR": str(data),
            "DATAGRAPH_METRICS_DIR": str(work / "metrics"),
            "DATAGRAPH_API_KEYS": "on",
            "DATAGRAPH_RATE_LIMIT": RATE_LIMIT,
            "DATAGRAPH_PLUGINS": str(plugins),
            "DATAGRAPH_SOURCES": "",
            "DATAGRAPH_WORKERS": "1",
            "DATAGRAPH_WORKER_IDLE_S": "0",  # the worker starts with the node: the fault tests count on it
            "DATAGRAPH_LEASE_S": "4",  # a dead holder's duties are taken over within seconds
            "DATAGRAPH_SCHEDULE_MIN_S": "1",
            "DATAGRAPH_KEEP_VERSIONS": "100",  # every version a schedule made stays listed
        }
        (work / "metrics").mkdir()
        nodes = [_start(i, work, env) for i in range(NODES)]
        for node in nodes:
            stack.callback(node.stop)
        for node in nodes:  # three starting at once on a busy machine: imports alone may take a minute
            wait_until_serving(node.base, node.log, seconds=150)
        _plugins_loaded(nodes, operator)
        proxy = stack.enter_context(RoundRobin([n.port for n in nodes]))
        SWEEP.serving(proxy.url)  # every answer through the proxy is scanned for leaks
        for node in nodes:
            SWEEP.serving(node.base)
        engine = sa.create_engine(metadata_url)
        stack.callback(engine.dispose)
        http = stack.enter_context(httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=60))
        yield Cluster(nodes, proxy, data, metadata_url, engine, upstream, work, http)


def _has_plugin(node: Node, key: str) -> bool:
    ready = httpx.get(node.base + "/readyz", headers={"X-API-Key": key}, timeout=30).json()
    return bool(ready["sources"].get("plugin:http_json") == "OK")


def _plugins_loaded(nodes: list[Node], key: str) -> None:
    """Every node has loaded the plugin the tests fetch with (at start-up, in a worker)."""
    for node in nodes:
        assert _has_plugin(node, key), f"node {node.index} did not load http_json:\n" + node.log.read_text()[-4000:]


# ---- talking to the cluster through the proxy ---------------------------------------------------------------


def _post(cluster: Cluster, key: str, query: str, variables: dict[str, Any] | None = None) -> httpx.Response:
    """One POST on a new connection (the next node in turn)."""
    body = {"query": query, "variables": variables or {}}
    return cluster.http.post(cluster.url + "/graphql", json=body, headers={"X-API-Key": key}, timeout=60)


def _data(cluster: Cluster, key: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    response = _post(cluster, key, query, variables)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body["errors"]
    data: dict[str, Any] = body["data"]
    return data


def _landed(cluster: Cluster, call: Callable[[], Any]) -> tuple[Any, list[int | None]]:
    """What `call` answered, and the nodes its connections went to."""
    first = cluster.proxy.count()
    return call(), cluster.proxy.nodes_of(first)


def _upload(cluster: Cluster, key: str, content: bytes, filename: str, name: str | None = None,
            job: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Upload through the proxy; the `uploadDataset` payload."""
    request = upload_request(content, filename, name, {"Apollo-Require-Preflight": "true", "X-API-Key": key})
    if job is not None:  # the same upload, as a job of a known id
        operations = json.loads(request["data"]["operations"])
        operations["query"] = UPLOAD_AS_JOB
        operations["variables"]["j"] = job
        request["data"]["operations"] = json.dumps(operations)
    response = cluster.http.post(cluster.url + "/graphql", **request, timeout=120)
    assert response.status_code == 200, response.text
    payload: dict[str, Any] = response.json()["data"]["uploadDataset"]
    return payload


UPLOAD_AS_JOB = """mutation($file: Upload!, $name: String, $j: ID!) { uploadDataset(file: $file, name: $name, jobId: $j) {
  success error { code message } dataset { id rowCount } } }"""
APPEND = """mutation($d: ID!, $r: JSON!) { appendRows(dataset: $d, rows: $r) {
  success error { code message } dataset { version rowCount } } }"""
EVENTS = "subscription($d: ID) { datasetEvents(dataset: $d) { kind dataset version rowCount } }"
WATCH_COUNT = "subscription($d: ID!) { watch(dataset: $d, result: COUNT) { success data } }"
LISTED = "query($s: String) { datasets(search: $s) { id rowCount } }"


def _subscribers(cluster: Cluster, node: Node, key: str) -> int:
    count: int = cluster.http.get(node.base + "/readyz", headers={"X-API-Key": key}).json()["events"]["subscribers"]
    return count


# ---- the journey -----------------------------------------------------------------------------------------------


@pytest.mark.slow  # three real server processes and a proxy
def test_the_whole_journey_through_a_round_robin_proxy(cluster: Cluster) -> None:
    key = cluster.key("journey")
    (tips, days), nodes = _landed(
        cluster,
        lambda: (
            _upload(cluster, key, (DATA / "tips.csv").read_bytes(), "tips.csv"),
            _upload(cluster, key, DAYS, "days.csv"),
        ),
    )
    assert tips["success"] and days["success"], (tips, days)
    assert tips["dataset"]["id"] == "tips" and days["dataset"]["id"] == "days"
    assert nodes[0] != nodes[1], "the two uploads went to one node: the proxy does not rotate"

    # Each question lands on another node than the upload and the previous question.
    questions = """{ dataset(id: "tips") {
      describe(columns: ["total_bill", "day"]) { success data }
      filter(where: [{column: "total_bill", op: GT, value: 30}]) {
        count { success data }
        groupBy(by: ["day"], aggregations: [{column: "tip", fn: MEAN}]) { sort(by: [{column: "day"}]) { rows { success data } } }
        export(format: CSV) { success data }
      }
      join(right: "days", on: ["day"]) { count { data } filter(where: [{column: "weekend", op: EQ, value: true}]) { count { data } } }
    } }"""
    answer, (asked,) = _landed(cluster, lambda: _data(cluster, key, questions)["dataset"])
    stats = {s["column"]: s for s in answer["describe"]["data"]}
    assert stats["day"]["top"] == "Sat" and stats["total_bill"]["count"] == TIPS_ROWS
    assert answer["filter"]["count"]["data"] == {"count": 32}
    means = {row["day"]: row["tip_mean"] for row in answer["filter"]["groupBy"]["sort"]["rows"]["data"]}
    assert set(means) == {"Thur", "Fri", "Sat", "Sun"} and round(means["Thur"], 3) == 5.374
    assert answer["join"]["count"]["data"] == {"count": TIPS_ROWS}
    assert answer["join"]["filter"]["count"]["data"] == {"count": 163}  # Saturdays and Sundays
    export = answer["filter"]["export"]
    assert export["success"], export
    url = export["data"]["url"]
    assert url.startswith(cluster.url + "/exports/"), url  # a link to the proxy, not to the node that made it

    # The download lands on another node: the file is in the shared directory, the token in the shared database.
    download, (fetched,) = _landed(cluster, lambda: cluster.http.get(url, timeout=30))
    assert fetched != asked
    assert download.status_code == 200, download.text
    lines = download.text.strip().splitlines()
    assert lines[0] == "total_bill,tip,sex,smoker,day,time,size" and len(lines) == 1 + 32

    # A watch on one node sees an append made through another (events over Redis).
    with Ws(cluster.url, {"apiKey": key}) as ws:
        (watched,) = cluster.proxy.nodes_of(cluster.proxy.count() - 1)
        ws.subscribe(WATCH_COUNT, {"d": "tips"})
        assert ws.next_data(30)["watch"]["data"] == {"count": TIPS_ROWS}
        appended, (appended_on,) = _landed(
            cluster, lambda: _data(cluster, key, APPEND, {"d": "tips", "r": [{"day": "Sun", "tip": 1.0}]})
        )
        assert appended["appendRows"]["success"] and appended_on != watched
        assert ws.next_data(30)["watch"]["data"] == {"count": TIPS_ROWS + 1}

    # So does a Server-Sent Events stream on a third node.
    headers = {"Accept": "text/event-stream", "X-API-Key": key}
    body = {"query": EVENTS, "variables": {"d": "tips"}}
    first = cluster.proxy.count()
    with cluster.http.stream("POST", cluster.url + "/graphql/stream", json=body, headers=headers,
                      timeout=httpx.Timeout(10, read=30)) as stream:  # fmt: skip
        assert stream.status_code == 200
        (streaming,) = cluster.proxy.nodes_of(first)
        assert streaming is not None
        wait_for(lambda: _subscribers(cluster, cluster.nodes[streaming], key) >= 1, 30, "the stream did not subscribe")
        _, (appended_on,) = _landed(cluster, lambda: _data(cluster, key, APPEND, {"d": "tips", "r": [{"day": "Sat"}]}))
        if appended_on == streaming:  # the subscriber count was read through the node directly: go round once more
            _, (appended_on,) = _landed(
                cluster, lambda: _data(cluster, key, APPEND, {"d": "tips", "r": [{"day": "Sat"}]})
            )
        assert appended_on != streaming
        event = _next_sse(stream.iter_lines())
        assert event["datasetEvents"]["kind"] == "APPENDED" and event["datasetEvents"]["dataset"] == "tips"

    # Every node answers the same current version.
    versions, nodes = _landed(
        cluster,
        lambda: [_data(cluster, key, '{ dataset(id: "tips") { version rowCount } }')["dataset"] for _ in range(NODES)],
    )
    assert len(nodes) == len(set(nodes)) == NODES and None not in nodes
    assert len({json.dumps(v) for v in versions}) == 1 and versions[0]["rowCount"] >= TIPS_ROWS + 2


def _next_sse(lines: Iterator[str]) -> dict[str, Any]:
    """The data of the next `next` event on a graphql-sse stream."""
    event, data = "message", ""
    for line in lines:
        if line == "":
            if event == "next" and data:
                payload: dict[str, Any] = json.loads(data)["data"]
                return payload
            event, data = "message", ""
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
    raise AssertionError("the stream ended without an event")


# ---- API keys and the rate limit -------------------------------------------------------------------------------


@pytest.mark.slow  # three real server processes and a proxy
def test_a_key_made_once_works_on_every_node_and_revoked_stops_on_all(cluster: Cluster) -> None:
    metadata = ("--metadata-url", cluster.metadata_url, "--data-dir", str(cluster.data))
    made = datagraph_main("keys", "create", "--name", "laptop", *metadata).stdout
    key = made.strip().splitlines()[-1]
    time.sleep(KEYS_TTL_S + 0.1)  # every node re-reads the keys at most this old
    statuses, nodes = _landed(
        cluster, lambda: [_post(cluster, key, "{ datasets { id } }").status_code for _ in range(NODES)]
    )
    assert len(nodes) == len(set(nodes)) == NODES and None not in nodes and statuses == [200] * NODES

    with Ws(cluster.url, {"apiKey": key}) as ws:
        ws.subscribe(EVENTS, {"d": None})
        datagraph_main("keys", "revoke", "laptop", *metadata)
        time.sleep(KEYS_TTL_S + 0.1)  # "requests with it fail within a second" (docs/security.md)
        refused, nodes = _landed(cluster, lambda: [_post(cluster, key, "{ datasets { id } }") for _ in range(NODES)])
        assert len(nodes) == len(set(nodes)) == NODES and None not in nodes
        assert [r.status_code for r in refused] == [401] * NODES
        assert {r.json()["errors"][0]["extensions"]["code"] for r in refused} == {"UNAUTHENTICATED"}
        # The open websocket, wherever it is, is closed too (4403).
        closed = wait_for(lambda: ws.conn.close_code, 15, "the revoked key's websocket stayed open", every=0.2)
        assert closed == 4403


@pytest.mark.slow  # three real server processes and a proxy
def test_the_rate_limit_is_one_budget_across_the_nodes(cluster: Cluster) -> None:
    """Multipart requests cost 1 + UPLOAD_COST each, whatever they carry: the budget is BUDGET_UPLOADS
    of them per key. Sent one a connection, round the nodes, half as many again: if each node kept its
    own budget all would pass."""
    key = cluster.key("budget")
    request: dict[str, Any] = {  # a multipart request that uploads nothing: the cost of an upload, none of its work
        "data": {"operations": json.dumps({"query": "{ __typename }"}), "map": "{}"},
        "files": {"x": ("empty.txt", b"", "text/plain")},
        "headers": {"Apollo-Require-Preflight": "true", "X-API-Key": key},
    }
    sent = BUDGET_UPLOADS * 3 // 2
    statuses, nodes = _landed(
        cluster,
        lambda: [cluster.http.post(cluster.url + "/graphql", **request, timeout=30).status_code for _ in range(sent)],
    )
    assert {n for n in nodes if n is not None} == set(range(NODES))
    passed = [s for s in statuses if s != 429]
    assert len(passed) == BUDGET_UPLOADS, statuses
    assert statuses[BUDGET_UPLOADS:] == [429] * (sent - BUDGET_UPLOADS)
    refused_by = {n for n, s in zip(nodes, statuses, strict=True) if s == 429}
    assert refused_by == set(range(NODES))
    for node in cluster.nodes:
        assert (
            cluster.http.get(node.base + "/readyz", headers={"X-API-Key": key}).json()["rateLimit"]["backend"]
            == "redis"
        )


# ---- faults ---------------------------------------------------------------------------------------------------


@pytest.mark.slow  # three real server processes and a proxy
def test_the_scheduler_s_node_killed_mid_refresh_runs_each_period_exactly_once(cluster: Cluster) -> None:
    """A plugin dataset on a schedule of EVERY_S, its upstream answering fetch n with n rows (so each
    version's row count names the fetch it holds). The node holding the scheduler's lease is SIGKILLed
    while its fetch of one period waits on the upstream. Another node takes the lease over and runs
    that period again; every completed fetch made exactly one version, none twice, one per period."""
    alive = [n for n in cluster.nodes if n.alive()]
    assert len(alive) >= 2, "the fault tests need two live nodes"
    key = cluster.key("schedules")
    arrivals: list[float] = []  # when fetch n + 1 reached the upstream (time.time(): the database's clock too)
    lock = threading.Lock()
    slow_came, release = threading.Event(), threading.Event()

    def answer(_: Any) -> Reply:
        with lock:
            arrivals.append(time.time())
            serial = len(arrivals)
        if serial == SLOW:  # the period the scheduler's node dies in
            slow_came.set()
            release.wait(120)
        return Reply(200, json.dumps([{"fetch": serial, "row": i} for i in range(serial)]).encode())

    cluster.upstream.always["/ratings"] = answer
    try:
        made = _data(cluster, key, FETCH_NEW, {"p": {"url": cluster.upstream.url("/ratings")}})["fetchPlugin"]
        assert made["success"], made
        dataset = made["dataset"]["id"]
        scheduled = _data(cluster, key, SCHEDULE, {"d": dataset, "e": f"{EVERY_S}s"})["setSchedule"]
        assert scheduled["success"] and scheduled["dataset"]["schedule"] == f"{EVERY_S}s", scheduled
        first_due = cluster.next_due(dataset)

        assert slow_came.wait(60 + SLOW * EVERY_S), "the schedule did not run"
        holder = cluster.lease_holder("scheduler")
        (victim,) = [n for n in cluster.nodes if n.alive() and cluster.process_id(n) == holder]
        assert cluster.claimed_by(dataset) == holder  # the refresh under way is the lease holder's
        victim.kill()
        release.set()  # the upstream answers a node that is gone

        # The killed period runs again on a survivor, and the schedule goes on there.
        last = SLOW + 2
        wait_for(lambda: len(arrivals) >= last, 60 + 3 * EVERY_S, "the schedule did not go on after the kill")
        _data(cluster, key, SCHEDULE, {"d": dataset, "e": None})  # no more periods; a run under way finishes

        def settled() -> tuple[list[float], list[int]] | None:
            """The fetches so far and the versions' fetches, once the last fetch made its version."""
            with lock:
                times = list(arrivals)
            versions = _data(cluster, key, VERSIONS, {"d": dataset})["dataset"]["versions"]
            fetches = [v["rowCount"] for v in sorted(versions, key=lambda v: v["number"])]
            return (times, fetches) if fetches[-1] == len(times) else None

        times, fetches = wait_for(settled, 60, "the last fetch made no version", every=0.5)
        completed = [n for n in range(1, len(times) + 1) if n != SLOW]
        assert fetches == completed, f"versions hold fetches {fetches}; the upstream answered {completed} (not {SLOW})"

        # One completed fetch a period: the period a fetch ran in is the schedule's cadence at its arrival.
        periods = {n: math.floor((times[n - 1] - first_due) / EVERY_S) for n in completed if n > 1}
        before = [periods[n] for n in completed if 1 < n < SLOW]
        after = [periods[n] for n in completed if n > SLOW]
        slow_period = math.floor((times[SLOW - 1] - first_due) / EVERY_S)
        assert before == list(range(slow_period)), f"before the kill, periods {before} ran (not 0..{slow_period - 1})"
        assert after == list(range(after[0], after[0] + len(after))), f"after the kill, periods {after} ran"
        assert after[0] >= slow_period, "a fetch after the kill ran in a period before the killed one"
        assert len(set(periods.values())) == len(periods), f"a period ran twice: {periods}"
    finally:
        release.set()


EVERY_S = 5  # the schedule: long enough for a fetch to start within its period on a busy machine
SLOW = 3  # fetch 1 is the first one, by hand; 2 the schedule's first period; 3 its second, killed
FETCH_NEW = """mutation($p: JSON!) { fetchPlugin(plugin: "http_json", params: $p) {
  success error { code message } dataset { id rowCount } } }"""
SCHEDULE = """mutation($d: ID!, $e: String) { setSchedule(dataset: $d, every: $e) {
  success error { code message } dataset { id schedule } } }"""
VERSIONS = "query($d: ID!) { dataset(id: $d) { versions(limit: 100) { number rowCount } } }"


def _big_csv(rows: int) -> bytes:
    lines = ["id,city,amount,note"] + [f"{i},city{i % 97},{i * 0.25:.2f},row number {i}" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.slow  # three real server processes and a proxy
def test_a_node_killed_mid_upload_leaves_nothing_half_made_and_a_retry_lands_once(cluster: Cluster) -> None:
    """Node A (one worker) holds a plugin fetch whose upstream has not answered; an upload through
    the proxy reaches A, is staged and waits for A's worker; a second large upload is half-way
    through its body into A. A, the holder of the sweep's lease, is SIGKILLed (server and workers).
    Neither upload becomes visible; a subscriber on A sees its socket close and subscribes again
    through the proxy; retried through the proxy, each upload lands on a survivor once, under its own
    id, and the subscriber hears of both; the survivors' sweep takes what A left: its staging area
    with the staged file, its registration, its jobs."""
    alive = [n for n in cluster.nodes if n.alive()]
    assert len(alive) >= 2, "the fault tests need two live nodes"
    key = cluster.key("faults")
    live = {cluster.process_id(n) for n in alive}
    # The victim is the node that sweeps (once a live one holds that lease): another must take it over.
    sweeper = wait_for(
        lambda: cluster.lease_holder("sweep") in live and cluster.lease_holder("sweep"), 30, "no sweeper"
    )
    (victim,) = [n for n in alive if cluster.process_id(n) == sweeper]
    victim_id = sweeper
    staged_csv, streamed_csv = _big_csv(120_000), _big_csv(200_000)
    release = threading.Event()
    cluster.upstream.script("/held", lambda _: (release.wait(120), Reply(200, b'[{"a": 1}]'))[1])
    answers: dict[str, Any] = {}

    def attempt(name: str, call: Callable[[], Any]) -> threading.Thread:
        def run() -> None:
            try:
                answers[name] = call()
            except httpx.HTTPError as exc:  # the node died under it: the client sees a broken connection
                answers[name] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    with contextlib.ExitStack() as stack:
        stack.callback(release.set)
        cluster.proxy.aim(victim.index)  # a subscriber on the victim too
        watcher = stack.enter_context(Ws(cluster.url, {"apiKey": key}))
        watcher.subscribe(EVENTS, {"d": None})
        cluster.proxy.aim(victim.index)
        fetch_job = uuid.uuid4().hex
        fetch = {"p": {"url": cluster.upstream.url("/held")}, "j": fetch_job}
        threads = [attempt("fetch", lambda: _post(cluster, key, FETCH, fetch))]
        wait_for(
            lambda: cluster.upstream.count("/held") or "fetch" in answers, 60, "the plugin did not call its upstream"
        )
        assert cluster.upstream.count("/held") == 1, answers

        staged_job = uuid.uuid4().hex
        cluster.proxy.aim(victim.index)
        first = cluster.proxy.count()
        threads.append(
            attempt("staged", lambda: _upload(cluster, key, staged_csv, "big.csv", "big staged", staged_job))
        )
        area = cluster.data / "staging" / victim_id
        wait_for(
            lambda: [p for p in area.glob("*.upload") if p.stat().st_size == len(staged_csv)],
            60,
            "the upload was not staged on the node holding the fetch",
        )
        assert cluster.proxy.nodes_of(first)[0] == victim.index

        gate = threading.Event()
        cluster.proxy.aim(victim.index)
        first = cluster.proxy.count()
        threads.append(attempt("streamed", lambda: _streamed_upload(cluster, key, streamed_csv, "big streamed", gate)))
        wait_for(lambda: cluster.proxy.count() > first, 30, "the streamed upload did not connect")
        streaming = cluster.proxy.connections[first]
        assert streaming.node == victim.index
        wait_for(lambda: streaming.sent > len(streamed_csv) // 2, 60, "the streamed upload did not send half its body")
        assert cluster.job_status(staged_job) == "running"

        victim.kill()
        gate.set()
        for thread in threads:
            thread.join(60)
        for name in ("fetch", "staged", "streamed"):
            assert isinstance(answers[name], httpx.HTTPError), f"{name} answered through a killed node: {answers[name]}"
        with pytest.raises(ConnectionClosed):  # the victim's subscriber sees its socket close ...
            watcher.next_message(30)
        first = cluster.proxy.count()
        watcher = stack.enter_context(Ws(cluster.url, {"apiKey": key}))  # ... and subscribes again elsewhere
        (rewatched,) = cluster.proxy.nodes_of(first)
        assert rewatched is not None and rewatched != victim.index
        watcher.subscribe(EVENTS, {"d": None})
        wait_for(lambda: _subscribers(cluster, cluster.nodes[rewatched], key) >= 1, 30, "no subscriber")

        # Nothing half-made is visible on any survivor.
        listed, nodes = _landed(
            cluster, lambda: [_data(cluster, key, LISTED, {"s": "big"})["datasets"] for _ in range(NODES)]
        )
        assert victim.index not in nodes and listed == [[]] * NODES

        # Retried through the proxy: each lands on a survivor, once, under the id it asks for.
        (retried_staged, retried_streamed), nodes = _landed(
            cluster,
            lambda: (
                _upload(cluster, key, staged_csv, "big.csv", "big staged"),
                _upload(cluster, key, streamed_csv, "big.csv", "big streamed"),
            ),
        )
        assert victim.index not in nodes
        assert retried_staged["success"] and retried_streamed["success"], (retried_staged, retried_streamed)
        made = sorted((d["id"], d["rowCount"]) for d in _data(cluster, key, LISTED, {"s": "big"})["datasets"])
        assert made == [("big-staged", 120_000), ("big-streamed", 200_000)]
        created: set[str] = set()
        while created < {"big-staged", "big-streamed"}:  # the subscriber that moved hears of both
            event = watcher.next_data(30)["datasetEvents"]
            if event["kind"] == "CREATED":
                created.add(event["dataset"])

        # A survivor takes the sweep's lease over, and its sweep (every minute) takes what the dead node
        # left, and only that.
        survivors = {cluster.process_id(n) for n in cluster.nodes if n.alive()}

        def swept() -> bool:
            jobs = {cluster.job_status(staged_job), cluster.job_status(fetch_job)}
            return not area.exists() and cluster.registered() == survivors and jobs == {"failed"}

        wait_for(swept, SWEEP_EVERY_S + 30, "what the dead node left was not swept", every=0.2)
        for node in cluster.nodes:
            if node.alive():
                assert (cluster.data / "staging" / cluster.process_id(node)).is_dir()
        assert not list((cluster.data / "staging").rglob("*.upload"))
        rows = _data(cluster, key, '{ dataset(id: "big-streamed") { count(cache: BYPASS) { data } } }')
        assert rows["dataset"]["count"]["data"] == {"count": 200_000}


FETCH = """mutation($p: JSON!, $j: ID!) { fetchPlugin(plugin: "http_json", params: $p, jobId: $j) {
  success error { code message } dataset { id } } }"""


def _streamed_upload(cluster: Cluster, key: str, content: bytes, name: str, gate: threading.Event) -> dict[str, Any]:
    """A multipart upload whose body is sent in two halves, the second once `gate` is set: a large
    upload on a slow link, as the server sees it."""
    boundary = "b" + uuid.uuid4().hex
    operations = {"query": UPLOAD_AS_JOB, "variables": {"file": None, "name": name, "j": uuid.uuid4().hex}}

    def field(disposition: str, value: bytes, kind: str = "") -> bytes:
        head = f"--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n{kind}\r\n".encode()
        return head + value + b"\r\n"

    head = field('name="operations"', json.dumps(operations).encode()) + field(
        'name="map"', json.dumps({"0": ["variables.file"]}).encode()
    )
    head += f'--{boundary}\r\nContent-Disposition: form-data; name="0"; filename="big.csv"\r\n'.encode()
    head += b"Content-Type: text/csv\r\n\r\n"
    tail = f"\r\n--{boundary}--\r\n".encode()
    half = len(content) // 2

    def body() -> Iterator[bytes]:
        yield head
        yield content[:half]
        gate.wait(120)
        yield content[half:]
        yield tail

    headers = {
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(len(head) + len(content) + len(tail)),
        "Apollo-Require-Preflight": "true",
        "X-API-Key": key,
    }
    response = cluster.http.post(cluster.url + "/graphql", content=body(), headers=headers, timeout=120)
    payload: dict[str, Any] = response.json()["data"]["uploadDataset"]
    return payload


# ---- the proxy itself -------------------------------------------------------------------------------------------


class _Named:
    """A loopback TCP server that answers each connection with its name, then echoes what it gets."""

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.sendall(self.name)
            while data := conn.recv(65536):
                conn.sendall(data)


def test_the_proxy_takes_turns_skips_a_node_that_refuses_and_pipes_both_ways() -> None:
    named = [_Named(b"a"), _Named(b"b")]
    with RoundRobin([named[0].port, named[1].port, free_port()]) as proxy:  # nothing listens on the third

        def connect() -> bytes:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as conn:
                first = conn.recv(1)
                conn.sendall(b"x" * 100_000)
                echoed = b""
                while len(echoed) < 100_000:
                    echoed += conn.recv(65536)
                assert echoed == b"x" * 100_000
                return first

        assert [connect() for _ in range(5)] == [b"a", b"b", b"a", b"b", b"a"]
        assert proxy.nodes_of(0) == [0, 1, 0, 1, 0]
        wait_for(lambda: [c.sent for c in proxy.connections] == [100_000] * 5, 10, "the bytes sent were miscounted")
        proxy.aim(1)
        assert connect() == b"b"
    for server in named:
        server.sock.close()


# ---- the README's deployment section ------------------------------------------------------------------------


def test_the_readme_deployment_section_names_real_settings_and_their_defaults() -> None:
    """What "Several servers" says of settings holds: each variable it sets is a setting, each
    default it quotes is the setting's default, and the websocket pings it promises are uvicorn's."""
    section = _readme_section("Several servers")
    names = set(re.findall(r"DATAGRAPH_([A-Z_]+)=", section))
    assert {"METADATA_URL", "CACHE_URL", "DATA_DIR", "HOST"} <= names
    for name in names:
        assert name.lower() in Settings.model_fields, f"README: DATAGRAPH_{name} is no setting"
    quoted = re.findall(r"`([a-z_]+)`,? \(?(\d+) (s|MiB)\b", section)
    assert len(quoted) >= 4, quoted
    for name, value, _ in quoted:
        assert float(Settings.model_fields[name].default) == float(value), f"README: {name} is not {value} by default"
    assert "20 s" in section and inspect.signature(uvicorn.Config).parameters["ws_ping_interval"].default == 20
    assert KEYS_TTL_S <= 1  # "a key made or revoked once counts on all within a second"


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text("utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]
