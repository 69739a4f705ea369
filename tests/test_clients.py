"""The GraphQL clients people use, run by Node against a real server on loopback: graphql-http's
GraphQL-over-HTTP audit suite, Apollo Client 4 (queries, variables, an upload through
apollo-upload-client, and the GraphQL errors of a 400, a 413 and a 429 read from the answer) and urql
(queries, variables, subscriptions through graphql-ws), both clients' persisted queries (APQ by GET), and
the examples of docs/clients.md as
written. The packages are pinned in tests/js/package-lock.json and installed by tests/jsclients.py;
the scripts are tests/js/*.mjs."""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsclients import installed, run_node
from support import ROOT, entered_together, running_server, upload_over_http, upload_request, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
GQL_TYPE = "application/graphql-response+json; charset=utf-8"
MAX_REQUEST_KB = 8  # small, so a client can send a body over it


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The base URLs of two real servers, started side by side: the one the module's tests share (each
    uploads its own data), and one with a budget of 3 requests an hour that only the 429 test spends."""
    installed()  # before the servers start: a first install takes a while
    shared = running_server(tmp_path_factory.mktemp("clients"), "--max-request-kb", str(MAX_REQUEST_KB))
    limited = running_server(tmp_path_factory.mktemp("limited"), "--rate-limit", "3/hour")
    with entered_together(shared, limited) as (shared_base, limited_base):
        yield shared_base, limited_base


@pytest.fixture(scope="module")
def graphql_url(servers: tuple[str, str]) -> str:
    """The /graphql URL of the module's shared server."""
    return servers[0] + "/graphql"


def test_graphql_http_audits_pass_every_must_and_should(graphql_url: str) -> None:
    audits: list[dict[str, Any]] = run_node("audit.mjs", {"url": graphql_url})
    counts: dict[str, list[int]] = {}
    for audit in audits:
        level = audit["name"].split(" ", 1)[0]
        passed, total = counts.setdefault(level, [0, 0])
        counts[level] = [passed + (audit["status"] == "ok"), total + 1]
    print("graphql-http audits passed:", ", ".join(f"{level} {p}/{t}" for level, (p, t) in sorted(counts.items())))
    failed = [a for a in audits if a["status"] != "ok" and a["name"].split(" ", 1)[0] in ("MUST", "SHOULD")]
    assert not failed, "\n".join(f"{a['id']} {a['name']}: {a['reason']}" for a in failed)
    assert counts["MUST"][1] >= 13 and counts["SHOULD"][1] >= 23  # the suite ran whole


def test_apollo_client_queries_uploads_and_queries_what_it_uploaded(graphql_url: str) -> None:
    out = run_node("apollo.mjs", {"url": graphql_url, "scenario": "journey"})
    assert out["sources"]["ok"], out["sources"]
    assert {"id": "uploads", "__typename": "Source"} in out["sources"]["value"]["sources"]
    uploaded = out["upload"]["value"]["uploadDataset"]
    assert uploaded["success"] and uploaded["dataset"]["rowCount"] == 3, uploaded
    dataset = out["variables"]["value"]["dataset"]
    assert dataset["id"] == uploaded["dataset"]["id"] and dataset["rowCount"] == 3
    assert dataset["rows"]["data"] == [{"city": "Oslo", "temp": 3}, {"city": "Lima", "temp": 19}]  # limit: 2
    # Apollo 4 asks for application/graphql-response+json first, and gets it.
    assert out["answers"] == [{"status": 200, "contentType": GQL_TYPE}] * 3


