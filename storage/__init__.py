"""Where datasets and their metadata live: the data directory and the metadata database."""

from storage._files import DataDir, storage_guard
from storage._metadata import DatasetRecord, ExportRecord, MetadataStore

__all__ = ["DataDir", "DatasetRecord", "ExportRecord", "MetadataStore", "storage_guard"]
