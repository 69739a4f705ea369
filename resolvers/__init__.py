"""Plain functions from arguments to answers; no GraphQL or HTTP here, so each is testable alone."""

from resolvers._outcome import ENGINE_VERSION, Outcome, Problem, answer, cache_key, internal_problem

__all__ = ["ENGINE_VERSION", "Outcome", "Problem", "answer", "cache_key", "internal_problem"]
