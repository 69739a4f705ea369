"""Where datasets and their metadata live: the data directory (Parquet files, uploads, exports,
staging, with atomic commits), the metadata database (SQLAlchemy), the server processes sharing
them (heartbeats) and the sweep of what crashed work left behind.

Layer: the lowest above `datagraph`; it imports nothing else of the project
(server -> gql -> resolvers -> connectors -> engine -> storage -> datagraph).
"""

from storage._blocks import BlockIndex
from storage._checks import CheckStore, StoredChecks
from storage._documents import Documents, StoredDocument, document_hash
from storage._files import DataDir, storage_guard
from storage._metadata import MetadataStore
from storage._processes import Processes
from storage._sweep import Swept, sweep_leftovers
from storage._tables import VERSION_ORIGINS, ColumnInfo, DatasetRecord, ExportRecord, JobRecord, VersionRecord

__all__ = [
    "VERSION_ORIGINS",
    "BlockIndex",
    "CheckStore",
    "ColumnInfo",
    "DataDir",
    "DatasetRecord",
    "Documents",
    "ExportRecord",
    "JobRecord",
    "MetadataStore",
    "Processes",
    "StoredChecks",
    "StoredDocument",
    "Swept",
    "VersionRecord",
    "document_hash",
    "storage_guard",
    "sweep_leftovers",
]
