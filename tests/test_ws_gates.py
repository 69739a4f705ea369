"""One gate for every transport (issue 16, item 6): queries and mutations sent over the websocket
(graphql-transport-ws runs them from a `subscribe` message) pass the gates an HTTP request passes:
the rate budget with its job costs, the message size, the query length and every GraphQL limit;
and open websockets are capped per API key (per client address while keys are off)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import WebSocketTestSession
from starlette.websockets import WebSocketDisconnect
from support import DATA, Api, add_key, make_settings, running_server, serving
from websockets.exceptions import ConnectionClosed
from wsclient import Ws, ws_open

# Budgets per hour: a sliding window of a minute would let one more through when a test crosses into
# the next minute and runs on for a second.
BUDGET = 60  # per hour, per key
CAP = 3  # open websockets per key
KEYS = ("loader", "budget", "jobs", "watcher", "appender", "frame", "parity", "cap", "other", "handshake")


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, dict[str, str], str]]:
    """One app with keys on (so production mode), small budgets and caps, and a key per test (each
    key has its own budget and its own websockets); tips uploaded once. Yields the app, the keys and
    the dataset's id."""
    settings = make_settings(
        tmp_path_factory.mktemp("ws-gates"),
        api_keys="on",
        rate_limit=f"{BUDGET}/hour",
        max_ws_per_client=CAP,
        graphql_max_errors=3,
    )
    keys = {name: add_key(settings.data_dir, name) for name in KEYS}
    with serving(settings) as api:
        response = api.upload_raw((DATA / "tips.csv").read_bytes(), "tips.csv", None, **{"x-api-key": keys["loader"]})
        payload = response.json()["data"]["uploadDataset"]
        assert payload["success"], payload
        yield api, keys, payload["dataset"]["id"]


@contextlib.contextmanager
def _socket(api: Api, key: str) -> Iterator[WebSocketTestSession]:
    """An acknowledged graphql-transport-ws connection to the app, with `key`."""
    with api.client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
        ws.send_json({"type": "connection_init", "payload": {"apiKey": key}})
        assert ws.receive_json() == {"type": "connection_ack"}
        yield ws


