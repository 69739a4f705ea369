"""Append a diner's rating to the ratings file every second, as a restaurant's feedback would arrive.

    python examples/ratings/append.py --file examples/ratings/var/ratings.csv

Each line is `time,dish,score,guest` (time in UTC). Each dish has its own typical score, so the
mean per dish tells them apart. Now and then (every `--bad-every`-th rating) a line is wrong on
purpose, a score of 7 or a rating without its dish, so the dataset's checks fail where all can see.
Each line is written whole in one write, so a reader never sees half a rating.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import time
from pathlib import Path

HEADER = "time,dish,score,guest\n"
# Each dish's typical score (1-5): a diner's rating is this, give or take one.
DISHES = {"ramen": 4.4, "dumplings": 3.9, "curry": 3.3, "tofu salad": 2.6, "cheesecake": 4.0}


def rating(rng: random.Random, number: int, bad_every: int, now: dt.datetime) -> str:
    """The `number`th rating (from 1) as a CSV line; every `bad_every`-th one is wrong on purpose."""
    dish = rng.choice(list(DISHES))
    score = min(5, max(1, round(rng.gauss(DISHES[dish], 0.8))))
    guest = f"table {rng.randint(1, 12)}"
    if bad_every and number % bad_every == 0:
        if (number // bad_every) % 2:
            score = 7  # out of range: the range check fails
        else:
            dish = ""  # no dish: the notNull check fails
    stamp = now.astimezone(dt.UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="seconds")
    return f"{stamp},{dish},{score},{guest}\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, required=True, help="the ratings CSV (made with its header if missing)")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between ratings (1)")
    parser.add_argument("--bad-every", type=int, default=15, help="every Nth rating is wrong on purpose; 0: none (15)")
    parser.add_argument("--count", type=int, default=0, help="stop after this many ratings; 0: never (0)")
    parser.add_argument("--seed", type=int, default=None, help="for the same ratings every run")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)  # noqa: S311 - made-up ratings, not secrets
    args.file.parent.mkdir(parents=True, exist_ok=True)
    if not args.file.exists() or args.file.stat().st_size == 0:
        args.file.write_text(HEADER)
    number = 0
    try:
        while not args.count or number < args.count:
            number += 1
            with args.file.open("a") as out:
                out.write(rating(rng, number, args.bad_every, dt.datetime.now(dt.UTC)))
            time.sleep(args.every)
    except KeyboardInterrupt:  # Ctrl-C when run by hand: a quiet stop
        pass


if __name__ == "__main__":
    main()
