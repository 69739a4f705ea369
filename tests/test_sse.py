"""GraphQL over Server-Sent Events at /graphql/stream (graphql-sse, distinct connections mode), with
the websocket's gates: streams read as they come from a real uvicorn on loopback (httpx streaming;
Starlette's TestClient buffers a response whole, so it serves only answers that end by themselves)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from promtext import sample
from starlette.testclient import TestClient
from support import DATA, ROOT, add_key, make_settings, running_server, server_pid, upload_over_http, wait_for
from test_workers import HEAVY
from test_ws_gates import PARITY
from wsclient import Ws

from datagraph.settings import Settings
from server.app import create_app
from storage import MetadataStore

pytestmark = pytest.mark.e2e

BUDGET = 60  # per hour, per key: a minute's window could let one more through as a test crosses it
CAP = 2  # open websockets and event streams per key
KEYS = ("loader", "watcher", "appender", "budget", "spender", "revoked", "cap", "gone", "other", "leaver", "diamonds")
EVENTS = "subscription($d: ID) { datasetEvents(dataset: $d) { kind dataset version rowCount } }"
WATCH = """subscription($d: ID!) { watch(dataset: $d, result: COUNT,
  steps: [{filter: [{column: "day", op: EQ, value: "Sun"}]}]) { success data } }"""
APPEND = 'mutation($d: ID!) { appendRows(dataset: $d, rows: [{day: "Sun"}]) { success } }'
STREAM = {"Accept": "text/event-stream"}


class Events:
    """The events of one open stream, read as they come: (event, data) pairs; comments are counted."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.iter_lines()
        self.comments = 0

    def next(self) -> tuple[str, Any]:
        """The next event (`data` parsed as JSON when there is any); StopIteration when the stream ended."""
        event, data = "message", ""
        for line in self.lines:
            if line == "":
                if data or event != "message":
                    return event, json.loads(data) if data else None
            elif line.startswith(":"):
                self.comments += 1
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
        raise StopIteration

    def comment(self) -> None:
        """Read on until the next comment line (a keep-alive)."""
        for line in self.lines:
            if line.startswith(":"):
                self.comments += 1
                return
        raise StopIteration

    def result(self) -> dict[str, Any]:
        event, data = self.next()
        assert event == "next", (event, data)
        payload: dict[str, Any] = data
        return payload

    def rest(self) -> list[tuple[str, Any]]:
        """Every event until the stream ends."""
        out = []
        with contextlib.suppress(StopIteration):
            while True:
                out.append(self.next())
        return out


@contextlib.contextmanager
def stream(base: str, query: str, variables: dict[str, Any] | None = None, key: str | None = None) -> Iterator[Events]:
    """A POSTed operation's open event stream (the status checked: 200, text/event-stream)."""
    headers = {**STREAM, **({"X-API-Key": key} if key else {})}
    body = {"query": query, "variables": variables or {}}
    timeout = httpx.Timeout(5, read=30)
    with httpx.stream("POST", base + "/graphql/stream", json=body, headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Events(response)


def post(base: str, key: str, query: str, variables: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(
        base + "/graphql", json={"query": query, "variables": variables or {}}, headers={"X-API-Key": key}, timeout=30
    )


MONITOR: dict[str, str] = {}  # the key /readyz and /metrics are read with, when keys are on


def subscribers(base: str) -> int:
    """The server's event subscribers (its /readyz): one for each open subscription."""
    count: int = httpx.get(base + "/readyz", headers=MONITOR).json()["events"]["subscribers"]
    return count


def open_subscriptions(base: str) -> float:
    return sample(httpx.get(base + "/metrics", headers=MONITOR).text, "datagraph_subscriptions_open")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str], str, Path]]:
    """A real server with keys on, a small rate budget and stream cap, and a key per test; tips uploaded.
    Yields its URL, the keys, the dataset's id and the data directory."""
    work = tmp_path_factory.mktemp("sse")
    keys = {name: add_key(work / "data", name) for name in KEYS}
    args = ("--api-keys", "on", "--rate-limit", f"{BUDGET}/hour", "--max-ws-per-client", str(CAP))
    with running_server(work, *args) as base:
        tips = upload_over_http(base, DATA / "tips.csv", headers={"X-API-Key": keys["loader"]})
        MONITOR["X-API-Key"] = keys["loader"]  # /readyz and /metrics spend no budget
        try:
            yield base, keys, tips, work / "data"
        finally:
            MONITOR.clear()