def _run(ws: WebSocketTestSession, op: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """Send `query` as operation `op`; its answer: the `next` message's payload, or the `error` message."""
    ws.send_json({"id": op, "type": "subscribe", "payload": {"query": query, "variables": variables or {}}})
    answer: dict[str, Any] | None = None
    while True:
        message = ws.receive_json()
        assert message["id"] == op, message
        if message["type"] == "next":
            answer = message["payload"]
        elif message["type"] == "error":
            return message
        else:
            assert message["type"] == "complete" and answer is not None, message
            return answer


def _refusal(message: dict[str, Any]) -> dict[str, Any]:
    assert message.get("type") == "error" and len(message["payload"]) == 1, message
    error: dict[str, Any] = message["payload"][0]
    return error


def _post(api: Api, key: str, query: str) -> httpx.Response:
    return api.client.post("/graphql", json={"query": query}, headers={"x-api-key": key})


def test_operations_over_a_websocket_spend_the_key_s_http_budget(gated: tuple[Api, dict[str, str], str]) -> None:
    api, keys, _ = gated
    key = keys["budget"]
    for _ in range(10):
        assert _post(api, key, "{ datasets { id } }").status_code == 200
    with _socket(api, key) as ws:  # opening it costs 1, as a request does
        answers = [_run(ws, str(n), "{ datasets { id } }") for n in range(BUDGET)]
        served = [a for a in answers if "data" in a]
        assert len(served) == BUDGET - 10 - 1 and all(a == {"data": {"datasets": [{"id": "tips"}]}} for a in served)
        refused = _refusal(answers[len(served)])
        assert refused["extensions"]["code"] == "RATE_LIMITED" and 1 <= refused["extensions"]["retryAfter"] <= 3600
        assert f"{BUDGET} per hour" in refused["message"] and "rate_limit" in refused["message"]
        # The socket stays open (a refusal ends the operation, not the connection), and HTTP is refused too.
        ws.send_json({"type": "ping"})
        assert ws.receive_json() == {"type": "pong"}
    assert _post(api, key, "{ datasets { id } }").status_code == 429
    with _socket(api, keys["other"]) as ws:  # another key's budget is its own
        assert _run(ws, "1", "{ datasets { id } }") == {"data": {"datasets": [{"id": "tips"}]}}


def test_jobs_an_operation_runs_over_a_websocket_cost_what_they_cost_over_http(
    gated: tuple[Api, dict[str, str], str],
) -> None:
    api, keys, tips = gated
    fresh = '{ dataset(id: "%s") { describe(columns: ["tip"], cache: BYPASS) { success } } }' % tips
    with _socket(api, keys["jobs"]) as ws:
        answers = []
        for n in range(BUDGET):
            answers.append(_run(ws, str(n), fresh))
            if answers[-1].get("type") == "error":
                break
    # Each uncached analysis costs 1 + 5 for its job: the budget buys ten, not sixty.
    assert 0 < len(answers) - 1 <= BUDGET // 6, f"{len(answers)} operations were let through"
    assert all(a == {"data": {"dataset": {"describe": {"success": True}}}} for a in answers[:-1])
    assert _refusal(answers[-1])["extensions"]["code"] == "RATE_LIMITED"


def test_a_watch_pays_for_every_recompute_as_it_pushes(gated: tuple[Api, dict[str, str], str]) -> None:
    api, keys, _ = gated
    response = api.upload_raw((DATA / "tips.csv").read_bytes(), "watched.csv", None, **{"x-api-key": keys["loader"]})
    watched = response.json()["data"]["uploadDataset"]["dataset"]["id"]
    watch = """subscription($d: ID!) { watch(dataset: $d, result: COUNT,
      steps: [{filter: [{column: "day", op: EQ, value: "Sun"}]}]) { success data } }"""
    append = 'mutation { appendRows(dataset: "%s", rows: [{day: "Sun"}]) { success } }' % watched
    with _socket(api, keys["watcher"]) as ws:  # 1
        ws.send_json({"id": "w", "type": "subscribe", "payload": {"query": watch, "variables": {"d": watched}}})
        counts = [ws.receive_json()["payload"]["data"]["watch"]["data"]["count"]]  # 1 + 5 for its job
        for _ in range(3):  # 5 for each recompute's job
            assert _post(api, keys["appender"], append).json()["data"]["appendRows"]["success"]
            counts.append(ws.receive_json()["payload"]["data"]["watch"]["data"]["count"])
        assert counts == [76, 77, 78, 79]
        # While the watch is still open, what its pushes ran is already spent.
        allowed = 0
        while _post(api, keys["watcher"], "{ __typename }").status_code == 200 and allowed < BUDGET:
            allowed += 1
    assert allowed <= BUDGET - 2 - 4 * 5, f"{allowed} requests were let through after the watch"


def test_a_websocket_message_over_max_request_kb_closes_its_socket_with_1009(
    gated: tuple[Api, dict[str, str], str],
) -> None:
    api, keys, _ = gated
    limit = api.settings.max_request_kb * 1024
    within = {"id": "1", "type": "subscribe", "payload": {"query": "{ __typename }", "variables": {"pad": ""}}}
    within["payload"]["variables"]["pad"] = "x" * (limit - len(json.dumps(within)) - 100)  # type: ignore[index]
    over = {"id": "2", "type": "subscribe", "payload": {"query": "{ __typename }", "variables": {"pad": "x" * limit}}}
    with _socket(api, keys["frame"]) as ws:
        ws.send_text(json.dumps(within))
        assert ws.receive_json() == {"id": "1", "type": "next", "payload": {"data": {"__typename": "Query"}}}
        assert ws.receive_json() == {"id": "1", "type": "complete"}
        ws.send_text(json.dumps(over))
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1009
    assert "256 KiB" in closed.value.reason and "max_request_kb" in closed.value.reason
    assert len(closed.value.reason.encode()) <= 123  # a close frame's reason has room for no more
    # Before connection_init too, and in a binary frame: the size is checked before anything reads it.
    with api.client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
        ws.send_bytes(b" " * (limit + 1))
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1009
    assert _post(api, keys["frame"], "{ __typename }").json() == {"data": {"__typename": "Query"}}


def _nested(levels: int) -> str:
    inner = "count { data }"
    for _ in range(levels):
        inner = f"filter(where: []) {{ {inner} }}"
    return f'{{ dataset(id: "tips") {{ {inner} }} }}'


PARITY = {
    "query length": "{ datasets { id } }" + " " * 20_000,
    "depth": _nested(10),
    "aliases": "{ " + " ".join(f"a{i}: sources {{ id }}" for i in range(16)) + " }",
    "tokens": "{ sources { " + "id " * 2500 + "} }",
    "field repeats": "{ sources { " + "id " * 11 + "} }",
    "value depth": '{ dataset(id: "tips") { rows(where: ' + "[" * 70 + "]" * 70 + ") { success } } }",
    "introspection (production)": "{ __schema { types { name } } }",
    "suggestions (production)": "{ helo }",
    "errors returned": "query { __typename " + "@aa " * 12 + "}",
    "syntax": "{ datasets { id }",
}


def test_every_graphql_limit_answers_over_a_websocket_as_over_http(gated: tuple[Api, dict[str, str], str]) -> None:
    api, keys, _ = gated
    key = keys["parity"]
    with _socket(api, key) as ws:
        for n, (limit, query) in enumerate(PARITY.items()):
            over_http = _post(api, key, query).json()
            over_ws = _run(ws, str(n), query)
            assert over_ws.get("type") == "error", (limit, over_ws)
            assert over_http.get("data") is None and over_http["errors"], (limit, over_http)
            assert over_ws["payload"] == over_http["errors"], limit
        assert "max_query_chars" in _run(ws, "long", PARITY["query length"])["payload"][0]["message"]
        assert _run(ws, "fine", "{ __typename }") == {"data": {"__typename": "Query"}}


def test_open_websockets_are_capped_per_key_and_a_closed_one_frees_its_place(
    gated: tuple[Api, dict[str, str], str],
) -> None:
    api, keys, _ = gated
    with contextlib.ExitStack() as stack:
        for _ in range(CAP):
            stack.enter_context(_socket(api, keys["cap"]))
        with api.client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as one_more:
            one_more.send_json({"type": "connection_init", "payload": {"apiKey": keys["cap"]}})
            with pytest.raises(WebSocketDisconnect) as closed:
                one_more.receive_json()
        assert closed.value.code == 4429 and "max_ws_per_client" in closed.value.reason
        assert len(closed.value.reason.encode()) <= 123
        with _socket(api, keys["other"]) as ws:  # another key is not held back
            assert _run(ws, "1", "{ __typename }") == {"data": {"__typename": "Query"}}
    with contextlib.ExitStack() as stack:  # all three closed: three may open again
        for _ in range(CAP):
            stack.enter_context(_socket(api, keys["cap"]))


def test_sockets_that_die_during_the_handshake_hold_no_place(gated: tuple[Api, dict[str, str], str]) -> None:
    api, keys, _ = gated
    key = keys["handshake"]
    for _ in range(2 * CAP):
        with api.client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]):
            pass  # gone before connection_init
        with api.client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
            ws.send_json({"type": "connection_init", "payload": {"apiKey": key}})  # gone before its ack
        with api.client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
            ws.send_json({"type": "connection_init", "payload": {"apiKey": "dg_wrong"}})
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 4403
    with contextlib.ExitStack() as stack:
        for _ in range(CAP):
            stack.enter_context(_socket(api, key))
        with api.client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as one_more:
            one_more.send_json({"type": "connection_init", "payload": {"apiKey": key}})
            with pytest.raises(WebSocketDisconnect) as closed:
                one_more.receive_json()
            assert closed.value.code == 4429


