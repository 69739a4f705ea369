"""Pages read from page blocks (a version's rows as small Arrow files beside its Parquet) in the
server's own threads: the same bytes as a worker's page, always of the version asked for (an append,
a replacement or a delete never leaves an old page served), the blocks committed whole and removed
with their version, shared by processes on one data directory, and big or odd pages still sent to a
worker with its deadline and byte cap."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from support import ROOT, Api, make_settings, serving, upload_request

import engine
from engine import Plan, Select, Slice, Source
from storage import DataDir

MIXED = pl.DataFrame(
    {
        "id": list(range(5_000)),
        "x": [math.nan if i % 97 == 0 else i / 7 for i in range(5_000)],
        "text": [None if i % 11 == 0 else f'row "{i}"\n✓' for i in range(5_000)],
        "day": [dt.date(2024, 1, 1) + dt.timedelta(days=i % 400) for i in range(5_000)],
        "at": [dt.datetime(2024, 1, 1, 12, 0, 0, i % 7) for i in range(5_000)],
        "zoned": pl.Series([dt.datetime(2024, 3, 1, i % 24) for i in range(5_000)]).dt.replace_time_zone("UTC"),
        "price": pl.Series([decimal.Decimal(i) / 4 for i in range(5_000)], dtype=pl.Decimal(12, 2)),
        "took": [dt.timedelta(seconds=i) for i in range(5_000)],
        "flag": [None if i % 5 == 0 else i % 2 == 0 for i in range(5_000)],
    }
)
PAGE = "query($id: ID!, $limit: Int, $offset: Int) { dataset(id: $id) { rows(limit: $limit, offset: $offset,"
PAGE += " cache: BYPASS) { success error { code message } data meta { rowCount truncated } } } }"


def made(files: DataDir, frame: pl.DataFrame, dataset_id: str = "d", *, block_bytes: int = 20_000) -> Source:
    """`frame` stored as version 1 of `dataset_id`, with its page blocks (small ones: many of them)."""
    path = files.dataset_file(dataset_id, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)
    source = Source(dataset_id, 1, path, generation="g1")
    staged = files.staging_path(".blocks")
    assert engine.write_page_blocks(source, staged, block_bytes=block_bytes) == frame.height
    assert files.commit_blocks(staged, dataset_id, 1, "g1")
    return source


def made_source(files: DataDir) -> Source:
    return Source("d", 1, files.dataset_file("d", 1), generation="g1")


@pytest.mark.parametrize(
    ("steps", "limit", "offset"),
    [
        ((), 1000, 0),
        ((), 1000, 1500),  # across block boundaries
        ((), 7, 4_995),  # the last rows: not truncated
        ((), 10, 5_000),  # past the end: empty
        ((), 0, 3),
        ((Slice(100, 2_000),), 1000, 1_500),  # a slice in the plan bounds the page
        ((Slice(100, 2_000), Slice(50, 30)), 1000, 10),
        ((Select(("text", "id")), Slice(4_000, 5_000)), 2_000, 0),
        ((Select(("price", "took", "zoned")),), 50, 2_222),
    ],
)
def test_a_page_from_blocks_is_the_workers_page_byte_for_byte(
    tmp_path: Path, steps: tuple[engine.Step, ...], limit: int, offset: int
) -> None:
    files = DataDir(tmp_path / "data")
    source = made(files, MIXED)
    index = files.page_blocks("d", 1, "g1")
    assert index is not None and len(index.starts) > 3, index
    plan = Plan(source, steps)
    window = engine.page_window(plan)
    assert window is not None
    assert engine.block_page(index, window, limit=limit, offset=offset) == engine.page(plan, limit=limit, offset=offset)


def test_an_empty_version_has_blocks_that_give_its_columns(tmp_path: Path) -> None:
    files = DataDir(tmp_path / "data")
    source = made(files, MIXED.clear())
    index = files.page_blocks("d", 1, "g1")
    assert index is not None and index.rows == 0
    plan = Plan(source)
    page = engine.block_page(index, engine.page_window(plan) or pytest.fail(), limit=10, offset=0)
    assert page == engine.page(plan, limit=10, offset=0)


def test_plans_with_more_than_selects_and_slices_are_not_read_from_blocks(tmp_path: Path) -> None:
    source = Source("d", 1, tmp_path / "v1.parquet", generation="g1")
    assert engine.page_window(Plan(source, (engine.Filter(()),))) is None
    assert engine.page_window(Plan(source, (engine.Sort((engine.SortKey("id"),)),))) is None
    assert engine.page_window(Plan(source, (Slice(-1, 5),))) is None  # the worker says what is wrong
    files = DataDir(tmp_path / "data")
    index_source = made(files, MIXED)
    index = files.page_blocks("d", 1, "g1")
    assert index is not None
    for columns in [("nope",), (), ("id", "id")]:  # refused by the plan's own checks, in a worker
        window = engine.page_window(Plan(index_source, (Select(columns),)))
        assert window is not None
        assert engine.block_page(index, window, limit=5, offset=0) is None


def test_blocks_go_with_their_version_and_a_new_generation_never_reads_old_ones(tmp_path: Path) -> None:
    files = DataDir(tmp_path / "data")
    made(files, MIXED)
    folder = files.blocks_folder("d", 1, "g1")
    assert folder.is_dir()
    assert files.page_blocks("d", 1, "g2") is None  # deleted and uploaded again: another generation
    assert files.page_blocks("d", 1, "g1") is not None
    other = DataDir(tmp_path / "data")  # another process on the same folder
    index = other.page_blocks("d", 1, "g1")
    assert index is not None
    files.remove_version("d", 1)
    assert not folder.exists() and files.page_blocks("d", 1, "g1") is None
    with pytest.raises(FileNotFoundError):  # the other's kept index fails to read: it pages from a worker
        engine.block_page(index, engine.page_window(Plan(made_source(files))) or pytest.fail(), limit=5, offset=0)


def test_blocks_of_a_version_past_its_keeping_are_swept_with_it(tmp_path: Path) -> None:
    files = DataDir(tmp_path / "data")
    made(files, MIXED)
    for version in (2, 3):
        MIXED.head(10).write_parquet(files.dataset_file("d", version))
    assert files.sweep_versions({"d": 3}, keep=1, grace_s=0) == 3  # v1's file and blocks, v2's file
    assert [p.name for p in (files.datasets / "d").iterdir()] == ["v3.parquet"]


def test_blocks_are_not_committed_for_a_version_gone_meanwhile(tmp_path: Path) -> None:
    files = DataDir(tmp_path / "data")
    source = made(files, MIXED, "a")
    staged = files.staging_path(".blocks")
    engine.write_page_blocks(source, staged, block_bytes=20_000)
    files.remove_dataset("a")
    assert not files.commit_blocks(staged, "a", 1, "g1")
    assert not (files.datasets / "a").exists() and not staged.exists()


def test_two_processes_on_one_data_directory_share_blocks_and_one_commit_wins(tmp_path: Path) -> None:
    mine = DataDir(tmp_path / "data")
    source = made(mine, MIXED)
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        import engine
        from engine import Plan, Source
        from storage import DataDir
        files = DataDir(Path({str(tmp_path / "data")!r}))
        source = Source("d", 1, files.version_path("d", 1), generation="g1")
        staged = files.staging_path(".blocks")
        engine.write_page_blocks(source, staged, block_bytes=20_000)
        print(files.commit_blocks(staged, "d", 1, "g1"), staged.exists())
        index = files.page_blocks("d", 1, "g1")
        window = engine.page_window(Plan(source))
        sys.stdout.flush()
        sys.stdout.buffer.write(engine.block_page(index, window, limit=300, offset=1234).json)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True, cwd=ROOT).stdout
    first, _, page = out.partition(b"\n")
    assert first == b"False False"  # this process committed first; the other's copy is discarded
    assert page == engine.page(Plan(source), limit=300, offset=1234).json


# Over the API ------------------------------------------------------------------------------------------


def _jobs(api: Api) -> int:
    return int(api.client.app.state.resources.executor.stats().jobs)  # type: ignore[attr-defined]


def _upkeep_done(api: Api) -> None:
    executor = api.client.app.state.resources.executor  # type: ignore[attr-defined]
    assert api.client.portal is not None
    api.client.portal.call(executor.background_done)


def _hot(api: Api, dataset_id: str) -> None:
    """Ask for a page until the dataset's current version has page blocks (one piece of upkeep runs at
    a time: a version asked for while another's blocks are being made waits for its next page)."""
    for _ in range(3):
        _page(api, dataset_id, 1)
        _upkeep_done(api)
    files = api.client.app.state.resources.files  # type: ignore[attr-defined]
    assert any(p.name.endswith(".blocks") for p in (files.datasets / dataset_id).iterdir())


