"""Data checks and schema drift (issue 22, point 2): setChecks validates rules in the user's terms and
answers with their results; every rule passes and fails on real data in one lazy plan (one worker
job); they run again on every new version (upload, replace, append, restore); CHECK_FAILED and
SCHEMA_CHANGED reach datasetEvents subscribers with their details, naming the saved frames a removed
or retyped column breaks; hostile rule sets are bounded."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from promtext import sample
from starlette.testclient import WebSocketTestSession
from support import DATA, Api, make_settings, serving

import engine
from datagraph.durations import parse_duration
from datagraph.errors import BadInput
from engine import Source
from storage import CheckStore, MetadataStore

SET = """mutation($d: ID!, $c: [CheckInput!]!) { setChecks(dataset: $d, checks: $c) {
  success error { code message } dataset { checks { name rule passed message version } } } }"""
CHECKS = "query($d: ID!) { dataset(id: $d) { version checks { name rule passed message version } } }"
APPEND = """mutation($d: ID!, $r: JSON!) { appendRows(dataset: $d, rows: $r) { success error { message }
  dataset { version checks { name passed message version } } } }"""
RESTORE = "mutation($d: ID!, $v: Int!) { restoreVersion(dataset: $d, version: $v) { success error { message } } }"
SAVE = """mutation($d: ID!, $s: [Step!]!, $n: String!) { saveFrame(dataset: $d, steps: $s, name: $n) {
  success error { message } dataset { id } } }"""
EVENTS = "subscription($d: ID) { datasetEvents(dataset: $d) { kind dataset version rowCount details } }"
RATINGS = b"dish,score,at\npizza,4,2026-01-01T10:00:00\npasta,5,2026-01-01T11:00:00\nsalad,3,2026-01-01T12:00:00\n"
RULES = [{"notNull": ["dish"]}, {"range": {"column": "score", "min": 1, "max": 5}}]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app for the module: each test makes datasets of its own."""
    with serving(make_settings(tmp_path_factory.mktemp("checks"))) as api:
        yield api


def set_checks(api: Api, dataset: str, checks: list[dict[str, Any]]) -> dict[str, Any]:
    payload: dict[str, Any] = api.data(SET, {"d": dataset, "c": checks})["setChecks"]
    return payload


def results(api: Api, dataset: str) -> dict[str, tuple[bool | None, int | None]]:
    found = api.data(CHECKS, {"d": dataset})["dataset"]["checks"]
    return {c["name"]: (c["passed"], c["version"]) for c in found}


# --- every rule, in-process on real data (the same code runs in the worker) -------------------------


def _taxis_rules(now: dt.datetime) -> list[tuple[dict[str, Any], bool]]:
    newest = dt.datetime(2019, 3, 31, 23, 43, 45)  # the newest pickup in taxis.csv
    fresh_for = f"{int((now - newest).total_seconds()) // 86_400 + 2}d"
    return [
        ({"notNull": ["pickup", "fare"]}, True),
        ({"notNull": ["payment"]}, False),  # 44 missing
        ({"unique": ["pickup", "dropoff"]}, True),
        ({"unique": ["color"]}, False),
        ({"range": {"column": "fare", "min": 0, "max": 200}}, True),
        ({"range": {"column": "passengers", "min": 1, "max": 5}}, False),  # 0 and 6 occur
        ({"range": {"column": "pickup", "min": "2019-02-28T00:00:00", "max": None}}, True),
        ({"range": {"column": "pickup", "min": "2019-03-01", "max": None}}, False),
        ({"allowed": {"column": "color", "values": ["yellow", "green"]}}, True),
        ({"allowed": {"column": "color", "values": ["yellow"]}}, False),
        ({"allowed": {"column": "passengers", "values": [0, 1, 2, 3, 4, 5, 6]}}, True),
        ({"freshness": {"column": "pickup", "maxAge": fresh_for}}, True),
        ({"freshness": {"column": "pickup", "maxAge": "2d"}}, False),
    ]


