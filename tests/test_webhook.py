"""The webhook (issue 22, point 2): CHECK_FAILED and SCHEMA_CHANGED events POSTed as JSON to a real
loopback HTTP server (tests/upstream.py), in the background through a bounded queue; retried on 500,
given up on a hang within its timeouts while the server keeps answering; a URL on a blocked network
refused at start-up; the URL's secrets never in a log line."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from promtext import sample
from starlette.testclient import TestClient
from support import Api, fresh_redis, make_settings, serving, wait_for
from upstream import Reply, Upstream

from server.app import create_app

SET = """mutation($d: ID!, $c: [CheckInput!]!) { setChecks(dataset: $d, checks: $c) { success error { message } } }"""
APPEND = "mutation($d: ID!, $r: JSON!) { appendRows(dataset: $d, rows: $r) { success error { message } } }"
RATINGS = b"dish,score\npizza,4\npasta,5\n"
FAST = {
    "http_attempts": 3, "http_backoff_s": 0.05, "http_backoff_cap_s": 0.1, "http_connect_timeout_s": 1,
    "http_read_timeout_s": 0.5, "webhook_deadline_s": 5, "webhook_queue": 3,
}  # fmt: skip


HOOK = "/hook/s3cr3t-path"  # a secret in the path, the user info and the query: none may be logged


@pytest.fixture(scope="module")
def receiver() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, receiver: Upstream) -> Iterator[Api]:
    """One app for the module, its webhook at `receiver` (each test scripts the answers)."""
    url = receiver.url(HOOK + "?token=s3cr3t-query").replace("http://", "http://user:s3cr3t-pass@")
    with serving(make_settings(tmp_path_factory.mktemp("webhook"), webhook_url=url, **FAST)) as api:
        yield api


@pytest.fixture
def hooked(app: Api, receiver: Upstream) -> Iterator[Api]:
    """The module's app with its receiver reset; afterwards, every delivery of the test has ended."""
    release = threading.Event()
    with receiver.lock:
        receiver.hits.clear()
    receiver.scripts.pop(HOOK, None)
    receiver.always[HOOK] = Reply(204)
    app.release = release  # type: ignore[attr-defined]  # what a hanging receiver waits for
    yield app
    release.set()
    webhook = app.client.app.state.resources.webhook  # type: ignore[attr-defined]
    wait_for(lambda: webhook.idle, 15, "the test's deliveries ended")


def _checked_ratings(api: Api) -> str:
    dataset = api.upload_ok(RATINGS, "ratings.csv")
    done = api.data(SET, {"d": dataset, "c": [{"range": {"column": "score", "min": 1, "max": 5}}]})["setChecks"]
    assert done["success"], done["error"]
    return dataset


def _fail_a_check(api: Api, dataset: str) -> None:
    done = api.data(APPEND, {"d": dataset, "r": [{"dish": "soup", "score": 9}]})["appendRows"]
    assert done["success"], done["error"]


def _deliveries(api: Api, outcome: str) -> float:
    return sample(api.client.get("/metrics").text, "datagraph_webhook_deliveries_total", outcome=outcome)


def test_a_failed_check_and_a_schema_change_are_posted_as_json(hooked: Api, receiver: Upstream) -> None:
    before = _deliveries(hooked, "delivered")
    dataset = _checked_ratings(hooked)
    _fail_a_check(hooked, dataset)
    hooked.replace_ok(dataset, b"dish,score,note\npizza,4,ok\n", "ratings.csv")
    bodies = wait_for(lambda: len(receiver.bodies(HOOK)) >= 2 and receiver.bodies(HOOK), 10, "two POSTs")
    posted = [json.loads(b) for b in bodies]
    assert [p["event"] for p in posted] == ["CHECK_FAILED", "SCHEMA_CHANGED"]
    assert set(posted[0]) == {"event", "dataset", "name", "version", "details", "at"}
    assert posted[0]["dataset"] == dataset and posted[0]["name"] == "ratings" and posted[0]["version"] == 2
    assert posted[0]["details"]["failed"][0]["name"] == "range(score, 1..5)"
    assert posted[1]["version"] == 3
    assert posted[1]["details"]["added"] == [{"name": "note", "dtype": "String"}]
    hits = [h for h in receiver.hits if h.path == HOOK]
    assert all(h.method == "POST" and h.headers["Content-Type"] == "application/json" for h in hits)
    wait_for(lambda: _deliveries(hooked, "delivered") == before + 2, 10, "two deliveries counted")


def test_a_webhook_answering_500_is_retried_then_delivered(hooked: Api, receiver: Upstream) -> None:
    receiver.script(HOOK, Reply(500), Reply(503), Reply(200))
    delivered, failed = _deliveries(hooked, "delivered"), _deliveries(hooked, "failed")
    dataset = _checked_ratings(hooked)
    _fail_a_check(hooked, dataset)
    wait_for(lambda: _deliveries(hooked, "delivered") == delivered + 1, 10, "the delivery after two retries")
    assert receiver.count(HOOK) == 3
    assert len(set(receiver.bodies(HOOK))) == 1  # the same event each time
    assert _deliveries(hooked, "failed") == failed


