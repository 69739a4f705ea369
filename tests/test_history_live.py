"""Live results and exports name the version they are about (issue 20): `datasetEvents` carries each
change's version (a restore's too), a `watch` result's `meta.versions` names the version of every
dataset it was computed on, and an export of an old version downloads that version's rows. A real
uvicorn on loopback, shared by the module's tests (each makes its own datasets)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from support import running_server, upload_request
from wsclient import Ws

pytestmark = pytest.mark.e2e

V1 = b"id,name,score\n1,a,1.5\n2,b,2.5\n3,c,\n"
V2 = b"id,name,score,flag\n10,x,9.5,true\n11,y,8.5,false\n"
CLASSES = b"name,group\na,first\nb,second\nz,third\n"
APPEND = """mutation($d: ID!, $r: JSON!) { appendRows(dataset: $d, rows: $r) {
  success error { message } dataset { version } } }"""
RESTORE = """mutation($d: ID!, $v: Int!) { restoreVersion(dataset: $d, version: $v) {
  success error { message } dataset { version } } }"""
EVENTS = "subscription($d: ID) { datasetEvents(dataset: $d) { kind dataset version rowCount } }"
WATCH = """subscription($d: ID!) { watch(dataset: $d, result: COUNT) {
  success data meta { versions } } }"""
WATCH_JOINED = """subscription($d: ID!, $r: ID!) { watch(dataset: $d, result: COUNT,
  steps: [{join: {right: $r, on: ["name"]}}]) { success data meta { versions } } }"""
EXPORT = """query($d: ID!, $v: Int!, $f: ExportFormat!) { dataset(id: $d) { at(version: $v) {
  export(format: $f) { success error { code message } data } } } }"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("history-live")) as base:
        yield base


