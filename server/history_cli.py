"""`datagraph versions` and `datagraph diff`: a dataset's history from the command line, read from the
metadata store and the data directory directly (no server). The diff is the engine's own
(`engine.diff`, what `Frame.diff` runs in a worker), here run in this process; its refusals are the
API's Problems, said in one line on stderr."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import engine
from datagraph.errors import DatagraphError
from engine import Plan, Source
from storage import DataDir, DatasetRecord, MetadataStore

__all__ = ["CommandError", "diff_versions", "find_dataset", "format_diff", "format_versions"]

LIMIT_MAX = 100_000  # changed rows `datagraph diff --limit` prints at most
CELL_MAX = 40  # characters of a value shown in a table cell


class CommandError(Exception):
    """What the command refuses, in the user's terms (the API's Problem message): printed alone on stderr."""


def find_dataset(store: MetadataStore, wanted: str) -> DatasetRecord:
    """The dataset whose id is `wanted`, else the one dataset called `wanted`."""
    record = store.get_dataset(wanted)
    if record is not None:
        return record
    named = [d for d in store.list_datasets(search=wanted) if d.name == wanted]
    if len(named) == 1:
        return named[0]
    if named:
        ids = ", ".join(d.id for d in named[:5]) + (", ..." if len(named) > 5 else "")
        raise CommandError(f'{len(named)} datasets are called "{_clip(wanted)}" ({ids}); name one by its id.')
    raise CommandError(f'There is no dataset "{_clip(wanted)}".')


def format_versions(store: MetadataStore, record: DatasetRecord) -> str:
    """The dataset's kept versions as a table, newest first, the current one marked."""
    rows = [
        [
            f"{v.number}{' *' if v.number == record.version else ''}",
            v.created_at.astimezone(dt.UTC).isoformat(sep=" ", timespec="seconds").replace("+00:00", "Z"),
            v.origin,
            f"{v.row_count:,}",
            f"{len(v.columns):,}",
            f"{v.bytes:,}",
        ]
        for v in store.list_versions(record.id)
    ]
    head = f'Versions of "{_printable(record.name)}" ({record.id}), newest first; * marks the current one.'
    if not rows:
        return f"{head}\n(no versions are recorded)"
    table = _table(["version", "created at", "origin", "rows", "columns", "bytes"], rows, right={0, 3, 4, 5})
    return f"{head}\n{table}"


def _version_plan(store: MetadataStore, files: DataDir, record: DatasetRecord, number: int) -> Plan:
    """The plan that reads version `number` of the dataset, as `resolvers.datasets.dataset_plan` builds it."""
    missing = CommandError(
        f'diff: dataset "{record.name}" has no version {number} (unknown or pruned); see its versions.'
    )
    if not 1 <= number <= record.version or store.get_version(record.id, number=number) is None:
        raise missing
    path = files.version_path(record.id, number)
    if not path.exists():
        raise missing  # its files are gone (pruned a moment ago)
    return Plan(Source(record.id, number, path, generation=record.created_at.isoformat()))


def diff_versions(
    store: MetadataStore, files: DataDir, record: DatasetRecord, before: int, after: int, *, key: list[str] | None,
    limit: int,
) -> tuple[dict[str, Any], bool]:  # fmt: skip
    """`engine.diff` of version `after` against version `before`: ({summary, rows}, truncated)."""
    if record.origin.get("mode") == "LINK":
        raise CommandError(f'The dataset "{record.id}" is a linked database table; it has no versions to compare.')
    if not 0 <= limit <= LIMIT_MAX:
        raise CommandError(f"diff: --limit takes a number from 0 to {LIMIT_MAX:,}.")
    plans = _version_plan(store, files, record, after), _version_plan(store, files, record, before)
    try:
        return engine.diff(*plans, key=key, limit=limit)
    except DatagraphError as exc:
        raise CommandError(exc.message) from None
    except FileNotFoundError:
        raise CommandError(
            f'diff: a version of dataset "{record.name}" was pruned while it was read; see its versions.'
        ) from None


def format_diff(data: dict[str, Any], *, before: int, after: int) -> str:
    """The summary, then the changed rows (those given; "... N more" for the rest)."""
    summary = data["summary"]
    lines = [
        f"Version {after} against version {before}:",
        f"  added      {summary['added']:,}",
        f"  removed    {summary['removed']:,}",
        f"  changed    {summary['changed']:,}",
        f"  unchanged  {summary['unchanged']:,}",
        f"  columns added    {', '.join(map(_cell, summary['columnsAdded'])) or '-'}",
        f"  columns removed  {', '.join(map(_cell, summary['columnsRemoved'])) or '-'}",
        "  type changes     "
        + (", ".join(f"{_cell(t['column'])} {t['from']} -> {t['to']}" for t in summary["typeChanges"]) or "-"),
    ]
    rows: list[dict[str, Any]] = data["rows"]
    total = summary["added"] + summary["removed"] + summary["changed"]
    if rows:
        columns = list(rows[0])
        lines += ["", _table([_cell(c) for c in columns], [[_cell(r.get(c)) for c in columns] for r in rows])]
    if total > len(rows):
        lines.append(f"... {total - len(rows):,} more")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    text = "null" if value is None else str(value)
    return _clip(_printable(" ".join(text.split())), CELL_MAX)


def _printable(text: str) -> str:
    """`text` with control and format characters (a terminal's escape sequences, bidi overrides)
    shown as U+FFFD: a dataset's values must not drive the terminal they are printed on."""
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in text)


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], *, right: set[int] | None = None) -> str:
    """Plain text columns, two spaces apart; the columns in `right` (default: those holding only
    numbers) aligned right."""
    if right is None:
        right = {i for i in range(len(head)) if rows and all(_numeric(r[i]) for r in rows)}
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _numeric(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return text == "null"
    return True
