"""Schema extensions: mask unexpected errors (only those), with an error id that is also logged."""

from __future__ import annotations

import logging
import uuid

from graphql.error import GraphQLError
from strawberry.extensions import MaskErrors

from datagraph.errors import DatagraphError

__all__ = ["MaskUnexpectedErrors"]

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
        log.error("unexpected error at %s (error id %s)", error.path, error_id, exc_info=error.original_error)
        return GraphQLError(
            message=f"Something went wrong on the server (error id {error_id}); the error is logged.",
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            original_error=None,
            extensions={"code": "INTERNAL", "errorId": error_id},
        )
