"""Leases and schedule claims, in-process, on one shared SQLite file and on PostgreSQL metadata: two
(or eight) MetadataStores stand for server processes sharing the database. One holder at a time,
renewal, expiry and takeover, a holder that loses the database (a TcpProxy cut in front of
PostgreSQL), and compare-and-set claims that never run a period twice, even when claimers race in
threads."""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from promtext import sample
from support import ROOT, entered_together, free_port, scratch_postgres_database, wait_for, wait_until_serving
from tcpproxy import TcpProxy
from upstream import Reply, Upstream

from storage import Lease, Leases, MetadataStore, Processes, ScheduleRecord, Schedules
from storage._leases import LEASE_MARGIN, db_now
from storage._tables import schedules


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a metadata database for the module (each test names its leases and datasets its
    own way): a SQLite file, or a scratch PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('leases') / 'metadata.sqlite'}"
        return
    with scratch_postgres_database() as found:
        yield found


@pytest.fixture(scope="module")
def stores(url: str) -> Iterator[list[MetadataStore]]:
    """Two metadata stores on the same database, as two server processes have (shared by the module's
    tests: opening one on PostgreSQL takes a second or two)."""
    opened = [MetadataStore(url, owner=f"p{i}") for i in range(2)]
    for store in opened:  # registered, as a server process registers (a lease's holder must be one)
        Processes(store.engine, store.owner or "").join()
    yield opened
    for store in opened:
        store.close()


def _due(schedules_: Schedules, dataset: str) -> list[ScheduleRecord]:
    return [r for r in schedules_.due(100) if r.dataset_id == dataset]


def _scheduled(store: MetadataStore, wanted: str, every_s: int = 60) -> str:
    """A ready dataset with a schedule that is due now."""
    dataset = store.reserve_dataset(wanted_id=wanted, name=wanted, source_id="pg", origin={})
    store.mark_ready(dataset, version=1, row_count=0, columns=[], origin={}, made_by="IMPORT")
    Schedules(store.engine).assign(dataset, every_s)
    _make_due(store, dataset)
    return dataset


def _make_due(store: MetadataStore, dataset: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            schedules.update().where(schedules.c.dataset_id == dataset).values(next_due=db_now(store.engine, -0.5))
        )


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_process_holds_a_lease_renews_it_and_another_takes_it_over_once_it_expires(
    stores: list[MetadataStore],
) -> None:
    a, b = (Lease(Leases(s.engine, s.owner or ""), "takeover", 1.0) for s in stores)
    assert a.renew() and a.held
    assert not b.renew() and not b.held  # held by a, not expired
    assert Leases(stores[1].engine, "p1").holder_of("takeover") == "p0"
    assert a.renew() and not b.renew()  # renewing keeps it
    # a stops renewing (it hangs, or died): b takes over once the lease has expired by the database's clock.
    wait_for(b.renew, 10, "b takes the lease over after it expired", every=0.1)
    assert b.held and Leases(stores[0].engine, "p0").holder_of("takeover") == "p1"
    assert not a.renew() and not a.held  # a learns it lost it, and stops acting
    b.release()  # a clean shutdown hands it over at once
    assert not b.held and a.renew() and a.held
    other = Lease(Leases(stores[1].engine, "p1"), "takeover-2", 1.0)
    assert other.renew()  # leases are independent of each other


def test_a_lease_held_by_a_dead_process_is_taken_at_once(stores: list[MetadataStore]) -> None:
    ghost = Lease(Leases(stores[0].engine, "ghost"), "restart", 60.0)  # a process that never registered, or left
    assert ghost.renew()
    alive = Lease(Leases(stores[1].engine, "p1"), "restart", 60.0)
    assert alive.renew() and Leases(stores[1].engine, "p1").holder_of("restart") == "p1"
    # A registered holder judged dead (Processes.dead: silent, or its pid gone on this host) is passed in.
    crashed = Lease(Leases(stores[0].engine, "p0"), "restart-2", 60.0)
    assert crashed.renew()
    successor = Lease(Leases(stores[1].engine, "p1"), "restart-2", 60.0)
    assert not successor.renew() and successor.renew(dead=["p0"])