def _flood(base: str, sockets: int, messages: int) -> tuple[int, int, int]:
    """Open `sockets` websockets at once, then send `messages` queries on each open one without waiting:
    how many sockets were acknowledged, how many queries answered with data, how many RATE_LIMITED."""
    everyone_tried = threading.Barrier(sockets, timeout=30)

    def one(_: int) -> tuple[int, int, int]:
        try:
            ws = Ws(base)
        except (AssertionError, ConnectionClosed):  # closed instead of acknowledged: 4429
            everyone_tried.wait()
            return 0, 0, 0
        with ws:
            everyone_tried.wait()  # the open ones stay open until every socket has tried
            for n in range(messages):
                ws.subscribe("{ datasets { id } }", {}, str(n))
            served = limited = ended = 0
            while ended < messages:
                message = ws.next_message(30)
                if message["type"] == "next":
                    served += 1
                elif message["type"] == "error":
                    ended += 1
                    limited += json.dumps(message).count("RATE_LIMITED")
                elif message["type"] == "complete":
                    ended += 1
            return 1, served, limited

    with concurrent.futures.ThreadPoolExecutor(sockets) as pool:
        results = list(pool.map(one, range(sockets)))
    return sum(r[0] for r in results), sum(r[1] for r in results), sum(r[2] for r in results)


