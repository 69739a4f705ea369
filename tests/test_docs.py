"""Docs stay true: the README's examples run against a real server, its settings table and
`schema.graphql` match the code, and every setting works from the environment and the CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import ROOT, running_server

from datagraph.settings import Settings, settings_table
from gql.schema import build_schema
from server.cli import load_settings, main

README = (ROOT / "README.md").read_text("utf-8")


def _blocks(language: str, section: str | None = None) -> list[str]:
    text = README
    if section is not None:
        text = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real `datagraph serve` under uvicorn on loopback, as a user starts it."""
    work = tmp_path_factory.mktemp("readme")
    with running_server(work, "--sources", str(ROOT / "sources.yaml")) as base:
        yield base, work


def _successes(node: object) -> list[bool]:
    if isinstance(node, dict):
        found = [node["success"]] if "success" in node else []
        return found + [s for v in node.values() for s in _successes(v)]
    if isinstance(node, list):
        return [s for v in node for s in _successes(v)]
    return []


@pytest.mark.e2e
def test_readme_curl_tour_runs_as_written(server: tuple[str, Path]) -> None:
    base, work = server
    shutil.copytree(ROOT / "examples", work / "examples", dirs_exist_ok=True)
    blocks = _blocks("sh", "A tour with curl")
    assert len(blocks) == 4
    outputs = []
    for block in blocks:
        script = block.replace("http://127.0.0.1:8000", base)
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], cwd=work, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (block, done.stderr)
        outputs.append(done.stdout)
    upload, describe, filtered = (json.loads(o) for o in outputs[:3])
    dataset = upload["data"]["uploadDataset"]["dataset"]
    assert dataset["id"] == "tips" and dataset["rowCount"] == 244 and len(dataset["preview"]["data"]) == 5
    stats = describe["data"]["dataset"]["describe"]["data"]
    assert [s["column"] for s in stats] == ["total_bill", "day"] and stats[1]["top"] == "Sat"
    assert filtered["data"]["dataset"]["filter"]["count"]["data"] == {"count": 32}
    assert outputs[3].splitlines()[0] == "total_bill,tip,sex,smoker,day,time,size"
    for answer in (upload, describe, filtered):
        assert "errors" not in answer and all(_successes(answer["data"])), answer


@pytest.mark.e2e
def test_readme_graphql_examples_answer_without_errors(server: tuple[str, Path]) -> None:
    base, _ = server
    client = httpx.Client(base_url=base)
    if not any(
        d["id"] == "tips"
        for d in client.post("/graphql", json={"query": "{ datasets { id } }"}).json()["data"]["datasets"]
    ):
        ops = json.dumps(
            {"query": "mutation($f: Upload!) { uploadDataset(file: $f) { success } }", "variables": {"f": None}}
        )
        client.post("/graphql", data={"operations": ops, "map": '{"0": ["variables.f"]}'},
                    files={"0": ("tips.csv", (ROOT / "examples/tips.csv").read_bytes())},
                    headers={"Apollo-Require-Preflight": "true"})  # fmt: skip
    blocks = _blocks("graphql")
    assert len(blocks) >= 2
    for query in blocks:
        body = client.post("/graphql", json={"query": query}).json()
        assert "errors" not in body, (query, body["errors"])
        flags = _successes(body["data"])
        assert flags and all(flags), (query, body)
    client.close()


def test_readme_settings_table_matches_the_code() -> None:
    table = README.split("<!-- settings:start -->\n", 1)[1].split("<!-- settings:end -->", 1)[0].strip()
    assert table == settings_table()
    for name in Settings.model_fields:
        assert f"DATAGRAPH_{name.upper()}" in table


def test_schema_graphql_is_generated_from_the_code() -> None:
    assert (ROOT / "schema.graphql").read_text("utf-8").strip() == build_schema().as_str().strip()


def test_settings_come_from_environment_and_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    monkeypatch.setenv("DATAGRAPH_MAX_UPLOAD_MB", "7")
    monkeypatch.setenv("DATAGRAPH_ROWS_MAX", "50")
    args = argparse.Namespace(max_upload_mb=None, rows_max="60", graphiql=False)
    settings = load_settings(args)
    assert settings.max_upload_mb == 7 and settings.rows_max == 60 and settings.graphiql is False


def test_bad_setting_stops_with_a_message_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAGRAPH_PORT", "not-a-port")
    with pytest.raises(SystemExit, match="port"):
        main(["serve"])