def test_every_row_rule_passes_and_fails_on_real_data_in_one_pass(shared_data: dict[str, Source]) -> None:
    source = shared_data["taxis"]
    import polars as pl

    schema = pl.read_parquet_schema(source.path)
    columns = {name: engine.dtype_name(dtype) for name, dtype in schema.items()}
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    cases = _taxis_rules(now)
    rules = engine.checked_rules([r for r, _ in cases], columns, max_rules=50, max_values=100)
    found = engine.evaluate(source.path, rules, time.time())
    assert {engine.check_name(r): found[engine.check_name(r)]["passed"] for r in rules} == {
        engine.check_name(r): want for r, (_, want) in zip(rules, cases, strict=True)
    }
    assert found["notNull(payment)"]["message"] == "payment has 44 nulls"
    assert "outside 1..5 (lowest 0, highest 6)" in found["range(passengers, 1..5)"]["message"]
    assert "not allowed, e.g. 'green'" in found["allowed(color, yellow)"]["message"]


def test_row_count_change_and_same_schema_compare_with_the_version_before() -> None:
    rules = [{"rowCountChange": 0.5}, {"sameSchema": True}]
    before = engine.Shape(100, {"a": "Int64", "b": "String"})
    assert all(r["passed"] for r in engine.compare_shapes(rules, before, None).values())  # a first version
    assert all(r["passed"] for r in engine.compare_shapes(rules, engine.Shape(150, before.columns), before).values())
    changed = engine.compare_shapes(rules, engine.Shape(49, {"a": "Float64", "c": "Int64"}), before)
    assert changed["rowCountChange(0.5)"] == {
        "passed": False, "message": "rows went from 100 to 49 (-51%), more than 50%",
    }  # fmt: skip
    assert changed["sameSchema"] == {
        "passed": False, "message": "columns changed: added c; removed b; retyped a (Int64 -> Float64)",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("1h", 3600), ("2d", 172_800), ("1h30m", 5400), ("1W", 604_800)]
)
def test_durations_people_write_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "1", "h", "1y", "1mo", "30m1h", "1h1h", "0s", "-1h", "1.5h", "1 h", "9" * 20 + "s"]
)
def test_durations_that_do_not_parse_say_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match=r"1h30m|once|no time"):
        parse_duration(text)


# --- through the API ---------------------------------------------------------------------------------


def test_set_checks_answers_with_results_from_one_worker_job(app: Api) -> None:
    dataset = app.upload_ok(DATA / "tips.csv", name="tips for checks")
    before = sample(app.client.get("/metrics").text, "datagraph_worker_jobs_total")
    checks = [
        {"notNull": ["total_bill", "tip"]}, {"unique": ["total_bill", "tip", "time"]},
        {"range": {"column": "size", "min": 1, "max": 6}}, {"allowed": {"column": "day", "values": ["Thur", "Fri"]}},
        {"rowCountChange": 0.1}, {"sameSchema": True},
    ]  # fmt: skip
    payload = set_checks(app, dataset, checks)
    assert payload["success"], payload["error"]
    after = sample(app.client.get("/metrics").text, "datagraph_worker_jobs_total")
    assert after - before == 1
    shown = {c["name"]: (c["passed"], c["version"]) for c in payload["dataset"]["checks"]}
    assert shown == {
        "notNull(total_bill, tip)": (True, 1),
        "unique(total_bill, tip, time)": (False, 1),
        "range(size, 1..6)": (True, 1),
        "allowed(day, Thur|Fri)": (False, 1),
        "rowCountChange(0.1)": (True, 1),
        "sameSchema": (True, 1),
    }
    assert payload["dataset"]["checks"][3]["rule"] == {"allowed": {"column": "day", "values": ["Thur", "Fri"]}}
    assert results(app, dataset) == shown
    cleared = set_checks(app, dataset, [])
    assert cleared["success"] and cleared["dataset"]["checks"] == []


REFUSED = [
    ({"notNull": ["nope"]}, 'no column "nope"'),
    ({"unique": []}, "one or more column"),
    ({"notNull": ["dish", "dish"]}, "each column once"),
    ({"range": {"column": "dish", "min": 1}}, "no order"),
    ({"range": {"column": "score", "min": 5, "max": 1}}, "min (5) is greater than max (1)"),
    ({"range": {"column": "score"}}, "min, max or both"),
    ({"range": {"column": "score", "min": "one"}}, "is not a number"),
    ({"range": {"column": "score", "min": True}}, "is not a number"),
    ({"range": {"column": "at", "min": "yesterday"}}, "is not a date and time"),
    ({"allowed": {"column": "dish", "values": [1, 2]}}, "is not text"),
    ({"allowed": {"column": "score", "values": []}}, "one or more"),
    ({"allowed": {"column": "score", "values": list(range(1_001))}}, "checks_max_values"),
    ({"freshness": {"column": "score", "maxAge": "1h"}}, "date or time column"),
    ({"freshness": {"column": "at", "maxAge": "soon"}}, "1h30m"),
    ({"freshness": {"column": "at", "maxAge": "1y"}}, "1h30m"),
    ({"rowCountChange": -0.5}, "0 or more"),
    ({"sameSchema": False}, "sameSchema: true"),
]


