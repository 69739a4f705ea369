"""The result cache: keyed by a hash of the operation, its normalised arguments and every dataset
version read; bounded in memory; shared through Redis when configured, and never an error when
Redis is not there."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis
from starlette.testclient import TestClient
from support import DATA, Api, fresh_redis, make_settings

from datagraph.settings import Settings
from engine.runtime import LruMemoryCache
from server.app import create_app

TIPS_ROWS = len(pd.read_csv(DATA / "tips.csv"))
META = "success data error { code } meta { cached cacheKey }"


def _answer(api: Api, query: str) -> dict[str, Any]:
    node: Any = api.data(query)
    while "meta" not in node:
        (node,) = node.values()
    return {**node, **node["meta"]}


@pytest.fixture
def tips(api: Api) -> Api:
    api.upload_ok(DATA / "tips.csv")
    return api


def test_a_repeated_result_is_answered_from_the_cache(tips: Api) -> None:
    query = '{ dataset(id: "tips") { filter(where: [{column: "tip", op: GT, value: 3}]) { count { %s } } } }' % META
    first, second = _answer(tips, query), _answer(tips, query)
    assert first["cached"] is False and second["cached"] is True
    assert first["cacheKey"] == second["cacheKey"] and len(first["cacheKey"]) == 64
    expected = int((pd.read_csv(DATA / "tips.csv")["tip"] > 3).sum())
    assert first["data"] == second["data"] == {"count": expected}


def test_aliases_field_order_argument_order_and_the_pipeline_form_share_one_entry(tips: Api) -> None:
    nested = '{ dataset(id: "tips") { filter(where: [{column: "tip", op: GT, value: 3}]) { count { %s } } } }'
    aliased = '{ t: dataset(id: "tips") { f: filter(where: [{value: 3, op: GT, column: "tip"}]) { n: count { %s } } } }'
    steps = (
        '{ dataset(id: "tips") { pipeline(steps: [{filter: [{column: "tip", op: GT, value: 3}]}]) { count { %s } } } }'
    )
    reordered_meta = "meta { cacheKey cached } data success error { code }"
    keys = []
    for i, query in enumerate([nested % META, aliased % reordered_meta, steps % META]):
        answer = _answer(tips, query)
        assert answer["cached"] is (i > 0), query
        keys.append(answer["cacheKey"])
    assert len(set(keys)) == 1
    rows_a = _answer(tips, '{ dataset(id: "tips") { rows(limit: 3, offset: 1) { %s } } }' % META)
    rows_b = _answer(tips, '{ dataset(id: "tips") { rows(offset: 1, limit: 3) { %s } } }' % META)
    assert rows_a["cacheKey"] == rows_b["cacheKey"] and rows_b["cached"] is True


def test_different_arguments_or_operations_never_share_an_entry(tips: Api) -> None:
    keys = {
        _answer(tips, '{ dataset(id: "tips") { %s { %s } } }' % (field, META))["cacheKey"]
        for field in ["count", "rows(limit: 2)", "rows(limit: 3)", 'valueCounts(column: "day")', "describe"]
    }
    assert len(keys) == 5


def test_bypass_neither_reads_nor_writes_and_refresh_recomputes_and_stores(tips: Api) -> None:
    q = '{ dataset(id: "tips") { valueCounts(column: "day"%s) { %s } } }'
    assert _answer(tips, q % (", cache: BYPASS", META))["cached"] is False
    assert _answer(tips, q % (", cache: BYPASS", META))["cached"] is False
    assert _answer(tips, q % ("", META))["cached"] is False, "BYPASS must not have stored anything"
    assert _answer(tips, q % ("", META))["cached"] is True
    assert _answer(tips, q % (", cache: REFRESH", META))["cached"] is False
    assert _answer(tips, q % ("", META))["cached"] is True


def test_problems_are_never_cached(tips: Api) -> None:
    q = '{ dataset(id: "tips") { valueCounts(column: "nope") { %s } } }' % META
    for _ in range(2):
        answer = _answer(tips, q)
        assert answer["error"]["code"] == "BAD_INPUT" and answer["cached"] is False


def test_a_new_dataset_under_the_same_id_is_never_answered_from_the_old_entry(tips: Api) -> None:
    q = '{ dataset(id: "tips") { count { %s } } }' % META
    assert _answer(tips, q)["data"] == {"count": TIPS_ROWS}
    assert _answer(tips, q)["cached"] is True
    deleted = tips.data('mutation { deleteDataset(id: "tips") { success } }')
    assert deleted["deleteDataset"]["success"] is True
    assert tips.upload_ok(b"a,b\n1,2\n3,4\n", "tips.csv") == "tips"
    fresh = _answer(tips, q)
    assert fresh["cached"] is False and fresh["data"] == {"count": 2}


@pytest.mark.slow  # two server processes
def test_a_dataset_replaced_by_another_server_process_is_seen_at_once(tmp_path: Path) -> None:
    # Two servers on one data directory (one SQLite metadata file). The first keeps the dataset's
    # record in memory; the second replaces the dataset; the first must answer from the new one.
    settings = make_settings(tmp_path)
    q = '{ dataset(id: "tips") { count { %s } } }' % META
    with _app(settings) as first, _app(settings) as second:
        a, b = Api(first, settings), Api(second, settings)
        a.upload_ok(DATA / "tips.csv")
        assert _answer(a, q)["data"] == {"count": TIPS_ROWS}
        assert _answer(a, q)["cached"] is True
        assert b.data('mutation { deleteDataset(id: "tips") { success } }')["deleteDataset"]["success"] is True
        assert a.data(q)["dataset"] is None
        assert b.upload_ok(b"a,b\n1,2\n3,4\n", "tips.csv") == "tips"
        fresh = _answer(a, q)
        assert fresh["cached"] is False and fresh["data"] == {"count": 2}


def test_a_repeated_export_reuses_its_file_while_the_link_is_valid(tips: Api) -> None:
    q = '{ dataset(id: "tips") { export(format: CSV) { %s } } }' % META
    first, second = _answer(tips, q), _answer(tips, q)
    assert second["cached"] is True and second["data"]["url"] == first["data"]["url"]
    assert tips.client.get(second["data"]["url"]).status_code == 200
    tips.data('mutation { deleteDataset(id: "tips") { success } }')
    tips.upload_ok(DATA / "tips.csv")
    assert _answer(tips, q)["cached"] is False


def test_the_memory_cache_is_bounded_by_bytes_and_drops_the_least_recently_used() -> None:
    async def scenario() -> None:
        cache = LruMemoryCache(1000)
        for key in "abcd":
            await cache.set(key, b"x" * 299)
        assert len(cache) == 3 and cache.used <= 1000
        assert await cache.get("a") is None  # the oldest went first
        await cache.get("b")  # b is now the most recently used
        await cache.set("e", b"y" * 299)
        assert await cache.get("b") is not None and await cache.get("c") is None
        assert await cache.set("huge", b"z" * 2000) is False and cache.used <= 1000

    asyncio.run(scenario())


def test_the_cache_budget_setting_bounds_the_servers_cache(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, cache_memory_mb=0, answer_cache_mb=0)  # both caches off
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        api.upload_ok(DATA / "tips.csv")
        q = '{ dataset(id: "tips") { count { %s } } }' % META
        assert _answer(api, q)["cached"] is False and _answer(api, q)["cached"] is False


# --- Redis -------------------------------------------------------------------------------------

REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    with fresh_redis(REDIS_URL) as client:
        yield client


def _app(settings: Settings) -> TestClient:
    return TestClient(create_app(settings))


def _on_a_new_server(settings: Settings, query: str, *, upload: bool = False) -> tuple[dict[str, Any], str]:
    """Start a server process's app (empty memory cache), optionally upload tips, answer `query`;
    return the answer and the cache backend /readyz names."""
    with _app(settings) as client:
        api = Api(client, settings)
        if upload:
            api.upload_ok(DATA / "tips.csv")
        backend: str = client.get("/readyz").json()["cache"]["backend"]
        return _answer(api, query), backend


def test_redis_shares_results_between_servers(tmp_path: Path, redis_db: redis.Redis) -> None:
    settings = make_settings(tmp_path, cache_url=REDIS_URL)
    q = '{ dataset(id: "tips") { describe(columns: ["tip"]) { %s } } }' % META
    first, backend = _on_a_new_server(settings, q, upload=True)
    assert first["cached"] is False and backend == "redis+memory"
    assert redis_db.exists(f"datagraph:result:{first['cacheKey']}")
    again, _ = _on_a_new_server(settings, q)  # same Redis and data directory
    assert again["cached"] is True and again["data"] == first["data"]


def test_a_garbled_redis_entry_is_a_miss_not_an_error(tmp_path: Path, redis_db: redis.Redis) -> None:
    settings = make_settings(tmp_path, cache_url=REDIS_URL)
    q = '{ dataset(id: "tips") { count { %s } } }' % META
    key = _on_a_new_server(settings, q, upload=True)[0]["cacheKey"]
    for garbage in [b"\x00\xffnot ours", b'dg1:{"d": [1, 2', b'dg1:{"d": 1}']:
        redis_db.set(f"datagraph:result:{key}", garbage)
        answer, _ = _on_a_new_server(settings, q)
        assert answer["success"] is True and answer["cached"] is False and answer["data"] == {"count": TIPS_ROWS}


@contextlib.contextmanager
def _port_for(redis_state: str) -> Iterator[int]:
    """A loopback port where nothing listens ("refused"), or one that accepts connections and never
    answers ("hung")."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        if redis_state == "refused":
            port = server.getsockname()[1]
            server.close()
            yield port
            return
        server.listen(16)
        server.settimeout(0.1)
        stop = threading.Event()
        held: list[socket.socket] = []

        def accept() -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    held.append(server.accept()[0])

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield server.getsockname()[1]
        finally:
            stop.set()
            thread.join()
            for conn in held:
                conn.close()


