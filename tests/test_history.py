"""Datasets with a history (issue 20, item 1): every change makes a version recorded with its origin,
time, row count, columns and size; older databases get a record of each current version at start."""

from __future__ import annotations

import datetime as dt
import errno
import os
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from support import ROOT, Api, make_settings, running_server, serving, upload_over_http
from wsclient import Ws

from datagraph.settings import Settings
from storage import DataDir, MetadataStore
from storage._tables import dataset_versions

CSV = b"id,name,score\n1,a,1.5\n2,b,2.5\n3,c,\n"
REPLACEMENT = b"id,name,score,flag\n10,x,9.5,true\n11,y,8.5,false\n"
APPEND = "mutation($d: ID!, $r: JSON!) { appendRows(dataset: $d, rows: $r) { success error { message } } }"
SAVE = """mutation($d: ID!) { saveFrame(dataset: $d, steps: [{filter: [{column: "id", op: GT, value: 1}]}],
  name: "Later rows") { success error { message } dataset { id } } }"""


VERSIONS = """query($d: ID!, $n: Int) {
  dataset(id: $d) { version versions(limit: $n) { number createdAt rowCount columns { name dtype } origin bytes } }
}"""


def stored_versions(api: Api, dataset: str) -> list[tuple[int, str, int]]:
    metadata: MetadataStore = api.client.app.state.resources.metadata  # type: ignore[attr-defined]
    return [(v.number, v.origin, v.row_count) for v in metadata.list_versions(dataset)]


def test_every_change_records_a_version_with_its_origin(api: Api) -> None:
    dataset = api.upload_ok(CSV, "scores.csv")
    assert stored_versions(api, dataset) == [(1, "UPLOAD", 3)]
    assert api.data(APPEND, {"d": dataset, "r": [{"id": 4, "name": "d", "score": 4.5}]})["appendRows"]["success"]
    api.replace_ok(dataset, REPLACEMENT, "scores.csv")
    saved = api.data(SAVE, {"d": dataset})["saveFrame"]
    assert saved["success"], saved["error"]
    assert stored_versions(api, dataset) == [(3, "REPLACE", 2), (2, "APPEND", 4), (1, "UPLOAD", 3)]
    assert stored_versions(api, saved["dataset"]["id"]) == [(1, "SAVE", 2)]
    metadata: MetadataStore = api.client.app.state.resources.metadata  # type: ignore[attr-defined]
    files = api.client.app.state.resources.files  # type: ignore[attr-defined]
    newest = metadata.list_versions(dataset)[0]
    assert [(c.name, c.dtype) for c in newest.columns] == [
        ("id", "Int64"), ("name", "String"), ("score", "Float64"), ("flag", "Boolean"),
    ]  # fmt: skip
    assert newest.bytes == files.version_bytes(dataset, 3) > 0


