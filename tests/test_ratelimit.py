"""Rate limits through the real app: per key or per address, expensive work costing more than a
cached read, RATE_LIMITED with Retry-After, budgets shared through Redis, and a Redis outage.

Budgets here are per hour, not per minute: the sliding window weighs the last window's count down
as the new one starts, so a test that straddled a minute's edge could be let through once more."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from promtext import sample
from starlette.testclient import TestClient
from support import (
    DATA,
    Api,
    add_key,
    free_port,
    make_settings,
    require_service,
    running_server,
    upload_request,
)

from server.app import create_app

DESCRIBE = '{ dataset(id: "%s") { describe(columns: ["fare"]%s) { success } } }'


@pytest.fixture
def titanic_bytes() -> bytes:
    return (DATA / "titanic.csv").read_bytes()


def _client(tmp_path: Path, **overrides: Any) -> TestClient:
    return TestClient(create_app(make_settings(tmp_path, **overrides)))


def _until_refused(client: TestClient, queries: Iterator[str], headers: dict[str, str] | None = None) -> int:
    """Send queries until one is refused; how many got through."""
    for sent, query in enumerate(queries):
        response = client.post("/graphql", json={"query": query}, headers=headers)
        if response.status_code == 429:
            return sent
        assert response.status_code == 200 and "errors" not in response.json(), response.text
    raise AssertionError("never refused")


def test_a_spent_budget_answers_rate_limited_with_retry_after(tmp_path: Path) -> None:
    with _client(tmp_path, rate_limit="5/hour") as client:
        statuses = [client.post("/graphql", json={"query": "{ datasets { id } }"}).status_code for _ in range(6)]
        assert statuses == [200] * 5 + [429]
        refused = client.post("/graphql", json={"query": "{ datasets { id } }"})
        body = refused.json()
        assert refused.status_code == 429 and body["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
        assert "5 per hour" in body["errors"][0]["message"] and "rate_limit" in body["errors"][0]["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 3600
        assert sample(client.get("/metrics").text, "datagraph_rate_limited_total") == 2


def test_uncached_analysis_costs_more_than_a_cached_read(tmp_path: Path, titanic_bytes: bytes) -> None:
    """The same budget buys many cached reads but few fresh analyses."""
    counts = {}
    for kind in ("cached", "uncached"):
        with _client(tmp_path / kind, rate_limit="120/hour") as client:
            dataset = Api(client, make_settings(tmp_path)).upload_ok(titanic_bytes, "titanic.csv")
            if kind == "cached":
                queries = (DESCRIBE % (dataset, "") for _ in range(1000))
            else:
                queries = (DESCRIBE % (dataset, ", cache: BYPASS") for _ in range(1000))
            counts[kind] = _until_refused(client, queries)
    # An upload costs 21 and each job 5: what is left buys ~90 cached reads or ~15 fresh ones.
    assert counts["cached"] > 4 * counts["uncached"] > 0, counts


def test_an_upload_costs_more_than_a_query(tmp_path: Path, titanic_bytes: bytes) -> None:
    with _client(tmp_path, rate_limit="40/hour") as client:
        first = client.post("/graphql", **upload_request(titanic_bytes, "a.csv"))
        assert first.status_code == 200 and first.json()["data"]["uploadDataset"]["success"]
        second = client.post("/graphql", **upload_request(titanic_bytes, "b.csv"))
        assert second.status_code == 429  # 21 + its parsing jobs left less than another upload's 21
        assert client.post("/graphql", json={"query": "{ datasets { id } }"}).status_code == 200


def test_each_key_has_its_own_budget(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    keys = [add_key(data_dir, name) for name in ("greedy", "modest")]
    with _client(tmp_path, api_keys="on", rate_limit="10/hour") as client:
        greedy, modest = ({"Authorization": f"Bearer {key}"} for key in keys)
        assert _until_refused(client, ("{ datasets { id } }" for _ in range(100)), greedy) == 10
        assert client.post("/graphql", json={"query": "{ datasets { id } }"}, headers=modest).status_code == 200
        # A wrong key is refused as unauthenticated, not counted against anyone.
        wrong = client.post("/graphql", json={"query": "{ datasets { id } }"}, headers={"X-API-Key": "dg_nope"})
        assert wrong.status_code == 401


@pytest.mark.slow  # two server processes
def test_budgets_in_redis_are_shared_by_server_processes(tmp_path: Path) -> None:
    require_service(6379, "Redis")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    key = add_key(data_dir, "shared")  # a new key: its budget in Redis starts empty
    headers = {"X-API-Key": key}
    limit_in = "redis://127.0.0.1:6379/10"  # this module's own Redis database
    shared = {"api_keys": "on", "rate_limit": "6/hour", "rate_limit_url": limit_in}
    with _client(tmp_path, **shared) as one, _client(tmp_path, **shared) as two:
        for client in (one, two, one, two, one, two):
            assert client.post("/graphql", json={"query": "{ datasets { id } }"}, headers=headers).status_code == 200
        assert two.post("/graphql", json={"query": "{ datasets { id } }"}, headers=headers).status_code == 429
        assert one.get("/readyz", headers=headers).json()["rateLimit"] == {"limit": "6 per hour", "backend": "redis"}


def test_a_redis_outage_keeps_limits_in_memory_without_errors(tmp_path: Path) -> None:
    gone = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with _client(tmp_path, rate_limit="4/hour", rate_limit_url=gone) as client:
        statuses = [client.post("/graphql", json={"query": "{ datasets { id } }"}).status_code for _ in range(5)]
        assert statuses == [200] * 4 + [429]


def test_the_budget_applies_over_http_on_a_real_server(tmp_path: Path) -> None:
    with running_server(tmp_path, "--rate-limit", "3/hour") as base:
        statuses = [httpx.post(base + "/graphql", json={"query": "{ datasets { id } }"}).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        assert httpx.get(base + "/healthz").status_code == 200
