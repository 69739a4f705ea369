"""Subscriptions over graphql-transport-ws with a real websocket client against a real uvicorn on
loopback: dataset events, watches that recompute on change (coalesced), unsubscribe, limits, and
two server processes sharing PostgreSQL metadata, Redis and a data directory."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from conftest import DATA, Api, make_settings, require_service, running_server, upload_over_http
from starlette.testclient import TestClient
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from datagraph.app import create_app

pytestmark = pytest.mark.e2e
TIPS_ROWS = 244
DIAMONDS_ROWS = 53940
WATCH_COUNT = """subscription($d: ID!) { watch(dataset: $d, result: COUNT,
  steps: [{filter: [{column: "day", op: EQ, value: "Sun"}]}]) { success data error { code message } meta { cached } } }"""
EVENTS = "subscription($d: ID) { datasetEvents(dataset: $d) { kind dataset version rowCount } }"


def _open(base: str) -> Any:
    url = base.replace("http://", "ws://") + "/graphql"
    return connect(url, subprotocols=["graphql-transport-ws"], open_timeout=5)  # type: ignore[list-item]


class Ws:
    """A graphql-transport-ws client on one connection."""

    def __init__(self, base: str) -> None:
        self.stack = contextlib.ExitStack()
        self.conn: ClientConnection = self.stack.enter_context(_open(base))
        self.conn.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert self.next_message(5)["type"] == "connection_ack"

    def subscribe(self, query: str, variables: dict[str, Any], op: str = "1") -> None:
        self.conn.send(json.dumps({"id": op, "type": "subscribe", "payload": {"query": query, "variables": variables}}))

    def complete(self, op: str = "1") -> None:
        self.conn.send(json.dumps({"id": op, "type": "complete"}))

    def next_message(self, timeout: float = 10) -> dict[str, Any]:
        while True:
            message: dict[str, Any] = json.loads(self.conn.recv(timeout=timeout))
            if message["type"] != "ping":
                return message

    def next_data(self, timeout: float = 10) -> dict[str, Any]:
        message = self.next_message(timeout)
        assert message["type"] == "next", message
        data: dict[str, Any] = message["payload"]["data"]
        return data

    def drain(self, seconds: float) -> list[dict[str, Any]]:
        """Every message that arrives within `seconds`."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.next_message(left))
            except TimeoutError:
                break
        return got

    def close(self) -> None:
        self.stack.close()


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
    with running_server(work, "--ws-init-timeout-s", "1", "--ws-max-subscriptions", "3") as base:
        yield base


@pytest.fixture
def tips(server: str) -> str:
    return upload_over_http(server, DATA / "tips.csv")


SUNDAY = 76


def test_a_watch_answers_now_and_again_after_each_append(server: str, tips: str) -> None:
    ws = Ws(server)
    try:
        ws.subscribe(WATCH_COUNT, {"d": tips})
        assert ws.next_data()["watch"]["data"] == {"count": SUNDAY}
        started = time.monotonic()
        assert _append(server, tips, 2)["dataset"] == {"version": 2, "rowCount": TIPS_ROWS + 2}
        pushed = ws.next_data()["watch"]
        assert pushed["data"] == {"count": SUNDAY + 2} and time.monotonic() - started < 5
    finally:
        ws.close()


def test_dataset_events_say_what_changed(server: str, tips: str) -> None:
    ws = Ws(server)
    try:
        ws.subscribe(EVENTS, {"d": tips})
        time.sleep(0.2)  # the subscription is in place before the change
        _append(server, tips, 3)
        event = ws.next_data()["datasetEvents"]
        assert event == {"kind": "APPENDED", "dataset": tips, "version": 2, "rowCount": TIPS_ROWS + 3}
        httpx.post(server + "/graphql", json={"query": 'mutation { deleteDataset(id: "%s") { success } }' % tips})
        assert ws.next_data()["datasetEvents"]["kind"] == "DELETED"
    finally:
        ws.close()


def test_a_burst_of_changes_is_coalesced_and_the_last_push_is_current(server: str) -> None:
    # A watch that takes longer to compute than an append takes to land: changes pile up while it
    # runs, and each recompute takes in all of them.
    diamonds = upload_over_http(server, DATA / "diamonds.csv")
    watch = "subscription($d: ID!) { watch(dataset: $d, result: DESCRIBE) { success data meta { rowCount } } }"
    ws = Ws(server)
    try:
        ws.subscribe(watch, {"d": diamonds})
        first = ws.next_data()["watch"]
        assert first["success"]
        import threading

        def append() -> None:
            body = {"query": "mutation($d: ID!) { appendRows(dataset: $d, rows: [{carat: 0.5, price: 100}]) { success } }",
                    "variables": {"d": diamonds}}  # fmt: skip
            assert httpx.post(server + "/graphql", json=body, timeout=60).json()["data"]["appendRows"]["success"]

        appenders = [threading.Thread(target=append) for _ in range(12)]
        for t in appenders:
            t.start()
        for t in appenders:
            t.join()
        pushes = [m["payload"]["data"]["watch"]["data"] for m in ws.drain(5) if m["type"] == "next"]
        counts = [next(c["count"] for c in p if c["column"] == "carat") for p in pushes]
        assert counts and counts[-1] == DIAMONDS_ROWS + 12, counts
        assert len(counts) < 12, f"every change was recomputed: {counts}"
        assert counts == sorted(counts)
    finally:
        ws.close()


