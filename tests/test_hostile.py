"""What one hostile or careless request can do (issue 16): plans with thousands of steps, answers
of hundreds of MB, workbooks that lie about their sizes, JSON nested thousands deep, a key revoked
under an open websocket, a DNS-rebinding page, GET requests with side effects, and table names
that differ from the allowlist only in case. Each is refused in the user's terms and the server
keeps serving."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import xlsxwriter
from promtext import sample
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from support import (
    DATA,
    Api,
    add_key,
    make_settings,
    require_service,
    running_server,
    serving,
    staged_files,
    upload_over_http,
)

from server.app import create_app
from storage import MetadataStore

COUNT = '{ dataset(id: "tips") { pipeline(steps: $steps) { count { success data error { code message } } } } }'
RESULT = "success data error { code message }"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app with small limits (5 steps, 1.5 KiB answers, 500 input values), tips uploaded once; its
    tests only read."""
    settings = make_settings(
        tmp_path_factory.mktemp("small"), max_steps=5, max_result_mb=1.5 / 1024, max_input_values=500
    )
    with serving(settings) as api:
        api.upload_ok(DATA / "tips.csv")
        yield api


def _steps(n: int) -> list[dict[str, Any]]:
    return [{"filter": [{"column": "tip", "op": "GE", "value": 0}]}] * n


def _count(api: Api, steps: list[dict[str, Any]]) -> dict[str, Any]:
    query = "query($steps: [Step!]!) " + COUNT
    answer: dict[str, Any] = api.data(query, {"steps": steps})["dataset"]["pipeline"]["count"]
    return answer


# ---- 1. steps per plan -------------------------------------------------------------------------------


def _refused_before_graphql(api: Api, query: str, variables: dict[str, Any]) -> str:
    """The message of a request refused before its variables were coerced (a GraphQL error, no data)."""
    body = api.query(query, variables)
    assert body["data"] is None and len(body["errors"]) == 1, body
    assert body["errors"][0]["extensions"]["code"] == "BAD_INPUT"
    message: str = body["errors"][0]["message"]
    return message


def test_a_pipeline_within_max_steps_runs_and_one_past_it_is_refused_before_it_is_built(small: Api) -> None:
    assert _count(small, _steps(5)) == {"success": True, "data": {"count": 244}, "error": None}
    # A list of steps in the variables is counted before GraphQL turns it into objects: 5,000 steps
    # cost no more than 5 (coercing them held the event loop for a third of a second).
    message = _refused_before_graphql(small, "query($steps: [Step!]!) " + COUNT, {"steps": _steps(5000)})
    assert "at most 5 steps (setting max_steps)" in message and "5,000" in message


def test_variables_past_max_input_values_are_refused_before_they_are_coerced(small: Api) -> None:
    query = 'query($w: [Condition!]!) { dataset(id: "tips") { filter(where: $w) { count { success data } } } }'
    where = [{"column": "tip", "op": "GE", "value": 0}] * 40  # 161 values counted by type
    assert small.data(query, {"w": where})["dataset"]["filter"]["count"] == {"success": True, "data": {"count": 244}}
    message = _refused_before_graphql(small, query, {"w": where * 50})
    assert "more than 500 values (setting max_input_values)" in message
    # A JSON value counts once however big it is: an IN list of 20,000 values is one value.
    big_in = [{"column": "size", "op": "IN", "value": list(range(20_000))}]
    assert small.data(query, {"w": big_in})["dataset"]["filter"]["count"]["success"] is True


