"""`datagraph versions` and `datagraph diff` (issue 20, items 2 and 4 on the command line), run as a
user runs them against a data directory a real app made (upload, append, replace; a dataset whose
first version was pruned), with pandas as the oracle for the counts and the changed rows. Each command
is a process start (about 2 s of imports): the listing runs the installed command once, the rest run
the command's own `main` in this process (support.datagraph_main), which proves the same output."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from support import datagraph_cli, datagraph_main, make_settings, serving
from test_diff import APPENDED, BASE, _csv, _edited

APPEND = "mutation($d: ID!, $r: JSON!) { appendRows(dataset: $d, rows: $r) { success error { message } } }"
VERSIONS = "query($d: ID!) { dataset(id: $d) { version versions { number origin rowCount bytes columns { name } } } }"

FRAMES = {1: BASE, 2: pd.concat([BASE, pd.DataFrame(APPENDED)], ignore_index=True), 3: _edited()}


@dataclass
class History:
    data_dir: Path
    sales: str  # three versions: FRAMES
    listed: dict[str, Any]  # the API's `versions` of sales
    pruned: str  # four versions, the first pruned
    twins: tuple[str, ...]  # two datasets with one name
    escapes: str  # version 2 has a value holding a terminal escape sequence


def _age(folder: Path, seconds: float) -> None:
    """Make the files under `folder` look `seconds` old (past the grace queries still reading get)."""
    moment = time.time() - seconds
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (moment, moment))


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    settings = make_settings(tmp_path_factory.mktemp("cli-history"), keep_versions=3)
    with serving(settings) as api:
        sales = api.upload_ok(_csv(BASE), "sales.csv")
        assert api.data(APPEND, {"d": sales, "r": APPENDED})["appendRows"]["success"]
        api.replace_ok(sales, _csv(FRAMES[3]), "sales.csv")
        listed = api.data(VERSIONS, {"d": sales})["dataset"]
        pruned = api.upload_ok(b"id,v\n1,a\n2,b\n", "pruned.csv", name="Old rows")
        for n in range(3):
            assert api.data(APPEND, {"d": pruned, "r": [{"id": 10 + n, "v": "x"}]})["appendRows"]["success"]
        twins = tuple(api.upload_ok(f"a\n{n}\n".encode(), "t.csv", name="Twin copy") for n in (1, 2))
        assert pruned != "Old rows" and "Twin copy" not in twins  # named, not found by id
        escapes = api.upload_ok(b"id,v\n1,a\n", "escapes.csv")
        api.replace_ok(escapes, b'id,v\n1,"\x1b[2J\x1b[31mred"\n', "escapes.csv")
    _age(settings.data_dir / "datasets" / pruned, 3600)
    with serving(settings):  # the start-up sweep prunes the first version of `pruned`
        pass
    yield History(settings.data_dir, sales, listed, pruned, twins, escapes)


def _run(history: History, *args: str, installed: bool = False) -> Any:
    run = datagraph_cli if installed else datagraph_main
    return run(*args, "--data-dir", str(history.data_dir), check=False)


def _summary(out: str) -> dict[str, int]:
    return {
        m[0]: int(m[1].replace(",", ""))
        for m in re.findall(r"^  (added|removed|changed|unchanged) +([\d,]+)$", out, re.M)
    }


def _table(out: str) -> list[dict[str, str]]:
    """The changed-rows table the command printed (after the blank line), as records of text."""
    lines = out.split("\n\n", 1)[1].splitlines()
    head = lines[0].split()
    return [dict(zip(head, line.split(), strict=True)) for line in lines[2:] if not line.startswith("...")]


def _oracle(before: pd.DataFrame, after: pd.DataFrame, key: str) -> dict[str, Any]:
    merged = after.merge(before, on=key, how="outer", suffixes=("", "__before"), indicator=True)
    both = merged[merged["_merge"] == "both"]
    differs = pd.Series(False, index=both.index)
    for c in (c for c in after.columns if c != key and c in before.columns):
        a, b = both[c], both[c + "__before"]
        differs |= ~((a == b) | (a.isna() & b.isna()))
    return {
        "added": sorted(merged.loc[merged["_merge"] == "left_only", key]),
        "removed": sorted(merged.loc[merged["_merge"] == "right_only", key]),
        "changed": sorted(both.loc[differs, key]),
        "unchanged": int((~differs).sum()),
    }


def test_versions_lists_newest_first_with_the_current_one_marked(history: History) -> None:
    done = _run(history, "versions", history.sales, installed=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split() == ["version", "created", "at", "origin", "rows", "columns", "bytes"]
    rows = [line.split() for line in lines[3:]]
    assert [r[0] for r in rows] == ["3", "2", "1"] and rows[0][1] == "*"
    rows[0].pop(1)  # the mark
    api = history.listed["versions"]
    assert [(int(r[0]), r[3], int(r[4].replace(",", "")), int(r[5]), int(r[6].replace(",", ""))) for r in rows] == [
        (v["number"], v["origin"], v["rowCount"], len(v["columns"]), v["bytes"]) for v in api
    ]
    assert [int(r[4].replace(",", "")) for r in rows] == [len(FRAMES[n]) for n in (3, 2, 1)]  # pandas' row counts
    assert [r[3] for r in rows] == ["REPLACE", "APPEND", "UPLOAD"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d", r[1]) and re.fullmatch(r"\d\d:\d\d:\d\dZ", r[2]) for r in rows)


def test_versions_accepts_a_name_held_by_one_dataset_and_leaves_out_pruned_ones(history: History) -> None:
    done = _run(history, "versions", "Old rows")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith(f'Versions of "Old rows" ({history.pruned})')
    assert [line.split()[0] for line in done.stdout.splitlines()[3:]] == ["4", "3", "2"]


def test_diff_by_key_prints_the_counts_and_changed_rows_pandas_finds(history: History) -> None:
    done = _run(history, "diff", history.sales, "1", "3", "--key", "id", "--limit", "100")
    assert done.returncode == 0, done.stderr
    expected = _oracle(FRAMES[1], FRAMES[3], "id")
    assert _summary(done.stdout) == {c: len(expected[c]) for c in ("added", "removed", "changed")} | {
        "unchanged": expected["unchanged"]
    }
    rows = _table(done.stdout)
    assert {c: [int(r["id"]) for r in rows if r["_change"] == c] for c in ("added", "removed", "changed")} == {
        c: expected[c] for c in ("added", "removed", "changed")
    }
    three = next(r for r in rows if r["id"] == "3")
    assert (three["amount"], three["amount__before"], three["city"], three["city__before"]) == (
        "99.0",
        "3.0",
        "c2",
        "c2",
    )
    nineteen = next(r for r in rows if r["id"] == "19")
    assert (nineteen["amount"], nineteen["amount__before"]) == ("7.0", "null")
    assert "... " not in done.stdout  # all of them shown
    assert "columns added    -" in done.stdout and "type changes     -" in done.stdout


def test_diff_caps_the_rows_at_the_limit_and_says_how_many_more(history: History) -> None:
    done = _run(history, "diff", history.sales, "2", "3", "--limit", "6")  # no key: whole rows, added and removed only
    assert done.returncode == 0, done.stderr
    before, after = FRAMES[2], FRAMES[3]
    merged = after.merge(before, how="outer", indicator=True)  # rows are unique, so a merge is the multiset
    added, removed = int((merged["_merge"] == "left_only").sum()), int((merged["_merge"] == "right_only").sum())
    assert _summary(done.stdout) == {
        "added": added, "removed": removed, "changed": 0, "unchanged": int((merged["_merge"] == "both").sum())
    }  # fmt: skip
    rows = _table(done.stdout)
    assert len(rows) == 6
    assert {r["_change"] for r in rows} <= {"added", "removed"}
    assert done.stdout.rstrip().endswith(f"... {added + removed - 6} more")


def test_diff_prints_no_control_character_of_the_data(history: History) -> None:
    done = _run(history, "diff", history.escapes, "1", "2", "--key", "id")
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout
    assert _table(done.stdout) == [{"_change": "changed", "id": "1", "v": "\ufffd[2J\ufffd[31mred", "v__before": "a"}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["diff", "nowhere", "1", "2"], 'datagraph: There is no dataset "nowhere".'),
        (["versions", "nowhere"], 'datagraph: There is no dataset "nowhere".'),
        (["diff", "{sales}", "1", "7"], 'datagraph: diff: dataset "sales" has no version 7 (unknown or pruned)'),
        (["diff", "{pruned}", "1", "4"], 'datagraph: diff: dataset "Old rows" has no version 1 (unknown or pruned)'),
        (["diff", "{sales}", "1", "3", "--key", "id", "--key", "id"], "datagraph: diff: key names a column more than once."),
        (["diff", "{sales}", "1", "3", "--key", "shop"], "datagraph: diff: key column 'shop' is not in this frame (after)."),
        (["diff", "{sales}", "1", "3", "--key", "city"], "datagraph: diff: key city is not unique in this frame (after)"),
        (["versions", "Twin copy"], 'datagraph: 2 datasets are called "Twin copy" (twin-copy, twin-copy-2)'),
        (["diff", "{sales}", "1", "3", "--limit", "-1"], "datagraph: diff: --limit takes a number from 0 to 100,000."),
    ],
)  # fmt: skip
def test_refusals_exit_1_with_one_line_in_the_users_terms(history: History, args: list[str], message: str) -> None:
    done = _run(history, *(a.format(sales=history.sales, pruned=history.pruned) for a in args))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr and str(history.data_dir) not in done.stderr
