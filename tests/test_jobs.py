"""jobProgress over a real websocket against a real uvicorn: stages and counts while a job runs, the
final state, a client-chosen job id, and cancellation when the last follower leaves."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import DATA, running_server, staged_files, upload_over_http, upload_request, wait_for
from wsclient import Ws

pytestmark = pytest.mark.e2e
PROGRESS = """subscription($j: ID!) { jobProgress(job: $j) {
  job kind stage rowsProcessed bytesProcessed elapsedMs final error } }"""
BIG_ROWS = 400_000
UPLOAD_WITH_JOB = """mutation($file: Upload!, $job: ID) {
  uploadDataset(file: $file, jobId: $job) { success error { message } } }"""


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobs")


@pytest.fixture(scope="module")
def server(work: Path) -> Iterator[str]:
    big = work / "big.sqlite"
    with sqlite3.connect(big) as conn:
        conn.execute("CREATE TABLE events (id INTEGER, kind TEXT, value REAL)")
        conn.executemany("INSERT INTO events VALUES (?, ?, ?)", ((i, f"k{i % 7}", i * 0.5) for i in range(BIG_ROWS)))
    (work / "sources.yaml").write_text(f"sources:\n  big:\n    kind: sqlite\n    url: sqlite:///{big}\n")
    with running_server(work, "--sources", str(work / "sources.yaml")) as base:
        yield base


def _events_until_final(ws: Ws) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while not events or not events[-1]["final"]:
        events.append(ws.next_data(60)["jobProgress"])
    assert ws.next_message()["type"] == "complete"
    return events


def _in_background(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    return thread, out


def test_an_upload_reports_its_stages_then_the_final_state(server: str) -> None:
    job = uuid.uuid4().hex
    ws = Ws(server)
    try:
        ws.subscribe(PROGRESS, {"j": job})
        request = upload_request((DATA / "titanic.csv").read_bytes(), "titanic.csv")
        operations = {"query": UPLOAD_WITH_JOB, "variables": {"file": None, "job": job}}
        request["data"]["operations"] = json.dumps(operations)
        answer = httpx.post(server + "/graphql", **request, timeout=60).json()["data"]["uploadDataset"]
        assert answer["success"], answer
        events = _events_until_final(ws)
    finally:
        ws.close()
    stages = [e["stage"] for e in events]
    assert stages[0] == "started" and stages[-1] == "succeeded"
    assert {"staging", "parsing", "committing"} <= set(stages), stages
    staged = next(e for e in events if e["stage"] == "parsing")
    assert staged["bytesProcessed"] == (DATA / "titanic.csv").stat().st_size
    final = events[-1]
    assert final == {**final, "job": job, "kind": "uploadDataset", "rowsProcessed": 891, "error": None}
    elapsed = [e["elapsedMs"] for e in events]
    assert elapsed == sorted(elapsed)


def test_an_import_reports_rows_read_while_it_runs(server: str) -> None:
    job = uuid.uuid4().hex
    mutation = """mutation($j: ID!) { importTable(source: "big", table: "events", jobId: $j) {
      success error { message } job { id status } dataset { rowCount } } }"""
    ws = Ws(server)
    try:
        ws.subscribe(PROGRESS, {"j": job})
        thread, out = _in_background(
            lambda: httpx.post(server + "/graphql", json={"query": mutation, "variables": {"j": job}}, timeout=120)
        )
        events = _events_until_final(ws)
        thread.join(120)
    finally:
        ws.close()
    answer = out[0].json()["data"]["importTable"]
    assert answer["success"] and answer["job"] == {"id": job, "status": "SUCCEEDED"}
    assert answer["dataset"]["rowCount"] == BIG_ROWS
    reading = [e["rowsProcessed"] for e in events if e["stage"] == "reading"]
    assert reading and all(0 < n <= BIG_ROWS for n in reading), events  # counts while the rows stream in
    assert reading == sorted(reading)
    assert events[-1]["stage"] == "succeeded" and events[-1]["rowsProcessed"] == BIG_ROWS


def test_a_job_id_must_be_well_formed_and_new(server: str) -> None:
    tips = upload_over_http(server, DATA / "tips.csv")
    mutation = """mutation($d: ID!, $j: ID) { saveFrame(dataset: $d, name: "copy", jobId: $j,
      steps: [{select: ["tip"]}]) { success error { code message } job { id } } }"""

    def save(job: str) -> dict[str, Any]:
        body = {"query": mutation, "variables": {"d": tips, "j": job}}
        payload: dict[str, Any] = httpx.post(server + "/graphql", json=body, timeout=60).json()["data"]["saveFrame"]
        return payload

    for bad in ("short", "has spaces in it", "x" * 41, "../../etc/passwd"):
        answer = save(bad)
        assert answer["error"]["code"] == "BAD_INPUT" and "jobId" in answer["error"]["message"], answer
    job = uuid.uuid4().hex
    assert save(job)["job"] == {"id": job}
    again = save(job)
    assert again["error"]["code"] == "BAD_INPUT" and "already a job" in again["error"]["message"]


def test_a_job_nobody_follows_any_more_is_cancelled_and_leaves_nothing(server: str, work: Path) -> None:
    diamonds = upload_over_http(server, DATA / "diamonds.csv")
    job = uuid.uuid4().hex
    # Every diamond paired with every diamond of the same cut, saved: minutes of work, if let run.
    mutation = """mutation($d: ID!, $j: ID!) { saveFrame(dataset: $d, name: "pairs", jobId: $j,
      steps: [{join: {right: $d, on: ["cut"]}}]) { success error { code message } job { status error } } }"""
    ws = Ws(server)
    try:
        ws.subscribe(PROGRESS, {"j": job})
        started = time.monotonic()
        thread, out = _in_background(
            lambda: httpx.post(
                server + "/graphql", json={"query": mutation, "variables": {"d": diamonds, "j": job}}, timeout=120
            )
        )
        first = ws.next_data(30)["jobProgress"]
        assert first["stage"] == "started" and not first["final"]
        ws.complete()  # the only follower leaves
        thread.join(60)
    finally:
        ws.close()
    answer = out[0].json()["data"]["saveFrame"]
    assert answer["success"] is False and answer["error"]["code"] == "CANCELLED", answer
    assert answer["job"]["status"] == "FAILED" and "cancelled" in answer["job"]["error"]
    assert time.monotonic() - started < 30
    names = httpx.post(server + "/graphql", json={"query": "{ datasets { name } }"}).json()["data"]["datasets"]
    assert "pairs" not in [d["name"] for d in names]
    deadline = time.monotonic() + 10
    while httpx.get(server + "/readyz").json()["workers"]["busy"] != 0:  # the worker was stopped
        assert time.monotonic() < deadline, "a worker is still busy with the cancelled job"
        time.sleep(0.2)
    # No half-written file left behind (the upload's page blocks may still be on their way in: a
    # leftover would stay, a block being written goes into place).
    wait_for(lambda: staged_files(work / "data") == [], 20, "the staging area emptied")


def test_linking_a_table_is_a_job_too(server: str) -> None:
    job = uuid.uuid4().hex
    mutation = """mutation($j: ID!) { importTable(source: "big", table: "events", mode: LINK, jobId: $j) {
      success job { id kind status } dataset { rowCount } } }"""
    with Ws(server) as ws:
        ws.subscribe(PROGRESS, {"j": job})
        thread, out = _in_background(
            lambda: httpx.post(server + "/graphql", json={"query": mutation, "variables": {"j": job}}, timeout=60)
        )
        events = _events_until_final(ws)
        thread.join(60)
    answer = out[0].json()["data"]["importTable"]
    assert answer["success"] and answer["job"] == {"id": job, "kind": "importTable", "status": "SUCCEEDED"}
    assert events[0]["stage"] == "started"
    assert events[-1] == {**events[-1], "stage": "succeeded", "rowsProcessed": BIG_ROWS, "error": None}