def _page(api: Api, dataset_id: str, limit: int, offset: int = 0) -> dict[str, Any]:
    result: dict[str, Any] = api.data(PAGE, {"id": dataset_id, "limit": limit, "offset": offset})["dataset"]["rows"]
    return result


def _csv(first: int, rows: int) -> bytes:
    return ("id,name\n" + "".join(f"{i},n{i}\n" for i in range(first, first + rows))).encode()


def test_pages_after_the_first_are_read_in_the_server_and_follow_every_new_version(tmp_path: Path) -> None:
    with serving(make_settings(tmp_path)) as api:
        dataset = api.upload_ok(_csv(0, 3_000), "d.csv")  # its preview asks for a page: blocks are made
        _hot(api, dataset)
        jobs = _jobs(api)
        page = _page(api, dataset, 1000, 1500)
        assert _jobs(api) == jobs, "read from the blocks, not in a worker"
        assert [r["id"] for r in page["data"]] == list(range(1500, 2500)) and page["meta"]["truncated"]

        appended = api.data(
            'mutation($r: JSON!) { appendRows(dataset: "%s", rows: $r) { success } }' % dataset,
            {"r": [{"id": 3_000, "name": "new"}]},
        )
        assert appended["appendRows"]["success"]
        tail = _page(api, dataset, 10, 2_995)
        assert [r["id"] for r in tail["data"]] == [2995, 2996, 2997, 2998, 2999, 3000]

        upload = api.client.post(
            "/graphql", **upload_request(_csv(20_000, 50), "d.csv", None, None, replace=dataset)
        ).json()["data"]["uploadDataset"]
        assert upload["success"], upload
        assert [r["id"] for r in _page(api, dataset, 3)["data"]] == [20_000, 20_001, 20_002]

        assert api.data('mutation { deleteDataset(id: "%s") { success } }' % dataset)["deleteDataset"]["success"]
        again = api.upload_ok(_csv(30_000, 40), "d.csv")
        assert again == dataset  # the same id, a new generation
        assert [r["id"] for r in _page(api, dataset, 2, 5)["data"]] == [30_005, 30_006]
        _hot(api, dataset)
        jobs = _jobs(api)
        assert [r["id"] for r in _page(api, dataset, 2, 7)["data"]] == [30_007, 30_008]
        assert _jobs(api) == jobs


