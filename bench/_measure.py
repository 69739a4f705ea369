"""What measures the journey besides the client's clock: the floor (Polars in one process),
resident memory of a process tree sampled in a thread, and concurrent load-generating clients,
each its own process."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
import os
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import psutil
from _systems import BY, ON, PAGE, ROOT

# ---- the floor: Polars in one process --------------------------------------------------------------------------


def _floor_serve(conn: Connection, niceness: int) -> None:
    """The floor process: run each command it is sent and answer (seconds, answer)."""
    os.nice(niceness)
    import orjson
    import polars as pl

    sys.path.insert(0, str(ROOT))
    from engine import Plan, Source
    from engine import describe as engine_describe

    def where(lf: pl.LazyFrame) -> pl.LazyFrame:
        return lf.filter(pl.col("qty") > 500, pl.col("small") == "cat3")

    def raw(path: str) -> int:
        lines = 0
        with open(path, "rb", buffering=0) as fh:
            while chunk := fh.read(8 << 20):
                lines += chunk.count(b"\n")
        return lines

    def load_csv(path: str, out: str, dates: bool) -> int:
        """The floor knows the file: Polars' default inference, the two date columns named."""
        frame = pl.read_csv(path, schema_overrides={"day": pl.Date, "at": pl.Datetime("us")} if dates else None)
        frame.write_parquet(out)
        return frame.height

    def load_xlsx(path: str, out: str) -> int:
        frame = pl.read_excel(path)
        frame.write_parquet(out)
        return frame.height

    def describe(path: str) -> Any:
        return {r["column"]: r for r in engine_describe(Plan(Source("floor", 1, Path(path))))}

    def filter_(path: str) -> Any:
        lf = where(pl.scan_parquet(path))
        counted, head = pl.collect_all([lf.select(pl.len()), lf.head(100)])
        orjson.dumps(head.to_dicts(), option=orjson.OPT_SERIALIZE_NUMPY)
        return int(counted.item()), head.height

    def group_by(path: str) -> Any:
        aggs = [pl.col("qty").sum().alias("qty_sum"), pl.col("price").mean().alias("price_mean"),
                pl.col("score").max().alias("score_max"), pl.col("user").n_unique().alias("user_n_unique")]  # fmt: skip
        records = pl.scan_parquet(path).group_by(BY).agg(aggs).sort(BY, nulls_last=True).collect().to_dicts()
        orjson.dumps(records)
        return records

    def join(left: str, right: str) -> Any:
        lf, rf = pl.scan_parquet(left), pl.scan_parquet(right)
        joined = lf.join(rf, on=ON, how="inner", suffix="_right")
        queries = [joined.select(pl.len()), lf.select(pl.len()), rf.select(pl.len()),
                   lf.join(rf.select(ON).unique(), on=ON, how="semi").select(pl.len())]  # fmt: skip
        rows, _, _, matched = (int(f.item()) for f in pl.collect_all(queries))
        joined.collect_schema()
        return rows, matched

    def export(path: str, out: str) -> int:
        frame = where(pl.scan_parquet(path)).collect()
        frame.write_csv(out)
        return frame.height

    def rows(path: str, offset: int) -> Any:
        frame = pl.scan_parquet(path).slice(offset, PAGE).collect()
        frame.write_json()
        return frame["id"].to_list()

    commands = {"raw": raw, "load_csv": load_csv, "load_xlsx": load_xlsx, "describe": describe, "filter": filter_,
                "group_by": group_by, "join": join, "export": export, "rows": rows}  # fmt: skip
    gc.freeze()
    while True:
        message = conn.recv()
        if message is None:
            return
        name, args = message
        t0 = time.perf_counter()
        answer = commands[name](*args)
        conn.send((time.perf_counter() - t0, answer))


class Floor:
    name = "floor"

    def __init__(self, conn: Connection, pid: int, work: Path) -> None:
        self.conn, self.pid, self.work = conn, pid, work

    def run(self, name: str, *args: Any) -> tuple[float, Any]:
        self.conn.send((name, [str(a) if isinstance(a, Path) else a for a in args]))
        seconds, answer = self.conn.recv()
        return float(seconds), answer


