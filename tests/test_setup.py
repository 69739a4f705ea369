"""The first minutes on a fresh machine (issue 17, items 3-5): `make run` needs only the runtime
dependencies, a server started anywhere says which data directory, sources file and plugins folder
it uses (and makes no folder nobody asked for), a bad `sources.yaml` is reported whole, and the CLI's
output piped into `head` ends quietly."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from support import DATA, ROOT, free_port, upload_request, wait_until_serving

from connectors.sources import SourcesError, load_sources

DATAGRAPH = str(ROOT / ".venv/bin/datagraph")
F_SETPIPE_SZ = 1031  # Linux: set a pipe's buffer size


@pytest.mark.parametrize("command", ["settings", "schema"])
def test_cli_output_cut_short_by_its_reader_ends_quietly(command: str) -> None:
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)  # smaller than the output: the writer must wait for us
    proc = subprocess.Popen([DATAGRAPH, command], stdout=write_end, stderr=subprocess.PIPE)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        first = reader.readline()  # then leave, as `head -1` does
    _, err = proc.communicate(timeout=60)
    assert first.strip(), "nothing was printed"
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    assert proc.returncode in (0, 141)


BAD_SOURCES = """\
sources:
  shop:
    kind: postgresql
    url: postgresql://${SHOP_USER}:${SHOP_PASSWORD}@127.0.0.1/shop
  crm: {kind: oracle, url: 'oracle://u:s3cret@h/db', colour: red}
  Bad-Id: {kind: sqlite, url: 'sqlite:///x.db'}
  ok: {kind: sqlite, url: 'sqlite:///x.db'}
databases: {}
"""


def test_a_bad_sources_file_is_reported_whole_each_problem_at_its_yaml_path(tmp_path: Path) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text(BAD_SOURCES)
    with pytest.raises(SourcesError) as caught:
        load_sources(path, {"SHOP_USER": "alice"})
    message = str(caught.value)
    lines = message.splitlines()
    assert lines[0] == "sources.yaml: 5 problems:", message
    wanted = [
        "databases: not a key",
        "sources.shop.url: the environment variable SHOP_PASSWORD is not set",
        "sources.crm.kind: Input should be",
        "sources.crm.colour: Extra inputs are not permitted",
        "sources.Bad-Id: a source id is lower-case",
    ]
    for want in wanted:
        assert any(line.strip().startswith(want) for line in lines[1:]), (want, message)
    assert "s3cret" not in message and "alice" not in message
    # The server refuses to start with the same list, and no traceback.
    done = subprocess.run(
        [DATAGRAPH, "serve", "--sources", str(path), "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "SHOP_USER": "alice"},
    )  # fmt: skip
    assert done.returncode != 0 and "5 problems" in done.stderr and "sources.crm.colour" in done.stderr
    assert "Traceback" not in done.stderr and "s3cret" not in done.stderr


def _serve(cwd: Path, *args: str) -> str:
    """Start `datagraph serve` in `cwd`, wait until it answers, stop it; return its log."""
    port = free_port()
    with open(cwd / "server.log", "w") as log:
        proc = subprocess.Popen(
            [DATAGRAPH, "serve", "--port", str(port), "--workers", "1", *args],
            cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            wait_until_serving(f"http://127.0.0.1:{port}", cwd / "server.log")
        finally:
            proc.terminate()
            proc.wait(20)
    return (cwd / "server.log").read_text()


@pytest.mark.e2e
def test_a_server_started_elsewhere_says_what_it_uses_and_makes_no_plugins_folder(tmp_path: Path) -> None:
    log = _serve(tmp_path)
    assert f"data directory: {tmp_path / 'var'} (created now)" in log, log
    assert f"sources file: none (no sources.yaml in {tmp_path}" in log, log
    assert f"plugins folder: none (no plugins/ folder in {tmp_path})" in log, log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.log", "var"]  # no plugins/
    again = _serve(tmp_path)
    assert f"data directory: {tmp_path / 'var'} (existing)" in again


@pytest.mark.e2e
def test_a_server_names_the_sources_file_and_plugins_folder_it_uses(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "plugins", tmp_path / "plugins")
    (tmp_path / "sources.yaml").write_text(
        f"sources:\n  shop: {{kind: sqlite, url: 'sqlite:///{ROOT}/examples/shop.sqlite'}}\n"
    )
    log = _serve(tmp_path, "--data-dir", str(tmp_path / "data"))
    assert f"sources file: {tmp_path / 'sources.yaml'} (shop)" in log, log
    assert f"plugins folder: {tmp_path / 'plugins'} (http_csv, http_json, open_meteo)" in log, log
    # A plugins folder named explicitly is the user's request: it is made, and watched.
    elsewhere = tmp_path / "mine"
    log = _serve(tmp_path, "--plugins", str(elsewhere), "--sources", "", "--data-dir", str(tmp_path / "data"))
    assert elsewhere.is_dir() and f"plugins folder: {elsewhere} (no plugins yet)" in log, log
    assert "sources file: none (setting sources is empty)" in log


@pytest.mark.slow  # builds a second environment (from uv's cache) and serves from it
def test_serving_needs_only_the_runtime_dependencies(tmp_path: Path) -> None:
    env_dir = tmp_path / "runtime-env"
    uv = ROOT / ".tools/bin/uv"
    if not uv.exists():
        pytest.skip("uv is not installed in .tools/ (make sets it up)")
    done = subprocess.run(
        [str(uv), "sync", "--frozen", "--no-dev", "--python", "python3.11"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(env_dir), "UV_PYTHON_DOWNLOADS": "never"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    site = env_dir / "lib/python3.11/site-packages"
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert {"polars", "strawberry_graphql", "uvicorn"} <= installed
    assert not installed & {"pytest", "pandas", "mypy", "playwright", "schemathesis", "flask", "matplotlib"}
    port = free_port()
    with open(tmp_path / "server.log", "w") as log:
        proc = subprocess.Popen(
            [str(env_dir / "bin/datagraph"), "serve", "--port", str(port), "--workers", "1",
             "--data-dir", str(tmp_path / "data"), "--sources", "", "--plugins", str(ROOT / "plugins")],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, tmp_path / "server.log")
        made = httpx.post(base + "/graphql", timeout=60, **upload_request((DATA / "tips.csv").read_bytes(), "tips.csv"))
        assert made.json()["data"]["uploadDataset"]["success"], made.text
        query = """{ dataset(id: "tips") { describe { success } export(format: XLSX) { success }
          groupBy(by: ["day"], aggregations: [{column: "tip", fn: MEAN}]) { rows { success data } } } }"""
        answer = httpx.post(base + "/graphql", json={"query": query}, timeout=60).json()
        assert "errors" not in answer, answer
        tips = answer["data"]["dataset"]
        assert tips["describe"]["success"] and tips["export"]["success"] and tips["groupBy"]["rows"]["success"]
        size = sum(p.stat().st_size for p in env_dir.rglob("*") if p.is_file() and not p.is_symlink())
        print(f"runtime environment: {len(installed)} packages, {size / 2**20:.0f} MiB")
    finally:
        proc.terminate()
        proc.wait(20)
