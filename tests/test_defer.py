"""`@defer` and `@stream` (setting graphql_defer): parts for clients that accept multipart/mixed,
the same answer whole for everyone else, a clear refusal over the websocket, and nothing when off."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import DATA, Api, make_settings, serving

DEFERRED = """{ dataset(id: "titanic") { count { data }
  ... @defer(label: "stats") { describe { data } valueCounts(column: "sex") { data } } } }"""
PLAIN = """{ dataset(id: "titanic") { count { data } describe { data } valueCounts(column: "sex") { data } } }"""
PARTS = {"accept": "multipart/mixed, application/json"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with serving(make_settings(tmp_path_factory.mktemp("defer"), graphql_defer=True)) as api:
        api.upload_ok(DATA / "titanic.csv")
        api.upload_ok(DATA / "tips.csv")
        yield api


def parts(body: str) -> list[dict[str, Any]]:
    """The JSON parts of a multipart/mixed answer (boundary "-", as Strawberry writes it)."""
    found = []
    for chunk in body.split("\r\n---"):
        head, _, payload = chunk.partition("\r\n\r\n")
        if "application/json" in head and payload.strip().startswith("{"):
            found.append(json.loads(payload))
    return found


def test_a_client_that_accepts_parts_gets_the_deferred_fragment_in_a_later_part(app: Api) -> None:
    response = app.client.post("/graphql", json={"query": DEFERRED}, headers=PARTS)
    assert response.status_code == 200 and response.headers["content-type"].startswith("multipart/mixed")
    first, *later = parts(response.text)
    assert first["data"] == {"dataset": {"count": {"data": {"count": 891}}}}
    assert first["hasNext"] is True and first["pending"][0]["label"] == "stats"
    assert later[-1]["hasNext"] is False
    delivered = [piece for part in later for piece in part.get("incremental", [])]
    assert [piece["path"] for piece in delivered] == [["dataset"]]
    whole = app.data(PLAIN)["dataset"]
    assert delivered[0]["data"] == {"describe": whole["describe"], "valueCounts": whole["valueCounts"]}


def test_a_client_that_does_not_accept_parts_gets_the_same_answer_whole(app: Api) -> None:
    for _ in range(2):  # the second from the answer cache: still whole, still JSON
        response = app.client.post("/graphql", json={"query": DEFERRED})
        assert response.headers["content-type"].startswith("application/json")
        assert response.json() == {"data": app.data(PLAIN)}


def test_streamed_lists_are_whole_for_json_clients_and_in_parts_for_multipart_ones(app: Api) -> None:
    query = "{ datasets @stream(initialCount: 1) { id } }"
    assert app.data(query) == app.data("{ datasets { id } }") == {"datasets": [{"id": "titanic"}, {"id": "tips"}]}
    first, *later = parts(app.client.post("/graphql", json={"query": query}, headers=PARTS).text)
    assert first["data"] == {"datasets": [{"id": "titanic"}]}
    assert [item for part in later for piece in part.get("incremental", []) for item in piece["items"]] == [
        {"id": "tips"}
    ]


def test_a_deferred_fragment_inside_a_list_merges_item_by_item(app: Api) -> None:
    query = "{ datasets { id ... @defer { name rowCount } } }"
    assert app.data(query) == app.data("{ datasets { id name rowCount } }")


def test_errors_in_a_deferred_fragment_reach_a_json_client(app: Api) -> None:
    query = '{ dataset(id: "titanic") { count { data } ... @defer { valueCounts(column: "nope") { success error { code } } } } }'
    got = app.data(query)["dataset"]
    assert got["count"] == {"data": {"count": 891}}
    assert got["valueCounts"] == {"success": False, "error": {"code": "BAD_INPUT"}}


def test_the_websocket_refuses_incremental_delivery_and_keeps_serving(app: Api) -> None:
    with app.client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
        ws.send_json({"type": "connection_init", "payload": {}})
        assert ws.receive_json()["type"] == "connection_ack"
        ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": DEFERRED}})
        refused = ws.receive_json()
        assert refused["type"] == "error" and "not supported" in refused["payload"][0]["message"]
        ws.send_json(
            {"id": "2", "type": "subscribe", "payload": {"query": '{ dataset(id: "tips") { count { data } } }'}}
        )
        assert ws.receive_json()["payload"]["data"] == {"dataset": {"count": {"data": {"count": 244}}}}


def test_with_the_setting_off_defer_is_an_unknown_directive(tmp_path: Path) -> None:
    with serving(make_settings(tmp_path)) as api:
        body = api.query(DEFERRED.replace('"titanic"', '"none"'))
        assert "data" not in body or body["data"] is None
        assert any("defer" in error["message"] for error in body["errors"]), body


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        ("{ datasets @stream(initialCount: -1) { id } }", None),
        ("query($n: Int!) { datasets @stream(initialCount: $n) { id } }", {"n": -5}),
        ("{ datasets @stream(initialCount: null) { id } }", None),
        ("query($n: Int) { datasets @stream(initialCount: $n) { id } }", {"n": None}),
        ("query($n: Int = null) { datasets @stream(initialCount: $n) { id } }", None),
    ],
)
def test_a_negative_initial_count_is_bad_input_not_a_server_error(
    app: Api, query: str, variables: dict[str, Any] | None, caplog: pytest.LogCaptureFixture
) -> None:
    """graphql-core refuses a negative initialCount only as it executes, with a ValueError: that was an
    INTERNAL error and a logged traceback for each such request."""
    for accept in ("application/json", PARTS["accept"]):
        response = app.client.post(
            "/graphql", json={"query": query, "variables": variables}, headers={"accept": accept}
        )
        error = response.json()["errors"][0]
        assert error["extensions"]["code"] == "BAD_INPUT", response.text
        assert "initialCount" in error["message"]
    fixed = app.data(query.replace("-1", "2").replace("Count: null", "Count: 2"), {"n": 2} if "$n" in query else None)
    assert fixed == app.data("{ datasets { id } }")
    streamed = app.client.post(
        "/graphql/stream", json={"query": query, "variables": variables}, headers={"accept": "text/event-stream"}
    )
    assert '"code":"BAD_INPUT"' in streamed.text and "initialCount" in streamed.text, streamed.text
    assert "Traceback" not in caplog.text
