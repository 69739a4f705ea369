"""Docs stay true: the examples in README.md and docs/*.md run against a real server, their relative
links lead somewhere, the settings table and `schema.graphql` match the code, and every setting
works from the environment and the CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import ROOT, running_server, upload_over_http

from datagraph.settings import Settings, settings_table
from gql.schema import build_schema
from server.cli import load_settings, main

# The front page first, then every topic file, in name order: docs added later are picked up too.
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _section(path: Path, title: str) -> str:
    """The text of the section headed `title` (any level), up to the next heading of that level."""
    text = path.read_text("utf-8")
    match = re.search(rf"^(#+) {re.escape(title)}\n", text, flags=re.MULTILINE)
    assert match, f"{path.name} has no section {title!r}"
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{len(match.group(1))}}} ", rest, flags=re.MULTILINE)
    return rest[: end.start()] if end else rest


def _blocks(language: str, text: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real `datagraph serve` under uvicorn on loopback, as a user starts it."""
    work = tmp_path_factory.mktemp("readme")
    with running_server(work, "--sources", str(ROOT / "sources.yaml")) as base:
        yield base, work


def _with_tips(base: str, *more: str) -> None:
    """Upload examples/tips.csv as `tips` unless the tour did already (tests may run alone), and
    the other examples named (`penguins`) unless there."""
    listed = httpx.post(base + "/graphql", json={"query": "{ datasets { id } }"}).json()["data"]["datasets"]
    for name in ("tips", *more):
        if not any(d["id"] == name for d in listed):
            assert upload_over_http(base, ROOT / f"examples/{name}.csv") == name


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
    blocks = _blocks("sh", (ROOT / "docs/tour.md").read_text("utf-8"))
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
    _with_tips(base, "penguins")  # the SQL examples ask which penguins are heaviest
    blocks = [(path.name, query) for path in DOCS for query in _blocks("graphql", path.read_text("utf-8"))]
    assert len(blocks) >= 15  # 10 before the docs split, one in the README, four in datasets.md
    assert {"README.md", "datasets.md", "queries.md", "databases.md"} <= {name for name, _ in blocks}
    with httpx.Client(base_url=base, timeout=60) as client:
        for name, query in blocks:  # in order: a block may use a dataset an earlier one made
            body = client.post("/graphql", json={"query": query}).json()
            assert "errors" not in body, (name, query, body["errors"])
            flags = _successes(body["data"])
            assert flags and all(flags), (name, query, body)


@pytest.mark.e2e
def test_readme_ways_to_send_a_query_run_as_written(server: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = server
    _with_tips(base)
    section = _section(ROOT / "README.md", "Clients")
    (shell,) = _blocks("sh", section)
    (script,) = _blocks("python", section)
    assert len(script.strip().splitlines()) <= 12
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", shell.replace("http://127.0.0.1:8000", base)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["data"]["dataset"]["filter"]["count"] == {"success": True, "data": {"count": 32}}
    (tmp_path / "ask.py").write_text(script.replace("http://127.0.0.1:8000", base))
    ran = subprocess.run([sys.executable, "ask.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "{'count': 32}"


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    kept = "".join(ch for ch in heading.strip().lower() if ch in "-_ " or unicodedata.category(ch)[0] in "LN")
    return kept.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text("utf-8"), flags=re.DOTALL | re.MULTILINE)
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE):
        slug = _slug(heading)
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _links(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text("utf-8"), flags=re.DOTALL | re.MULTILINE)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_every_relative_link_in_the_docs_leads_to_a_file() -> None:
    checked = 0
    for path in DOCS:
        for target in _links(path):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check offline
                continue
            file, _, fragment = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            assert dest.is_file(), f"{path.relative_to(ROOT)}: {target} leads to no file"
            if fragment and dest.suffix == ".md":
                assert fragment in _anchors(dest), f"{path.relative_to(ROOT)}: {target}: no such heading"
            checked += 1
    assert checked >= 30


def test_readme_links_every_topic_in_docs() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    for path in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{path.name})" in readme, f"the README's table of contents misses docs/{path.name}"
        assert path.read_text("utf-8").startswith("# "), f"docs/{path.name} starts without a title"


def test_settings_table_matches_the_code() -> None:
    text = (ROOT / "docs/settings.md").read_text("utf-8")
    table = text.split("<!-- settings:start -->\n", 1)[1].split("<!-- settings:end -->", 1)[0].strip()
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
