"""datagraph: a personal data-analysis server behind one GraphQL API.

This package is the ground floor: the product's vocabulary (errors, settings, JSON helpers,
events, the metrics registry, locks, the plugin contract) that every layer may import and that
imports nothing of the project (server -> gql -> resolvers -> connectors -> engine -> storage ->
datagraph). Plugin authors write `from datagraph.plugin import ...`.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
