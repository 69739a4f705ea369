"""The web page's rough edges and its accessibility (issue 17, items 7 to 9), in a real browser
(Debian's Chromium, driven by Playwright) against a real uvicorn on loopback: one server and one
browser for the module, as tests/test_browser.py does. Layout is asserted on element boxes and
computed styles (never on pixels), at 1280 px and 390 px, in the light and the dark theme; axe-core
(vendored under static/vendor/axe-core) finds no serious or critical violation in either. The
keyboard test uses keyboard events only. Screenshots go to each test's tmp_path."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import DATA, ROOT, upload_over_http
from test_browser import (
    Session,
    add_condition,
    browser,
    drop_file,
    graphql,
    open_session,
    progress_seen,
    record_progress,
    server,
    shown,
)

with contextlib.suppress(ImportError):  # without Playwright the fixtures skip (or, under CI, fail) first
    from playwright.sync_api import Browser, Page, expect

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # the slow tier: a real browser

__all__ = ["browser", "server"]  # the module's fixtures, shared with tests/test_browser.py

WIDE, NARROW = 1280, 390
THEMES = ("light", "dark")
AXE = "/static/vendor/axe-core/axe.min.js"
DATASETS = "{ datasets { id } }"
DELETE = "mutation($id: ID!) { deleteDataset(id: $id) { success } }"


@pytest.fixture
def session(browser: Browser, server: str, tmp_path: Path) -> Iterator[Session]:
    with open_session(browser, server, tmp_path) as session:
        yield session


def delete_all(server: str) -> None:
    for dataset in graphql(server, DATASETS, {})["data"]["datasets"]:
        assert graphql(server, DELETE, {"id": dataset["id"]})["data"]["deleteDataset"]["success"]


# Layout and colour, measured ----------------------------------------------------------------------

# Every visible control and card child lies inside its card (tables scroll inside their own box,
# so what is inside a .table-wrap is measured by the wrap), and the document is no wider than the
# window.
ESCAPES = """() => {
    const out = [];
    const inside = (a, b) => a.left >= b.left - 0.5 && a.right <= b.right + 0.5;
    const shown = (el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== "hidden";
    for (const card of document.querySelectorAll(".card, .topbar")) {
        if (!shown(card)) continue;
        const box = card.getBoundingClientRect();
        for (const el of card.querySelectorAll("button, select, input, label, fieldset, .table-wrap, .chart-view, p, h2")) {
            if (!shown(el) || el.closest(".table-wrap") || el.classList.contains("visually-hidden")) continue;
            if (!inside(el.getBoundingClientRect(), box)) out.push(`${card.id || card.className} > ${el.id || el.tagName}`);
        }
    }
    const doc = document.documentElement;
    if (doc.scrollWidth > window.innerWidth) out.push(`document: ${doc.scrollWidth} px wide in ${window.innerWidth}`);
    return out;
}"""


def at(page: Page, width: int, theme: str) -> None:
    page.set_viewport_size({"width": width, "height": 900})
    page.emulate_media(color_scheme=theme)
    expected = "rgb(14, 19, 25)" if theme == "dark" else "rgb(245, 246, 248)"
    expect(page.locator("body")).to_have_css("background-color", expected)
    # Colours fade (CSS transitions) from one theme to the other: measure once they have settled.
    page.evaluate(
        """() => Promise.all(document.getAnimations()
            .filter((a) => Number.isFinite(a.effect?.getComputedTiming().endTime))
            .map((a) => a.finished.catch(() => null)))"""
    )


def axe_violations(page: Page) -> list[str]:
    """The serious and critical violations axe-core finds on the page as it is."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(url=AXE)  # from this server: the page's CSP allows 'self' only
    found: list[dict[str, Any]] = page.evaluate(
        "async () => (await axe.run(document, { resultTypes: ['violations'] })).violations"
    )
    return [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:5]}"
        for v in found
        if v["impact"] in ("serious", "critical")
    ]


