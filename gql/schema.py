"""The schema, composed from the domain modules. `schema.graphql` is generated from this."""

from __future__ import annotations

from collections.abc import Callable

import strawberry
from strawberry.extensions import (
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig

from datagraph.settings import Settings
from gql.datasets import Dataset, Mutation, Query
from gql.extensions import MaskUnexpectedErrors
from gql.frames import View

__all__ = ["build_schema", "schema"]


def build_schema(settings: Settings | None = None) -> strawberry.Schema:
    """The schema with the limits from `settings` (defaults when None)."""
    s = settings or Settings()
    extensions: list[type[SchemaExtension] | Callable[[], SchemaExtension]] = [
        lambda: MaxTokensLimiter(max_token_count=s.graphql_max_tokens),
        lambda: QueryDepthLimiter(max_depth=s.graphql_max_depth),
        lambda: MaxAliasesLimiter(max_alias_count=s.graphql_max_aliases),
        lambda: ParserCache(maxsize=256),
        lambda: ValidationCache(maxsize=256),
        MaskUnexpectedErrors,
    ]
    return strawberry.Schema(
        query=Query,
        mutation=Mutation,
        types=[Dataset, View],
        extensions=extensions,
        config=StrawberryConfig(),
    )


# For `strawberry export-schema gql.schema:schema` and the drift test; building it touches no resources.
schema = build_schema()
