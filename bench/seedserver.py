"""The reference server for bench/journey.py: the REST API the seed design describes, written as a
competent Flask + pandas developer would write it.

- `POST /api/sources` (multipart `file`): the upload is stored under `uploads/` with a generated
  name, read with pandas (`read_csv`, pandas' missing-value tokens, ISO dates and timestamps
  recognised; the first sheet of an .xlsx), loaded into SQLite with `DataFrame.to_sql` (the seed's
  "kept as a table for the next step to reuse"), and answered with a five-row preview and the column
  types, null counts and missing rates (and, for the benchmark, `meta.readMs` and `meta.storeMs`:
  the time spent reading the file and loading it into SQLite). `GET /api/sources`, `DELETE /api/sources/<id>`,
  `GET /api/sources/<id>/rows?limit=&offset=`.
- `POST /api/analyze/describe|filter|groupby|join` with a JSON body of parameters, and
  `POST /api/export` (the filtered rows as CSV).
- Every JSON answer is `{"success", "data", "meta"}`; a failure is `success: false` with a plain
  message and HTTP 400/404, never a traceback.

Choices that favour the baseline, each what a competent developer would do:
- DataFrames stay in memory in a small LRU (4 datasets) after upload, so an analysis does not read
  1,000,000 rows back from SQLite (12 s here) on every request; SQLite is read only on a miss.
- Results are cached in an LRU bounded by bytes (256 MiB, as datagraph's default), keyed by the
  route, the canonical JSON parameters and the dataset versions, and the cache holds the encoded
  response bytes, so a hit costs a dict lookup.
- Record lists are encoded by pandas' C encoder (`to_json`, 15 significant digits, ISO dates), not
  `to_dict` + `jsonify` (8x slower for 1,000 rows here).
- No 60 s analysis deadline: stopping pandas needs a process per analysis, which would cost the
  baseline pickling; leaving it out only makes the baseline faster.
- pandas' `read_excel` needs openpyxl or python-calamine, neither of which is installed, so .xlsx is
  read with fastexcel (calamine, the reader `read_excel(engine="calamine")` uses) into a DataFrame,
  whole-number float columns becoming integers as `read_excel` does.

Usage: `python bench/seedserver.py --port 8001 --data-dir DIR [--max-upload-mb 1024]`; it serves
with werkzeug's threaded WSGI server (installed with Flask; HTTP/1.1 keep-alive), request log off.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import re
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

FRAMES_KEPT = 4
CACHE_BYTES = 256 << 20
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?$")
_AGGS = {"COUNT": "count", "SUM": "sum", "MEAN": "mean", "MEDIAN": "median", "MIN": "min", "MAX": "max",
         "STD": "std", "VAR": "var", "N_UNIQUE": "nunique", "FIRST": "first", "LAST": "last"}  # fmt: skip


class Problem(Exception):
    """An expected failure, answered as `success: false` with this message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class LRU:
    """A thread-safe LRU mapping, bounded by entries or by the bytes of its values."""

    def __init__(self, max_items: int = 0, max_bytes: int = 0) -> None:
        self.items: OrderedDict[Any, Any] = OrderedDict()
        self.max_items, self.max_bytes, self.size = max_items, max_bytes, 0
        self.lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self.lock:
            value = self.items.get(key)
            if value is not None:
                self.items.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        with self.lock:
            if key in self.items:
                self.size -= self._cost(self.items.pop(key))
            self.items[key] = value
            self.size += self._cost(value)
            while self.items and (
                (self.max_items and len(self.items) > self.max_items) or (self.max_bytes and self.size > self.max_bytes)
            ):
                self.size -= self._cost(self.items.popitem(last=False)[1])

    def drop(self, match: Callable[[Any], bool]) -> None:
        with self.lock:
            for key in [k for k in self.items if match(k)]:
                self.size -= self._cost(self.items.pop(key))

    def _cost(self, value: Any) -> int:
        return len(value) if self.max_bytes else 0


# ---- reading files --------------------------------------------------------------------------------------------


