"""A dataset's history kept by two real `datagraph serve` processes on one data directory and one
PostgreSQL metadata database (issue 20): both list the same versions with the right origins, numbers
unique and consecutive even when both change one dataset at once; `at(version:)` and `diff` answer
the same on both, whichever process made the versions; and pruning by one process never removes the
version another is serving as current, nor one that stopped being current a moment ago."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from promtext import sample
from support import running_server, upload_over_http

pytestmark = pytest.mark.slow  # two or three server processes each

V1 = b"id,name,score\n1,a,1.5\n2,b,2.5\n3,c,3.5\n"
V2 = b"id,name,score\n2,b,2.5\n3,c,9.0\n4,d,4.5\n"
APPEND = "mutation($d: ID!, $r: JSON!) { appendRows(dataset: $d, rows: $r) { success error { code message } } }"
RESTORE = """mutation($d: ID!, $v: Int!) { restoreVersion(dataset: $d, version: $v) {
  success error { code message } dataset { version } } }"""
REPLACE = """mutation($file: Upload!, $d: ID) { uploadDataset(file: $file, replace: $d) {
  success error { code message } dataset { version } } }"""
VERSIONS = """query($d: ID!) { dataset(id: $d) { version rowCount
  versions(limit: 100) { number origin rowCount } } }"""
AT = """query($d: ID!, $v: Int!) { dataset(id: $d) { at(version: $v) { version rowCount
  rows(limit: 10, cache: BYPASS) { success data } count(cache: BYPASS) { data } } } }"""
DIFF = """query($d: ID!, $after: Int!, $before: Int!) { dataset(id: $d) { at(version: $after) {
  diff(against: {version: $before}, key: ["id"], cache: BYPASS) { success error { code message } data } } } }"""
CHANGED_MEANWHILE = "changed meanwhile"


def gql(base: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    body = httpx.post(base + "/graphql", json={"query": query, "variables": variables}, timeout=90).json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


def replace(base: str, dataset: str, content: bytes) -> int:
    operations = {"query": REPLACE, "variables": {"file": None, "d": dataset}}
    response = httpx.post(
        base + "/graphql",
        data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.file"]})},
        files={"0": ("scores.csv", content, "text/csv")},
        headers={"Apollo-Require-Preflight": "true"},
        timeout=90,
    )
    payload = response.json()["data"]["uploadDataset"]
    assert payload["success"], payload
    return int(payload["dataset"]["version"])


def append(base: str, dataset: str, row: dict[str, Any]) -> int:
    """Append one row, again while another process's change came first (the documented answer is
    "try again"); return how many times it was refused so."""
    refused = 0
    while True:
        payload = gql(base, APPEND, {"d": dataset, "r": [row]})["appendRows"]
        if payload["success"]:
            return refused
        assert payload["error"]["code"] == "BAD_INPUT" and CHANGED_MEANWHILE in payload["error"]["message"], payload
        refused += 1
        assert refused < 200, "an append was refused 200 times in a row"


def versions(base: str, dataset: str) -> list[tuple[int, str, int]]:
    listed = gql(base, VERSIONS, {"d": dataset})["dataset"]["versions"]
    return [(v["number"], v["origin"], v["rowCount"]) for v in listed]


def ids(answer: dict[str, Any]) -> list[int]:
    return sorted(row["id"] for row in answer["rows"]["data"])


@pytest.fixture
def two(tmp_path: Path, scratch_postgres: str) -> Any:
    """Start two servers, A and B, on one data directory and one fresh PostgreSQL metadata database."""
    shared = tmp_path / "shared-data"
    env = {"DATAGRAPH_METADATA_URL": scratch_postgres}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        running_server(tmp_path / "a", "--data-dir", str(shared), env=env) as a,
        running_server(tmp_path / "b", "--data-dir", str(shared), env=env) as b,
    ):
        yield a, b, shared, env


def test_two_processes_keep_one_history_of_a_dataset(tmp_path: Path, two: Any) -> None:
    a, b, _, _ = two
    csv = tmp_path / "scores.csv"
    csv.write_bytes(V1)
    dataset = upload_over_http(a, csv)  # v1 on A
    assert replace(b, dataset, V2) == 2  # v2 on B
    assert append(a, dataset, {"id": 5, "name": "e", "score": 5.5}) == 0  # v3 on A
    restored = gql(b, RESTORE, {"d": dataset, "v": 1})["restoreVersion"]  # v4 on B
    assert restored["success"] and restored["dataset"]["version"] == 4, restored
    made = [(4, "RESTORE", 3), (3, "APPEND", 4), (2, "REPLACE", 3), (1, "UPLOAD", 3)]
    assert versions(a, dataset) == versions(b, dataset) == made

    expected = {1: [1, 2, 3], 2: [2, 3, 4], 3: [2, 3, 4, 5], 4: [1, 2, 3]}
    for number, rows in expected.items():
        on_a = gql(a, AT, {"d": dataset, "v": number})["dataset"]["at"]
        on_b = gql(b, AT, {"d": dataset, "v": number})["dataset"]["at"]
        assert on_a == on_b
        assert on_a["version"] == number and ids(on_a) == rows
        assert on_a["count"]["data"] == {"count": len(rows)}

    # On A, of versions B made (v4, a restore of v1) against one A made (v3).
    diffed = gql(a, DIFF, {"d": dataset, "after": 4, "before": 3})["dataset"]["at"]["diff"]
    assert diffed["success"], diffed["error"]
    summary = diffed["data"]["summary"]
    assert {k: summary[k] for k in ("added", "removed", "changed", "unchanged")} == {
        "added": 1, "removed": 2, "changed": 1, "unchanged": 1,
    }  # fmt: skip
    assert [(r["_change"], r["id"]) for r in diffed["data"]["rows"]] == [
        ("added", 1), ("changed", 3), ("removed", 4), ("removed", 5),
    ]  # fmt: skip
    changed = diffed["data"]["rows"][1]
    assert (changed["score"], changed["score__before"]) == (3.5, 9.0)
    assert gql(b, DIFF, {"d": dataset, "after": 4, "before": 3})["dataset"]["at"]["diff"] == diffed
    made_on_b = gql(a, DIFF, {"d": dataset, "after": 2, "before": 1})["dataset"]["at"]["diff"]  # v2 by B, v1 by A
    assert [(r["_change"], r["id"]) for r in made_on_b["data"]["rows"]] == [
        ("removed", 1), ("changed", 3), ("added", 4),
    ]  # fmt: skip
    assert made_on_b["data"]["summary"]["unchanged"] == 1

    # Ten appends at each process at once: every version number is taken once, and no row is lost.
    refused: list[int] = []
    rows = [(base, {"id": 100 + i, "name": "n", "score": float(i)}) for i in range(10) for base in (a, b)]
    start = threading.Barrier(len(rows))

    def run(base: str, row: dict[str, Any]) -> None:
        start.wait(30)
        refused.append(append(base, dataset, row))

    threads = [threading.Thread(target=run, args=row) for row in rows]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(refused) == len(rows), "an append did not finish"
    listed = versions(a, dataset)
    assert listed == versions(b, dataset)
    numbers = [n for n, _, _ in listed]
    assert numbers == list(range(4 + len(rows), 0, -1)), numbers  # unique and consecutive
    assert [origin for _, origin, _ in listed[: len(rows)]] == ["APPEND"] * len(rows)
    assert [count for _, _, count in listed[: len(rows)]] == list(range(3 + len(rows), 3, -1))
    final = 3 + len(rows)
    for base in (a, b):
        now = gql(base, AT, {"d": dataset, "v": numbers[0]})["dataset"]["at"]
        assert now["count"]["data"] == {"count": final}
        assert gql(base, VERSIONS, {"d": dataset})["dataset"]["rowCount"] == final


def _age(folder: Path, seconds: float) -> None:
    """Make everything under `folder` look `seconds` old: past the grace a version keeps for queries
    still reading it after it stopped being current."""
    moment = time.time() - seconds
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (moment, moment), follow_symlinks=False)


def test_pruning_by_one_process_keeps_what_another_serves(tmp_path: Path, scratch_postgres: str) -> None:
    shared = tmp_path / "shared-data"
    env = {"DATAGRAPH_METADATA_URL": scratch_postgres}
    for name in "pq":
        (tmp_path / name).mkdir()
    # P keeps one version and sweeps every second: started first, it holds the sweep lease; Q keeps ten.
    pruner = {**env, "DATAGRAPH_KEEP_VERSIONS": "1", "DATAGRAPH_SWEEP_S": "1"}
    with (
        running_server(tmp_path / "p", "--data-dir", str(shared), env=pruner) as p,
        running_server(tmp_path / "q", "--data-dir", str(shared), env=env) as q,
    ):
        held = [
            sample(httpx.get(base + "/metrics", timeout=10).text, "datagraph_lease_held", name="sweep")
            for base in (p, q)
        ]
        assert held == [1, 0], held
        csv = tmp_path / "scores.csv"
        csv.write_bytes(V1)
        dataset = upload_over_http(q, csv)
        for i in range(4):  # v2 .. v5, alternately on Q and P
            assert append(q if i % 2 == 0 else p, dataset, {"id": 10 + i, "name": "x", "score": 0.0}) == 0
        _age(shared / "datasets" / dataset, 3600)  # v1 .. v5 made an hour ago
        assert append(q, dataset, {"id": 20, "name": "y", "score": 1.0}) == 0  # v6 now: v5 stopped being current now
        # P's next sweep prunes v1 .. v4 while both serve; v5 stays for the queries still reading it.
        deadline = time.monotonic() + 30
        while [n for n, _, _ in versions(q, dataset)] != [6, 5] and time.monotonic() < deadline:
            time.sleep(0.2)
        for base in (p, q):
            assert [n for n, _, _ in versions(base, dataset)] == [6, 5], base
            assert gql(base, AT, {"d": dataset, "v": 6})["dataset"]["at"]["count"]["data"] == {"count": 8}
            assert gql(base, AT, {"d": dataset, "v": 5})["dataset"]["at"]["count"]["data"] == {"count": 7}
            assert gql(base, AT, {"d": dataset, "v": 4})["dataset"]["at"] is None
        # Q makes the next version while P sweeps; both read it.
        assert append(q, dataset, {"id": 21, "name": "z", "score": 2.0}) == 0
        for base in (p, q):
            assert gql(base, AT, {"d": dataset, "v": 7})["dataset"]["at"]["count"]["data"] == {"count": 9}
