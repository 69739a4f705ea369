"""Durations written the way people write them: "30s", "15m", "1h", "2d", "1w", "1h30m".

One grammar for every setting and argument that takes a length of time (check freshness, schedules):
one or more whole numbers each followed by a unit, s (seconds), m (minutes), h (hours), d (days) or
w (weeks), largest unit first, each unit at most once. No months or years: they have no fixed length.
"""

from __future__ import annotations

import re

__all__ = ["DURATION_HELP", "format_duration", "parse_duration"]

DURATION_HELP = 'a duration such as "30s", "15m", "1h", "2d" or "1h30m" (units w d h m s)'
_UNITS = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_PART = re.compile(r"(\d{1,9})([wdhms])", flags=re.ASCII)
_WHOLE = re.compile(r"(?:\d{1,9}[wdhms]){1,5}", flags=re.ASCII)


def parse_duration(text: str, *, zero: bool = False) -> float:
    """The seconds `text` stands for; ValueError (saying what is accepted) when it does not parse,
    or is zero unless `zero` (for a caller with a message of its own for too short)."""
    spelled = text.strip().lower() if isinstance(text, str) else ""
    if not _WHOLE.fullmatch(spelled):
        raise ValueError(f"{str(text)[:40]!r} is not {DURATION_HELP}")
    parts = _PART.findall(spelled)
    order = [list(_UNITS).index(unit) for _, unit in parts]
    if order != sorted(set(order)):
        raise ValueError(f"{spelled!r}: give each unit once, largest first (as in 1h30m)")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in parts)
    if seconds <= 0 and not zero:
        raise ValueError(f"{spelled!r} is no time at all; give {DURATION_HELP}")
    return float(seconds)


def format_duration(seconds: float, *, parts: int | None = None) -> str:
    """`seconds` in days, hours, minutes and seconds, largest first: 5400 -> "1h30m"; at most `parts`
    of them (the largest), "0s" for none."""
    rest = int(seconds)
    written = []
    for unit in "dhms":
        count, rest = divmod(rest, _UNITS[unit])
        if count:
            written.append(f"{count}{unit}")
    return "".join(written[:parts]) or "0s"