def test_an_older_database_gets_a_record_of_each_current_version_at_start(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with serving(settings) as api:
        dataset = api.upload_ok(CSV, "scores.csv")
        assert api.data(APPEND, {"d": dataset, "r": [{"id": 4, "name": "d", "score": 4.5}]})["appendRows"]["success"]
        size = api.client.app.state.resources.files.version_bytes(dataset, 2)  # type: ignore[attr-defined]
    store = MetadataStore(settings.resolved_metadata_url)
    with store.engine.begin() as conn:  # as a database from before versions were recorded
        conn.execute(sa.delete(dataset_versions))
    store.close()
    for _ in range(2):  # idempotent: a second start adds nothing
        with serving(settings) as api:
            assert stored_versions(api, dataset) == [(2, "UPLOAD", 4)]
            metadata = api.client.app.state.resources.metadata  # type: ignore[attr-defined]
            assert metadata.list_versions(dataset)[0].bytes == size


def test_deleting_a_dataset_forgets_its_versions(api: Api) -> None:
    dataset = api.upload_ok(CSV, "scores.csv")
    deleted = api.data("mutation($d: ID!) { deleteDataset(id: $d) { success } }", {"d": dataset})
    assert deleted["deleteDataset"]["success"]
    assert stored_versions(api, dataset) == []


def test_versions_are_listed_newest_first_with_their_origins(api: Api) -> None:
    dataset = api.upload_ok(CSV, "scores.csv")
    assert api.data(APPEND, {"d": dataset, "r": [{"id": 4, "name": "d", "score": 4.5}]})["appendRows"]["success"]
    api.replace_ok(dataset, REPLACEMENT, "scores.csv")
    listed = api.data(VERSIONS, {"d": dataset})["dataset"]
    assert listed["version"] == 3
    versions = listed["versions"]
    assert [(v["number"], v["origin"], v["rowCount"]) for v in versions] == [
        (3, "REPLACE", 2), (2, "APPEND", 4), (1, "UPLOAD", 3),
    ]  # fmt: skip
    assert versions[0]["columns"][-1] == {"name": "flag", "dtype": "Boolean"}
    assert versions[2]["columns"] == [
        {"name": "id", "dtype": "Int64"}, {"name": "name", "dtype": "String"}, {"name": "score", "dtype": "Float64"},
    ]  # fmt: skip
    assert all(v["bytes"] > 0 for v in versions)
    assert versions[0]["createdAt"] >= versions[1]["createdAt"] >= versions[2]["createdAt"]
    newest = api.data(VERSIONS, {"d": dataset, "n": 1})["dataset"]["versions"]
    assert [v["number"] for v in newest] == [3]
    refused = api.query(VERSIONS, {"d": dataset, "n": 0})
    assert refused["errors"][0]["extensions"]["code"] == "BAD_INPUT"
    assert "limit" in refused["errors"][0]["message"]


@pytest.mark.e2e
def test_a_version_made_by_one_server_process_is_listed_by_another(tmp_path: Path) -> None:
    """A real `datagraph serve` and this test's app share one data directory (its SQLite metadata file)."""
    settings = make_settings(tmp_path)
    (tmp_path / "b").mkdir()
    csv = tmp_path / "scores.csv"
    csv.write_bytes(CSV)
    with (
        running_server(tmp_path / "b", "--data-dir", str(settings.data_dir), workers=None) as b,
        serving(settings) as a,
    ):
        dataset = upload_over_http(b, csv)
        body = {"query": APPEND, "variables": {"d": dataset, "r": [{"id": 9, "name": "z", "score": 0.5}]}}
        assert httpx.post(b + "/graphql", json=body, timeout=60).json()["data"]["appendRows"]["success"]
        versions = a.data(VERSIONS, {"d": dataset})["dataset"]["versions"]
        assert [(v["number"], v["origin"], v["rowCount"]) for v in versions] == [(2, "APPEND", 4), (1, "UPLOAD", 3)]


LOOK = """query($d: ID!) { dataset(id: $d) { version rowCount
  describe { success data } rows(limit: 10) { success data }
  filter(where: [{column: "id", op: GE, value: 2}]) { count { data } } } }"""
LOOK_AT = """query($d: ID!, $v: Int, $t: DateTime) { dataset(id: $d) { at(version: $v, asOf: $t) { version rowCount
  describe { success data } rows(limit: 10) { success data }
  filter(where: [{column: "id", op: GE, value: 2}]) { count { data } } } } }"""


def test_at_a_version_answers_what_the_dataset_answered_then(api: Api) -> None:
    dataset = api.upload_ok(CSV, "scores.csv")
    seen = [api.data(LOOK, {"d": dataset})["dataset"]]
    assert api.data(APPEND, {"d": dataset, "r": [{"id": 4, "name": "d", "score": 4.5}]})["appendRows"]["success"]
    seen.append(api.data(LOOK, {"d": dataset})["dataset"])
    api.replace_ok(dataset, REPLACEMENT, "scores.csv")
    seen.append(api.data(LOOK, {"d": dataset})["dataset"])
    assert [s["rowCount"] for s in seen] == [3, 4, 2]
    for then in seen:
        assert api.data(LOOK_AT, {"d": dataset, "v": then["version"]})["dataset"]["at"] == then
    exported = api.data(
        "query($d: ID!) { dataset(id: $d) { at(version: 1) { export(format: CSV) { success data } } } }", {"d": dataset}
    )
    assert exported["dataset"]["at"]["export"]["success"]
    times = [v["createdAt"] for v in api.data(VERSIONS, {"d": dataset})["dataset"]["versions"]][::-1]
    assert api.data(LOOK_AT, {"d": dataset, "t": times[1]})["dataset"]["at"] == seen[1]
    assert api.data(LOOK_AT, {"d": dataset, "t": "2001-01-01T00:00:00+00:00"})["dataset"]["at"] is None
    assert api.data(LOOK_AT, {"d": dataset, "v": 99})["dataset"]["at"] is None
    assert api.data(LOOK_AT, {"d": dataset, "v": 0})["dataset"]["at"] is None


def test_at_as_of_now_is_not_answered_from_a_stale_cache(api: Api) -> None:
    dataset = api.upload_ok(CSV, "scores.csv")
    later = {"d": dataset, "t": "2999-01-01T00:00:00+00:00"}
    assert api.data(LOOK_AT, later)["dataset"]["at"]["rowCount"] == 3
    assert api.data(LOOK_AT, later)["dataset"]["at"]["rowCount"] == 3  # answered again, maybe from the cache
    assert api.data(APPEND, {"d": dataset, "r": [{"id": 4, "name": "d", "score": 4.5}]})["appendRows"]["success"]
    now = api.data(LOOK_AT, later)["dataset"]["at"]
    assert (now["version"], now["rowCount"]) == (2, 4)
    assert len(now["rows"]["data"]) == 4


def test_at_takes_exactly_one_of_version_and_as_of(api: Api) -> None:
    dataset = api.upload_ok(CSV, "scores.csv")
    for variables in ({"d": dataset}, {"d": dataset, "v": 1, "t": "2999-01-01T00:00:00+00:00"}):
        errors = api.query(LOOK_AT, variables)["errors"]
        assert errors[0]["extensions"]["code"] == "BAD_INPUT"
        assert "version" in errors[0]["message"] and "asOf" in errors[0]["message"]


RESTORE = """mutation($d: ID!, $v: Int!) { restoreVersion(dataset: $d, version: $v) {
  success error { code message } dataset { id version rowCount } } }"""
ROWS = "query($d: ID!) { dataset(id: $d) { version rowCount rows(limit: 10) { data } describe { data } } }"


def test_restore_makes_a_new_version_equal_to_the_old_one(api: Api) -> None:
    dataset = api.upload_ok(CSV, "scores.csv")
    first = api.data(ROWS, {"d": dataset})["dataset"]
    assert api.data(APPEND, {"d": dataset, "r": [{"id": 4, "name": "d", "score": 4.5}]})["appendRows"]["success"]
    appended = api.data(ROWS, {"d": dataset})["dataset"]
    api.replace_ok(dataset, REPLACEMENT, "scores.csv")
    for old, then, number in ((1, first, 4), (2, appended, 5)):
        restored = api.data(RESTORE, {"d": dataset, "v": old})["restoreVersion"]
        assert restored["success"], restored["error"]
        assert restored["dataset"] == {"id": dataset, "version": number, "rowCount": then["rowCount"]}
        now = api.data(ROWS, {"d": dataset})["dataset"]
        assert {**now, "version": old} == then
    versions = api.data(VERSIONS, {"d": dataset})["dataset"]["versions"]
    assert [(v["number"], v["origin"]) for v in versions][:2] == [(5, "RESTORE"), (4, "RESTORE")]
    assert versions[0]["columns"] == versions[3]["columns"]


def test_restoring_an_unknown_version_is_a_problem_naming_it_and_changes_nothing(api: Api) -> None:
    dataset = api.upload_ok(CSV, "scores.csv")
    for number in (2, 0, -1, 99):
        refused = api.data(RESTORE, {"d": dataset, "v": number})["restoreVersion"]
        assert refused["success"] is False and refused["dataset"] is None
        assert refused["error"]["code"] == "BAD_INPUT"
        assert f"no version {number}" in refused["error"]["message"] and dataset in refused["error"]["message"]
    assert [v["number"] for v in api.data(VERSIONS, {"d": dataset})["dataset"]["versions"]] == [1]
    missing = api.data(RESTORE, {"d": "nope", "v": 1})["restoreVersion"]
    assert missing["error"]["code"] == "NOT_FOUND"


EVENTS = "subscription($d: ID) { datasetEvents(dataset: $d) { kind dataset version rowCount } }"


@pytest.mark.e2e
def test_a_restore_is_published_as_replaced(tmp_path: Path) -> None:
    csv = tmp_path / "scores.csv"
    csv.write_bytes(CSV)
    with running_server(tmp_path) as base:
        dataset = upload_over_http(base, csv)
        body = {"query": APPEND, "variables": {"d": dataset, "r": [{"id": 9, "name": "z", "score": 0.5}]}}
        assert httpx.post(base + "/graphql", json=body, timeout=60).json()["data"]["appendRows"]["success"]
        with Ws(base) as ws:
            ws.subscribe(EVENTS, {"d": dataset})
            time.sleep(0.2)
            restore = {"query": RESTORE, "variables": {"d": dataset, "v": 1}}
            assert httpx.post(base + "/graphql", json=restore, timeout=60).json()["data"]["restoreVersion"]["success"]
            event = ws.next_data()["datasetEvents"]
            assert event == {"kind": "REPLACED", "dataset": dataset, "version": 3, "rowCount": 3}


def _age(folder: Path, seconds: float) -> None:
    """Make the files under `folder` look `seconds` old (past the grace queries still reading get)."""
    moment = time.time() - seconds
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (moment, moment))


