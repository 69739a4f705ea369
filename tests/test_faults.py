"""The faults of RELIABILITY.md (F1-F12), each against the real thing, each ending in a clear answer
and nothing left behind: no staging file, no half-written or unlisted dataset, no raw upload nobody
names, no cache entry for a failed result, and `PRAGMA integrity_check` of the metadata says ok.

What other files already cover is not repeated here; this file adds what they leave out:
F1/F2 test_sources.py (a query when PostgreSQL is killed, cut or black-holed) -> here: an import cut
or black-holed mid-stream, on PostgreSQL and MariaDB. F3 test_cache.py (Redis down or hung from the
start) -> here: Redis cut or hung while the server runs. F4/F5 test_plugins.py -> here: nothing left,
also when a failing fetch was to be a dataset's next version. F6 test_http.py, test_plugins.py
(retries, counts, delays) -> here: a fetch that exhausts its retries leaves nothing. F10
test_workers.py (a query's worker killed) -> here: an upload's. F12 test_workers.py (disconnect
mid-query kills the worker) -> here: and caches nothing; also mid-subscription. F7, F8, F9 and F11
had no test before: all of theirs are here.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
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
import redis
import sqlalchemy as sa
from starlette.testclient import TestClient
from support import (
    DATA,
    ROOT,
    Api,
    free_port,
    make_settings,
    require,
    require_service,
    running_server,
    staged_files,
    upload_over_http,
    upload_request,
    wait_for,
)
from tcpproxy import TcpProxy
from upstream import Reply, Upstream
from wsclient import Ws

from datagraph.errors import StorageFull
from datagraph.settings import Settings
from server.app import create_app
from storage import DataDir, MetadataStore

TIPS_ROWS = 244
LIST = "{ datasets { id version rowCount } }"
JOBS = "{ jobs { kind status error } }"
SWEPT_JOB = "The server stopped while this job ran."


# ---- the shared check ------------------------------------------------------------------------------------------


def assert_nothing_left(where: Settings | Path) -> None:
    """Nothing a failure may leave behind is there: no file in staging; every dataset row is ready,
    with its Parquet file whole; every dataset folder, file and kept upload is named by a row; no
    export file without its row; and SQLite's integrity check of the metadata store says ok."""
    root = Path(where.data_dir if isinstance(where, Settings) else where)
    staging = [p.name for p in staged_files(root)]
    assert staging == [], f"files left in staging: {staging}"
    with contextlib.closing(sqlite3.connect(root / "datagraph.sqlite3")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = conn.execute("SELECT id, status, version, origin FROM datasets").fetchall()
        tokens = {token for (token,) in conn.execute("SELECT token FROM exports")}
    pending = [row[0] for row in rows if row[1] != "ready"]
    assert pending == [], f"dataset rows never made ready: {pending}"
    versions = {dataset_id: version for dataset_id, _, version, _ in rows}
    kept: set[str] = set()
    for dataset_id, _, version, origin_text in rows:
        origin = json.loads(origin_text)
        kept.update([origin["stored_as"]] if origin.get("stored_as") else [])
        if origin.get("mode") == "LINK":
            continue
        current = root / "datasets" / dataset_id / f"v{version}.parquet"
        parts = sorted((root / "datasets" / dataset_id / f"v{version}").glob("p*.parquet"))  # appended rows
        assert current.is_file() or parts, f"dataset {dataset_id} v{version} has no file"
        for file in [current] if current.is_file() else parts:
            with file.open("rb") as fh:
                head = fh.read(4)
                fh.seek(-4, os.SEEK_END)
                assert head == fh.read(4) == b"PAR1", f"dataset {dataset_id} v{version} is not a whole Parquet file"
    for folder in (root / "datasets").iterdir():
        assert folder.name in versions, f"a dataset folder no row names: {folder.name}"
        for file in folder.iterdir():
            if file.name.endswith(".blocks"):  # a version's page blocks: committed whole, manifest and all
                number = file.name.removeprefix("v").split(".", 1)[0]
                assert number.isdigit() and int(number) <= versions[folder.name], f"blocks no row names: {file}"
                assert (file / "blocks.json").is_file(), f"page blocks without their manifest: {file}"
                continue
            number = file.name.removeprefix("v").removesuffix(".parquet")
            assert number.isdigit() and int(number) <= versions[folder.name], f"a file no row names: {file}"
            assert file.is_file() or any(file.iterdir()), f"an empty version folder: {file}"
    uploads = {p.name for p in (root / "uploads").iterdir()}
    assert uploads <= kept, f"kept uploads no row names: {sorted(uploads - kept)}"
    assert kept <= uploads, f"rows whose kept upload is gone: {sorted(kept - uploads)}"
    exports = [p.name for p in (root / "exports").iterdir() if p.name.split(".", 1)[0] not in tokens]
    assert exports == [], f"export files no row names: {exports}"


def _payload(api: Api, mutation: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    (payload,) = api.data(mutation, variables).values()
    result: dict[str, Any] = payload
    return result


def _random_csv(rows: int, seed: int = 8) -> bytes:
    """A CSV that compresses badly (random hex and floats), so its Parquet file is nearly as large."""
    rnd = random.Random(seed)
    return ("key,x\n" + "".join(f"{rnd.getrandbits(64):x},{rnd.random()}\n" for _ in range(rows))).encode()


def _worker_pids() -> set[int]:
    """This process's worker children (the in-process apps' pools)."""
    pids = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:  # the thread ended meanwhile
            continue
        for pid in children:
            with contextlib.suppress(OSError):
                if b"engine._worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.add(int(pid))
    return pids


# ---- a real server that can be killed with SIGKILL, also at a chosen point --------------------------------------

# Runs `datagraph serve`; with DG_TEST_KILL_AT=Qualname[#n] the process SIGKILLs itself when the n-th
# call (default the first) of that function starts, as a power cut or the OOM killer would stop it
# there. The profile hook only watches: it changes nothing the server does.
_LAUNCHER = """
import os, signal, sys, threading
import uvicorn
import server.app
from server.cli import main
target, _, nth = os.environ.get("DG_TEST_KILL_AT", "").partition("#")
left = [int(nth or 1)]
def watch(frame, event, arg):
    if event == "call" and frame.f_code.co_qualname == target:
        left[0] -= 1
        if left[0] == 0:
            os.kill(os.getpid(), signal.SIGKILL)
if target:  # set once the imports are done: watching costs time
    sys.setprofile(watch)
    threading.setprofile(watch)
sys.exit(main())
"""


@dataclass
class Served:
    base: str
    proc: subprocess.Popen[bytes]

    def gql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = httpx.post(self.base + "/graphql", json={"query": query, "variables": variables or {}}, timeout=30)
        data: dict[str, Any] = body.json()["data"]
        return data


@contextlib.contextmanager
def serve(work: Path, *args: str, kill_at: str = "") -> Iterator[Served]:
    """`datagraph serve` on `work`/data with one worker; on leaving, its process group is stopped."""
    port = free_port()
    env = {**os.environ, "DG_TEST_KILL_AT": kill_at}
    command = [str(ROOT / ".venv/bin/python"), "-c", _LAUNCHER, "serve", "--port", str(port)]
    command += ["--data-dir", str(work / "data"), "--workers", "1", *args]
    with open(work / "server.log", "a") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=work, env=env
        )
    served = Served(f"http://127.0.0.1:{port}", proc)
    try:
        for _ in range(300):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(served.base + "/healthz").status_code == 200:
                    break
            assert proc.poll() is None, (work / "server.log").read_text()
            time.sleep(0.05)
        else:
            pytest.fail("the server did not answer /healthz: " + (work / "server.log").read_text())
        yield served
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # workers a SIGKILLed server left (they exit on EOF anyway)
        proc.wait(10)


def _post_upload(base: str, content: bytes, filename: str, replace: str | None = None) -> httpx.Response:
    return httpx.post(base + "/graphql", **upload_request(content, filename, replace=replace), timeout=60)


def _row(data_dir: Path, dataset_id: str) -> tuple[str, int] | None:
    with contextlib.closing(sqlite3.connect(data_dir / "datagraph.sqlite3")) as conn:
        row = conn.execute("SELECT status, version FROM datasets WHERE id = ?", (dataset_id,)).fetchone()
    return None if row is None else (row[0], row[1])


@contextlib.contextmanager
def restarted(work: Path) -> Iterator[Api]:
    """The app started again on `work`/data, in this process: the same start-up (and sweep) as `serve`."""
    settings = make_settings(work, workers=1)
    with TestClient(create_app(settings)) as client:
        yield Api(client, settings)


def _jobs(api: Api) -> list[list[str]]:
    return [list(job.values()) for job in api.data(JOBS)["jobs"]]


# ---- F9: kill -9 mid-upload or mid-commit --------------------------------------------------------------------


@pytest.mark.slow  # kill/restart fault
def test_f9_kill_9_mid_upload_leaves_nothing_after_restart(tmp_path: Path) -> None:
    content = _random_csv(60_000)  # 2 MiB: staged in two 1 MiB chunks
    data_dir = tmp_path / "data"
    # The second progress call comes once the first chunk is in the staging file.
    with serve(tmp_path, kill_at="JobTracker.progress#2") as server, pytest.raises(httpx.HTTPError):
        _post_upload(server.base, content, "big.csv")
    assert server.proc.returncode == -signal.SIGKILL
    assert [p.stat().st_size for p in staged_files(data_dir)] == [1 << 20], "not killed mid-staging"
    with restarted(tmp_path) as api:
        assert api.data(LIST)["datasets"] == []
        assert _jobs(api) == [["uploadDataset", "FAILED", SWEPT_JOB]]
        assert_nothing_left(data_dir)
        assert api.upload_ok(content, "big.csv") == "big"
        assert_nothing_left(data_dir)


# Where a new upload's commit can be cut short, and what must be on disk at that moment.
NEW_DATASET_KILLS = {
    "DataDir.keep_upload": "pending row; Parquet file in datasets/",
    "MetadataStore.mark_ready": "pending row; Parquet file in datasets/, raw upload kept in uploads/",
}


@pytest.mark.slow  # kill/restart fault
@pytest.mark.parametrize("kill_at", NEW_DATASET_KILLS)
def test_f9_kill_9_mid_commit_shows_no_half_dataset_after_restart(tmp_path: Path, kill_at: str) -> None:
    data_dir = tmp_path / "data"
    content = (DATA / "tips.csv").read_bytes()
    with serve(tmp_path, kill_at=kill_at) as server, pytest.raises(httpx.HTTPError):
        _post_upload(server.base, content, "tips.csv")
    assert server.proc.returncode == -signal.SIGKILL, f"the server was not killed at {kill_at}"
    # The crash left what it was meant to: a pending row and the files of a half-made commit.
    assert _row(data_dir, "tips") == ("pending", 0)
    assert (data_dir / "datasets" / "tips" / "v1.parquet").exists()
    assert len(list((data_dir / "uploads").iterdir())) == (kill_at == "MetadataStore.mark_ready")
    with restarted(tmp_path) as api:
        assert api.data(LIST)["datasets"] == []
        assert api.data('{ dataset(id: "tips") { id } }')["dataset"] is None
        assert _jobs(api) == [["uploadDataset", "FAILED", SWEPT_JOB]]
        assert_nothing_left(data_dir)
        assert api.upload_ok(content, "tips.csv") == "tips"  # the id is free again
        assert_nothing_left(data_dir)


@pytest.mark.slow  # kill/restart fault
def test_f9_kill_9_mid_replace_keeps_the_old_version_and_the_next_change_works(tmp_path: Path) -> None:
    # Killed with the replacement's raw upload kept and its version 2 linked beside version 1, before
    # the row moves on (a kill before the link leaves the same, less version 2).
    kill_at = "MetadataStore.add_version"
    data_dir = tmp_path / "data"
    smaller = b"total_bill,tip\n1.0,0.5\n2.0,0.25\n"
    with serve(tmp_path, kill_at=kill_at) as server:
        upload_over_http(server.base, DATA / "tips.csv")
        with pytest.raises(httpx.HTTPError):
            _post_upload(server.base, smaller, "tips.csv", replace="tips")
    assert server.proc.returncode == -signal.SIGKILL, f"the server was not killed at {kill_at}"
    assert _row(data_dir, "tips") == ("ready", 1)
    assert len(list((data_dir / "uploads").iterdir())) == 2  # the first upload's and the replacement's
    assert (data_dir / "datasets" / "tips" / "v2.parquet").exists()
    with restarted(tmp_path) as api:
        assert api.data(LIST)["datasets"] == [{"id": "tips", "version": 1, "rowCount": TIPS_ROWS}]
        count = api.data('{ dataset(id: "tips") { count(cache: BYPASS) { data } } }')["dataset"]["count"]
        assert count["data"] == {"count": TIPS_ROWS}
        assert_nothing_left(data_dir)
        response = api.client.post("/graphql", **upload_request(smaller, "tips.csv", replace="tips"))
        again = response.json()["data"]["uploadDataset"]
        assert again["success"], again["error"]
        assert again["dataset"]["version"] == 2 and again["dataset"]["rowCount"] == 2
        assert_nothing_left(data_dir)


def test_f9_the_sweep_told_what_rows_name_removes_versions_past_them_and_unnamed_uploads(tmp_path: Path) -> None:
    files = DataDir(tmp_path)
    for name in ("v1.parquet", "v2.parquet", "v3.parquet"):
        (files.datasets / "tips" / name).parent.mkdir(exist_ok=True)
        (files.datasets / "tips" / name).write_bytes(b"PAR1")
    for name in ("kept.csv", "orphan.csv"):
        (files.uploads / name).write_bytes(b"a\n1\n")
    files.sweep({"tips": 2}, set(), kept_uploads={"kept.csv"})
    assert sorted(p.name for p in (files.datasets / "tips").iterdir()) == ["v1.parquet", "v2.parquet"]
    assert [p.name for p in files.uploads.iterdir()] == ["kept.csv"]
    files.sweep({"tips"}, set())  # told only the ids: versions and uploads are left as they are
    assert len(list((files.datasets / "tips").iterdir())) == 2 and len(list(files.uploads.iterdir())) == 1


# ---- F7/F8: a full disk ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path`: a real filesystem that really fills up (needs root)."""
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        require(f"cannot mount a small tmpfs ({mounted.stderr.decode().strip()})", ci="CI runs the tests as root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def _assert_storage_full(api: Api, payload: dict[str, Any]) -> None:
    assert payload["success"] is False and payload["dataset"] is None
    assert payload["error"]["code"] == "STORAGE_FULL", payload["error"]
    message = payload["error"]["message"]
    assert "disk is full" in message and "Errno" not in message and str(api.settings.data_dir) not in message
    assert api.data(LIST)["datasets"] == []
    jobs = api.data(JOBS)["jobs"]
    assert jobs == [{"kind": "uploadDataset", "status": "FAILED", "error": message}]


@pytest.mark.parametrize(
    ("fault", "disk"),
    [
        ("F7-while-staging-the-upload", "2m"),  # the 3.6 MB upload itself does not fit
        ("F8-while-writing-the-dataset-file", "6m"),  # the upload fits; its Parquet file beside it does not
    ],
)
def test_f7_f8_a_full_disk_answers_storage_full_and_leaves_nothing(tmp_path: Path, fault: str, disk: str) -> None:
    content = _random_csv(100_000)
    with small_disk(tmp_path / "data", disk):
        settings = make_settings(tmp_path)
        with TestClient(create_app(settings)) as client:
            api = Api(client, settings)
            _assert_storage_full(api, api.upload(content, "big.csv"))
            assert_nothing_left(settings)
            assert api.upload_ok(DATA / "tips.csv") == "tips"  # the space is free again: the next upload works
            assert_nothing_left(settings)


def _fill(filler: Path) -> None:
    """Write `filler` until its disk is full (unbuffered: nothing is left to flush on close)."""
    with filler.open("ab", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 65536)


def test_f8_a_full_disk_answers_append_rows_with_storage_full_and_the_version_stays(tmp_path: Path) -> None:
    append = """mutation($r: JSON!) { appendRows(dataset: "big", rows: $r) {
      success error { code message } dataset { version rowCount } } }"""
    with small_disk(tmp_path / "data", "8m"):
        settings = make_settings(tmp_path, compact_parts=2)  # every append asks for a compaction
        with TestClient(create_app(settings)) as client:
            api = Api(client, settings)
            assert api.upload_ok(_random_csv(20_000), "big.csv") == "big"
            filler = settings.data_dir / "filler"
            _fill(filler)
            payload = _payload(api, append, {"r": [{"key": "k", "x": 1.5}]})
            assert payload["success"] is False and payload["error"]["code"] == "STORAGE_FULL", payload["error"]
            assert "disk is full" in payload["error"]["message"] and str(tmp_path) not in payload["error"]["message"]
            assert api.data(LIST)["datasets"] == [{"id": "big", "version": 1, "rowCount": 20_000}]
            filler.unlink()
            assert_nothing_left(settings)
            first = _payload(api, append, {"r": [{"key": "k", "x": 1.5}]})
            assert first["success"], first["error"]
            # Its compaction may run into the full disk too: the parts keep answering.
            _fill(filler)
            count = api.data('{ dataset(id: "big") { count(cache: BYPASS) { data } } }')["dataset"]["count"]
            assert count["data"] == {"count": 20_001}
            filler.unlink()
            assert_nothing_left(settings)


def test_f8_a_full_disk_under_the_metadata_store_is_storage_full(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "1m") as disk:
        store = MetadataStore(f"sqlite:///{disk / 'meta.sqlite3'}")
        try:
            filler = disk / "filler"
            _fill(filler)
            with pytest.raises(StorageFull):
                for n in range(200):  # WAL frames already there take a few small writes
                    store.reserve_dataset(wanted_id=f"d{n}", name="d", source_id="uploads", origin={})
            filler.unlink()
            dataset_id = store.reserve_dataset(wanted_id="after", name="after", source_id="uploads", origin={})
            store.mark_ready(dataset_id, version=1, row_count=1, columns=[], origin={})
            assert store.get_dataset("after") is not None
        finally:
            store.close()
        with contextlib.closing(sqlite3.connect(disk / "meta.sqlite3")) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


# ---- F10: a worker dies during an upload ---------------------------------------------------------------------


@pytest.mark.slow  # kill/restart fault
def test_f10_a_worker_killed_while_parsing_an_upload_fails_the_job_and_is_replaced(tmp_path: Path) -> None:
    before = _worker_pids()
    settings = make_settings(tmp_path, workers=1, worker_idle_s=0)  # the worker started with the app, to stop
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        (worker,) = _worker_pids() - before
        os.kill(worker, signal.SIGSTOP)  # it takes the parse job and never answers ...
        answers: list[dict[str, Any]] = []
        thread = threading.Thread(target=lambda: answers.append(api.upload(DATA / "diamonds.csv")))
        thread.start()
        wait_for(lambda: client.get("/readyz").json()["workers"]["busy"] == 1, 20, "the parse never reached the worker")
        os.kill(worker, signal.SIGKILL)  # ... until it dies, as under the OOM killer
        thread.join(30)
        (payload,) = answers
        assert payload["success"] is False and payload["error"]["code"] == "INTERNAL"
        assert "error id" in payload["error"]["message"] and "Traceback" not in payload["error"]["message"]
        assert api.data(JOBS)["jobs"] == [
            {"kind": "uploadDataset", "status": "FAILED", "error": "The job did not finish (it failed on the server)."}
        ]
        assert_nothing_left(settings)
        pool = wait_for(
            lambda: (w := client.get("/readyz").json()["workers"])["workers"] == 1 and w, 10, "no new worker"
        )
        assert pool["crashed"] == 1 and pool["busy"] == 0
        assert api.upload_ok(DATA / "tips.csv") == "tips"
        assert_nothing_left(settings)


# ---- F11: many writers on the SQLite metadata store ------------------------------------------------------------

# One writer process: THREADS threads on one MetadataStore, each recording ROUNDS jobs that make a
# dataset; it prints "ready", waits for the go file, then prints the errors it met as JSON.
_WRITERS = """
import json, sys, threading, time
from pathlib import Path
from engine import ColumnInfo
from storage import DataDir, MetadataStore
url, proc, threads, rounds, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
store = MetadataStore(url)
errors = []
def write(t):
    try:
        for r in range(rounds):
            job = f"p{proc}t{t}r{r}"
            store.start_job(job, kind="saveFrame", steps={"round": r})
            dataset = store.reserve_dataset(wanted_id=f"w{t}", name=job, source_id="frames", origin={})
            store.mark_ready(dataset, version=1, row_count=r, columns=[ColumnInfo("n", "Int64", 0, 0.0)], origin={"job": job})
            store.finish_job(job, dataset_id=dataset, rows_in=r, rows_out=r)
    except Exception as exc:
        errors.append(repr(exc))
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
for w in workers: w.start()
for w in workers: w.join()
store.close()
print(json.dumps(errors), flush=True)
"""


def test_f11_fifty_concurrent_writers_in_two_processes_corrupt_and_lose_nothing(tmp_path: Path) -> None:
    processes, threads, rounds = 2, 25, 4
    db = tmp_path / "meta.sqlite3"
    MetadataStore(f"sqlite:///{db}").close()  # the tables, made once
    go = tmp_path / "go"
    command = [str(ROOT / ".venv/bin/python"), "-c", _WRITERS, f"sqlite:///{db}"]
    writers = [
        subprocess.Popen([*command, str(p), str(threads), str(rounds), str(go)], stdout=subprocess.PIPE, cwd=ROOT)
        for p in range(processes)
    ]
    try:
        for writer in writers:
            assert writer.stdout is not None and writer.stdout.readline().strip() == b"ready"
        go.touch()  # all 50 writers start together
        errors = [json.loads(writer.communicate(timeout=60)[0].decode().splitlines()[-1]) for writer in writers]
    finally:
        for writer in writers:
            writer.kill()
            writer.wait()
    assert errors == [[]] * processes, errors
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        datasets = conn.execute("SELECT id, status, origin FROM datasets").fetchall()
        jobs = conn.execute("SELECT id, status, dataset_id FROM jobs").fetchall()
    expected = processes * threads * rounds
    assert len(datasets) == expected and {status for _, status, _ in datasets} == {"ready"}
    assert len(jobs) == expected and {status for _, status, _ in jobs} == {"succeeded"}
    made = {json.loads(origin)["job"]: dataset_id for dataset_id, _, origin in datasets}
    assert made == {job: dataset_id for job, _, dataset_id in jobs}  # each job names the dataset it made


@pytest.mark.slow  # two server processes
def test_f11_fifty_concurrent_uploads_through_two_server_processes_on_one_data_directory(tmp_path: Path) -> None:
    content = (DATA / "tips.csv").read_bytes()
    data_dir = tmp_path / "data"
    with serve(tmp_path) as first, restarted(tmp_path) as second:  # a `datagraph serve` and this process
        start = threading.Barrier(50)
        answers: list[dict[str, Any]] = []

        def upload(n: int) -> None:
            start.wait()
            if n % 2:
                answers.append(second.upload(content, "same.csv"))
            else:
                answers.append(_post_upload(first.base, content, "same.csv").json()["data"]["uploadDataset"])

        threads = [threading.Thread(target=upload, args=(n,)) for n in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        assert [a["error"] for a in answers if not a["success"]] == []
        assert len({a["dataset"]["id"] for a in answers}) == 50
        listed = first.gql(LIST)["datasets"]
        assert len(listed) == 50 and {d["rowCount"] for d in listed} == {TIPS_ROWS}
        assert len(first.gql(JOBS)["jobs"]) == 50
        # While both serve: the page blocks the uploads started in the background are in staging until
        # they are whole, then nothing is left there.
        deadline = time.monotonic() + 60
        while staged_files(data_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert_nothing_left(data_dir)


# ---- F1/F2: a database cut or black-holed in the middle of an import ------------------------------------------

BIG_ROWS = 400_000
RUN = uuid.uuid4().hex[:8]
IMPORT = """mutation { importTable(source: "live", table: "big") {
  success error { code message } dataset { id } job { status error } } }"""


@dataclass
class LiveSource:
    api: Api
    proxy: TcpProxy
    kind: str


@pytest.fixture(scope="module", params=["postgresql", "mysql"])
def live_source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSource]:
    """An app whose source "live" (a table of BIG_ROWS rows) is reached through a TcpProxy."""
    kind: str = request.param
    schema = f"dgfault_{RUN}"
    if kind == "postgresql":
        require_service(5432, "PostgreSQL")
        admin = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test", isolation_level="AUTOCOMMIT")
        made = [f"CREATE SCHEMA {schema}"]
        made.append(
            f"CREATE TABLE {schema}.big AS SELECT i AS id, 'k' || mod(i, 7) AS kind, i * 0.5 AS value"
            f" FROM generate_series(1, {BIG_ROWS}) AS i"
        )
        # A black-holed session is never closed through the proxy (it stays idle in its transaction):
        # end every session still holding the table before dropping it.
        ended = f"SELECT pg_terminate_backend(pid) FROM pg_locks WHERE relation = '{schema}.big'::regclass"
        dropped, port = f"DROP SCHEMA {schema} CASCADE", 5432
    else:
        require_service(3306, "MariaDB")
        admin = sa.create_engine("mysql+pymysql://root@127.0.0.1:3306/test", isolation_level="AUTOCOMMIT")
        made = [f"CREATE DATABASE {schema}"]
        made.append(
            f"CREATE TABLE {schema}.big AS SELECT seq AS id, CONCAT('k', MOD(seq, 7)) AS kind, seq * 0.5 AS value"
            f" FROM seq_1_to_{BIG_ROWS}"
        )
        ended = f"SELECT GROUP_CONCAT(id) FROM information_schema.processlist WHERE db = '{schema}'"
        dropped, port = f"DROP DATABASE {schema}", 3306
    with admin.connect() as conn:
        for statement in made:
            conn.exec_driver_sql(statement)
    proxy = TcpProxy(port)
    proxy.start()
    work = tmp_path_factory.mktemp(kind)
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test" if kind == "postgresql" else ""
    url = url or f"mysql://root@127.0.0.1:{proxy.port}/{schema}"
    schema_line = f"    schema: {schema}\n" if kind == "postgresql" else ""
    (work / "sources.yaml").write_text(f"sources:\n  live:\n    kind: {kind}\n    url: {url}\n{schema_line}")
    settings = make_settings(work, sources=str(work / "sources.yaml"), import_timeout_s=4, workers=1)
    try:
        with TestClient(create_app(settings)) as client:
            api = Api(client, settings)
            warm = api.data('{ sql(source: "live", query: "SELECT count(*) AS n FROM big") { data } }')
            assert warm["sql"]["data"] == [
                {"n": BIG_ROWS}
            ]  # the worker has its driver loaded: the deadline is for the import
            yield LiveSource(api, proxy, kind)
    finally:
        proxy.cut()
        with admin.connect() as conn:
            sessions = conn.exec_driver_sql(ended).scalar()
            for session in str(sessions).split(",") if kind == "mysql" and sessions else []:
                conn.exec_driver_sql(f"KILL {int(session)}")
            conn.exec_driver_sql(dropped)
        admin.dispose()


def _import_cut_short(live: LiveSource, fault: str) -> dict[str, Any]:
    """Start importing the big table; once a batch is written, cut the proxy or black-hole it."""
    staging = live.api.settings.data_dir / "staging"
    answers: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: answers.append(_payload(live.api, IMPORT)))
    thread.start()
    try:
        wait_for(lambda: list(staging.rglob("*.part*.parquet")), 20, "the import wrote no batch")
        if fault == "cut":
            live.proxy.cut()
        else:
            live.proxy.black_hole = True
        thread.join(30)
    finally:
        if fault == "cut":
            _restore(live.proxy)
        live.proxy.black_hole = False
    (payload,) = answers
    return payload


def _restore(proxy: TcpProxy) -> None:
    """Bring a cut proxy back on its port, once every connection it had is closed."""
    proxy.cut()  # again: a connection accepted while the first cut ran is closed now
    deadline = time.monotonic() + 5
    while True:
        try:
            proxy.start()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# Slow tier: a cut must land mid-import within a 4 s import deadline, which a machine running two
# test processes at once cannot promise.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "code"), [("cut", "SOURCE_UNAVAILABLE"), ("black-hole", "TIMEOUT")], ids=["F1-cut", "F2-black-hole"]
)
def test_f1_f2_a_database_lost_mid_import_leaves_no_half_dataset(
    live_source: LiveSource, fault: str, code: str
) -> None:
    api = live_source.api
    started = time.monotonic()
    payload = _import_cut_short(live_source, fault)
    assert payload["success"] is False and payload["error"]["code"] == code, payload
    assert time.monotonic() - started < 15
    message = payload["error"]["message"]
    assert "127.0.0.1" not in message and str(live_source.proxy.port) not in message and "Traceback" not in message
    assert payload["job"] == {"status": "FAILED", "error": message}
    assert api.data(LIST)["datasets"] == []
    assert_nothing_left(api.settings)
    # The source is back: the first query after it answers in full.
    answer = api.data('{ sql(source: "live", query: "SELECT count(*) AS n FROM big") { success data } }')["sql"]
    assert answer == {"success": True, "data": [{"n": BIG_ROWS}]}


# ---- F3: Redis goes away or hangs while the server runs ----------------------------------------------------------

COUNT = '{ dataset(id: "tips") { filter(where: [{column: "tip", op: GT, value: %s}]) { count { success data error { code } meta { cached cacheKey } } } } }'


def _count(api: Api, over: float) -> dict[str, Any]:
    result: dict[str, Any] = api.data(COUNT % over)["dataset"]["filter"]["count"]
    return result


@pytest.mark.parametrize("fault", ["cut", "black-hole"])
def test_f3_redis_lost_mid_run_is_never_a_user_visible_error(tmp_path: Path, fault: str) -> None:
    require_service(6379, "Redis")
    direct = redis.Redis(port=6379, db=14)  # each module its own Redis database
    direct.flushdb()
    proxy = TcpProxy(6379)
    proxy.start()
    settings = make_settings(tmp_path, cache_url=f"redis://127.0.0.1:{proxy.port}/14", cache_timeout_s=0.2)
    try:
        with TestClient(create_app(settings)) as client:
            api = Api(client, settings)
            api.upload_ok(DATA / "tips.csv")
            stored = set(direct.keys("datagraph:result:*"))  # the upload's preview
            first = _count(api, 3)
            assert first["success"] and first["meta"]["cached"] is False
            stored.add(f"datagraph:result:{first['meta']['cacheKey']}".encode())
            assert set(direct.keys("datagraph:result:*")) == stored
            bad = api.data(
                '{ dataset(id: "tips") { filter(where: [{column: "nope", op: GT, value: 1}]) { count { success } } } }'
            )
            assert bad["dataset"]["filter"]["count"]["success"] is False
            assert set(direct.keys("datagraph:result:*")) == stored  # the failed result was not stored
            if fault == "cut":
                proxy.cut()
            else:
                proxy.black_hole = True
            started = time.monotonic()
            assert _count(api, 3) == {**first, "meta": {**first["meta"], "cached": True}}  # from memory
            fresh = _count(api, 5)
            assert fresh["success"] and fresh["meta"]["cached"] is False and fresh["data"]["count"] > 0
            assert time.monotonic() - started < 2  # Redis waited for once (cache_timeout_s), then left alone
            if fault == "cut":  # its events reach no other process; no error (while Redis hangs, each of
                # an upload's six or so events waits its 1 s publish timeout: slow, though no error either)
                assert api.upload_ok(b"a,b\n1,2\n", "more.csv") == "more"
            assert set(direct.keys("datagraph:result:*")) == stored
            assert client.get("/readyz").json()["status"] == "ok"
            assert_nothing_left(settings)
    finally:
        proxy.cut()
        direct.flushdb()
        direct.close()


# ---- F4/F5/F6: plugins that raise, hang, eat memory or return garbage; an upstream that stays down ------------

SWITCH_PLUGIN = """
import asyncio
from pathlib import Path
import polars as pl
from datagraph.plugin import DataSourcePlugin, Param

class Switch(DataSourcePlugin):
    name = "switch"
    description = "Does what the file at mode_file says."
    params = (Param("mode_file", str),)

    async def fetch(self, params, http):
        mode = Path(params["mode_file"]).read_text()
        if mode == "raises":
            raise ValueError("the upstream changed its format")
        if mode == "hangs":  # stopped at its deadline in the worker (test_plugins.py has one killed with it)
            await asyncio.sleep(3600)
        if mode == "eats":
            return pl.DataFrame({"n": [len(bytearray(8 << 30))]})
        if mode == "garbage":
            return [1, 2, 3]
        return pl.DataFrame({"n": [1, 2, 3]})
"""
FETCH = """mutation($p: String!, $params: JSON) { fetchPlugin(plugin: $p, params: $params) {
  success error { code message } dataset { id version rowCount } job { status error } } }"""


@pytest.fixture(scope="module")
def plugins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    work = tmp_path_factory.mktemp("plugins")
    folder = work / "plugins"
    folder.mkdir()
    (folder / "switch.py").write_text(SWITCH_PLUGIN)
    (folder / "raises_at_import.py").write_text("raise RuntimeError('no API key configured')\n")
    (folder / "http_json.py").write_text((ROOT / "plugins" / "http_json.py").read_text())
    settings = make_settings(
        work, plugins=str(folder), plugin_timeout_s=3, worker_memory_mb=2048, workers=2,  # a killed one's twin carries on
        worker_idle_s=0,  # the pool started with the app, then warmed
        http_attempts=3, http_backoff_s=0.05, http_backoff_cap_s=0.1, http_blocked_networks="127.0.0.2/32",
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        # The 3 s deadline is the plugins' own, not the workers' start-up; roomy, so that three tries
        # of a 503 do not become a timeout on a loaded machine.
        api.warm_workers()
        yield api


def _switch(api: Api, tmp_path: Path, mode: str) -> dict[str, Any]:
    mode_file = tmp_path / "mode"
    mode_file.write_text(mode)
    return _payload(api, FETCH, {"p": "switch", "params": {"mode_file": str(mode_file)}})


@pytest.mark.parametrize(
    ("mode", "code", "words"),
    [
        ("raises", "BAD_INPUT", "ValueError: the upstream changed its format"),  # F4
        ("hangs", "TIMEOUT", "within 3 s"),  # F5
        ("eats", "TOO_LARGE", "memory"),  # F5
        ("garbage", "BAD_INPUT", "returned list, not a DataFrame"),  # F5
    ],
)
def test_f4_f5_a_failing_plugin_fetch_stores_nothing_new_nor_a_next_version(
    plugins: Api, tmp_path: Path, mode: str, code: str, words: str
) -> None:
    unavailable = plugins.data("{ plugins { name status } }")["plugins"]
    assert {"name": "raises_at_import", "status": "UNAVAILABLE"} in unavailable  # and the rest load
    before = plugins.data(LIST)["datasets"]
    failed = _switch(plugins, tmp_path, mode)  # never fetched before: it would be a new dataset
    assert failed["error"]["code"] == code and words in failed["error"]["message"], failed["error"]
    assert failed["job"] == {"status": "FAILED", "error": failed["error"]["message"]}
    assert plugins.data(LIST)["datasets"] == before
    assert_nothing_left(plugins.settings)
    made = _switch(plugins, tmp_path, "ok")  # the same parameters working: a dataset, version 1
    assert made["success"] and made["dataset"]["version"] == 1
    again = _switch(plugins, tmp_path, mode)  # failing again: it would be version 2
    assert again["error"]["code"] == code
    assert plugins.data(LIST)["datasets"] == [*before, made["dataset"]]
    assert_nothing_left(plugins.settings)


def test_f6_a_fetch_whose_upstream_stays_down_stores_nothing(plugins: Api, upstream: Upstream) -> None:
    upstream.always["/down"] = Reply(503)
    before = plugins.data(LIST)["datasets"]
    payload = _payload(plugins, FETCH, {"p": "http_json", "params": {"url": upstream.url("/down")}})
    assert payload["error"]["code"] == "SOURCE_UNAVAILABLE" and upstream.count("/down") == 3
    assert f":{upstream.port}" not in payload["error"]["message"]
    assert payload["job"]["status"] == "FAILED"
    assert plugins.data(LIST)["datasets"] == before
    assert_nothing_left(plugins.settings)
    upstream.always["/down"] = Reply(200, b'[{"a": 1}]')  # back: the same fetch works
    assert _payload(plugins, FETCH, {"p": "http_json", "params": {"url": upstream.url("/down")}})["success"]
    assert_nothing_left(plugins.settings)


# ---- F12: the client goes away mid-query or mid-subscription -------------------------------------------------

# Every diamond joined with every diamond of the same cut, then sorted: many seconds of work.
HEAVY = """{ dataset(id: "diamonds") { join(right: "diamonds", on: ["cut"]) {
  sort(by: [{column: "price_right"}]) { rows(limit: 5%s) { success error { code } meta { cached } } } } } }"""
HEAVY_WATCH = """subscription { watch(dataset: "diamonds", result: ROWS, limit: 1,
  steps: [{join: {right: "diamonds", on: ["cut"]}}, {sort: [{column: "price_right"}]}]) { success } }"""


@dataclass
class Live:
    base: str
    data_dir: Path
    cache: redis.Redis
    stored: set[bytes]  # the result keys in Redis before the test (the upload's preview)

    def results(self) -> set[bytes]:
        return set(self.cache.keys("datagraph:result:*"))

    def workers(self) -> dict[str, int]:
        workers: dict[str, int] = httpx.get(self.base + "/readyz").json()["workers"]
        return workers

    def settled_after(self, killed: int) -> dict[str, int]:
        """The pool once the abandoned work's worker is killed and replaced."""
        return wait_for(
            lambda: (w := self.workers())["killed"] > killed and w["busy"] == 0 and w["workers"] == 2 and w,
            10,
            "the abandoned work's worker was not killed",
        )


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    require_service(6379, "Redis")
    cache = redis.Redis(port=6379, db=11)  # each module its own Redis database
    cache.flushdb()
    work = tmp_path_factory.mktemp("disconnect")
    try:
        with running_server(work, "--cache-url", "redis://127.0.0.1:6379/11", workers=2) as base:
            upload_over_http(base, DATA / "diamonds.csv")
            yield Live(base, work / "data", cache, set(cache.keys("datagraph:result:*")))
    finally:
        cache.flushdb()
        cache.close()


def test_f12_a_client_gone_mid_query_stops_the_work_and_caches_nothing(live: Live) -> None:
    killed = live.workers()["killed"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(live.base + "/graphql", json={"query": HEAVY % ""}, timeout=1.5)
    live.settled_after(killed)
    assert live.results() == live.stored
    again = httpx.post(live.base + "/graphql", json={"query": HEAVY % ", timeoutMs: 300"}, timeout=30).json()
    rows = again["data"]["dataset"]["join"]["sort"]["rows"]
    assert rows == {"success": False, "error": {"code": "TIMEOUT"}, "meta": {"cached": False}}
    assert live.results() == live.stored
    assert_nothing_left(live.data_dir)


def test_f12_a_client_gone_mid_subscription_stops_the_work_and_caches_nothing(live: Live) -> None:
    killed = live.workers()["killed"]
    ws = Ws(live.base)
    try:
        ws.subscribe(HEAVY_WATCH, {})
        wait_for(lambda: live.workers()["busy"] > 0, 10, "the watch never started its work")
        ws.conn.socket.shutdown(socket.SHUT_RDWR)  # the client vanishes: no complete, no close frame
    finally:
        ws.close()
    live.settled_after(killed)
    assert live.results() == live.stored
    assert_nothing_left(live.data_dir)