def test_unsubscribing_stops_the_pushes_and_frees_the_subscriber(server: str, tips: str) -> None:
    before = httpx.get(server + "/readyz").json()["events"]["subscribers"]
    ws = Ws(server)
    try:
        ws.subscribe(WATCH_COUNT, {"d": tips})
        ws.next_data()
        assert httpx.get(server + "/readyz").json()["events"]["subscribers"] == before + 1
        ws.complete()
        time.sleep(0.3)
        assert httpx.get(server + "/readyz").json()["events"]["subscribers"] == before
        _append(server, tips, 1)
        assert [m for m in ws.drain(1) if m["type"] == "next"] == []
    finally:
        ws.close()


def test_limits_init_timeout_and_subscriptions_per_connection(server: str, tips: str) -> None:
    with _open(server) as silent:
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            silent.recv(timeout=5)  # no connection_init: the server closes within its 1 s
    assert time.monotonic() - started < 3 and "4408" in str(closed.value)
    ws = Ws(server)
    try:
        for op in ("1", "2", "3"):
            ws.subscribe(EVENTS, {"d": tips}, op)
        ws.subscribe(EVENTS, {"d": tips}, "4")
        refused = ws.next_message()
        assert refused["type"] == "error" and refused["id"] == "4" and "limit" in json.dumps(refused)
    finally:
        ws.close()


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


def test_a_change_through_one_process_is_pushed_by_another(tmp_path: Path) -> None:
    require_service(5432, "PostgreSQL")
    require_service(6379, "Redis")
    name = f"dg_events_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    shared = tmp_path / "shared-data"
    env = {
        "DATAGRAPH_METADATA_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
        "DATAGRAPH_CACHE_URL": "redis://127.0.0.1:6379/13",
    }
    try:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with (
            running_server(tmp_path / "a", "--data-dir", str(shared), env=env) as first,
            running_server(tmp_path / "b", "--data-dir", str(shared), env=env) as second,
        ):
            dataset = upload_over_http(first, DATA / "tips.csv")
            ws = Ws(second)
            try:
                ws.subscribe(WATCH_COUNT, {"d": dataset})
                assert ws.next_data()["watch"]["data"] == {"count": SUNDAY}  # the second sees the first's upload
                assert _append(first, dataset, 4)["success"]
                assert ws.next_data()["watch"]["data"] == {"count": SUNDAY + 4}
            finally:
                ws.close()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
        admin.dispose()


def test_the_readme_subscription_example_runs(server: str, tips: str) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text("utf-8")
    query = readme.split("```graphql-ws\n", 1)[1].split("```", 1)[0].replace('"tips"', json.dumps(tips))
    ws = Ws(server)
    try:
        ws.subscribe(query, {})
        assert ws.next_data()["watch"] == {"success": True, "data": {"count": SUNDAY}, "meta": {"cached": False}}
    finally:
        ws.close()


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
    ws = Ws(server)
    try:
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
    finally:
        ws.close()


def test_a_re_upload_replaces_the_dataset_as_a_new_version(server: str, tips: str) -> None:
    ws = Ws(server)
    try:
        ws.subscribe(EVENTS, {"d": tips})
        time.sleep(0.2)
        query = "mutation($f: Upload!, $r: ID) { uploadDataset(file: $f, replace: $r) { success error { message } dataset { id version rowCount } } }"
        ops = {"query": query, "variables": {"f": None, "r": tips}}
        response = httpx.post(
            server + "/graphql",
            data={"operations": json.dumps(ops), "map": json.dumps({"0": ["variables.f"]})},
            files={"0": ("tips.csv", b"day,tip\nSun,1.0\nMon,2.0\n", "text/csv")},
            headers={"Apollo-Require-Preflight": "true"},
            timeout=30,
        )
        payload = response.json()["data"]["uploadDataset"]
        assert payload["success"], payload
        assert payload["dataset"] == {"id": tips, "version": 2, "rowCount": 2}
        assert ws.next_data()["datasetEvents"] == {"kind": "REPLACED", "dataset": tips, "version": 2, "rowCount": 2}
    finally:
        ws.close()


def test_pages_on_other_origins_may_not_subscribe(server: str) -> None:
    url = server.replace("http://", "ws://") + "/graphql"
    evil = {"Origin": "http://evil.example"}
    with (
        pytest.raises(Exception) as refused,
        connect(url, subprotocols=["graphql-transport-ws"], additional_headers=evil),
    ):  # type: ignore[list-item]
        pass
    assert "403" in str(refused.value) or "4403" in str(refused.value), refused.value
    with connect(url, subprotocols=["graphql-transport-ws"], additional_headers={"Origin": server}) as same:  # type: ignore[list-item]
        same.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(same.recv(timeout=5))["type"] == "connection_ack"
