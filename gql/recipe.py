"""Reading a recipe's JSON (`runRecipe(recipe:)`): its steps are checked and converted exactly as
the `Step` input of `pipeline(steps:)` is (GraphQL's own input coercion, then Strawberry's), so a
wrong step is a BAD_INPUT naming its index and field, in the words GraphQL uses for a variable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import strawberry
from graphql import GraphQLError, GraphQLInputObjectType, GraphQLInputType, GraphQLList, GraphQLNonNull
from graphql.utilities import coerce_input_value, validate_input_value
from strawberry.types.arguments import convert_argument

import engine
from datagraph.errors import BadInput
from gql.frames import StepInput, count_steps
from resolvers.context import Context
from resolvers.recipe import RecipeSource

__all__ = ["ReadRecipe", "read_recipe"]

_KEYS = ("steps", "sources", "polars", "sql", "query")  # polars and sql are what recipe answers; not read
_STEP_FIELDS = (
    "filter", "select", "sort", "slice", "groupBy", "join", "clean",
    "window", "resample", "joinAsof", "pivot", "unpivot",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ReadRecipe:
    steps: list[StepInput]
    sources: list[RecipeSource]
    query: str | None


def _short(value: Any, n: int = 120) -> str:
    text = str(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _where(index: int, path: list[str | int]) -> str:
    return f"recipe.steps[{index}]" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def read_recipe(info: strawberry.Info[Context, None], value: Any) -> ReadRecipe:
    """The recipe's steps (as `Step` inputs), sources and query; BAD_INPUT naming what is wrong."""
    if not isinstance(value, dict):
        raise BadInput("runRecipe: recipe must be an object {steps, sources}, as the recipe field answers it.")
    limit = info.context.settings.max_input_values
    step_type = info.schema._schema.get_type("Step")
    assert step_type is not None
    steps: GraphQLInputType = GraphQLList(GraphQLNonNull(step_type))
    listed = value.get("steps")
    if isinstance(listed, list) and (refused := engine.too_many_steps(len(listed), info.context.settings.max_steps)):
        raise BadInput(refused)  # before counting, as for pipeline(steps:): 6,000 steps are too many steps
    if _holds_more_than(value, steps, limit):
        raise BadInput(
            f"runRecipe: the recipe holds more than {limit:,} values (setting max_input_values, as for the"
            " variables of pipeline(steps:)); send less at a time."
        )
    unknown = [k for k in value if k not in _KEYS]
    if unknown:
        raise BadInput(f'runRecipe: recipe has an unknown key "{_short(unknown[0], 60)}"; it takes steps and sources.')
    query = value.get("query")
    if query is not None and not isinstance(query, str):
        raise BadInput("runRecipe: recipe.query must be the text of SQL over datasets.")
    return ReadRecipe(_steps(info, value.get("steps")), _sources(value.get("sources")), query)


def _sources(raw: Any) -> list[RecipeSource]:
    if not isinstance(raw, list):
        raise BadInput("runRecipe: recipe.sources must be a list of {dataset, version}.")
    sources = []
    for i, item in enumerate(raw):
        where = f"recipe.sources[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("dataset"), str):
            raise BadInput(f"runRecipe: {where} must be {{dataset, version}}, with the dataset's id as text.")
        extra = [k for k in item if k not in ("dataset", "version")]
        if extra:
            raise BadInput(
                f'runRecipe: {where} has an unknown key "{_short(extra[0], 60)}"; it takes dataset, version.'
            )
        version = item.get("version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise BadInput(f"runRecipe: {where}.version must be a version number (or left out for the current one).")
        sources.append(RecipeSource(item["dataset"], version))
    return sources


def _holds_more_than(value: Any, steps: GraphQLInputType, limit: int) -> bool:
    """Whether the recipe holds more than `limit` values, counted as `gql.extensions.BoundVariables`
    counts the variables of pipeline(steps:): its steps by their GraphQL types (a JSON value such as
    a filter's value counts once), everything else node by node. A JSON variable counts once there,
    so without this a recipe's steps were coerced on the event loop however many values they held
    (6,000 conditions or sources in a 200 KiB body). Stops at the limit."""
    stack: list[tuple[Any, Any]] = [(value, None)]  # (value, its GraphQL input type; None: plain JSON)
    count = 0
    while stack:
        item, kind = stack.pop()
        count += 1
        if count > limit:
            return True
        while isinstance(kind, GraphQLNonNull):
            kind = kind.of_type
        if kind is None and isinstance(item, dict):
            stack.extend((v, steps if k == "steps" and item is value else None) for k, v in item.items())
        elif (kind is None or isinstance(kind, GraphQLList)) and isinstance(item, list):
            stack.extend((v, kind.of_type if kind is not None else None) for v in item)
        elif isinstance(kind, GraphQLInputObjectType) and isinstance(item, dict):
            stack.extend((v, kind.fields[k].type) for k, v in item.items() if k in kind.fields)
    return False


def _steps(info: strawberry.Info[Context, None], raw: Any) -> list[StepInput]:
    if not isinstance(raw, list):
        raise BadInput("runRecipe: recipe.steps must be a list of steps, as pipeline(steps:) takes them.")
    for i, step in enumerate(raw):  # @oneOf, checked first: the size below counts by each step's one field
        if not isinstance(step, dict) or len(step) != 1 or next(iter(step)) not in _STEP_FIELDS:
            raise BadInput(f"runRecipe: recipe.steps[{i}] must set exactly one of {', '.join(_STEP_FIELDS)}.")
    size = sum(
        max(1, len(s[field])) if field in ("clean", "window") and isinstance(s[field], list) else 1
        for s in raw
        for field in s
    )  # as count_steps counts: a clean step by its steps, a window by its specs
    refused = engine.too_many_steps(size, info.context.settings.max_steps)
    if refused is not None:
        raise BadInput(refused)
    schema = info.schema
    step_type = schema._schema.get_type("Step")
    assert step_type is not None
    required: GraphQLInputType = GraphQLNonNull(step_type)  # type: ignore[arg-type]  # Step is an input type
    steps: list[StepInput] = []
    for i, step in enumerate(raw):
        errors: list[tuple[GraphQLError, list[str | int]]] = []

        def found(error: GraphQLError, path: Any, into: list[tuple[GraphQLError, list[str | int]]] = errors) -> None:
            into.append((error, list(path)))

        validate_input_value(step, required, found, hide_suggestions=True)
        if errors:
            error, path = errors[0]
            raise BadInput(f"runRecipe: {_where(i, path)}: {_short(error.message, 200)}")
        coerced = coerce_input_value(step, required)
        converted = convert_argument(coerced, StepInput, schema.schema_converter.scalar_registry, schema.config)
        assert isinstance(converted, StepInput)
        steps.append(converted)
    assert count_steps(steps) == size
    return steps
