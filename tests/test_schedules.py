"""Refresh schedules and refreshDataset through the real app: parsing and refusals, a plugin dataset
on a one-second schedule, a failing upstream (the version stays, failed jobs, back-off), a plugin's
refresh_s as the default schedule, deletion, and an imported PostgreSQL table picking up new rows.

Every upstream is a scripted server on 127.0.0.1 (tests/upstream.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from support import Api, make_settings, require_service, serving, wait_for
from upstream import Reply, Upstream

from datagraph.errors import BadInput
from datagraph.events import DatasetEvent
from resolvers.freshness import format_every, parse_every
from storage import ScheduleRecord, Schedules
from storage._schedules import next_due, retry_delay_s

PLUGINS = """
import polars as pl
from datagraph.plugin import DataSourcePlugin, Param

class Ticks(DataSourcePlugin):
    name = "ticks"
    params = (Param("url", str),)
    async def fetch(self, params, http):
        return pl.DataFrame(await http.get_json(params["url"]))

class Auto(DataSourcePlugin):
    name = "auto"
    refresh_s = 1
    params = (Param("url", str),)
    async def fetch(self, params, http):
        return pl.DataFrame(await http.get_json(params["url"]))
"""
PAYLOAD = "success error { code message } dataset { id version rowCount schedule } job { kind status error }"
FAST = {"schedule_min_s": 1, "schedule_retry_s": 0.5, "http_attempts": 1, "http_read_timeout_s": 5}
ACCEPTED = '"30s", "15m", "1h", "1d" or "1h30m"'


# ---- parsing, in-process -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds", "shown"),
    [("30s", 30, "30s"), ("15m", 900, "15m"), ("1h", 3600, "1h"), ("1d", 86400, "1d"), ("1h30m", 5400, "1h30m"),
     (" 1H 30M ", 5400, "1h30m"), ("90m", 5400, "1h30m"), ("10S", 10, "10s"), ("365d", 365 * 86400, "365d"),
     ("1d0h5s", 86405, "1d5s"), ("2w", 14 * 86400, "14d")],
)  # fmt: skip
def test_every_parses_durations_and_is_shown_normalised(text: str, seconds: int, shown: str) -> None:
    assert parse_every(text, min_s=10) == seconds
    assert format_every(seconds) == shown


@pytest.mark.parametrize(
    ("text", "words"),
    [("soon", "is not a schedule"), ("", "is not a schedule"), ("0s", "shorter than the shortest schedule, 10s"),
     ("-5m", "is not a schedule"), ("5", "is not a schedule"), ("1.5h", "is not a schedule"), ("m", "is not a schedule"),
     ("5s", "shorter than the shortest"), ("366d", "longer than a year"), ("99999999999d", "is not a schedule"),
     ("1h" * 100, "is not a schedule"), ("1m1h", "is not a schedule")],
)  # fmt: skip
def test_every_refuses_garbage_zero_short_and_absurd_schedules_naming_the_accepted_forms(text: str, words: str) -> None:
    with pytest.raises(BadInput) as refused:
        parse_every(text, min_s=10)
    assert words in refused.value.message and ACCEPTED in refused.value.message, refused.value.message
    assert len(refused.value.message) < 400


def test_retries_back_off_doubling_up_to_the_interval_and_periods_keep_their_cadence() -> None:
    assert [retry_delay_s(n, 60, 5) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]
    assert retry_delay_s(10_000, 1, 5) == 1
    due = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    second = dt.timedelta(seconds=1)
    assert next_due(due, 10, due) == due + 10 * second  # ran on time: the next period
    assert next_due(due, 10, due + 35 * second) == due + 40 * second  # missed periods are skipped, not run late
    assert next_due(due + 5 * second, 10, due) == due + 5 * second  # run early (refreshDataset): the due time stays
    assert next_due(None, 10, due) == due + 10 * second


# ---- through the app -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def remote() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


PG_SCHEMA = f"sched_{uuid.uuid4().hex[:8]}"  # made by the test that imports from it (PostgreSQL may be absent)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app for the module's tests (each uses datasets of its own), with the plugins above and a
    PostgreSQL source on a schema that the import test makes."""
    work = tmp_path_factory.mktemp("schedules")
    (work / "plugins").mkdir()
    (work / "plugins" / "timed.py").write_text(PLUGINS)
    sources = work / "sources.yaml"
    sources.write_text(
        f"sources:\n  pg:\n    kind: postgresql\n    url: postgresql://postgres@127.0.0.1:5432/test\n    schema: {PG_SCHEMA}\n"
    )
    with serving(make_settings(work, plugins=str(work / "plugins"), sources=str(sources), **FAST)) as api:
        yield api


