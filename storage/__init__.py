"""Where datasets and their metadata live: the data directory (Parquet files, uploads, exports,
staging, with atomic commits), the metadata database (SQLAlchemy), the server processes sharing
them (heartbeats, leases on background duties), refresh schedules and the sweep of what crashed work left behind.

Layer: the lowest above `datagraph`; it imports nothing else of the project
(server -> gql -> resolvers -> connectors -> engine -> storage -> datagraph).
"""

from storage._blocks import BlockIndex
from storage._checks import CheckStore, StoredChecks
from storage._documents import Documents, StoredDocument, document_hash
from storage._files import DataDir, storage_guard
from storage._leases import Lease, Leases
from storage._metadata import MetadataStore
from storage._processes import Processes
from storage._schedules import ScheduleRecord, Schedules, data_digest
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
    "Lease",
    "Leases",
    "MetadataStore",
    "Processes",
    "ScheduleRecord",
    "Schedules",
    "StoredChecks",
    "StoredDocument",
    "Swept",
    "VersionRecord",
    "data_digest",
    "document_hash",
    "storage_guard",
    "sweep_leftovers",
]