def gql(base: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    body = httpx.post(base + "/graphql", json={"query": query, "variables": variables}, timeout=60).json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


def upload(base: str, content: bytes, name: str, replace: str | None = None) -> dict[str, Any]:
    response = httpx.post(base + "/graphql", **upload_request(content, name, replace=replace), timeout=60)
    payload: dict[str, Any] = response.json()["data"]["uploadDataset"]
    assert payload["success"], payload["error"]
    return payload


def next_of(ws: Ws, op: str) -> dict[str, Any]:
    """The data of the next result of subscription `op`, skipping any other's (a late one, say)."""
    while True:
        message = ws.next_message()
        if message.get("id") == op:
            assert message["type"] == "next", message
            data: dict[str, Any] = message["payload"]["data"]
            return data


def changed(base: str, query: str, variables: dict[str, Any], field: str) -> int:
    payload = gql(base, query, variables)[field]
    assert payload["success"], payload["error"]
    return int(payload["dataset"]["version"])


def test_dataset_events_name_the_version_each_change_made(server: str) -> None:
    dataset = upload(server, V1, "scores.csv")["dataset"]["id"]
    with Ws(server) as ws:
        ws.subscribe(EVENTS, {"d": dataset}, op="events")
        # A watch sent after it answers once it has computed: by then the events subscription is live.
        ws.subscribe(WATCH, {"d": dataset}, op="watch")
        assert next_of(ws, "watch")["watch"]["data"] == {"count": 3}
        ws.complete("watch")
        assert changed(server, APPEND, {"d": dataset, "r": [{"id": 4, "name": "d", "score": 4.5}]}, "appendRows") == 2
        event = next_of(ws, "events")["datasetEvents"]
        assert event == {"kind": "APPENDED", "dataset": dataset, "version": 2, "rowCount": 4}
        assert upload(server, V2, "scores.csv", replace=dataset)["dataset"]["version"] == 3
        event = next_of(ws, "events")["datasetEvents"]
        assert event == {"kind": "REPLACED", "dataset": dataset, "version": 3, "rowCount": 2}
        event = next_of(ws, "events")["datasetEvents"]  # V2 adds a column: the drift follows its version's event
        assert event == {"kind": "SCHEMA_CHANGED", "dataset": dataset, "version": 3, "rowCount": 2}
        assert changed(server, RESTORE, {"d": dataset, "v": 2}, "restoreVersion") == 4
        event = next_of(ws, "events")["datasetEvents"]
        assert event == {"kind": "REPLACED", "dataset": dataset, "version": 4, "rowCount": 4}
        event = next_of(ws, "events")["datasetEvents"]  # and the restore takes it away again
        assert event == {"kind": "SCHEMA_CHANGED", "dataset": dataset, "version": 4, "rowCount": 4}


def test_a_watch_result_names_the_versions_it_was_computed_on(server: str) -> None:
    dataset = upload(server, V1, "scores.csv")["dataset"]["id"]
    with Ws(server) as ws:
        ws.subscribe(WATCH, {"d": dataset})
        first = ws.next_data()["watch"]
        assert (first["data"], first["meta"]["versions"]) == ({"count": 3}, {dataset: 1})
        assert changed(server, APPEND, {"d": dataset, "r": [{"id": 4, "name": "d", "score": 4.5}]}, "appendRows") == 2
        pushed = ws.next_data()["watch"]
        assert (pushed["data"], pushed["meta"]["versions"]) == ({"count": 4}, {dataset: 2})
        assert changed(server, RESTORE, {"d": dataset, "v": 1}, "restoreVersion") == 3
        restored = ws.next_data()["watch"]
        assert (restored["data"], restored["meta"]["versions"]) == ({"count": 3}, {dataset: 3})


def test_a_watch_over_a_join_names_both_datasets_versions(server: str) -> None:
    left = upload(server, V1, "scores.csv")["dataset"]["id"]
    right = upload(server, CLASSES, "classes.csv")["dataset"]["id"]
    with Ws(server) as ws:
        ws.subscribe(WATCH_JOINED, {"d": left, "r": right})
        first = ws.next_data()["watch"]
        assert (first["data"], first["meta"]["versions"]) == ({"count": 2}, {left: 1, right: 1})
        assert changed(server, APPEND, {"d": right, "r": [{"name": "c", "group": "third"}]}, "appendRows") == 2
        pushed = ws.next_data()["watch"]
        assert (pushed["data"], pushed["meta"]["versions"]) == ({"count": 3}, {left: 1, right: 2})


def test_a_watch_of_a_missing_dataset_names_no_version(server: str) -> None:
    with Ws(server) as ws:
        ws.subscribe(WATCH, {"d": "no-such-dataset"})
        answer = ws.next_data()["watch"]
        assert answer["success"] is False and answer["meta"]["versions"] is None


def test_a_query_result_names_no_versions(server: str) -> None:
    dataset = upload(server, V1, "scores.csv")["dataset"]["id"]
    query = "query($d: ID!) { dataset(id: $d) { count { meta { versions } } } }"
    assert gql(server, query, {"d": dataset})["dataset"]["count"]["meta"]["versions"] is None


@pytest.mark.parametrize("fmt", ["CSV", "PARQUET"])
def test_an_export_of_an_old_version_downloads_its_rows(server: str, fmt: str, tmp_path: Path) -> None:
    dataset = upload(server, V1, "scores.csv")["dataset"]["id"]
    upload(server, V2, "scores.csv", replace=dataset)
    exports = {}
    for version in (1, 2):
        exported = gql(server, EXPORT, {"d": dataset, "v": version, "f": fmt})["dataset"]["at"]["export"]
        assert exported["success"], exported["error"]
        url = exported["data"]["url"]
        assert url.startswith(server + "/exports/"), url
        response = httpx.get(url, timeout=60)
        assert response.status_code == 200
        read = pl.read_csv if fmt == "CSV" else pl.read_parquet
        exports[version] = read(io.BytesIO(response.content))
    assert exports[1].to_dict(as_series=False) == {"id": [1, 2, 3], "name": ["a", "b", "c"], "score": [1.5, 2.5, None]}
    assert exports[2].to_dict(as_series=False) == {
        "id": [10, 11], "name": ["x", "y"], "score": [9.5, 8.5], "flag": [True, False],
    }  # fmt: skip