def test_a_subscription_over_sse_needs_a_key_and_sees_each_append(keyed: tuple[str, dict[str, str], str, Path]) -> None:
    base, keys, tips, _ = keyed
    refused = httpx.post(base + "/graphql/stream", json={"query": EVENTS}, headers=STREAM)
    assert refused.status_code == 401 and refused.headers["content-type"] == "application/json"
    assert refused.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    before = subscribers(base)
    with stream(base, EVENTS, {"d": tips}, keys["watcher"]) as events:
        wait_for(lambda: subscribers(base) == before + 1, 10, "the stream's subscription is in place")
        assert post(base, keys["appender"], APPEND, {"d": tips}).json()["data"]["appendRows"]["success"]
        event = events.result()["data"]["datasetEvents"]
        assert event == {"kind": "APPENDED", "dataset": tips, "version": 2, "rowCount": 245}
        assert events.comments >= 1  # the first, sent with the headers


def test_a_watch_over_sse_pays_for_every_recompute_and_leaving_costs_nothing(
    keyed: tuple[str, dict[str, str], str, Path],
) -> None:
    base, keys, _, _ = keyed
    watched = upload_over_http(base, DATA / "tips.csv", headers={"X-API-Key": keys["loader"]})
    with stream(base, WATCH, {"d": watched}, keys["budget"]) as events:  # 1, and 5 for its job
        counts = [events.result()["data"]["watch"]["data"]["count"]]
        for _ in range(3):  # 5 for each recompute's job
            assert post(base, keys["appender"], APPEND, {"d": watched}).json()["data"]["appendRows"]["success"]
            counts.append(events.result()["data"]["watch"]["data"]["count"])
        assert counts == [76, 77, 78, 79]
    # Closed by the client, as a stream ends in this protocol: no charge for a request abandoned mid-work.
    allowed = 0
    while post(base, keys["budget"], "{ __typename }").status_code == 200 and allowed < BUDGET:
        allowed += 1
    spent = 1 + 4 * 5
    assert BUDGET - spent - 5 <= allowed <= BUDGET - spent, f"{allowed} requests were let through after the watch"


def test_every_operation_over_sse_costs_from_the_budget(keyed: tuple[str, dict[str, str], str, Path]) -> None:
    base, keys, _, _ = keyed
    answered = 0
    while answered <= BUDGET:
        response = httpx.post(
            base + "/graphql/stream", json={"query": "{ __typename }"}, headers={**STREAM, "X-API-Key": keys["spender"]}
        )
        if response.status_code != 200:
            break
        assert response.text.endswith("event: complete\ndata:\n\n"), response.text
        answered += 1
    assert answered == BUDGET
    assert response.status_code == 429 and response.headers["retry-after"]
    assert response.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"