def _made_days_ago(settings: Settings, dataset: str, numbers: list[int], days: float) -> None:
    store = MetadataStore(settings.resolved_metadata_url)
    when = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(dataset_versions)
            .where(dataset_versions.c.dataset_id == dataset, dataset_versions.c.number.in_(numbers))
            .values(created_at=when)
        )
    store.close()


def test_versions_past_keep_versions_are_pruned_unlisted_and_answer_null(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, keep_versions=2)
    with serving(settings) as api:
        dataset = api.upload_ok(CSV, "scores.csv")
        for n in range(3):
            assert api.data(APPEND, {"d": dataset, "r": [{"id": 10 + n}]})["appendRows"]["success"]
    _age(settings.data_dir / "datasets" / dataset, 3600)
    with serving(settings) as api:  # the start-up sweep prunes
        assert [v["number"] for v in api.data(VERSIONS, {"d": dataset})["dataset"]["versions"]] == [4, 3]
        assert api.data(LOOK_AT, {"d": dataset, "v": 1})["dataset"]["at"] is None
        assert api.data(LOOK_AT, {"d": dataset, "v": 3})["dataset"]["at"]["rowCount"] == 5
        refused = api.data(RESTORE, {"d": dataset, "v": 2})["restoreVersion"]
        assert refused["error"]["code"] == "BAD_INPUT" and "no version 2" in refused["error"]["message"]
        assert [v["number"] for v in api.data(VERSIONS, {"d": dataset})["dataset"]["versions"]] == [4, 3]


