"""ratings: the restaurant's ratings file, as the demo's appender writes it (examples/ratings/).

The file is read from one folder the server's operator chooses, `DATAGRAPH_PLUGIN_RATINGS_DIR` in
the server's environment (`make demo` sets it to examples/ratings/var/); a client names only a
file in it. A name with a folder in it, or a file that leads out of the folder (a symbolic link),
is refused, so no request can read any other file on the server.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import polars as pl

from datagraph.plugin import DataSourcePlugin, Param

FOLDER_VARIABLE = "DATAGRAPH_PLUGIN_RATINGS_DIR"
DEFAULT_FOLDER = "examples/ratings/var"  # beside where the server starts: the checkout
FILE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\.csv")
MAX_BYTES = 64 * 1024 * 1024  # a day of ratings is a few MiB
SCHEMA = {"time": pl.Datetime("us"), "dish": pl.String, "score": pl.Int64, "guest": pl.String}


def ratings_file(name: str) -> Path:
    """The file called `name` in the ratings folder; ValueError for any name that leads elsewhere."""
    if not FILE_NAME.fullmatch(name):
        raise ValueError(f"file must be a .csv file name like ratings.csv (letters, digits, - and _), not {name!r}")
    folder = Path(os.environ.get(FOLDER_VARIABLE) or DEFAULT_FOLDER).resolve()
    path = (folder / name).resolve()
    if path.parent != folder:
        raise ValueError(f"{name} leads out of the ratings folder")
    if not path.is_file():
        raise ValueError(f"there is no {name} in the ratings folder yet (is the appender running?)")
    return path


class Ratings(DataSourcePlugin):
    name = "ratings"
    version = "1.0.0"
    description = "Diners' ratings of dishes (time, dish, score 1-5, guest) from the demo's growing CSV file."
    params = (
        Param("file", str, required=False, default="ratings.csv", description="A .csv file in the ratings folder."),
    )
    schema: ClassVar[Mapping[str, str] | None] = {
        "time": "Datetime",
        "dish": "String",
        "score": "Int64",
        "guest": "String",
    }

    def fetch(self, params: dict[str, Any], http: Any) -> pl.DataFrame:
        path = ratings_file(params["file"])
        with path.open("rb") as file:
            body = file.read(MAX_BYTES + 1)
        if len(body) > MAX_BYTES:
            raise ValueError(f"{params['file']} is larger than {MAX_BYTES // 2**20} MiB")
        # The appender may be writing a line right now: read up to the last whole one.
        body = body[: body.rfind(b"\n") + 1]
        if not body.strip():
            return pl.DataFrame(schema=SCHEMA)
        return pl.read_csv(body, schema=SCHEMA, has_header=True)