def test_chained_transforms_and_clean_steps_count_against_max_steps(small: Api) -> None:
    chained = small.data(
        '{ dataset(id: "tips") { filter(where: [{column: "tip", op: GE, value: 0}]) {'
        ' pipeline(steps: [{select: ["tip"]}, {select: ["tip"]}, {select: ["tip"]}, {select: ["tip"]},'
        ' {select: ["tip"]}]) { count { success error { code message } } } } } }'
    )["dataset"]["filter"]["pipeline"]["count"]
    assert chained["success"] is False and "max_steps" in chained["error"]["message"]
    cleans = [{"trim": {"columns": ["day"]}}] * 6
    cleaned = small.data(
        'query($c: [CleanStep!]!) { dataset(id: "tips") { clean(steps: $c) { count { success error { code } } } } }',
        {"c": cleans},
    )["dataset"]["clean"]["count"]
    assert cleaned == {"success": False, "error": {"code": "BAD_INPUT"}}


def test_save_frame_refuses_too_many_steps_and_makes_nothing(small: Api) -> None:
    query = (
        'mutation($steps: [Step!]!) { saveFrame(dataset: "tips", name: "many", steps: $steps)'
        " { success error { code message } dataset { id } } }"
    )
    assert "max_steps" in _refused_before_graphql(small, query, {"steps": _steps(6)})
    # Steps that pass the count in the variables but not with the clean steps inside them.
    cleaning = [{"clean": [{"trim": {"columns": ["day"]}}] * 3}] * 2
    payload = small.data(query, {"steps": cleaning})["saveFrame"]
    assert payload["success"] is False and payload["error"]["code"] == "BAD_INPUT"
    assert "max_steps" in payload["error"]["message"] and payload["dataset"] is None
    assert [d["id"] for d in small.data("{ datasets { id } }")["datasets"]] == ["tips"]


# ---- 2. bytes per answer -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        "rows(limit: 244, cache: BYPASS)",
        'chart(spec: {kind: SCATTER, x: "total_bill", y: "tip"}, cache: BYPASS)',
        'pipeline(steps: [{select: ["total_bill"]}]) { valueCounts(column: "total_bill", limit: 1000, cache: BYPASS)',
    ],
)
def test_an_answer_over_max_result_mb_is_too_large_and_small_ones_still_work(small: Api, field: str) -> None:
    closing = " }" if field.startswith("pipeline") else ""
    got = small.data('{ dataset(id: "tips") { %s { %s }%s } }' % (field, RESULT, closing))["dataset"]
    answer = next(iter(got.values()))
    answer = answer.get("valueCounts", answer)
    assert answer["success"] is False and answer["error"]["code"] == "TOO_LARGE", answer
    assert "max_result_mb" in answer["error"]["message"]
    assert small.data('{ dataset(id: "tips") { rows(limit: 3) { success } } }')["dataset"]["rows"]["success"]


# ---- 4. workbooks that lie about their sizes ---------------------------------------------------------


def _lying_workbook(tmp_path: Path) -> bytes:
    """A real workbook plus a part of 200 MiB of zeros whose headers say it is 1,000 bytes."""
    good = tmp_path / "good.xlsx"
    book = xlsxwriter.Workbook(str(good))
    book.add_worksheet().write_row(0, 0, ["a", "b"])
    book.close()
    buf = io.BytesIO()
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("xl/media/big.bin", b"\0" * (200 * 1024 * 1024))
    data = bytearray(buf.getvalue())
    name = b"xl/media/big.bin"
    for signature, name_at, size_at, skip in ((b"PK\x03\x04", 26, 22, 30), (b"PK\x01\x02", 28, 24, 46)):
        pos = data.find(signature)
        while pos >= 0:
            (length,) = struct.unpack_from("<H", data, pos + name_at)
            if data[pos + skip : pos + skip + length] == name:
                struct.pack_into("<I", data, pos + size_at, 1000)
            pos = data.find(signature, pos + 4)
    return bytes(data)


def test_a_workbook_part_that_lies_about_its_size_is_stopped_by_what_it_inflates_to(api: Api, tmp_path: Path) -> None:
    payload = api.upload(_lying_workbook(tmp_path), "bomb.xlsx")
    assert payload["success"] is False and payload["error"]["code"] == "TOO_LARGE", payload
    assert "zip bomb" in payload["error"]["message"]
    assert staged_files(api.settings.data_dir) == []
    assert api.data("{ datasets { id } }")["datasets"] == []


