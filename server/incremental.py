"""`@defer` and `@stream` for clients that cannot read parts (setting `graphql_defer`).

A client that sends `Accept: multipart/mixed` gets the answer in parts, the deferred ones as they
finish (Strawberry writes them). Any other client would get bytes it cannot parse, so its answer is
put back together here into one ordinary JSON answer: every deferred fragment merged in at its
path, every streamed item appended to its list, the errors of every part kept. The directives then
cost nothing but the wait, which is what a client that did not ask for parts expects."""

from __future__ import annotations

from typing import Any

from graphql import GraphQLError
from graphql.execution import (
    ExperimentalIncrementalExecutionResults,
    IncrementalDeferResult,
    IncrementalStreamResult,
)
from strawberry.types import ExecutionResult

__all__ = ["accepts_parts", "whole"]


def accepts_parts(accept: str) -> bool:
    """Whether an Accept header takes the multipart answer of an incremental result."""
    return "multipart/mixed" in accept.lower()


async def whole(results: ExperimentalIncrementalExecutionResults) -> ExecutionResult:
    """Every part of an incremental result, merged into one result."""
    initial = results.initial_result
    data: dict[str, Any] | None = initial.data
    errors: list[GraphQLError] = list(initial.errors or ())
    paths = {p.id: list(p.path) for p in initial.pending}
    async for part in results.subsequent_results:
        paths.update((p.id, list(p.path)) for p in part.pending or ())
        for item in part.incremental or ():
            errors.extend(item.errors or ())
            if data is None:
                continue
            where = paths.get(item.id, []) + list(item.sub_path or ())
            if isinstance(item, IncrementalDeferResult):
                target = _at(data, where)
                if isinstance(target, dict) and item.data:
                    _merge(target, item.data)
            elif isinstance(item, IncrementalStreamResult):
                target = _at(data, where)
                if isinstance(target, list):
                    target.extend(item.items)
        for done in part.completed or ():
            errors.extend(done.errors or ())
    return ExecutionResult(data=data, errors=errors or None, extensions=initial.extensions)


def _at(data: Any, path: list[str | int]) -> Any:
    """The value at `path` in `data`, or None when a part of the path is missing or null."""
    for key in path:
        if isinstance(data, dict) and isinstance(key, str):
            data = data.get(key)
        elif isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    """Deep-merge a deferred fragment's fields into the object at its path."""
    for key, value in new.items():
        old = into.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            _merge(old, value)
        elif isinstance(old, list) and isinstance(value, list) and len(old) == len(value):
            for i, (was, now) in enumerate(zip(old, value, strict=True)):  # the same list, more fields
                if isinstance(was, dict) and isinstance(now, dict):
                    _merge(was, now)
                else:
                    old[i] = now
        else:
            into[key] = value
