"""`make demo` for real (examples/ratings/): its script starts a server, the appender and the set-up
as a user's `make demo` does, with the schedule and the appender shortened through the variables the
example honours (a 2 s schedule, schedule_min_s 1, a rating every 0.2 s, every 6th one wrong). New
ratings become new versions, a wrong rating fails a check, the saved frame and the page's pipeline
answer the mean per dish (polars over the CSV file's lines as the oracle), the plugin reads no file
but the ones in its folder, the page opened at the printed address redraws its chart as ratings
arrive (Chromium), and Ctrl-C stops every process the demo started."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import polars as pl
import pytest
from support import ROOT, free_port, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # real processes and a real browser

DEMO = ROOT / "examples/ratings/demo.py"
FRAME = "mean-rating-per-dish-last-hour"
PAYLOAD = "success error { code message } dataset { id version rowCount }"
FETCH = f'mutation($params: JSON) {{ fetchPlugin(plugin: "ratings", params: $params) {{ {PAYLOAD} }} }}'


@dataclass
class Demo:
    proc: subprocess.Popen[str]
    base: str
    var: Path
    address: str = ""
    lines: list[str] = field(default_factory=list)
    seen: queue.Queue[str] = field(default_factory=queue.Queue)

    def read(self) -> None:
        """Keep the demo's output (a thread: its stdout is read to the end)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self.seen.put(line)

    def wait_for_line(self, pattern: str, seconds: float) -> re.Match[str]:
        deadline = time.monotonic() + seconds
        for line in self.lines:
            if found := re.search(pattern, line):
                return found
        while time.monotonic() < deadline:
            try:
                line = self.seen.get(timeout=0.2)
            except queue.Empty:
                assert self.proc.poll() is None, "the demo stopped:\n" + "\n".join(self.lines)
                continue
            if found := re.search(pattern, line):
                return found
        pytest.fail(f"the demo printed no line like {pattern!r} in {seconds:g} s:\n" + "\n".join(self.lines))

    def ask(self, query: str, **variables: Any) -> dict[str, Any]:
        body = httpx.post(self.base + "/graphql", json={"query": query, "variables": variables}, timeout=30).json()
        assert "errors" not in body, body
        data: dict[str, Any] = body["data"]
        return data


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    var = tmp_path_factory.mktemp("ratings") / "var"
    port = free_port()
    env = {
        **os.environ,
        "RATINGS_DEMO_VAR": str(var),
        "RATINGS_DEMO_PORT": str(port),
        "RATINGS_DEMO_EVERY": "2s",
        "RATINGS_DEMO_APPEND_S": "0.2",
        "RATINGS_DEMO_BAD_EVERY": "6",
        "DATAGRAPH_SCHEDULE_MIN_S": "1",
        "DATAGRAPH_WORKERS": "2",
        "DATAGRAPH_WORKER_IDLE_S": "0",  # the workers start with the server, not at the first fetch
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, str(DEMO)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    running = Demo(proc, f"http://127.0.0.1:{port}", var)
    reader = threading.Thread(target=running.read, daemon=True)
    reader.start()
    try:
        running.address = running.wait_for_line(r"^Open (http://\S+)$", 120).group(1)
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        reader.join(10)
        assert proc.stdout is not None
        proc.stdout.close()


def ratings_file(demo: Demo, rows: int) -> pl.DataFrame:
    """The first `rows` ratings of the appender's file: what a version with that many rows holds."""
    text = (demo.var / "ratings.csv").read_text()
    lines = text[: text.rfind("\n") + 1].splitlines(keepends=True)[: rows + 1]  # whole lines only
    schema = {"time": pl.Datetime("us"), "dish": pl.String, "score": pl.Int64, "guest": pl.String}
    return pl.read_csv("".join(lines).encode(), schema=schema)


def mean_per_dish(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """As the demo's steps have it: each dish's mean score over the hour up to its latest rating,
    the wrong ratings left out."""
    frame = frame.filter(pl.col("dish").is_not_null() & pl.col("score").is_between(1, 5))
    latest = pl.col("time").max().over("dish")
    recent = frame.filter(pl.col("time") > latest - pl.duration(hours=1))
    return recent.group_by("dish").agg(mean_last_hour=pl.col("score").mean()).to_dicts()


def close_to(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> bool:
    """The same dishes, and means equal but for rounding."""
    got, want = (sorted(rows, key=lambda r: r["dish"]) for rows in (got, want))
    return [r["dish"] for r in got] == [r["dish"] for r in want] and all(
        abs(g["mean_last_hour"] - w["mean_last_hour"]) < 1e-9 for g, w in zip(got, want, strict=True)
    )


def test_the_set_up_says_what_it_did(demo: Demo) -> None:
    said = "\n".join(demo.lines)
    assert "Fetched the ratings: dataset 'ratings'" in said
    assert "Scheduled: 'ratings' is refreshed every 2s." in said, said
    assert "Checks set: score between 1 and 5 (range), dish not null (notNull)." in said, said
    assert f"as the dataset {FRAME!r}" in said


def test_new_ratings_become_new_versions_on_the_schedule(demo: Demo) -> None:
    query = '{ dataset(id: "ratings") { version rowCount } }'
    first = demo.ask(query)["dataset"]
    later = wait_for(
        lambda: (d := demo.ask(query)["dataset"])["version"] >= first["version"] + 2 and d,
        30,
        "two more versions of the ratings, a refresh every 2 s",
        every=0.5,
    )
    assert later["rowCount"] > first["rowCount"]
    schedule = demo.ask('{ dataset(id: "ratings") { schedule } }')["dataset"]["schedule"]
    assert schedule == "2s"


def test_a_wrong_rating_fails_its_check(demo: Demo) -> None:
    query = '{ dataset(id: "ratings") { version rowCount checks { name rule passed message version } } }'

    def both_failed() -> Any:
        dataset = demo.ask(query)["dataset"]
        failed = {json.dumps(c["rule"], sort_keys=True) for c in dataset["checks"] if c["passed"] is False}
        return len(failed) == 2 and dataset

    dataset = wait_for(
        both_failed, 30, "the range and notNull checks failing on a version with wrong ratings", every=0.5
    )
    assert len(dataset["checks"]) == 2
    rows = ratings_file(demo, dataset["rowCount"])
    assert rows.filter(pl.col("score") > 5).height > 0 and rows.filter(pl.col("dish").is_null()).height > 0
    for check in dataset["checks"]:
        assert check["message"], check


def test_the_saved_frame_and_the_pages_pipeline_answer_the_mean_per_dish(demo: Demo) -> None:
    saved = demo.ask(f'{{ dataset(id: "{FRAME}") {{ rows(limit: 100) {{ success data }} }} }}')["dataset"]
    assert saved["rows"]["success"], saved
    rows = saved["rows"]["data"]
    assert rows and set(rows[0]) == {"dish", "mean_last_hour"}
    assert all(r["dish"] is not None and 1 <= r["mean_last_hour"] <= 5 for r in rows), rows
    # It is the mean per dish of one of the versions of the ratings: the one it was saved from.
    versions = demo.ask('{ dataset(id: "ratings") { versions(limit: 1000) { rowCount } } }')["dataset"]["versions"]
    assert any(close_to(rows, mean_per_dish(ratings_file(demo, v["rowCount"]))) for v in versions), rows
    steps = json.loads(parse_qs(urlsplit(demo.address).query)["steps"][0])
    live = demo.ask(
        'query($steps: [Step!]!) { dataset(id: "ratings") { rowCount pipeline(steps: $steps) { rows { data } } } }',
        steps=steps,
    )["dataset"]
    assert close_to(live["pipeline"]["rows"]["data"], mean_per_dish(ratings_file(demo, live["rowCount"])))


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("../../../../etc/passwd", "must be a .csv file name"),
        ("/etc/hosts", "must be a .csv file name"),
        ("ratings.csv/../../x.csv", "must be a .csv file name"),
        ("notes.txt", "must be a .csv file name"),
        ("nothing-here.csv", "there is no nothing-here.csv in the ratings folder"),
        ("outside.csv", "outside.csv leads out of the ratings folder"),
    ],
)
def test_the_plugin_reads_only_files_in_its_folder(demo: Demo, tmp_path: Path, name: str, said: str) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("time,dish,score,guest\n2026-01-01 00:00:00,secret,5,x\n")
    link = demo.var / "outside.csv"
    if not link.is_symlink():
        link.symlink_to(secret)
    payload = demo.ask(FETCH, params={"file": name})["fetchPlugin"]
    assert not payload["success"] and payload["dataset"] is None
    assert payload["error"]["code"] == "BAD_INPUT" and said in payload["error"]["message"], payload
    assert str(demo.var) not in payload["error"]["message"] and "secret" not in payload["error"]["message"]


def test_the_printed_address_opens_the_chart_that_moves_as_ratings_arrive(demo: Demo, tmp_path: Path) -> None:
    from test_browser import CHROMIUM, CHROMIUM_ARGS, _require_browser, open_session

    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            with open_session(browser, demo.base, tmp_path) as session:
                page = session.page
                page.goto(demo.address)
                expect(page.locator("#live")).to_have_attribute("data-state", "live")
                bars = page.locator('#chart-view [aria-roledescription="bar"]')
                expect(bars.first).to_be_visible(timeout=30_000)
                expect(page.locator("#chart .scope")).to_contain_text("grouped by dish")
                session.shot("chart")

                def labels() -> list[str]:
                    return [str(bars.nth(i).get_attribute("aria-label")) for i in range(bars.count())]

                before, version = labels(), page.locator("#dataset-version").inner_text()
                assert any("ramen" in label for label in before), before
                wait_for(
                    lambda: page.locator("#dataset-version").inner_text() != version and labels() != before,
                    30,
                    "the chart redrawn on a new version of the ratings",
                    every=0.25,
                )
                session.shot("chart-moved")
                # What it shows is the API's mean per dish at the version the page shows.
                shown = int(page.locator("#dataset-version").inner_text())
                at = demo.ask('query($v: Int!) { dataset(id: "ratings") { at(version: $v) { rowCount } } }', v=shown)[
                    "dataset"
                ]["at"]
                means = mean_per_dish(ratings_file(demo, at["rowCount"]))
                assert sorted(label.split(";")[0] for label in labels()) == sorted(f"dish: {r['dish']}" for r in means)
        finally:
            browser.close()


@pytest.mark.parametrize("same", ["data", "port"])
def test_a_second_demo_on_the_same_data_or_port_stops_at_once_saying_why(demo: Demo, tmp_path: Path, same: str) -> None:
    port = urlsplit(demo.base).port
    env = {**os.environ, "RATINGS_DEMO_VAR": str(demo.var), "RATINGS_DEMO_PORT": str(free_port())}
    if same == "port":
        env.update(RATINGS_DEMO_VAR=str(tmp_path / "var"), RATINGS_DEMO_PORT=str(port))
    rows = demo.ask('{ dataset(id: "ratings") { rowCount } }')["dataset"]["rowCount"]
    second = subprocess.run([sys.executable, str(DEMO)], env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 1
    said = {"data": f"Another demo is running on {demo.var}", "port": f"Port {port} is taken"}[same]
    assert said in second.stderr, second.stderr
    assert "Started" not in second.stdout  # no second appender, no second server
    assert demo.ask('{ dataset(id: "ratings") { rowCount } }')["dataset"]["rowCount"] >= rows  # the first one serves on


def test_ctrl_c_stops_everything_the_demo_started(demo: Demo) -> None:
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", "\n".join(demo.lines))]
    assert len(pids) == 2  # the appender and the server
    demo.proc.send_signal(signal.SIGINT)
    assert demo.proc.wait(30) == 0, "\n".join(demo.lines)
    demo.wait_for_line(r"^Stopped\.$", 5)

    def left() -> list[str]:
        """Processes still alive in the sessions the demo started (the server's workers included)."""
        alive = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[3]) in pids:  # state, ppid, pgrp, session
                alive.append(stat.parent.name)
        return alive

    assert left() == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(demo.base + "/healthz", timeout=2)
