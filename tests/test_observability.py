"""What an operator sees: /metrics (one process and several), request ids, JSON logs whose error ids
match what clients are told, and /readyz."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from promtext import sample
from starlette.testclient import TestClient
from support import DATA, Api, free_port, make_settings, require_service, running_server, server_pid, upload_request

from server.app import create_app

NAMED = 'query Fares { dataset(id: "%s") { describe(columns: ["fare"]) { success meta { cached } } } }'
# Every diamond joined with every diamond of the same cut, sorted: many seconds in a worker.
HEAVY = """{ dataset(id: "%s") { join(right: "%s", on: ["cut"]) {
  sort(by: [{column: "price_right"}]) { rows(limit: 5) { success error { code message } } } } } }"""


def test_metrics_count_requests_operations_cache_uploads_and_workers(api: Api) -> None:
    titanic = (DATA / "titanic.csv").read_bytes()
    dataset = api.upload_ok(titanic, "titanic.csv")
    before = api.client.get("/metrics").text
    first = api.data(NAMED % dataset)["dataset"]["describe"]
    again = api.data(NAMED % dataset)["dataset"]["describe"]
    assert (first["meta"]["cached"], again["meta"]["cached"]) == (False, True)
    response = api.client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert sample(text, "datagraph_http_requests_total", method="POST", route="/graphql", status="200") == 3
    assert sample(text, "datagraph_http_requests_total", method="GET", route="/metrics", status="200") == 1
    assert sample(text, "datagraph_http_request_duration_seconds_count", route="/graphql") == 3
    assert sample(text, "datagraph_graphql_operations_total", type="query", name="Fares") == 2
    assert sample(text, "datagraph_graphql_operations_total", type="mutation", name="(anonymous)") == 1
    for result in ("hit", "miss"):  # the describe missed, then hit
        grew = sample(text, "datagraph_cache_requests_total", result=result)
        assert grew - sample(before, "datagraph_cache_requests_total", result=result) == 1
    assert sample(text, "datagraph_upload_bytes_total") == len(titanic)
    assert sample(text, "datagraph_worker_processes") == api.settings.workers
    assert sample(text, "datagraph_workers_busy") == 0 and sample(text, "datagraph_jobs_queued") == 0
    assert sample(text, "datagraph_worker_jobs_total") >= 2  # the upload's parsing and the describe, at least


def test_a_deadline_kill_is_counted(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, timeout_s=1))) as client:
        api = Api(client, client.app.state.resources.settings)  # type: ignore[attr-defined]
        diamonds = api.upload_ok(DATA / "diamonds.csv")
        answer = api.data(HEAVY % (diamonds, diamonds))["dataset"]["join"]["sort"]["rows"]
        assert answer["error"]["code"] == "TIMEOUT"
        text = client.get("/metrics").text
        assert sample(text, "datagraph_worker_kills_total", reason="deadline") == 1
        assert sample(text, "datagraph_worker_kills_total", reason="crashed") == 0


def test_a_held_event_loop_shows_in_its_lag_metric_and_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as client:

        def lag() -> tuple[float, float]:  # samples so far, and those a quarter of a second late or more
            text = client.get("/metrics").text
            count = sample(text, "datagraph_event_loop_lag_seconds_count")
            return count, count - sample(text, "datagraph_event_loop_lag_seconds_bucket", le="0.25")

        def samples_past(count: float) -> tuple[float, float]:
            for _ in range(200):
                now = lag()
                if now[0] > count:
                    return now
                time.sleep(0.02)
            raise AssertionError("the event loop's lag is no longer sampled")

        count, late_before = samples_past(0)
        # Work that holds the loop, as a blocking call in an async resolver would: run on the loop's thread.
        assert client.portal is not None
        client.portal.call(time.sleep, 1.1)
        _, late = samples_past(count + 1)
        assert late > late_before
    assert any("event loop was held for 1." in r.getMessage() for r in caplog.records), caplog.records


def test_every_request_gets_an_id_and_a_plain_client_id_is_kept(api: Api) -> None:
    mine = api.client.get("/healthz", headers={"X-Request-Id": "client-chosen-0001"})
    assert mine.headers["x-request-id"] == "client-chosen-0001"
    hostile = api.client.get("/healthz", headers={"X-Request-Id": "bad id\twith spaces"})
    fresh = api.client.get("/healthz")
    assert len({hostile.headers["x-request-id"], fresh.headers["x-request-id"], "bad id\twith spaces"}) == 3
    refused = api.client.post("/graphql", content=b"{not json", headers={"content-type": "application/json"})
    assert refused.status_code == 400 and refused.headers["x-request-id"]


def _busy_worker(pid: int) -> psutil.Process:
    """The server's worker process that is using the CPU now."""
    for _ in range(100):
        for child in psutil.Process(pid).children():
            if child.cpu_percent(interval=0.05) > 50:
                return child
    raise AssertionError("no worker got busy")


