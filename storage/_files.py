"""The data directory: staged uploads, kept raw files, dataset Parquet files and exports.

    <data>/staging/<process>/    files being received or written, one folder per server process;
                       never read by queries; a dead process's folder is removed by a sweep
    <data>/uploads/    raw uploads, kept under generated names (<uuid>.<ext>)
    <data>/datasets/<id>/v<n>.parquet    a dataset version as one file, or
    <data>/datasets/<id>/v<n>/p<k>.parquet    a version as parts: the previous version's parts
                       (hard links, no copy) and the rows appended after them; compaction later
                       writes the same rows as v<n>.parquet, which readers then take instead
    <data>/datasets/<id>/v<n>.<tag>.blocks/    the version's rows as Arrow blocks for pages
                       (storage/_blocks.py), made when the version is first used; go with it
    <data>/exports/    export files, named by their unguessable token

Commit is write-to-staging, fsync, `os.replace` into place, fsync the directory; only then does
the caller mark the metadata row ready, so a crash leaves no half dataset visible. Every writer of a
dataset's next version first claims its number by making the folder `v<n>/` (one `mkdir`, which
only one writer of any server process sharing the folder wins).
"""

from __future__ import annotations

import contextlib
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
from storage._blocks import BlockIndex, blocks_folder_name, is_blocks_entry

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
_PART = "p{:06d}.parquet"


def _version_number(entry: Path) -> int | None:
    """The version an entry of a dataset folder holds (`v3.parquet`, `v3/`, `v3.<tag>.blocks/`), or None."""
    name = entry.name.split(".", 1)[0] if is_blocks_entry(entry.name) else entry.name
    name = name.removesuffix(".parquet") if name.endswith(".parquet") else name
    number = name[1:]
    return int(number) if name.startswith("v") and number.isdigit() else None


def _data(entries: list[Path]) -> list[Path]:
    """The entries that are a version's rows (its file, its parts), not its page blocks."""
    return [e for e in entries if not is_blocks_entry(e.name)]