def check_everywhere(session: Session, name: str) -> None:
    """Both widths, both themes: nothing leaves its card, no horizontal scroll, no axe violation."""
    page = session.page
    for width in (WIDE, NARROW):
        for theme in THEMES:
            at(page, width, theme)
            assert page.evaluate(ESCAPES) == [], (name, width, theme)
            assert axe_violations(page) == [], (name, width, theme)
            session.shot(f"{name}-{width}-{theme}")
    at(page, WIDE, "light")


def luminance(css: str) -> float:
    r, g, b = (int(v) / 255 for v in re.findall(r"[\d.]+", css)[:3])
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def box(page: Page, selector: str) -> dict[str, float]:
    found: dict[str, float] | None = page.locator(selector).first.bounding_box()
    assert found is not None, selector
    return found


def within(inner: dict[str, float], outer: dict[str, float]) -> bool:
    return inner["x"] >= outer["x"] - 0.5 and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + 0.5


# The tests ----------------------------------------------------------------------------------------


def test_with_no_dataset_the_page_suggests_a_first_file_and_fits_every_width_and_theme(session: Session) -> None:
    delete_all(session.server)
    page = session.open()
    empty = page.locator("#empty-state")
    expect(empty).to_be_visible()
    expect(empty).to_contain_text("examples/tips.csv")
    assert (ROOT / "examples" / "tips.csv").is_file()  # the file it suggests is there
    expect(page.locator("#dataset-actions")).to_be_hidden()
    check_everywhere(session, "empty")

    page.locator("#file-input").set_input_files(ROOT / "examples" / "tips.csv")
    expect(page.locator("#dataset-rows")).to_have_text("244")
    expect(empty).to_be_hidden()


def test_after_a_delete_elsewhere_the_picker_selects_nothing_and_choosing_opens(session: Session) -> None:
    first = upload_over_http(session.server, DATA / "tips.csv")
    second = upload_over_http(session.server, DATA / "penguins.csv")
    page = session.open(first)
    assert graphql(session.server, DELETE, {"id": first})["data"]["deleteDataset"]["success"]
    expect(page.locator("#dataset-error")).to_have_text(f'The dataset "{first}" was deleted.')
    picker = page.locator("#dataset-select")
    expect(picker).to_have_value("")
    expect(picker.locator("option:checked")).to_have_text("Choose a dataset…")
    expect(page.locator("#shape")).to_be_hidden()
    session.shot("after-delete")

    picker.select_option(second)
    expect(page.locator("#dataset-rows")).to_have_text("344")
    expect(page.locator("#result-count")).to_have_text("344 rows")


def test_uploads_name_their_real_id_keep_the_curl_command_and_a_refusal_leaves_no_bar(
    session: Session, tmp_path: Path
) -> None:
    delete_all(session.server)
    page = session.open()
    status = page.locator("#upload-status")
    page.locator("#file-input").set_input_files(DATA / "penguins.csv")
    expect(status).to_have_text("penguins.csv is now the dataset “penguins” (344 rows).")
    page.locator("#file-input").set_input_files(DATA / "penguins.csv")
    expect(status).to_have_text("penguins.csv is now the dataset “penguins-2” (344 rows).")
    expect(page.locator("#dataset-select")).to_have_value("penguins-2")

    # The upload's curl command stays once the upload is done and the dataset is shown.
    page.locator("#upload-curl summary").click()
    expect(page.locator("#upload-command")).to_contain_text('-F 0=@"penguins.csv"')
    expect(page.locator("#data-query")).to_contain_text("query Dataset")  # the other box: what opened it

    # A refused file: its message, and no progress bar left half full.
    notes = tmp_path / "notes.txt"
    notes.write_text("not a table\n")
    page.locator("#file-input").set_input_files(notes)
    expect(page.locator("#upload-error")).to_contain_text('Files with ".txt" are not supported')
    expect(page.locator("#upload-progress")).to_be_hidden()
    expect(status).to_have_text("")
    session.shot("refused")


