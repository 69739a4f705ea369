"""Uploads: CSV, XLSX and XLS become datasets; every bad file gets a clear problem and leaves nothing.

Tests that upload a file of their own and read it back share one app (`shared`); those that assert
what the server holds, or that a refused upload left nothing behind, have their own (`api`)."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pytest
import xlsxwriter
import xlwt
from starlette.testclient import TestClient
from support import DATA, Api, make_settings, serving, staged_files

from server.app import create_app

LIST = "{ datasets { id name } }"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app for the tests that upload a file of their own and read it back."""
    with serving(make_settings(tmp_path_factory.mktemp("upload"))) as app:
        yield app


def _xlsx(rows: list[list[object]]) -> bytes:
    buffer = io.BytesIO()
    book = xlsxwriter.Workbook(buffer, {"in_memory": True})
    sheet = book.add_worksheet()
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            if value is not None:
                sheet.write(r, c, value)
    book.close()
    return buffer.getvalue()


def _xls(rows: list[list[object]]) -> bytes:
    book = xlwt.Workbook()
    sheet = book.add_sheet("data")
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            if value is not None:
                sheet.write(r, c, value)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def _assert_clean(api: Api, payload: dict, code: str, *words: str) -> None:
    """A failed upload: the problem names what was wrong, leaks nothing, and leaves nothing behind."""
    assert payload["success"] is False and payload["dataset"] is None
    assert payload["error"]["code"] == code, payload["error"]
    message = payload["error"]["message"]
    for word in words:
        assert word.lower() in message.lower(), (word, message)
    assert "Traceback" not in message and "Errno" not in message
    assert not re.search(r"(^|\s)/[a-z]+/", message), message  # no absolute path
    assert str(api.settings.data_dir.resolve()) not in message
    assert api.data(LIST)["datasets"] == []
    root = api.settings.data_dir
    assert staged_files(root) == []
    assert list((root / "datasets").iterdir()) == []
    assert list((root / "uploads").iterdir()) == []


def test_csv_upload_answers_id_rows_columns_and_preview(shared: Api) -> None:
    payload = shared.upload(DATA / "penguins.csv")
    assert payload["success"] and payload["error"] is None
    ds = payload["dataset"]
    assert ds["id"] == "penguins" and ds["name"] == "penguins" and ds["version"] == 1
    assert ds["rowCount"] == 344
    columns = {c["name"]: c for c in ds["columns"]}
    assert columns["bill_length_mm"]["dtype"] == "Float64"
    assert columns["sex"]["nullCount"] == 11  # "NA" and blanks are missing
    assert columns["sex"]["missingRate"] == pytest.approx(11 / 344)
    preview = ds["preview"]["data"]
    expected = pl.read_csv(DATA / "penguins.csv", null_values=["NA"]).head(5).to_dicts()
    assert preview == expected


def test_xlsx_upload_infers_types_from_the_whole_column(shared: Api) -> None:
    rows: list[list[object]] = [["n", "x", "label", "when"]]
    rows += [[i, i, f"r{i}", "2024-01-02"] for i in range(150)]
    rows.append([150, 46.6, "NA", "2024-02-03"])  # a float after 150 ints; NA is missing
    payload = shared.upload(_xlsx(rows), "measure.xlsx")
    assert payload["success"], payload["error"]
    columns = {c["name"]: c for c in payload["dataset"]["columns"]}
    assert columns["x"]["dtype"] == "Float64"
    assert columns["n"]["dtype"] in ("Int64", "Float64")
    assert columns["label"]["nullCount"] == 1
    assert columns["when"]["dtype"] == "Date"
    q = 'query { dataset(id: "measure") { filter(where: [{column: "x", op: BETWEEN, value: [46.5, 46.7]}]) { rows { data } } } }'
    assert shared.data(q)["dataset"]["filter"]["rows"]["data"] == [
        {"n": 150, "x": 46.6, "label": None, "when": "2024-02-03"}
    ]


