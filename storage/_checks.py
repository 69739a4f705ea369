"""The data checks of each dataset in the metadata database, shared by every server process.

A dataset's rules are replaced as a whole (setChecks). A run's results are written only when the
rules it evaluated are still the dataset's rules and no newer version's results are stored, so
that neither a run overtaken by setChecks nor a slow run of an older version (in this process or
another) ever shows results that do not belong to the rules and version beside them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from datagraph import jsonutil
from storage._tables import aware, dataset_checks, forget_orphans, now

__all__ = ["CheckStore", "StoredChecks"]


@dataclass(frozen=True, slots=True)
class StoredChecks:
    """A dataset's rules, and the results of the latest run (by check name) with its version."""

    dataset_id: str
    rules: list[dict[str, Any]]
    results: dict[str, dict[str, Any]]
    version: int | None
    updated_at: dt.datetime


def _rules_text(rules: list[dict[str, Any]]) -> str:
    return jsonutil.dumps(rules).decode()


class CheckStore:
    """The `dataset_checks` table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, dataset_id: str) -> StoredChecks | None:
        return self.get_many([dataset_id]).get(dataset_id)

    def get_many(self, dataset_ids: list[str]) -> dict[str, StoredChecks]:
        """The checks of each of the datasets that has some, in one query."""
        with self.engine.connect() as conn:
            rows = conn.execute(dataset_checks.select().where(dataset_checks.c.dataset_id.in_(dataset_ids))).all()
        return {
            row.dataset_id: StoredChecks(
                dataset_id=row.dataset_id,
                rules=jsonutil.loads(row.rules),
                results=jsonutil.loads(row.results) if row.results else {},
                version=row.version,
                updated_at=aware(row.updated_at),
            )
            for row in rows
        }

    def set_rules(self, dataset_id: str, rules: list[dict[str, Any]]) -> None:
        """Replace the dataset's rules (no rules: forget them), dropping the results of the old ones."""
        table = dataset_checks
        with self.engine.begin() as conn:
            conn.execute(table.delete().where(table.c.dataset_id == dataset_id))
            if rules:
                conn.execute(
                    table.insert().values(
                        dataset_id=dataset_id, rules=_rules_text(rules), results=None, version=None, updated_at=now()
                    )
                )

    def set_results(
        self, dataset_id: str, *, rules: list[dict[str, Any]], version: int, results: dict[str, dict[str, Any]]
    ) -> bool:
        """Keep a run's results of `version`, made with `rules`; False (nothing written) when the rules
        changed meanwhile or a newer version's results are kept already."""
        table = dataset_checks
        with self.engine.begin() as conn:
            done = conn.execute(
                table.update()
                .where(
                    table.c.dataset_id == dataset_id,
                    table.c.rules == _rules_text(rules),
                    sa.or_(table.c.version.is_(None), table.c.version <= version),
                )
                .values(results=jsonutil.dumps(results).decode(), version=version, updated_at=now())
            )
            return bool(done.rowcount)

    def delete(self, dataset_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(dataset_checks.delete().where(dataset_checks.c.dataset_id == dataset_id))

    def forget_orphans(self) -> list[str]:
        """Remove the checks of datasets that are gone (set in the moment a dataset was deleted, by
        another process); return their ids. Left, they would apply to a later dataset of that id."""
        return forget_orphans(self.engine, dataset_checks)