def test_apollo_client_reads_the_graphql_errors_of_a_400_and_a_413(graphql_url: str) -> None:
    out = run_node("apollo.mjs", {"url": graphql_url, "scenario": "refusals", "bigKb": 2 * MAX_REQUEST_KB})
    assert [a["status"] for a in out["answers"]] == [400, 413]
    assert {a["contentType"] for a in out["answers"]} == {GQL_TYPE}
    invalid, too_large = out["invalid"]["error"], out["tooLarge"]["error"]
    assert invalid["kind"] == "CombinedGraphQLErrors" and [e["code"] for e in invalid["errors"]] == ["BAD_INPUT"]
    assert "noSuchField" in invalid["errors"][0]["message"]
    assert too_large["kind"] == "CombinedGraphQLErrors" and [e["code"] for e in too_large["errors"]] == ["TOO_LARGE"]
    assert "max_request_kb" in too_large["errors"][0]["message"]


def test_apollo_client_reads_the_graphql_error_of_a_429(servers: tuple[str, str]) -> None:
    out = run_node("apollo.mjs", {"url": servers[1] + "/graphql", "scenario": "rate-limit"})
    tries = out["tries"]
    assert [t["ok"] for t in tries] == [True, True, True, False], tries
    refused = tries[-1]["error"]
    assert refused["kind"] == "CombinedGraphQLErrors" and [e["code"] for e in refused["errors"]] == ["RATE_LIMITED"]
    assert out["answers"][-1] == {"status": 429, "contentType": GQL_TYPE}


def test_urql_queries_and_sees_an_append_through_graphql_ws_subscriptions(graphql_url: str) -> None:
    out = run_node("urql.mjs", {"url": graphql_url})
    assert "waited" not in out, out
    assert out["sources"]["error"] is None and {"id": "uploads"} in out["sources"]["data"]["sources"]
    assert out["upload"]["data"]["uploadDataset"]["success"], out["upload"]
    dataset = out["upload"]["data"]["uploadDataset"]["dataset"]["id"]
    assert out["variables"]["data"] == {"dataset": {"rowCount": 2}}
    assert out["append"]["data"]["appendRows"]["success"], out["append"]
    event = next(e["data"]["datasetEvents"] for e in out["events"] if e["data"])
    assert event == {"kind": "APPENDED", "dataset": dataset, "version": 2, "rowCount": 3}
    counts = [w["data"]["watch"]["data"]["count"] for w in out["watched"] if w["data"]]
    assert counts[0] == 2 and counts[-1] == 3


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / "docs/clients.md").read_text("utf-8"), flags=re.DOTALL)


def test_the_client_examples_in_the_docs_run_as_written(graphql_url: str, tmp_path: Path) -> None:
    base = graphql_url.removesuffix("/graphql")
    upload_over_http(base, ROOT / "examples/tips.csv")  # the urql example counts tips
    (curl,) = _blocks("sh")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", curl.replace("http://127.0.0.1:8000", base)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("HTTP/1.1 400") and '"code":"BAD_INPUT"' in done.stdout, done.stdout
    assert "content-type: application/graphql-response+json; charset=utf-8" in done.stdout.lower()
    # Each JavaScript example prints what its comments say, in a folder that sees tests/js's packages.
    (tmp_path / "node_modules").symlink_to(installed() / "node_modules")
    examples = _blocks("js")
    assert len(examples) == 2
    for n, example in enumerate(examples):
        script = tmp_path / f"example{n}.mjs"
        script.write_text(
            example.replace("http://127.0.0.1:8000", base).replace("ws://127.0.0.1:8000", "ws" + base[4:])
        )
        ran = subprocess.run(
            ["node", script.name], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
        )
        assert ran.returncode == 0, ran.stderr
        promised = re.findall(r"console\.log\(.*\); // (\S+)", example)
        assert ran.stdout.split() == promised, (ran.stdout, promised)


