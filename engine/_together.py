"""Several results of one plan in one job: a frame's `count` and a page of its `rows`, asked for in
the same GraphQL request, are answered by one worker from one build of the plan, collected together
so that Polars reads the data once for both (`collect_all` shares the scan and the filter), instead
of two jobs on two workers each reading it.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from datagraph.errors import DatagraphError
from engine._columns import column_infos
from engine._ops import Page, collect, count, page, records_json
from engine._plan import Plan, build

__all__ = ["TOGETHER_OPS", "together"]

TOGETHER_OPS = ("count", "page")


def together(plan: Plan, *, requests: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, Any]]:
    """("ok", answer) or ("problem", error) for each request, in order: ("count", {}) answers
    `count(plan)`, ("page", {"limit": n, "offset": m}) answers `page(plan, limit=n, offset=m)`."""
    if len(requests) > 1:
        try:
            return [("ok", answer) for answer in _collected(plan, requests)]
        except DatagraphError:
            pass  # each on its own below, so that each says its own problem
    answers: list[tuple[str, Any]] = []
    for op, kwargs in requests:
        try:
            answers.append(("ok", count(plan) if op == "count" else page(plan, **kwargs)))
        except DatagraphError as exc:
            answers.append(("problem", exc))
    return answers


def _collected(plan: Plan, requests: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    frame, _ = build(plan)
    queries = [
        frame.select(pl.len()) if op == "count" else frame.slice(kwargs["offset"], kwargs["limit"] + 1)
        for op, kwargs in requests
    ]
    answers: list[Any] = []
    for (op, kwargs), found in zip(requests, collect(*queries), strict=True):
        if op == "count":
            answers.append(int(found.item()))
        else:
            rows = found.head(kwargs["limit"])
            answers.append(Page(records_json(rows), rows.height, column_infos(rows), found.height > kwargs["limit"]))
    return answers
