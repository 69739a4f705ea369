"""Data checks and schema drift: the rules a dataset keeps (setChecks), their results on its latest
version, and what is said when a new version breaks one (CHECK_FAILED) or changes the columns
(SCHEMA_CHANGED), to subscribers and to the webhook.

`after_commit` runs in the process that committed a version, right after the commit (so with
several server processes, once per version); it never fails the commit: a check run that cannot
finish is recorded as such (passed null) and logged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import engine
from datagraph.errors import BadInput, DatagraphError, NotFound
from engine import Shape
from resolvers.context import FRAMES, Context, Listing
from storage import CheckStore, DatasetRecord

__all__ = ["CheckView", "after_commit", "forget", "list_checks", "set_checks"]

log = logging.getLogger("datagraph.checks")


@dataclass(frozen=True, slots=True)
class CheckView:
    """A rule of a dataset with the result of its latest run (None before one finished)."""

    name: str
    rule: dict[str, Any]
    passed: bool | None
    message: str | None
    version: int | None


def _store(ctx: Context) -> CheckStore:
    return CheckStore(ctx.resources.metadata.engine)


def list_checks(ctx: Context, record: DatasetRecord, listing: Listing | None = None) -> list[CheckView]:
    """The dataset's rules, in the order set, each with its latest result (read for the whole of its
    `listing` page at once, when it was listed)."""
    if ctx.reads is not None:  # a new run's results change this answer (the run touches the dataset)
        ctx.reads.dataset(record.id)
    store = _store(ctx)
    stored = listing.one("checks", store.get_many, record.id) if listing is not None else store.get(record.id)
    if stored is None:
        return []
    views = []
    for rule in stored.rules:
        name = engine.check_name(rule)
        found = stored.results.get(name)
        if found is None:
            views.append(CheckView(name, rule, None, None, None))
        else:
            views.append(CheckView(name, rule, found.get("passed"), found.get("message"), stored.version))
    return views


async def set_checks(ctx: Context, dataset_id: str, checks: list[dict[str, Any]]) -> DatasetRecord:
    """Replace the dataset's rules with `checks` (none: remove them), checked against its current
    columns, and run them on its current version at once."""
    res = ctx.resources
    record = res.metadata.get_dataset(dataset_id)
    if record is None or record.status != "ready":
        raise NotFound(f'There is no dataset "{dataset_id[:80]}".')
    if record.origin.get("mode") == "LINK" and checks:
        raise BadInput(f'The dataset "{record.id}" is a linked database table; it has no versions to check.')
    columns = {c.name: c.dtype for c in record.columns}
    s = ctx.settings
    rules = engine.checked_rules(checks, columns, max_rules=s.checks_max_rules, max_values=s.checks_max_values)
    _store(ctx).set_rules(record.id, rules)
    if rules:
        await _run(ctx, record, rules, before=_shape_before(ctx, record))
    await res.events.touch(record.id)  # answers that showed the old checks are stale
    return record


def forget(ctx: Context, dataset_id: str) -> None:
    """Remove a deleted dataset's rules and results."""
    _store(ctx).delete(dataset_id)


async def after_commit(ctx: Context, record: DatasetRecord) -> None:
    """What a new version of `record` (its current one) is checked for: columns changed since the
    version before (SCHEMA_CHANGED) and the dataset's rules (CHECK_FAILED when one fails)."""
    try:
        before = _shape_before(ctx, record)
        if before is not None:
            await _drift(ctx, record, before)
        stored = _store(ctx).get(record.id)
        if stored is not None and stored.rules:
            results = await _run(ctx, record, stored.rules, before=before)
            named = [(engine.check_name(rule), rule) for rule in stored.rules]
            failed = [
                {"name": name, "rule": rule, **results[name], "version": record.version}
                for name, rule in named
                if results[name]["passed"] is False
            ]
            if failed:
                await _notify(ctx, "CHECK_FAILED", record, {"failed": failed})
            await ctx.resources.events.touch(record.id)
    except Exception:  # the version is committed and announced already; never undo or fail that
        log.exception("checking version %d of dataset %s failed", record.version, record.id)