def _counting(remote: Upstream, path: str) -> Iterator[int]:
    """Answer `path` with one row whose n counts the requests (so every fetch is new data)."""
    ticks = itertools.count()
    remote.always[path] = lambda _: Reply(200, json.dumps([{"n": next(ticks)}]).encode())
    return ticks


def _fetch(api: Api, plugin: str, url: str) -> dict[str, Any]:
    payload: dict[str, Any] = api.data(
        "mutation($p: String!, $params: JSON) { fetchPlugin(plugin: $p, params: $params) { %s } }" % PAYLOAD,
        {"p": plugin, "params": {"url": url}},
    )["fetchPlugin"]
    assert payload["success"], payload["error"]
    return payload


def _set(api: Api, dataset: str, every: str | None) -> dict[str, Any]:
    payload: dict[str, Any] = api.data(
        "mutation($d: ID!, $e: String) { setSchedule(dataset: $d, every: $e) { %s } }" % PAYLOAD,
        {"d": dataset, "e": every},
    )["setSchedule"]
    return payload


def _refresh(api: Api, dataset: str) -> dict[str, Any]:
    payload: dict[str, Any] = api.data('mutation { refreshDataset(id: "%s") { %s } }' % (dataset, PAYLOAD))[
        "refreshDataset"
    ]
    return payload


def _dataset(api: Api, dataset: str) -> dict[str, Any]:
    found: dict[str, Any] = api.data(
        '{ dataset(id: "%s") { version rowCount schedule versions { number origin } } }' % dataset
    )["dataset"]
    return found


def _row(api: Api, dataset: str) -> ScheduleRecord | None:
    return Schedules(api.client.app.state.resources.metadata.engine).get(dataset)  # type: ignore[attr-defined]


def _events(api: Api, dataset: str, kind: str, n: int, seconds: float) -> list[DatasetEvent]:
    """The next `n` events of `kind` on `dataset`, as every subscriber gets them (fails after `seconds`)."""
    bus = api.client.app.state.resources.events  # type: ignore[attr-defined]

    async def collect() -> list[DatasetEvent]:
        got: list[DatasetEvent] = []
        async with bus.subscribe() as queue:
            while len(got) < n:
                event = await asyncio.wait_for(queue.get(), seconds)
                if event.dataset == dataset and event.kind == kind:
                    got.append(event)
        return got

    assert api.client.portal is not None
    events: list[DatasetEvent] = api.client.portal.call(collect)
    return events


def test_uploads_linked_and_unknown_datasets_refuse_schedules_and_refreshes(app: Api) -> None:
    upload = app.upload_ok(b"a,b\n1,2\n", "plain.csv")
    for payload in (_set(app, upload, "1m"), _refresh(app, upload)):
        assert payload["error"]["code"] == "BAD_INPUT" and "no upstream" in payload["error"]["message"], payload
    assert _dataset(app, upload)["schedule"] is None and _row(app, upload) is None
    missing = _set(app, "no-such-dataset", "1m")
    assert missing["error"]["code"] == "NOT_FOUND" and not missing["success"]
    assert _refresh(app, "no-such-dataset")["error"]["code"] == "NOT_FOUND"


def test_bad_schedules_answer_a_problem_naming_the_accepted_forms_and_change_nothing(
    app: Api, remote: Upstream
) -> None:
    _counting(remote, "/bad")
    dataset = _fetch(app, "ticks", remote.url("/bad"))["dataset"]["id"]
    for every in ("soon", "0s", "-5m", "400d", "1" * 5000):
        payload = _set(app, dataset, every)
        assert payload["error"]["code"] == "BAD_INPUT" and ACCEPTED in payload["error"]["message"], payload
        assert len(payload["error"]["message"]) < 400  # the input is not echoed whole
    assert _dataset(app, dataset)["schedule"] is None and _row(app, dataset) is None