def test_a_holder_judges_its_lease_by_its_own_clock_and_stops_before_it_may_have_expired(
    stores: list[MetadataStore], tmp_path: Path
) -> None:
    clock = Clock()
    lease = Lease(Leases(stores[0].engine, "p0"), "own-clock", 10.0, clock=clock)
    assert lease.renew()
    clock.now += 10 * (1 - LEASE_MARGIN) - 0.01
    assert lease.held
    clock.now += 0.02
    assert not lease.held  # past lease_s less the margin since the renewal began: no longer acting
    # A renewal that cannot reach the database keeps the lease only as long as it may still stand.
    away = Lease(
        Leases(sa.create_engine(f"sqlite:///{tmp_path / 'nowhere' / 'x.sqlite'}"), "p0"), "x", 10.0, clock=clock
    )
    assert not away.renew() and away.failing and not away.held


def test_claims_never_run_a_period_twice_even_when_claimers_race_in_threads(stores: list[MetadataStore]) -> None:
    claimers = [(stores[i % 2], f"p{i}") for i in range(6)]  # six claimers, each on a connection of its own
    first = stores[0]
    dataset = _scheduled(first, "race")
    barrier = threading.Barrier(len(claimers))
    runs: list[tuple[int, str]] = []
    lock = threading.Lock()

    def claimer(claiming: tuple[MetadataStore, str], period: int) -> None:
        store, owner = claiming
        mine = Schedules(store.engine)
        barrier.wait()
        for found in _due(mine, dataset):
            token = mine.claim(found, owner)
            if token is not None:
                with lock:
                    runs.append((period, owner))
                assert mine.finish(found.dataset_id, token, error=None, retry_s=5) is not None

    for period in range(5):
        if period:
            _make_due(first, dataset)
        with concurrent.futures.ThreadPoolExecutor(len(claimers)) as pool:
            list(pool.map(claimer, claimers, [period] * len(claimers)))
        row = Schedules(first.engine).get(dataset)
        assert row is not None and row.claimed_by is None and row.runs == period + 1
    assert [p for p, _ in runs] == [0, 1, 2, 3, 4], runs  # each period once, by whoever came first
    assert _due(Schedules(first.engine), dataset) == []  # the next period is not due: nobody claims it


def test_a_dead_processes_claim_is_released_and_its_period_runs_again_once(stores: list[MetadataStore]) -> None:
    a, b = stores
    dataset = _scheduled(a, "dead-claim")
    (due,) = _due(Schedules(a.engine), dataset)
    token = Schedules(a.engine).claim(due, "p0")
    assert token is not None
    assert _due(Schedules(b.engine), dataset) == []  # claimed: b leaves it while p0 lives
    assert Schedules(b.engine).release_dead({"p0", "p1"}) == []
    assert Schedules(b.engine).release_dead({"p1"}) == [dataset]  # p0 died mid-run, having committed nothing
    (again,) = _due(Schedules(b.engine), dataset)
    second = Schedules(b.engine).claim(again, "p1")
    assert second is not None and Schedules(b.engine).finish(dataset, second, error=None, retry_s=5) is not None
    # The dead claimer's end, should it come after all, changes nothing: the claim is no longer its.
    assert Schedules(a.engine).finish(dataset, token, error="late", retry_s=5) is None
    row = Schedules(a.engine).get(dataset)
    assert row is not None and row.runs == 1 and row.last_error is None and row.failures == 0
    # Deleting the dataset forgets its schedule.
    a.delete_dataset(dataset)
    assert Schedules(a.engine).forget_orphans() == [dataset] and Schedules(a.engine).get(dataset) is None


def test_plugin_defaults_are_kept_in_step_and_never_override_a_chosen_schedule(stores: list[MetadataStore]) -> None:
    a, b = stores
    mine, theirs = Schedules(a.engine), Schedules(b.engine)
    assert sorted(mine.sync_defaults({"dx": 5, "dy": 5})) == ["dx", "dy"]
    assert theirs.sync_defaults({"dx": 5, "dy": 5}) == []  # a second process adds nothing
    mine.assign("dy", None)  # turned off over the plugin's default
    assert sorted(mine.sync_defaults({"dx": 7, "dy": 7})) == ["dx"]
    assert theirs.get("dx").every_s == 7 and theirs.get("dy").every_s is None  # type: ignore[union-attr]
    assert mine.sync_defaults({}) == ["dx"] and mine.get("dx") is None and mine.get("dy") is not None
    mine.remove("dy")


