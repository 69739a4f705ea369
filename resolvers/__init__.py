"""Plain functions from arguments to answers; no GraphQL or HTTP here, so each is testable alone."""

from resolvers._outcome import (
    CACHE_MODES,
    ENGINE_VERSION,
    Options,
    Outcome,
    Problem,
    analysed,
    answer,
    cache_key,
    internal_problem,
)

__all__ = [
    "CACHE_MODES",
    "ENGINE_VERSION",
    "Options",
    "Outcome",
    "Problem",
    "analysed",
    "answer",
    "cache_key",
    "internal_problem",
]
