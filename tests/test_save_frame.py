"""saveFrame: a pipeline materialised as a new dataset, recorded as a transform job, and usable
like any upload (analysed, joined, exported)."""

from __future__ import annotations

import pandas as pd
import pytest
from support import DATA, Api, staged_files

SAVE = """mutation($steps: [Step!]!, $name: String!) {
  saveFrame(dataset: "titanic", steps: $steps, name: $name) {
    success error { code message }
    dataset { id name rowCount version source { id } columns { name dtype } }
    job { id kind status dataset steps rowsIn rowsOut error startedAt finishedAt elapsedMs }
  }
}"""

ADULTS_BY_CLASS = [
    {"filter": [{"column": "age", "op": "GE", "value": 18}]},
    {
        "groupBy": {
            "by": ["class"],
            "aggregations": [{"column": "fare", "fn": "MEAN"}, {"column": "age", "fn": "COUNT"}],
        }
    },
]


@pytest.fixture
def titanic(api: Api) -> Api:
    api.upload_ok(DATA / "titanic.csv")
    return api


def test_a_saved_frame_is_a_dataset_with_a_job_record(titanic: Api) -> None:
    payload = titanic.data(SAVE, {"steps": ADULTS_BY_CLASS, "name": "Adults by class"})["saveFrame"]
    assert payload["success"] is True, payload["error"]
    df = pd.read_csv(DATA / "titanic.csv")
    expected = df[df["age"] >= 18].groupby("class").agg(fare_mean=("fare", "mean"), age_count=("age", "count"))
    dataset, job = payload["dataset"], payload["job"]
    assert dataset["id"] == "adults-by-class" and dataset["source"]["id"] == "frames"
    assert dataset["rowCount"] == len(expected)
    assert [c["name"] for c in dataset["columns"]] == ["class", "fare_mean", "age_count"]
    assert job["kind"] == "saveFrame" and job["status"] == "SUCCEEDED" and job["dataset"] == dataset["id"]
    assert job["rowsIn"] == len(df) and job["rowsOut"] == len(expected)
    assert job["elapsedMs"] >= 0 and job["finishedAt"] >= job["startedAt"]
    assert job["steps"]["dataset"] == "titanic" and job["steps"]["steps"][0]["filter"] == [["age", "GE", 18]]
    # It answers like any dataset: rows, and the same numbers pandas computed.
    rows = titanic.data('{ dataset(id: "adults-by-class") { rows { data } } }')["dataset"]["rows"]["data"]
    got = pd.DataFrame(rows).set_index("class")
    pd.testing.assert_series_equal(got["fare_mean"], expected["fare_mean"], check_names=False)
    assert got["age_count"].tolist() == expected["age_count"].tolist()
    # ...and can be joined back onto its source, and is listed among the jobs.
    joined = titanic.data(
        '{ dataset(id: "titanic") { join(right: "adults-by-class", on: ["class"]) { count { data } } } }'
    )
    assert joined["dataset"]["join"]["count"]["data"] == {"count": len(df)}
    jobs = titanic.data("{ jobs { id kind status } }")["jobs"]
    assert [j for j in jobs if j["kind"] == "saveFrame"] == [
        {"id": job["id"], "kind": "saveFrame", "status": "SUCCEEDED"}
    ]
    assert [j["kind"] for j in jobs] == ["saveFrame", "uploadDataset"]  # newest first: the upload is a job too


def test_a_failing_pipeline_records_a_failed_job_and_makes_no_dataset(titanic: Api) -> None:
    steps = [{"select": ["age", "nope"]}]
    payload = titanic.data(SAVE, {"steps": steps, "name": "broken"})["saveFrame"]
    assert payload["success"] is False and payload["error"]["code"] == "BAD_INPUT"
    assert '"nope"' in payload["error"]["message"]
    assert payload["dataset"] is None
    job = payload["job"]
    assert job["status"] == "FAILED" and job["error"] == payload["error"]["message"] and job["dataset"] is None
    ids = [d["id"] for d in titanic.data("{ datasets { id } }")["datasets"]]
    assert ids == ["titanic"]
    assert not staged_files(titanic.settings.data_dir)


def test_save_frame_of_an_unknown_dataset_or_without_a_name(titanic: Api) -> None:
    missing = titanic.data(
        'mutation { saveFrame(dataset: "nope", steps: [], name: "x") { success error { code message } } }'
    )["saveFrame"]
    assert missing["error"]["code"] == "NOT_FOUND"
    unnamed = titanic.data(SAVE, {"steps": [], "name": "  "})["saveFrame"]
    assert unnamed["error"]["code"] == "BAD_INPUT" and "name" in unnamed["error"]["message"]