def _link(source: Path, target: Path) -> None:
    """Hard-link `source` as `target`; a copy when the file has as many links as the filesystem allows
    (65,000 on ext4: restores and appends in a quick loop link one file into every version they make)."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno != errno.EMLINK:
            raise
        shutil.copyfile(source, target)
        _fsync_file(target)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


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
        # Indexes of committed page blocks (immutable once committed), most recently read last.
        self._block_indexes: dict[Path, BlockIndex] = {}

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
        """A version's one-file form (which may not exist: see `version_path`)."""
        return self.datasets / dataset_id / f"v{version}.parquet"

    def parts_folder(self, dataset_id: str, version: int) -> Path:
        """A version's parts form, and the folder whose creation claims the version number."""
        return self.datasets / dataset_id / f"v{version}"

    def version_path(self, dataset_id: str, version: int) -> Path:
        """What a query scans for a version: its one file when there is one (written whole, or
        compacted), else its parts folder (Polars reads the parts in name order)."""
        single = self.dataset_file(dataset_id, version)
        if single.exists():
            return single
        folder = self.parts_folder(dataset_id, version)  # an empty one is a claim no reader asks for
        return folder if folder.is_dir() else single

    def version_parts(self, dataset_id: str, version: int) -> list[Path]:
        """The files that make a version, in row order (one when it is a single file)."""
        path = self.version_path(dataset_id, version)
        return sorted(path.glob("p*.parquet")) if path.is_dir() else [path]

    def version_bytes(self, dataset_id: str, version: int) -> int:
        """The size on disk of a version's rows (its file, or its parts, linked ones counted): 0 when gone."""
        total = 0
        for part in self.version_parts(dataset_id, version):
            with contextlib.suppress(FileNotFoundError):
                total += part.stat().st_size
        return total

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

    def _claim(self, dataset_id: str, version: int) -> Path | None:
        """Make `v<version>/`, the claim on that number; None when another writer made it (or a
        one-file form of it exists, from before claims)."""
        folder = self.parts_folder(dataset_id, version)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with storage_guard():
            try:
                folder.mkdir()
            except FileExistsError:
                return None
        if self.dataset_file(dataset_id, version).exists():
            folder.rmdir()
            return None
        return folder

    def commit_version(self, staged: Path, dataset_id: str, version: int) -> bool:
        """Commit a whole new version written to `staged` as `v<version>.parquet`, if this writer
        wins the claim on the number; False (nothing changed) when another writer did."""
        claim = self._claim(dataset_id, version)
        if claim is None:
            return False
        try:
            # Its time is now, when it is put in place (not when it was staged): a file of a next version
            # that no row names long after that time was left by a writer that died before its row.
            os.utime(staged)
            committed = self.commit_new(staged, self.dataset_file(dataset_id, version))
        finally:
            with contextlib.suppress(OSError):
                claim.rmdir()  # the claim has served: the file is the version from now on
        return committed

    def commit_appended(self, staged: Path, dataset_id: str, version: int) -> int | None:
        """Make version `version` the parts of version `version - 1` (hard links: no data copied)
        followed by the rows written to `staged`, if this writer wins the claim on the number;
        return how many parts it has, or None (nothing changed) when another writer won."""
        before = self.version_parts(dataset_id, version - 1)
        claim = self._claim(dataset_id, version)
        if claim is None:
            return None
        try:
            with storage_guard():
                _fsync_file(staged)
                for i, part in enumerate(before):
                    _link(part, claim / _PART.format(i))
                os.link(staged, claim / _PART.format(len(before)))
                _fsync_dir(claim)
                _fsync_dir(claim.parent)
        except BaseException:
            shutil.rmtree(claim, ignore_errors=True)
            raise
        staged.unlink()
        return len(before) + 1

    def same_files(self, dataset_id: str, a: int, b: int) -> bool:
        """Whether versions `a` and `b` are the very same files (one restored from the other, links to
        the same rows); False when either is gone."""

        def identities(version: int) -> list[tuple[int, int]] | None:
            try:
                return [(s.st_dev, s.st_ino) for s in (p.stat() for p in self.version_parts(dataset_id, version))]
            except FileNotFoundError:
                return None

        first = identities(a)
        return first is not None and first == identities(b)

    def commit_restored(self, dataset_id: str, old: int, version: int) -> bool:
        """Make version `version` the same rows as version `old` (hard links to its file or parts: no
        data copied), if this writer wins the claim on the number; False (nothing changed) when another
        writer did. FileNotFoundError when `old` is gone (pruned meanwhile)."""
        source = self.version_path(dataset_id, old)
        parts = self.version_parts(dataset_id, old)
        if not source.exists() or not parts:
            raise FileNotFoundError(source)
        claim = self._claim(dataset_id, version)
        if claim is None:
            return False
        try:
            with storage_guard():
                if source.is_dir():
                    for i, part in enumerate(parts):
                        _link(part, claim / _PART.format(i))
                    _fsync_dir(claim)
                else:
                    _link(source, self.dataset_file(dataset_id, version))
                    # A link keeps the old file's modification time, but the sweep reads this version's
                    # time as the moment the one before stopped being current: make it now (the
                    # shared file only looks newer, which delays no more than its own grace).
                    os.utime(self.dataset_file(dataset_id, version))
                    claim.rmdir()  # the file is the version from now on
                _fsync_dir(claim.parent)
        except BaseException:
            self.remove_version(dataset_id, version)
            raise
        return True

    def commit_compacted(self, staged: Path, dataset_id: str, version: int) -> bool:
        """Give version `version` (kept as parts) its one-file form, the same rows in one file
        written to `staged`; False when another process did it first. The parts folder stays
        until `sweep_versions` finds it unused. False too when the version is gone meanwhile (the
        dataset deleted, or the version pruned): its folder is not made again."""
        if not self.parts_folder(dataset_id, version).is_dir():
            return False
        return self.commit_new(staged, self.dataset_file(dataset_id, version))

    def remove_version(self, dataset_id: str, version: int) -> None:
        """Remove both forms of a version (one never recorded, or past its keeping), and its page blocks."""
        self.dataset_file(dataset_id, version).unlink(missing_ok=True)
        shutil.rmtree(self.parts_folder(dataset_id, version), ignore_errors=True)
        for blocks in (self.datasets / dataset_id).glob(f"v{version}.*.blocks"):
            self.forget_blocks(blocks)
            shutil.rmtree(blocks, ignore_errors=True)

    def blocks_folder(self, dataset_id: str, version: int, generation: str) -> Path:
        """Where a version's page blocks live once made (see storage/_blocks.py)."""
        return self.datasets / dataset_id / blocks_folder_name(version, generation)

    def page_blocks(self, dataset_id: str, version: int, generation: str) -> BlockIndex | None:
        """The index of a version's page blocks, or None while it has none. Committed blocks never
        change, so an index read once is kept (the 256 most recently used) until this process removes its
        version; one another process removed is dropped by `forget_blocks` when a read of it fails."""
        folder = self.blocks_folder(dataset_id, version, generation)
        index = self._block_indexes.pop(folder, None) or BlockIndex.read(folder)
        if index is not None:
            self._block_indexes[folder] = index
            while len(self._block_indexes) > 256:
                del self._block_indexes[next(iter(self._block_indexes))]
        return index

    def forget_blocks(self, folder: Path) -> None:
        self._block_indexes.pop(folder, None)

    def commit_blocks(self, staged: Path, dataset_id: str, version: int, generation: str) -> bool:
        """Move a fully written blocks folder into place, whole; False (and `staged` removed) when the
        version is gone meanwhile or another process committed its blocks first."""
        final = self.blocks_folder(dataset_id, version, generation)
        try:
            with storage_guard():
                for entry in staged.iterdir():
                    _fsync_file(entry)
                _fsync_dir(staged)
                if not self.version_path(dataset_id, version).exists():
                    return False  # deleted or pruned: its folder is not made again
                try:
                    os.rename(staged, final)  # a directory: fails when the other process's is there
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    return False
                _fsync_dir(final.parent)
            if not self.version_path(dataset_id, version).exists():  # removed while it was renamed in
                shutil.rmtree(final, ignore_errors=True)
                return False
            return True
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def _versions(self, dataset_id: str) -> dict[int, list[Path]]:
        """The versions in a dataset's folder, each with its entries (a file, a parts folder, both)."""
        found: dict[int, list[Path]] = {}
        folder = self.datasets / dataset_id
        if folder.is_dir():
            for entry in folder.iterdir():
                number = _version_number(entry)
                if number is not None:
                    found.setdefault(number, []).append(entry)
        return found

    def sweep_versions(
        self,
        current: Mapping[str, int],
        *,
        keep: int = 2,
        grace_s: float,
        expired: Mapping[str, Collection[int]] | None = None,
    ) -> int:
        """Remove the versions of each dataset past the newest `keep`, and those `expired` names (too
        old to keep), the current one always kept, each once it has not been current for `grace_s`
        (queries that started on it have long finished), and the parts folders of versions compacted
        at least `grace_s` ago; return how many entries went."""
        removed = 0
        cutoff = time.time() - grace_s
        expired = expired or {}
        for dataset_id, version in current.items():
            found = self._versions(dataset_id)
            too_old = expired.get(dataset_id, ())
            for number, entries in sorted(found.items()):
                if number <= version - max(keep, 1) or (number < version and number in too_old):
                    # Committed when this one stopped being current: the next version's entries.
                    # (Page blocks are made when first used, later than their version: they tell nothing.)
                    times = [t for e in _data(found.get(number + 1, [])) if (t := _mtime(e)) is not None]
                    times = times or [t for e in _data(entries) if (t := _mtime(e)) is not None]
                    if times and max(times) < cutoff:
                        self.remove_version(dataset_id, number)
                        removed += len(entries)
                    continue
                single = self.dataset_file(dataset_id, number)
                parts = self.parts_folder(dataset_id, number)
                if number <= version and parts.is_dir() and (t := _mtime(single)) is not None and t < cutoff:
                    shutil.rmtree(parts, ignore_errors=True)  # compacted: readers take the file now
                    removed += 1
        return removed

    def keep_upload(self, staged: Path, ext: str) -> str:
        """Move a raw upload under `uploads/` with a generated name; return that name."""
        name = f"{uuid.uuid4().hex}.{ext}"
        os.replace(staged, self.uploads / name)
        return name

    def remove_dataset(self, dataset_id: str) -> None:
        folder = self.datasets / dataset_id
        for indexed in [f for f in self._block_indexes if f.parent == folder]:
            self.forget_blocks(indexed)
        shutil.rmtree(folder, ignore_errors=True)

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
                for number, versions in self._versions(entry.name).items():
                    if number > ready_ids[entry.name] and all(old(v) for v in versions):
                        self.remove_version(entry.name, number)
        if kept_uploads is not None:
            for entry in self.uploads.iterdir():
                if entry.name not in kept_uploads and old(entry):
                    entry.unlink(missing_ok=True)
