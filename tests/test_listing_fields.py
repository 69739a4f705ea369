"""Fields of a listed dataset that live in tables of their own (checks, schedule, versions) are read
for the whole `datasets` page at once: the metadata queries of a page do not grow with its length,
and each dataset's answer is what it is alone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from support import Api, make_settings, serving

CSV = b"dish,score\npizza,4\npasta,5\n"
RULES = [{"notNull": ["dish"]}, {"range": {"column": "score", "min": 1, "max": 5}}]
SET = """mutation($d: ID!, $c: [CheckInput!]!) { setChecks(dataset: $d, checks: $c) { success error { message } } }"""
APPEND = """mutation($d: ID!, $r: JSON!) { appendRows(dataset: $d, rows: $r) { success error { message } } }"""
FIELDS = "id schedule checks { name passed version } versions(limit: 2) { number rowCount }"
LIST = "query($n: Int!) { datasets(limit: $n) { %s } }" % FIELDS
ONE = "query($d: ID!) { dataset(id: $d) { %s } }" % FIELDS


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """Eight datasets: every other one with checks, every third with a second and third version."""
    with serving(make_settings(tmp_path_factory.mktemp("listing"))) as api:
        for n in range(8):
            dataset = api.upload_ok(CSV, f"menu{n}.csv")
            if n % 2 == 0:
                assert api.data(SET, {"d": dataset, "c": RULES})["setChecks"]["success"]
            if n % 3 == 0:
                for score in (3, 9):  # the second append fails the range check
                    row = [{"dish": "soup", "score": score}]
                    assert api.data(APPEND, {"d": dataset, "r": row})["appendRows"]["success"]
        yield api


def _counted(api: Api, query: str, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The answer, and how many statements the metadata database ran for it."""
    engine = api.client.app.state.resources.metadata.engine  # type: ignore[attr-defined]
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        return api.data(query, variables), len(statements)
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)


def test_a_page_reads_checks_schedules_and_versions_once_whatever_its_length(app: Api) -> None:
    app.data(LIST, {"n": 8})  # the answer cache's first look at the datasets' stamps is not the page's
    short, few = _counted(app, LIST, {"n": 2})
    full, many = _counted(app, LIST, {"n": 8})
    assert len(short["datasets"]) == 2 and len(full["datasets"]) == 8
    assert many == few, (few, many)  # one read of each kind for the page, not one per dataset
    assert many < 8


def test_each_listed_dataset_answers_as_it_does_alone(app: Api) -> None:
    listed = app.data(LIST, {"n": 8})["datasets"]
    alone = [app.data(ONE, {"d": d["id"]})["dataset"] for d in listed]
    assert listed == alone
    kinds = {(len(d["checks"]), len(d["versions"])) for d in listed}
    assert kinds == {(2, 2), (2, 1), (0, 2), (0, 1)}, kinds  # the page mixes every case
    failing = [c for d in listed for c in d["checks"] if c["passed"] is False]
    assert failing and all(c["version"] == 3 for c in failing)