@pytest.mark.parametrize(("check", "said"), REFUSED, ids=[str(i) for i in range(len(REFUSED))])
def test_a_rule_that_cannot_hold_is_refused_in_the_users_terms_and_nothing_changes(
    app: Api, check: dict[str, Any], said: str
) -> None:
    dataset = _ratings(app)
    payload = set_checks(app, dataset, [RULES[0], check])
    assert not payload["success"]
    assert payload["error"]["code"] == "BAD_INPUT" and said in payload["error"]["message"], payload["error"]
    assert "checks[1]" in payload["error"]["message"]
    assert list(results(app, dataset)) == ["notNull(dish)", "range(score, 1..5)"]  # the rules set before stay


def test_too_many_rules_and_the_same_rule_twice_are_refused(app: Api) -> None:
    dataset = _ratings(app)
    many = [{"range": {"column": "score", "min": i}} for i in range(51)]
    payload = set_checks(app, dataset, many)
    assert payload["error"]["code"] == "BAD_INPUT" and "checks_max_rules" in payload["error"]["message"]
    payload = set_checks(app, dataset, [RULES[0], RULES[0]])
    assert "notNull(dish) is given twice" in payload["error"]["message"]
    body = app.query(SET, {"d": dataset, "c": [{"notNull": ["dish"], "unique": ["dish"]}]})
    assert "errors" in body and "exactly one" in body["errors"][0]["message"].lower()  # @oneOf
    missing = set_checks(app, "no-such-dataset", RULES)
    assert missing["error"]["code"] == "NOT_FOUND"


_made = iter(range(1_000))


def _ratings(api: Api, content: bytes = RATINGS) -> str:
    dataset = api.upload_ok(content, "ratings.csv", name=f"ratings {next(_made)}")
    payload = set_checks(api, dataset, RULES)
    assert payload["success"], payload["error"]
    return dataset


def test_checks_run_again_on_every_new_version(app: Api) -> None:
    dataset = _ratings(app)
    assert results(app, dataset) == {"notNull(dish)": (True, 1), "range(score, 1..5)": (True, 1)}
    bad = app.data(APPEND, {"d": dataset, "r": [{"dish": None, "score": 9, "at": "2026-01-01T13:00:00"}]})
    shown = {c["name"]: (c["passed"], c["version"], c["message"]) for c in bad["appendRows"]["dataset"]["checks"]}
    assert shown == {
        "notNull(dish)": (False, 2, "dish has 1 null"),
        "range(score, 1..5)": (False, 2, "1 value of score outside 1..5 (lowest 3, highest 9)"),
    }
    assert app.data(RESTORE, {"d": dataset, "v": 1})["restoreVersion"]["success"]
    assert results(app, dataset) == {"notNull(dish)": (True, 3), "range(score, 1..5)": (True, 3)}
    app.replace_ok(dataset, RATINGS.replace(b"pizza,4", b"pizza,0"), "ratings.csv")
    assert results(app, dataset) == {"notNull(dish)": (True, 4), "range(score, 1..5)": (False, 4)}
    # A column a rule reads is gone in a new version: that rule fails, saying so; the version is kept.
    app.replace_ok(dataset, b"dish,at\npizza,2026-01-01T10:00:00\n", "ratings.csv")
    found = app.data(CHECKS, {"d": dataset})["dataset"]
    assert found["version"] == 5
    assert found["checks"][1] == {
        "name": "range(score, 1..5)", "rule": RULES[1], "passed": False,
        "message": 'this version does not fit the check: there is no column "score"',
        "version": 5,
    }  # fmt: skip


