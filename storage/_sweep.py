"""The sweep of what crashed work left behind, safe while other server processes share the metadata
database and the data directory.

It removes only what no live process will finish:
- the staging areas, pending dataset rows and running jobs of dead processes (`storage._processes`:
  silent past the stale window, or on this host with their pid gone), at once;
- owner-less pending rows and running jobs (written before owners were recorded) and loose staging
  files, once older than the import deadline;
- dataset versions past the recorded current one, and dataset folders, raw uploads and export files
  no row names, once older than the import deadline: a live process may be between writing the file
  and the row that names it.
A process starting while no other is alive has nobody to wait for: everything of the kind goes.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass

from storage._files import DataDir
from storage._metadata import MetadataStore
from storage._processes import Processes

__all__ = ["Swept", "sweep_leftovers"]


@dataclass(frozen=True, slots=True)
class Swept:
    """What a sweep found: the dead processes, the pending rows removed and the jobs marked failed."""

    dead: tuple[str, ...]
    pending: tuple[str, ...]
    jobs: int


def sweep_leftovers(
    metadata: MetadataStore,
    files: DataDir,
    processes: Processes,
    *,
    stale_s: float,
    deadline_s: float,
    starting: bool = False,
) -> Swept:
    """Sweep leftovers as the module says. `starting`: this process has not served anything yet, so
    when no other process is alive, nothing in the data directory is being written."""
    processes.beat()  # this process is surely alive (registered again, should another have taken it for dead)
    dead = processes.dead(stale_s)
    for owner in dead:  # the files first: a crash here leaves rows that the next sweep finds again
        files.remove_staging_area(owner)
    processes.forget(dead, stale_s)
    # Owner-less rows were written with the writers' clocks (Python's, in UTC), so they are judged by one.
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=deadline_s)
    jobs = metadata.sweep_jobs(before=before)
    pending = metadata.sweep_pending(files.remove_dataset, before=before)
    live = processes.known()
    alone = starting and live <= {processes.id}
    # File times come from the clock of the file system's host; the deadline dwarfs any skew.
    old = math.inf if alone else time.time() - deadline_s
    files.sweep_staging(live, before=old)
    records = metadata.list_datasets()
    files.sweep(
        metadata.dataset_versions(),
        metadata.export_tokens(),
        kept_uploads={str(r.origin["stored_as"]) for r in records if r.origin.get("stored_as")},
        before=old,
    )
    return Swept(tuple(dead), tuple(pending), jobs)