def test_the_statistics_table_fits_a_1280_px_window_in_both_themes(session: Session) -> None:
    dataset = upload_over_http(session.server, DATA / "titanic.csv")
    page = session.open(dataset)
    page.get_by_role("button", name="Describe the columns").click()
    table = page.locator("#describe-table table")
    expect(table).to_be_visible()
    for theme in THEMES:
        at(page, WIDE, theme)
        sizes = page.locator("#describe-table").evaluate("(w) => [w.scrollWidth, w.clientWidth]")
        assert sizes[0] <= sizes[1], sizes  # no scrolling sideways inside the table's box
        wrap = box(page, "#describe-table")
        for heading in ("Most common", "Its count", "Column"):
            assert within(box(page, f"#describe-table th:text-is('{heading}')"), wrap), heading
        assert page.evaluate(ESCAPES) == []
        assert axe_violations(page) == [], theme
        session.shot(f"describe-{theme}")


def test_the_chart_fills_its_card_with_a_plain_title_and_level_labels(session: Session) -> None:
    dataset = upload_over_http(session.server, DATA / "penguins.csv")
    page = session.open(dataset)
    page.locator("#group-keys").get_by_text("species", exact=True).click()
    page.get_by_role("button", name="Add a summary").click()
    row = page.locator("#agg-rows li").last
    row.get_by_label("Summary", exact=True).select_option("MEAN")
    row.get_by_label("Column to summarise", exact=True).select_option("body_mass_g")
    page.get_by_role("button", name="Show the result").click()
    expect(page.locator("#result-count")).to_have_text("3 rows")
    chart = page.locator("#chart")
    chart.get_by_label("Kind", exact=True).select_option("BAR")
    chart.get_by_label("X", exact=True).select_option("species")
    chart.get_by_label("Y", exact=True).select_option("body_mass_g_mean")
    chart.get_by_role("button", name="Draw").click()
    expect(page.locator("#chart-view svg .mark-rect path")).to_have_count(3)
    svg = box(page, "#chart-view svg")
    card = box(page, "#chart")
    assert svg["width"] >= 0.8 * card["width"] and within(svg, card), (svg, card)
    title = page.locator("#chart-view svg .role-title-text")
    expect(title).to_have_text("body_mass_g_mean by species")
    labels = page.locator("#chart-view svg .role-axis-label text")
    transforms = labels.evaluate_all("(ts) => ts.map((t) => t.getAttribute('transform') ?? '')")
    assert transforms and not any("rotate(-" in t or "rotate(2" in t for t in transforms), transforms
    for theme in THEMES:
        at(page, WIDE, theme)
        expect(page.locator("#chart-view svg .mark-rect path")).to_have_count(3)
        fill = page.locator("#chart-view svg .role-title-text text").first.evaluate("(t) => getComputedStyle(t).fill")
        background = page.locator("#chart").evaluate("(c) => getComputedStyle(c).backgroundColor")
        assert contrast(fill, background) >= 4.5, (theme, fill, background)
        session.shot(f"chart-{theme}")
    at(page, NARROW, "light")
    assert within(box(page, "#chart-view svg"), box(page, "#chart"))
    assert page.evaluate(ESCAPES) == []


def test_an_export_downloads_under_the_name_its_link_shows_which_names_the_filter(
    session: Session, tmp_path: Path
) -> None:
    dataset = upload_over_http(session.server, DATA / "tips.csv")
    page = session.open(dataset)
    add_condition(page, "day", "EQ", "Sun")
    page.locator("#sort-column").select_option("total_bill")
    page.locator("#sort-order").select_option("desc")
    page.get_by_role("button", name="Show the result").click()
    expect(page.locator("#result-count")).to_have_text("76 rows")
    with page.expect_download() as download:
        page.get_by_role("button", name="Export and download").click()
    link = page.locator("#export-link a")
    name = f"{dataset}-filtered-by-day-sorted-by-total_bill.csv"
    expect(link).to_have_text(f"Download {name}")
    assert download.value.suggested_filename == name
    saved = tmp_path / name
    download.value.save_as(saved)
    lines = saved.read_text().splitlines()
    assert len(lines) == 77 and lines[1].startswith("48.17,")  # sorted: the biggest Sunday bill first
    # The link itself downloads under the same name.
    answer = httpx.get(link.get_attribute("href") or "", timeout=30)
    assert answer.headers["content-disposition"] == f'attachment; filename="{name}"'


