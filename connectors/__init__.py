"""Where data comes from: uploaded files, databases (`sources.yaml`) and API plugins."""

from connectors._files import FORMATS, NA_TOKENS, IngestLimits, IngestResult, ingest, sniff

__all__ = ["FORMATS", "NA_TOKENS", "IngestLimits", "IngestResult", "ingest", "sniff"]
