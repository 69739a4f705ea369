"""Where datasets and their metadata live: the data directory and the metadata database."""

from storage._columns import column_infos, dtype_name
from storage._files import DataDir, storage_guard
from storage._metadata import ColumnInfo, DatasetRecord, ExportRecord, MetadataStore

__all__ = [
    "ColumnInfo",
    "DataDir",
    "DatasetRecord",
    "ExportRecord",
    "MetadataStore",
    "column_infos",
    "dtype_name",
    "storage_guard",
]