def test_xls_upload_keeps_fractions(shared: Api) -> None:
    rows: list[list[object]] = [["city", "temp"]] + [[f"c{i}", i] for i in range(120)] + [["last", 46.6]]
    payload = shared.upload(_xls(rows), "old.xls")
    assert payload["success"], payload["error"]
    assert payload["dataset"]["rowCount"] == 121
    q = 'query { dataset(id: "old") { filter(where: [{column: "city", op: EQ, value: "last"}]) { rows { data } } } }'
    assert shared.data(q)["dataset"]["filter"]["rows"]["data"] == [{"city": "last", "temp": 46.6}]


def test_name_argument_and_same_name_get_distinct_ids(api: Api) -> None:
    first = api.upload_ok(DATA / "tips.csv", name="My Tips")
    second = api.upload_ok(DATA / "tips.csv", name="My Tips")
    assert (first, second) == ("my-tips", "my-tips-2")
    names = {d["id"]: d["name"] for d in api.data(LIST)["datasets"]}
    assert names == {"my-tips": "My Tips", "my-tips-2": "My Tips"}


def test_ten_concurrent_uploads_with_one_name_all_land(api: Api) -> None:
    content = (DATA / "tips.csv").read_bytes()
    with ThreadPoolExecutor(10) as pool:
        ids = list(pool.map(lambda _: api.upload_ok(content, "same.csv"), range(10)))
    assert len(set(ids)) == 10
    assert len(api.data(LIST)["datasets"]) == 10


@pytest.mark.parametrize(
    "filename",
    ["../../plugins/evil.csv", "/abs/path.csv", "C:\\Users\\me\\data.csv", "\u202eevil\u202c.csv", "x" * 300 + ".csv"],
)
def test_hostile_filenames_are_stored_under_generated_names(api: Api, filename: str) -> None:
    payload = api.upload(b"a,b\n1,2\n", filename)
    assert payload["success"], payload["error"]
    name = payload["dataset"]["name"]
    assert "/" not in name and "\\" not in name and "\u202e" not in name and len(name) <= 100
    root = api.settings.data_dir
    kept = list((root / "uploads").iterdir())
    assert len(kept) == 1 and re.fullmatch(r"[0-9a-f]{32}\.csv", kept[0].name)
    assert not (root.parent / "plugins").exists()


def _zip_bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("xl/workbook.xml", "<workbook/>")
        zf.writestr("xl/worksheets/sheet1.xml", b"<" + b"a" * (50 * 1024 * 1024) + b"/>")
    return buffer.getvalue()


def _ole2() -> bytes:
    return _xls([["a"], [1]])


BAD_FILES = [
    ("png-as-csv", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "photo.csv", "UNSUPPORTED_FORMAT", ["PNG"]),
    ("ole2-as-xlsx", None, "book.xlsx", "UNSUPPORTED_FORMAT", [".xls"]),
    ("csv-as-xlsx", b"a,b\n1,2\n", "book.xlsx", "UNSUPPORTED_FORMAT", [".xlsx", "csv"]),
    ("python-file", b"print('hi')\n", "evil.py", "UNSUPPORTED_FORMAT", [".py"]),
    ("nul-in-name", b"a,b\n1,2\n", "x.csv\x00.xlsx", "UNSUPPORTED_FORMAT", []),
    ("plain-zip", None, "archive.xlsx", "UNSUPPORTED_FORMAT", ["zip"]),
    ("zip-bomb", None, "bomb.xlsx", "TOO_LARGE", ["zip bomb"]),
    ("empty", b"", "empty.csv", "BAD_INPUT", ["empty"]),
    ("header-only", b"a,b,c\n", "header.csv", "BAD_INPUT", ["no data rows"]),
    ("duplicate-columns", b"id,name,id\n1,a,2\n", "dup.csv", "BAD_INPUT", ['"id"', "twice"]),
    ("ragged", b"a,b\n1,2\n3,4\n5,6,7\n", "ragged.csv", "BAD_INPUT", ["line 4", "3 fields", "2 columns"]),
    ("latin-1", "name,city\nJosé,Zürich\n".encode("latin-1"), "latin.csv", "BAD_INPUT", ["UTF-8", "line 2"]),
    ("binary-text", b"a,b\n\x00\x01\x02,3\n", "bin.csv", "UNSUPPORTED_FORMAT", ["binary"]),
]


