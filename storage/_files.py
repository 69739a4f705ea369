"""The data directory: staged uploads, kept raw files, dataset Parquet files and exports.

    <data>/staging/<process>/    files being received or written, one folder per server process;
                       never read by queries; a dead process's folder is removed by a sweep
    <data>/uploads/    raw uploads, kept under generated names (<uuid>.<ext>)
    <data>/datasets/<id>/v<n>.parquet    one file per dataset version
    <data>/exports/    export files, named by their unguessable token

Commit is write-to-staging, fsync, `os.replace` into place, fsync the directory; only then does
the caller mark the metadata row ready, so a crash leaves no half dataset visible.
"""

from __future__ import annotations

import errno
import glob
import math
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Collection, Mapping
from pathlib import Path

from datagraph.errors import StorageFull

__all__ = ["DataDir", "storage_guard"]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


_FULL = (errno.ENOSPC, errno.EDQUOT)


def _says_disk_full(exc: BaseException) -> bool:
    """Whether `exc`, or the error it wraps, is a full disk: an OSError, SQLite's SQLITE_FULL (which
    SQLAlchemy wraps), or the I/O error of a Rust library such as Polars, known only by its text."""
    for err in (exc, exc.__cause__):
        if isinstance(err, OSError) and err.errno in _FULL:
            return True
        if isinstance(err, sqlite3.Error) and err.sqlite_errorcode == sqlite3.SQLITE_FULL:
            return True
    return any(f"(os error {code})" in str(exc) for code in _FULL)