def test_versions_older_than_keep_versions_days_are_pruned_but_never_the_current_one(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, keep_versions=10, keep_versions_days=1)
    with serving(settings) as api:
        dataset = api.upload_ok(CSV, "scores.csv")
        for n in range(3):
            assert api.data(APPEND, {"d": dataset, "r": [{"id": 10 + n}]})["appendRows"]["success"]
    _made_days_ago(settings, dataset, [1, 2], days=3)
    _made_days_ago(settings, dataset, [4], days=2)  # the current one, old as it is, stays
    _age(settings.data_dir / "datasets" / dataset, 3600)
    with serving(settings) as api:
        assert [v["number"] for v in api.data(VERSIONS, {"d": dataset})["dataset"]["versions"]] == [4, 3]
        assert api.data(LOOK_AT, {"d": dataset, "v": 2})["dataset"]["at"] is None
        assert api.data(LOOK_AT, {"d": dataset, "v": 4})["dataset"]["at"]["rowCount"] == 6
    assert sorted(p.name for p in (settings.data_dir / "datasets" / dataset).iterdir() if ".blocks" not in p.name) == [
        "v3", "v4",
    ]  # fmt: skip


def test_an_imported_table_records_an_import_version(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, sources=str(ROOT / "sources.yaml"))
    with serving(settings) as api:
        payload = api.data('mutation { importTable(source: "shop", table: "orders") { success dataset { id } } }')
        dataset = payload["importTable"]["dataset"]["id"]
        versions = api.data(VERSIONS, {"d": dataset})["dataset"]["versions"]
        assert [(v["number"], v["origin"], v["rowCount"]) for v in versions] == [(1, "IMPORT", 500)]