def _plain_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("notes.txt", "hello")
    return buffer.getvalue()


@pytest.mark.parametrize(("label", "content", "filename", "code", "words"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_get_a_clear_problem_and_leave_nothing(
    api: Api, label: str, content: bytes | None, filename: str, code: str, words: list[str]
) -> None:
    if content is None:
        content = {"ole2-as-xlsx": _ole2, "plain-zip": _plain_zip, "zip-bomb": _zip_bomb}[label]()
    payload = api.upload(content, filename)
    _assert_clean(api, payload, code, *words)
    assert api.upload_ok(DATA / "tips.csv")  # the server keeps serving


def test_too_many_columns_is_refused_from_the_header(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_columns=50)
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        header = ",".join(f"c{i}" for i in range(51))
        _assert_clean(
            api,
            api.upload((header + "\n" + ",".join("1" * 51) + "\n").encode(), "wide.csv"),
            "TOO_LARGE",
            "51 columns",
            "50",
        )
        wide = ",".join(f"c{i}" for i in range(1_000_000))  # a 7 MB header line
        _assert_clean(api, api.upload(wide.encode() + b"\n", "huge.csv"), "TOO_LARGE", "at most 50 columns")


def test_too_many_rows_is_refused(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_rows=100)
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        _assert_clean(api, api.upload(DATA / "tips.csv"), "TOO_LARGE", "100 rows")


def test_oversize_upload_is_refused_while_streaming(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_upload_mb=0.05)
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        # Far over the limit: the body itself is refused with 413 before it is all read.
        response = api.upload_raw((DATA / "diamonds.csv").read_bytes(), "diamonds.csv")
        assert response.status_code == 413
        message = response.json()["errors"][0]["message"]
        assert "0.05 MiB" in message and "max_upload_mb" in message
        # Just over (within the multipart framing allowance): the file copy stops at the limit.
        _assert_clean(api, api.upload(DATA / "titanic.csv"), "TOO_LARGE", "0.05 MiB", "max_upload_mb")
        assert api.upload_ok(DATA / "tips.csv") == "tips"  # 9.7 KB fits


def test_chunked_upload_without_content_length_is_cut_at_the_limit(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_upload_mb=0.01)
    with TestClient(create_app(settings)) as client:
        boundary = "b0undary"
        ops = '{"query": "mutation($f: Upload!) { uploadDataset(file: $f) { success } }", "variables": {"f": null}}'

        def body():  # a generator body is sent chunked, with no Content-Length
            yield f'--{boundary}\r\nContent-Disposition: form-data; name="operations"\r\n\r\n{ops}\r\n'.encode()
            yield f'--{boundary}\r\nContent-Disposition: form-data; name="map"\r\n\r\n{{"0": ["variables.f"]}}\r\n'.encode()
            yield f'--{boundary}\r\nContent-Disposition: form-data; name="0"; filename="a.csv"\r\n\r\n'.encode()
            for _ in range(100):
                yield b"1,2,3,4,5,6,7,8,9\n" * 100
            yield f"\r\n--{boundary}--\r\n".encode()

        response = client.post(
            "/graphql",
            content=body(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}", "Apollo-Require-Preflight": "1"},
        )
        assert response.status_code == 413
        assert staged_files(settings.data_dir) == []


def test_multipart_without_preflight_header_is_refused(api: Api) -> None:
    response = api.upload_raw(b"a,b\n1,2\n", "a.csv", **{"Content-Type-Ignored": "x"})
    assert response.status_code == 400
    assert "Apollo-Require-Preflight" in response.json()["errors"][0]["message"]
    assert api.data(LIST)["datasets"] == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xef\xbb\xbfa,b\n1,2\n", [{"a": 1, "b": 2}]),  # BOM
        (b"a,b\r\n1,2\r\n3,4\n", [{"a": 1, "b": 2}, {"a": 3, "b": 4}]),  # mixed CRLF / LF
        (b"a,b\r1,2\r3,4\r", [{"a": 1, "b": 2}, {"a": 3, "b": 4}]),  # old Mac CR only
        (b"a;b\n1;2\n", [{"a": 1, "b": 2}]),  # semicolon-separated
        (b"a,b\n1\n", [{"a": 1, "b": None}]),  # a short row: the missing field is missing
        (b"a,,c\n1,2,3\n", [{"a": 1, "column_2": 2, "c": 3}]),  # an unnamed column
    ],
    ids=["bom", "mixed-line-endings", "cr-only", "semicolons", "short-row", "unnamed-column"],
)
def test_awkward_but_valid_csv_reads(shared: Api, content: bytes, expected: list[dict]) -> None:
    dataset_id = shared.upload_ok(content, "awkward.csv")
    rows = shared.data("query($id: ID!) { dataset(id: $id) { rows { data } } }", {"id": dataset_id})
    assert rows["dataset"]["rows"]["data"] == expected


