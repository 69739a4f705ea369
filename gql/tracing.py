"""Tracing of GraphQL work (while `otel_endpoint` is set): a span for each operation and one for each
field that answers with a `Result` or a `...Payload` (describe, rows, uploadDataset, ...); scalar
fields get none. Spans carry the operation's type and name and the field's name, never the query
text or argument values."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

from graphql import GraphQLResolveInfo
from strawberry.extensions import SchemaExtension

from datagraph import tracing
from datagraph.metrics import operation_label

__all__ = ["TraceOperations"]

Info = GraphQLResolveInfo[Any]


def _traced_field(info: Info) -> bool:
    kind: Any = info.return_type
    while hasattr(kind, "of_type"):  # non-null and list wrappers
        kind = kind.of_type
    name = getattr(kind, "name", "")
    return name == "Result" or name.endswith("Payload")


class TraceOperations(SchemaExtension):
    """The `graphql.operation` span and the `graphql.field` spans of one operation."""

    def on_operation(self) -> Iterator[None]:
        with tracing.span("graphql.operation") as traced:
            yield
            ec = self.execution_context
            if ec.operation_type is not None:
                traced.set_attribute("graphql.operation.type", ec.operation_type.value)
            traced.set_attribute("graphql.operation.name", operation_label(ec.operation_name))

    def resolve(self, _next: Callable[..., Any], root: Any, info: Info, *args: Any, **kwargs: Any) -> Any:
        if not _traced_field(info):
            return _next(root, info, *args, **kwargs)
        return self._traced(_next, root, info, args, kwargs)

    async def _traced(self, _next: Callable[..., Any], root: Any, info: Info, args: Any, kwargs: Any) -> Any:
        attributes: dict[str, tracing.AttributeValue] = {
            "graphql.field.name": info.field_name,
            "graphql.field.parent_type": info.parent_type.name,
        }
        dataset = getattr(getattr(root, "record", None), "id", None)  # a Dataset's fields
        if isinstance(dataset, str):
            attributes["datagraph.dataset.id"] = dataset
        with tracing.span("graphql.field", attributes) as traced:
            result = _next(root, info, *args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            ok = getattr(result, "ok", None)
            if isinstance(ok, bool):
                traced.set_attribute("datagraph.result.ok", ok)
            return result
