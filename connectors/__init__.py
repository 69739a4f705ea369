"""Where data comes from: uploaded files, databases (`sources.yaml`, their status) and API plugins
(loader, registry, the guarded HTTP client).

Layer: below `resolvers`, above `engine` (server -> gql -> resolvers -> connectors -> engine -> storage -> datagraph).
"""

from connectors._files import FORMATS, NA_TOKENS, IngestLimits, IngestResult, ingest, sniff

__all__ = ["FORMATS", "NA_TOKENS", "IngestLimits", "IngestResult", "ingest", "sniff"]