def _half_handshake(base: str) -> None:
    """A websocket upgrade request, then the connection reset before anything else."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(
            b"GET /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n"
        )
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.slow  # a real server process
def test_a_flood_of_sockets_and_messages_cannot_outspend_the_budget_on_a_real_server(tmp_path: Path) -> None:
    budget, cap, sockets, messages = 40, 4, 12, 50
    args = ("--rate-limit", f"{budget}/hour", "--max-ws-per-client", str(cap), "--ws-max-subscriptions", "100")
    with running_server(tmp_path, *args) as base:
        with concurrent.futures.ThreadPoolExecutor(1) as side:
            flood = side.submit(_flood, base, sockets, messages)
            while not flood.done():  # the server keeps answering its health checks meanwhile
                assert httpx.get(base + "/healthz", timeout=5).status_code == 200
                time.sleep(0.05)
            opened, served, limited = flood.result()
        assert opened == cap  # keys are off on loopback: the cap is per client address
        # Each socket cost 1 to open and each query 1: the flood got what the budget holds, no more.
        assert 0 < served <= budget - opened and served + limited == cap * messages
        assert httpx.get(base + "/healthz").status_code == 200
        assert httpx.post(base + "/graphql", json={"query": "{ datasets { id } }"}).status_code == 429

        # Frames: past max_request_kb the app closes with 1009 naming the setting; far past it,
        # uvicorn's own cap (twice the limit, at least 1 MiB) closes before the frame is read whole.
        for size, words in ((300 * 1024, "max_request_kb"), (3 * 1024 * 1024, "")):
            with ws_open(base) as conn, pytest.raises(ConnectionClosed) as closed:
                conn.send(json.dumps({"type": "connection_init", "payload": {"pad": "x" * size}}))
                conn.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009, closed.value
            assert words in closed.value.rcvd.reason

        # Sockets that die mid-handshake hold no place: afterwards `cap` open again, and no more.
        for _ in range(2 * cap):
            _half_handshake(base)
            with ws_open(base) as conn:
                conn.send(json.dumps({"type": "connection_init", "payload": {}}))  # gone before its ack
        with contextlib.ExitStack() as stack:
            for _ in range(cap):
                stack.enter_context(Ws(base))
            with ws_open(base) as conn, pytest.raises(ConnectionClosed) as closed:
                conn.send(json.dumps({"type": "connection_init", "payload": {}}))
                conn.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
        assert httpx.get(base + "/healthz").status_code == 200