@pytest.mark.slow  # kill/restart fault
def test_json_logs_carry_the_request_id_and_the_error_id_the_client_saw(tmp_path: Path) -> None:
    with running_server(tmp_path, "--log-format", "json", workers=1) as base:
        diamonds = httpx.post(
            base + "/graphql", **upload_request((DATA / "diamonds.csv").read_bytes(), "diamonds.csv"), timeout=60
        ).json()["data"]["uploadDataset"]["dataset"]["id"]
        answers: list[httpx.Response] = []
        query = {"query": HEAVY % (diamonds, diamonds)}
        asking = threading.Thread(
            target=lambda: answers.append(
                httpx.post(base + "/graphql", json=query, headers={"X-Request-Id": "the-heavy-one"}, timeout=60)
            )
        )
        asking.start()
        os.kill(_busy_worker(server_pid(base)).pid, signal.SIGKILL)
        asking.join(60)
        problem = answers[0].json()["data"]["dataset"]["join"]["sort"]["rows"]["error"]
        assert problem["code"] == "INTERNAL" and "error id" in problem["message"], problem
        error_id = problem["message"].split("error id ")[1].split(")")[0]
    lines = [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    logged = [line for line in lines if line.get("error_id") == error_id]
    assert len(logged) == 1, lines[-10:]
    assert logged[0]["request_id"] == "the-heavy-one" and logged[0]["level"] == "error"
    assert "Traceback" in logged[0]["traceback"] and "WorkerCrashed" in logged[0]["traceback"]
    access = [
        line for line in lines if line["logger"] == "datagraph.access" and line.get("request_id") == "the-heavy-one"
    ]
    assert len(access) == 1 and access[0]["status"] == 200 and access[0]["duration_ms"] > 0


@pytest.mark.slow  # two server processes
def test_metrics_of_several_server_processes_add_up(tmp_path: Path) -> None:
    shared = tmp_path / "metrics"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    options = ("--metrics-dir", str(shared))
    with (
        running_server(tmp_path / "a", *options, workers=2) as a,
        running_server(tmp_path / "b", *options, workers=2) as b,
    ):
        for base, times in ((a, 3), (b, 2)):
            for _ in range(times):
                assert httpx.get(base + "/readyz").status_code == 200
        for base in (a, b):
            text = httpx.get(base + "/metrics").text
            assert sample(text, "datagraph_http_requests_total", route="/readyz", status="200") == 5
            assert sample(text, "datagraph_worker_processes") == 4  # two workers in each process
    assert list(shared.glob("*.db")), "the processes wrote no shared metric files"


def test_readyz_reports_metadata_cache_workers_and_every_source(tmp_path: Path) -> None:
    require_service(5432, "PostgreSQL")
    closed = free_port()  # nothing listens there
    (tmp_path / "sources.yaml").write_text(
        "sources:\n"
        "  pg:\n    kind: postgresql\n    url: postgresql://postgres@127.0.0.1:5432/test\n"
        f"  gone:\n    kind: postgresql\n    url: postgresql://postgres@127.0.0.1:{closed}/test\n"
    )
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "broken.py").write_text("raise RuntimeError('at import')\n")
    settings = make_settings(
        tmp_path,
        sources=str(tmp_path / "sources.yaml"),
        plugins=str(plugins),
        cache_url=f"redis://127.0.0.1:{closed}",
        worker_idle_s=0,  # the pool started with the app: /readyz counts its workers
    )
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200 and body["status"] == "ok" and body["metadata"] == "ok"
    assert body["cache"]["backend"] == "redis+memory" and body["cache"]["status"] == "degraded"
    assert body["workers"]["workers"] == settings.workers and body["rateLimit"]["backend"] == "redis"
    assert body["sources"] == {"pg": "OK", "gone": "UNREACHABLE", "plugin file:broken": "UNAVAILABLE"}
    assert str(closed) not in response.text and "RuntimeError" not in response.text


def test_metrics_and_health_are_never_rate_limited(tmp_path: Path) -> None:
    # A budget per day: a window edge mid-test (a minute's) would let a third request through.
    with TestClient(create_app(make_settings(tmp_path, rate_limit="2/day"))) as client:
        statuses = [client.get(path).status_code for path in ("/metrics", "/healthz", "/readyz") * 5]
        assert set(statuses) == {200}
        assert [client.get("/graphql?query={datasets{id}}").status_code for _ in range(3)] == [200, 200, 429]
        assert client.get("/metrics").status_code == 200 and client.get("/healthz").status_code == 200
