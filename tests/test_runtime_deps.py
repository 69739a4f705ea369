"""What `make run` installs is enough: the runtime packages alone (no dev group) must serve every
feature. numpy is a dev-only package here; a plugin fetch once needed it to hash its rows."""

from __future__ import annotations

import subprocess
import sys

from support import ROOT

WITHOUT_NUMPY = """
import sys
sys.modules["numpy"] = None  # as in a `make run` environment: importing numpy fails
import polars as pl
from connectors.plugins import data_hash
a = pl.DataFrame({"dish": ["soup", "pie"], "score": [4, 5]})
same = pl.DataFrame({"dish": ["soup", "pie"], "score": [4, 5]})
other = pl.DataFrame({"dish": ["soup", "pie"], "score": [4, 3]})
empty = a.clear()
print(data_hash(a) == data_hash(same), data_hash(a) != data_hash(other), data_hash(empty) != data_hash(a))
"""


def test_a_plugin_fetch_hashes_its_rows_without_numpy() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_NUMPY], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True", "True"]