def test_at_as_of_the_ends_of_the_calendar_in_any_time_zone_answers_not_an_internal_error(api: Api) -> None:
    dataset = api.upload_ok(CSV, "scores.csv")
    latest = api.query(LOOK_AT, {"d": dataset, "t": "9999-12-31T23:59:59-14:00"})  # past what UTC holds
    assert "errors" not in latest and latest["data"]["dataset"]["at"]["rowCount"] == 3
    earliest = api.query(LOOK_AT, {"d": dataset, "t": "0001-01-01T00:00:00+14:00"})
    assert "errors" not in earliest and earliest["data"]["dataset"]["at"] is None


def test_counts_and_sizes_past_a_graphql_int_are_reported_as_its_largest_not_a_failed_field(api: Api) -> None:
    dataset = api.upload_ok(CSV, "scores.csv")
    metadata: MetadataStore = api.client.app.state.resources.metadata  # type: ignore[attr-defined]
    with metadata.engine.begin() as conn:  # a dataset of three billion rows, five gigabytes
        conn.execute(sa.update(dataset_versions).values(row_count=3_000_000_000, bytes=5_000_000_000))
    answer = api.query(VERSIONS, {"d": dataset})
    assert "errors" not in answer
    assert [(v["rowCount"], v["bytes"]) for v in answer["data"]["dataset"]["versions"]] == [(2**31 - 1, 2**31 - 1)]


def test_versions_with_an_explicit_null_limit_is_still_one_bounded_page(api: Api) -> None:
    dataset = api.upload_ok(CSV, "scores.csv")
    metadata: MetadataStore = api.client.app.state.resources.metadata  # type: ignore[attr-defined]
    first = metadata.list_versions(dataset)[0]
    with metadata.engine.begin() as conn:  # records of many versions (retention set high)
        conn.execute(
            dataset_versions.insert(),
            [
                {"dataset_id": dataset, "number": n, "created_at": first.created_at, "row_count": 3,
                 "columns": first.columns_json, "origin": "APPEND", "bytes": 1}
                for n in range(2, 1_102)
            ],
        )  # fmt: skip
    listed = api.data(VERSIONS, {"d": dataset, "n": None})["dataset"]["versions"]
    assert len(listed) == 1_000 and listed[0]["number"] == 1_101