def read_upload(path: Path, ext: str) -> pd.DataFrame:
    """The file as a DataFrame: header row, blanks and pandas' NA tokens missing, ISO dates parsed."""
    if ext == "csv":
        frame = pd.read_csv(path)
    else:
        import fastexcel

        sheet = fastexcel.read_excel(str(path)).load_sheet(0).to_polars()
        frame = pd.DataFrame({name: sheet[name].to_numpy() for name in sheet.columns})
        for name in frame.columns:  # Excel keeps numbers as floats; read_excel gives whole ones back as ints
            col = frame[name]
            if col.dtype == np.float64 and col.notna().all() and (col % 1 == 0).all():
                frame[name] = col.astype(np.int64)
    for name in frame.columns:
        col = frame[name]
        if col.dtype == object or pd.api.types.is_string_dtype(col):
            sample = col.dropna().head(1000)
            if len(sample) and sample.map(lambda v: isinstance(v, str) and bool(_ISO.match(v))).all():
                with contextlib.suppress(ValueError, TypeError):  # not dates after all: stays text
                    frame[name] = pd.to_datetime(col, format="ISO8601")
    return frame


def column_meta(frame: pd.DataFrame) -> list[dict[str, Any]]:
    rows = len(frame)
    nulls = frame.isna().sum()
    return [
        {"name": name, "dtype": str(frame[name].dtype), "nullCount": int(nulls[name]),
         "missingRate": (int(nulls[name]) / rows) if rows else 0.0}
        for name in frame.columns
    ]  # fmt: skip


def records_json(frame: pd.DataFrame) -> str:
    """A list of records as JSON text: pandas' C encoder, NaN as null, dates as ISO text."""
    return frame.to_json(orient="records", date_format="iso", double_precision=15, force_ascii=False)


# ---- the store: SQLite tables, metadata, and the in-memory frames ---------------------------------------------


class Store:
    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir
        (data_dir / "uploads").mkdir(parents=True, exist_ok=True)
        self.db = data_dir / "seed.sqlite3"
        self.frames = LRU(max_items=FRAMES_KEPT)
        self.local = threading.local()
        with self.connect() as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS datasets (id TEXT PRIMARY KEY, name TEXT, tbl TEXT, version INTEGER,"
                " rows INTEGER, columns TEXT, dates TEXT, stored_as TEXT, created REAL)"
            )

    def connect(self) -> sqlite3.Connection:
        con = getattr(self.local, "con", None)
        if con is None:
            con = self.local.con = sqlite3.connect(self.db, timeout=30)
            con.execute("PRAGMA journal_mode=WAL")
        return con

    def add(self, name: str, frame: pd.DataFrame, stored_as: str) -> dict[str, Any]:
        dataset_id = f"{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-') or 'dataset'}-{uuid.uuid4().hex[:8]}"
        table = "t_" + dataset_id.replace("-", "_")
        columns = column_meta(frame)
        dates = [c for c in frame.columns if pd.api.types.is_datetime64_any_dtype(frame[c])]
        con = self.connect()
        with con:
            frame.to_sql(table, con, index=False, chunksize=50_000)
            con.execute(
                "INSERT INTO datasets VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?)",
                (dataset_id, name, table, len(frame), json.dumps(columns), json.dumps(dates), stored_as, time.time()),
            )
        self.frames.put(dataset_id, frame)
        return self.record(dataset_id)

    def record(self, dataset_id: str) -> dict[str, Any]:
        row = (
            self.connect()
            .execute(
                "SELECT id, name, tbl, version, rows, columns, dates, stored_as FROM datasets WHERE id = ?",
                (dataset_id,),
            )
            .fetchone()
        )
        if row is None:
            raise Problem(f'There is no dataset "{dataset_id}".', 404)
        keys = ("id", "name", "table", "version", "rows", "columns", "dates", "stored_as")
        record = dict(zip(keys, row, strict=True))
        record["columns"], record["dates"] = json.loads(record["columns"]), json.loads(record["dates"])
        return record

    def all(self) -> list[dict[str, Any]]:
        ids = [r[0] for r in self.connect().execute("SELECT id FROM datasets ORDER BY created")]
        return [self.record(i) for i in ids]

    def frame(self, dataset_id: str) -> pd.DataFrame:
        frame = self.frames.get(dataset_id)
        if frame is None:
            record = self.record(dataset_id)
            frame = pd.read_sql(f'SELECT * FROM "{record["table"]}"', self.connect(), parse_dates=record["dates"])
            self.frames.put(dataset_id, frame)
        return frame

    def delete(self, dataset_id: str) -> None:
        record = self.record(dataset_id)
        con = self.connect()
        with con:
            con.execute(f'DROP TABLE IF EXISTS "{record["table"]}"')
            con.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,))
        (self.dir / "uploads" / record["stored_as"]).unlink(missing_ok=True)
        self.frames.drop(lambda k: k == dataset_id)


