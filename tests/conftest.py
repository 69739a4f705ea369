"""Shared fixtures: a real app (lifespan and all) on a fresh data directory, and GraphQL helpers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from datagraph.app import create_app
from datagraph.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"

UPLOAD = """mutation($file: Upload!, $name: String) {
  uploadDataset(file: $file, name: $name) {
    success error { code message }
    dataset { id name version rowCount columns { name dtype nullCount missingRate } preview { data } }
  }
}"""


class Api:
    """A GraphQL client over the real ASGI app."""

    def __init__(self, client: TestClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    def query(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.client.post("/graphql", json={"query": query, "variables": variables or {}})
        body: dict[str, Any] = response.json()
        return body

    def data(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = self.query(query, variables)
        assert "errors" not in body, body["errors"]
        result: dict[str, Any] = body["data"]
        return result

    def upload_raw(self, content: bytes, filename: str, name: str | None = None, **headers: str) -> Any:
        ops = {"query": UPLOAD, "variables": {"file": None, "name": name}}
        return self.client.post(
            "/graphql",
            data={"operations": json.dumps(ops), "map": json.dumps({"0": ["variables.file"]})},
            files={"0": (filename, content, "application/octet-stream")},
            headers=headers or {"Apollo-Require-Preflight": "true"},
        )

    def upload(self, content: bytes | Path, filename: str | None = None, name: str | None = None) -> dict[str, Any]:
        """Upload and return the `uploadDataset` payload."""
        if isinstance(content, Path):
            filename = filename or content.name
            content = content.read_bytes()
        assert filename is not None
        response = self.upload_raw(content, filename, name)
        body = response.json()
        assert "errors" not in body, body
        payload: dict[str, Any] = body["data"]["uploadDataset"]
        return payload

    def upload_ok(self, content: bytes | Path, filename: str | None = None, name: str | None = None) -> str:
        payload = self.upload(content, filename, name)
        assert payload["success"], payload["error"]
        dataset_id: str = payload["dataset"]["id"]
        return dataset_id


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", **overrides)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def api(settings: Settings) -> Iterator[Api]:
    with TestClient(create_app(settings)) as client:
        yield Api(client, settings)