def test_a_sort_control_sorts_the_result_by_a_column_either_way(session: Session) -> None:
    dataset = upload_over_http(session.server, DATA / "tips.csv")
    page = session.open(dataset)
    page.locator("#sort-column").select_option("tip")
    page.locator("#sort-order").select_option("desc")
    page.get_by_role("button", name="Show the result").click()
    first = page.locator("#result-table tbody tr").first
    expect(first.locator("td").nth(1)).to_have_text(shown(10.0))
    assert '"sort"' in page.locator("#shape-query").text_content()
    page.locator("#sort-order").select_option("asc")
    page.get_by_role("button", name="Show the result").click()
    expect(first.locator("td").nth(1)).to_have_text(shown(1.0))
    # After a group-by, the sort offers what the result has: the keys and the summaries.
    page.locator("#group-keys").get_by_text("day", exact=True).click()
    page.get_by_role("button", name="Add a summary").click()
    options = page.locator("#sort-column option").all_inner_texts()
    assert options[1:] == ["day", "total_bill_count"], options
    expect(page.locator("#sort-column")).to_have_value("")


def test_at_390_px_the_join_menu_stays_in_its_box_in_both_themes(session: Session, tmp_path: Path) -> None:
    days = tmp_path / "weekdays-with-a-long-name.csv"
    days.write_text("day,weekend\nThur,false\nFri,false\nSat,true\nSun,true\n")
    tips = upload_over_http(session.server, DATA / "tips.csv")
    right = upload_over_http(session.server, days)
    page = session.open(tips)
    join = page.locator("#join")
    join.get_by_label("With", exact=True).select_option(right)
    join.get_by_text("day", exact=True).click()
    join.get_by_label("Keep", exact=True).select_option("LEFT")
    add_condition(page, "weekend", "EQ", "true")
    page.get_by_role("button", name="Show the result").click()
    expect(page.locator("#result-count")).to_have_text("163 rows")
    for theme in THEMES:
        at(page, NARROW, theme)
        fieldset = box(page, "#join")
        for control in ("#join-right", "#join-how", "#join-keys", "label[for=join-how]"):
            assert within(box(page, control), fieldset), (theme, control)
        assert within(box(page, "#filter-rows li"), box(page, "#filters"))
    check_everywhere(session, "joined")


def test_the_theme_follows_the_system_and_the_toggle_is_remembered(session: Session) -> None:
    page = session.page
    page.emulate_media(color_scheme="dark")
    session.open()
    html = page.locator("html")
    toggle = page.get_by_role("button", name="Dark theme")
    expect(toggle).to_have_attribute("aria-pressed", "true")
    expect(page.locator("body")).to_have_css("background-color", "rgb(14, 19, 25)")
    toggle.click()
    expect(html).to_have_attribute("data-theme", "light")
    expect(page.locator("body")).to_have_css("background-color", "rgb(245, 246, 248)")
    expect(toggle).to_have_attribute("aria-pressed", "false")
    page.reload()
    expect(html).to_have_attribute("data-theme", "light")  # remembered, against the system's dark
    expect(page.locator("body")).to_have_css("background-color", "rgb(245, 246, 248)")
    page.emulate_media(color_scheme="light")
    page.get_by_role("button", name="Dark theme").click()
    page.reload()
    expect(html).to_have_attribute("data-theme", "dark")
    expect(page.locator("body")).to_have_css("background-color", "rgb(14, 19, 25)")
    expect(page.locator(".card").first).to_have_css("color", "rgb(228, 233, 240)")
    assert page.evaluate("localStorage.getItem('datagraph.theme')") == "dark"