def test_a_plugin_dataset_on_a_one_second_schedule_gains_versions_and_refreshed_events(
    app: Api, remote: Upstream
) -> None:
    _counting(remote, "/every-second")
    dataset = _fetch(app, "ticks", remote.url("/every-second"))["dataset"]["id"]
    payload = _set(app, dataset, " 1 S ")
    assert payload["success"] and payload["dataset"]["schedule"] == "1s", payload
    events = _events(app, dataset, "REFRESHED", 2, seconds=20)
    assert [e.version for e in events] == sorted({e.version for e in events}) and events[0].version >= 2
    shown = _dataset(app, dataset)
    assert shown["schedule"] == "1s" and shown["version"] >= 3
    assert {v["origin"] for v in shown["versions"]} == {"FETCH"}
    jobs = app.data("{ jobs(limit: 200) { kind status steps } }")["jobs"]
    refreshes = [j for j in jobs if j["steps"].get("refresh") == dataset]
    assert refreshes and {(j["kind"], j["status"]) for j in refreshes} == {("fetchPlugin", "SUCCEEDED")}
    removed = _set(app, dataset, None)
    assert removed["success"] and removed["dataset"]["schedule"] is None and _row(app, dataset) is None


def test_refresh_dataset_fetches_now_and_keeps_the_version_when_the_data_is_the_same(
    app: Api, remote: Upstream
) -> None:
    remote.always["/same"] = Reply(200, b'[{"n": 1}]')
    dataset = _fetch(app, "ticks", remote.url("/same"))["dataset"]["id"]
    before = remote.count("/same")
    same = _refresh(app, dataset)
    assert same["success"] and same["dataset"]["version"] == 1 and same["job"]["kind"] == "fetchPlugin", same
    assert remote.count("/same") == before + 1
    remote.always["/same"] = Reply(200, b'[{"n": 1}, {"n": 2}]')
    changed = _refresh(app, dataset)
    assert changed["dataset"]["version"] == 2 and changed["dataset"]["rowCount"] == 2, changed
    assert changed["job"] == {"kind": "fetchPlugin", "status": "SUCCEEDED", "error": None}


def test_a_failing_refresh_keeps_the_version_records_failed_jobs_and_backs_off(app: Api, remote: Upstream) -> None:
    remote.always["/flaky"] = Reply(200, b'[{"n": 1}]')
    dataset = _fetch(app, "ticks", remote.url("/flaky"))["dataset"]["id"]
    remote.always["/flaky"] = Reply(500, b"down")
    assert _set(app, dataset, "4s")["success"]
    failed = _refresh(app, dataset)  # fails now; from here its schedule retries after 0.5 s, 1 s, 2 s, 4 s, 4 s
    assert not failed["success"] and failed["job"]["status"] == "FAILED" and failed["job"]["error"], failed
    row = wait_for(lambda: (r := _row(app, dataset)) and r.failures >= 3 and r.claimed_by is None and r, 30, "retries")
    assert row.last_error and "500" in row.last_error, row.last_error
    assert row.next_due is not None and row.last_run_at is not None
    waited = (row.next_due - row.last_run_at).total_seconds()
    assert waited == pytest.approx(retry_delay_s(row.failures, 4, 0.5), abs=0.01), (row.failures, waited)
    shown = _dataset(app, dataset)
    assert shown["version"] == 1 and shown["schedule"] == "4s"  # the last good version stays
    jobs = [
        j
        for j in app.data("{ jobs(limit: 200) { kind status steps error } }")["jobs"]
        if j["steps"].get("refresh") == dataset
    ]
    assert len(jobs) >= 3 and {j["status"] for j in jobs} == {"FAILED"}
    assert all("500" in j["error"] and "Traceback" not in j["error"] for j in jobs), jobs
    remote.always["/flaky"] = Reply(200, b'[{"n": 2}]')  # the upstream is back: the next retry succeeds
    wait_for(lambda: _dataset(app, dataset)["version"] == 2, 30, "a refresh once the upstream is back")
    healed = wait_for(lambda: (r := _row(app, dataset)) and r.failures == 0 and r, 10, "failures forgotten")
    assert healed.last_error is None


def test_deleting_a_scheduled_dataset_stops_its_refreshes(app: Api, remote: Upstream) -> None:
    _counting(remote, "/deleted")
    dataset = _fetch(app, "ticks", remote.url("/deleted"))["dataset"]["id"]
    assert _set(app, dataset, "1s")["success"]
    wait_for(lambda: remote.count("/deleted") >= 3, 20, "two scheduled fetches")
    assert app.data('mutation { deleteDataset(id: "%s") { success } }' % dataset)["deleteDataset"]["success"]
    assert _row(app, dataset) is None
    fetched = remote.count("/deleted")
    time.sleep(2.5)  # two periods and more
    assert remote.count("/deleted") <= fetched + 1  # at most the one under way when it was deleted
    assert app.data('{ dataset(id: "%s") { id } }' % dataset)["dataset"] is None


