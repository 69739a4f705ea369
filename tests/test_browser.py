"""The web page at `/` in a real browser (Debian's Chromium, driven by Playwright) against a real
uvicorn on loopback: a file dropped onto the page (its upload followed through the server's stages
over jobProgress, without the websocket too, and cancelled), describe, filter, group, chart, export
(checked against pandas doing the same work), a join, the API's errors next to the controls that
caused them, live updates over graphql-transport-ws, a dataset's history (versions, a diff of two,
a restore), the recipe buttons, and the time series and reshape menus (a rolling mean, a resample
and a pivot against pandas). Every test checks that the page logged no
errors and that nothing it loaded came from beyond this machine; screenshots of each step go to
the test's tmp_path."""

from __future__ import annotations

import base64
import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pandas as pd
import pytest
from support import DATA, add_key, require, running_server, upload_over_http, upload_request

try:
    from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
except ImportError:  # every test skips (or, under CI, fails) in _require_browser
    PLAYWRIGHT = False
else:
    PLAYWRIGHT = True

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # the slow tier: a real browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _require_browser() -> None:
    """Skip without Playwright or Chromium; under CI, fail instead (.ci/run installs Chromium)."""
    if not PLAYWRIGHT:
        require("Playwright for Python is not installed (it is a dev dependency: make .venv/.synced)")
    elif not CHROMIUM.is_file():
        require(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)", ci=".ci/run installs it")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _require_browser()
    with running_server(tmp_path_factory.mktemp("browser")) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    _require_browser()
    expect.set_options(timeout=15_000)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("data", "blob") or (parts.hostname or "") in LOCAL_HOSTS


class Session:
    """A page in a fresh browser context that records console errors, page errors and every URL
    it asks for, and numbers its screenshots."""

    def __init__(self, page: Page, server: str, shots: Path) -> None:
        self.page = page
        self.server = server
        self.shots = shots
        self.taken = 0
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.posts: list[dict[str, str]] = []  # the headers of every POST
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("request", lambda r: self.urls.append(r.url))
        page.on("request", lambda r: self.posts.append(r.headers) if r.method == "POST" else None)
        page.on("websocket", lambda ws: self.urls.append(ws.url))

    def open(self, dataset: str | None = None) -> Page:
        """Load the page (showing `dataset`) and wait for its live connection."""
        self.page.goto(self.server + "/" + (f"#{dataset}" if dataset else ""))
        expect(self.page.locator("#live")).to_have_attribute("data-state", "live")
        if dataset:
            expect(self.page.locator("#dataset-select")).to_have_value(dataset)
            expect(self.page.locator("#result-count")).not_to_be_empty()
        return self.page

    def shot(self, name: str) -> None:
        self.taken += 1
        self.page.screenshot(path=self.shots / f"{self.taken:02d}-{name}.png", full_page=True)


