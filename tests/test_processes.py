"""Several server processes on one data directory and one metadata database: each registers and keeps
a heartbeat, and a sweep (at start-up, and every minute) removes only what dead processes left, or
what is older than the import deadline; never a live process's staging files, pending rows, running
jobs or a version it committed a moment ago.

The sweep's semantics are tested in-process on SQLite, with the other processes real where it
matters (a dead one is a child process that registered, started work and exited without leaving);
the slow tier runs two real `datagraph serve` on PostgreSQL metadata and one data directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from support import DATA, ROOT, make_settings, running_server, serving, staged_files, wait_for
from upstream import Reply, Upstream

from storage import DataDir, MetadataStore, Processes, sweep_leftovers

DEADLINE_S = 3_600  # the import deadline the sweeps are given (import_timeout_s' default)
STALE_S = 15  # 3 heartbeats of 5 s
OLD = time.time() - 2 * DEADLINE_S  # a file time well past the deadline


@dataclass
class Proc:
    """One server process's view of the shared metadata database and data directory."""

    store: MetadataStore
    files: DataDir
    processes: Processes

    def sweep(self, *, starting: bool = False) -> Any:
        return sweep_leftovers(
            self.store, self.files, self.processes, stale_s=STALE_S, deadline_s=DEADLINE_S, starting=starting
        )


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The metadata URL and data directory the processes of a test share."""
    yield f"sqlite:///{tmp_path / 'meta.sqlite3'}", tmp_path / "data"


@contextlib.contextmanager
def process(url: str, root: Path) -> Iterator[Proc]:
    """A process in this one: registered, as `open_resources` registers a server."""
    process_id = uuid.uuid4().hex
    store = MetadataStore(url, owner=process_id)
    proc = Proc(store, DataDir(root, process_id), Processes(store.engine, process_id))
    proc.processes.join()
    try:
        yield proc
    finally:
        store.close()


# A server process that registers, stages an upload, reserves a pending dataset (its file committed),
# starts a job, and dies without a clean shutdown.
_DIES = """
import os, sys
from pathlib import Path
from storage import DataDir, MetadataStore, Processes
url, root, process_id = sys.argv[1:]
store = MetadataStore(url, owner=process_id)
files = DataDir(Path(root), process_id)
Processes(store.engine, process_id).join()
files.staging_path(".upload").write_bytes(b"a,b\\n1,2\\n")
half = store.reserve_dataset(wanted_id="half", name="half", source_id="uploads", origin={})
staged = files.staging_path(".parquet")
staged.write_bytes(b"PAR1")
files.commit(staged, files.dataset_file(half, 1))
store.start_job("dead-job", kind="uploadDataset", steps={})
os._exit(0)
"""


def dead_process(url: str, root: Path) -> str:
    """The id of a process (a real one, on this host) that left work behind and exited."""
    process_id = uuid.uuid4().hex
    subprocess.run([str(ROOT / ".venv/bin/python"), "-c", _DIES, url, str(root), process_id], cwd=ROOT, check=True)
    return process_id


def _live_work(proc: Proc) -> dict[str, Path]:
    """What a live process has under way: a staged upload, a pending dataset with its file, a running
    job, a next version linked a moment ago (its row not moved on yet) and a raw upload kept a moment
    ago (its row not written yet)."""
    staged = proc.files.staging_path(".upload")
    staged.write_bytes(b"a,b\n1,2\n")
    pending = proc.store.reserve_dataset(wanted_id="fresh", name="fresh", source_id="uploads", origin={})
    first = proc.files.dataset_file(pending, 1)
    first.parent.mkdir(parents=True)
    first.write_bytes(b"PAR1")
    assert proc.store.start_job("live-job", kind="uploadDataset", steps={})
    ready = proc.store.reserve_dataset(wanted_id="tips", name="tips", source_id="uploads", origin={})
    proc.files.dataset_file(ready, 1).parent.mkdir()
    proc.files.dataset_file(ready, 1).write_bytes(b"PAR1")
    proc.store.mark_ready(ready, version=1, row_count=1, columns=[], origin={})
    proc.files.dataset_file(ready, 2).write_bytes(b"PAR1")
    kept = proc.files.uploads / "0123456789abcdef0123456789abcdef.csv"
    kept.write_bytes(b"a,b\n1,2\n")
    return {"staged": staged, "pending": first, "next version": proc.files.dataset_file(ready, 2), "kept": kept}


def _job_status(url: str, job_id: str) -> str:
    store = MetadataStore(url)
    try:
        job = store.get_job(job_id)
        assert job is not None
        return job.status
    finally:
        store.close()


# ---- what a sweep leaves and what it takes -------------------------------------------------------------------


def test_a_starting_process_leaves_a_live_process_s_work_alone(shared: tuple[str, Path]) -> None:
    url, root = shared
    with process(url, root) as live:
        work = _live_work(live)
        with process(url, root) as starting:
            swept = starting.sweep(starting=True)
            assert (swept.dead, swept.pending, swept.jobs) == ((), (), 0)
            for what, path in work.items():
                assert path.exists(), f"the live process's {what} was swept"
            assert _job_status(url, "live-job") == "running"
            assert live.store.dataset_versions() == {"fresh": 0, "tips": 1}
            starting.sweep()  # the periodic sweep too
            assert all(path.exists() for path in work.values())
        # The live process finishes its work as if nothing happened.
        live.store.add_version("tips", version=2, row_count=2, columns=[], origin={})
        live.store.mark_ready("fresh", version=1, row_count=1, columns=[], origin={})
        live.store.finish_job("live-job", dataset_id="fresh", rows_in=1, rows_out=1)
        assert _job_status(url, "live-job") == "succeeded"


def test_what_a_dead_process_left_is_swept_at_once_and_nothing_else(shared: tuple[str, Path]) -> None:
    url, root = shared
    with process(url, root) as live:
        work = _live_work(live)
        dead = dead_process(url, root)
        assert (root / "staging" / dead).is_dir() and (root / "datasets" / "half" / "v1.parquet").exists()
        with process(url, root) as starting:
            swept = starting.sweep(starting=True)
            assert swept.dead == (dead,) and swept.pending == ("half",) and swept.jobs == 1
            assert not (root / "staging" / dead).exists()
            assert not (root / "datasets" / "half").exists()
            assert _job_status(url, "dead-job") == "failed"
            assert starting.processes.known() == {live.processes.id, starting.processes.id}
            assert all(path.exists() for path in work.values())
            assert _job_status(url, "live-job") == "running"


def test_a_process_silent_past_the_stale_window_is_dead(shared: tuple[str, Path]) -> None:
    url, root = shared
    with process(url, root) as elsewhere, process(url, root) as sweeper:
        staged = elsewhere.files.staging_path(".upload")
        staged.write_bytes(b"x")
        assert elsewhere.store.start_job("far-job", kind="fetchPlugin", steps={})
        # On another host (its pid means nothing here), last heard of ten minutes ago.
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute(
                "UPDATE processes SET host = 'elsewhere', heartbeat_at = datetime('now', '-600 seconds') WHERE id = ?",
                (elsewhere.processes.id,),
            )
        assert sweeper.processes.dead(STALE_S) == [elsewhere.processes.id]
        assert sweeper.processes.dead(3_600) == []  # within a longer window it would count as alive
        sweeper.sweep()
        assert not staged.exists() and _job_status(url, "far-job") == "failed"
        assert elsewhere.processes.beat() is False  # it was only slow: it registers again
        assert elsewhere.processes.known() == {elsewhere.processes.id, sweeper.processes.id}


def test_owner_less_and_unnamed_leftovers_go_only_once_older_than_the_import_deadline(
    shared: tuple[str, Path],
) -> None:
    url, root = shared
    with process(url, root) as live, process(url, root) as sweeper:
        legacy = MetadataStore(url)  # rows written before owners were recorded
        for name in ("old", "new"):
            legacy.reserve_dataset(wanted_id=name, name=name, source_id="uploads", origin={})
            assert legacy.start_job(f"{name}-job", kind="uploadDataset", steps={})
        with legacy.engine.begin() as conn:
            long_ago = sa.text("datetime('now', '-7200 seconds')")
            conn.execute(sa.text(f"UPDATE datasets SET created_at = {long_ago} WHERE id = 'old'"))
            conn.execute(sa.text(f"UPDATE jobs SET started_at = {long_ago} WHERE id = 'old-job'"))
        legacy.close()
        ready = live.store.reserve_dataset(wanted_id="tips", name="tips", source_id="uploads", origin={})
        live.store.mark_ready(ready, version=1, row_count=1, columns=[], origin={})
        files = live.files
        leftovers: dict[str, list[Path]] = {
            "loose staging file": [files.staging / "a.parquet.tmp", files.staging / "b.parquet.tmp"],
            "version past the current": [files.dataset_file("tips", 2), files.dataset_file("tips", 3)],
            "raw upload no row names": [files.uploads / "a.csv", files.uploads / "b.csv"],
            "export no row names": [files.exports / "a.csv", files.exports / "b.csv.tmp"],
            "dataset folder no row names": [files.datasets / "gone-a", files.datasets / "gone-b"],
            "staging area of no process": [files.staging / ("f" * 32), files.staging / ("e" * 32)],
        }
        for old, new in leftovers.values():
            for path in (old, new):
                path.parent.mkdir(parents=True, exist_ok=True)
                if "." in path.name:
                    path.write_bytes(b"x")
                else:
                    path.mkdir()
            os.utime(old, (OLD, OLD))
        sweeper.sweep(starting=True)  # a live process shares the directory: the deadline decides
        for what, (old, new) in leftovers.items():
            assert not old.exists(), f"an old {what} stayed"
            assert new.exists(), f"a fresh {what} was swept"
        assert set(sweeper.store.dataset_versions()) == {"new", "tips"}
        assert (_job_status(url, "old-job"), _job_status(url, "new-job")) == ("failed", "running")


def test_a_process_starting_alone_takes_every_leftover_however_fresh(shared: tuple[str, Path]) -> None:
    url, root = shared
    with process(url, root) as gone:
        _live_work(gone)
        (gone.files.staging / "loose.parquet.tmp").write_bytes(b"x")
        gone.processes.leave()  # its row is gone, its work stays behind
    with process(url, root) as starting:
        starting.sweep(starting=True)
        assert staged_files(root) == []
        assert starting.store.dataset_versions() == {"tips": 1}
        assert sorted(p.name for p in (root / "datasets" / "tips").iterdir()) == ["v1.parquet"]
        assert list((root / "uploads").iterdir()) == []
        assert _job_status(url, "live-job") == "failed"


def test_a_metadata_database_made_before_owners_gets_the_new_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'meta.sqlite3'}"
    MetadataStore(url).close()
    with sqlite3.connect(tmp_path / "meta.sqlite3") as conn:  # the tables as an older version made them
        conn.execute("ALTER TABLE datasets DROP COLUMN owner")
        conn.execute("ALTER TABLE jobs DROP COLUMN owner")
        conn.execute("DROP TABLE processes")
        conn.execute(
            "INSERT INTO jobs (id, kind, status, steps, started_at) VALUES ('old', 'saveFrame', 'succeeded', '{}', '2024-01-01')"
        )
    # Two processes open it: the first adds the columns, the second finds them there.
    stores = [MetadataStore(url, owner="p1"), MetadataStore(url, owner="p2")]
    try:
        assert stores[0].reserve_dataset(wanted_id="d", name="d", source_id="uploads", origin={}) == "d"
        assert stores[1].start_job("new", kind="saveFrame", steps={})
        with sqlite3.connect(tmp_path / "meta.sqlite3") as conn:
            assert conn.execute("SELECT owner FROM datasets").fetchall() == [("p1",)]
            assert conn.execute("SELECT id, owner FROM jobs ORDER BY id").fetchall() == [("new", "p2"), ("old", None)]
    finally:
        for store in stores:
            store.close()


# ---- the server's heartbeat ------------------------------------------------------------------------------------


def _process_rows(data_dir: Path) -> list[tuple[str, int]]:
    with contextlib.closing(sqlite3.connect(data_dir / "datagraph.sqlite3")) as conn:
        return conn.execute("SELECT id, pid FROM processes").fetchall()


def test_a_server_registers_beats_again_when_taken_for_dead_and_leaves_cleanly(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, heartbeat_s=0.1)
    with serving(settings) as api:
        ((process_id, pid),) = _process_rows(settings.data_dir)
        assert pid == os.getpid()
        assert api.upload_ok(b"a,b\n1,2\n", "small.csv") == "small"
        assert (settings.data_dir / "staging" / process_id).is_dir()  # its staging area
        with contextlib.closing(sqlite3.connect(settings.data_dir / "datagraph.sqlite3")) as conn, conn:
            conn.execute("DELETE FROM processes")  # as another process's sweep does to one silent too long
        deadline = time.monotonic() + 10
        while _process_rows(settings.data_dir) != [(process_id, pid)]:
            assert time.monotonic() < deadline, "the server did not register again"
            time.sleep(0.05)
    assert _process_rows(settings.data_dir) == []
    assert list((settings.data_dir / "staging").iterdir()) == []


# ---- two real server processes -------------------------------------------------------------------------------


@pytest.mark.slow  # two server processes
def test_a_slow_upload_and_a_slow_plugin_fetch_survive_another_process_starting(
    tmp_path: Path, upstream: Upstream, scratch_postgres: str
) -> None:
    """A (one worker) holds a plugin fetch whose upstream has not answered yet, and an upload staged
    and waiting for that worker; B starts on the same data directory and PostgreSQL metadata. Both
    jobs stay running, the staged file stays, and both datasets land, readable through A and B."""
    shared = tmp_path / "shared-data"
    plugins = tmp_path / "plugins"
    shutil.copytree(ROOT / "plugins", plugins)
    env = {"DATAGRAPH_METADATA_URL": scratch_postgres}
    release = threading.Event()

    def held(_: Any) -> Reply:  # the upstream answers once the test lets it
        release.wait(60)
        return Reply(200, b'[{"city": "Lisbon", "temp": 21.5}, {"city": "Porto", "temp": 18.0}]')

    upstream.script("/slow", held)
    fetch_job, upload_job = uuid.uuid4().hex, uuid.uuid4().hex
    answers: dict[str, Any] = {}
    try:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        args = ("--data-dir", str(shared), "--plugins", str(plugins))
        with running_server(tmp_path / "a", *args, env=env) as first:  # one worker
            params = {"url": upstream.url("/slow")}
            fetch = threading.Thread(
                target=lambda: answers.update(fetch=_gql(first, FETCH, {"p": params, "j": fetch_job}))
            )
            fetch.start()
            wait_for(lambda: upstream.count("/slow") == 1, 30, "the plugin did not call its upstream")
            # The upload is staged, then waits for the worker, which the fetch holds.
            upload = threading.Thread(
                target=lambda: answers.update(upload=_upload(first, DATA / "tips.csv", upload_job))
            )
            upload.start()
            wait_for(
                lambda: [p for p in staged_files(shared) if p.suffix == ".upload"], 30, "the upload was not staged"
            )
            with running_server(tmp_path / "b", *args, env=env) as second:  # its start-up sweep has run
                for job in (fetch_job, upload_job):
                    assert _gql(second, JOB, {"j": job})["job"]["status"] == "RUNNING"
                assert [p for p in staged_files(shared) if p.suffix == ".upload"], "the staged upload was swept"
                release.set()
                fetch.join(60)
                upload.join(60)
                fetched, uploaded = answers["fetch"]["fetchPlugin"], answers["upload"]
                assert fetched["success"] and uploaded["success"], (fetched, uploaded)
                made = {fetched["dataset"]["id"]: 2, uploaded["dataset"]["id"]: 244}
                for base in (first, second):
                    for dataset, rows in made.items():
                        count = _gql(base, COUNT, {"d": dataset})["dataset"]["count"]["data"]
                        assert count == {"count": rows}
                    for job in (fetch_job, upload_job):
                        assert _gql(base, JOB, {"j": job})["job"]["status"] == "SUCCEEDED"
    finally:
        release.set()


FETCH = """mutation($p: JSON!, $j: ID!) { fetchPlugin(plugin: "http_json", params: $p, jobId: $j) {
  success error { code message } dataset { id } } }"""
UPLOAD = """mutation($file: Upload!, $j: ID!) { uploadDataset(file: $file, jobId: $j) {
  success error { code message } dataset { id } } }"""
JOB = "query($j: ID!) { job(id: $j) { status error } }"
COUNT = "query($d: ID!) { dataset(id: $d) { count(cache: BYPASS) { data } } }"


def _gql(base: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    body = httpx.post(base + "/graphql", json={"query": query, "variables": variables}, timeout=90).json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


def _upload(base: str, path: Path, job_id: str) -> dict[str, Any]:
    """Upload `path` as the job `job_id`; the `uploadDataset` payload."""
    operations = {"query": UPLOAD, "variables": {"file": None, "j": job_id}}
    response = httpx.post(
        base + "/graphql",
        data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.file"]})},
        files={"0": (path.name, path.read_bytes(), "text/csv")},
        headers={"Apollo-Require-Preflight": "true"},
        timeout=90,
    )
    payload: dict[str, Any] = response.json()["data"]["uploadDataset"]
    return payload
