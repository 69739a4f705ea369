"""Where datasets and their metadata live: the data directory and the metadata database."""

from storage._files import DataDir, storage_guard
from storage._metadata import DatasetRecord, ExportRecord, JobRecord, MetadataStore

__all__ = ["DataDir", "DatasetRecord", "ExportRecord", "JobRecord", "MetadataStore", "storage_guard"]
