"""Frame.diff (issue 20, item 2): a frame (after) against a version of its dataset, another dataset or
steps (before), with pandas as the oracle for the counts and the changed rows."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from support import Api, make_settings, serving

APPEND = "mutation($d: ID!, $r: JSON!) { appendRows(dataset: $d, rows: $r) { success error { message } } }"
AT_DIFF = """query($d: ID!, $v: Int!, $against: DiffTarget!, $key: [String!]) {
  dataset(id: $d) { at(version: $v) { diff(against: $against, key: $key) {
    success data error { code message } meta { truncated } } } }
}"""
DIFF = """query($d: ID!, $against: DiffTarget!, $key: [String!]) {
  dataset(id: $d) { diff(against: $against, key: $key) { success data error { code message } meta { truncated } } }
}"""


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


BASE = pd.DataFrame(
    {
        "id": range(1, 41),
        "city": [f"c{i % 7}" for i in range(40)],
        "amount": [float(i) * 1.5 if i % 9 else None for i in range(40)],
        "units": [i % 5 for i in range(40)],
    }
)
APPENDED = [{"id": 41, "city": "c9", "amount": 2.0, "units": 1}, {"id": 42, "city": "c9", "amount": None, "units": 2}]


def _edited() -> pd.DataFrame:
    """Version 3: rows 5..9 removed, some amounts and cities changed (one to null, one from null), rows added."""
    frame = pd.concat([BASE, pd.DataFrame(APPENDED)], ignore_index=True)
    frame = frame[~frame["id"].between(5, 9)].copy()
    frame.loc[frame["id"] == 3, "amount"] = 99.0
    frame.loc[frame["id"] == 10, "amount"] = None  # null equals null, but a value against null differs
    frame.loc[frame["id"] == 19, "amount"] = 7.0  # was null (18 % 9 == 0)
    frame.loc[frame["id"] == 20, "city"] = "elsewhere"
    extra = pd.DataFrame({"id": [100, 101], "city": ["new", None], "amount": [1.0, None], "units": [0, 1]})
    return pd.concat([frame, extra], ignore_index=True)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, str]]:
    """A dataset with three versions: the upload, an append of two rows, a replacement with an edited CSV."""
    with serving(make_settings(tmp_path_factory.mktemp("diff"))) as api:
        dataset = api.upload_ok(_csv(BASE), "sales.csv")
        assert api.data(APPEND, {"d": dataset, "r": APPENDED})["appendRows"]["success"]
        api.replace_ok(dataset, _csv(_edited()), "sales.csv")
        yield api, dataset


def _oracle(before: pd.DataFrame, after: pd.DataFrame, key: str) -> dict[str, Any]:
    merged = after.merge(before, on=key, how="outer", suffixes=("", "__before"), indicator=True)
    both = merged[merged["_merge"] == "both"]
    columns = [c for c in after.columns if c != key and c in before.columns]
    differs = pd.Series(False, index=both.index)
    for c in columns:
        a, b = both[c], both[c + "__before"]
        differs |= ~((a == b) | (a.isna() & b.isna()))
    return {
        "added": sorted(merged.loc[merged["_merge"] == "left_only", key]),
        "removed": sorted(merged.loc[merged["_merge"] == "right_only", key]),
        "changed": sorted(both.loc[differs, key]),
        "unchanged": int((~differs).sum()),
    }


def _read(api: Api, dataset: str, version: int) -> pd.DataFrame:
    query = """query($d: ID!, $v: Int!) { dataset(id: $d) { at(version: $v) { export(format: CSV) { data } } } }"""
    url = api.data(query, {"d": dataset, "v": version})["dataset"]["at"]["export"]["data"]["url"]
    return pd.read_csv(io.BytesIO(api.client.get(url).content))


def _diff(api: Api, dataset: str, version: int | None, against: dict[str, Any], key: list[str] | None) -> dict:
    if version is None:
        answer = api.data(DIFF, {"d": dataset, "against": against, "key": key})["dataset"]["diff"]
    else:
        answer = api.data(AT_DIFF, {"d": dataset, "v": version, "against": against, "key": key})["dataset"]["at"]
        answer = answer["diff"]
    result: dict = answer
    return result


@pytest.mark.parametrize("on_current", [False, True])
def test_diff_by_key_matches_pandas(versions: tuple[Api, str], on_current: bool) -> None:
    api, dataset = versions
    answer = _diff(api, dataset, None if on_current else 3, {"version": 1}, ["id"])
    assert answer["success"], answer["error"]
    data = answer["data"]
    expected = _oracle(_read(api, dataset, 1), _read(api, dataset, 3), "id")
    summary = data["summary"]
    assert (summary["added"], summary["removed"], summary["changed"], summary["unchanged"]) == (
        len(expected["added"]), len(expected["removed"]), len(expected["changed"]), expected["unchanged"],
    )  # fmt: skip
    by_change = {c: [r["id"] for r in data["rows"] if r["_change"] == c] for c in ("added", "removed", "changed")}
    assert by_change == {c: expected[c] for c in ("added", "removed", "changed")}
    assert [r["id"] for r in data["rows"]] == sorted(r["id"] for r in data["rows"])  # ordered by key
    three = next(r for r in data["rows"] if r["id"] == 3)
    assert (three["amount"], three["amount__before"], three["city"], three["city__before"]) == (99.0, 3.0, "c2", "c2")
    assert summary["columnsAdded"] == summary["columnsRemoved"] == summary["typeChanges"] == []
    assert not answer["meta"]["truncated"]
    stats = {s["column"]: s for s in data["stats"]}
    assert stats["id"]["before"]["count"] == 40 and stats["id"]["after"]["count"] == len(_read(api, dataset, 3))


def test_diff_without_key_compares_whole_rows_as_multisets(versions: tuple[Api, str]) -> None:
    api, dataset = versions
    before, after = _read(api, dataset, 1), _read(api, dataset, 3)
    answer = _diff(api, dataset, 3, {"version": 1}, None)
    assert answer["success"], answer["error"]
    summary = answer["data"]["summary"]
    merged = after.merge(before, how="outer", indicator=True)  # rows are unique here, so a merge is the multiset
    assert summary["added"] == int((merged["_merge"] == "left_only").sum())
    assert summary["removed"] == int((merged["_merge"] == "right_only").sum())
    assert summary["changed"] == 0 and summary["unchanged"] == int((merged["_merge"] == "both").sum())
    assert {r["_change"] for r in answer["data"]["rows"]} == {"added", "removed"}


def test_diff_counts_repeated_rows_as_a_multiset(api: Api) -> None:
    before = api.upload_ok(b"a,b\n1,x\n1,x\n2,y\n", "before.csv")
    after = api.upload_ok(b"a,b\n1,x\n2,y\n2,y\n3,z\n", "after.csv")
    answer = _diff(api, after, None, {"dataset": before}, None)
    assert answer["success"], answer["error"]
    summary = answer["data"]["summary"]
    assert (summary["added"], summary["removed"], summary["unchanged"]) == (2, 1, 2)
    assert answer["data"]["rows"] == [
        {"_change": "removed", "a": 1, "b": "x"},
        {"_change": "added", "a": 2, "b": "y"},
        {"_change": "added", "a": 3, "b": "z"},
    ]


def test_diff_reports_columns_added_removed_and_type_changes(api: Api) -> None:
    before = api.upload_ok(b"id,score,old\n1,1,a\n2,2,b\n", "before.csv")
    after = api.upload_ok(b"id,score,flag\n1,1.0,true\n2,2.5,false\n3,3.0,true\n", "after.csv")
    answer = _diff(api, after, None, {"dataset": before}, ["id"])
    assert answer["success"], answer["error"]
    data = answer["data"]
    assert data["summary"]["columnsAdded"] == ["flag"]
    assert data["summary"]["columnsRemoved"] == ["old"]
    assert data["summary"]["typeChanges"] == [{"column": "score", "from": "Int64", "to": "Float64"}]
    assert (data["summary"]["added"], data["summary"]["changed"], data["summary"]["unchanged"]) == (1, 1, 1)
    assert [s["column"] for s in data["stats"]] == ["id", "score"]


def test_diff_against_steps_of_its_own_dataset(versions: tuple[Api, str]) -> None:
    api, dataset = versions
    steps = [{"filter": [{"column": "units", "op": "NE", "value": 0}]}]
    answer = _diff(api, dataset, None, {"steps": steps}, ["id"])
    assert answer["success"], answer["error"]
    after = _read(api, dataset, 3)
    assert answer["data"]["summary"]["added"] == int((after["units"] == 0).sum())
    assert answer["data"]["summary"]["removed"] == answer["data"]["summary"]["changed"] == 0


@pytest.mark.parametrize(
    ("against", "key", "named"),
    [
        ({"version": 7}, ["id"], "no version 7"),
        ({"dataset": "nope"}, ["id"], '"nope"'),
        ({"version": 1}, ["missing"], "'missing'"),
        ({"version": 1}, [], "at least one column"),
        ({"version": 1}, ["city"], "city is not unique"),
    ],
)
def test_diff_refuses_bad_input_naming_it(
    versions: tuple[Api, str], against: dict[str, Any], key: list[str], named: str
) -> None:
    api, dataset = versions
    answer = _diff(api, dataset, 3, against, key)
    assert not answer["success"]
    assert answer["error"]["code"] == "BAD_INPUT"
    assert named in answer["error"]["message"]
    assert "Traceback" not in answer["error"]["message"] and "/" not in answer["error"]["message"]


def test_a_duplicate_key_says_how_many_rows_repeat_it(api: Api) -> None:
    before = api.upload_ok(b"id,v\n1,a\n2,b\n", "before.csv")
    after = api.upload_ok(b"id,v\n1,a\n1,b\n1,c\n2,b\n", "after.csv")
    answer = _diff(api, after, None, {"dataset": before}, ["id"])
    assert answer["error"]["code"] == "BAD_INPUT"
    assert "3 rows repeat" in answer["error"]["message"] and "this frame (after)" in answer["error"]["message"]


def test_diff_of_frames_with_no_common_columns_is_bad_input(api: Api) -> None:
    before = api.upload_ok(b"a,b\n1,2\n", "before.csv")
    after = api.upload_ok(b"c,d\n1,2\n", "after.csv")
    answer = _diff(api, after, None, {"dataset": before}, None)
    assert answer["error"]["code"] == "BAD_INPUT"
    assert "no column in common" in answer["error"]["message"]


def test_diff_rows_are_capped_by_rows_max(tmp_path: Path) -> None:
    with serving(make_settings(tmp_path, rows_max=3)) as api:
        before = api.upload_ok(b"id,v\n1,a\n", "before.csv")
        after = api.upload_ok(b"id,v\n1,a\n2,b\n3,c\n4,d\n5,e\n", "after.csv")
        answer = _diff(api, after, None, {"dataset": before}, ["id"])
        assert answer["success"], answer["error"]
        assert answer["data"]["summary"]["added"] == 4
        assert [r["id"] for r in answer["data"]["rows"]] == [2, 3, 4]
        assert answer["meta"]["truncated"] is True


def test_diff_is_cached_under_both_versions(api: Api) -> None:
    query = """query($d: ID!) { dataset(id: $d) { diff(against: {version: 1}, key: ["id"]) {
      data meta { cached } } } }"""
    dataset = api.upload_ok(b"id,v\n1,a\n2,b\n", "t.csv")
    first = api.data(query, {"d": dataset})["dataset"]["diff"]
    again = api.data(query, {"d": dataset})["dataset"]["diff"]
    assert (first["meta"]["cached"], again["meta"]["cached"]) == (False, True)
    assert again["data"] == first["data"]
    assert api.data(APPEND, {"d": dataset, "r": [{"id": 3, "v": "c"}]})["appendRows"]["success"]
    later = api.data(query, {"d": dataset})["dataset"]["diff"]
    assert later["meta"]["cached"] is False and later["data"]["summary"]["added"] == 1