def test_a_revoked_key_ends_its_stream_within_seconds(keyed: tuple[str, dict[str, str], str, Path]) -> None:
    base, keys, tips, data_dir = keyed
    with stream(base, EVENTS, {"d": tips}, keys["revoked"]) as events:
        store = MetadataStore(Settings(data_dir=data_dir, sources="", plugins="").resolved_metadata_url)
        try:
            assert store.revoke_key("revoked")
        finally:
            store.close()
        started = time.monotonic()
        ended = events.rest()
        took = time.monotonic() - started
    assert ended[0][0] == "next" and ended[0][1]["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert ended[1:] == [("complete", None)]
    assert took < 5, f"the stream ended {took:.1f} s after the key was revoked"  # a generous bound: ~1 s


def test_streams_and_websockets_share_the_per_key_cap_and_leaving_frees_everything(
    keyed: tuple[str, dict[str, str], str, Path],
) -> None:
    base, keys, tips, _ = keyed
    before, gauge = subscribers(base), open_subscriptions(base)
    with Ws(base, {"apiKey": keys["cap"]}), stream(base, EVENTS, {"d": tips}, keys["cap"]):
        wait_for(lambda: subscribers(base) == before + 1, 10, "the stream's subscription is in place")
        refused = httpx.post(
            base + "/graphql/stream", json={"query": EVENTS}, headers={**STREAM, "X-API-Key": keys["cap"]}
        )
        assert refused.status_code == 429, refused.text
        message = refused.json()["errors"][0]["message"]
        assert "max_ws_per_client" in message and "at most 2" in message
        with stream(base, EVENTS, {"d": tips}, keys["other"]):  # another key has places of its own
            pass
    # The client went away: its subscription, its place and the gauge are released.
    wait_for(lambda: subscribers(base) == before, 10, "the closed stream's subscription is gone")
    wait_for(lambda: open_subscriptions(base) == gauge, 10, "the open subscriptions gauge is back")
    with stream(base, WATCH, {"d": tips}, keys["cap"]) as one, stream(base, WATCH, {"d": tips}, keys["cap"]) as two:
        assert one.result()["data"]["watch"]["success"] and two.result()["data"]["watch"]["success"]


def test_a_stream_whose_client_vanishes_mid_work_leaves_nothing_behind(
    keyed: tuple[str, dict[str, str], str, Path],
) -> None:
    base, keys, tips, _ = keyed
    before, gauge = subscribers(base), open_subscriptions(base)
    for _ in range(3):  # gone before its first result, and then after it
        with stream(base, WATCH, {"d": tips}, keys["gone"]):
            pass
        with stream(base, WATCH, {"d": tips}, keys["gone"]) as events:
            assert events.result()["data"]["watch"]["success"]
    wait_for(lambda: subscribers(base) == before, 10, "no subscription is left")
    wait_for(lambda: open_subscriptions(base) == gauge, 10, "the open subscriptions gauge is back")


def test_a_query_left_mid_work_over_sse_costs_a_stop_as_over_http(keyed: tuple[str, dict[str, str], str, Path]) -> None:
    """Over HTTP, a client that leaves while its work runs is charged a stop (50): the worker stays busy
    for finish_grace_s. Over SSE it was charged nothing for leaving, so abandoning queries there cost a
    ninth as much; a subscription's client still leaves for free (its stream ends that way)."""
    base, keys, _, _ = keyed
    upload_over_http(base, DATA / "diamonds.csv", headers={"X-API-Key": keys["diamonds"]})  # its own budget
    with stream(base, HEAVY % "", None, keys["leaver"]) as events:
        events.comment()  # open: the query runs
        wait_for(lambda: httpx.get(base + "/readyz", headers=MONITOR).json()["workers"]["busy"], 10, "the job runs")
    wait_for(lambda: not httpx.get(base + "/readyz", headers=MONITOR).json()["workers"]["busy"], 30, "the job ends")
    allowed = 0
    while post(base, keys["leaver"], "{ __typename }").status_code == 200 and allowed < BUDGET:
        allowed += 1
    spent = 1 + 5 + 50  # the request, its job, the stop
    assert BUDGET - spent - 5 <= allowed <= BUDGET - spent, f"{allowed} requests were let through after leaving"


# What is answered before a stream starts, and operations that end by themselves (in-process) -------


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app in-process with keys off (loopback): GET allowed for queries."""
    with TestClient(create_app(make_settings(tmp_path_factory.mktemp("sse-app")))) as client:
        yield client


def events_of(response: httpx.Response) -> list[tuple[str, Any]]:
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    found = []
    for block in response.text.split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith(":")]
        if lines:
            event = lines[0].removeprefix("event: ")
            data = "".join(line.removeprefix("data:").strip() for line in lines[1:])
            found.append((event, json.loads(data) if data else None))
    return found


def test_a_query_or_mutation_is_one_next_then_complete(app: TestClient) -> None:
    answered = app.post("/graphql/stream", json={"query": "{ datasets { id } }"}, headers=STREAM)
    assert events_of(answered) == [("next", {"data": {"datasets": []}}), ("complete", None)]
    by_get = app.get("/graphql/stream", params={"query": "query($n: Int) { datasets(limit: $n) { id } }",
                                                "variables": json.dumps({"n": 1})}, headers=STREAM)  # fmt: skip
    assert events_of(by_get) == [("next", {"data": {"datasets": []}}), ("complete", None)]
    mutation = 'mutation { renameDataset(id: "nope", name: "x") { success error { code } } }'
    renamed = events_of(app.post("/graphql/stream", json={"query": mutation}, headers=STREAM))
    assert renamed[0][1]["data"]["renameDataset"] == {"success": False, "error": {"code": "NOT_FOUND"}}
    refused = app.get("/graphql/stream", params={"query": mutation}, headers=STREAM)
    assert refused.status_code == 405 and "POST" in refused.json()["errors"][0]["message"]


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("{ datasets { idx } }", "Cannot query field 'idx'"),
        ("{ datasets { id }", "Syntax Error"),
        ("{ sources { " + "id " * 2100 + "} }", "2000 tokens"),  # graphql_max_tokens
        ("{ " + " ".join(f"a{i}: sources {{ id }}" for i in range(16)) + " }", "aliases"),
    ],
)
def test_an_invalid_document_is_a_graphql_error_in_the_stream(app: TestClient, query: str, words: str) -> None:
    # The protocol: errors of the steps before execution go out as `next` events of an accepted stream.
    (event, payload), complete = events_of(app.post("/graphql/stream", json={"query": query}, headers=STREAM))
    assert event == "next" and "data" not in payload and words in payload["errors"][0]["message"], payload
    assert complete == ("complete", None)


@pytest.mark.parametrize(
    ("request_", "status", "code"),
    [
        ({"json": {"query": "{ __typename " + " " * 20_000 + "}"}}, 413, "TOO_LARGE"),  # max_query_chars
        ({"json": {"variables": {}}}, 400, "BAD_INPUT"),
        ({"json": [{"query": "{ __typename }"}]}, 400, "BAD_INPUT"),
        ({"json": {"query": "{ __typename }", "variables": [1]}}, 400, "BAD_INPUT"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "BAD_INPUT"),
        ({"content": b"query=x", "headers": {"content-type": "text/plain"}}, 415, "BAD_INPUT"),
        ({"json": {"query": "{ __typename }"}, "headers": {"accept": "application/json"}}, 406, "BAD_INPUT"),
    ],
)
def test_a_request_that_is_no_operation_is_refused_before_any_stream(
    app: TestClient, request_: dict[str, Any], status: int, code: str
) -> None:
    kwargs = {"headers": STREAM, **request_}
    response = app.post("/graphql/stream", **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    (error,) = response.json()["errors"]
    assert error["extensions"]["code"] == code and "Traceback" not in error["message"]
    if status == 413:
        assert "max_query_chars" in error["message"]


def test_the_docs_curl_example_streams_as_written(tmp_path: Path) -> None:
    section = (ROOT / "docs/live.md").read_text("utf-8").split("## Over Server-Sent Events", 1)[1]
    (command,) = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    (shown,) = re.findall(r"```text\n(.*?)```", section, flags=re.DOTALL)
    with running_server(tmp_path) as base:
        assert upload_over_http(base, ROOT / "examples/tips.csv") == "tips"
        # The stream goes on until the client leaves: curl leaves after 3 seconds (exit code 28).
        script = command.replace("curl -N", "curl -sN -m 3").replace("http://127.0.0.1:8000", base)
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
        assert done.returncode == 28, done.stderr
        assert done.stdout == shown, done.stdout
        wait_for(lambda: subscribers(base) == 0, 10, "curl's subscription is gone")


def test_every_graphql_limit_answers_in_the_stream_as_over_http(app: TestClient) -> None:
    for limit, query in PARITY.items():
        if "production" in limit:  # this app is not in production mode
            continue
        over_http = app.post("/graphql", json={"query": query}).json()
        assert over_http.get("data") is None and over_http["errors"], (limit, over_http)
        answer = app.post("/graphql/stream", json={"query": query}, headers=STREAM)
        if answer.status_code == 413:  # refused before GraphQL, as over HTTP
            assert limit == "query length" and answer.json()["errors"] == over_http["errors"]
            continue
        (event, payload), complete = events_of(answer)
        assert (event, complete) == ("next", ("complete", None)), limit
        assert payload == {"errors": over_http["errors"]}, limit


def test_persisted_only_holds_on_the_stream_too(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, persisted_only=True))) as client:
        refused = client.post("/graphql/stream", json={"query": "{ __typename }"}, headers=STREAM)
        assert refused.status_code == 400 and refused.headers["content-type"] == "application/json"
        assert refused.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_ALLOWED"
        unknown = {"documentId": "sha256:" + "0" * 64}
        (event, payload), complete = events_of(client.post("/graphql/stream", json=unknown, headers=STREAM))
        assert event == "next" and payload["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"
        assert complete == ("complete", None)


@pytest.mark.slow  # a server of its own, stopped, and a keep-alive waited for
def test_open_streams_end_at_shutdown_after_the_grace(tmp_path: Path) -> None:
    # Keep-alives every second (12 s by default): the test waits for one.
    with running_server(tmp_path, "--shutdown-grace-s", "1", "--sse-keepalive-s", "1") as base:
        tips = upload_over_http(base, DATA / "tips.csv")
        with stream(base, EVENTS, {"d": tips}) as events:
            wait_for(lambda: subscribers(base) == 1, 10, "the stream's subscription is in place")
            events.comment()  # the first, with the headers
            started = time.monotonic()
            events.comment()  # a keep-alive: nothing happened meanwhile
            assert 0.5 < time.monotonic() - started < 10  # the setting's second, not the default's 12
            pid = server_pid(base)
            os.kill(pid, signal.SIGTERM)
            started = time.monotonic()
            with pytest.raises((StopIteration, httpx.HTTPError)):
                events.next()
            took = time.monotonic() - started
        assert took < 8, f"the stream outlived the shutdown grace by {took - 1:.1f} s"
        wait_for(lambda: _stopped(pid), 10, "the server process exited")


def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True
