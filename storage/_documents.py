"""Persisted GraphQL documents in the metadata database, shared by every server process.

A document is kept under the hex SHA-256 of its exact text (UTF-8). Trusted documents (`datagraph
documents add`) stay until removed; documents registered through Apollo's APQ are bounded: past
`limit` documents in all, the oldest APQ ones make room (their clients register them again on
their next `PersistedQueryNotFound`), and when only trusted ones are left, a registration is refused.
Several processes registering at the same moment may pass the limit by one each, never more.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from storage._tables import aware, now, persisted_documents

__all__ = ["Documents", "StoredDocument", "document_hash"]

Kind = Literal["trusted", "apq"]
Added = Literal["added", "known", "full"]


def document_hash(text: str) -> str:
    """The hex SHA-256 of a document's exact text, as Apollo's APQ and `documentId` name it."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredDocument:
    id: str
    kind: str
    text: str
    created_at: dt.datetime


class Documents:
    """The `persisted_documents` table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, digest: str) -> str | None:
        """The text of the document whose hash is `digest`, or None."""
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(persisted_documents.c.text).where(persisted_documents.c.id == digest)
            ).scalar_one_or_none()
        return str(found) if found is not None else None

    def add(self, text: str, *, kind: Kind, limit: int) -> Added:
        """Keep `text` under its hash: "added", "known" (already kept; a trusted add makes an APQ one
        trusted) or "full" (`limit` documents are kept and none of them is an APQ one to evict)."""
        digest = document_hash(text)
        table = persisted_documents
        try:
            with self.engine.begin() as conn:
                known = conn.execute(sa.select(table.c.kind).where(table.c.id == digest)).scalar_one_or_none()
                if known is not None:
                    if kind == "trusted" and known != "trusted":
                        conn.execute(table.update().where(table.c.id == digest).values(kind="trusted"))
                    return "known"
                count = int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
                over = count + 1 - limit
                if over > 0:
                    oldest = list(
                        conn.execute(
                            sa.select(table.c.id)
                            .where(table.c.kind == "apq")
                            .order_by(table.c.created_at, table.c.id)
                            .limit(over)
                        ).scalars()
                    )
                    if len(oldest) < over:
                        return "full"
                    conn.execute(table.delete().where(table.c.id.in_(oldest)))
                conn.execute(table.insert().values(id=digest, kind=kind, text=text, created_at=now()))
        except sa.exc.IntegrityError:  # another process registered it meanwhile (nothing was evicted)
            return "known"
        return "added"

    def remove(self, digest: str) -> bool:
        """Forget a document; False when there was none."""
        with self.engine.begin() as conn:
            return conn.execute(persisted_documents.delete().where(persisted_documents.c.id == digest)).rowcount > 0

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(persisted_documents)).scalar_one())

    def listed(self, limit: int | None = None) -> list[StoredDocument]:
        """The documents kept, trusted ones first, each group oldest first."""
        table = persisted_documents
        query = sa.select(table).order_by(table.c.kind.desc(), table.c.created_at, table.c.id).limit(limit)
        with self.engine.connect() as conn:
            return [StoredDocument(r.id, r.kind, r.text, aware(r.created_at)) for r in conn.execute(query)]
