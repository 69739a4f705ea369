"""Disk use is bounded (issue 16, item 12): versions past `keep_versions` are pruned, exports stay
within `export_quota_mb` (the oldest go first), and `appendRows` writes only the rows it adds (the
new version links the previous one's parts, and a background compaction joins them into one file).

Each attack here made the disk grow without bound on the old code: a client appending one row at a
time rewrote the whole dataset each time, every export stayed until its link expired, and versions
were pruned only two behind, by a fixed rule."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from support import DATA, Api, make_settings, require_service, running_server, serving, upload_request, wait_for

from storage import DataDir

APPEND = """mutation($d: ID!, $r: JSON!) { appendRows(dataset: $d, rows: $r) {
  success error { code message } dataset { version rowCount columns { name dtype nullCount missingRate } } } }"""
ROWS = """query($d: ID!) { dataset(id: $d) { rows(limit: 10000, cache: BYPASS) { success error { code message } data } } }"""
COUNT = """query($d: ID!) { dataset(id: $d) { count { data meta { cached } } } }"""
COLUMNS = """query($d: ID!) { dataset(id: $d) { version rowCount columns { name dtype nullCount missingRate } } }"""
EXPORT = """query($d: ID!) { dataset(id: $d) {
  export(format: CSV, cache: BYPASS) { success error { code message } data } } }"""


def _csv(rows: int, seed: int = 3) -> bytes:
    """A CSV that compresses badly (random hex and floats), so its files are about as large as it is."""
    rnd = random.Random(seed)
    lines = "".join(f"{i},{rnd.getrandbits(64):x},{rnd.random()}\n" for i in range(rows))
    return ("id,key,x\n" + lines).encode()


def _append(api: Api, dataset: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    payload: dict[str, Any] = api.data(APPEND, {"d": dataset, "r": rows})["appendRows"]
    assert payload["success"], payload["error"]
    return payload


def _disk_bytes(folder: Path) -> int:
    """Bytes the versions under `folder` take, each file once however many names (hard links) it has.
    Page blocks are left out: a version's pages, made in the background once a page of it is asked
    for (the upload's preview), whenever the pool is idle; they are no copy made by an append."""
    seen: dict[tuple[int, int], int] = {}
    for path in folder.rglob("*"):
        if path.is_file() and not any(part.endswith(".blocks") for part in path.relative_to(folder).parts):
            st = path.stat()
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


def _age(folder: Path, seconds: float) -> None:
    """Make everything under `folder` look `seconds` old (as if the versions were made that long ago)."""
    moment = time.time() - seconds
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (moment, moment))


def test_appending_rows_writes_only_those_rows_and_links_the_rest(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, compact_parts=50)  # no compaction in this test
    with serving(settings) as api:
        dataset = api.upload_ok(_csv(40_000), "big.csv")
        folder = settings.data_dir / "datasets" / dataset
        before = _disk_bytes(folder)
        for n in range(10):
            _append(api, dataset, [{"id": 100_000 + n, "key": "k", "x": 0.5}])
        grown = _disk_bytes(folder) - before
        # Ten full copies would be ten times `before`; ten one-row parts are a few kB each.
        assert grown < before / 10, f"ten one-row appends took {grown:,} bytes beside a {before:,}-byte dataset"
        current = folder / "v11"
        parts = sorted(current.glob("p*.parquet"))
        assert len(parts) == 11 and not (folder / "v11.parquet").exists()
        assert parts[0].stat().st_ino == (folder / "v1.parquet").stat().st_ino  # a link, not a copy
        assert pl.read_parquet(parts[-1])["id"].to_list() == [100_009]
        rows = api.data(ROWS, {"d": dataset})["dataset"]["rows"]
        assert rows["success"], rows["error"]
        ids = [r["id"] for r in rows["data"]]
        assert len(ids) == 10_000 and ids[:3] == [0, 1, 2]  # rows(limit:) reads the parts in order


def test_appended_versions_answer_like_the_same_rows_uploaded_whole(tmp_path: Path) -> None:
    with serving(make_settings(tmp_path, compact_parts=50)) as api:
        dataset = api.upload_ok(DATA / "tips.csv")
        added = [
            {"total_bill": 10.5, "tip": 1.5, "sex": None, "smoker": "No", "day": "Sun", "time": None, "size": 2},
            {"total_bill": None, "tip": 2.0, "sex": "Male", "smoker": None, "day": "Mon", "time": "Lunch", "size": 3},
        ]
        first = _append(api, dataset, added[:1])
        second = _append(api, dataset, added[1:])
        assert first["dataset"]["version"] == 2 and second["dataset"]["version"] == 3
        whole = pl.concat(
            [pl.read_csv(DATA / "tips.csv"), pl.DataFrame(added, schema=pl.read_csv(DATA / "tips.csv").schema)]
        )
        uploaded = api.upload_ok(whole.write_csv().encode(), "whole.csv")
        ours, theirs = (api.data(COLUMNS, {"d": d})["dataset"] for d in (dataset, uploaded))
        assert ours["rowCount"] == theirs["rowCount"] == whole.height
        assert ours["columns"] == theirs["columns"]  # null counts and missing rates merged, not re-read
        assert second["dataset"]["columns"] == theirs["columns"]
        got, want = (api.data(ROWS, {"d": d})["dataset"]["rows"]["data"] for d in (dataset, uploaded))
        assert got == want