# ---- analysis --------------------------------------------------------------------------------------------------


def column(frame: pd.DataFrame, name: Any) -> pd.Series:
    if name not in frame.columns:
        raise Problem(f'There is no column "{name}". Columns: {", ".join(map(str, frame.columns))}.')
    return frame[name]


def mask(frame: pd.DataFrame, where: list[dict[str, Any]]) -> pd.Series:
    """The rows matching every condition; a missing value matches no comparison, as in SQL."""
    keep = pd.Series(True, index=frame.index)
    for cond in where:
        col, op, value = column(frame, cond.get("column")), cond.get("op"), cond.get("value")
        if pd.api.types.is_datetime64_any_dtype(col) and isinstance(value, str):
            value = pd.Timestamp(value)
        present = col.notna()
        if op == "EQ":
            m = col == value
        elif op == "NE":
            m = (col != value) & present
        elif op in ("GT", "GE", "LT", "LE"):
            m = {"GT": col.gt, "GE": col.ge, "LT": col.lt, "LE": col.le}[op](value)
        elif op in ("IN", "NOT_IN"):
            m = col.isin(list(value)) if op == "IN" else ~col.isin(list(value)) & present
        elif op == "BETWEEN":
            m = col.between(value[0], value[1])
        elif op in ("CONTAINS", "STARTS_WITH", "ENDS_WITH"):
            text = col.astype("str").str
            if op == "CONTAINS":
                m = text.contains(value, regex=False) & present
            else:
                m = (text.startswith(value) if op == "STARTS_WITH" else text.endswith(value)) & present
        elif op == "IS_NULL":
            m = ~present
        elif op == "NOT_NULL":
            m = present
        else:
            raise Problem(f'Unknown operator "{op}".')
        keep &= m.fillna(False).astype(bool)
    return keep


def filtered(frame: pd.DataFrame, where: list[dict[str, Any]] | None) -> pd.DataFrame:
    return frame[mask(frame, where)] if where else frame


def describe(frame: pd.DataFrame, columns: list[str] | None) -> str:
    """`describe(include="all")` per column, with its dtype and null count."""
    part = frame[[column(frame, c).name for c in columns]] if columns else frame
    stats = part.describe(include="all").T
    stats.columns = [{"25%": "p25", "50%": "p50", "75%": "p75"}.get(c, c) for c in stats.columns]
    stats.insert(0, "nullCount", part.isna().sum())
    stats.insert(0, "dtype", part.dtypes.astype(str))
    stats.insert(0, "column", stats.index)
    return records_json(stats)


def group_by(frame: pd.DataFrame, by: list[str], aggregations: list[dict[str, Any]]) -> pd.DataFrame:
    named = {}
    for agg in aggregations:
        fn = _AGGS.get(agg.get("fn", ""))
        if fn is None:
            raise Problem(f'Unknown aggregation "{agg.get("fn")}"; use one of {", ".join(_AGGS)}.')
        alias = agg.get("alias") or f"{agg['column']}_{agg['fn'].lower()}"
        named[alias] = (column(frame, agg["column"]).name, fn)
    keys = [column(frame, k).name for k in by]
    return frame.groupby(keys, dropna=False, sort=True).agg(**named).reset_index()


