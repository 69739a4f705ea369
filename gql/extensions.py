"""Schema extensions: mask unexpected errors (only those), with an error id that is also logged;
count operations by type and name; bound the variables' size before they are coerced."""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

from graphql import (
    FieldNode,
    GraphQLInputObjectType,
    GraphQLList,
    GraphQLNonNull,
    ListValueNode,
    ObjectValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationRule,
    type_from_ast,
)
from graphql.error import GraphQLError
from strawberry.extensions import MaskErrors, SchemaExtension

from datagraph.errors import DatagraphError
from datagraph.metrics import operation_label
from engine import too_many_steps

__all__ = ["BoundVariables", "CountOperations", "MaskUnexpectedErrors", "field_repeats_rule", "value_depth_rule"]

log = logging.getLogger("datagraph")


def _unexpected(error: GraphQLError) -> bool:
    """Validation, parse and limit errors carry no original error (or a GraphQLError): keep them."""
    original = error.original_error
    return original is not None and not isinstance(original, (GraphQLError, DatagraphError))


class MaskUnexpectedErrors(MaskErrors):
    """Replace an unexpected exception's text with a generic message and an error id."""

    def __init__(self) -> None:
        super().__init__(should_mask_error=_unexpected)

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        error_id = uuid.uuid4().hex[:12]
        log.error(
            "unexpected error at %s (error id %s)",
            error.path,
            error_id,
            exc_info=error.original_error,
            extra={"error_id": error_id},
        )
        return GraphQLError(
            message=f"Something went wrong on the server (error id {error_id}); the error is logged.",
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            original_error=None,
            extensions={"code": "INTERNAL", "errorId": error_id},
        )


class CountOperations(SchemaExtension):
    """datagraph_graphql_operations{type, name}: each operation that got past validation."""

    def on_execute(self) -> Iterator[None]:
        yield
        ec = self.execution_context
        resources = getattr(ec.context, "resources", None)
        if resources is not None and ec.operation_type is not None:
            kind = ec.operation_type.value
            resources.metrics.operations.labels(kind, operation_label(ec.operation_name)).inc()


def field_repeats_rule(limit: int) -> type[ValidationRule]:
    """A validation rule: no field selected more than `limit` times in one selection set (500 copies
    of `__typename` cost the server work for nothing; graphql-cop's field duplication check)."""

    class FieldRepeats(ValidationRule):
        def enter_selection_set(self, node: SelectionSetNode, *_args: Any) -> None:
            names = Counter((s.alias or s.name).value for s in node.selections if isinstance(s, FieldNode))
            for name, count in names.items():
                if count > limit:
                    self.report_error(
                        GraphQLError(
                            f"'{name}' is selected {count} times in one selection set; at most {limit}"
                            " (setting graphql_max_field_repeats).",
                            node,
                        )
                    )

    return FieldRepeats


def value_depth_rule(limit: int) -> type[ValidationRule]:
    """A validation rule: no list or object literal in the query nested deeper than `limit` (the
    same bound `max_json_depth` puts on variables), reported once per operation."""

    class ValueDepth(ValidationRule):
        depth = 0
        reported = False

        def enter_list_value(self, node: ListValueNode, *_args: Any) -> None:
            self._deeper(node)

        def leave_list_value(self, *_args: Any) -> None:
            self.depth -= 1

        def enter_object_value(self, node: ObjectValueNode, *_args: Any) -> None:
            self._deeper(node)

        def leave_object_value(self, *_args: Any) -> None:
            self.depth -= 1

        def _deeper(self, node: ListValueNode | ObjectValueNode) -> None:
            self.depth += 1
            if self.depth > limit and not self.reported:
                self.reported = True
                self.report_error(
                    GraphQLError(
                        f"A value nests lists or objects deeper than {limit} levels (setting max_json_depth).", node
                    )
                )

    return ValueDepth


class BoundVariables(SchemaExtension):
    """Refuse variables too big to coerce before they are coerced: turning input values into Python
    objects costs the event loop about 10 us each, so a 256 KiB body of 3,000 pipeline steps held
    every other client up for a third of a second. Counted by the operation's declared types (a
    JSON scalar is one value however big), stopping at the limit; a list of `Step`s longer than
    `max_steps` is refused with that setting's message. Put it after ValidationCache, which
    replaces the errors it finds."""

    def __init__(self, *, max_values: int, max_steps: int) -> None:
        super().__init__()
        self.max_values = max_values
        self.max_steps = max_steps

    def on_validate(self) -> Iterator[None]:
        ec = self.execution_context
        if ec.variables and ec.graphql_document is not None:
            message = self._too_big(ec.variables, ec.graphql_document.definitions, ec.schema._schema)
            if message is not None:
                error = GraphQLError(message, extensions={"code": "BAD_INPUT"})
                ec.pre_execution_errors = [*(ec.pre_execution_errors or []), error]
        yield

    def _too_big(self, variables: dict[str, Any], definitions: Any, schema: Any) -> str | None:
        stack: list[tuple[Any, Any]] = []  # (value, its declared GraphQL input type)
        for definition in definitions:
            if isinstance(definition, OperationDefinitionNode):
                for var in definition.variable_definitions or ():
                    declared = type_from_ast(schema, var.type)
                    if declared is not None and var.variable.name.value in variables:
                        stack.append((variables[var.variable.name.value], declared))
        count = 0
        while stack:
            value, kind = stack.pop()
            count += 1
            if count > self.max_values:
                return (
                    f"The variables hold more than {self.max_values:,} values (setting max_input_values);"
                    " send less at a time."
                )
            while isinstance(kind, GraphQLNonNull):
                kind = kind.of_type
            if isinstance(kind, GraphQLList) and isinstance(value, list):
                item = kind.of_type
                while isinstance(item, GraphQLNonNull):
                    item = item.of_type
                if getattr(item, "name", None) == "Step" and (refused := too_many_steps(len(value), self.max_steps)):
                    return refused
                stack.extend((v, kind.of_type) for v in value)
            elif isinstance(kind, GraphQLInputObjectType) and isinstance(value, dict):
                fields = kind.fields
                stack.extend((v, fields[k].type) for k, v in value.items() if k in fields)
        return None