def test_parts_are_compacted_in_the_background_and_answers_stay_the_same(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, compact_parts=3)
    with serving(settings) as api:
        dataset = api.upload_ok(DATA / "tips.csv")
        folder = settings.data_dir / "datasets" / dataset
        _append(api, dataset, [{"size": 1}])  # v2: two parts, under the threshold
        counted = api.data(COUNT, {"d": dataset})["dataset"]["count"]
        assert counted["data"] == {"count": 245} and not counted["meta"]["cached"]
        assert not (folder / "v2.parquet").exists()
        expected = api.data(ROWS, {"d": dataset})["dataset"]["rows"]["data"]
        _append(api, dataset, [{"size": 3}])  # v3 has three parts: compaction starts
        compacted = wait_for(lambda: (folder / "v3.parquet").exists() and folder / "v3.parquet", 30, "no compaction")
        assert pl.read_parquet(compacted).height == 246
        recount = api.data(COUNT, {"d": dataset})["dataset"]["count"]
        assert recount["data"] == {"count": 246}
        assert api.data(COUNT, {"d": dataset})["dataset"]["count"]["meta"]["cached"]  # same version, same key
        got = api.data(ROWS, {"d": dataset})["dataset"]["rows"]["data"]
        assert got == [*expected, {**dict.fromkeys(expected[0]), "size": 3}]
        # The next append links the compacted file: two parts, one of them that file.
        _append(api, dataset, [{"size": 4}])
        parts = sorted((folder / "v4").glob("p*.parquet"))
        assert len(parts) == 2 and parts[0].stat().st_ino == compacted.stat().st_ino


def test_versions_past_keep_versions_are_pruned_and_the_current_ones_answer(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, keep_versions=3, compact_parts=50)
    with serving(settings) as api:
        dataset = api.upload_ok(DATA / "tips.csv")
        for n in range(5):
            _append(api, dataset, [{"size": n}])
    folder = settings.data_dir / "datasets" / dataset
    assert {p.name for p in folder.iterdir()} == {"v1.parquet", *(f"v{n}" for n in range(2, 7))}
    _age(folder, 3600)  # made an hour ago: past the grace queries in flight get
    with serving(settings) as api:  # the start-up sweep prunes
        assert sorted(p.name for p in folder.iterdir()) == ["v4", "v5", "v6"]
        assert api.data(COLUMNS, {"d": dataset})["dataset"]["rowCount"] == 244 + 5
        rows = api.data(ROWS, {"d": dataset})["dataset"]["rows"]["data"]
        assert [r["size"] for r in rows[-5:]] == [0, 1, 2, 3, 4]  # v6 still reads v1's rows, through its link
        _append(api, dataset, [{"size": 9}])
        assert api.data(COLUMNS, {"d": dataset})["dataset"]["version"] == 7


def test_recent_versions_past_keep_versions_wait_out_the_grace(tmp_path: Path) -> None:
    files = DataDir(tmp_path)
    for n in range(1, 6):
        (files.datasets / "d").mkdir(exist_ok=True)
        files.dataset_file("d", n).write_bytes(b"PAR1")
    assert files.sweep_versions({"d": 5}, keep=2, grace_s=300) == 0  # committed a moment ago
    _age(files.datasets / "d", 600)
    assert files.sweep_versions({"d": 5}, keep=2, grace_s=300) == 3
    assert sorted(p.name for p in (files.datasets / "d").iterdir()) == ["v4.parquet", "v5.parquet"]
    assert files.sweep_versions({"d": 5}, keep=1, grace_s=300) == 1
    assert files.sweep_versions({"d": 5}, keep=1, grace_s=0) == 0  # never the current one


def test_two_writers_of_the_same_version_one_wins_whatever_its_form(tmp_path: Path) -> None:
    # Two server processes share the data directory: one appends (parts), the other replaces (a
    # whole file), both as version 2. The claim on the number lets exactly one through.
    first, second = DataDir(tmp_path / "data"), DataDir(tmp_path / "data")
    base = first.staging_path(".parquet")
    pl.DataFrame({"a": [1, 2]}).write_parquet(base)
    first.commit(base, first.dataset_file("d", 1))
    part, whole = first.staging_path(".parquet"), second.staging_path(".parquet")
    pl.DataFrame({"a": [3]}).write_parquet(part)
    pl.DataFrame({"a": [9, 9, 9]}).write_parquet(whole)
    assert first.commit_appended(part, "d", 2) == 2
    assert second.commit_version(whole, "d", 2) is False and whole.exists()
    assert pl.read_parquet(second.version_path("d", 2))["a"].to_list() == [1, 2, 3]
    # And the other way round: a whole version 3 first, then an append that also wants 3.
    assert second.commit_version(whole, "d", 3) is True
    again = first.staging_path(".parquet")
    pl.DataFrame({"a": [4]}).write_parquet(again)
    assert first.commit_appended(again, "d", 3) is None and again.exists()
    assert pl.read_parquet(first.version_path("d", 3))["a"].to_list() == [9, 9, 9]
    # Both compact version 2: one writes its file, the other's is left to discard.
    one, other = first.staging_path(".parquet"), second.staging_path(".parquet")
    for path in (one, other):
        pl.DataFrame({"a": [1, 2, 3]}).write_parquet(path)
    assert [first.commit_compacted(one, "d", 2), second.commit_compacted(other, "d", 2)] == [True, False]
    assert first.version_path("d", 2) == first.dataset_file("d", 2)
    # A compaction that finishes after its dataset was deleted does not bring the folder back.
    late = first.staging_path(".parquet")
    pl.DataFrame({"a": [1]}).write_parquet(late)
    first.remove_dataset("d")
    assert first.commit_compacted(late, "d", 3) is False and not (first.datasets / "d").exists()


