"""Page blocks: a copy of one dataset version's rows as small Arrow IPC stream files, for pages.

    <data>/datasets/<id>/v<n>.<tag>.blocks/blocks.json   the row where each block starts, and the total
    <data>/datasets/<id>/v<n>.<tag>.blocks/b<k>.arrows   block k, uncompressed Arrow IPC (stream form)

`<tag>` is a hash of the version's generation (when its dataset id was created), so a dataset deleted
and uploaded again under the same id never reads the blocks of the old one. A page of rows reads the
one or two blocks that hold it (a block is read whole in a fraction of a millisecond, from the page
cache that every process sharing the data directory shares) instead of decoding Parquet row groups.

The folder is written in a staging area and renamed into place whole, so a reader sees all of it or
none; it is never changed after, and it goes with its version (`DataDir.remove_version`).
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BLOCKS_MANIFEST", "BlockIndex", "block_name", "blocks_folder_name", "generation_tag"]

BLOCKS_MANIFEST = "blocks.json"
_SUFFIX = ".blocks"


def generation_tag(generation: str) -> str:
    """A short, file-name-safe tag of a dataset's generation."""
    return hashlib.sha256(generation.encode()).hexdigest()[:12]


def blocks_folder_name(version: int, generation: str) -> str:
    return f"v{version}.{generation_tag(generation)}{_SUFFIX}"


def block_name(k: int) -> str:
    return f"b{k:06d}.arrows"


def is_blocks_entry(name: str) -> bool:
    return name.endswith(_SUFFIX)


@dataclass(frozen=True, slots=True)
class BlockIndex:
    """Where each block of a version's page blocks starts, read from its manifest."""

    folder: Path
    starts: tuple[int, ...]  # the first row of each block; block 0 starts at 0
    rows: int
    row_bytes: float  # bytes a row takes in the blocks, on average (how heavy a page of them is)

    @classmethod
    def read(cls, folder: Path) -> BlockIndex | None:
        """The index of a committed blocks folder, or None when there is none (or it is not ours)."""
        try:
            manifest = json.loads((folder / BLOCKS_MANIFEST).read_bytes())
            starts = tuple(int(s) for s in manifest["starts"])
            rows = int(manifest["rows"])
            row_bytes = float(manifest["row_bytes"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not starts or starts[0] != 0:
            return None
        return cls(folder, starts, rows, row_bytes)

    def covering(self, start: int, stop: int) -> tuple[list[Path], int]:
        """The block files holding rows [start, stop) (at least one, the last block past the end), and
        the row of the first of them where `start` is."""
        start = min(start, self.rows)
        first = bisect.bisect_right(self.starts, start) - 1
        last = max(first, bisect.bisect_right(self.starts, max(start, stop - 1)) - 1)
        return [self.folder / block_name(k) for k in range(first, last + 1)], start - self.starts[first]


def write_manifest(folder: Path, starts: list[int], rows: int, row_bytes: float) -> None:
    (folder / BLOCKS_MANIFEST).write_text(json.dumps({"starts": starts, "rows": rows, "row_bytes": row_bytes}))
