"""Plain functions from arguments to answers; no GraphQL or HTTP here, so each is testable alone.
The only home of `Context` (`resolvers.context`).

Layer: below `gql`, above `connectors` (server -> gql -> resolvers -> connectors -> engine -> storage -> datagraph).
"""

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
