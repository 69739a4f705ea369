"""The journey's report: the Markdown table with targets and notes, the chart of ratios, and the
README's performance section."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
from importlib import metadata
from pathlib import Path
from typing import Any

from _systems import CACHED, UNCACHED

MiB = 1 << 20


def med(values: list[float]) -> float:
    return statistics.median(values)


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:,.0f} ms" if seconds >= 0.1 else (
        f"{seconds * 1000:.1f} ms" if seconds >= 0.01 else f"{seconds * 1000:.2f} ms")  # fmt: skip


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB"


def versions() -> str:
    names = ("polars", "pandas", "flask", "werkzeug", "strawberry-graphql", "starlette", "uvicorn", "httpx")
    return f"Python {platform.python_version()}, " + ", ".join(f"{n} {metadata.version(n)}" for n in names)


LABELS = {
    "upload": "upload CSV, {rows:,} rows x 12 ({mb:.1f} MB)",
    "raw read": "↳ raw read of that file (bytes + newlines)",
    "upload_users": "upload CSV, 100,000 rows x 3 (the join table)",
    "upload_xlsx": "upload XLSX, {xlsx_rows:,} rows x 12 ({xlsx_mb:.1f} MB)",
    "describe": "describe, all 12 columns (pandas' numbers)",
    "filter": "filter qty > 500 and small = cat3 → count + 100 rows",
    "group_by": "group-by 2 keys, 4 aggregations → 400 rows",
    "join": "join {rows:,} x 100,000 rows on user → summary",
    "export": "export the filter as CSV (+ download)",
}


# Why a target is missed, from profiling the server path; shown only for the targets a run misses.
NOTES = {
    "memory": "**Peak memory.** Describe now works one column at a time (about half its old peak), so the peak"
    " has moved to the 1M-row upload: the server process (about 175 MiB, holding the request while the file"
    " streams to staging) plus the ingest worker writing Parquet (about 300 MiB). Below 0.7x the seed's needs"
    " about 25 MiB off the ingest's write (smaller Parquet row groups did not lower it), or the worker's"
    " allocator told to return memory at once (`_RJEM_MALLOC_CONF` at worker start: measured 20-70 MiB less, but"
    " describe 1.15-1.7x slower).",
    "cached": "**Cached queries.** A cache hit is a dictionary lookup on both servers, so both sit near the HTTP"
    " round trip (`GET /healthz`, the floor column); 20x faster than the seed's own hit would be below a"
    " loopback HTTP request. Read as a repeated query against the seed's first run of it, datagraph's cache is"
    " far past 20x (the row under the pass). The answer cache serves stored bytes (bench/wire.py: a hit at the"
    " bare app's p50); the cached export still takes two requests (the link, then the file from disk) against"
    " the seed's one answer from memory.",
    "rows": "**1,000 rows.** The seed slices a DataFrame it keeps in memory. datagraph reads a stored version's"
    " page from its page blocks (small Arrow files made once per version) in the server's own threads, about"
    " 1.1 ms in one process, which took the page from 2.4x the floor to about 1.8x; what is left is HTTP,"
    " GraphQL execution and two metadata look-ups (about 2 ms for `{ __typename }` alone on this machine)."
    " Faster than an in-memory slice needs those per-request costs cut, not the read.",
    "filter": "**Filter.** `count` and `rows` of one frame now run as one worker job (collected one after the"
    " other: a shared scan measured slower); the rest is HTTP, GraphQL and the worker round trip, a few ms on"
    " a query of tens of ms, so the ratio moves with the floor's own time from run to run (1.3-1.5x).",
    "describe": "**describe.** A few ms of HTTP, GraphQL and worker round trip are small beside the query.",
    "group_by": "**group-by.** Fixed per-request costs (HTTP, GraphQL, the worker round trip, 400 rows sent back"
    " and encoded) beside a query of a few hundred ms.",
    "nice": "**Priority.** datagraph's workers run at niceness 10 (`engine/_worker.py`, so that cached answers stay"
    " fast while analyses run), the floor process at {floor_nice}. On a machine busy with other work, a nice-5"
    " process gets a fraction of the CPU a nice-0 one gets, so the describe, filter and group-by ratios swing"
    " with the machine's other load; `--floor-nice 10` runs the floor at the workers' priority. On an otherwise"
    " idle machine niceness makes no difference.",
    "journey": "**The journey.** See the rows above: uploads dominate both.",
    "upload": "The seed's uploads include loading each file into SQLite, as the seed design asks (\"kept as a table"
    ' for the next step to reuse"); that load is most of its upload time, and the row under the journey shows'
    " the seed without it.",
}


def report(
    rounds: list[tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]],
    sizes: dict[str, Any],
    args: argparse.Namespace,
    elapsed: float,
    day: str,
    host: str,
) -> tuple[str, list[dict[str, Any]]]:
    """The Markdown report and the rows behind the chart."""

    def t(system: str, key: str) -> float:
        return med([times[system][key] for times, _ in rounds])

    def total(system: str, keys: list[str]) -> float:
        return med([sum(times[system][k] for k in keys) for times, _ in rounds])

    def mem(system: str, phase: str, part: str = "total") -> float:
        return med([m[system][phase][part] for _, m in rounds]) / MiB

    def snap(system: str, when: str, kind: str) -> str:
        return f"{med([m[system]['snapshots'][when][kind] for _, m in rounds]) / MiB:,.0f} MiB"

    lines = ["| step | datagraph | seed: Flask + pandas | floor: Polars / raw | seed ÷ datagraph | datagraph ÷ floor"
             " | target | met? |", "|---|---:|---:|---:|---:|---:|---|---|"]  # fmt: skip
    chart: list[dict[str, Any]] = []
    verdicts: list[tuple[str, str, bool]] = []

    def row(
        label: str, a: str, b: str, c: str, vs_seed: str, vs_floor: str, target: str = "", met: bool | None = None,
        key: str = "",
    ) -> None:  # fmt: skip
        shown = "" if met is None else "yes" if met else "**missed**"
        lines.append(f"| {label} | {a} | {b} | {c} | {vs_seed} | {vs_floor} | {target} | {shown} |")
        if met is not None:
            verdicts.append((key, f"{label.strip('*')}: {target}", met))

    for key in UNCACHED:
        a, b, c = t("datagraph", key), t("seed", key), t("floor", key)
        target, met = "", None
        if key in ("describe", "filter", "group_by"):
            target, met = "≤ 1.3x floor", a / c <= 1.3
        row(LABELS[key].format(**sizes), fmt_s(a), fmt_s(b), fmt_s(c), f"{b / a:.2f}x", f"{a / c:.2f}x", target, met,
            key)  # fmt: skip
        chart.append({"label": key.replace("_", "-"), "seed": b / a, "floor": a / c, "floor_target": 1.3 if target
                      else None})  # fmt: skip
        if key == "upload":
            raw = t("floor", "raw read")
            row(LABELS["raw read"], "", "", fmt_s(raw), "", f"{a / raw:.1f}x")
    a, b, c = (total(s, UNCACHED) for s in ("datagraph", "seed", "floor"))
    row("**journey, uncached, end to end**", f"**{fmt_s(a)}**", f"**{fmt_s(b)}**", fmt_s(c), f"**{b / a:.2f}x**",
        f"{a / c:.2f}x", "≥ 1.5x faster than seed", b / a >= 1.5, "journey")  # fmt: skip
    chart.append({"label": "journey (uncached)", "seed": b / a, "floor": a / c, "seed_target": 1.5})
    unstored = med([sum(times["seed"][k] for k in UNCACHED) - times["seed"]["sqlite load"] for times, _ in rounds])
    row("↳ the seed's journey without loading its uploads into SQLite (`to_sql`)", "", fmt_s(unstored), "",
        f"{unstored / a:.2f}x", "")  # fmt: skip
    a, b, c = (mem(s, "uncached") for s in ("datagraph", "seed", "floor"))
    row("peak memory during the journey (RSS, process tree)", f"{a:,.0f} MiB", f"{b:,.0f} MiB", f"{c:,.0f} MiB",
        f"{a / b:.2f}x the memory", "", "≤ 0.7x seed's", a / b <= 0.7, "memory")  # fmt: skip
    chart.append({"label": "peak memory", "seed": b / a, "floor": None, "seed_target": 1 / 0.7})
    for key in CACHED:
        a, b, c = t("datagraph", f"cached {key}"), t("seed", f"cached {key}"), t("floor", f"cached {key}")
        row(f"cached: {key.replace('_', '-')}", fmt_s(a), fmt_s(b), fmt_s(c) if key == "describe" else "″",
            f"{b / a:.2f}x", "")  # fmt: skip
    keys = [f"cached {k}" for k in CACHED]
    a, b, c = (total(s, keys) for s in ("datagraph", "seed", "floor"))
    row("**cached pass (the 5 queries again)**", f"**{fmt_s(a)}**", f"**{fmt_s(b)}**", fmt_s(c), f"**{b / a:.2f}x**",
        f"{a / c:.1f}x", "≥ 20x faster than seed", b / a >= 20, "cached")  # fmt: skip
    chart.append({"label": "cached pass", "seed": b / a, "floor": None, "seed_target": 20})
    first_seed, first_dg = total("seed", CACHED), total("datagraph", CACHED)
    row("↳ the same 5 queries, uncached (their first run above)", fmt_s(first_dg), fmt_s(first_seed), "",
        f"{first_seed / a:,.0f}x: seed's first run ÷ datagraph cached", f"{first_dg / a:,.0f}x: datagraph's first"
        " run ÷ its cached")  # fmt: skip
    rps = {s: med([times[s]["concurrent"]["rps"] for times, _ in rounds]) for s in ("datagraph", "seed", "floor")}
    p50 = {s: med([times[s]["concurrent"]["p50"] for times, _ in rounds]) for s in ("datagraph", "seed", "floor")}
    row(f"{args.clients} concurrent clients, cached queries: requests/s (p50)",
        f"{rps['datagraph']:,.0f} ({fmt_s(p50['datagraph'])})", f"{rps['seed']:,.0f} ({fmt_s(p50['seed'])})",
        f"{rps['floor']:,.0f} ({fmt_s(p50['floor'])})", f"{rps['datagraph'] / rps['seed']:.2f}x the req/s",
        f"{rps['datagraph'] / rps['floor']:.2f}x the req/s")  # fmt: skip
    chart.append({"label": f"{args.clients} clients req/s", "seed": rps["datagraph"] / rps["seed"], "floor": None})
    a, b, c = (t(s, "rows") for s in ("datagraph", "seed", "floor"))
    row("1,000 rows as JSON (a page, uncached)", fmt_s(a), fmt_s(b), fmt_s(c), f"{b / a:.2f}x", f"{a / c:.2f}x",
        "≥ 5x faster than seed", b / a >= 5, "rows")  # fmt: skip
    chart.append({"label": "1,000 rows JSON", "seed": b / a, "floor": a / c, "seed_target": 5})

    dg_server, dg_workers = mem("datagraph", "uncached", "root"), mem("datagraph", "uncached", "children")
    idle = {s: mem(s, "idle") for s in ("datagraph", "seed", "floor")}
    over_all = {s: mem(s, "all") for s in ("datagraph", "seed")}
    by_step = {s: {k: med([m[s]["steps"][k] for _, m in rounds]) / MiB for k in UNCACHED} for s in ("datagraph",
               "seed", "floor")}  # fmt: skip
    peak_step = {s: max(UNCACHED, key=lambda k: by_step[s][k]) for s in ("datagraph", "seed")}
    step_peaks = ", ".join(
        f"{k.replace('_', ' ')} {by_step['datagraph'][k]:,.0f} / {by_step['seed'][k]:,.0f} / {by_step['floor'][k]:,.0f}"
        for k in UNCACHED
    )
    met = sum(m for _, _, m in verdicts)
    floor_missed = any(not m for key, _, m in verdicts if key in ("describe", "filter", "group_by"))
    text = [
        f"# The journey: datagraph vs the seed's Flask + pandas server vs the floor ({day})",
        "",
        f"{host}. Medians of {args.rounds} rounds; each round starts fresh servers and runs"
        " every step on the three systems in turn, the order rotating each round. Client, servers and floor share"
        f" the machine's {os.cpu_count()} cores. Whole run: {elapsed / 60:.1f} min.",
        "",
        *lines,
        "",
        f"**{met} of {len(verdicts)} targets met.**",
        *(f"- {'met' if m else '**missed**'}: {label}" for _, label, m in verdicts),
        "",
        "Notes on the misses (from profiling the server path):",
        "",
        *(f"- {NOTES[key]}" for key, _, m in verdicts if not m and key in NOTES),
        *([f"- {NOTES['nice'].format(floor_nice=args.floor_nice)}"] if floor_missed and args.floor_nice != 5 else []),
        f"- {NOTES['upload']}",
        "",
        "How it was measured:",
        "",
        "- Times are taken by the client around each request, the body read and not parsed. datagraph: one"
        " GraphQL request per step (filter: `count` and `rows(limit: 100)` in one request; export: the query,"
        " then the download of the link). The cached pass checks `meta.cached` on every answer (the seed:"
        f" its `meta.cached`, `X-Cache: hit` for the CSV); {args.cached_reps} repetitions per query.",
        f"- Memory: resident set size of each server's process tree (server + worker processes), sampled every"
        f" 20 ms. datagraph's peak during the journey splits into the server process {dg_server:,.0f} MiB and"
        f" the workers {dg_workers:,.0f} MiB together (each peak on its own; the highest sum came during"
        f" `{peak_step['datagraph']}`, the seed's during `{peak_step['seed']}`); idle right after start: datagraph"
        f" {idle['datagraph']:,.0f} MiB, seed {idle['seed']:,.0f} MiB, floor {idle['floor']:,.0f} MiB. Over the"
        f" whole round (cached, concurrent and paging phases too): datagraph {over_all['datagraph']:,.0f} MiB,"
        f" seed {over_all['seed']:,.0f} MiB. Each process counts the shared libraries it has mapped, so"
        " datagraph's three Python processes count those pages three times; PSS shares them out: at idle"
        f" datagraph {snap('datagraph', 'idle', 'rss')} RSS / {snap('datagraph', 'idle', 'pss')} PSS, the seed"
        f" {snap('seed', 'idle', 'rss')} / {snap('seed', 'idle', 'pss')}; after the journey (everything"
        f" uploaded, queries done) datagraph {snap('datagraph', 'loaded', 'rss')} /"
        f" {snap('datagraph', 'loaded', 'pss')}, the seed {snap('seed', 'loaded', 'rss')} /"
        f" {snap('seed', 'loaded', 'pss')}. Peak RSS in each step, datagraph / seed / floor (MiB): {step_peaks}.",
        f"- Concurrency: {args.clients} client processes (httpx, keep-alive) cycling through the cached describe,"
        f" filter, group-by and join for {args.duration:g} s, on the same cores as the server. werkzeug closes"
        " the connection after every response, so the seed's clients reconnect each time.",
        f"- 1,000 rows: {args.pages} pages at offsets spread through the file, each asked for once"
        " (`rows(limit: 1000, offset: N)`; the seed's `GET /api/sources/<id>/rows`; the floor's"
        " `scan_parquet().slice()` + `write_json`).",
        "- The seed server keeps each uploaded DataFrame in memory (as a competent developer would, instead of"
        " reading 1M rows back from SQLite for every analysis), caches encoded answers in an LRU of 256 MiB and"
        " encodes rows with pandas' C encoder; see bench/seedserver.py. The floor's describe is"
        " `engine.describe` (one Polars select, pandas' numbers) in the floor process; the rest is plain"
        f" Polars. The floor process runs at niceness {args.floor_nice}, datagraph's workers at 10, everything"
        " else at 0. The three systems' answers are compared at every step.",
        "- Settings raised for the benchmark (each documented as a limit): datagraph `max_upload_mb` 1024"
        f" (`DATAGRAPH_MAX_UPLOAD_MB`) for the {sizes['mb']:.0f} MB upload, `rate_limit` 100000000/minute"
        " (`DATAGRAPH_RATE_LIMIT`) so the load test from one address is not throttled, `log_level` warning;"
        " the seed server's 20 MB upload limit to 1024 MB.",
    ]
    return "\n".join(text) + "\n", chart


def draw(chart: list[dict[str, Any]], path: Path, title: str) -> None:
    """Two panels of ratios: datagraph against the seed server (higher is better, targets marked),
    and datagraph against the floor (lower is closer, the 1.3x target marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6), gridspec_kw={"width_ratios": [3, 2]})
    values = [c["seed"] for c in chart]
    targets = [c.get("seed_target") for c in chart]
    colours = ["#c44" if (t is not None and v < t) or (t is None and v < 1) else "#2a7" for v, t in
               zip(values, targets, strict=True)]  # fmt: skip
    left.barh([c["label"] for c in chart], values, color=colours)
    left.set_xscale("log")
    ticks = [0.125, 0.25, 0.5, 1, 2, 4, 8, 16, 32]
    left.xaxis.set_major_locator(FixedLocator(ticks))
    left.xaxis.set_minor_locator(NullLocator())
    left.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}x"))
    left.set_xlim(min(0.1, min(values) / 1.5), max(40, max(values) * 2))
    left.axvline(1, color="black", linewidth=0.8)
    for i, (v, t) in enumerate(zip(values, targets, strict=True)):
        left.text(v, i, f" {v:.2f}x", va="center", fontsize=8)
        if t is not None:
            left.plot([t, t], [i - 0.4, i + 0.4], color="black", linewidth=2)
    left.invert_yaxis()
    left.set_title("datagraph vs the seed's Flask + pandas server\n(higher: datagraph better; black bar: the target)")
    left.set_xlabel("seed time ÷ datagraph time (memory: seed ÷ datagraph; req/s: datagraph ÷ seed)")
    floors = [c for c in chart if c["floor"] is not None]
    right.barh(
        [c["label"] for c in floors],
        [c["floor"] for c in floors],
        color=["#c44" if c.get("floor_target") and c["floor"] > c["floor_target"] else "#47a" for c in floors],
    )
    right.axvline(1, color="black", linewidth=0.8)
    for i, c in enumerate(floors):
        right.text(max(c["floor"], 1.32 if c.get("floor_target") else 0), i, f" {c['floor']:.2f}x", va="center",
                   fontsize=8)  # fmt: skip
        if c.get("floor_target"):
            right.plot([1.3, 1.3], [i - 0.4, i + 0.4], color="black", linewidth=2)
    right.invert_yaxis()
    right.set_title("datagraph vs the floor\n(lower: closer; black bar: the 1.3x target)")
    right.set_xlabel("datagraph time ÷ Polars in one process")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def readme_section(report_md: str, day: str) -> str:
    """The README's performance section: how to run it, then the latest table as it was written."""
    body = report_md.split("\n", 2)[2]
    return (
        "## Performance\n\n"
        "`make bench` runs one user journey three ways, side by side and interleaved: this server over HTTP on"
        " loopback, a reference REST server written the way the seed design describes it (Flask + pandas +"
        " SQLite with an LRU result cache, `bench/seedserver.py`), and the floor (Polars in one process on the"
        " same Parquet, and a raw read of the file). The journey: upload → describe → filter → group-by → join →"
        " export CSV; the same queries again (cached); 8 concurrent clients on cached queries; 1,000 rows as"
        " JSON. It generates its data once into `bench/.data/` and writes `bench/results/latest.md`,"
        " `latest.png` and the raw numbers in `latest.json`; `make bench-all` also runs the older focused"
        " benchmarks (`bench/describe.py`, `engine.py`, `sources.py`, `events.py`).\n\n"
        f"Latest run, {day}:\n\n" + body
    )
