"""The data directory's version sweep: an old version goes once it has not been current for the grace
period, counted from when the version after it was committed, not from when it was written."""

from __future__ import annotations

import os
import time
from pathlib import Path

from storage import DataDir


def _version(files: DataDir, dataset: str, n: int, written_s_ago: float) -> Path:
    path = files.dataset_file(dataset, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"parquet")
    moment = time.time() - written_s_ago
    os.utime(path, (moment, moment))
    return path


def test_a_version_is_swept_only_after_it_stopped_being_current_for_the_grace_period(tmp_path: Path) -> None:
    files = DataDir(tmp_path)
    # v1 written an hour ago, but v2 (which replaced it) only a minute ago: queries may still read v1.
    v1 = _version(files, "d", 1, 3600)
    v2 = _version(files, "d", 2, 60)
    v3 = _version(files, "d", 3, 10)
    v4 = _version(files, "d", 4, 0)
    assert files.sweep_versions({"d": 4}, grace_s=300) == 0
    assert v1.exists() and v2.exists()
    # Once v2 has been there past the grace period, v1 goes; v2 stays until v3 has been.
    os.utime(v2, (time.time() - 600, time.time() - 600))
    assert files.sweep_versions({"d": 4}, grace_s=300) == 1
    assert not v1.exists() and v2.exists() and v3.exists() and v4.exists()
    # The current version and the one before it are never swept, however old.
    for path in (v2, v3, v4):
        os.utime(path, (time.time() - 9999, time.time() - 9999))
    assert files.sweep_versions({"d": 4}, grace_s=300) == 1
    assert not v2.exists() and v3.exists() and v4.exists()