@pytest.mark.parametrize("redis_state", ["refused", "hung"])
def test_redis_down_or_hung_degrades_to_memory_without_an_error(tmp_path: Path, redis_state: str) -> None:
    q = '{ dataset(id: "tips") { count { %s } } }' % META
    with _port_for(redis_state) as port:
        settings = make_settings(tmp_path, cache_url=f"redis://127.0.0.1:{port}/0", cache_timeout_s=0.2)
        with _app(settings) as client:
            api = Api(client, settings)
            api.upload_ok(DATA / "tips.csv")
            first, second = _answer(api, q), _answer(api, q)
            assert first["success"] is True and first["data"] == {"count": TIPS_ROWS} and first["cached"] is False
            assert second["cached"] is True  # from memory


def test_the_same_work_asked_twice_at_once_is_computed_once(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with _app(settings) as client:
        api = Api(client, settings)
        api.upload_ok(DATA / "diamonds.csv")
        q = (
            '{ dataset(id: "diamonds") { groupBy(by: ["cut", "color"], aggregations: [{column: "price", fn: MEDIAN}]) { describe { %s } } } }'
            % META
        )
        answers, jobs = _at_once(client, api, q)
    assert len(answers) == 4 and len({json.dumps(a["data"]) for a in answers}) == 1
    assert jobs == 1, f"{jobs} computations for one piece of work"
    assert sorted(a["cached"] for a in answers) == [False, True, True, True]


def test_the_same_failing_work_asked_at_once_fails_once_for_all(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with _app(settings) as client:
        api = Api(client, settings)
        api.upload_ok(DATA / "titanic.csv")
        q = (
            '{ dataset(id: "titanic") { clean(steps: [{cast: {columns: ["age"], to: INT}}]) { describe { %s } } } }'
            % META
        )
        answers, jobs = _at_once(client, api, q)
    assert [a["error"]["code"] for a in answers] == ["BAD_INPUT"] * 4
    assert jobs == 1, f"a problem that is not a deadline was computed {jobs} times"
    assert [a["cached"] for a in answers] == [False] * 4  # a problem is never called cached


def _at_once(client: TestClient, api: Api, query: str) -> tuple[list[dict[str, Any]], int]:
    """Four requests for `query` released together; their answers and the worker jobs they cost."""
    before = client.get("/readyz").json()["workers"]["jobs"]
    answers: list[dict[str, Any]] = []
    start = threading.Barrier(4)

    def ask() -> None:
        start.wait()
        answers.append(_answer(api, query))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers, client.get("/readyz").json()["workers"]["jobs"] - before