def _shape(rows: int, columns: Any) -> Shape:
    return Shape(rows, {c.name: c.dtype for c in columns})


def _shape_before(ctx: Context, record: DatasetRecord) -> Shape | None:
    if record.version <= 1:
        return None
    found = ctx.resources.metadata.get_version(record.id, number=record.version - 1)
    return _shape(found.row_count, found.columns) if found is not None else None


async def _run(
    ctx: Context, record: DatasetRecord, rules: list[dict[str, Any]], *, before: Shape | None
) -> dict[str, dict[str, Any]]:
    """Every rule's result on the record's version (row rules in one worker job), kept with it;
    `before`: the shape of the version before, None when there is none."""
    res = ctx.resources
    now = _shape(record.row_count, record.columns)
    results = engine.compare_shapes(rules, now, before)
    results.update(engine.inapplicable(rules, now.columns))  # a rule on a column gone or retyped fails
    readers = [
        rule for rule in rules if next(iter(rule)) in engine.ROW_RULES and engine.check_name(rule) not in results
    ]
    try:
        if readers:
            path = res.files.version_path(record.id, record.version)
            results.update(await res.executor.run(engine.evaluate, path, readers, time.time()))
        outcome = "passed" if all(r["passed"] for r in results.values()) else "failed"
    except Exception as exc:  # the version stays; its checks say they could not run, and why
        outcome = "error"
        why = exc.message if isinstance(exc, DatagraphError) else "an internal error (logged)"
        message = f"the checks could not run: {why}"
        results = {engine.check_name(rule): {"passed": None, "message": message} for rule in rules}
        log.warning("the checks of dataset %s v%d could not run", record.id, record.version, exc_info=True)
    res.metrics.check_runs.labels(outcome=outcome).inc()
    _store(ctx).set_results(record.id, rules=rules, version=record.version, results=results)
    return results


async def _drift(ctx: Context, record: DatasetRecord, before: Shape) -> None:
    changes = engine.schema_changes(before.columns, _shape(record.row_count, record.columns).columns)
    if not any(changes.values()):
        return
    gone = {c["name"] for c in changes["removed"]} | {c["name"] for c in changes["retyped"]}
    frames = await asyncio.to_thread(_frames_using, ctx, record.id, gone) if gone else []  # reads every frame
    await _notify(ctx, "SCHEMA_CHANGED", record, {**changes, "frames": frames})


def _frames_using(ctx: Context, dataset_id: str, columns: set[str]) -> list[dict[str, Any]]:
    """The saved frames made from `dataset_id` whose steps (or SQL) name any of `columns`."""
    found = []
    for frame in ctx.resources.metadata.list_datasets(source_id=FRAMES):
        origin = frame.origin
        if origin.get("from") != dataset_id and dataset_id not in (origin.get("reads") or []):
            continue
        named = _strings(origin.get("steps"))
        sql = str(origin.get("sql") or "")
        used = sorted(c for c in columns if c in named or (sql and _in_sql(c, sql)))
        if used:
            found.append({"id": frame.id, "name": frame.name, "columns": used})
    return found


def _in_sql(column: str, sql: str) -> bool:
    """Whether `sql` names `column`: as a bare word, or double-quoted."""
    bare = rf'(?<![\w"]){re.escape(column)}(?![\w"])'
    return re.search(f'{bare}|"{re.escape(column)}"', sql) is not None


def _strings(value: Any) -> set[str]:
    """Every string in a step list's plain data (column names among them), keys included."""
    seen: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            seen.add(item)
        elif isinstance(item, dict):
            seen.update(k for k in item if isinstance(k, str))
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return seen


async def _notify(ctx: Context, kind: str, record: DatasetRecord, details: dict[str, Any]) -> None:
    """Tell subscribers (here and in other processes) and the webhook (from this process only)."""
    res = ctx.resources
    event = await res.events.publish(kind, record.id, record.version, record.row_count, details=details)
    if res.webhook is not None:
        at = dt.datetime.fromtimestamp(event.at, dt.UTC).isoformat()
        res.webhook.send(
            {"event": kind, "dataset": record.id, "name": record.name, "version": record.version, "details": details,
             "at": at}
        )  # fmt: skip
