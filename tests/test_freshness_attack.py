"""Attacks on schedules, refreshes and data checks (issue 22) as a careless or hostile client, or a
second server process, would make them: each test is a defect found and fixed.

The engine's rules are tested in-process on real Parquet files (the same code runs in the worker);
the rest through one real app for the module."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from support import Api, make_settings, serving

import engine
from datagraph.errors import BadInput


def _evaluated(tmp_path: Path, frame: pl.DataFrame, rules: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The rules checked against `frame`'s columns and run on it, as a new version's checks are."""
    path = tmp_path / "version.parquet"
    frame.write_parquet(path)
    columns = {name: engine.dtype_name(dtype) for name, dtype in frame.schema.items()}
    checked = engine.checked_rules(rules, columns, max_rules=50, max_values=1_000)
    return engine.evaluate(path, checked, time.time())


# --- the rules' values and columns ------------------------------------------------------------------


def test_freshness_on_a_date_at_the_end_of_the_calendar_does_not_void_every_check(tmp_path: Path) -> None:
    """A date column whose newest value is 9999-12-31 (a "never expires" marker) is fresh; the run
    of the dataset's other checks goes on (it failed whole, as an internal error)."""
    frame = pl.DataFrame({"until": [dt.date(2020, 1, 1), dt.date(9999, 12, 31)], "n": [1, None]})
    found = _evaluated(tmp_path, frame, [{"freshness": {"column": "until", "maxAge": "1d"}}, {"notNull": ["n"]}])
    assert found["freshness(until, 1d)"] == {"passed": True, "message": "the newest until is 9999-12-31, within 1d"}
    assert found["notNull(n)"] == {"passed": False, "message": "n has 1 null"}


@pytest.mark.parametrize(
    "rule",
    [{"range": {"column": "n", "min": 2**64}}, {"range": {"column": "n", "max": -(2**63) - 1}},
     {"allowed": {"column": "n", "values": [1, 10**400]}}],
)  # fmt: skip
def test_a_number_past_64_bits_in_a_rule_is_refused_in_the_users_terms(rule: dict[str, Any]) -> None:
    """A GraphQL literal may be any integer; one that no column can hold (and the metadata cannot
    keep) is refused, where it made an internal error."""
    with pytest.raises(BadInput, match=r"is not a number of at most 64 bits"):
        engine.checked_rules([rule], {"n": "Int64"}, max_rules=5, max_values=5)
    largest = {"range": {"column": "n", "min": -(2**63), "max": 2**64 - 1}}
    assert engine.checked_rules([largest], {"n": "UInt64"}, max_rules=5, max_values=5) == [largest]


def test_a_range_on_times_of_a_local_time_zone_runs(tmp_path: Path) -> None:
    """A plugin may give times in a time zone of its own (Europe/Paris): a range on them compares
    the same instants (the run failed whole, on a literal in UTC)."""
    noon = pl.Series("at", [dt.datetime(2026, 1, 1, 12), dt.datetime(2026, 1, 1, 13)], dtype=pl.Datetime("ms"))
    frame = pl.DataFrame([noon.dt.replace_time_zone("Europe/Paris")])  # 11:00 and 12:00 UTC
    found = _evaluated(
        tmp_path, frame,
        [{"range": {"column": "at", "min": "2026-01-01T11:00:00Z", "max": "2026-01-01T12:30:00+01:00"}},
         {"range": {"column": "at", "max": "2026-01-01T11:30:00"}}],
    )  # fmt: skip
    assert found["range(at, 2026-01-01T11:00:00Z..2026-01-01T12:30:00+01:00)"]["passed"] is False
    assert "1 value of at outside" in found["range(at, 2026-01-01T11:00:00Z..2026-01-01T12:30:00+01:00)"]["message"]
    assert found["range(at, ..2026-01-01T11:30:00)"]["passed"] is False  # naive: UTC; 12:00 UTC is past it


# --- through the app ---------------------------------------------------------------------------------

PAYLOAD = "success error { code message } dataset { id version rowCount } job { kind status }"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app for the module (each test uses datasets of its own), with a SQLite database source."""
    work = tmp_path_factory.mktemp("attack")
    with sqlite3.connect(work / "shop.db") as db:
        db.execute("CREATE TABLE placeholder (n INTEGER)")
    sources = work / "sources.yaml"
    sources.write_text(f"sources:\n  shop:\n    kind: sqlite\n    url: sqlite:///{work / 'shop.db'}\n")
    with serving(make_settings(work, sources=str(sources), schedule_min_s=1)) as api:
        yield api


def _at_once(api: Api, *queries: str) -> list[dict[str, Any]]:
    """The bodies of `queries` POSTed to the app at the same moment (each its own request)."""
    assert api.client.portal is not None

    async def post_all() -> list[dict[str, Any]]:
        transport = httpx.ASGITransport(app=api.client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            answers = await asyncio.gather(*(client.post("/graphql", json={"query": q}) for q in queries))
        return [a.json() for a in answers]

    bodies: list[dict[str, Any]] = api.client.portal.call(post_all)
    return bodies


def _shop_table(api: Api, table: str, rows: list[tuple[str, int]]) -> None:
    path = api.settings.sources.replace("sources.yaml", "shop.db")
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE IF NOT EXISTS {table} (dish TEXT, score INTEGER)")
        db.executemany(f"INSERT INTO {table} VALUES (?, ?)", rows)


def _versions(api: Api, dataset: str) -> list[int]:
    found = api.data('{ dataset(id: "%s") { versions { number } } }' % dataset)["dataset"]["versions"]
    return sorted(v["number"] for v in found)


def test_refreshes_asked_at_once_make_one_new_version_of_new_rows(app: Api) -> None:
    """Refreshes under way together each read the table's new rows; the first makes the next version,
    and the others find that version already holds those rows (they made a version each, of the
    same rows, pushing real history out of keep_versions)."""
    _shop_table(app, "ratings_at_once", [("soup", 4)])
    imported = app.data('mutation { importTable(source: "shop", table: "ratings_at_once") { %s } }' % PAYLOAD)
    dataset = imported["importTable"]["dataset"]["id"]
    _shop_table(app, "ratings_at_once", [("pie", 5)])
    refresh = 'mutation { refreshDataset(id: "%s") { %s } }' % (dataset, PAYLOAD)
    answers = [b["data"]["refreshDataset"] for b in _at_once(app, *[refresh] * 4)]
    assert all(a["success"] for a in answers), answers
    assert sorted(a["dataset"]["version"] for a in answers) == [2, 2, 2, 2]
    assert _versions(app, dataset) == [1, 2]