@contextlib.contextmanager
def floor(work: Path, niceness: int = 0) -> Iterator[Floor]:
    """The floor process; `niceness` as datagraph's workers run (10) makes it compete for a busy machine's
    cores as they do."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_floor_serve, args=(child, niceness), daemon=True)
    proc.start()
    try:
        assert proc.pid is not None
        yield Floor(parent, proc.pid, work)
    finally:
        with contextlib.suppress(OSError):
            parent.send(None)
        proc.join(10)
        if proc.is_alive():
            proc.kill()


# ---- memory: RSS of a process tree, sampled --------------------------------------------------------------------


class TreeMemory:
    """Samples the resident memory of a process and all its descendants every `every` seconds in a
    thread; keeps the peak of the sum, of the root alone and of the descendants, per phase."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.root = psutil.Process(pid)
        self.every = every
        self.phase = "idle"
        self.peaks: dict[str, dict[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        children: list[psutil.Process] = []
        refreshed = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - refreshed > 0.5:  # listing descendants scans /proc: not every sample
                with contextlib.suppress(psutil.Error):
                    children = self.root.children(recursive=True)
                refreshed = now
            try:
                root = self.root.memory_info().rss
            except psutil.Error:
                return
            kids = 0
            for child in children:
                with contextlib.suppress(psutil.Error):
                    kids += child.memory_info().rss
            peak = self.peaks.setdefault(self.phase, {"total": 0, "root": 0, "children": 0})
            peak["total"] = max(peak["total"], root + kids)
            peak["root"] = max(peak["root"], root)
            peak["children"] = max(peak["children"], kids)
            self._stop.wait(self.every)

    def snapshot(self) -> dict[str, int]:
        """RSS and PSS (shared pages divided among the processes sharing them) of the tree now; PSS
        reads /proc/<pid>/smaps_rollup, milliseconds per process, so it is not sampled."""
        procs = [self.root, *self.root.children(recursive=True)]
        full = [p.memory_full_info() for p in procs]
        return {"rss": sum(f.rss for f in full), "pss": sum(f.pss for f in full)}

    def peak(self, *phases: str) -> dict[str, int]:
        found = [self.peaks[p] for p in phases if p in self.peaks]
        return {k: max((f[k] for f in found), default=0) for k in ("total", "root", "children")}


# ---- load: concurrent clients, each its own process ------------------------------------------------------------


def _load_client(jobs: Any, results: Any) -> None:
    """One load-generating process: for each job, a keep-alive client cycling through the requests
    for `duration` seconds, from a shared start time; answers (requests done, errors, latencies)."""
    gc.disable()
    while (job := jobs.get()) is not None:
        base, requests, start_at, duration = job
        headers = {"content-type": "application/json"}
        done, errors, times = 0, 0, []
        with httpx.Client(base_url=base, timeout=60) as client:
            for method, url, body in requests:  # connect, and check every request answers
                client.request(method, url, content=body or None, headers=headers).raise_for_status()
            time.sleep(max(0.0, start_at - time.time()))
            end = time.perf_counter() + duration
            i = 0
            while (t0 := time.perf_counter()) < end:
                method, url, body = requests[i % len(requests)]
                r = client.request(method, url, content=body or None, headers=headers)
                times.append(time.perf_counter() - t0)
                done += 1
                i += 1
                errors += r.status_code != 200 or (url != "/healthz" and b'"success":true' not in r.content)
        results.put((done, errors, times))


class LoadClients:
    """`n` client processes, started once and reused (starting 8 Python processes costs seconds)."""

    def __init__(self, n: int) -> None:
        ctx = mp.get_context("spawn")
        self.jobs, self.results = ctx.Queue(), ctx.Queue()
        self.procs = [ctx.Process(target=_load_client, args=(self.jobs, self.results), daemon=True) for _ in range(n)]
        for p in self.procs:
            p.start()

    def run(self, base: str, requests: list[tuple[str, str, bytes]], duration: float) -> dict[str, Any]:
        start_at = time.time() + 1.5  # time for every client to connect and warm up first
        for _ in self.procs:
            self.jobs.put((base, requests, start_at, duration))
        answers = [self.results.get(timeout=duration + 120) for _ in self.procs]
        times = sorted(t for a in answers for t in a[2])
        done = sum(a[0] for a in answers)
        return {
            "rps": done / duration,
            "errors": sum(a[1] for a in answers),
            "p50": times[len(times) // 2] if times else float("nan"),
            "p99": times[int(len(times) * 0.99)] if times else float("nan"),
        }

    def close(self) -> None:
        for _ in self.procs:
            self.jobs.put(None)
        for p in self.procs:
            p.join(10)