def test_a_quoted_field_may_hold_newlines_and_separators(shared: Api) -> None:
    content = b'a,b,c\n1,"two\nlines, and ""quotes""",2024-01-31\n3,"x",2024-02-01\n'
    dataset_id = shared.upload_ok(content, "quoted.csv")
    query = "query($id: ID!) { dataset(id: $id) { columns { name dtype } rows { data } } }"
    found = shared.data(query, {"id": dataset_id})["dataset"]
    assert [c["dtype"] for c in found["columns"]] == ["Int64", "String", "Date"]
    assert found["rows"]["data"] == [
        {"a": 1, "b": 'two\nlines, and "quotes"', "c": "2024-01-31"},
        {"a": 3, "b": "x", "c": "2024-02-01"},
    ]


# The type of a column is decided by all of its values: past the sample that suggests a type (the
# first 1,000 present values) and past the head read at once (10,000 rows), a last value that does
# not fit changes it, as in pandas.
_LONG = 15_000


@pytest.mark.parametrize(
    ("values", "last", "dtype", "expected"),
    [
        ("{i}", "2.5", "Float64", 2.5),
        ("{i}", "n/a", "Int64", None),  # a missing-value token is missing, not a misfit
        ("{i}.5", "seven", "String", "seven"),
        ("true", "maybe", "String", "maybe"),
        ("2024-01-02", "2024-13-45", "String", "2024-13-45"),
        ("2024-01-02T03:04:05", "yesterday", "String", "yesterday"),
    ],
    ids=[
        "int-then-float",
        "int-then-missing",
        "float-then-text",
        "bool-then-text",
        "date-then-bad-date",
        "datetime-then-text",
    ],
)
def test_a_csv_column_is_typed_by_every_value_up_to_the_last_line(
    shared: Api, values: str, last: str, dtype: str, expected: object
) -> None:
    lines = [f"{i},{values.format(i=i)}" for i in range(_LONG - 1)] + [f"{_LONG - 1},{last}"]
    dataset_id = shared.upload_ok(("n,v\n" + "\n".join(lines) + "\n").encode(), "long.csv")
    query = (
        "query($id: ID!, $o: Int!) { dataset(id: $id) { rowCount columns { name dtype } rows(offset: $o) { data } } }"
    )
    found = shared.data(query, {"id": dataset_id, "o": _LONG - 1})["dataset"]
    assert found["rowCount"] == _LONG
    assert [c["dtype"] for c in found["columns"]] == ["Int64", dtype]
    assert found["rows"]["data"] == [{"n": _LONG - 1, "v": expected}]