def test_a_plugins_refresh_s_is_its_datasets_default_schedule_which_set_schedule_overrides(
    app: Api, remote: Upstream
) -> None:
    _counting(remote, "/auto")
    dataset = _fetch(app, "auto", remote.url("/auto"))["dataset"]
    assert dataset["schedule"] == "1s"
    wait_for(lambda: _dataset(app, dataset["id"])["version"] >= 3, 20, "refreshes every refresh_s")
    assert _set(app, dataset["id"], "1h")["dataset"]["schedule"] == "1h"
    off = _set(app, dataset["id"], None)
    assert off["success"] and off["dataset"]["schedule"] is None
    row = _row(app, dataset["id"])
    assert row is not None and row.chosen and row.every_s is None  # off, over the plugin's default
    fetched = remote.count("/auto")
    time.sleep(2.5)
    assert remote.count("/auto") <= fetched + 1 and _dataset(app, dataset["id"])["schedule"] is None


def test_an_imported_postgres_table_picks_up_new_rows_by_refresh_and_by_schedule(app: Api) -> None:
    require_service(5432, "PostgreSQL")
    engine = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test")
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {PG_SCHEMA}")
        conn.exec_driver_sql(f"CREATE TABLE {PG_SCHEMA}.ratings (dish text, score int)")
        conn.exec_driver_sql(f"INSERT INTO {PG_SCHEMA}.ratings VALUES ('soup', 4), ('pie', 5)")
    try:
        imported = app.data('mutation { importTable(source: "pg", table: "ratings") { %s } }' % PAYLOAD)
        dataset = imported["importTable"]["dataset"]["id"]
        with engine.begin() as conn:
            conn.exec_driver_sql(f"INSERT INTO {PG_SCHEMA}.ratings VALUES ('tart', 3)")
        now = _refresh(app, dataset)
        assert now["dataset"]["version"] == 2 and now["dataset"]["rowCount"] == 3, now
        assert now["job"] == {"kind": "importTable", "status": "SUCCEEDED", "error": None}
        again = _refresh(app, dataset)  # the same rows: the version stays
        assert again["success"] and again["dataset"]["version"] == 2
        assert _set(app, dataset, "1s")["dataset"]["schedule"] == "1s"
        with engine.begin() as conn:
            conn.exec_driver_sql(f"INSERT INTO {PG_SCHEMA}.ratings VALUES ('stew', 2), ('bun', 1)")
        wait_for(lambda: _dataset(app, dataset)["rowCount"] == 5, 20, "the scheduled import of the new rows")
        assert _set(app, dataset, None)["success"]
        shown = _dataset(app, dataset)
        assert shown["version"] == 3 and [v["origin"] for v in shown["versions"]] == ["REFRESH", "REFRESH", "IMPORT"]
        rows = app.data('{ dataset(id: "%s") { sort(by: [{column: "score"}]) { rows { data } } } }' % dataset)
        assert [r["dish"] for r in rows["dataset"]["sort"]["rows"]["data"]] == ["bun", "stew", "tart", "soup", "pie"]
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {PG_SCHEMA} CASCADE")
        engine.dispose()


def test_a_refresh_clears_a_next_version_that_a_killed_writer_left_unrecorded(app: Api, remote: Upstream) -> None:
    _counting(remote, "/left")
    dataset = _fetch(app, "ticks", remote.url("/left"))["dataset"]["id"]
    files = app.client.app.state.resources.files  # type: ignore[attr-defined]
    stray = files.dataset_file(dataset, 2)  # a server killed between its files and its row left these
    stray.write_bytes(b"PAR1")
    claim = files.parts_folder(dataset, 3)
    claim.mkdir()
    young = _refresh(app, dataset)  # written a moment ago: maybe a live writer's, so left alone
    assert young["error"]["code"] == "BAD_INPUT" and "changed meanwhile" in young["error"]["message"], young
    for path in (stray, claim):
        os.utime(path, (time.time() - 60, time.time() - 60))
    done = _refresh(app, dataset)
    assert done["success"] and done["dataset"]["version"] == 2, done
    assert not claim.exists() and _dataset(app, dataset)["rowCount"] == 1
