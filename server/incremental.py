"""`@defer` and `@stream` for clients that cannot read parts (setting `graphql_defer`).

A client that sends `Accept: multipart/mixed` gets the answer in parts, the deferred ones as they
finish (Strawberry writes them). Any other client would get bytes it cannot parse, so its answer is
put back together here into one ordinary JSON answer: every deferred fragment merged in at its
path, every streamed item appended to its list, the errors of every part kept. The directives then
cost nothing but the wait, which is what a client that did not ask for parts expects.

`stream_problem` refuses a negative `@stream(initialCount:)` before the operation runs: graphql-core
checks it only while executing, with a ValueError that would be answered as an internal error."""

from __future__ import annotations

from typing import Any

from graphql import (
    GraphQLError,
    IntValueNode,
    NullValueNode,
    OperationDefinitionNode,
    ValueNode,
    VariableNode,
    parse,
)
from graphql.execution import (
    ExperimentalIncrementalExecutionResults,
    IncrementalDeferResult,
    IncrementalStreamResult,
)
from graphql.language import DirectiveNode, Visitor, visit
from strawberry.types import ExecutionResult

__all__ = ["accepts_parts", "stream_problem", "whole"]


def accepts_parts(accept: str) -> bool:
    """Whether an Accept header takes the multipart answer of an incremental result."""
    return "multipart/mixed" in accept.lower()


def stream_problem(query: object, variables: object, max_tokens: int) -> str | None:
    """Why a query's `@stream` cannot run (a negative `initialCount`, written or in a variable), or None.
    Parsed only when the query names `@stream` at all; what does not parse, validation answers."""
    if not isinstance(query, str) or "@stream" not in query:
        return None
    try:
        document = parse(query, no_location=True, max_tokens=max_tokens)
    except (GraphQLError, RecursionError):
        return None
    defaults = {
        definition.variable.name.value: _literal(definition.default_value)
        for operation in document.definitions
        if isinstance(operation, OperationDefinitionNode)
        for definition in operation.variable_definitions or ()
        if definition.default_value is not None
    }
    finder = _InitialCounts(variables if isinstance(variables, dict) else {}, defaults)
    visit(document, finder)
    return finder.problem


class _InitialCounts(Visitor):
    def __init__(self, variables: dict[str, Any], defaults: dict[str, Any]) -> None:
        super().__init__()
        self.variables = variables
        self.defaults = defaults
        self.problem: str | None = None

    def enter_directive(self, node: DirectiveNode, *_args: Any) -> None:
        if node.name.value != "stream":
            return
        for argument in node.arguments or ():
            if argument.name.value != "initialCount":
                continue
            value: Any = _literal(argument.value)
            if isinstance(argument.value, VariableNode):
                name = argument.value.name.value
                value = self.variables[name] if name in self.variables else self.defaults.get(name, 0)
            if value is None or (isinstance(value, int) and value < 0):
                self.problem = "@stream's initialCount must be an integer of 0 or more."


def _literal(node: ValueNode | None) -> Any:
    """An Int or null literal's value (0 for anything else: validation answers other types)."""
    if isinstance(node, IntValueNode):
        return int(node.value)
    return None if isinstance(node, NullValueNode) else 0


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
