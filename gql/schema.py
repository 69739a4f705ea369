"""The schema, composed from the domain modules' roots. Built when the app is made (`build_schema`);
`schema.graphql` is generated from it by `datagraph schema`.

Layer: below `server`, above `resolvers`; types are data and call resolvers."""

from __future__ import annotations

from collections.abc import Callable

import strawberry
from graphql.validation import ASTValidationRule, NoSchemaIntrospectionCustomRule
from strawberry.extensions import (
    AddValidationRules,
    MaxTokensLimiter,
    ParserCache,
    SchemaExtension,
    ValidationCache,
)
from strawberry.extensions.max_aliases import create_validator as alias_rule
from strawberry.extensions.query_depth_limiter import create_validator as depth_rule
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import merge_types

from datagraph.settings import Settings, production_mode
from gql.datasets import Dataset, DatasetMutation, DatasetQuery
from gql.extensions import BoundVariables, CountOperations, MaskUnexpectedErrors, field_repeats_rule, value_depth_rule
from gql.frames import View
from gql.freshness import FreshnessMutation
from gql.jobs import JobQuery
from gql.plugins import PluginMutation, PluginQuery
from gql.sources import SourceMutation, SourceQuery
from gql.subscriptions import Subscription
from gql.tracing import TraceOperations

__all__ = ["build_schema"]


def build_schema(settings: Settings | None = None) -> strawberry.Schema:
    """The schema with the limits from `settings` (defaults when None)."""
    s = settings or Settings()
    # The depth and alias rules are built once: QueryDepthLimiter and MaxAliasesLimiter build a new
    # rule class per request, and the rule classes are part of ValidationCache's key, so every
    # request missed the cache and was validated again (measured: 3.3 ms -> 1.2 ms of server CPU
    # per cached answer).
    rules: list[type[ASTValidationRule]] = [
        depth_rule(s.graphql_max_depth, None),
        alias_rule(s.graphql_max_aliases),
        field_repeats_rule(s.graphql_max_field_repeats),
        value_depth_rule(s.max_json_depth),
    ]
    production = production_mode(s)
    if production:  # the schema is not for strangers: no introspection, no "Did you mean ...?"
        rules.append(NoSchemaIntrospectionCustomRule)
    extensions: list[type[SchemaExtension] | Callable[[], SchemaExtension]] = [
        lambda: MaxTokensLimiter(max_token_count=s.graphql_max_tokens),
        lambda: AddValidationRules(rules),
        lambda: ParserCache(maxsize=256),
        lambda: ValidationCache(maxsize=256),
        lambda: BoundVariables(max_values=s.max_input_values, max_steps=s.max_steps),
        MaskUnexpectedErrors,
        CountOperations,
    ]
    if s.otel_endpoint:  # only then: a resolve hook costs every field of every query
        extensions.append(TraceOperations)
    query = merge_types("Query", (DatasetQuery, SourceQuery, PluginQuery, JobQuery))
    mutation = merge_types("Mutation", (DatasetMutation, SourceMutation, PluginMutation, FreshnessMutation))
    return strawberry.Schema(
        query=query,
        mutation=mutation,
        subscription=Subscription,
        types=[Dataset, View],
        extensions=extensions,
        config=StrawberryConfig(
            disable_field_suggestions=production, enable_experimental_incremental_execution=s.graphql_defer
        ),
    )