def test_exports_stay_within_the_quota_the_oldest_going_first(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, export_quota_mb=1)
    with serving(settings) as api:
        dataset = api.upload_ok(_csv(7_000), "mid.csv")  # a CSV export of about 0.3 MiB
        links = []
        for _ in range(6):
            answer = api.data(EXPORT, {"d": dataset})["dataset"]["export"]
            assert answer["success"], answer["error"]
            links.append(answer["data"])
        size = links[0]["bytes"]
        assert 200_000 < size < 400_000
        fits = (1024 * 1024) // size
        statuses = [api.client.get(link["url"]).status_code for link in links]
        assert statuses == [404] * (6 - fits) + [200] * fits  # the newest that fit, the oldest gone
        gone = api.client.get(links[0]["url"]).json()["error"]
        assert gone["code"] == "NOT_FOUND" and "export again" in gone["message"]
        assert _disk_bytes(settings.data_dir / "exports") <= 1024 * 1024
        assert len(list((settings.data_dir / "exports").iterdir())) == fits


def test_an_export_larger_than_the_quota_is_too_large_and_leaves_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, export_quota_mb=1)
    with serving(settings) as api:
        small = api.upload_ok(DATA / "tips.csv")
        kept = api.data(EXPORT, {"d": small})["dataset"]["export"]["data"]["url"]
        dataset = api.upload_ok(_csv(40_000), "big.csv")  # about 1.7 MiB as CSV
        answer = api.data(EXPORT, {"d": dataset})["dataset"]["export"]
        assert answer["success"] is False and answer["error"]["code"] == "TOO_LARGE"
        assert "export_quota_mb" in answer["error"]["message"] and str(tmp_path) not in answer["error"]["message"]
        assert len(list((settings.data_dir / "exports").iterdir())) == 1
        assert api.client.get(kept).status_code == 200  # an export too large evicts nobody


@pytest.mark.parametrize("setting", ["keep_versions", "compact_parts", "export_quota_mb"])
def test_a_disk_setting_out_of_range_is_refused(tmp_path: Path, setting: str) -> None:
    with pytest.raises(ValueError, match=setting):
        make_settings(tmp_path, **{setting: 0})


@pytest.mark.slow  # two server processes
def test_two_processes_appending_to_one_dataset_lose_no_row_and_make_no_version_twice(
    tmp_path: Path, scratch_postgres: str
) -> None:
    """Two servers on one data directory and PostgreSQL metadata, four clients appending to the same
    dataset through both, compaction running in both (every third part). Each append either lands
    or answers "changed meanwhile; try again"; every row that landed is there once, in the order of
    the versions, and both servers count the same."""
    require_service(5432, "PostgreSQL")
    env = {"DATAGRAPH_METADATA_URL": scratch_postgres}
    args = ("--data-dir", str(tmp_path / "shared"), "--compact-parts", "3")
    landed: list[int] = []
    refused: list[str] = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    with (
        running_server(tmp_path / "a", *args, env=env) as first,
        running_server(tmp_path / "b", *args, env=env) as second,
    ):
        made = httpx.post(
            first + "/graphql", timeout=60, **upload_request((DATA / "tips.csv").read_bytes(), "tips.csv")
        )
        assert made.json()["data"]["uploadDataset"]["success"], made.text

        def client(n: int) -> None:
            for k in range(8):
                base = (first, second)[(n + k) % 2]
                mark = 1000 + n * 100 + k
                payload = _post(base, APPEND, {"d": "tips", "r": [{"size": mark}]})["appendRows"]
                if payload["success"]:
                    landed.append(mark)
                else:
                    refused.append(payload["error"]["message"])

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert landed, refused
        assert all("changed meanwhile" in m for m in refused), refused
        for base in (first, second):
            rows = _post(base, ROWS, {"d": "tips"})["dataset"]["rows"]["data"]
            marks = [r["size"] for r in rows[244:]]
            assert sorted(marks) == sorted(landed) and len(rows) == 244 + len(landed)
            info = _post(base, COLUMNS, {"d": "tips"})["dataset"]
            assert info["version"] == 1 + len(landed) and info["rowCount"] == 244 + len(landed)


def _post(base: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    body = httpx.post(base + "/graphql", json={"query": query, "variables": variables}, timeout=60).json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data