def test_a_check_run_that_cannot_finish_says_so_and_the_data_stays(app: Api) -> None:
    dataset = _ratings(app)
    files = app.client.app.state.resources.files  # type: ignore[attr-defined]
    path = files.version_path(dataset, 1)
    kept = path.read_bytes()
    path.write_bytes(b"not parquet at all")  # the disk went bad under the version
    try:
        payload = set_checks(app, dataset, [*RULES, {"sameSchema": True}])
    finally:
        path.write_bytes(kept)
    assert payload["success"], payload["error"]
    checks = payload["dataset"]["checks"]
    assert [c["passed"] for c in checks] == [None, None, None]
    assert all(c["message"].startswith("the checks could not run") for c in checks), checks
    assert all("/" not in c["message"] for c in checks), checks  # no path
    assert set_checks(app, dataset, RULES)["dataset"]["checks"][0]["passed"] is True  # and next time, they run


def test_deleting_a_dataset_forgets_its_checks(app: Api) -> None:
    dataset = _ratings(app)
    deleted = app.data("mutation($d: ID!) { deleteDataset(id: $d) { success } }", {"d": dataset})
    assert deleted["deleteDataset"]["success"]
    again = app.upload_ok(RATINGS, "ratings.csv", name=dataset)
    assert again == dataset and results(app, again) == {}


# --- events --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _events(api: Api, dataset: str) -> Iterator[WebSocketTestSession]:
    with api.client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
        ws.send_json({"type": "connection_init", "payload": {}})
        assert ws.receive_json() == {"type": "connection_ack"}
        ws.send_json({"id": "e", "type": "subscribe", "payload": {"query": EVENTS, "variables": {"d": dataset}}})
        yield ws


def _next(ws: WebSocketTestSession) -> dict[str, Any]:
    message = ws.receive_json()
    assert message["type"] == "next", message
    event: dict[str, Any] = message["payload"]["data"]["datasetEvents"]
    return event


def _until_deleted(api: Api, ws: WebSocketTestSession, dataset: str) -> list[dict[str, Any]]:
    """The events up to the dataset's deletion, which this makes: a test never waits on one that never comes."""
    api.data("mutation($d: ID!) { deleteDataset(id: $d) { success } }", {"d": dataset})
    events = [_next(ws)]
    while events[-1]["kind"] != "DELETED":
        events.append(_next(ws))
    return events


def test_check_failed_and_schema_changed_reach_a_subscriber_with_their_details(app: Api) -> None:
    dataset = _ratings(app)
    steps_score = [{"filter": [{"column": "score", "op": "GT", "value": 3}]}]
    steps_dish = [{"select": ["dish"]}]
    by_score = app.data(SAVE, {"d": dataset, "s": steps_score, "n": "high scores"})["saveFrame"]["dataset"]["id"]
    app.data(SAVE, {"d": dataset, "s": steps_dish, "n": "dishes"})  # uses no changed column
    with _events(app, dataset) as ws:
        time.sleep(0.2)  # the subscription is made before the change (it is not acknowledged otherwise)
        # score becomes text, at goes, rating comes: a drift; dish goes null: a failed check.
        app.replace_ok(dataset, b"dish,score,rating\n,good,5\npasta,fine,4\n", "ratings.csv")
        kinds = _until_deleted(app, ws, dataset)
    assert [e["kind"] for e in kinds] == ["REPLACED", "SCHEMA_CHANGED", "CHECK_FAILED", "DELETED"]
    assert all(e["version"] == 2 and e["dataset"] == dataset for e in kinds)
    assert kinds[0]["details"] is None
    assert kinds[1]["details"] == {
        "added": [{"name": "rating", "dtype": "Int64"}],
        "removed": [{"name": "at", "dtype": "Datetime"}],
        "retyped": [{"name": "score", "from": "Int64", "to": "String"}],
        "frames": [{"id": by_score, "name": "high scores", "columns": ["score"]}],
    }
    failed = kinds[2]["details"]["failed"]
    assert [f["name"] for f in failed] == ["notNull(dish)", "range(score, 1..5)"]
    assert "score" in failed[1]["message"] and "String" in failed[1]["message"]
    assert failed[0] == {
        "name": "notNull(dish)", "rule": {"notNull": ["dish"]}, "passed": False, "message": "dish has 1 null",
        "version": 2,
    }  # fmt: skip


def test_a_new_version_with_the_same_columns_and_passing_checks_says_nothing_more(app: Api) -> None:
    dataset = _ratings(app)
    with _events(app, dataset) as ws:
        time.sleep(0.2)
        app.replace_ok(dataset, RATINGS, "ratings.csv")
        assert [e["kind"] for e in _until_deleted(app, ws, dataset)] == ["REPLACED", "DELETED"]


