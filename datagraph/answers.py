"""What a GraphQL answer read, so that a stored answer is served only while all of it is unchanged.

`DatasetVersions` counts the changes this process has heard of, per dataset id: every dataset event
(created, appended, refreshed, replaced, deleted, renamed), here or, through the event bus's Redis
channel, in another process. `ReadLog` records, while one operation runs, the count of each dataset
it looked up (a missing one too: creating it is a change) and of the dataset list, taken *before*
the lookup, so a change that lands while the operation runs makes its answer stale at once. Anything
it cannot vouch for (a linked table, a failed result) refuses the answer for storage.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ANY_DATASET", "DatasetVersions", "ReadLog"]

ANY_DATASET = "*"  # the dataset list: any change to any dataset changes it


class DatasetVersions:
    """Changes heard of, per dataset id; `resets` counts the times events may have been missed."""

    __slots__ = ("_changes", "resets")

    def __init__(self) -> None:
        self._changes: dict[str, int] = {ANY_DATASET: 0}
        self.resets = 0

    def changed(self, dataset: str) -> None:
        changes = self._changes
        changes[dataset] = changes.get(dataset, 0) + 1
        changes[ANY_DATASET] += 1

    def reset(self) -> None:
        """Events may have been missed (the Redis reader reconnected): nothing read before is trusted."""
        self.resets += 1

    def of(self, dataset: str) -> int:
        return self._changes.get(dataset, 0)

    def unchanged(self, reads: tuple[tuple[str, int], ...], resets: int) -> bool:
        """Whether every dataset in `reads` is at the count it had when it was read."""
        if resets != self.resets:
            return False
        changes = self._changes
        return all(changes.get(dataset, 0) == seen for dataset, seen in reads)


class ReadLog:
    """One operation's reads, its `meta.cached`/`meta.elapsedMs` response paths, and whether it may be
    stored at all (`refused` names the first reason it may not)."""

    __slots__ = ("marks", "reads", "refused", "resets", "versions")

    def __init__(self, versions: DatasetVersions) -> None:
        self.versions = versions
        self.resets = versions.resets
        self.reads: dict[str, int] = {}
        self.marks: list[tuple[tuple[Any, ...], str]] = []
        self.refused: str | None = None

    def dataset(self, dataset: str) -> None:
        """The operation is about to look `dataset` up (or, with ANY_DATASET, list them)."""
        self.reads.setdefault(dataset, self.versions.of(dataset))

    def refuse(self, why: str) -> None:
        if self.refused is None:
            self.refused = why

    def mark(self, path: tuple[Any, ...], field: str) -> None:
        """`field` (cached or elapsedMs) is answered at `path`: a stored answer patches it there."""
        self.marks.append((path, field))