def _hang(api: Api) -> Any:
    def hang(_: Any) -> Reply:
        api.release.wait(30)  # type: ignore[attr-defined]  # far past the read timeout: only the client's ends it
        return Reply(200)

    return hang


def test_a_webhook_that_hangs_is_given_up_within_its_timeouts_and_the_server_keeps_answering(
    hooked: Api, receiver: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.always[HOOK] = _hang(hooked)
    delivered, failed = _deliveries(hooked, "delivered"), _deliveries(hooked, "failed")
    dataset = _checked_ratings(hooked)
    with caplog.at_level(logging.INFO):
        _fail_a_check(hooked, dataset)  # answered while the delivery hangs: it never waits on the webhook
        assert hooked.data("{ datasets { id } }")["datasets"]  # the server keeps answering meanwhile
        wait_for(lambda: _deliveries(hooked, "failed") == failed + 1, 15, "the delivery given up")
    assert _deliveries(hooked, "delivered") == delivered
    assert receiver.count(HOOK) == 3  # http_attempts
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "webhook 127.0.0.1: gave up on a delivery after 3 tries" in logged
    assert "s3cr3t" not in logged  # neither the webhook's nor httpx's own lines show its path, user or query


def test_a_full_queue_drops_the_oldest_and_holds_one_task(
    hooked: Api, receiver: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.always[HOOK] = _hang(hooked)
    size = hooked.settings.webhook_queue
    dropped = _deliveries(hooked, "dropped")
    dataset = _checked_ratings(hooked)
    with caplog.at_level(logging.WARNING, logger="datagraph.webhook"):
        for _ in range(size + 4):  # one delivery under way, `size` waiting, the rest dropped
            _fail_a_check(hooked, dataset)
        assert _deliveries(hooked, "dropped") >= dropped + 3
    assert any("dropped the oldest" in r.getMessage() for r in caplog.records)
    wait_for(lambda: receiver.count(HOOK), 10, "the first delivery under way")
    # One delivery at a time, whatever is queued: only the first one's tries (it may be retried after a
    # read timeout on a busy machine), never one request per queued event.
    assert hooked.settings.http_attempts < size + 4  # else the bound below could not tell the two apart
    assert receiver.count(HOOK) <= hooked.settings.http_attempts


def test_a_webhook_on_a_blocked_network_stops_the_server_at_start_saying_so(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, webhook_url="http://127.0.0.2:9/hook", http_blocked_networks="127.0.0.2/32")
    with pytest.raises(RuntimeError) as refused, TestClient(create_app(settings)):
        pass
    message = str(refused.value)
    assert "webhook_url" in message and "http_blocked_networks" in message and "127.0.0.2" in message


REDIS = "redis://127.0.0.1:6379/14"  # this module's own database


def test_with_two_processes_the_event_reaches_both_and_only_the_committing_one_posts(
    tmp_path: Path, receiver: Upstream
) -> None:
    """Two apps on one metadata database and one Redis: a check failing on a version made through the
    first is told to the second's subscribers, details and all (it crossed Redis as JSON), and POSTed
    by the first alone."""
    with fresh_redis(REDIS):
        with receiver.lock:
            receiver.hits.clear()
        receiver.always["/first"] = receiver.always["/second"] = Reply(204)
        common = {"cache_url": REDIS, **FAST}
        first_settings = make_settings(tmp_path, webhook_url=receiver.url("/first"), **common)
        second_settings = make_settings(tmp_path, webhook_url=receiver.url("/second"), **common)
        with serving(first_settings) as first, serving(second_settings) as second:
            dataset = _checked_ratings(first)
            with second.client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
                ws.send_json({"type": "connection_init", "payload": {}})
                assert ws.receive_json() == {"type": "connection_ack"}
                query = "subscription($d: ID) { datasetEvents(dataset: $d) { kind version details } }"
                ws.send_json({"id": "e", "type": "subscribe", "payload": {"query": query, "variables": {"d": dataset}}})
                time.sleep(0.3)  # subscribed before the change
                _fail_a_check(first, dataset)
                seen = [ws.receive_json()["payload"]["data"]["datasetEvents"] for _ in range(2)]
            assert [e["kind"] for e in seen] == ["APPENDED", "CHECK_FAILED"]
            assert seen[1]["details"]["failed"][0]["message"] == "1 value of score outside 1..5 (lowest 4, highest 9)"
            wait_for(lambda: receiver.count("/first") == 1, 10, "the first app's POST")
            webhook = second.client.app.state.resources.webhook  # type: ignore[attr-defined]
            assert webhook.idle
            assert receiver.count("/second") == 0
