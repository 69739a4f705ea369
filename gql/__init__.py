"""The GraphQL schema's types: thin, one module per domain, each calling resolvers.

Layer: below `server`, above `resolvers` (server -> gql -> resolvers -> connectors -> engine -> storage -> datagraph).
"""

__all__: list[str] = []