# ---- 5. deep and malformed input ---------------------------------------------------------------------


@pytest.mark.parametrize("depth", [65, 5_000, 100_000])
def test_json_nested_past_max_json_depth_is_bad_input_naming_the_setting(small: Api, depth: int) -> None:
    value = "[" * depth + "]" * depth
    body = '{"query": "query($v: JSON) { __typename }", "variables": {"v": %s}}' % value
    response = small.client.post("/graphql", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "BAD_INPUT" and "max_json_depth" in error["message"]


def test_a_literal_nested_past_max_json_depth_is_refused_by_validation(small: Api) -> None:
    deep = "[" * 70 + "1" + "]" * 70
    body = small.query(
        '{ dataset(id: "tips") { filter(where: [{column: "tip", op: IN, value: %s}]) { count { success } } } }' % deep
    )
    assert body["data"] is None and "max_json_depth" in body["errors"][0]["message"]


def test_filter_values_within_the_depth_are_answered_as_problems(small: Api) -> None:
    deep = json.loads("[" * 60 + "1" + "]" * 60)
    query = 'query($v: JSON) { dataset(id: "tips") { filter(where: [{column: "tip", op: IN, value: $v}]) { count { %s } } } }'
    answer = small.data(query % RESULT, {"v": deep})["dataset"]["filter"]["count"]
    assert answer["error"]["code"] == "BAD_INPUT"


@pytest.mark.parametrize(
    ("variables", "mapping"),
    [
        ({"file": "x"}, ["variables.file.deeper"]),
        ({"file": None}, ["variables.0.file"]),
        ({"file": [1]}, ["variables.file.9"]),
    ],
)
def test_a_multipart_map_through_non_objects_is_bad_input(small: Api, variables: Any, mapping: list[str]) -> None:
    operations = {
        "query": "mutation($file: Upload!) { uploadDataset(file: $file) { success } }",
        "variables": variables,
    }
    response = small.client.post(
        "/graphql",
        data={"operations": json.dumps(operations), "map": json.dumps({"0": mapping})},
        files={"0": ("t.csv", b"a\n1\n", "text/csv")},
        headers={"Apollo-Require-Preflight": "true"},
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_INPUT"


def test_a_string_where_an_upload_is_expected_is_bad_input(small: Api) -> None:
    body = small.query(
        "mutation($file: Upload!) { uploadDataset(file: $file) { success error { code message } } }",
        {"file": "not a file"},
    )
    payload = body["data"]["uploadDataset"]
    assert payload["success"] is False and payload["error"]["code"] == "BAD_INPUT"
    assert "multipart" in payload["error"]["message"]


def test_a_websocket_message_nested_too_deep_closes_only_that_socket(small: Api) -> None:
    with small.client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
        ws.send_text('{"type": "connection_init", "payload": %s}' % ("[" * 5000 + "]" * 5000))
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
        assert closed.value.code == 4400
    assert small.data("{ __typename }") == {"__typename": "Query"}


# ---- 7. revoked keys on open websockets --------------------------------------------------------------


def test_a_revoked_key_closes_its_open_websocket_within_a_second(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys="on")
    key = add_key(settings.data_dir, "phone")
    client = TestClient(create_app(settings))
    with client, client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
        ws.send_json({"type": "connection_init", "payload": {"apiKey": key}})
        assert ws.receive_json()["type"] == "connection_ack"
        ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": "subscription { datasetEvents { kind } }"}})
        store = MetadataStore(settings.resolved_metadata_url)
        try:
            assert store.revoke_key("phone")
        finally:
            store.close()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
        assert closed.value.code == 4403  # on today's main the socket stays open: pytest-timeout fails it


# ---- 8. DNS rebinding and GET side effects -----------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "192.168.1.20", "127.0.0.1.evil.example"])
def test_with_keys_off_a_request_for_another_host_is_refused(small: Api, host: str) -> None:
    response = small.client.post("/graphql", json={"query": "{ __typename }"}, headers={"host": host})
    assert response.status_code == 421
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_INPUT"
    assert "allowed_hosts" in response.json()["errors"][0]["message"]


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "app.localhost"])
def test_with_keys_off_loopback_hosts_are_answered(small: Api, host: str) -> None:
    response = small.client.post("/graphql", json={"query": "{ __typename }"}, headers={"host": host})
    assert response.json() == {"data": {"__typename": "Query"}}