@contextlib.contextmanager
def open_session(browser: Browser, server: str, shots: Path, *, allowed: tuple[str, ...] = ()) -> Iterator[Session]:
    """A Session in a fresh context; afterwards, fail on any console error (but those matching
    `allowed`), on any URL beyond this machine, and on a POST without Apollo-Require-Preflight."""
    context = browser.new_context(accept_downloads=True, locale="en-US", viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    session = Session(context.new_page(), server, shots)
    try:
        yield session
    finally:
        context.close()
    errors = [e for e in session.errors if not any(a in e for a in allowed)]
    assert errors == [], errors
    outside = [url for url in session.urls if not _local(url)]
    assert outside == [], f"the page reached beyond this machine: {outside}"
    assert session.urls, "the page asked for nothing at all"
    assert session.posts and all(h.get("apollo-require-preflight") == "true" for h in session.posts), session.posts


@pytest.fixture
def session(browser: Browser, server: str, tmp_path: Path) -> Iterator[Session]:
    with open_session(browser, server, tmp_path) as session:
        yield session


def drop_file(page: Page, target: str, path: Path) -> None:
    """Drop a file onto `target` as a person does: dragenter, dragover, then drop, carrying a
    DataTransfer that holds the file."""
    content = base64.b64encode(path.read_bytes()).decode()
    transfer = page.evaluate_handle(
        """([name, content]) => {
            const bytes = Uint8Array.from(atob(content), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "text/csv" }));
            return transfer;
        }""",
        [path.name, content],
    )
    for event in ("dragenter", "dragover", "drop"):
        page.dispatch_event(target, event, {"dataTransfer": transfer})


def shown(value: float) -> str:
    """A number as the page shows it in en-US: grouped digits, at most four decimals."""
    return f"{value:,.4f}".rstrip("0").rstrip(".")


def table(locator: Locator) -> list[dict[str, str]]:
    """A rendered table as records of the cells' text, keyed by the header's column name."""
    rows: list[dict[str, str]] = locator.evaluate(
        """(table) => {
            const names = [...table.querySelectorAll("thead th")].map((th) => th.firstChild.textContent.trim());
            return [...table.querySelectorAll("tbody tr")].map((tr) =>
                Object.fromEntries([...tr.children].map((td, i) => [names[i], td.textContent.trim()])));
        }"""
    )
    return rows


def add_condition(page: Page, column: str, op: str, value: str | None = None) -> Locator:
    page.get_by_role("button", name="Add a condition").click()
    row = page.locator("#filter-rows li").last
    row.get_by_label("Column to filter on", exact=True).select_option(column)
    row.get_by_label("Condition", exact=True).select_option(op)
    if value is not None:
        row.get_by_label("Value", exact=True).fill(value)
    return row


def graphql(server: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = httpx.post(
        server + "/graphql", json={"query": query, "variables": variables}, timeout=30
    ).json()
    assert "errors" not in body, body
    return body


TITANIC = pd.read_csv(DATA / "titanic.csv")
TIPS = pd.read_csv(DATA / "tips.csv")
# The page's describe headings, and pandas' names for the same statistics.
DESCRIBED = [("Values", "count"), ("Mean", "mean"), ("Std. dev.", "std"), ("25%", "25%"), ("Max", "max")]


def record_progress(page: Page) -> None:
    """Keep every [bar value, status text] the upload's progress area shows in window.progressSeen, to
    see the steps however fast they pass."""
    page.evaluate(
        """() => {
            window.progressSeen = [];
            const bar = document.querySelector("#upload-progress");
            const status = document.querySelector("#upload-status");
            const note = () => window.progressSeen.push([bar.value, status.textContent]);
            new MutationObserver(note).observe(status, { childList: true, characterData: true, subtree: true });
            new MutationObserver(note).observe(bar, { attributes: true, attributeFilter: ["value"] });
        }"""
    )


def progress_seen(page: Page) -> tuple[list[float], list[str]]:
    seen: list[tuple[float, str]] = page.evaluate("window.progressSeen")
    return [value for value, _ in seen], [text for _, text in seen]


def test_a_dropped_csv_uploads_with_progress_and_shows_its_rows_preview_and_missing_rates(session: Session) -> None:
    page = session.open()
    record_progress(page)
    session.shot("empty")
    drop_file(page, "#dropzone", DATA / "titanic.csv")

    expect(page.locator("#upload-status")).to_contain_text("titanic.csv is now the dataset “titanic”")
    values, texts = progress_seen(page)
    assert any(t.startswith("Uploading titanic.csv") for t in texts), texts
    # The server's stages, from jobProgress: the page followed the job it named in the upload.
    stages = ["Storing the file…", "Reading the rows…", "Saving 891 rows…"]
    assert {"Reading the rows…", "Saving 891 rows…"} & set(texts), texts
    order = [t for t in dict.fromkeys(texts) if t in stages]
    assert order == [t for t in stages if t in order], texts  # in this order, however many were seen
    assert "Reading titanic.csv…" not in texts, texts  # the state without jobProgress
    assert values == sorted(values) and values[-1] == 100, values
    expect(page.locator("#upload-cancel")).to_be_hidden()
    job = graphql(session.server, "{ jobs(limit: 1) { id kind status dataset } }", {})["data"]["jobs"][0]
    assert job == {**job, "kind": "uploadDataset", "status": "SUCCEEDED", "dataset": "titanic"}
    assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", job["id"]), job  # the page's id: a UUID
    expect(page.locator("#upload-progress")).to_be_visible()
    expect(page.locator("#upload-progress")).to_have_js_property("value", 100)
    expect(page.locator("#dataset-rows")).to_have_text("891")
    expect(page.locator("#dataset-columns")).to_have_text(str(len(TITANIC.columns)))
    dataset = page.locator("#dataset-select").input_value()
    assert dataset.startswith("titanic")
    expect(page.locator("#dataset-select option:checked")).to_contain_text("891 rows")

    # The preview: the first rows, with each column's type under its name.
    preview = table(page.locator("#preview table"))
    assert len(preview) == 10
    assert [r["fare"] for r in preview] == [shown(v) for v in TITANIC["fare"][:10]]
    expect(page.locator("#preview thead th", has_text="age")).to_contain_text("Float64")
    # The column summary: a missing-rate bar per column, as pandas counts missing values.
    summary = page.locator("#column-summary")
    for column in ("age", "deck", "embarked", "fare"):
        row = summary.locator("tbody tr", has=page.locator("th", has_text=column)).first
        rate = TITANIC[column].isna().mean() * 100
        expect(row.locator("td").nth(1)).to_have_text(str(TITANIC[column].isna().sum()))
        expect(row.locator(".bar")).to_have_attribute("aria-label", f"{shown(round(rate, 1))}% missing")
    session.shot("uploaded")


def test_without_the_live_connection_an_upload_still_works_with_a_pulsing_bar(session: Session) -> None:
    page = session.page
    page.route_web_socket(re.compile(r"/graphql$"), lambda ws: None)  # accepted, and never answered
    page.goto(session.server + "/")
    record_progress(page)
    drop_file(page, "#dropzone", DATA / "tips.csv")

    expect(page.locator("#upload-status")).to_contain_text("tips.csv is now the dataset")
    expect(page.locator("#dataset-rows")).to_have_text("244")
    values, texts = progress_seen(page)
    assert "Reading tips.csv…" in texts, texts
    assert not {"Storing the file…", "Reading the rows…"} & set(texts), texts
    assert values == sorted(values) and values[-1] == 100, values
    expect(page.locator("#live")).not_to_have_attribute("data-state", "live")
    session.shot("uploaded-without-live")


JOBS = "{ jobs(limit: 100) { kind status error steps } }"


def test_an_upload_can_be_cancelled_while_sending_or_once_the_server_reads_it(session: Session) -> None:
    page = session.open()
    diamonds = DATA / "diamonds.csv"
    status = page.locator("#upload-status")

    # While the bytes are sent (slowly: 500 kB/s), the request is stopped; the server never has a job.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    slow = {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 500_000}
    cdp.send("Network.emulateNetworkConditions", slow)
    page.locator("#file-input").set_input_files(diamonds)
    expect(status).to_contain_text("Uploading diamonds.csv: ")
    session.shot("sending")
    page.get_by_role("button", name="Cancel the upload").click()
    expect(status).to_have_text("Upload cancelled: diamonds.csv was not saved.")
    expect(page.locator("#upload-error")).to_be_hidden()
    expect(page.locator("#upload-progress")).to_be_hidden()
    expect(page.get_by_role("button", name="Cancel the upload")).to_be_hidden()
    session.shot("cancelled-while-sending")
    jobs = graphql(session.server, JOBS, {})["data"]["jobs"]
    assert [j for j in jobs if j["steps"].get("filename") == "diamonds.csv"] == []
    cdp.send("Network.emulateNetworkConditions", {**slow, "uploadThroughput": -1})

    # Once every byte is sent (the page then says "Storing the file…" before the server's first
    # event), Cancel ends the jobProgress subscription as soon as the job runs: the server stops it.
    page.evaluate(
        """() => {
            const status = document.querySelector("#upload-status");
            new MutationObserver((_, observer) => {
                if (status.textContent !== "Storing the file…") return;
                observer.disconnect();
                document.querySelector("#upload-cancel").click();
            }).observe(status, { childList: true, characterData: true, subtree: true });
        }"""
    )
    page.locator("#file-input").set_input_files(diamonds)
    expect(status).to_have_text("Upload cancelled: diamonds.csv was not saved.")
    expect(page.locator("#upload-error")).to_be_hidden()
    session.shot("cancelled-on-the-server")
    jobs = graphql(session.server, JOBS, {})["data"]["jobs"]
    [job] = [j for j in jobs if j["steps"].get("filename") == "diamonds.csv"]
    assert job["kind"] == "uploadDataset" and job["status"] == "FAILED" and "cancelled" in job["error"], job
    datasets = graphql(session.server, "{ datasets { id name } }", {})["data"]["datasets"]
    assert [d for d in datasets if d["name"] == "diamonds"] == [], datasets
    expect(page.locator("#dataset-select option", has_text="diamonds")).to_have_count(0)


def test_describe_filter_group_chart_and_export_agree_with_pandas(session: Session, tmp_path: Path) -> None:
    dataset = upload_over_http(session.server, DATA / "titanic.csv")
    page = session.open(dataset)

    # Describe, as pandas' describe(include="all").
    page.get_by_role("button", name="Describe the columns").click()
    stats = {r["Column"]: r for r in table(page.locator("#describe-table table"))}
    assert list(stats) == list(TITANIC.columns)
    described = TITANIC.describe(include="all")
    for column in ("age", "fare"):
        for label, stat in DESCRIBED:
            assert stats[column][label] == shown(described.loc[stat, column]), (column, label)
    most_common = (described.loc["top", "class"], shown(described.loc["freq", "class"]))
    assert (stats["class"]["Most common"], stats["class"]["Its count"]) == most_common
    assert stats["age"]["Missing"] == str(TITANIC["age"].isna().sum())
    session.shot("describe")

    # Filter: age > 30.
    add_condition(page, "age", "GT", "30")
    page.get_by_role("button", name="Show the result").click()
    expect(page.locator("#result-count")).to_have_text(f"{(TITANIC['age'] > 30).sum()} rows")
    page.locator("#shape details.query summary").click()
    sent = page.locator("#shape-query").inner_text()
    assert "pipeline(steps: $steps)" in sent and '"op": "GT"' in sent and '"value": 30' in sent
    session.shot("filter")

    # Group by class: how many fares, and their mean.
    page.locator("#group-keys").get_by_text("class", exact=True).click()
    for fn in ("COUNT", "MEAN"):
        page.get_by_role("button", name="Add a summary").click()
        row = page.locator("#agg-rows li").last
        row.get_by_label("Summary", exact=True).select_option(fn)
        row.get_by_label("Column to summarise", exact=True).select_option("fare")
    page.get_by_role("button", name="Show the result").click()
    expect(page.locator("#result-count")).to_have_text("3 rows")
    expected = (
        TITANIC[TITANIC["age"] > 30]
        .groupby("class")
        .agg(fare_count=("fare", "count"), fare_mean=("fare", "mean"))
        .reset_index()
    )
    grouped = table(page.locator("#result-table table"))
    assert grouped == [
        {"class": r["class"], "fare_count": str(r["fare_count"]), "fare_mean": shown(r["fare_mean"])}
        for r in expected.to_dict("records")
    ]
    assert '"groupBy"' in page.locator("#shape-query").inner_text()
    session.shot("group-by")

    # A bar chart of the groups: one bar per class, drawn by vega-embed from the API's spec.
    chart = page.locator("#chart")
    chart.get_by_label("Kind", exact=True).select_option("BAR")
    chart.get_by_label("X", exact=True).select_option("class")
    chart.get_by_label("Y", exact=True).select_option("fare_mean")
    chart.get_by_role("button", name="Draw").click()
    bars = page.locator("#chart-view svg .mark-rect path")
    expect(bars).to_have_count(len(expected))
    boxes = bars.evaluate_all("(paths) => paths.map((p) => { const b = p.getBBox(); return [b.x, b.height]; })")
    heights = [height for _, height in sorted(boxes)]  # left to right: the classes in order, as pandas has them
    means = expected.sort_values("class")["fare_mean"].tolist()
    assert [h / max(heights) for h in heights] == pytest.approx([m / max(means) for m in means], abs=0.005)
    session.shot("chart")

    # Export as CSV: the file is what pandas makes of the same filter and group-by.
    page.locator("#export-format").select_option("CSV")
    with page.expect_download() as download:
        page.get_by_role("button", name="Export and download").click()
    saved = tmp_path / "export.csv"
    download.value.save_as(saved)
    # The link names the file after what it holds, and the server saves it under that name.
    link = re.compile(
        "^" + re.escape(session.server) + rf"/exports/[A-Za-z0-9_-]+\?name={dataset}-filtered-by-age-grouped-by-class$"
    )
    expect(page.locator("#export-link a")).to_have_attribute("href", link)
    pd.testing.assert_frame_equal(pd.read_csv(saved), expected, check_exact=False, rtol=1e-12)
    session.shot("export")


def test_a_join_adds_the_other_datasets_columns_as_pandas_merge_does(session: Session, tmp_path: Path) -> None:
    days = tmp_path / "days.csv"
    days.write_text("day,weekend,order\nThur,false,4\nFri,false,5\nSat,true,6\n")  # no Sunday
    tips = upload_over_http(session.server, DATA / "tips.csv")
    right = upload_over_http(session.server, days)
    page = session.open(tips)

    join = page.locator("#join")
    join.get_by_label("With", exact=True).select_option(right)
    join.get_by_text("day", exact=True).click()  # the one column both have
    expect(join.get_by_role("checkbox")).to_have_count(1)
    join.get_by_label("Keep", exact=True).select_option("INNER")
    page.get_by_role("button", name="Show the result").click()
    merged = pd.read_csv(DATA / "tips.csv").merge(pd.read_csv(days), on="day")
    expect(page.locator("#result-count")).to_have_text(f"{len(merged)} rows")
    header = page.locator("#result-table thead th")
    expect(header).to_have_count(len(merged.columns))
    assert [t.split()[0] for t in header.all_inner_texts()] == list(merged.columns)
    session.shot("join")

    # The joined columns are in the filter menus (the page asked the API which columns the join gives).
    add_condition(page, "weekend", "EQ", "true")
    page.get_by_role("button", name="Show the result").click()
    expect(page.locator("#result-count")).to_have_text(f"{merged['weekend'].sum()} rows")
    first = table(page.locator("#result-table table"))[0]
    assert first["weekend"] == "true" and first["order"] == "6"
    session.shot("join-filtered")


def test_the_apis_errors_are_shown_next_to_the_control_that_caused_them(session: Session, tmp_path: Path) -> None:
    dataset = upload_over_http(session.server, DATA / "titanic.csv")
    page = session.open(dataset)

    # A number column filtered with text: the API's own message, in the filter's row.
    add_condition(page, "fare", "GE", "10")
    bad = add_condition(page, "age", "GT", "abc")
    page.get_by_role("button", name="Show the result").click()
    steps = [{"filter": [{"column": "fare", "op": "GE", "value": 10}, {"column": "age", "op": "GT", "value": "abc"}]}]
    answer = graphql(
        session.server,
        "query($id: ID!, $steps: [Step!]!) { dataset(id: $id) { pipeline(steps: $steps) { count { error { message } } } } }",
        {"id": dataset, "steps": steps},
    )
    message = answer["data"]["dataset"]["pipeline"]["count"]["error"]["message"]
    assert "age" in message and "abc" in message
    expect(bad.get_by_role("alert")).to_have_text(message)
    expect(bad.get_by_label("Value", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#filter-rows li").first.get_by_role("alert")).to_be_hidden()
    expect(page.locator("#apply-error")).to_be_hidden()
    session.shot("filter-error")

    # Fixed, the error goes and the result comes.
    bad.get_by_label("Value", exact=True).fill("30")
    page.get_by_role("button", name="Show the result").click()
    expect(bad.get_by_role("alert")).to_be_hidden()
    expected = ((TITANIC["fare"] >= 10) & (TITANIC["age"] > 30)).sum()
    expect(page.locator("#result-count")).to_have_text(f"{expected} rows")

    # A histogram of a text column: the message is next to the chart's menus, X marked.
    chart = page.locator("#chart")
    chart.get_by_label("Kind", exact=True).select_option("HISTOGRAM")
    chart.get_by_label("X", exact=True).select_option("class")
    chart.get_by_role("button", name="Draw").click()
    expect(page.locator("#chart-error")).to_have_text('chart: HISTOGRAM needs a numeric x column; "class" is String.')
    expect(chart.get_by_label("X", exact=True)).to_have_attribute("aria-invalid", "true")
    session.shot("chart-error")

    # A file the server does not read: its message under the drop zone.
    notes = tmp_path / "notes.txt"
    notes.write_text("not a table\n")
    page.locator("#file-input").set_input_files(notes)
    expect(page.locator("#upload-error")).to_have_text(
        'Files with ".txt" are not supported; upload a .csv, .xlsx or .xls file.'
    )
    session.shot("upload-error")


APPEND = "mutation($d: ID!, $r: JSON!) { appendRows(dataset: $d, rows: $r) { success error { message } dataset { rowCount } } }"


def described_cell(page: Page, column: str, label: str) -> Locator:
    """The cell of the describe table in `column`'s row, under the heading `label`."""
    expect(page.locator("#describe-table table")).to_be_visible()
    headings = [t.strip() for t in page.locator("#describe-table thead th").all_inner_texts()]
    row = page.locator("#describe-table tbody tr").filter(has=page.get_by_role("cell", name=column, exact=True))
    return row.locator("td").nth(headings.index(label))


def test_the_page_follows_changes_to_the_dataset_live(session: Session) -> None:
    tips = upload_over_http(session.server, DATA / "tips.csv")
    page = session.open(tips)
    add_condition(page, "day", "EQ", "Sun")
    page.get_by_role("button", name="Show the result").click()
    sundays = TIPS[TIPS["day"] == "Sun"]
    expect(page.locator("#result-count")).to_have_text(f"{shown(len(sundays))} rows")
    expect(page.locator("#dataset-rows")).to_have_text(shown(len(TIPS)))
    page.get_by_role("button", name="Describe the columns").click()
    expect(described_cell(page, "total_bill", "Values")).to_have_text(shown(sundays["total_bill"].count()))
    expect(described_cell(page, "total_bill", "Mean")).to_have_text(shown(sundays["total_bill"].mean()))
    session.shot("before-append")

    # Two Sunday rows appended by someone else, through the API: the page shows them unasked.
    row = {"total_bill": 10.0, "tip": 1.0, "sex": "Female", "smoker": "No", "day": "Sun", "time": "Dinner", "size": 2}
    appended = graphql(session.server, APPEND, {"d": tips, "r": [row, row]})["data"]["appendRows"]
    assert appended["success"], appended
    after = pd.concat([TIPS, pd.DataFrame([row, row])], ignore_index=True)
    sundays = after[after["day"] == "Sun"]
    expect(page.locator("#dataset-rows")).to_have_text(shown(len(after)))
    expect(page.locator("#result-count")).to_have_text(f"{shown(len(sundays))} rows")
    expect(page.locator("#dataset-version")).to_have_text("2")
    expect(described_cell(page, "total_bill", "Values")).to_have_text(shown(sundays["total_bill"].count()))
    expect(described_cell(page, "total_bill", "Mean")).to_have_text(shown(sundays["total_bill"].mean()))
    expect(page.locator("#dataset-select option:checked")).to_contain_text(f"{shown(len(after))} rows")
    session.shot("after-append")

    # Deleted elsewhere: the page says so by the dataset picker.
    deleted = graphql(session.server, "mutation($id: ID!) { deleteDataset(id: $id) { success } }", {"id": tips})
    assert deleted["data"]["deleteDataset"]["success"]
    expect(page.locator("#dataset-error")).to_have_text(f'The dataset "{tips}" was deleted.')
    expect(page.locator(f'#dataset-select option[value="{tips}"]')).to_have_count(0)
    session.shot("after-delete")


def test_a_server_that_needs_a_key_gets_it_from_a_small_form(browser: Browser, tmp_path: Path) -> None:
    work = tmp_path / "keyed"
    work.mkdir()
    key = add_key(work / "data", "browser")
    # The requests refused for want of a key are logged by the browser as failed loads.
    with (
        running_server(work, "--api-keys", "on") as server,
        open_session(browser, server, tmp_path, allowed=("status of 401",)) as session,
    ):
        page = session.page
        page.goto(server + "/")
        dialog = page.get_by_role("dialog", name="API key")
        expect(dialog).to_be_visible()
        # The HTTP 401 and the websocket's 4403 race to open the form; either says why it is asked.
        expect(dialog).to_contain_text(re.compile("A valid API key is required|Live updates need an API key"))
        session.shot("asks-for-a-key")

        dialog.get_by_label("API key", exact=True).fill("dg_not-a-key")
        dialog.get_by_role("button", name="Use this key").click()
        expect(dialog).to_contain_text("The key you gave was not accepted.")
        session.shot("wrong-key")

        dialog.get_by_label("API key", exact=True).fill(key)
        dialog.get_by_role("button", name="Use this key").click()
        expect(dialog).to_be_hidden()
        expect(page.locator("#live")).to_have_attribute("data-state", "live")  # connection_init carried it
        with page.expect_request(lambda r: "multipart/form-data" in r.headers.get("content-type", "")) as upload:
            drop_file(page, "#dropzone", DATA / "tips.csv")
        assert upload.value.headers["x-api-key"] == key
        expect(page.locator("#dataset-rows")).to_have_text("244")
        assert page.evaluate("sessionStorage.getItem('datagraph.apiKey')") == key
        assert page.evaluate("localStorage.length") == 0

        # The live connection works with the key: a change made elsewhere shows up.
        dataset = page.locator("#dataset-select").input_value()
        row = {"total_bill": 1.0, "tip": 1.0, "sex": "Male", "smoker": "No", "day": "Sat", "time": "Dinner", "size": 1}
        body = httpx.post(
            server + "/graphql", json={"query": APPEND, "variables": {"d": dataset, "r": [row]}},
            headers={"X-API-Key": key}, timeout=30,
        ).json()  # fmt: skip
        assert body["data"]["appendRows"]["success"], body
        expect(page.locator("#dataset-rows")).to_have_text("245")
        session.shot("with-key")


SAVE = "mutation($d: ID!, $n: String!) { saveFrame(dataset: $d, steps: [], name: $n) { success dataset { id } } }"


def test_the_picker_shows_a_page_at_a_time_and_its_search_finds_any_dataset(browser: Browser, tmp_path: Path) -> None:
    """121 datasets (tips and 120 saved frames of it) on a server of the test's own: the picker lists
    the oldest 50, pages on, and the search box finds part 117 wherever it is."""
    _require_browser()
    with running_server(tmp_path) as base:
        tips = upload_over_http(base, DATA / "tips.csv")
        with httpx.Client(base_url=base, timeout=60) as client:
            for i in range(1, 121):
                body = client.post("/graphql", json={"query": SAVE, "variables": {"d": tips, "n": f"Part {i:03d}"}})
                assert body.json()["data"]["saveFrame"]["success"], body.text
        with open_session(browser, base, tmp_path) as session:
            page = session.open()
            status = page.locator("#dataset-page")
            options = page.locator("#dataset-select option")
            expect(status).to_have_text("Datasets 1–50 of 121")
            expect(options).to_have_count(51)  # "Choose a dataset…" and the page
            expect(page.locator('#dataset-select option[value="part-049"]')).to_have_count(1)
            expect(page.get_by_role("button", name="Previous datasets")).to_be_disabled()
            session.shot("first-page")

            page.get_by_role("button", name="Next datasets").click()
            expect(status).to_have_text("Datasets 51–100 of 121")
            expect(page.locator('#dataset-select option[value="part-050"]')).to_have_count(1)
            expect(page.locator('#dataset-select option[value="part-049"]')).to_have_count(0)
            page.get_by_role("button", name="Next datasets").click()
            expect(status).to_have_text("Datasets 101–121 of 121")
            expect(page.get_by_role("button", name="Next datasets")).to_be_disabled()
            # A join may name any dataset, not only those on the picker's page.
            page.get_by_label("Dataset", exact=True).select_option("part-117")
            expect(page.locator("#dataset-rows")).to_have_text(shown(len(TIPS)))
            join = page.locator("#join-right")
            for far in ("tips", "part-001", "part-049", "part-120"):
                expect(join.locator(f'option[value="{far}"]')).to_have_count(1)

            page.get_by_label("Find a dataset").fill("PART 117")
            expect(status).to_have_text("Datasets 1–1 of 1 matching “PART 117”")
            page.get_by_label("Dataset", exact=True).select_option("part-117")
            expect(page.locator("#dataset-rows")).to_have_text(shown(len(TIPS)))
            expect(page).to_have_url(re.compile(r"#part-117$"))
            session.shot("found-117")

            page.get_by_label("Find a dataset").fill("no such thing")
            expect(status).to_have_text("No dataset matches “no such thing”.")
            expect(page.locator("#dataset-select")).to_have_value("part-117")  # the open one stays
            expect(page.locator("#empty-state")).to_be_hidden()


HISTORY_V1 = pd.DataFrame(
    {"id": range(1, 13), "name": [f"n{i % 4}" for i in range(12)], "score": [i * 1.5 for i in range(12)]}
)


def _history_v2() -> pd.DataFrame:
    """Ids 1 and 2 gone, 5's score and 6's name changed, ids 20 and 21 new."""
    frame = HISTORY_V1[~HISTORY_V1["id"].isin([1, 2])].copy()
    frame.loc[frame["id"] == 5, "score"] = 99.5
    frame.loc[frame["id"] == 6, "name"] = "renamed"
    extra = pd.DataFrame({"id": [20, 21], "name": ["new", "new"], "score": [1.0, 2.0]})
    return pd.concat([frame, extra], ignore_index=True)


def _by_key(before: pd.DataFrame, after: pd.DataFrame, key: str) -> dict[str, list[int]]:
    """pandas' account of a diff by `key`: the keys added, removed and changed."""
    merged = after.merge(before, on=key, how="outer", suffixes=("", "__before"), indicator=True)
    both = merged[merged["_merge"] == "both"]
    differs = pd.Series(False, index=both.index)
    for c in (c for c in after.columns if c != key):
        differs |= ~((both[c] == both[c + "__before"]) | (both[c].isna() & both[c + "__before"].isna()))
    return {
        "added": sorted(merged.loc[merged["_merge"] == "left_only", key]),
        "removed": sorted(merged.loc[merged["_merge"] == "right_only", key]),
        "changed": sorted(both.loc[differs, key]),
        "unchanged": [int((~differs).sum())],
    }


def test_the_history_panel_lists_versions_compares_two_by_key_and_restores_one(
    session: Session, tmp_path: Path
) -> None:
    from test_page import axe_violations, check_everywhere  # here: test_page imports this module

    csv = tmp_path / "ledger.csv"
    csv.write_bytes(HISTORY_V1.to_csv(index=False).encode())
    dataset = upload_over_http(session.server, csv)
    page = session.open(dataset)
    history = page.locator("#history")
    versions = history.locator("#history-versions tbody tr")
    expect(versions).to_have_count(1)

    # Replaced elsewhere: the page lists the new version unasked, and compares the last two by default.
    v2 = _history_v2()
    replaced = httpx.post(
        session.server + "/graphql", **upload_request(v2.to_csv(index=False).encode(), "ledger.csv", replace=dataset)
    ).json()["data"]["uploadDataset"]
    assert replaced["success"], replaced
    expect(versions).to_have_count(2)
    listed = table(history.locator("#history-versions table"))
    assert [(r["Version"], r["Origin"], r["Rows"]) for r in listed] == [
        ("2 (current)", "replace", shown(len(v2))), ("1", "upload", shown(len(HISTORY_V1))),
    ]  # fmt: skip
    expect(history.get_by_label("Compare version")).to_have_value("1")
    expect(history.get_by_label("with version")).to_have_value("2")

    # A key that repeats: the API's refusal, next to the key menu.
    history.get_by_label("Match rows by").select_option("name")
    history.get_by_role("button", name="Compare", exact=True).click()
    expect(history.locator("#diff-error")).to_contain_text("is not unique")
    expect(history.get_by_label("Match rows by")).to_have_attribute("aria-invalid", "true")

    history.get_by_label("Match rows by").select_option("id")
    history.get_by_role("button", name="Compare", exact=True).click()
    expect(history.locator("#diff-error")).to_be_hidden()
    expected = _by_key(HISTORY_V1, v2, "id")
    for change in ("added", "removed", "changed"):
        expect(history.locator(f'#diff-summary [data-count="{change}"] dd')).to_have_text(shown(len(expected[change])))
    expect(history.locator('#diff-summary [data-count="unchanged"] dd')).to_have_text(shown(expected["unchanged"][0]))
    rows = table(history.locator("#diff-rows table"))
    found = {c: [int(r["id"]) for r in rows if r["Change"] == c] for c in ("added", "removed", "changed")}
    assert found == {c: expected[c] for c in ("added", "removed", "changed")}
    five = next(r for r in rows if r["id"] == "5")
    assert (five["score"], five["score (before)"]) == (shown(99.5), shown(HISTORY_V1.loc[4, "score"]))
    six = next(r for r in rows if r["id"] == "6")
    assert (six["name"], six["name (before)"]) == ("renamed", HISTORY_V1.loc[5, "name"])
    stats = {r["Column"]: r for r in table(history.locator("#diff-stats table"))}
    assert (stats["score"]["Values before"], stats["score"]["Values after"]) == (shown(12), shown(len(v2)))
    assert (stats["score"]["Mean before"], stats["score"]["Mean after"]) == (
        shown(HISTORY_V1["score"].mean()), shown(v2["score"].mean()),
    )  # fmt: skip
    check_everywhere(session, "history-diff")  # both widths and themes: it fits, and axe finds nothing serious

    # Restore version 1: a confirm step first; kept, nothing happens.
    restore = history.locator('#history-versions tr[data-version="1"]').get_by_role("button")
    expect(restore).to_have_accessible_name("Restore this version (version 1)")
    restore.click()
    dialog = page.get_by_role("dialog", name="Restore this version?")
    expect(dialog).to_be_visible()
    assert axe_violations(page) == []
    dialog.get_by_role("button", name="Keep the current version").click()
    expect(dialog).to_be_hidden()
    expect(versions).to_have_count(2)
    restore.click()
    dialog.get_by_role("button", name="Restore it").click()
    expect(history.locator("#history-status")).to_have_text(
        f"Restored version 1 as version 3 ({shown(len(HISTORY_V1))} rows)."
    )
    expect(versions).to_have_count(3)
    first = table(history.locator("#history-versions table"))[0]
    assert (first["Version"], first["Origin"], first["Rows"]) == ("3 (current)", "restore", shown(len(HISTORY_V1)))
    expect(page.locator("#dataset-version")).to_have_text("3")
    expect(page.locator("#dataset-rows")).to_have_text(shown(len(HISTORY_V1)))
    # Version 3 against version 2 now undoes the replacement: what was added is removed.
    expect(history.get_by_label("Compare version")).to_have_value("2")
    history.get_by_label("Match rows by").select_option("id")
    history.get_by_role("button", name="Compare", exact=True).click()
    expect(history.locator('#diff-summary [data-count="removed"] dd')).to_have_text(shown(len(expected["added"])))
    expect(history.locator('#diff-summary [data-count="added"] dd')).to_have_text(shown(len(expected["removed"])))
    session.shot("history-restored")


def test_copy_as_polars_shows_the_script_and_download_recipe_gives_json_and_py(session: Session) -> None:
    tips = upload_over_http(session.server, DATA / "tips.csv")
    page = session.open(tips)
    add_condition(page, "day", "EQ", "Sun")
    page.get_by_role("button", name="Show the result").click()
    expect(page.locator("#result-count")).to_have_text(f"{shown(int((TIPS['day'] == 'Sun').sum()))} rows")
    export = page.locator("#export")
    export.get_by_role("button", name="Copy as Polars").click()
    script = export.get_by_role("region", name="Polars script")
    expect(script).to_contain_text("import polars")
    expect(export.locator("#recipe-status")).to_contain_text("script")
    session.shot("recipe-copied")

    downloads: list[Any] = []
    page.on("download", lambda download: downloads.append(download))
    export.get_by_role("button", name="Download recipe").click()
    expect(export.locator("#recipe-status a")).to_have_count(2)
    for _ in range(150):  # the two clicks' downloads arrive one after the other
        if len(downloads) == 2:
            break
        page.wait_for_timeout(100)
    names = sorted(d.suggested_filename for d in downloads)
    assert names == [f"{tips}-filtered-by-day.py", f"{tips}-filtered-by-day.recipe.json"], names
    saved = {d.suggested_filename: Path(d.path()).read_text("utf-8") for d in downloads}
    recipe = json.loads(saved[f"{tips}-filtered-by-day.recipe.json"])
    assert [list(step) for step in recipe["steps"]] == [["filter"]]
    assert recipe["sources"] == [{"dataset": tips, "version": 1}]
    assert "import polars" in saved[f"{tips}-filtered-by-day.py"]


def _readings_csv(path: Path) -> pd.DataFrame:
    """A small time series: a reading every 5 hours for about four days from two sensors, with a
    gap; written to `path` and returned as pandas reads it."""
    times = [pd.Timestamp("2024-03-01 00:00") + pd.Timedelta(hours=5 * i) for i in range(20) if i not in (9, 10)]
    temps = [round(10 + 3 * ((i * 7) % 5) - 0.25 * i, 2) for i in range(len(times))]
    frame = pd.DataFrame({"t": times, "sensor": ["in", "out"] * (len(times) // 2), "temp": temps})
    frame["day"] = frame["t"].dt.date.astype(str)
    frame.to_csv(path, index=False)
    return pd.read_csv(path, parse_dates=["t"])


def _number(text: str) -> float | None:
    return None if text == "–" else float(text.replace(",", ""))


def test_the_time_and_reshape_menus_build_windows_resamples_pivots_asof_joins_and_unpivots_as_pandas_does(
    session: Session, tmp_path: Path
) -> None:
    from test_page import axe_violations, check_everywhere  # here: test_page imports this module

    readings = _readings_csv(tmp_path / "readings.csv")
    outside = pd.DataFrame({"t": [pd.Timestamp("2024-03-01 02:00") + pd.Timedelta(hours=7 * i) for i in range(12)]})
    outside["outside"] = [round(4 + 0.5 * i, 2) for i in range(len(outside))]
    outside.to_csv(tmp_path / "outside.csv", index=False)
    right = upload_over_http(session.server, tmp_path / "outside.csv")
    dataset = upload_over_http(session.server, tmp_path / "readings.csv")
    page = session.open(dataset)
    time = page.locator("#time")

    # A 7-row rolling mean of temp: pandas' rolling(7).mean(), missing until seven rows are in.
    time.get_by_role("button", name="Add a window column").click()
    row = page.locator("#window-rows li").last
    row.get_by_label("Window function", exact=True).select_option("ROLLING_MEAN")
    row.get_by_label("Window column", exact=True).select_option("temp")
    row.get_by_label("Rows in the window", exact=True).fill("7")
    page.get_by_role("button", name="Show the result").click()
    expect(page.locator("#result-table thead th").last).to_contain_text("temp_rolling_mean")
    got = [_number(r["temp_rolling_mean"]) for r in table(page.locator("#result-table table"))]
    want = readings["temp"].rolling(7).mean()
    assert got == [None if pd.isna(v) else float(shown(v).replace(",", "")) for v in want]
    assert got[6] is not None and got[5] is None
    session.shot("window")

    # A period that does not parse: the API's Problem in the window's row, the period box marked.
    row.get_by_label("Rows in the window", exact=True).fill("")
    row.get_by_label("Or a period of time", exact=True).fill("7 days")
    row.get_by_label("Ordered by", exact=True).select_option("t")
    page.get_by_role("button", name="Show the result").click()
    alert = row.get_by_role("alert")
    expect(alert).to_contain_text('the period "7 days" does not parse')
    assert "Traceback" not in alert.inner_text() and "/" not in alert.inner_text().split(";")[0]
    expect(row.get_by_label("Or a period of time", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#apply-error")).to_be_hidden()
    check_everywhere(session, "window-error")  # both widths and themes: it fits, and axe finds nothing serious

    # A daily resample with the mean and the count: pandas' groupby(Grouper(freq="1D")), empty days left out.
    row.get_by_role("button", name="Remove this window column").click()
    resample = page.locator("#resample")
    resample.get_by_label("Time column", exact=True).select_option("t")
    resample.get_by_label("Every", exact=True).fill("1d")
    for fn in ("MEAN", "COUNT"):
        resample.get_by_role("button", name="Add a resample summary").click()
        agg = page.locator("#resample-aggs li").last
        agg.get_by_label("Resample summary", exact=True).select_option(fn)
        agg.get_by_label("Column to resample", exact=True).select_option("temp")
    page.get_by_role("button", name="Show the result").click()
    daily = readings.groupby(pd.Grouper(key="t", freq="1D"))["temp"].agg(["mean", "count"])
    daily = daily[daily["count"] > 0]
    expect(page.locator("#result-count")).to_have_text(f"{len(daily)} rows")
    rows = table(page.locator("#result-table table"))
    assert [r["t"][:10] for r in rows] == [str(d.date()) for d in daily.index]
    assert [r["temp_mean"] for r in rows] == [shown(v) for v in daily["mean"]]
    assert [r["temp_count"] for r in rows] == [shown(v) for v in daily["count"]]
    expect(page.locator("#chart .scope")).to_contain_text("resampled every 1d")
    session.shot("resample")

    # The export and the recipe work on the resample: the file holds pandas' numbers, named after it.
    with page.expect_download() as download:
        page.get_by_role("button", name="Export and download").click()
    assert download.value.suggested_filename == f"{dataset}-every-1d.csv"
    download.value.save_as(tmp_path / "daily.csv")
    exported = pd.read_csv(tmp_path / "daily.csv")
    assert list(exported["temp_count"]) == list(daily["count"])
    assert [round(v, 9) for v in exported["temp_mean"]] == [round(v, 9) for v in daily["mean"]]
    page.get_by_role("button", name="Copy as Polars").click()
    expect(page.get_by_role("region", name="Polars script")).to_contain_text("import polars")

    # Start over, then a pivot: one row per day, a column per sensor with its mean temperature.
    page.get_by_role("button", name="Start over").click()
    expect(page.locator("#resample-aggs li")).to_have_count(0)
    pivot = page.locator("#pivot")
    pivot.get_by_role("group", name="Pivot: one row per value of").get_by_text("day", exact=True).click()
    pivot.get_by_label("Columns from", exact=True).select_option("sensor")
    pivot.get_by_label("Values from", exact=True).select_option("temp")
    pivot.get_by_label("Combine with", exact=True).select_option("MEAN")
    page.get_by_role("button", name="Show the result").click()
    wide = readings.pivot_table(index="day", columns="sensor", values="temp", aggfunc="mean", dropna=False)
    expect(page.locator("#result-count")).to_have_text(f"{len(wide)} rows")
    header = page.locator("#result-table thead th")
    expect(header).to_have_count(1 + len(wide.columns))
    assert [t.split()[0] for t in header.all_inner_texts()] == ["day", *wide.columns]
    rows = table(page.locator("#result-table table"))
    assert [r["day"][:10] for r in rows] == list(wide.index)
    for sensor in wide.columns:
        assert [r[sensor] for r in rows] == ["–" if pd.isna(v) else shown(v) for v in wide[sensor]], sensor
    session.shot("pivot")
    assert axe_violations(page) == []

    # An as-of join: each reading takes the last outside reading at most 4 hours before it (merge_asof).
    page.get_by_role("button", name="Start over").click()
    asof = page.locator("#asof")
    asof.get_by_label("With", exact=True).select_option(right)
    asof.get_by_label("Time column here", exact=True).select_option("t")
    asof.get_by_label("At most this far", exact=True).fill("4h")
    page.get_by_role("button", name="Show the result").click()
    merged = pd.merge_asof(readings, pd.read_csv(tmp_path / "outside.csv", parse_dates=["t"]), on="t",
                           tolerance=pd.Timedelta("4h"))  # fmt: skip
    expect(page.locator("#result-table thead th").last).to_contain_text("outside")  # as many rows as before
    expect(page.locator("#result-count")).to_have_text(f"{len(merged)} rows")
    rows = table(page.locator("#result-table table"))
    assert [r["outside"] for r in rows] == ["–" if pd.isna(v) else shown(v) for v in merged["outside"]]
    assert "–" in [r["outside"] for r in rows]  # the tolerance left some without a match

    # An unpivot: temp becomes rows of a name and a value, as pandas.melt.
    page.get_by_role("button", name="Start over").click()
    unpivot = page.locator("#unpivot")
    for name in ("t", "sensor"):
        unpivot.get_by_role("group", name="Unpivot: keep these columns").get_by_text(name, exact=True).click()
    unpivot.get_by_role("group", name="Unpivot: turn these columns into rows").get_by_text("temp", exact=True).click()
    unpivot.get_by_label("Value column", exact=True).fill("reading")
    page.get_by_role("button", name="Show the result").click()
    melted = readings.melt(id_vars=["t", "sensor"], value_vars=["temp"], value_name="reading")
    header = page.locator("#result-table thead th")
    expect(header.last).to_contain_text("reading")  # as many columns as before: wait for the new ones
    expect(header).to_have_count(len(melted.columns))
    assert [t.split()[0] for t in header.all_inner_texts()] == list(melted.columns)
    rows = table(page.locator("#result-table table"))
    assert [(r["variable"], r["reading"]) for r in rows] == [("temp", shown(v)) for v in melted["reading"]]
    session.shot("unpivot")
