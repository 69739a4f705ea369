"""export writes the (filtered) frame in four formats behind an unguessable, expiring link."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from starlette.testclient import TestClient
from support import DATA, Api, make_settings, serving

from server.app import create_app

EXPORT = """query($id: ID!, $f: ExportFormat) { dataset(id: $id) {
  filter(where: [{column: "size", op: GE, value: 4}]) { export(format: $f) { success error { code message } data meta { rowCount } } } } }"""


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app for the module's tests that only read and export (each export has its own link)."""
    with serving(make_settings(tmp_path_factory.mktemp("export"))) as app:
        app.upload_ok(DATA / "tips.csv")
        yield app


def _read(fmt: str, content: bytes) -> pl.DataFrame:
    if fmt == "CSV":
        return pl.read_csv(io.BytesIO(content))
    if fmt == "PARQUET":
        return pl.read_parquet(io.BytesIO(content))
    if fmt == "XLSX":
        return pl.read_excel(io.BytesIO(content))
    return pl.DataFrame(json.loads(content))


@pytest.mark.parametrize("fmt", ["CSV", "PARQUET", "XLSX", "JSON"])
def test_export_downloads_the_filtered_rows(api: Api, fmt: str) -> None:
    dataset_id = "tips"
    answer = api.data(EXPORT, {"id": dataset_id, "f": fmt})["dataset"]["filter"]["export"]
    assert answer["success"], answer["error"]
    data = answer["data"]
    expected = pl.read_csv(DATA / "tips.csv").filter(pl.col("size") >= 4)
    assert data["format"] == fmt and data["rows"] == expected.height == answer["meta"]["rowCount"]
    assert data["url"].startswith("http://testserver/exports/")
    token = data["url"].rsplit("/", 1)[1]
    assert len(token) >= 40  # 32 random bytes
    response = api.client.get(data["url"])
    assert response.status_code == 200 and len(response.content) == data["bytes"]
    ext = {"CSV": "csv", "PARQUET": "parquet", "XLSX": "xlsx", "JSON": "json"}[fmt]
    assert f'filename="tips.{ext}"' in response.headers["content-disposition"]
    assert_frame_equal(_read(fmt, response.content), expected, check_dtypes=False)


@pytest.mark.parametrize(
    ("asked", "saved"),
    [
        ("tips-filtered-by-day", "tips-filtered-by-day.csv"),
        ("../../etc/passwd", "etc-passwd.csv"),  # no path, and the export's own extension
        ('a"b;c\r\nd.exe', "a-b-c-d.exe.csv"),
        ("...", "tips.csv"),  # nothing left: the export's own name
    ],
)
def test_an_export_downloads_under_the_name_asked_for(api: Api, asked: str, saved: str) -> None:
    url = api.data(EXPORT, {"id": "tips", "f": "CSV"})["dataset"]["filter"]["export"]["data"]["url"]
    response = api.client.get(url, params={"name": asked})
    assert response.status_code == 200
    assert response.headers["content-disposition"] == f'attachment; filename="{saved}"'


def test_csv_export_escapes_formula_cells(api: Api) -> None:
    csv = b'name,amount,note\n=cmd|calc,-5,+1\n@SUM(A1),3,"\ttab"\nplain,4,-x\n'
    dataset_id = api.upload_ok(csv, "risky.csv")
    q = "query($id: ID!) { dataset(id: $id) { export(format: CSV) { data } } }"
    url = api.data(q, {"id": dataset_id})["dataset"]["export"]["data"]["url"]
    text = api.client.get(url).text
    back = pd.read_csv(io.StringIO(text), keep_default_na=False)
    assert back["name"].tolist() == ["'=cmd|calc", "'@SUM(A1)", "plain"]
    assert back["amount"].tolist() == [-5, 3, 4]  # numbers stay numbers
    assert back["note"].tolist() == ["'+1", "'\ttab", "'-x"]


def test_unknown_and_malformed_tokens_are_not_found(api: Api) -> None:
    for token in ["A" * 43, "..datagraph.sqlite3", "x"]:
        response = api.client.get(f"/exports/{token}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "NOT_FOUND"
    traversal = api.client.get("/exports/..%2F..%2Fdatagraph.sqlite3")  # never reaches the route
    assert traversal.status_code == 404 and b"SQLite" not in traversal.content


def test_export_links_expire(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, export_ttl_s=1)
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        dataset_id = api.upload_ok(DATA / "tips.csv")
        url = api.data(EXPORT, {"id": dataset_id, "f": "CSV"})["dataset"]["filter"]["export"]["data"]["url"]
        assert client.get(url).status_code == 200
        time.sleep(1.2)
        gone = client.get(url)
        assert gone.status_code == 404 and "expired" in gone.json()["error"]["message"]
    # The start-up sweep deletes the expired file itself.
    with TestClient(create_app(settings)):
        assert list((settings.data_dir / "exports").iterdir()) == []
