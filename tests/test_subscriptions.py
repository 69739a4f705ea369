"""Subscriptions over graphql-transport-ws with a real websocket client against a real uvicorn on
loopback: dataset events, watches that recompute on change (coalesced), unsubscribe, limits, and
two server processes sharing PostgreSQL metadata, Redis and a data directory."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from promtext import sample
from starlette.testclient import TestClient
from support import (
    DATA,
    ROOT,
    Api,
    make_settings,
    require_service,
    running_server,
    scratch_postgres_database,
    upload_over_http,
    upload_request,
)
from tcpproxy import TcpProxy
from websockets.exceptions import ConnectionClosed, InvalidStatus
from wsclient import Ws, ws_open

from server.app import create_app

pytestmark = pytest.mark.e2e
TIPS_ROWS = 244
DIAMONDS_ROWS = 53940
WATCH_COUNT = """subscription($d: ID!) { watch(dataset: $d, result: COUNT,
  steps: [{filter: [{column: "day", op: EQ, value: "Sun"}]}]) { success data error { code message } meta { cached } } }"""
EVENTS = "subscription($d: ID) { datasetEvents(dataset: $d) { kind dataset version rowCount } }"


def _append(base: str, dataset: str, n: int = 1) -> dict[str, Any]:
    rows = [
        {"total_bill": 10.0 + i, "tip": 1.0, "sex": "Female", "smoker": "No", "day": "Sun", "time": "Dinner", "size": 2}
        for i in range(n)
    ]
    body = httpx.post(
        base + "/graphql",
        json={"query": "mutation($d: ID!, $r: JSON!) { appendRows(dataset: $d, rows: $r) { success error { code message } dataset { version rowCount } } }",
              "variables": {"d": dataset, "r": rows}},
        timeout=30,
    ).json()  # fmt: skip
    payload: dict[str, Any] = body["data"]["appendRows"]
    return payload


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("subscriptions")
    # Two workers: appends land while a watch recomputes on the other (so changes pile up and coalesce).
    with running_server(work, "--ws-init-timeout-s", "1", "--ws-max-subscriptions", "3", workers=2) as base:
        yield base


@pytest.fixture
def tips(server: str) -> str:
    return upload_over_http(server, DATA / "tips.csv")


SUNDAY = 76


def test_a_watch_answers_now_and_again_after_each_append(server: str, tips: str) -> None:
    with Ws(server) as ws:
        ws.subscribe(WATCH_COUNT, {"d": tips})
        assert ws.next_data()["watch"]["data"] == {"count": SUNDAY}
        started = time.monotonic()
        assert _append(server, tips, 2)["dataset"] == {"version": 2, "rowCount": TIPS_ROWS + 2}
        pushed = ws.next_data()["watch"]
        assert pushed["data"] == {"count": SUNDAY + 2} and time.monotonic() - started < 5


def test_dataset_events_say_what_changed(server: str, tips: str) -> None:
    with Ws(server) as ws:
        ws.subscribe(EVENTS, {"d": tips})
        time.sleep(0.2)  # the subscription is in place before the change
        _append(server, tips, 3)
        event = ws.next_data()["datasetEvents"]
        assert event == {"kind": "APPENDED", "dataset": tips, "version": 2, "rowCount": TIPS_ROWS + 3}
        httpx.post(server + "/graphql", json={"query": 'mutation { deleteDataset(id: "%s") { success } }' % tips})
        assert ws.next_data()["datasetEvents"]["kind"] == "DELETED"


@pytest.mark.slow  # inherently long (a self-join watch, 12 appends)
def test_a_burst_of_changes_is_coalesced_and_the_last_push_is_current(server: str) -> None:
    # A watch that takes far longer to compute (a self-join of 830 million rows, counted: seconds)
    # than an append takes to land: changes pile up while it runs, and each recompute takes in all.
    diamonds = upload_over_http(server, DATA / "diamonds.csv")
    watch = """subscription($d: ID!) { watch(dataset: $d, result: SUMMARY,
      steps: [{join: {right: $d, on: ["cut"]}}]) { success data error { message } } }"""
    with Ws(server) as ws:
        ws.subscribe(watch, {"d": diamonds})
        first = ws.next_data(60)["watch"]
        assert first["success"], first

        def append() -> None:
            body = {"query": "mutation($d: ID!) { appendRows(dataset: $d, rows: [{carat: 0.5, price: 100, cut: \"Zzz\"}]) { success } }",
                    "variables": {"d": diamonds}}  # fmt: skip
            assert httpx.post(server + "/graphql", json=body, timeout=60).json()["data"]["appendRows"]["success"]

        appenders = [threading.Thread(target=append) for _ in range(12)]
        for t in appenders:
            t.start()
        for t in appenders:
            t.join()
        pushes: list[dict[str, Any]] = []
        while not pushes or pushes[-1]["leftRows"] < DIAMONDS_ROWS + 12:  # the last push is the current version
            message = ws.next_message(60)
            assert message["type"] == "next", message
            pushes.append(message["payload"]["data"]["watch"]["data"]["joins"][0])
        counts = [p["leftRows"] for p in pushes]
        assert len(counts) < 12, f"every change was recomputed: {counts}"
        assert counts == sorted(counts)


def _subscribers(base: str) -> int:
    """How many event subscribers the server at `base` has (its /readyz)."""
    count: int = httpx.get(base + "/readyz").json()["events"]["subscribers"]
    return count


def _open_subscriptions(base: str) -> float:
    return sample(httpx.get(base + "/metrics").text, "datagraph_subscriptions_open")


def test_unsubscribing_stops_the_pushes_and_frees_the_subscriber(server: str, tips: str) -> None:
    before, gauge = _subscribers(server), _open_subscriptions(server)
    with Ws(server) as ws:
        ws.subscribe(WATCH_COUNT, {"d": tips})
        ws.next_data()
        assert _subscribers(server) == before + 1 and _open_subscriptions(server) == gauge + 1
        ws.complete()
        time.sleep(0.3)
        assert _subscribers(server) == before and _open_subscriptions(server) == gauge
        _append(server, tips, 1)
        assert [m for m in ws.drain(1) if m["type"] == "next"] == []


def test_limits_init_timeout_and_subscriptions_per_connection(server: str, tips: str) -> None:
    with ws_open(server) as silent:
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            silent.recv(timeout=5)  # no connection_init: the server closes within its 1 s
    assert time.monotonic() - started < 3 and "4408" in str(closed.value)
    with Ws(server) as ws:
        for op in ("1", "2", "3"):
            ws.subscribe(EVENTS, {"d": tips}, op)
        ws.subscribe(EVENTS, {"d": tips}, "4")
        refused = ws.next_message()
        assert refused["type"] == "error" and refused["id"] == "4" and "limit" in json.dumps(refused)


def test_append_rows_checks_every_value_and_is_all_or_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        dataset = api.upload_ok(DATA / "tips.csv")
        q = (
            'mutation($r: JSON!) { appendRows(dataset: "%s", rows: $r) { success error { code message } dataset { version } } }'
            % dataset
        )
        cases = [
            ([{"tip": 1.0}, {"tip": "lots"}], 'row 2, column "tip" is Float64'),
            ([{"tip": 1.0, "colour": "red"}], 'no column "colour"'),
            ([], "non-empty list"),
            ([{"size": 2.5}], 'column "size" is Int64'),
        ]
        for rows, words in cases:
            answer = api.data(q, {"r": rows})["appendRows"]
            assert answer["error"]["code"] == "BAD_INPUT" and words in answer["error"]["message"], answer
        assert api.data('{ dataset(id: "%s") { version rowCount } }' % dataset)["dataset"] == {
            "version": 1,
            "rowCount": TIPS_ROWS,
        }
        ok = api.data(q, {"r": [{"tip": 2.5, "day": "Mon"}]})["appendRows"]
        assert ok["success"] and ok["dataset"]["version"] == 2
        last = api.data(
            '{ dataset(id: "%s") { slice(offset: %d, limit: 1) { rows { data } } } }' % (dataset, TIPS_ROWS)
        )
        row = last["dataset"]["slice"]["rows"]["data"][0]
        assert row["tip"] == 2.5 and row["day"] == "Mon" and row["total_bill"] is None


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, TcpProxy]]:
    """Two server processes sharing a data directory, PostgreSQL metadata and Redis, the second
    reading Redis (its events, its cache) through a proxy that a test may cut: their base URLs and
    the proxy. Shared by the module's two-process tests (each uploads its own dataset; a test that
    cuts the proxy restores it)."""
    require_service(6379, "Redis")
    work = tmp_path_factory.mktemp("pair")
    shared = work / "shared-data"
    (work / "a").mkdir()
    (work / "b").mkdir()
    proxy = TcpProxy(6379)
    proxy.start()
    try:
        with scratch_postgres_database() as metadata:
            common = ("--data-dir", str(shared), "--metadata-url", metadata)
            with (
                running_server(work / "a", *common, "--cache-url", "redis://127.0.0.1:6379/13") as a,
                running_server(work / "b", *common, "--cache-url", f"redis://127.0.0.1:{proxy.port}/13") as b,
            ):
                yield a, b, proxy
    finally:
        proxy.cut()


@pytest.mark.slow  # two server processes
def test_a_change_through_one_process_is_pushed_by_another(pair: tuple[str, str, TcpProxy]) -> None:
    first, second, _ = pair
    dataset = upload_over_http(first, DATA / "tips.csv")
    with Ws(second) as ws:
        ws.subscribe(WATCH_COUNT, {"d": dataset})
        assert ws.next_data()["watch"]["data"] == {"count": SUNDAY}  # the second sees the first's upload
        assert _append(first, dataset, 4)["success"]
        assert ws.next_data()["watch"]["data"] == {"count": SUNDAY + 4}


def test_the_readme_subscription_example_runs(server: str, tips: str) -> None:
    readme = (ROOT / "docs/live.md").read_text("utf-8")
    query = readme.split("```graphql-ws\n", 1)[1].split("```", 1)[0].replace('"tips"', json.dumps(tips))
    with Ws(server) as ws:
        ws.subscribe(query, {})
        assert ws.next_data()["watch"] == {"success": True, "data": {"count": SUNDAY}, "meta": {"cached": False}}


def test_job_progress_reports_the_final_state(server: str, tips: str) -> None:
    saved = httpx.post(
        server + "/graphql",
        json={
            "query": 'mutation { saveFrame(dataset: "%s", name: "sundays", steps: [{filter: [{column: "day", op: EQ, value: "Sun"}]}]) { success job { id } } }'
            % tips
        },
        timeout=30,
    ).json()["data"]["saveFrame"]
    assert saved["success"]
    with Ws(server) as ws:
        ws.subscribe(
            "subscription($j: ID!) { jobProgress(job: $j) { kind stage rowsProcessed final error } }",
            {"j": saved["job"]["id"]},
        )
        event = ws.next_data()["jobProgress"]
        assert event == {
            "kind": "saveFrame",
            "stage": "succeeded",
            "rowsProcessed": SUNDAY,
            "final": True,
            "error": None,
        }
        assert ws.next_message()["type"] == "complete"


def test_a_re_upload_replaces_the_dataset_as_a_new_version(server: str, tips: str) -> None:
    with Ws(server) as ws:
        ws.subscribe(EVENTS, {"d": tips})
        time.sleep(0.2)
        request = upload_request(b"day,tip\nSun,1.0\nMon,2.0\n", "tips.csv", replace=tips)
        payload = httpx.post(server + "/graphql", **request, timeout=30).json()["data"]["uploadDataset"]
        assert payload["success"], payload
        dataset = payload["dataset"]
        assert (dataset["id"], dataset["version"], dataset["rowCount"]) == (tips, 2, 2)
        assert ws.next_data()["datasetEvents"] == {"kind": "REPLACED", "dataset": tips, "version": 2, "rowCount": 2}


def test_pages_on_other_origins_may_not_subscribe(server: str) -> None:
    with pytest.raises(InvalidStatus) as refused, ws_open(server, {"Origin": "http://evil.example"}):
        pass
    assert refused.value.response.status_code == 403
    with ws_open(server, {"Origin": server}) as same:
        same.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(same.recv(timeout=5))["type"] == "connection_ack"


def test_a_watch_can_push_a_chart(server: str, tips: str) -> None:
    query = """subscription($d: ID!) { watch(dataset: $d, result: CHART,
      chart: {kind: BAR, x: "day", y: "tip", aggregate: SUM}) { success data error { message } } }"""
    with Ws(server) as ws:
        ws.subscribe(query, {"d": tips})
        before = {v["day"]: v["tip_sum"] for v in ws.next_data()["watch"]["data"]["data"]["values"]}
        _append(server, tips, 1)  # a Sunday with a tip of 1.0
        after = {v["day"]: v["tip_sum"] for v in ws.next_data()["watch"]["data"]["data"]["values"]}
        assert after["Sun"] == pytest.approx(before["Sun"] + 1.0) and after["Sat"] == before["Sat"]
        ws.subscribe("subscription($d: ID!) { watch(dataset: $d, result: CHART) { success error { code message } } }",
                     {"d": tips}, "2")  # fmt: skip
        refused = ws.next_data()["watch"]
        assert refused["success"] is False and "chart" in refused["error"]["message"]


def test_unsubscribing_from_a_watch_nobody_else_wants_stops_its_work(server: str) -> None:
    diamonds = upload_over_http(server, DATA / "diamonds.csv")
    heavy = """subscription($d: ID!) { watch(dataset: $d, result: ROWS, limit: 1,
      steps: [{join: {right: $d, on: ["cut"]}}, {sort: [{column: "price_right"}]}]) { success } }"""
    with Ws(server) as ws:
        ws.subscribe(heavy, {"d": diamonds})
        deadline = time.monotonic() + 10
        while httpx.get(server + "/readyz").json()["workers"]["busy"] == 0:
            assert time.monotonic() < deadline, "the watch never started its work"
            time.sleep(0.05)
        ws.complete()
        deadline = time.monotonic() + 10
        while httpx.get(server + "/readyz").json()["workers"]["busy"] != 0:  # minutes of work, if let run
            assert time.monotonic() < deadline, "the worker is still busy after the watch went away"
            time.sleep(0.1)


@pytest.mark.slow  # two server processes
def test_watches_recompute_after_the_event_stream_comes_back(pair: tuple[str, str, TcpProxy]) -> None:
    """Process B reads events through a proxy to Redis; while it is cut, A appends (B misses the
    event); once B reads again, its watches recompute and push the current result."""
    a, b, proxy = pair
    dataset = upload_over_http(a, DATA / "tips.csv")
    try:
        with Ws(b) as ws:
            ws.subscribe(WATCH_COUNT, {"d": dataset})
            assert ws.next_data()["watch"]["data"] == {"count": SUNDAY}
            assert _append(a, dataset, 1)["success"]
            assert ws.next_data()["watch"]["data"] == {"count": SUNDAY + 1}  # through Redis
            proxy.cut()
            assert _append(a, dataset, 2)["success"]
            assert [m for m in ws.drain(1.5) if m["type"] == "next"] == []  # missed while cut
            proxy.start()
            assert ws.next_data(15)["watch"]["data"] == {"count": SUNDAY + 3}
    finally:
        proxy.start()  # restored for the module's other tests (nothing more when it is already)


def test_a_frame_over_the_limit_closes_that_connection_only(server: str, tips: str) -> None:
    with Ws(server) as ws, Ws(server) as other:
        ws.conn.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": "#" + "x" * (2 << 20)}}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.next_message(10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # message too big
        other.subscribe(WATCH_COUNT, {"d": tips})
        assert other.next_data()["watch"]["data"] == {"count": SUNDAY}


@pytest.mark.slow  # inherently long (30 appends, 37 MB of pushes)
def test_a_subscriber_that_stops_reading_does_not_hold_up_the_others(server: str) -> None:
    diamonds = upload_over_http(server, DATA / "diamonds.csv")
    big = "subscription($d: ID!) { watch(dataset: $d, result: ROWS, limit: 10000) { success data } }"
    small = "subscription($d: ID!) { watch(dataset: $d, result: COUNT) { data } }"
    append = {"query": "mutation($d: ID!) { appendRows(dataset: $d, rows: [{carat: 0.5}]) { success } }",
              "variables": {"d": diamonds}}  # fmt: skip
    before = _subscribers(server)
    # The stalled client takes ~1.24 MB pushes whole and uncompressed, holds at most one in memory,
    # and sends no pings that would want a pong read: once it stops reading, the pushes fill the
    # socket buffers on both sides (30 of them are ~37 MB) and the server can send it nothing more.
    # Its close cannot read the server's answer behind all that: it gives up after a second.
    stalled_options = {"max_size": None, "max_queue": 1, "compression": None, "ping_interval": None, "close_timeout": 1}
    with Ws(server, **stalled_options) as stalled, Ws(server) as reader:
        stalled.subscribe(big, {"d": diamonds})
        reader.subscribe(small, {"d": diamonds})
        assert reader.next_data(30)["watch"]["data"] == {"count": DIAMONDS_ROWS}
        for n in range(1, 31):
            assert httpx.post(server + "/graphql", json=append, timeout=60).json()["data"]["appendRows"]["success"]
            latest = reader.next_data(30)["watch"]["data"]["count"]
            while latest < DIAMONDS_ROWS + n:  # coalesced pushes may skip versions, never go back
                latest = reader.next_data(30)["watch"]["data"]["count"]
            assert latest == DIAMONDS_ROWS + n
        assert stalled.conn.close_code is None
        assert _subscribers(server) == before + 2  # the stalled watch is still there, only waiting


def test_a_subscription_sent_over_http_is_told_to_use_the_websocket(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as client:
        for operation in ("subscription { datasetEvents { kind } }", "subscription Named { datasetEvents { kind } }"):
            answer = client.post("/graphql", json={"query": operation}, headers={"Accept": "application/json"})
            assert answer.status_code == 400
            error = answer.json()["errors"][0]
            assert error["extensions"]["code"] == "BAD_INPUT" and "websocket" in error["message"]
        # A query that merely mentions the word is still a query.
        fine = client.post("/graphql", json={"query": "{ datasets { id } } # no subscription here"})
        assert fine.json() == {"data": {"datasets": []}}