def test_a_big_page_goes_to_a_worker_with_its_byte_cap(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, rows_max=1_000_000, page_thread_rows=1_000, max_result_mb=0.01)
    with serving(settings) as api:
        dataset = api.upload_ok(_csv(0, 20_000), "d.csv")
        _hot(api, dataset)
        jobs = _jobs(api)
        small = _page(api, dataset, 100, 0)
        assert small["success"] and _jobs(api) == jobs
        for limit in (1_000, 200_000):  # near the cap, and far over page_thread_rows: in a worker
            hostile = _page(api, dataset, limit, 0)
            assert not hostile["success"] and hostile["error"]["code"] == "TOO_LARGE", hostile
            assert "max_result_mb" in hostile["error"]["message"]
            assert _jobs(api) == jobs + 1
            jobs += 1


def test_a_page_read_in_the_server_is_still_held_to_the_byte_cap(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_result_mb=0.01)
    quoted = '"' + '""' * 300 + '"'  # 300 quotes a row: 600 bytes of JSON, 300 of Arrow
    with serving(settings) as api:
        dataset = api.upload_ok(("id,text\n" + "".join(f"{i},{quoted}\n" for i in range(100))).encode(), "q.csv")
        _hot(api, dataset)
        jobs = _jobs(api)
        assert _page(api, dataset, 5)["success"]
        over = _page(api, dataset, 20)
        assert not over["success"] and over["error"]["code"] == "TOO_LARGE", over
        assert _jobs(api) == jobs  # refused in the server's thread, before its bytes went anywhere


FILTERED = """query($id: ID!, $where: [Condition!]!) { dataset(id: $id) { filter(where: $where) {
  count(cache: BYPASS) { success error { code message } data meta { rowCount } }
  rows(limit: 100, cache: BYPASS) { success error { code message } data meta { rowCount truncated } } } } }"""


def test_a_frames_count_and_rows_in_one_request_run_as_one_job_with_the_same_answers(tmp_path: Path) -> None:
    with serving(make_settings(tmp_path, workers=2)) as api:
        dataset = api.upload_ok(_csv(0, 5_000), "d.csv")
        _hot(api, dataset)
        where = [{"column": "id", "op": "GE", "value": 4_950}]
        jobs = _jobs(api)
        frame = api.data(FILTERED, {"id": dataset, "where": where})["dataset"]["filter"]
        assert _jobs(api) == jobs + 1  # one job for both: the data read once
        assert frame["count"]["data"] == {"count": 50}
        assert [r["id"] for r in frame["rows"]["data"]] == list(range(4_950, 5_000))
        count_only = FILTERED.split("\n  rows")[0] + " } } }"
        alone = api.data(count_only, {"id": dataset, "where": where})["dataset"]["filter"]
        assert alone["count"] == frame["count"]

        wrong = api.data(FILTERED, {"id": dataset, "where": [{"column": "nope", "op": "EQ", "value": 1}]})
        for result in wrong["dataset"]["filter"].values():  # each says the plan's own problem
            assert result["error"]["code"] == "BAD_INPUT" and '"nope"' in result["error"]["message"], result
