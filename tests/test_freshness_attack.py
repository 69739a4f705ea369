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
from support import Api, make_settings, serving, wait_for

import engine
from datagraph.errors import BadInput
from resolvers import freshness
from resolvers.context import Context
from resolvers.jobs import new_job_id


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


def _import(api: Api, table: str, rows: list[tuple[str, int]]) -> str:
    _shop_table(api, table, rows)
    imported = api.data('mutation { importTable(source: "shop", table: "%s") { %s } }' % (table, PAYLOAD))
    dataset: str = imported["importTable"]["dataset"]["id"]
    return dataset


def test_refreshes_run_together_make_one_new_version_of_new_rows(app: Api) -> None:
    """Two server processes may refresh one dataset at once (refreshDataset on each, no schedule to
    claim): each reads the table's new rows, the first makes the next version and the others find
    that version holds those rows already (each made a version of the same rows, pushing real history
    out of keep_versions). Here the refreshes run side by side in one process, as on two."""
    dataset = _import(app, "ratings_together", [("soup", 4)])
    _shop_table(app, "ratings_together", [("pie", 5)])
    res = app.client.app.state.resources  # type: ignore[attr-defined]
    record = res.metadata.get_dataset(dataset)

    async def refresh_together() -> list[int]:
        ctx = Context(res)
        done = await asyncio.gather(*(freshness.refresh_once(ctx, record, new_job_id()) for _ in range(3)))
        return [r.version for r in done]

    assert app.client.portal is not None
    assert app.client.portal.call(refresh_together) == [2, 2, 2]
    assert _versions(app, dataset) == [1, 2]


def test_refresh_dataset_asked_many_times_at_once_runs_once(app: Api) -> None:
    """A client hammering refreshDataset starts one refresh: the others are told one is under way
    (each ran an import of its own: a database query and a worker job apiece)."""
    dataset = _import(app, "ratings_hammered", [("soup", 4)])
    _shop_table(app, "ratings_hammered", [("pie", 5)])
    refresh = 'mutation { refreshDataset(id: "%s") { %s } }' % (dataset, PAYLOAD)
    answers = [b["data"]["refreshDataset"] for b in _at_once(app, *[refresh] * 6)]
    done = [a for a in answers if a["success"]]
    assert len(done) == 1 and done[0]["dataset"]["version"] == 2, answers
    refused = [a["error"] for a in answers if not a["success"]]
    assert all(e["code"] == "BAD_INPUT" and "already running" in e["message"] for e in refused), refused
    jobs = app.data("{ jobs(limit: 500) { steps } }")["jobs"]
    assert sum(j["steps"].get("refresh") == dataset for j in jobs) == 1
    assert _versions(app, dataset) == [1, 2]
    assert app.data(refresh)["refreshDataset"]["success"]  # once it ended, the next one runs


def _rows(api: Api, dataset: str) -> list[tuple[str, int]]:
    found = api.data('{ dataset(id: "%s") { sort(by: [{column: "dish"}]) { rows { data } } } }' % dataset)
    return [(r["dish"], r["score"]) for r in found["dataset"]["sort"]["rows"]["data"]]


def test_a_refresh_after_a_restore_or_an_append_brings_the_tables_rows_back(app: Api) -> None:
    """restoreVersion and appendRows make versions whose rows are not the table's; the refresh after
    them imports the table again (it took the digest they kept from the version before for theirs,
    said "the same rows" and kept the restored or appended rows until the table changed)."""
    dataset = _import(app, "ratings_restored", [("soup", 4)])
    _shop_table(app, "ratings_restored", [("pie", 5)])
    refresh = 'mutation { refreshDataset(id: "%s") { %s } }' % (dataset, PAYLOAD)
    assert app.data(refresh)["refreshDataset"]["dataset"]["version"] == 2
    restored = app.data('mutation { restoreVersion(dataset: "%s", version: 1) { success } }' % dataset)
    assert restored["restoreVersion"]["success"] and _rows(app, dataset) == [("soup", 4)]
    again = app.data(refresh)["refreshDataset"]
    assert again["success"] and again["dataset"]["version"] == 4, again
    assert _rows(app, dataset) == [("pie", 5), ("soup", 4)]
    append = 'mutation { appendRows(dataset: "%s", rows: [{dish: "tart", score: 3}]) { success } }' % dataset
    assert app.data(append)["appendRows"]["success"] and len(_rows(app, dataset)) == 3
    assert app.data(refresh)["refreshDataset"]["dataset"]["version"] == 6
    assert _rows(app, dataset) == [("pie", 5), ("soup", 4)]


def test_checks_set_as_their_dataset_was_deleted_do_not_outlive_it(app: Api) -> None:
    """setChecks in one process and deleteDataset in another, at the same moment, can leave a row of
    checks naming no dataset: the scheduler's tidy-up removes it, so a later dataset uploaded under
    that id does not inherit rules it never had."""
    from storage import CheckStore

    store = CheckStore(app.client.app.state.resources.metadata.engine)  # type: ignore[attr-defined]
    store.set_rules("gone-meanwhile", [{"notNull": ["x"]}])  # as the losing side of the race leaves it
    wait_for(lambda: store.get("gone-meanwhile") is None, 20, "the orphaned checks removed")