def test_apollo_and_urql_persisted_queries_register_once_then_go_by_hash_and_get(graphql_url: str) -> None:
    base = graphql_url.removesuffix("/graphql")
    dataset = upload_over_http(base, ROOT / "examples/tips.csv")
    out = run_node("persisted.mjs", {"url": graphql_url, "id": dataset})
    assert out["apollo"]["answers"] == [{"dataset": {"rowCount": 244, "__typename": "Dataset"}}] * 2
    assert out["urql"]["answers"] == [{"dataset": {"name": "tips"}}] * 2  # no cacheExchange: no __typename
    for client in ("apollo", "urql"):
        sent = [(r["method"], r["withQuery"], r["status"]) for r in out[client]["requests"]]
        # The hash alone by GET (unknown: PersistedQueryNotFound), the query registered, then the
        # hash alone by GET again, answered, with an ETag.
        assert sent[0] == ("GET", False, 200) and sent[1][1:] == (True, 200) and sent[2] == ("GET", False, 200), sent
        assert len(sent) == 3, sent
        assert out[client]["requests"][2]["etag"], out[client]["requests"]


def test_graphql_sse_client_answers_a_query_and_sees_an_append(graphql_url: str, tmp_path: Path) -> None:
    base = graphql_url.removesuffix("/graphql")
    (tmp_path / "bills.csv").write_text("total_bill,tip\n20,3\n30,5\n")
    dataset = upload_over_http(base, tmp_path / "bills.csv")
    out = run_node("sse.mjs", {"url": base, "id": dataset})
    assert out["query"] == {"data": {"dataset": {"rowCount": 2}}}
    assert out["appends"] >= 1 and out["events"], out
    first = out["events"][0]["data"]["datasetEvents"]
    assert first["kind"] == "APPENDED" and first["dataset"] == dataset and first["rowCount"] >= 3, out


def test_the_javascript_example_in_the_readme_runs_as_written(graphql_url: str, tmp_path: Path) -> None:
    """Apollo, urql and graphql-sse as the README's Clients section shows them: two counts, then the
    event of an append made while the subscription is open. On the module's server, with a copy of
    tips of the test's own (other tests upload "tips" too, and this one appends to it)."""
    section = (ROOT / "README.md").read_text("utf-8").split("## Clients\n", 1)[1].split("\n## ", 1)[0]
    (example,) = re.findall(r"```js\n(.*?)```", section, flags=re.DOTALL)
    assert example.count("'tips'") == 2 and example.count('"tips"') == 1, example  # what is replaced below
    base = graphql_url.removesuffix("/graphql")
    upload = upload_request((ROOT / "examples/tips.csv").read_bytes(), "tips.csv", name="readme tips")
    uploaded = httpx.post(graphql_url, **upload, timeout=60).json()["data"]["uploadDataset"]
    assert uploaded["success"] and uploaded["dataset"]["rowCount"] == 244, uploaded
    tips = uploaded["dataset"]["id"]
    script = example.replace("http://127.0.0.1:8000", base).replace("'tips'", f"'{tips}'")
    (tmp_path / "node_modules").symlink_to(installed() / "node_modules")
    (tmp_path / "readme.mjs").write_text(script.replace('"tips"', f'"{tips}"'))
    node = subprocess.Popen(
        ["node", "readme.mjs"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(node.stdout or ()), daemon=True)
    reader.start()
    append = {"query": 'mutation { appendRows(dataset: "%s", rows: [{total_bill: 1, tip: 1}]) { success } }' % tips}
    try:
        wait_for(lambda: len(lines) >= 2 or node.poll() is not None, 30, "the two counts")
        for _ in range(20):  # until the subscription has seen one (it opens on its own time)
            if node.poll() is not None:
                break
            httpx.post(graphql_url, json=append)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(1)
        node.wait(10)
        reader.join(5)
    finally:
        node.kill()
    err = node.stderr.read() if node.stderr else ""
    for pipe in (node.stdout, node.stderr):
        if pipe:
            pipe.close()
    out = "".join(lines)
    promised = re.findall(r"console\.log\(.*\); // (\S+)", example)
    assert promised == ["244", "244", "APPENDED"]
    assert node.returncode == 0, err
    assert out.split()[:2] == ["244", "244"] and out.split()[2] == "APPENDED", out
