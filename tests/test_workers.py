"""Deadlines that really stop work: analysis runs in worker processes that are killed at their
deadline, when they exceed their memory cap, or when the client goes away; the pool heals."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from starlette.testclient import TestClient
from support import DATA, Api, make_settings, running_server, upload_over_http, wait_for

from datagraph.errors import Timeout
from datagraph.settings import Settings
from engine.runtime import Executor, PoolStats
from server.app import create_app

# Every diamond joined with every diamond of the same cut (~830 million rows), then sorted: a
# query that runs for many seconds of CPU in Polars and that Polars' own cancel() cannot stop.
HEAVY = """{ dataset(id: "diamonds") { join(right: "diamonds", on: ["cut"]) {
  sort(by: [{column: "price_right"}]) { rows(limit: 5%s) { success data error { code message } meta { cached } } } } } }"""
DIAMONDS_ROWS = len(pd.read_csv(DATA / "diamonds.csv"))
LIGHT = '{ dataset(id: "diamonds") { count(cache: BYPASS) { success data } } }'
POOL = 2  # these tests are about the pool: one worker is killed while the other carries on


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, workers=POOL, worker_idle_s=0)


def _children() -> list[int]:
    """Child processes of this test process (the app's workers run as our children)."""
    pids: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        try:
            text = (task / "children").read_text().split()
        except FileNotFoundError:  # a thread that ended since the listing
            continue
        pids += [int(p) for p in text]
    return pids


def _cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total


def _pool(api: Api) -> dict[str, Any]:
    """The pool's state once a replacement for any killed worker is up (within 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        workers: dict[str, Any] = api.client.get("/readyz").json()["workers"]
        if workers["workers"] == POOL or time.monotonic() > deadline:
            return workers
        time.sleep(0.05)


@pytest.fixture
def diamonds(api: Api) -> Api:
    api.upload_ok(DATA / "diamonds.csv")
    return api


def test_a_query_past_its_deadline_is_killed_and_the_next_one_works(diamonds: Api) -> None:
    api = diamonds
    workers = _children()  # the pool as it was; the busy one among them must stop computing
    started = time.monotonic()
    answer = api.data(HEAVY % ", timeoutMs: 2000")["dataset"]["join"]["sort"]["rows"]
    elapsed = time.monotonic() - started
    assert answer["success"] is False
    assert answer["error"]["code"] == "TIMEOUT"
    assert "2 s" in answer["error"]["message"] and "timeoutMs" in answer["error"]["message"]
    assert elapsed < 3.0, f"TIMEOUT came after {elapsed:.2f} s"
    # The CPU is free again: the workers that were there burn (almost) nothing over the next half
    # second. (The replacement is left out: its start-up imports are not the abandoned query.)
    time.sleep(0.3)
    before = _cpu_ticks(workers)
    time.sleep(0.5)
    assert _cpu_ticks(workers) - before < 10, "a worker is still computing the abandoned query"
    pool = _pool(api)
    assert pool["killed"] == 1 and pool["workers"] == 2 and pool["busy"] == 0
    # The next query works, and the timed-out one left nothing in the cache.
    assert api.data(LIGHT)["dataset"]["count"] == {"success": True, "data": {"count": DIAMONDS_ROWS}}
    again = api.data(HEAVY % ", timeoutMs: 300")["dataset"]["join"]["sort"]["rows"]
    assert again["error"]["code"] == "TIMEOUT" and again["meta"]["cached"] is False


def test_the_server_deadline_applies_without_timeout_ms_and_caps_it(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, timeout_s=1, workers=POOL, worker_idle_s=0)
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        api.upload_ok(DATA / "diamonds.csv")
        started = time.monotonic()
        answer = api.data(HEAVY % ", timeoutMs: 600000")["dataset"]["join"]["sort"]["rows"]
        assert answer["error"]["code"] == "TIMEOUT"
        assert "timeout_s" in answer["error"]["message"]
        assert time.monotonic() - started < 2.5
        assert api.data(LIGHT)["dataset"]["count"]["success"] is True


@pytest.mark.parametrize("ms", [0, 1, 249])
def test_a_timeout_ms_below_the_floor_is_refused_before_any_job_runs(diamonds: Api, ms: int) -> None:
    """`timeoutMs: 1` would only stop a worker, which then has to be started again (issue 16, item 3)."""
    before = _pool(diamonds)
    answer = diamonds.data(HEAVY % f", timeoutMs: {ms}")["dataset"]["join"]["sort"]["rows"]
    assert answer["error"]["code"] == "BAD_INPUT", answer
    assert "at least 250 milliseconds (setting min_timeout_ms)" in answer["error"]["message"]
    after = _pool(diamonds)
    assert (after["jobs"], after["killed"]) == (before["jobs"], before["killed"])


def test_the_sql_field_has_the_same_floor_for_timeout_ms(tmp_path: Path) -> None:
    shop = Path(__file__).parent.parent / "examples" / "shop.sqlite"
    (tmp_path / "sources.yaml").write_text(f"sources:\n  shop: {{kind: sqlite, url: 'sqlite:///{shop}'}}\n")
    settings = make_settings(tmp_path, sources=str(tmp_path / "sources.yaml"), worker_idle_s=0)
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        query = (
            '{ sql(source: "shop", query: "SELECT 1 AS one", timeoutMs: %d) { success data error { code message } } }'
        )
        refused = api.data(query % 10)["sql"]
        assert refused["error"]["code"] == "BAD_INPUT" and "min_timeout_ms" in refused["error"]["message"]
        assert api.data(query % 30000)["sql"] == {"success": True, "data": [{"one": 1}], "error": None}


def test_a_storm_of_killed_workers_is_replaced_at_a_bounded_pace() -> None:
    """Starting a worker costs ~0.5 s of CPU: past a burst of max(4, 2 * workers) replacements, one
    per `respawn_every_s`, so a kill storm cannot spend the machine on restarts."""

    async def storm() -> tuple[PoolStats, list[str]]:
        pool = Executor(1, respawn_every_s=3600)
        await pool.start()
        codes = []
        try:
            for _ in range(6):
                try:
                    await pool.run(time.sleep, 30, timeout=0.3)
                except Timeout as exc:
                    codes.append(exc.code)
            await asyncio.sleep(0.5)
            return pool.stats(), codes
        finally:
            await asyncio.wait_for(pool.close(), 30)  # a replacement waiting its turn does not hold up closing

    stats, codes = asyncio.run(storm())
    assert codes == ["TIMEOUT"] * 6
    # The first four kills (the burst) are replaced at once; the fifth's replacement waits its turn,
    # so the sixth job times out in the queue without a worker to kill.
    assert (stats.killed, stats.workers) == (5, 0), stats


def test_a_memory_bomb_kills_a_worker_not_the_server(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, worker_memory_mb=2048, workers=POOL, worker_idle_s=0)
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        api.upload_ok(DATA / "diamonds.csv")
        rss_before = _rss_mib(os.getpid())
        # Materialising the whole many-to-many join needs tens of GiB.
        query = '{ dataset(id: "diamonds") { join(right: "diamonds", on: ["cut"]) { export(format: PARQUET) { success error { code message } } } } }'
        answer = api.data(query)["dataset"]["join"]["export"]
        assert answer["success"] is False
        assert answer["error"]["code"] == "TOO_LARGE"
        assert "worker_memory_mb" in answer["error"]["message"]
        assert _rss_mib(os.getpid()) - rss_before < 200, "the server process itself grew"
        assert api.data(LIGHT)["dataset"]["count"]["success"] is True
        assert _pool(api)["workers"] == 2
        assert not list((settings.data_dir / "exports").iterdir()), "a half-written export was left behind"


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow  # kill/restart fault
def test_a_worker_that_dies_mid_query_fails_the_query_clearly_and_is_replaced(diamonds: Api) -> None:
    api = diamonds
    before = set(_children())
    answers: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: answers.append(api.data(HEAVY % ", timeoutMs: 20000")))
    thread.start()
    deadline = time.monotonic() + 10
    busy: list[int] = []
    while not busy and time.monotonic() < deadline:  # the worker burning CPU now (not the one that parsed)
        ticks = {pid: _cpu_ticks([pid]) for pid in before}
        time.sleep(0.3)
        busy = [pid for pid in before if _cpu_ticks([pid]) - ticks[pid] > 10]
    assert len(busy) == 1, f"expected one busy worker, found {busy}"
    os.kill(busy[0], signal.SIGKILL)  # as the kernel's OOM killer would
    thread.join(30)
    assert answers, "the query did not answer after its worker died"
    rows = answers[0]["dataset"]["join"]["sort"]["rows"]
    assert rows["success"] is False
    assert rows["error"]["code"] == "INTERNAL"
    assert "error id" in rows["error"]["message"] and "Traceback" not in rows["error"]["message"]
    assert api.data(LIGHT)["dataset"]["count"]["success"] is True
    pool = _pool(api)
    assert pool["crashed"] == 1 and pool["workers"] == 2


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("live")
    with running_server(work, workers=POOL) as base:
        upload_over_http(base, DATA / "diamonds.csv")
        yield base


def test_a_client_that_disconnects_cancels_its_job(live: str) -> None:
    ready = httpx.get(live + "/readyz").json()["workers"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(live + "/graphql", json={"query": HEAVY % ""}, timeout=1.0)
    deadline = time.monotonic() + 10  # it runs on for finish_grace_s (2 s) first, then is stopped
    workers = ready
    while time.monotonic() < deadline:
        workers = httpx.get(live + "/readyz").json()["workers"]
        if workers["killed"] > ready["killed"] and workers["busy"] == 0 and workers["workers"] == 2:
            break
        time.sleep(0.1)
    assert workers["killed"] == ready["killed"] + 1, workers
    assert workers["busy"] == 0 and workers["workers"] == 2
    answer = httpx.post(live + "/graphql", json={"query": LIGHT}, timeout=30).json()
    assert answer["data"]["dataset"]["count"]["data"] == {"count": DIAMONDS_ROWS}


# Every diamond joined with every diamond of the same carat (~50 million rows), sorted: about a
# second of work, short enough to finish within a generous grace after its client has left.
MEDIUM = """{ dataset(id: "diamonds") { join(right: "diamonds", on: ["carat"]) {
  sort(by: [{column: "price_right"}]) { rows(limit: 3) { success data meta { cached } } } } } }"""


def test_a_short_job_whose_client_left_finishes_into_the_cache(tmp_path: Path) -> None:
    with running_server(tmp_path, "--finish-grace-s", "60", workers=1) as base:
        upload_over_http(base, DATA / "diamonds.csv")
        ready = httpx.get(base + "/readyz").json()["workers"]
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(base + "/graphql", json={"query": MEDIUM}, timeout=0.2)
        deadline = time.monotonic() + 60
        while httpx.get(base + "/readyz").json()["workers"]["busy"]:
            assert time.monotonic() < deadline, "the abandoned job never finished"
            time.sleep(0.1)
        after = httpx.get(base + "/readyz").json()["workers"]
        assert after["killed"] == ready["killed"] and after["jobs"] == ready["jobs"] + 1, after
        again = httpx.post(base + "/graphql", json={"query": MEDIUM}, timeout=60).json()
        rows = again["data"]["dataset"]["join"]["sort"]["rows"]
        assert rows["success"] is True and rows["meta"]["cached"] is True and len(rows["data"]) == 3


def test_stopped_jobs_are_charged_to_the_rate_budget(tmp_path: Path) -> None:
    """A job stopped at its deadline costs 50 on top of the request (1) and the job (5)."""
    settings = make_settings(tmp_path, workers=POOL, rate_limit="120/hour", worker_idle_s=0)
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        api.upload_ok(DATA / "diamonds.csv")  # 21 of the budget
        for _ in range(2):  # 56 each
            rows = api.data(HEAVY % ", timeoutMs: 250")["dataset"]["join"]["sort"]["rows"]
            assert rows["error"]["code"] == "TIMEOUT"
        refused = client.post("/graphql", json={"query": LIGHT})
        assert refused.status_code == 429 and refused.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"


def test_workers_start_with_the_first_job_and_stop_when_idle(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, workers=POOL, worker_idle_s=0.5)
    others = set(_children())  # processes an earlier test left to be reaped are not this app's
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        assert _readyz(api)["workers"] == 0 and not set(_children()) - others, "a worker started before any job"
        assert client.get("/readyz").status_code == 200  # a pool with no worker yet is ready: it starts them
        api.upload_ok(DATA / "tips.csv")
        assert _readyz(api)["workers"] == 1  # one job at a time needs one worker
        expected = len(pd.read_csv(DATA / "tips.csv"))
        for _ in range(2):  # idle: stopped; the next job starts one again and answers right
            wait_for(
                lambda: _readyz(api)["workers"] == 0 and not set(_children()) - others,
                30,
                "the idle workers never stopped",
            )
            assert client.get("/readyz").status_code == 200
            count = api.data('{ dataset(id: "tips") { count(cache: BYPASS) { success data } } }')["dataset"]["count"]
            assert count == {"success": True, "data": {"count": expected}}
            assert _readyz(api)["workers"] == 1


def test_the_workers_that_inspected_plugins_at_start_up_do_not_stay(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for name in ("one", "two"):  # each inspected in a worker at start-up, side by side
        (plugins / f"{name}.py").write_text("")
    settings = make_settings(tmp_path, workers=POOL, worker_idle_s=3600, plugins=str(plugins))
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        assert _readyz(api)["jobs"] == 2 and _readyz(api)["workers"] == 0
        assert client.get("/readyz").status_code == 200


def test_an_on_demand_pool_kills_at_the_deadline_and_carries_on() -> None:
    async def jobs() -> tuple[list[str], int, PoolStats, PoolStats]:
        pool = Executor(1, idle_s=0.5)
        await pool.start()
        try:
            assert pool.stats().workers == 0
            codes = []
            for _ in range(2):
                try:
                    await pool.run(time.sleep, 30, timeout=0.5)
                except Timeout as exc:
                    codes.append(exc.code)
            pid = await pool.run(os.getpid, deadline_s=120)
            busy = pool.stats()
            while pool.stats().workers:  # idle: stopped, not replaced
                await asyncio.sleep(0.05)
            return codes, pid, busy, pool.stats()
        finally:
            await asyncio.wait_for(pool.close(), 30)

    codes, pid, busy, idle = asyncio.run(jobs())
    assert codes == ["TIMEOUT"] * 2 and pid not in (0, os.getpid())
    assert (busy.killed, busy.workers, idle.workers, idle.jobs) == (2, 1, 0, 3)


def _readyz(api: Api) -> dict[str, Any]:
    workers: dict[str, Any] = api.client.get("/readyz").json()["workers"]
    return workers


def test_an_upload_starts_a_worker_as_it_arrives_and_a_refused_one_leaves_it_to_the_idle_sweep(tmp_path: Path) -> None:
    """The worker an upload needs starts when the request's head arrives, not after its file has: a
    multipart request refused before any job still started one, and the idle sweep stops it again."""
    settings = make_settings(tmp_path, workers=POOL, worker_idle_s=0.5)
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        assert _readyz(api)["workers"] == 0
        broken = {"operations": "{}", "map": '{"0": ["nowhere.at.all"]}'}
        preflight = {"Apollo-Require-Preflight": "true"}
        refused = client.post("/graphql", data=broken, files={"0": ("a.csv", b"a\n1\n", "text/csv")}, headers=preflight)
        assert refused.status_code == 400 and refused.json()["errors"][0]["extensions"]["code"] == "BAD_INPUT"
        wait_for(lambda: _readyz(api)["workers"] == 1, 30, "no worker warmed")
        assert api.client.app.state.resources.executor.stats().jobs == 0  # type: ignore[attr-defined]
        wait_for(lambda: _readyz(api)["workers"] == 0, 30, "the warmed worker never stopped")
        for _ in range(3):  # at most one is warmed: never more than the pool, never one per request
            client.post("/graphql", data=broken, files={"0": ("a.csv", b"a\n1\n", "text/csv")}, headers=preflight)
        wait_for(lambda: _readyz(api)["workers"] == 1, 30, "no worker warmed")
        assert max(_readyz(api)["workers"] for _ in range(5)) == 1