def join_summary(left: pd.DataFrame, right: pd.DataFrame, on: list[str], how: str) -> dict[str, Any]:
    for key in on:
        column(left, key), column(right, key)
    merged = left.merge(right, on=on, how=how.lower(), suffixes=("", "_right"))
    if len(on) == 1:
        matched = int(left[on[0]].isin(right[on[0]].dropna()).sum())
    else:
        matched = int(pd.MultiIndex.from_frame(left[on]).isin(pd.MultiIndex.from_frame(right[on].dropna())).sum())
    return {
        "rows": len(merged),
        "columns": [{"name": c, "dtype": str(t)} for c, t in merged.dtypes.items()],
        "leftRows": len(left),
        "rightRows": len(right),
        "matchedLeftRows": matched,
        "matchRate": matched / len(left) if len(left) else None,
    }


# ---- the app ---------------------------------------------------------------------------------------------------


def create_app(data_dir: Path, max_upload_mb: float = 20) -> Flask:
    app = Flask("seedserver")
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 1024 * 1024)
    store = Store(data_dir)
    cache = LRU(max_bytes=CACHE_BYTES)

    def answer(data_json: str, meta: dict[str, Any], status: int = 200) -> Response:
        body = f'{{"success":true,"meta":{json.dumps(meta)},"data":{data_json}}}'
        return Response(body, status=status, mimetype="application/json")

    def failure(message: str, status: int) -> Response:
        body = json.dumps({"success": False, "meta": {}, "data": None, "error": message})
        return Response(body, status=status, mimetype="application/json")

    def cached(route: str, params: Any, datasets: list[str], work: Callable[[], bytes]) -> tuple[bytes, bool]:
        """The response body for these parameters and dataset versions, from the LRU or made by `work`
        and stored; and whether it came from the LRU."""
        versions = [store.record(d)["version"] for d in datasets]
        key = hashlib.sha256(json.dumps([route, params, datasets, versions], sort_keys=True).encode()).hexdigest()
        hit = cache.get(key)
        if hit is not None:
            return hit, True
        body = work()
        cache.put(key, body)
        return body, False

    def analysis(
        route: str, params: Any, datasets: list[str], work: Callable[[], tuple[str, dict[str, Any]]]
    ) -> Response:
        """A cached JSON answer: meta first (with `cached` and `elapsedMs`), then the data."""

        def make() -> bytes:
            t0 = time.perf_counter()
            data_json, meta = work()
            meta = {"cached": False, **meta, "elapsedMs": round((time.perf_counter() - t0) * 1000, 3)}
            return f'{{"success":true,"meta":{json.dumps(meta, separators=(",", ":"))},"data":{data_json}}}'.encode()

        body, hit = cached(route, params, datasets, make)
        if hit:
            body = body.replace(b'"cached":false', b'"cached":true', 1)
        return Response(body, mimetype="application/json")

    def params() -> dict[str, Any]:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise Problem("Send the parameters as a JSON object.")
        return body

    @app.errorhandler(Problem)
    def problem(exc: Problem) -> Response:
        return failure(str(exc), exc.status)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return failure(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        app.logger.exception("unexpected error")
        return failure("Something went wrong on the server.", 500)

    @app.post("/api/sources")
    def upload() -> Response:
        file = request.files.get("file")
        if file is None or not file.filename:
            raise Problem("Send the file in the form field 'file'.")
        ext = file.filename.rsplit(".", 1)[-1].lower()
        if ext not in ("csv", "xlsx", "xls"):
            raise Problem("Only .csv, .xlsx and .xls files can be uploaded.")
        stored_as = f"{uuid.uuid4().hex}.{ext}"
        path = data_dir / "uploads" / stored_as
        file.save(path)
        t0 = time.perf_counter()
        try:
            frame = read_upload(path, ext)
        except (ValueError, pd.errors.ParserError) as exc:
            path.unlink(missing_ok=True)
            raise Problem(f"The file could not be read: {str(exc).splitlines()[0]}") from exc
        t1 = time.perf_counter()
        name = request.form.get("name") or file.filename.rsplit(".", 1)[0]
        record = store.add(name, frame, stored_as)
        t2 = time.perf_counter()
        data = f'{{"id":{json.dumps(record["id"])},"name":{json.dumps(name)},"preview":{records_json(frame.head(5))}}}'
        meta = {"rowCount": record["rows"], "columns": record["columns"], "readMs": (t1 - t0) * 1000,
                "storeMs": (t2 - t1) * 1000}  # fmt: skip
        return answer(data, meta, 201)

    @app.get("/api/sources")
    def sources() -> Response:
        listed = [{k: r[k] for k in ("id", "name", "version", "rows", "columns")} for r in store.all()]
        return answer(json.dumps(listed), {"rowCount": len(listed)})

    @app.delete("/api/sources/<dataset_id>")
    def delete(dataset_id: str) -> Response:
        store.delete(dataset_id)
        return answer(json.dumps({"id": dataset_id}), {})

    @app.get("/api/sources/<dataset_id>/rows")
    def rows(dataset_id: str) -> Response:
        limit = min(request.args.get("limit", 100, type=int), 10_000)
        offset = request.args.get("offset", 0, type=int)

        def work() -> tuple[str, dict[str, Any]]:
            frame = store.frame(dataset_id)
            page = frame.iloc[offset : offset + limit]
            return records_json(page), {"rowCount": len(page), "truncated": offset + limit < len(frame)}

        return analysis("rows", {"limit": limit, "offset": offset}, [dataset_id], work)

    @app.post("/api/analyze/describe")
    def describe_route() -> Response:
        p = params()

        def work() -> tuple[str, dict[str, Any]]:
            frame = store.frame(p["dataset"])
            return describe(frame, p.get("columns")), {"rowCount": len(frame)}

        return analysis("describe", p, [p.get("dataset")], work)

    @app.post("/api/analyze/filter")
    def filter_route() -> Response:
        p = params()

        def work() -> tuple[str, dict[str, Any]]:
            result = filtered(store.frame(p["dataset"]), p.get("where"))
            limit = min(int(p.get("limit", 100)), 10_000)
            data = f'{{"count":{len(result)},"rows":{records_json(result.head(limit))}}}'
            return data, {"rowCount": len(result), "truncated": len(result) > limit}

        return analysis("filter", p, [p.get("dataset")], work)

    @app.post("/api/analyze/groupby")
    def groupby_route() -> Response:
        p = params()

        def work() -> tuple[str, dict[str, Any]]:
            frame = filtered(store.frame(p["dataset"]), p.get("where"))
            result = group_by(frame, p.get("by") or [], p.get("aggregations") or [])
            return records_json(result), {"rowCount": len(result), "columns": column_meta(result)}

        return analysis("groupby", p, [p.get("dataset")], work)

    @app.post("/api/analyze/join")
    def join_route() -> Response:
        p = params()

        def work() -> tuple[str, dict[str, Any]]:
            summary = join_summary(store.frame(p["left"]), store.frame(p["right"]), p["on"], p.get("how", "INNER"))
            return json.dumps(summary), {"rowCount": summary["rows"], "matchRate": summary["matchRate"]}

        return analysis("join", p, [p.get("left"), p.get("right")], work)

    @app.post("/api/export")
    def export() -> Response:
        p = params()
        if p.get("format", "csv").lower() != "csv":
            raise Problem("Only CSV export is offered.")

        def work() -> bytes:
            return filtered(store.frame(p["dataset"]), p.get("where")).to_csv(index=False).encode()

        body, hit = cached("export", p, [p.get("dataset")], work)
        headers = {
            "Content-Disposition": f'attachment; filename="{p["dataset"]}.csv"',
            "X-Cache": "hit" if hit else "miss",
        }
        return Response(body, mimetype="text/csv", headers=headers)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--max-upload-mb", type=float, default=20, help="20 MB as the seed says; raise for benchmarks")
    parser.add_argument(
        "--server",
        choices=("werkzeug", "uvicorn"),
        default="werkzeug",
        help="werkzeug's threaded server, or uvicorn's WSGI interface (a thread pool, with keep-alive)",
    )
    args = parser.parse_args()
    app = create_app(args.data_dir, args.max_upload_mb)
    if args.server == "uvicorn":
        import uvicorn

        uvicorn.run(app, host=args.host, port=args.port, interface="wsgi", log_level="warning", access_log=False)
    else:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no per-request log line
        make_server(args.host, args.port, app, threaded=True).serve_forever()


if __name__ == "__main__":
    main()
