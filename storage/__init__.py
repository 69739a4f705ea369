"""Where datasets and their metadata live: the data directory (Parquet files, uploads, exports,
staging, with atomic commits) and the metadata database (SQLAlchemy).

Layer: the lowest above `datagraph`; it imports nothing else of the project
(server -> gql -> resolvers -> connectors -> engine -> storage -> datagraph).
"""

from storage._files import DataDir, storage_guard
from storage._metadata import MetadataStore
from storage._tables import ColumnInfo, DatasetRecord, ExportRecord, JobRecord

__all__ = ["ColumnInfo", "DataDir", "DatasetRecord", "ExportRecord", "JobRecord", "MetadataStore", "storage_guard"]