def test_the_version_a_restore_replaces_keeps_its_grace_though_the_restored_file_is_old(tmp_path: Path) -> None:
    """A restore links the old version's file, whose modification time is the old one's: the version it
    replaced must still get the grace from now (queries reading it finish), not be swept at once."""
    settings = make_settings(tmp_path, keep_versions=1)
    with serving(settings) as api:
        dataset = api.upload_ok(CSV, "scores.csv")
        assert api.data(APPEND, {"d": dataset, "r": [{"id": 4, "name": "d", "score": 4.5}]})["appendRows"]["success"]
        _age(settings.data_dir / "datasets" / dataset / "v1.parquet", 3600)  # made an hour ago
        restored = api.data(RESTORE, {"d": dataset, "v": 1})["restoreVersion"]
        assert restored["success"], restored["error"]
    with serving(settings) as api:  # the start-up sweep runs
        assert api.data(LOOK_AT, {"d": dataset, "v": 2})["dataset"]["at"]["rowCount"] == 4
        assert api.data(LOOK_AT, {"d": dataset, "v": 3})["dataset"]["at"]["rowCount"] == 3


def test_restoring_the_rows_the_dataset_already_has_makes_no_version(tmp_path: Path) -> None:
    """Retried or looped restores of the current rows must not push real history out of keep_versions."""
    settings = make_settings(tmp_path, keep_versions=3)
    with serving(settings) as api:
        dataset = api.upload_ok(CSV, "scores.csv")
        assert api.data(APPEND, {"d": dataset, "r": [{"id": 4, "name": "d", "score": 4.5}]})["appendRows"]["success"]
        for number, current in ((2, 2), (2, 2), (1, 3), (1, 3), (1, 3), (3, 3)):
            restored = api.data(RESTORE, {"d": dataset, "v": number})["restoreVersion"]
            assert restored["success"], restored["error"]
            assert restored["dataset"]["version"] == current
        versions = api.data(VERSIONS, {"d": dataset})["dataset"]["versions"]
        assert [(v["number"], v["origin"]) for v in versions] == [(3, "RESTORE"), (2, "APPEND"), (1, "UPLOAD")]
        assert api.data(ROWS, {"d": dataset})["dataset"]["rowCount"] == 3
        back = api.data(RESTORE, {"d": dataset, "v": 2})["restoreVersion"]  # other rows: a new version
        assert back["dataset"]["version"] == 4 and back["dataset"]["rowCount"] == 4


def _link_to_the_limit(file: Path, folder: Path) -> bool:
    """Give `file` as many hard links as its filesystem allows (65,000 on ext4); False when it has no
    such limit below 70,000."""
    folder.mkdir()
    for i in range(70_000):
        try:
            os.link(file, folder / f"l{i}")
        except OSError as exc:
            assert exc.errno == errno.EMLINK
            return True
    return False


def test_restores_and_appends_of_a_file_with_every_link_the_filesystem_allows_copy_it(tmp_path: Path) -> None:
    """Restores (and appends) in a quick loop link one file into every version they make, faster than
    the sweep prunes: at the filesystem's link limit the new version copies it, not an internal error."""
    files = DataDir(tmp_path / "data")
    (files.datasets / "d").mkdir()
    first = files.dataset_file("d", 1)
    first.write_bytes(b"PAR1 rows PAR1")
    if not _link_to_the_limit(first, tmp_path / "links"):
        pytest.skip("this filesystem has no hard-link limit to reach")
    staged = files.staging_path(".parquet")
    staged.write_bytes(b"PAR1 more PAR1")
    assert files.commit_appended(staged, "d", 2) == 2
    assert [p.read_bytes() for p in files.version_parts("d", 2)] == [b"PAR1 rows PAR1", b"PAR1 more PAR1"]
    assert files.commit_restored("d", 1, 3)
    assert files.dataset_file("d", 3).read_bytes() == b"PAR1 rows PAR1"