class storage_guard:  # noqa: N801 - used as a context manager, reads like a statement
    """Turn a full disk into a clear `StorageFull` problem."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None and not isinstance(exc, StorageFull) and _says_disk_full(exc):
            raise StorageFull(
                "The server's disk is full; the data was not saved. Free some space and try again."
            ) from exc


class DataDir:
    """Paths and atomic moves inside the data directory. `owner` is the server process's id: its
    staging area is `staging/<owner>/` (a fresh id when not given)."""

    def __init__(self, root: Path, owner: str | None = None) -> None:
        self.root = root.resolve()
        self.owner = owner or uuid.uuid4().hex
        self.staging = self.root / "staging"
        self.staging_area = self.staging / self.owner  # made when first used, removed on a clean shutdown
        self.uploads = self.root / "uploads"
        self.datasets = self.root / "datasets"
        self.exports = self.root / "exports"
        for d in (self.staging, self.uploads, self.datasets, self.exports):
            d.mkdir(parents=True, exist_ok=True)

    def staging_path(self, suffix: str = "") -> Path:
        """A new file name in this process's staging area."""
        self.staging_area.mkdir(parents=True, exist_ok=True)  # again, should a sweep have taken it
        return self.staging_area / f"{uuid.uuid4().hex}{suffix}"

    def discard_staged(self, staged: Path) -> None:
        """Remove a staging file and whatever was written beside it under its name (a worker's
        `.tmp`, parts and progress files), which a worker killed mid-write leaves behind."""
        staged.unlink(missing_ok=True)
        for leftover in staged.parent.glob(glob.escape(staged.stem) + ".*"):
            leftover.unlink(missing_ok=True)

    def remove_staging_area(self, owner: str | None = None) -> None:
        """Remove a process's staging area (this one's by default) with everything in it."""
        owner = owner or self.owner
        if owner and "/" not in owner and owner not in (".", ".."):
            shutil.rmtree(self.staging / owner, ignore_errors=True)

    def sweep_staging(self, live: Collection[str], *, before: float = math.inf) -> None:
        """Remove what no live process is staging: the staging areas of processes not in `live`
        (this one is always live) and loose files (from versions before staging areas), each only
        when last changed before `before` (a timestamp). Dead processes' areas are removed by name,
        whatever their age (`remove_staging_area`)."""
        for entry in self.staging.iterdir():
            if entry.name == self.owner or entry.name in live:
                continue
            try:
                if entry.stat().st_mtime >= before:
                    continue
            except FileNotFoundError:
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def dataset_file(self, dataset_id: str, version: int) -> Path:
        return self.datasets / dataset_id / f"v{version}.parquet"

    def export_file(self, token: str, ext: str) -> Path:
        return self.exports / f"{token}.{ext}"

    def commit(self, staged: Path, final: Path) -> Path:
        """Durably move a fully written staging file to its final place."""
        final.parent.mkdir(parents=True, exist_ok=True)
        with storage_guard():
            _fsync_file(staged)
            os.replace(staged, final)
            _fsync_dir(final.parent)
        return final

    def commit_new(self, staged: Path, final: Path) -> bool:
        """`commit`, but only if `final` does not exist yet (a hard link cannot replace a file);
        False, leaving `staged` where it is, when another writer committed that name first."""
        final.parent.mkdir(parents=True, exist_ok=True)
        with storage_guard():
            _fsync_file(staged)
            try:
                os.link(staged, final)
            except FileExistsError:
                return False
            staged.unlink()
            _fsync_dir(final.parent)
        return True

    def sweep_versions(self, current: dict[str, int], *, grace_s: float) -> int:
        """Remove dataset versions older than the one before the current, once they have not been
        current for `grace_s` (queries that started on them have long finished); return how many."""
        removed = 0
        cutoff = time.time() - grace_s
        for dataset_id, version in current.items():
            folder = self.datasets / dataset_id
            if not folder.is_dir():
                continue
            for entry in folder.glob("v*.parquet"):
                number = entry.stem[1:]
                if not number.isdigit() or int(number) >= version - 1:
                    continue
                successor = folder / f"v{int(number) + 1}.parquet"  # committed when this one stopped being current
                since = (successor if successor.exists() else entry).stat().st_mtime
                if since < cutoff:
                    entry.unlink(missing_ok=True)
                    removed += 1
        return removed

    def keep_upload(self, staged: Path, ext: str) -> str:
        """Move a raw upload under `uploads/` with a generated name; return that name."""
        name = f"{uuid.uuid4().hex}.{ext}"
        os.replace(staged, self.uploads / name)
        return name

    def remove_dataset(self, dataset_id: str) -> None:
        shutil.rmtree(self.datasets / dataset_id, ignore_errors=True)

    def remove_upload(self, stored_as: str) -> None:
        """Remove a kept raw upload by the generated name `keep_upload` gave it."""
        if stored_as and "/" not in stored_as and stored_as not in (".", ".."):
            (self.uploads / stored_as).unlink(missing_ok=True)

    def sweep(
        self,
        ready_ids: Collection[str] | Mapping[str, int],
        export_tokens: set[str],
        kept_uploads: Collection[str] | None = None,
        *,
        before: float = math.inf,
    ) -> None:
        """Remove what a crash may have left: dataset folders or export files that no metadata row
        names. When `ready_ids` maps each dataset to its current version (a pending one to 0), also
        the versions past it (linked, then never recorded); given `kept_uploads` (the names rows
        keep), also the raw uploads no row names (kept, then never recorded). Only what was last
        changed before `before` (a timestamp) goes: a live process may be about to write the row
        that names a newer one."""

        def old(entry: Path) -> bool:
            try:
                return entry.stat().st_mtime < before
            except FileNotFoundError:
                return False

        for entry in self.exports.iterdir():
            unnamed = entry.name.split(".", 1)[0] not in export_tokens or entry.name.endswith(".tmp")
            if unnamed and old(entry):
                entry.unlink(missing_ok=True)
        for entry in self.datasets.iterdir():
            if entry.name not in ready_ids:
                if old(entry):
                    shutil.rmtree(entry, ignore_errors=True)
            elif isinstance(ready_ids, Mapping):
                for version in entry.glob("v*.parquet"):
                    number = version.stem[1:]
                    if number.isdigit() and int(number) > ready_ids[entry.name] and old(version):
                        version.unlink(missing_ok=True)
        if kept_uploads is not None:
            for entry in self.uploads.iterdir():
                if entry.name not in kept_uploads and old(entry):
                    entry.unlink(missing_ok=True)