def test_a_websocket_for_another_host_is_closed(small: Api) -> None:
    with pytest.raises(WebSocketDisconnect) as closed:  # noqa: SIM117
        with small.client.websocket_connect(
            "/graphql", subprotocols=["graphql-transport-ws"], headers={"host": "evil.example"}
        ):
            pass
    assert closed.value.code == 1008


def test_with_keys_on_any_host_may_ask_with_a_key(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys="on", allowed_hosts="")
    key = add_key(settings.data_dir, "k")
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/graphql", json={"query": "{ __typename }"}, headers={"host": "api.example", "x-api-key": key}
        )
        assert response.json() == {"data": {"__typename": "Query"}}


def test_get_queries_may_not_export(small: Api) -> None:
    query = '{ dataset(id: "tips") { export(format: CSV) { success error { code message } } } }'
    response = small.client.get("/graphql", params={"query": query})
    answer = response.json()["data"]["dataset"]["export"]
    assert answer["success"] is False and answer["error"]["code"] == "BAD_INPUT"
    assert "POST" in answer["error"]["message"]
    assert (
        not (small.settings.data_dir / "exports").exists()
        or list((small.settings.data_dir / "exports").iterdir()) == []
    )


# ---- 9. allowlists match names exactly ---------------------------------------------------------------

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def cased(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A schema with allowed_t (allowed) and "ALLOWED_T" (a different table, with a secret)."""
    require_service(5432, "PostgreSQL")
    schema = f"dg_case_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        conn.exec_driver_sql(f"CREATE TABLE {schema}.allowed_t (v TEXT)")
        conn.exec_driver_sql(f"INSERT INTO {schema}.allowed_t VALUES ('fine')")
        conn.exec_driver_sql(f'CREATE TABLE {schema}."ALLOWED_T" (v TEXT)')
        conn.exec_driver_sql(f"INSERT INTO {schema}.\"ALLOWED_T\" VALUES ('secret')")
    try:
        yield tmp_path, schema
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def _cased_sources(folder: Path, schema: str, tables: str) -> str:
    path = folder / "sources.yaml"
    path.write_text(
        f"sources:\n  db:\n    kind: postgresql\n    url: {PG_ADMIN}\n    schema: {schema}\n    tables: {tables}\n"
    )
    return str(path)


def test_an_allowlist_names_tables_exactly_as_the_database_spells_them(cased: tuple[Path, str]) -> None:
    folder, schema = cased
    with serving(make_settings(folder, sources=_cased_sources(folder, schema, "[allowed_t]"))) as api:
        assert api.data('{ source(id: "db") { tables } }')["source"]["tables"] == ["allowed_t"]
        sql = api.data('{ sql(source: "db", query: "SELECT v FROM \\"ALLOWED_T\\"") { %s } }' % RESULT)["sql"]
        assert sql["success"] is False and sql["error"]["code"] == "READ_ONLY"
        imported = api.data('mutation { importTable(source: "db", table: "ALLOWED_T") { success error { code } } }')[
            "importTable"
        ]
        assert imported == {"success": False, "error": {"code": "NOT_FOUND"}}
        linked = api.data(
            'mutation { importTable(source: "db", table: "ALLOWED_T", mode: LINK) { success error { code } } }'
        )["importTable"]
        assert linked == {"success": False, "error": {"code": "NOT_FOUND"}}
        fine = api.data('{ sql(source: "db", query: "SELECT v FROM allowed_t") { %s } }' % RESULT)["sql"]
        assert fine["data"] == [{"v": "fine"}]


def test_a_linked_table_taken_off_the_allowlist_stops_answering_after_a_restart(cased: tuple[Path, str]) -> None:
    folder, schema = cased
    settings = make_settings(folder, sources=_cased_sources(folder, schema, "[allowed_t]"))
    with serving(settings) as api:
        linked = api.data(
            'mutation { importTable(source: "db", table: "allowed_t", mode: LINK) { success dataset { id } } }'
        )["importTable"]
        assert linked["success"], linked
        dataset = linked["dataset"]["id"]
    narrowed = make_settings(folder, sources=_cased_sources(folder, schema, "[]"))
    with serving(narrowed) as api:
        rows = api.data('{ dataset(id: "%s") { rows { %s } } }' % (dataset, RESULT))["dataset"]["rows"]
        assert rows["success"] is False and rows["error"]["code"] == "READ_ONLY"
        assert "no longer" in rows["error"]["message"]


# ---- items 1-3 together, against a real server -------------------------------------------------------

# A probe in a process of its own (its timing is not disturbed by the hostile threads of this one):
# GET /healthz every 20 ms for the given seconds, printing each latency in ms.
_PROBE = """
import sys, time, httpx
base, seconds = sys.argv[1], float(sys.argv[2])
with httpx.Client(base_url=base, timeout=5) as client:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        print((time.perf_counter() - started) * 1000, flush=True)
        time.sleep(0.02)
"""
_HEAVY = """{ dataset(id: "diamonds") { join(right: "diamonds", on: ["cut"]) {
  sort(by: [{column: "price_right"}]) { rows(limit: 5%s) { success error { code } } } } } }"""


def _hostile(base: str, kind: int, until: float, seen: dict[str, int]) -> None:
    """Items 1-3 in a loop: plans with thousands of steps, answers over the byte cap, and deadlines as a
    lever (the shortest timeoutMs, and clients that leave at once)."""
    steps = json.dumps([{"filter": [{"column": "tip", "op": "GE", "value": 0}]}] * 3000)

    def count(what: str) -> None:
        seen[f"{kind}:{what}"] = seen.get(f"{kind}:{what}", 0) + 1

    with httpx.Client(base_url=base, timeout=10) as client:
        while time.monotonic() < until:
            try:
                if kind == 0:
                    body = {"query": "query($steps: [Step!]!) " + COUNT, "variables": {"steps": json.loads(steps)}}
                    count(client.post("/graphql", json=body).json()["errors"][0]["extensions"]["code"])
                elif kind == 1:
                    query = (
                        '{ dataset(id: "diamonds") { rows(limit: 10000, cache: BYPASS) { success error { code } } } }'
                    )
                    got = client.post("/graphql", json={"query": query}).json()["data"]["dataset"]["rows"]
                    count(got["error"]["code"] if got["error"] else "success")
                elif kind == 2:
                    got = client.post("/graphql", json={"query": _HEAVY % ", timeoutMs: 250, cache: BYPASS"}).json()
                    rows = got["data"]["dataset"]["join"]["sort"]["rows"]
                    count(rows["error"]["code"] if rows["error"] else "success")
                else:
                    client.post("/graphql", json={"query": _HEAVY % ", cache: BYPASS"}, timeout=0.05)
                    count("answered")
            except httpx.TimeoutException:
                count("left")
            except Exception as exc:  # an answer of the wrong shape: recorded, so the test names it
                count(type(exc).__name__)


def _loop_lag(base: str) -> tuple[float, float, float]:
    """The server's event-loop lag samples so far, and how many of them were over 100 ms and over 500 ms late."""
    text = httpx.get(base + "/metrics", timeout=10).text
    count = sample(text, "datagraph_event_loop_lag_seconds_count")
    late = (count - sample(text, "datagraph_event_loop_lag_seconds_bucket", le=le) for le in ("0.1", "0.5"))
    return (count, *late)


@pytest.mark.slow
def test_healthz_stays_fast_while_a_hostile_client_runs_items_1_to_3(tmp_path: Path) -> None:
    seconds = 10.0
    # No rate limit: the other guards alone must hold (a budget would stop the client sooner).
    with running_server(tmp_path, "--rate-limit", "", "--max-result-mb", "0.5", workers=2) as base:
        upload_over_http(base, DATA / "tips.csv")
        upload_over_http(base, DATA / "diamonds.csv")
        before = httpx.get(base + "/readyz").json()["workers"]
        lag_before = _loop_lag(base)
        probe = subprocess.Popen([sys.executable, "-c", _PROBE, base, str(seconds)], stdout=subprocess.PIPE, text=True)
        until = time.monotonic() + seconds
        seen: dict[str, int] = {}
        threads = [threading.Thread(target=_hostile, args=(base, k, until, seen)) for k in (0, 1, 2, 3, 3)]
        for thread in threads:
            thread.start()
        out, _ = probe.communicate(timeout=seconds + 30)
        for thread in threads:
            thread.join(30)
        assert probe.returncode == 0
        latencies = sorted(float(line) for line in out.split())
        p95, p99 = (latencies[int(len(latencies) * q) - 1] for q in (0.95, 0.99))
        samples, held, stalled = (a - b for a, b in zip(_loop_lag(base), lag_before, strict=True))
        after = httpx.get(base + "/readyz").json()["workers"]
        kills = after["killed"] - before["killed"]
        print(
            f"healthz: {len(latencies)} probes, p50 {latencies[len(latencies) // 2]:.1f} ms, p95 {p95:.1f} ms,"
            f" p99 {p99:.1f} ms; event loop late by over 100 ms in {held:g} of {samples:g} samples, over 500 ms in"
            f" {stalled:g};"
            f" hostile answers {seen}; workers killed {kills}"
        )
        assert len(latencies) > 200 and samples > 100
        # The server's own loop (its lag metric, sampled every 50 ms) ran late by over 100 ms in at most 1%
        # of samples and never by over 500 ms (a single long hold is one sample), and the probe's answers
        # took under 50 ms 95 times in 100. Not a p99 of 50 ms at
        # the probe, as this test once asked: on two cores shared with five hostile clients, two workers
        # and their respawns, the top 1% is the kernel's scheduling (of the probe, and of the server) as
        # much as the server, and moved between 21 and 120 ms from run to run with the code unchanged.
        assert held <= samples / 100, f"event loop late by over 100 ms in {held:g} of {samples:g} samples"
        assert stalled == 0, f"event loop late by over 500 ms {stalled:g} times"
        assert p95 < 50, f"/healthz p95 {p95:.1f} ms under hostile load"
        # Every kind of hostile request was answered as the refusal it is, and nothing else: the
        # plan too long, the answer too large (or still queued behind the heavy work when the
        # client gave up), the deadline, the client that left.
        allowed = {"0:BAD_INPUT", "1:TOO_LARGE", "1:left", "2:TIMEOUT", "2:left", "3:left"}
        assert set(seen) <= allowed, seen
        assert seen.get("0:BAD_INPUT") and seen.get("2:TIMEOUT") and seen.get("3:left"), seen
        # Killed workers were replaced at a bounded pace: 4 at once, then one a second (each kill
        # needs a live worker: the 2 there were, and the replacements).
        assert kills <= 2 + 4 + seconds + 2, kills
        big = '{ dataset(id: "diamonds") { rows(limit: 10000, cache: BYPASS) { success error { code } } } }'
        assert httpx.post(base + "/graphql", json={"query": big}, timeout=60).json()["data"]["dataset"]["rows"] == {
            "success": False,
            "error": {"code": "TOO_LARGE"},
        }
        ok = httpx.post(base + "/graphql", json={"query": '{ dataset(id: "tips") { count { data } } }'}, timeout=60)
        assert ok.json()["data"]["dataset"]["count"]["data"] == {"count": 244}
