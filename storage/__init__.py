"""Where datasets and their metadata live: the data directory (Parquet files, uploads, exports,
staging, with atomic commits), the metadata database (SQLAlchemy), the server processes sharing
them (heartbeats, leases on background duties), refresh schedules and the sweep of what crashed work left behind.

Layer: the lowest above `datagraph`; it imports nothing else of the project
(server -> gql -> resolvers -> connectors -> engine -> storage -> datagraph).

The names below load their module when first used: a worker process needs `ColumnInfo`, the
data directory and the block index, and not SQLAlchemy (about a third of a worker's start).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storage._blocks import BlockIndex
    from storage._checks import CheckStore, StoredChecks
    from storage._columninfo import ColumnInfo
    from storage._documents import Documents, StoredDocument, document_hash
    from storage._files import DataDir, storage_guard
    from storage._leases import Lease, Leases
    from storage._metadata import MetadataStore
    from storage._processes import Processes
    from storage._schedules import ScheduleRecord, Schedules, data_digest
    from storage._sweep import Swept, sweep_leftovers
    from storage._tables import VERSION_ORIGINS, DatasetRecord, ExportRecord, JobRecord, VersionRecord

_HOMES = {
    "BlockIndex": "_blocks",
    "CheckStore": "_checks",
    "StoredChecks": "_checks",
    "ColumnInfo": "_columninfo",
    "Documents": "_documents",
    "StoredDocument": "_documents",
    "document_hash": "_documents",
    "DataDir": "_files",
    "storage_guard": "_files",
    "Lease": "_leases",
    "Leases": "_leases",
    "MetadataStore": "_metadata",
    "Processes": "_processes",
    "ScheduleRecord": "_schedules",
    "Schedules": "_schedules",
    "data_digest": "_schedules",
    "Swept": "_sweep",
    "sweep_leftovers": "_sweep",
    "VERSION_ORIGINS": "_tables",
    "DatasetRecord": "_tables",
    "ExportRecord": "_tables",
    "JobRecord": "_tables",
    "VersionRecord": "_tables",
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'storage' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"storage.{home}"), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
