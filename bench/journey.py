"""One user journey three ways: this server, the seed design's Flask + pandas REST server, and the floor.

The journey: upload (a 1,000,000-row x 12-column CSV, the 100,000-row table to join, a 100,000-row
XLSX) → describe → filter → group-by → join → export CSV, all uncached; then the same queries again
(cached); then 8 concurrent clients on the cached queries; then pages of 1,000 rows as JSON.

- datagraph: `datagraph serve` (uvicorn, the real app, default settings but the upload size and
  the per-client request budget raised, log level warning) on loopback, over HTTP.
- seed: bench/seedserver.py, written the way the seed design describes (Flask + pandas + SQLite,
  `/api/sources`, `/api/analyze/...`, an LRU result cache), under werkzeug's threaded server.
- floor: Polars in one separate process on the Parquet file datagraph stored, and a raw read of the
  CSV; for cached queries, the HTTP floor (datagraph's `GET /healthz`).

Each round starts fresh servers and a fresh floor process, then runs every step on the three
systems in turn (A B C, A B C, ...; the order rotates each round), so machine noise hits all alike.
Resident memory of each server's process tree (the server and its workers) is sampled every 20 ms.
Reports medians over rounds and ratios from the same run, with the targets of issue 9.

Usage: `make bench` (or `python bench/journey.py --rounds 3`). Data is generated once into
bench/.data/. Writes bench/results/latest.md, latest.png, latest.json (the raw numbers) and
README-section.md, and prints the table; `--from-json bench/results/latest.json` writes them again.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Only light imports at the top: the floor and load-client processes (spawned) import this module again.
from _measure import Floor, LoadClients, TreeMemory, floor
from _report import draw, machine, readme_section, report, versions
from _systems import CACHED, PAGE, UNCACHED, Datagraph, Seed, datagraph, seed

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / ".data"
RESULTS = ROOT / "bench" / "results"


# ---- data ------------------------------------------------------------------------------------------------------


def generate_xlsx(csv: Path, path: Path, rows: int = 100_000) -> Path:
    """The first `rows` rows of the CSV as an .xlsx (dates as Excel dates); xlsxwriter takes ~20 s."""
    import polars as pl

    if not path.exists():
        frame = pl.read_csv(csv, n_rows=rows, schema_overrides={"day": pl.Date, "at": pl.Datetime("us")})
        tmp = path.with_suffix(".tmp.xlsx")
        frame.write_excel(tmp, autofit=False)
        tmp.rename(path)
    return path


# ---- one round -------------------------------------------------------------------------------------------------


class Files:
    def __init__(self, rows: int) -> None:
        from describe import generate, generate_users  # bench/describe.py: the same tables as the other benchmarks

        DATA.mkdir(parents=True, exist_ok=True)
        self.csv = generate(DATA / f"mixed_{rows}.csv", rows)
        self.users = generate_users(DATA / "users_100000.csv")
        head = min(rows, 100_000)
        self.xlsx = generate_xlsx(self.csv, DATA / f"mixed_{rows}_head{head}.xlsx", head)


def step(system: Datagraph | Seed | Floor, name: str, files: Files, dg: Datagraph) -> tuple[float, Any]:
    """Run one uncached step on one system: (seconds, an answer to compare)."""
    if isinstance(system, Floor):
        out = system.work
        if name == "upload":
            return system.run("load_csv", files.csv, out / "floor-main.parquet", True)
        if name == "upload_users":
            return system.run("load_csv", files.users, out / "floor-users.parquet", False)
        if name == "upload_xlsx":
            return system.run("load_xlsx", files.xlsx, out / "floor-xlsx.parquet")
        if name == "join":
            return system.run("join", dg.parquet("main"), dg.parquet("users"))
        if name == "export":
            return system.run("export", dg.parquet("main"), out / "floor-export.csv")
        return system.run(name, dg.parquet("main"))
    if name == "upload":
        return system.upload("main", files.csv)
    if name == "upload_users":
        return system.upload("users", files.users)
    if name == "upload_xlsx":
        return system.upload("xlsx", files.xlsx)
    return getattr(system, name)()  # type: ignore[no-any-return]


def check(name: str, answers: dict[str, Any]) -> None:
    """The three systems answered the same (the journey measures the same work everywhere)."""
    dg, sd, fl = answers["datagraph"], answers["seed"], answers["floor"]
    if name in ("upload", "upload_users", "upload_xlsx", "filter", "join", "export"):
        assert dg == sd == (tuple(fl) if isinstance(fl, list) else fl), (name, dg, sd, fl)
    elif name == "group_by":
        assert len(dg) == len(sd) == len(fl) and [r["qty_sum"] for r in dg] == [r["qty_sum"] for r in sd], name
        assert all(math.isclose(a["price_mean"], b["price_mean"], rel_tol=1e-9) for a, b in zip(dg, sd, strict=True))
    elif name == "describe":
        assert dg.keys() == sd.keys() == fl.keys(), name
        for col in ("qty", "price", "score"):
            for stat in ("mean", "std", "p25", "p50", "p75"):
                assert math.isclose(dg[col][stat], sd[col][stat], rel_tol=1e-9), (col, stat, dg[col], sd[col])
        assert dg["medium"]["top"] == sd["medium"]["top"] and dg["token"]["unique"] == sd["token"]["unique"]


def one_round(
    r: int, files: Files, work: Path, load: LoadClients, args: argparse.Namespace
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Fresh servers and floor; every phase interleaved. Returns times[system][step] and memory peaks."""
    times: dict[str, dict[str, Any]] = defaultdict(dict)
    memory: dict[str, dict[str, Any]] = {}
    for d in ("datagraph", "seed", "floor"):
        shutil.rmtree(work / d, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        dg = stack.enter_context(datagraph(work))
        sd = stack.enter_context(seed(work, args.seed_server))
        fl = stack.enter_context(floor(work, args.floor_nice))
        systems: list[Any] = [dg, sd, fl]
        systems = systems[r % 3 :] + systems[: r % 3]
        meters = {s.name: stack.enter_context(TreeMemory(s.pid)) for s in systems}
        time.sleep(1.0)  # an idle sample of each
        idle = {name: meter.snapshot() for name, meter in meters.items()}

        def phase(name: str) -> None:
            for m in meters.values():
                m.phase = name

        # 1. The journey, uncached.
        for name in UNCACHED:
            phase(f"uncached {name}")
            answers = {}
            for system in systems:
                times[system.name][name], answers[system.name] = step(system, name, files, dg)
            if name == "upload":
                times["floor"]["raw read"], lines = fl.run("raw", files.csv)
                assert lines == args.rows + 1, lines
            check(name, answers)

        loaded = {name: meter.snapshot() for name, meter in meters.items()}
        times["seed"]["sqlite load"] = sum(sd.stored.values())

        # 2. The same queries again, from each server's cache; the floor is an HTTP round trip.
        phase("cached")
        samples: dict[str, list[float]] = defaultdict(list)
        for _ in range(args.cached_reps):
            for name in CACHED:
                for system in systems:
                    if isinstance(system, Floor):
                        t0 = time.perf_counter()
                        dg.client.get("/healthz").raise_for_status()
                        samples[f"floor/{name}"].append(time.perf_counter() - t0)
                    else:
                        samples[f"{system.name}/{name}"].append(getattr(system, name)(cached=True)[0])
        for key, values in samples.items():
            system_name, name = key.split("/")
            times[system_name][f"cached {name}"] = statistics.median(values)

        # 3. Concurrent clients on the cached queries (the floor: GET /healthz).
        phase("concurrent")
        for system in systems:
            base = str(dg.client.base_url if isinstance(system, Floor) else system.client.base_url).rstrip("/")
            requests = [("GET", "/healthz", b"")] if isinstance(system, Floor) else system.cached_requests()
            result = load.run(base, requests, args.duration)
            assert result["errors"] == 0, (system.name, result)
            times[system.name]["concurrent"] = result

        # 4. Pages of 1,000 rows as JSON, each page asked for once (uncached everywhere).
        phase("rows")
        pages: dict[str, list[float]] = defaultdict(list)
        for i in range(args.pages):
            offset = i * (args.rows // args.pages) + 500
            answers = {}
            for system in systems:
                if isinstance(system, Floor):
                    seconds, answers["floor"] = system.run("rows", dg.parquet("main"), offset)
                else:
                    seconds, answers[system.name] = system.rows(offset)
                pages[system.name].append(seconds)
            expected = list(range(offset, offset + PAGE))
            assert [row["id"] for row in answers["datagraph"]] == expected, offset
            assert [row["id"] for row in answers["seed"]] == answers["floor"] == expected, offset
        for name, values in pages.items():
            times[name]["rows"] = statistics.median(values)
        phase("end")
        steps = [f"uncached {name}" for name in UNCACHED]
        for name, meter in meters.items():
            memory[name] = {
                "uncached": meter.peak(*steps),
                "all": meter.peak(*steps, "cached", "concurrent", "rows"),
                "idle": meter.peak("idle"),
                "steps": {k: meter.peak(f"uncached {k}")["total"] for k in UNCACHED},
                "snapshots": {"idle": idle[name], "loaded": loaded[name]},
            }
    return times, memory


def run(files: Files, args: argparse.Namespace) -> list[Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-journey-"))
    load = LoadClients(args.clients)
    rounds = []
    try:
        for r in range(args.rounds):
            t0 = time.perf_counter()
            rounds.append(one_round(r, files, work, load, args))
            print(f"round {r + 1}/{args.rounds}: {time.perf_counter() - t0:.0f} s", flush=True)
    except BaseException:
        print(f"failed; the servers' logs are in {work}", file=sys.stderr)
        raise
    else:
        shutil.rmtree(work, ignore_errors=True)
    finally:
        load.close()
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the main table")
    parser.add_argument("--cached-reps", type=int, default=7, help="repetitions of each cached query per round")
    parser.add_argument("--pages", type=int, default=8, help="pages of 1,000 rows per round")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of each concurrent-clients run")
    parser.add_argument("--seed-server", choices=("werkzeug", "uvicorn"), default="werkzeug")
    parser.add_argument(
        "--floor-nice", type=int, default=0, help="niceness of the floor process (datagraph's workers run at 5)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.md/.png/.json and README-section.md go")
    parser.add_argument("--from-json", type=Path, help="write the report again from a latest.json, running nothing")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        args = argparse.Namespace(**{**vars(args), **saved["args"], "out": args.out})
        files = Files(args.rows)
        rounds, elapsed, day, host = saved["rounds"], saved["elapsed"], saved["date"], saved["machine"]
    else:
        files = Files(args.rows)
        print(f"data ready in {time.perf_counter() - started:.1f} s", flush=True)
        rounds = run(files, args)
        elapsed, day = time.perf_counter() - started, dt.date.today().isoformat()
        host = f"{machine()}; {versions()}"
    args.out.mkdir(parents=True, exist_ok=True)
    raw = {k: v for k, v in vars(args).items() if k not in ("out", "from_json")}
    saved = {"date": day, "machine": host, "args": raw, "elapsed": elapsed, "rounds": rounds}
    (args.out / "latest.json").write_text(json.dumps(saved, indent=1))
    sizes = {"rows": args.rows, "mb": files.csv.stat().st_size / 1e6, "xlsx_rows": min(args.rows, 100_000),
             "xlsx_mb": files.xlsx.stat().st_size / 1e6}  # fmt: skip
    text, chart = report(rounds, sizes, args, elapsed, day, host)
    (args.out / "latest.md").write_text(text)
    draw(chart, args.out / "latest.png", f"The journey, {args.rows:,} rows, {day}: {host.split(';')[0]}")
    (args.out / "README-section.md").write_text(readme_section(text, day))
    print(text)


if __name__ == "__main__":
    main()
