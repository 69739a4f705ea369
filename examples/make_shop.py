"""Build `examples/shop.sqlite`, the example database `sources.yaml` ships with.

Deterministic (a fixed seed), so the committed file and a rebuilt one hold the same rows:
    python examples/make_shop.py
"""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
from pathlib import Path

CITIES = ["Lisbon", "Porto", "Braga", "Coimbra", "Faro"]
STATUSES = ["paid", "paid", "paid", "shipped", "refunded"]
FIRST = ["Ana", "Bruno", "Carla", "Diogo", "Eva", "Filipe", "Graca", "Hugo", "Ines", "Joao"]
LAST = ["Silva", "Santos", "Ferreira", "Pereira", "Costa", "Rodrigues", "Martins"]


def build(path: Path) -> None:
    rng = random.Random(20261121)  # noqa: S311  (example data, not secrets)
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT, joined DATE NOT NULL);
            CREATE TABLE orders (
                id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
                ordered_at TEXT NOT NULL, amount REAL NOT NULL, status TEXT NOT NULL
            );
            """
        )
        start = dt.date(2025, 1, 1)
        customers = [
            (i, f"{rng.choice(FIRST)} {rng.choice(LAST)}", rng.choice([*CITIES, None]),
             (start + dt.timedelta(days=rng.randrange(300))).isoformat())
            for i in range(1, 51)
        ]  # fmt: skip
        conn.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)", customers)
        opened = dt.datetime(2025, 6, 1)
        orders = [
            (i, rng.randrange(1, 51), (opened + dt.timedelta(minutes=rng.randrange(400_000))).isoformat(" "),
             round(rng.uniform(5, 250), 2), rng.choice(STATUSES))
            for i in range(1, 501)
        ]  # fmt: skip
        conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", orders)


if __name__ == "__main__":
    build(Path(__file__).resolve().parent / "shop.sqlite")