def test_a_holder_cut_off_from_postgres_stops_acting_before_another_takes_over_and_nothing_runs_twice(
    url: str,
) -> None:
    if not url.startswith("postgresql"):
        pytest.skip("the PostgreSQL variant (a TcpProxy in front of it)")
    proxy = TcpProxy(5432)
    proxy.start()
    cut_off = MetadataStore(url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"), owner="p0")
    other = MetadataStore(url, owner="p1")
    Processes(other.engine, "p0").join()
    Processes(other.engine, "p1").join()
    try:
        dataset = _scheduled(other, "cut-off")
        a = Lease(Leases(cut_off.engine, "p0"), "cut-off", 1.5)
        b = Lease(Leases(other.engine, "p1"), "cut-off", 1.5)
        assert a.renew() and not b.renew()
        (due,) = _due(Schedules(cut_off.engine), dataset)
        token = Schedules(cut_off.engine).claim(due, "p0")  # the holder starts this period's run ...
        assert token is not None
        proxy.cut()  # ... and PostgreSQL goes away under it
        both = False
        deadline = time.monotonic() + 15
        while not b.held:
            assert time.monotonic() < deadline, "the other process did not take the lease over"
            a.renew()
            b.renew()
            both = both or (a.held and b.held)
            time.sleep(0.05)
        assert not both and not a.held and a.failing  # never two holders at once
        assert _due(Schedules(other.engine), dataset) == []  # p0's claim stands while p0 is alive
        assert Schedules(other.engine).release_dead({"p1"}) == [dataset]  # p0 taken for dead (silent)
        (again,) = _due(Schedules(other.engine), dataset)
        rerun = Schedules(other.engine).claim(again, "p1")
        assert rerun is not None and Schedules(other.engine).finish(dataset, rerun, error=None, retry_s=5)
        proxy.start()  # PostgreSQL is back for p0: its late end of the run it lost records nothing
        assert wait_for(lambda: _quietly(lambda: Schedules(cut_off.engine).get(dataset)), 10, "reconnected")
        assert Schedules(cut_off.engine).finish(dataset, token, error=None, retry_s=5) is None
        row = Schedules(other.engine).get(dataset)
        assert row is not None and row.runs == 1 and row.claimed_by is None
        assert not a.renew() and not a.held  # and it does not take the lease back from the live holder
    finally:
        proxy.cut()
        cut_off.close()
        other.close()


def _quietly(read: object) -> object:
    try:
        return read()  # type: ignore[operator]
    except sa.exc.SQLAlchemyError:
        return None


TICKS = """
import polars as pl
from datagraph.plugin import DataSourcePlugin, Param

class Ticks(DataSourcePlugin):
    name = "ticks"
    params = (Param("url", str),)
    async def fetch(self, params, http):
        return pl.DataFrame(await http.get_json(params["url"]))
"""


def _post(base: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    body = httpx.post(base + "/graphql", json={"query": query, "variables": variables or {}}, timeout=60).json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


def _holds(base: str, name: str = "scheduler") -> bool:
    try:
        return sample(httpx.get(base + "/metrics", timeout=10).text, "datagraph_lease_held", name=name) == 1
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def _serving(work: Path, args: tuple[str, ...], env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """`datagraph serve` as support.running_server starts it, with a longer wait for it to answer (two
    servers importing at once on a busy machine took over 20 s), its process group stopped after; its
    base URL and pid."""
    port = free_port()
    command = [str(ROOT / ".venv/bin/datagraph"), "serve", "--port", str(port), "--workers", "1", *args]
    with open(work / "server.log", "w") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=work, env={**os.environ, **env}
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_serving(base, work / "server.log", seconds=90)
            yield base, proc.pid
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


@pytest.mark.slow  # two real server processes, one SIGKILLed
def test_when_the_lease_holder_is_killed_another_server_takes_over_and_each_period_runs_once(
    tmp_path: Path, upstream: Upstream, scratch_postgres: str
) -> None:
    ticks = itertools.count()
    upstream.always["/ticks"] = lambda _: Reply(200, json.dumps([{"n": next(ticks)}]).encode())
    shared, plugins = tmp_path / "shared-data", tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "ticks.py").write_text(TICKS)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    env = {"DATAGRAPH_METADATA_URL": scratch_postgres}
    args = ("--data-dir", str(shared), "--plugins", str(plugins), "--schedule-min-s", "1", "--lease-s", "3",
            "--heartbeat-s", "1", "--http-attempts", "1")  # fmt: skip
    with entered_together(_serving(tmp_path / "a", args, env), _serving(tmp_path / "b", args, env)) as started:
        bases = [base for base, _ in started]
        pids = dict(started)
        fetched = _post(
            bases[0], 'mutation($u: JSON) { fetchPlugin(plugin: "ticks", params: $u) { success dataset { id } } }',
            {"u": {"url": upstream.url("/ticks")}},
        )["fetchPlugin"]  # fmt: skip
        dataset = fetched["dataset"]["id"]
        set_ = 'mutation { setSchedule(dataset: "%s", every: "2s") { success dataset { schedule } } }' % dataset
        assert _post(bases[1], set_)["setSchedule"] == {"success": True, "dataset": {"schedule": "2s"}}
        holder = wait_for(lambda: [b for b in bases if _holds(b)], 20, "a server holds the scheduler's lease")
        assert len(holder) == 1, holder
        (killed,) = holder
        (survivor,) = [b for b in bases if b != killed]
        wait_for(lambda: upstream.count("/ticks") >= 3, 30, "two scheduled refreshes by the first holder")
        os.kill(pids[killed], signal.SIGKILL)
        at_kill = upstream.count("/ticks")
        wait_for(lambda: _holds(survivor), 15, "the surviving server takes the lease over")
        wait_for(lambda: upstream.count("/ticks") >= at_kill + 3, 30, "scheduled refreshes go on after the kill")
        store = MetadataStore(scratch_postgres)
        try:
            row = Schedules(store.engine).get(dataset)
        finally:
            store.close()
        assert row is not None and row.failures == 0, row
        scheduled = upstream.count("/ticks") - 1  # the first fetch was not scheduled
        # Every scheduled request is a recorded run, but a run killed midway (then run again) or one under way now.
        assert row.runs <= scheduled <= row.runs + 2, (row.runs, scheduled)
        times = sorted(upstream.times("/ticks"))[1:]
        close = [b - a for a, b in itertools.pairwise(times) if b - a < 1.0]  # two runs of one 2 s period
        assert len(close) <= 1, times  # at most the period whose run the kill cut short
        versions = _post(survivor, '{ dataset(id: "%s") { version } }' % dataset)["dataset"]["version"]
        assert versions >= 5


def test_processes_starting_at_once_on_a_new_postgres_database_all_make_it_there() -> None:
    """Several servers started together on an empty metadata database: each makes the tables it finds
    missing, and PostgreSQL refuses a second CREATE TABLE even after its own check found none (a
    server once failed to start so). One at a time, under an advisory lock, every one starts."""
    from storage import MetadataStore

    for _ in range(3):  # a race lost only now and then: a few fresh databases
        with scratch_postgres_database() as url:
            barrier = threading.Barrier(4)

            def start(barrier: threading.Barrier = barrier, url: str = url) -> int:
                barrier.wait()
                store = MetadataStore(url)
                try:
                    return len(store.list_datasets())
                finally:
                    store.close()

            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                assert [f.result() for f in [pool.submit(start) for _ in range(4)]] == [0, 0, 0, 0]


def test_on_sqlite_the_change_stamp_moves_with_dataset_writes_not_with_heartbeats_leases_or_jobs(
    tmp_path: Path,
) -> None:
    """The stamp that the record cache, the answer cache and persisted GETs' ETags trust: a heartbeat,
    a lease renewal or a job recorded by another process (every few seconds) leaves it; a dataset
    written by another process moves it, and the record kept in memory is read again."""
    url = f"sqlite:///{tmp_path / 'metadata.sqlite'}"
    a, b = (MetadataStore(url, owner=f"p{i}") for i in range(2))
    try:
        theirs = Processes(b.engine, "p1")
        theirs.join()
        dataset = b.reserve_dataset(wanted_id="kept", name="kept", source_id="uploads", origin={})
        b.mark_ready(dataset, version=1, row_count=3, columns=[], origin={}, made_by="UPLOAD")
        assert a.get_dataset(dataset).version == 1  # type: ignore[union-attr]
        stamp = a.change_stamp()
        assert stamp is not None
        assert theirs.beat()
        assert Lease(Leases(b.engine, "p1"), "sweep", 10).renew()
        assert b.start_job("job-1", kind="upload", steps={})
        assert a.change_stamp() == stamp
        renamed = b.rename_dataset(dataset, "renamed")
        assert renamed is not None
        assert a.change_stamp() != stamp
        assert a.get_dataset(dataset).name == "renamed"  # type: ignore[union-attr]
    finally:
        a.close()
        b.close()