def test_a_dataset_can_be_renamed_keeping_its_id(session: Session) -> None:
    session.open()
    dataset = upload_over_http(session.server, DATA / "tips.csv")
    page = session.open(dataset)
    page.get_by_role("button", name="Rename…").click()
    field = page.get_by_label("New name", exact=True)
    expect(field).to_be_focused()
    field.fill("Restaurant tips")
    page.get_by_role("button", name="Save the name").click()
    expect(page.locator("#dataset-status")).to_have_text(f"Renamed: “Restaurant tips” (its id stays {dataset}).")
    expect(page.locator("#dataset-select")).to_have_value(dataset)
    expect(page.locator("#dataset-select option:checked")).to_contain_text("Restaurant tips")
    names = graphql(session.server, "query($id: ID!) { dataset(id: $id) { name } }", {"id": dataset})
    assert names["data"]["dataset"]["name"] == "Restaurant tips"


def test_a_dataset_can_be_deleted_from_the_page_after_a_confirmation(session: Session) -> None:
    dataset = upload_over_http(session.server, DATA / "tips.csv")
    page = session.open(dataset)
    page.get_by_role("button", name="Delete…").click()
    dialog = page.get_by_role("dialog", name="Delete this dataset?")
    expect(dialog).to_contain_text(f"({dataset})")
    expect(dialog.get_by_role("button", name="Keep it")).to_be_focused()
    assert axe_violations(page) == []
    dialog.get_by_role("button", name="Keep it").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#dataset-rows")).to_have_text("244")

    page.get_by_role("button", name="Delete…").click()
    dialog.get_by_role("button", name="Delete it").click()
    expect(page.locator("#dataset-status")).to_have_text(re.compile(f"^Deleted “.*” \\({dataset}\\)\\.$"))
    expect(page.locator(f'#dataset-select option[value="{dataset}"]')).to_have_count(0)
    expect(page.locator("#dataset-select")).to_have_value("")
    expect(page.locator("#dataset-error")).to_be_hidden()  # its own delete is no news
    assert graphql(session.server, "query($id: ID!) { dataset(id: $id) { id } }", {"id": dataset})["data"] == {
        "dataset": None
    }


def test_graphiql_has_the_favicon_and_a_link_back_to_the_page(session: Session) -> None:
    page = session.page
    page.goto(session.server + "/graphql")
    expect(page.locator(".graphiql-container")).to_be_visible()
    icon = page.locator("link[rel=icon]")
    expect(icon).to_have_attribute("href", "/static/app/icon.svg")
    assert httpx.get(session.server + "/static/app/icon.svg", timeout=30).status_code == 200
    back = page.get_by_role("link", name="Back to the datagraph web page")
    expect(back).to_be_visible()
    back.click()
    expect(page).to_have_url(session.server + "/")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")


def tab_to(page: Page, selector: str, limit: int = 120) -> None:
    """Press Tab until the focus is on `selector` (keyboard only)."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => document.activeElement?.matches(s)", selector):
            return
    raise AssertionError(f"Tab never reached {selector}")


def focus_ring(page: Page) -> tuple[str, float, str]:
    """The focused element's outline: style, width, and its contrast with the card behind it."""
    ring: dict[str, str] = page.evaluate(
        """() => {
            const el = document.activeElement;
            const style = getComputedStyle(el);
            const card = el.closest(".card, .topbar, dialog") ?? document.body;
            return { style: style.outlineStyle, width: style.outlineWidth, colour: style.outlineColor,
                     behind: getComputedStyle(card).backgroundColor };
        }"""
    )
    return ring["style"], float(ring["width"].removesuffix("px")), f"{contrast(ring['colour'], ring['behind']):.2f}"


