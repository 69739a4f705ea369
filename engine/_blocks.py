"""Pages from page blocks: a version's rows kept as small Arrow files (storage/_blocks.py).

`write_page_blocks` makes them, in a worker, from the version's Parquet. `block_page` answers a page
of a plan that is provably small from them: a stored version with only selects and slices on it,
`limit` rows read from the one or two blocks that hold them. It reads nothing else, so the server
runs it in its own threads (`Executor.run_small`) without a worker's round trip; any other plan,
and a select it cannot check, goes to a worker as before.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from engine._columns import column_infos
from engine._ops import Page, records_json
from engine._plan import Plan, Select, Slice, Source
from storage import BlockIndex
from storage._blocks import block_name, write_manifest

__all__ = ["Window", "block_page", "page_window", "write_page_blocks"]


@dataclass(frozen=True, slots=True)
class Window:
    """What a plan of selects and slices keeps of its source: the rows from `start` (at most `count`,
    None for all of them) and the columns of each select in order."""

    start: int
    count: int | None
    selects: tuple[tuple[str, ...], ...]


def page_window(plan: Plan) -> Window | None:
    """The window of a plan over a stored version that only selects and slices; None for any other
    (a linked table, SQL, any other step, a negative slice: the worker path answers those)."""
    source = plan.source
    if plan.refused is not None or not isinstance(source, Source) or source.link is not None:
        return None
    start, count, selects = 0, None, []
    for step in plan.steps:
        if isinstance(step, Slice):
            if step.offset < 0 or step.limit < 0:
                return None
            start += step.offset if count is None else min(step.offset, count)
            count = step.limit if count is None else max(0, min(step.limit, count - step.offset))
        elif isinstance(step, Select):
            selects.append(step.columns)
        else:
            return None
    return Window(start, count, tuple(selects))


def block_page(index: BlockIndex, window: Window, *, limit: int, offset: int) -> Page | None:
    """`engine.page` of the plan `window` came from, read from its page blocks: the same bytes. None
    when a select is one the plan's own checks would refuse (the worker path says why)."""
    first = window.start + offset
    wanted = limit + 1  # one more, to tell whether more follow
    if window.count is not None:
        wanted = max(0, min(wanted, window.count - offset))
    files, skip = index.covering(first, first + wanted)
    parts = [pl.read_ipc_stream(path) for path in files]
    frame = parts[0] if len(parts) == 1 else pl.concat(parts, how="vertical", rechunk=False)
    names: tuple[str, ...] = tuple(frame.columns)
    for columns in window.selects:
        if not columns or len(set(columns)) != len(columns) or not set(columns) <= set(names):
            return None
        names = columns
    found = frame.slice(skip, wanted)
    if window.selects:
        found = found.select(names)
    page = found.head(limit)
    return Page(records_json(page), page.height, column_infos(page), found.height > limit)


def write_page_blocks(source: Source, out: Path, *, block_bytes: int) -> int:
    """Write the version's rows as page blocks into the new folder `out` (blocks of about
    `block_bytes`, and never under 1,024 rows, so that a page of 1,000 spans at most two); return the
    rows written. Runs in a worker: it streams the version, holding one batch at a time."""
    out.mkdir()
    try:
        scan = pl.scan_parquet(source.path)
        schema = scan.collect_schema()
        sample = scan.head(1_000).collect()
        row_bytes = max(1.0, sample.estimated_size() / max(1, sample.height))
        block_rows = max(1_024, min(1 << 20, int(block_bytes / row_bytes)))
        starts: list[int] = []
        rows = 0
        pending: list[pl.DataFrame] = []
        held = 0

        def flush(frame: pl.DataFrame) -> None:
            starts.append(rows)
            frame.write_ipc_stream(out / block_name(len(starts) - 1), compression="uncompressed")

        for batch in scan.collect_batches(chunk_size=block_rows):
            pending.append(batch)
            held += batch.height
            while held >= block_rows:
                whole = pl.concat(pending, how="vertical")
                flush(whole.head(block_rows))
                rows += block_rows
                rest = whole.slice(block_rows)
                pending, held = [rest], rest.height
        if held or not starts:  # the last rows, or an empty version's schema
            flush(pl.concat(pending, how="vertical") if pending else sample.clear())
            rows += held
        check = pl.read_ipc_stream(out / block_name(0))
        if check.schema != schema:  # a type Arrow does not keep as Polars had it: no blocks for this one
            raise ValueError(f"page blocks would change the schema: {check.schema} != {schema}")
        write_manifest(out, starts, rows, row_bytes)
        return rows
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