def test_a_watch_does_not_recompute_for_a_check_notice(app: Api) -> None:
    dataset = _ratings(app)
    watch = f'subscription {{ watch(dataset: "{dataset}", result: COUNT) {{ data }} }}'
    with app.client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
        ws.send_json({"type": "connection_init", "payload": {}})
        assert ws.receive_json() == {"type": "connection_ack"}
        ws.send_json({"id": "w", "type": "subscribe", "payload": {"query": watch}})
        assert ws.receive_json()["payload"]["data"]["watch"]["data"] == {"count": 3}
        events = app.client.app.state.resources.events  # type: ignore[attr-defined]
        assert app.client.portal is not None
        app.client.portal.call(lambda: events.publish("CHECK_FAILED", dataset, 1, 3, details={"failed": []}))
        time.sleep(0.5)  # long enough for a recompute, had the notice caused one
        app.data(APPEND, {"d": dataset, "r": [{"dish": "soup", "score": 4, "at": "2026-01-01T13:00:00"}]})
        assert ws.receive_json()["payload"]["data"]["watch"]["data"] == {"count": 4}  # the next push is the append's


# --- hostile rule sets -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_unique_check_on_a_million_rows_stays_under_the_worker_memory_cap(tmp_path: Path) -> None:
    rows = 1_000_000
    content = b"id,group\n" + b"".join(b"%d,%d\n" % (i, i % 7) for i in range(rows))
    with serving(make_settings(tmp_path, worker_memory_mb=2_048, max_upload_mb=40)) as api:
        dataset = api.upload_ok(content, "big.csv")
        huge = [{"allowed": {"column": "group", "values": list(range(1_000))}}]
        many = [{"range": {"column": "id", "min": i}} for i in range(46)]
        checks = [{"unique": ["id"]}, {"unique": ["id", "group"]}, {"notNull": ["id", "group"]}, *huge, *many]
        payload = set_checks(api, dataset, checks)
        assert payload["success"], payload["error"]
        found = {c["name"]: c["passed"] for c in payload["dataset"]["checks"]}
        assert found["unique(id)"] is True and found["unique(id, group)"] is True
        assert found["allowed(group, 1000 values)"] is True and found["range(id, 45..)"] is False
        assert len(found) == 50


def test_checks_of_another_process_are_seen_here(app: Api) -> None:
    """Rules and results live in the metadata database: a second app on it shows what the first set."""
    dataset = _ratings(app)
    with serving(app.settings) as second:
        assert results(second, dataset) == {"notNull(dish)": (True, 1), "range(score, 1..5)": (True, 1)}
        refused = set_checks(second, dataset, [{"notNull": ["gone"]}])
        assert refused["error"]["code"] == "BAD_INPUT"
    assert list(results(app, dataset)) == ["notNull(dish)", "range(score, 1..5)"]


def test_validation_is_pure_and_names_the_columns() -> None:
    with pytest.raises(BadInput, match=r'no column "x"\. Columns: a, b'):
        engine.checked_rules([{"notNull": ["x"]}], {"a": "Int64", "b": "String"}, max_rules=5, max_values=5)


def test_a_late_run_never_overwrites_newer_results_or_other_rules(tmp_path: Path) -> None:
    """Two processes may run checks at once (a slow run of version 2, a fresh one of version 3; a run
    overtaken by setChecks): the stored results always belong to the rules and version beside them."""
    metadata = MetadataStore(f"sqlite:///{tmp_path / 'meta.sqlite3'}")
    store = CheckStore(metadata.engine)
    try:
        old, new = [{"notNull": ["a"]}], [{"notNull": ["b"]}]
        store.set_rules("d", old)
        assert store.set_results("d", rules=old, version=3, results={"notNull(a)": {"passed": True, "message": "3"}})
        assert not store.set_results("d", rules=old, version=2, results={"notNull(a)": {"passed": False}})
        store.set_rules("d", new)
        assert not store.set_results("d", rules=old, version=4, results={"notNull(a)": {"passed": False}})
        kept = store.get("d")
        assert kept is not None and kept.rules == new and kept.results == {} and kept.version is None
        store.set_rules("d", [])
        assert store.get("d") is None
    finally:
        metadata.close()