def test_the_page_works_by_keyboard_alone_with_a_visible_focus_ring(session: Session, tmp_path: Path) -> None:
    page = session.page
    session.open()
    for theme in THEMES:
        page.emulate_media(color_scheme=theme)
        page.locator("body").focus()
        tab_to(page, "#theme-toggle")
        style, width, ratio = focus_ring(page)
        assert style == "solid" and width >= 2 and float(ratio) >= 3, (theme, style, width, ratio)
    page.emulate_media(color_scheme="light")

    # Upload: Tab to the file field, Space opens the file chooser.
    tab_to(page, "#file-input")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    chooser.value.set_files(DATA / "tips.csv")
    expect(page.locator("#dataset-rows")).to_have_text("244")

    # A filter: day equals Sun, typed into menus reached with Tab.
    tab_to(page, "#add-filter")
    page.keyboard.press("Enter")
    expect(page.locator("#filter-rows .f-column")).to_be_focused()  # the new row's first menu
    page.keyboard.type("day")
    expect(page.locator("#filter-rows .f-column")).to_have_value("day")
    tab_to(page, "#filter-rows .f-value")
    page.keyboard.type("Sun")
    tab_to(page, "#apply")
    style, width, ratio = focus_ring(page)
    assert style == "solid" and width >= 2 and float(ratio) >= 3, (style, width, ratio)
    session.shot("focus-on-show")
    page.keyboard.press("Enter")
    expect(page.locator("#result-count")).to_have_text("76 rows")

    # Export: Tab to the button, Enter downloads.
    tab_to(page, "#export-run")
    with page.expect_download() as download:
        page.keyboard.press("Enter")
    assert "filtered-by-day" in download.value.suggested_filename
    saved = tmp_path / "sundays.csv"
    download.value.save_as(saved)
    assert len(saved.read_text().splitlines()) == 77

    # Every control has a name (axe's label and name rules among them), with the result shown.
    check_everywhere(session, "keyboard")


APPEND = "mutation($d: ID!, $r: JSON!) { appendRows(dataset: $d, rows: $r) { success } }"
SUNDAY = {"total_bill": 10.0, "tip": 1.0, "sex": "Female", "smoker": "No", "day": "Sun", "time": "Dinner", "size": 2}


@pytest.mark.parametrize("how", ["blocked", "forced"])
def test_without_websockets_the_page_stays_live_over_server_sent_events(session: Session, how: str) -> None:
    """A proxy that refuses websockets (each one closed at once), or `?live=sse`: the page's live
    connection goes over /graphql/stream, and a change made elsewhere still shows up unasked."""
    page = session.page
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    streams: list[dict[str, str]] = []
    page.on("request", lambda r: streams.append(r.headers) if r.url.endswith("/graphql/stream") else None)
    if how == "blocked":  # closed at once, never acknowledged (a routed socket is no "websocket" event)
        page.route_web_socket(re.compile(r"/graphql$"), lambda ws: (sockets.append(ws.url), ws.close()))
    dataset = upload_over_http(session.server, DATA / "tips.csv")
    page.goto(session.server + ("/?live=sse" if how == "forced" else "/") + f"#{dataset}")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    expect(page.locator("#live")).to_have_text("Live (event stream)")
    expect(page.locator("#dataset-rows")).to_have_text("244")
    assert streams and all(h.get("accept") == "text/event-stream" for h in streams), streams
    assert (len(sockets) >= 2) if how == "blocked" else sockets == [], sockets

    appended = graphql(session.server, APPEND, {"d": dataset, "r": [SUNDAY]})["data"]["appendRows"]
    assert appended["success"], appended
    expect(page.locator("#dataset-rows")).to_have_text("245")
    expect(page.locator("#dataset-version")).to_have_text("2")
    session.shot(f"live-over-sse-{how}")

    # An upload is followed through the server's stages (jobProgress) over its own stream. Diamonds, not a
    # smaller file: each stream is a request of its own, which may reach the server after the upload's,
    # and the 891 rows of titanic.csv were once read and saved before it did.
    record_progress(page)
    with page.expect_request(lambda r: r.url.endswith("/graphql/stream") and "JobProgress" in (r.post_data or "")):
        drop_file(page, "#dropzone", DATA / "diamonds.csv")
    expect(page.locator("#upload-status")).to_contain_text("diamonds.csv is now the dataset", timeout=30_000)
    _, texts = progress_seen(page)
    assert {"Reading the rows…", "Saving 53,940 rows…"} & set(texts), texts
    assert "Reading diamonds.csv…" not in texts, texts  # the state without jobProgress