def test_datasets_survive_a_restart_and_crash_leftovers_are_swept(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings)) as client:
        Api(client, settings).upload_ok(DATA / "tips.csv")
    root = settings.data_dir
    (root / "staging" / "half-written.parquet.tmp").write_bytes(b"PAR1")
    (root / "datasets" / "orphan").mkdir()
    (root / "datasets" / "orphan" / "v1.parquet").write_bytes(b"PAR1")
    (root / "exports" / "unknowntoken.csv").write_bytes(b"a\n")
    (root / "exports" / "unknowntoken.csv.tmp").write_bytes(b"a\n")
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        assert [d["id"] for d in api.data(LIST)["datasets"]] == ["tips"]
        count = api.data('{ dataset(id: "tips") { count { data } } }')["dataset"]["count"]["data"]
        assert count == {"count": 244}
    assert list((root / "staging").iterdir()) == []
    assert sorted(p.name for p in (root / "datasets").iterdir()) == ["tips"]
    assert list((root / "exports").iterdir()) == []


def test_delete_dataset_removes_its_files_only_and_unknown_id_is_not_found(api: Api) -> None:
    api.upload_ok(DATA / "tips.csv")
    api.upload_ok(DATA / "penguins.csv")
    url = api.data('{ dataset(id: "tips") { export { data } } }')["dataset"]["export"]["data"]["url"]
    assert api.client.get(url).status_code == 200
    root = api.settings.data_dir

    def files() -> list[int]:
        return [len(list((root / d).iterdir())) for d in ("datasets", "uploads", "exports")]

    assert files() == [2, 2, 1]
    q = "mutation($id: ID!) { deleteDataset(id: $id) { success error { code message } dataset { id name } } }"
    done = api.data(q, {"id": "tips"})["deleteDataset"]
    assert done["success"] and done["dataset"] == {"id": "tips", "name": "tips"}
    assert api.data(LIST)["datasets"] == [{"id": "penguins", "name": "penguins"}]
    assert files() == [1, 1, 0]  # the raw upload and the export went with it; penguins' files stay
    assert api.client.get(url).status_code == 404
    assert api.data('{ dataset(id: "penguins") { count { data } } }')["dataset"]["count"]["data"] == {"count": 344}
    assert api.data(q, {"id": "penguins"})["deleteDataset"]["success"]
    assert files() == [0, 0, 0]
    again = api.data(q, {"id": "tips"})["deleteDataset"]
    assert again["success"] is False and again["error"]["code"] == "NOT_FOUND" and '"tips"' in again["error"]["message"]
    assert api.data('{ dataset(id: "tips") { id } }')["dataset"] is None


RENAME = """mutation($id: ID!, $n: String!) { renameDataset(id: $id, name: $n) {
  success error { code message } dataset { id name version rowCount } } }"""


def test_rename_dataset_changes_the_name_only_and_refuses_what_is_no_name(tmp_path: Path) -> None:
    with serving(make_settings(tmp_path)) as api:
        api.upload_ok(DATA / "tips.csv")
        url = api.data('{ dataset(id: "tips") { export { data } } }')["dataset"]["export"]["data"]["url"]
        done = api.data(RENAME, {"id": "tips", "n": "  Tips by day\u202e/../x  "})["renameDataset"]
        assert done["success"], done["error"]
        # The id, version and data stay; the name is cleaned as an upload's is (no path, no bidi override).
        assert done["dataset"] == {"id": "tips", "name": "x", "version": 1, "rowCount": 244}
        done = api.data(RENAME, {"id": "tips", "n": "Tips by day " + "y" * 200})["renameDataset"]
        assert done["success"] and done["dataset"]["name"] == ("Tips by day " + "y" * 200)[:100]
        assert api.data(LIST)["datasets"] == [{"id": "tips", "name": done["dataset"]["name"]}]
        assert api.client.get(url).status_code == 200  # links made before stay valid
        assert api.data('{ dataset(id: "tips") { count { data } } }')["dataset"]["count"]["data"] == {"count": 244}
        for name in ("", "   "):
            refused = api.data(RENAME, {"id": "tips", "n": name})["renameDataset"]
            assert refused["success"] is False and refused["error"]["code"] == "BAD_INPUT"
        missing = api.data(RENAME, {"id": "nope", "n": "x"})["renameDataset"]
        assert missing["error"]["code"] == "NOT_FOUND" and '"nope"' in missing["error"]["message"]
        # A new upload of the old name still gets a fresh id: ids never follow names.
        assert api.upload_ok(DATA / "tips.csv") == "tips-2"
