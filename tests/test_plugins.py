"""API-pull plugins through the real app: hot loading from a folder, fetching into datasets with
versions, the shipped plugins against a scripted upstream on 127.0.0.1, and plugins that break.

Every address used is in 127.0.0.0/8; the blocked network in these settings is 127.0.0.2/32."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from promtext import sample
from starlette.testclient import TestClient
from support import ROOT, Api, make_settings
from upstream import Listener, Reply, Upstream

from server.app import create_app

PAYLOAD = "success error { code message } dataset { id name version rowCount source { id kind } columns { name dtype } } job { kind status }"
FAST_HTTP = {
    "http_backoff_s": 0.05, "http_backoff_cap_s": 0.1, "http_attempts": 3, "http_retry_after_max_s": 2,
    "http_blocked_networks": "127.0.0.2/32", "http_connect_timeout_s": 1, "http_read_timeout_s": 2,
}  # fmt: skip


def _api(client: TestClient) -> Api:
    """An Api over an app `_app` made (its settings are the app's own)."""
    return Api(client, client.app.state.resources.settings)  # type: ignore[attr-defined]


def _app(tmp_path: Path, folder: Path, **overrides: Any) -> TestClient:
    settings = make_settings(tmp_path, plugins=str(folder), **{**FAST_HTTP, **overrides})
    return TestClient(create_app(settings))


@pytest.fixture
def shipped(tmp_path: Path) -> Iterator[Api]:
    """An app of the test's own with the shipped plugins: for tests that fetch, or count what was fetched."""
    folder = tmp_path / "plugins"
    shutil.copytree(ROOT / "plugins", folder)
    with _app(tmp_path, folder) as client:
        yield _api(client)


@pytest.fixture(scope="module")
def shipped_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app with the shipped plugins for the module's tests that store nothing (listings, refusals)."""
    work = tmp_path_factory.mktemp("shipped")
    folder = work / "plugins"
    shutil.copytree(ROOT / "plugins", folder)
    with _app(work, folder) as client:
        yield _api(client)


def _fetch(api: Api, plugin: str, params: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = api.data(
        "mutation($p: String!, $params: JSON, $n: String) { fetchPlugin(plugin: $p, params: $params, name: $n) { %s } }"
        % PAYLOAD,
        {"p": plugin, "params": params, "n": name},
    )["fetchPlugin"]
    return payload


def _plugins(api: Api) -> dict[str, dict[str, Any]]:
    listed = api.data("{ plugins { name version description status reason params schema file } }")["plugins"]
    return {p["name"]: p for p in listed}


def _wait_for(api: Api, check: Any, seconds: float = 8) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + seconds
    while True:
        plugins = _plugins(api)
        if check(plugins):
            return plugins
        assert time.monotonic() < deadline, plugins
        time.sleep(0.2)


# ---- the shipped plugins ---------------------------------------------------------------------------------------


def test_the_shipped_plugins_are_listed_with_their_parameters(shipped_shared: Api) -> None:
    plugins = _plugins(shipped_shared)
    assert {"http_json", "http_csv", "open_meteo"} <= set(plugins)
    assert all(p["status"] == "AVAILABLE" and p["reason"] is None for p in plugins.values())
    url = next(p for p in plugins["http_json"]["params"] if p["name"] == "url")
    assert url == {
        "name": "url",
        "type": "string",
        "required": True,
        "default": None,
        "description": "The API's URL (http or https).",
    }
    sources = {s["id"]: s["kind"] for s in shipped_shared.data("{ sources { id kind } }")["sources"]}
    assert sources["plugins"] == "PLUGIN"


def test_http_json_flattens_records_into_a_dataset_to_analyse(shipped: Api, upstream: Upstream) -> None:
    records = [
        {"id": i, "user": {"name": f"u{i}", "city": "Lisbon" if i % 2 else "Porto"}, "score": i * 1.5}
        for i in range(10)
    ]
    upstream.always["/api"] = Reply(
        200, json.dumps({"data": {"items": records}}).encode(), {"Content-Type": "application/json"}
    )
    payload = _fetch(shipped, "http_json", {"url": upstream.url("/api"), "records_path": "data.items"}, name="Scores")
    assert payload["success"], payload["error"]
    dataset = payload["dataset"]
    assert (
        dataset["rowCount"] == 10
        and dataset["name"] == "Scores"
        and dataset["source"] == {"id": "plugins", "kind": "PLUGIN"}
    )
    assert {c["name"] for c in dataset["columns"]} == {"id", "user.name", "user.city", "score"}
    assert payload["job"] == {"kind": "fetchPlugin", "status": "SUCCEEDED"}
    grouped = shipped.data(
        '{ dataset(id: "%s") { groupBy(by: ["user.city"], aggregations: [{column: "score", fn: SUM}]) { rows { data } } } }'
        % dataset["id"]
    )["dataset"]["groupBy"]["rows"]["data"]
    assert grouped == [{"user.city": "Lisbon", "score_sum": 37.5}, {"user.city": "Porto", "score_sum": 30.0}]


def test_the_same_plugin_and_params_make_versions_of_one_dataset(shipped: Api, upstream: Upstream) -> None:
    params = {"url": upstream.url("/rows")}
    upstream.always["/rows"] = Reply(200, b'[{"a": 1}, {"a": 2}]')
    first = _fetch(shipped, "http_json", params)["dataset"]
    again = _fetch(shipped, "http_json", params)["dataset"]  # same data: the version stays
    assert (again["id"], again["version"]) == (first["id"], 1)
    upstream.always["/rows"] = Reply(200, b'[{"a": 1}, {"a": 2}, {"a": 3}]')
    changed = _fetch(shipped, "http_json", params)["dataset"]
    assert (changed["id"], changed["version"], changed["rowCount"]) == (first["id"], 2, 3)
    count = shipped.data('{ dataset(id: "%s") { count { data } } }' % first["id"])["dataset"]["count"]["data"]
    assert count == {"count": 3}
    other = _fetch(shipped, "http_json", {"url": upstream.url("/rows"), "records_path": ""})["dataset"]
    assert other["id"] == first["id"]  # the default spelled out is the same parameters
    assert len(shipped.data("{ datasets { id } }")["datasets"]) == 1


def test_an_unchanged_upstream_answers_304_and_nothing_is_ingested(shipped: Api, upstream: Upstream) -> None:
    upstream.script("/etag", Reply(200, b'[{"a": 1}]', {"ETag": '"v1"'}), Reply(304, b"", {"ETag": '"v1"'}))
    first = _fetch(shipped, "http_json", {"url": upstream.url("/etag")})["dataset"]
    second = _fetch(shipped, "http_json", {"url": upstream.url("/etag")})
    assert second["success"] and (second["dataset"]["id"], second["dataset"]["version"]) == (first["id"], 1)
    assert upstream.hits[-1].headers.get("If-None-Match") == '"v1"'


def test_http_csv_reads_csv_and_parquet(shipped: Api, upstream: Upstream, tmp_path: Path) -> None:
    upstream.always["/f.csv"] = Reply(200, b"day,tip\nSun,1.5\nSat,2.0\n")
    frame = pl.DataFrame({"x": [1, 2, 3]})
    frame.write_parquet(tmp_path / "f.parquet")
    upstream.always["/f.bin"] = Reply(200, (tmp_path / "f.parquet").read_bytes())
    csv = _fetch(shipped, "http_csv", {"url": upstream.url("/f.csv")})["dataset"]
    parquet = _fetch(shipped, "http_csv", {"url": upstream.url("/f.bin")})["dataset"]
    assert (csv["rowCount"], [c["dtype"] for c in csv["columns"]]) == (2, ["String", "Float64"])
    assert (parquet["rowCount"], parquet["columns"]) == (3, [{"name": "x", "dtype": "Int64"}])


def test_open_meteo_turns_the_hourly_answer_into_rows(shipped: Api, upstream: Upstream) -> None:
    # The shape Open-Meteo's archive API answers with (recorded), replayed on loopback.
    hours = [f"2025-01-01T{h:02d}:00" for h in range(24)]
    answer = {
        "latitude": 38.7, "longitude": -9.1, "timezone": "UTC", "hourly_units": {"time": "iso8601", "temperature_2m": "°C"},
        "hourly": {"time": hours, "temperature_2m": [10 + h / 4 for h in range(24)], "precipitation": [0.0] * 23 + [None]},
    }  # fmt: skip
    upstream.always["/v1/archive"] = Reply(200, json.dumps(answer).encode())
    params = {
        "city": "Lisbon",
        "start_date": "2025-01-01",
        "end_date": "2025-01-01",
        "base_url": upstream.url("/v1/archive"),
    }
    payload = _fetch(shipped, "open_meteo", params)
    assert payload["success"], payload["error"]
    assert payload["dataset"]["rowCount"] == 24
    types = {c["name"]: c["dtype"] for c in payload["dataset"]["columns"]}
    assert types == {
        "time": "Datetime",
        "temperature_2m": "Float64",
        "precipitation": "Float64",
        "latitude": "Float64",
        "longitude": "Float64",
    }
    sent = upstream.hits[-1].target
    assert (
        "latitude=38.72" in sent and "start_date=2025-01-01" in sent and "hourly=temperature_2m%2Cprecipitation" in sent
    )


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({}, 'Parameter "start_date" is required'),
        ({"start_date": "2025-01-01", "end_date": "yesterday"}, '"end_date" must be a date'),
        (
            {"start_date": "2025-01-01", "end_date": "2025-01-02", "latitude": 100, "longitude": 0},
            '"latitude" must be at most 90',
        ),
        ({"start_date": "2025-01-01", "end_date": "2025-01-02", "colour": "red"}, 'Unknown parameter "colour"'),
    ],
)
def test_parameters_are_checked_before_fetch_runs(
    shipped_shared: Api, upstream: Upstream, params: dict[str, Any], words: str
) -> None:
    payload = _fetch(shipped_shared, "open_meteo", {**params, "base_url": upstream.url("/never")})
    assert payload["error"]["code"] == "BAD_INPUT" and words in payload["error"]["message"], payload["error"]
    assert upstream.count("/never") == 0


def test_flaky_upstreams_are_retried_and_counted(shipped: Api, upstream: Upstream) -> None:
    upstream.script("/flaky", Reply(503), Reply(429, headers={"Retry-After": "1"}), Reply(200, b'[{"a": 1}]'))
    started = time.monotonic()
    payload = _fetch(shipped, "http_json", {"url": upstream.url("/flaky")})
    assert payload["success"], payload["error"]
    assert upstream.count("/flaky") == 3 and time.monotonic() - started >= 1.0  # Retry-After honoured
    http = shipped.client.get("/readyz").json()["plugins"]["http"]
    assert http["retries"] == 2 and http["status"] == {"200": 1, "429": 1, "503": 1}
    metrics = shipped.client.get("/metrics").text
    for status in ("200", "429", "503"):
        assert sample(metrics, "datagraph_upstream_responses_total", status=status) == 1
    for status in ("429", "503"):  # each failed try caused one retry
        assert sample(metrics, "datagraph_upstream_retries_total", status=status) == 1
    assert sample(metrics, "datagraph_plugin_fetches_total", plugin="http_json", outcome="ok") == 1
    upstream.always["/gone"] = Reply(404)
    missing = _fetch(shipped, "http_json", {"url": upstream.url("/gone")})
    assert (
        missing["error"]["code"] == "BAD_INPUT"
        and "404" in missing["error"]["message"]
        and upstream.count("/gone") == 1
    )
    metrics = shipped.client.get("/metrics").text
    assert sample(metrics, "datagraph_plugin_fetches_total", plugin="http_json", outcome="BAD_INPUT") == 1
    assert sample(metrics, "datagraph_upstream_retries_total", status="404") == 0


def test_a_redirect_into_a_blocked_network_is_refused_without_a_packet_sent(
    shipped: Api, upstream: Upstream, listener: Listener
) -> None:
    upstream.always["/go"] = Reply(302, headers={"Location": f"http://127.0.0.2:{listener.port}/meta"})
    payload = _fetch(shipped, "http_json", {"url": upstream.url("/go")})
    assert payload["error"]["code"] == "BAD_INPUT" and "http_blocked_networks" in payload["error"]["message"]
    assert listener.accepted == 0
    assert shipped.data("{ datasets { id } }")["datasets"] == []


def test_a_huge_upstream_body_is_cut_at_the_cap_and_nothing_is_stored(tmp_path: Path, upstream: Upstream) -> None:
    folder = tmp_path / "plugins"
    shutil.copytree(ROOT / "plugins", folder)
    upstream.always["/big"] = Reply(200, b"[" + b'{"a": 1},' * 200_000 + b'{"a": 1}]')
    with _app(tmp_path, folder, http_max_response_mb=1) as client:
        api = _api(client)
        payload = _fetch(api, "http_json", {"url": upstream.url("/big")})
        assert payload["error"]["code"] == "TOO_LARGE" and "http_max_response_mb" in payload["error"]["message"]
        assert api.data("{ datasets { id } }")["datasets"] == []


# ---- hot loading and broken plugins ---------------------------------------------------------------------------

PLUGIN = """
import polars as pl
from datagraph.plugin import DataSourcePlugin, Param

class Numbers(DataSourcePlugin):
    name = "numbers"
    version = "{version}"
    description = "Counts up."
    params = (Param("n", int, min=1, max=1000),)

    async def fetch(self, params, http):
        return pl.DataFrame({{"i": list(range(params["n"]))}})
"""


def test_plugins_appear_change_and_go_while_the_server_runs(tmp_path: Path) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    with _app(tmp_path, folder) as client:
        api = _api(client)
        assert _plugins(api) == {}
        (folder / "numbers.py").write_text(PLUGIN.format(version="1.0"))
        plugins = _wait_for(api, lambda p: "numbers" in p)
        assert plugins["numbers"]["version"] == "1.0" and plugins["numbers"]["file"] == "numbers.py"
        assert _fetch(api, "numbers", {"n": 5})["dataset"]["rowCount"] == 5
        (folder / "numbers.py").write_text(
            PLUGIN.format(version="2.0").replace('range(params["n"])', 'range(params["n"] * 2)')
        )
        _wait_for(api, lambda p: p.get("numbers", {}).get("version") == "2.0")
        assert _fetch(api, "numbers", {"n": 5})["dataset"]["rowCount"] == 10  # the new code, atomically
        (folder / "numbers.py").unlink()
        _wait_for(api, lambda p: "numbers" not in p)
        gone = _fetch(api, "numbers", {"n": 5})
        assert gone["error"]["code"] == "NOT_FOUND"


BROKEN = {
    "syntax.py": "def broken(:\n",
    "raises.py": "raise RuntimeError('no API key configured')\n",
    "empty.py": "X = 1\n",
    "noname.py": "from datagraph.plugin import DataSourcePlugin\nclass P(DataSourcePlugin):\n    name = 'Bad Name'\n    async def fetch(self, params, http):\n        return None\n",
}


def test_broken_files_are_listed_unavailable_and_the_rest_keep_working(tmp_path: Path) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    for file, code in BROKEN.items():
        (folder / file).write_text(code)
    (folder / "numbers.py").write_text(PLUGIN.format(version="1.0"))
    with _app(tmp_path, folder) as client:
        api = _api(client)
        plugins = _plugins(api)
        assert plugins["numbers"]["status"] == "AVAILABLE"
        reasons = {name: p["reason"] for name, p in plugins.items() if p["status"] == "UNAVAILABLE"}
        assert set(reasons) == {"syntax", "raises", "empty", "noname"}
        assert reasons["raises"] == "RuntimeError: no API key configured"
        assert "SyntaxError" in reasons["syntax"] and "no DataSourcePlugin" in reasons["empty"]
        assert "lower-case" in reasons["noname"]
        assert str(tmp_path) not in json.dumps(plugins)
        refused = _fetch(api, "raises", {})
        assert refused["error"]["code"] == "BAD_INPUT" and "unavailable" in refused["error"]["message"]
        assert _fetch(api, "numbers", {"n": 3})["success"]


MISBEHAVING = """
import asyncio, time
import polars as pl
from datagraph.plugin import DataSourcePlugin, Param

class Hangs(DataSourcePlugin):
    name = "hangs"
    async def fetch(self, params, http):
        await asyncio.sleep(3600)

class Blocks(DataSourcePlugin):
    name = "blocks"
    def fetch(self, params, http):
        while True:
            time.sleep(0.01)

class Eats(DataSourcePlugin):
    name = "eats"
    def fetch(self, params, http):
        hog = [bytearray(8 << 30)]  # far past the worker's 2 GiB cap: refused at once, however busy the machine
        return pl.DataFrame({"n": [len(hog)]})

class Garbage(DataSourcePlugin):
    name = "garbage"
    async def fetch(self, params, http):
        return [1, 2, 3]

class Fails(DataSourcePlugin):
    name = "fails"
    async def fetch(self, params, http):
        raise ValueError("the upstream changed its format")

class Typed(DataSourcePlugin):
    name = "typed"
    schema = {"when": "Date", "value": "Float64"}
    async def fetch(self, params, http):
        return pl.DataFrame({"when": ["2025-01-01"], "value": [1.0]})

class Quick(DataSourcePlugin):
    name = "quick"
    async def fetch(self, params, http):
        return pl.DataFrame({"n": [1]})

class Slow(DataSourcePlugin):
    name = "slow"
    params = (Param("tag", str),)
    async def fetch(self, params, http):
        started = time.time()
        await asyncio.sleep(2.0)
        return pl.DataFrame({"tag": [params["tag"]], "started": [started], "ended": [time.time()]})
"""


@pytest.fixture
def misbehaving(tmp_path: Path) -> Iterator[Api]:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "misbehaving.py").write_text(MISBEHAVING)
    # Two workers, as the tests are about the pool: fetches run side by side, and one that is killed
    # at its deadline leaves the other worker ready for the next fetch.
    with _app(tmp_path, folder, plugin_timeout_s=4, worker_memory_mb=2048, workers=2, worker_idle_s=0) as client:
        api = _api(client)
        # The 4 s deadlines are the plugins' own, not the workers' start-up; roomy, so that a loaded
        # machine does not turn the 2 s fetches into timeouts.
        api.warm_workers()
        yield api


@pytest.mark.parametrize(
    ("plugin", "code", "words"),
    [
        ("hangs", "TIMEOUT", "within 4 s"),
        ("blocks", "TIMEOUT", "within 4 s"),
        ("eats", "TOO_LARGE", "memory"),
        ("garbage", "BAD_INPUT", "returned list, not a DataFrame"),
        ("fails", "BAD_INPUT", "ValueError: the upstream changed its format"),
        ("typed", "BAD_INPUT", "when is String, not Date"),
    ],
)
def test_a_misbehaving_plugin_answers_a_clear_problem_and_stores_nothing(
    misbehaving: Api, plugin: str, code: str, words: str
) -> None:
    started = time.monotonic()
    payload = _fetch(misbehaving, plugin, {})
    assert payload["error"]["code"] == code and words in payload["error"]["message"], payload["error"]
    assert time.monotonic() - started < 20
    assert misbehaving.data("{ datasets { id } }")["datasets"] == []
    jobs = misbehaving.data("{ jobs { kind status } }")["jobs"]
    assert jobs == [{"kind": "fetchPlugin", "status": "FAILED"}]
    # The server and its workers carry on (a fetch with no wait of its own: the 4 s deadline is the
    # misbehaving plugins', and a loaded machine must not make the check itself time out).
    after = _fetch(misbehaving, "quick", {})
    assert after["success"], after["error"]


def test_several_fetches_in_one_request_run_in_parallel(misbehaving: Api) -> None:
    answers = misbehaving.data(
        'mutation { fetchPlugins(fetches: [{plugin: "slow", params: {tag: "a"}}, {plugin: "slow", params: {tag: "b"}}]) { %s } }'
        % PAYLOAD
    )["fetchPlugins"]
    assert [a["success"] for a in answers] == [True, True]
    assert answers[0]["dataset"]["id"] != answers[1]["dataset"]["id"]
    spans = []
    for a in answers:
        rows = misbehaving.data('{ dataset(id: "%s") { rows { data } } }' % a["dataset"]["id"])
        row = rows["dataset"]["rows"]["data"][0]
        spans.append((row["started"], row["ended"]))
    (a_start, a_end), (b_start, b_end) = spans
    assert a_start < b_end and b_start < a_end, f"the two fetches did not overlap: {spans}"


TIMED = """
import polars as pl
from datagraph.plugin import DataSourcePlugin, Param

class Ticks(DataSourcePlugin):
    name = "ticks"
    refresh_s = 1
    params = (Param("url", str),)
    async def fetch(self, params, http):
        return pl.DataFrame(await http.get_json(params["url"]))

class Polite(DataSourcePlugin):
    name = "polite"
    cache_ttl_s = 600
    params = (Param("url", str),)
    async def fetch(self, params, http):
        return pl.DataFrame(await http.get_json(params["url"]))
"""


def test_refresh_and_cache_ttl_are_honoured(tmp_path: Path, upstream: Upstream) -> None:
    import itertools

    ticks = itertools.count()
    upstream.always["/tick"] = lambda _: Reply(200, json.dumps([{"n": next(ticks)}]).encode())
    upstream.always["/slow-api"] = Reply(200, b'[{"n": 1}]')
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "timed.py").write_text(TIMED)
    with _app(tmp_path, folder) as client:
        api = _api(client)
        first = _fetch(api, "ticks", {"url": upstream.url("/tick")})["dataset"]
        assert first["version"] == 1
        deadline = time.monotonic() + 8
        while api.data('{ dataset(id: "%s") { version } }' % first["id"])["dataset"]["version"] < 3:
            assert time.monotonic() < deadline, "the dataset was not refreshed every second"
            time.sleep(0.2)
        polite = [_fetch(api, "polite", {"url": upstream.url("/slow-api")})["dataset"]["id"] for _ in range(3)]
        assert len(set(polite)) == 1 and upstream.count("/slow-api") == 1


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path, upstream: Upstream) -> None:
    section = (ROOT / "docs/plugins.md").read_text("utf-8").split("# Plugins", 1)[1].split("\n## ", 1)[0]
    plugin = section.split("```python\n", 1)[1].split("```", 1)[0]
    queries = [block.split("```", 1)[0] for block in section.split("```gql\n")[1:]]
    assert len(plugin.splitlines()) <= 25 and len(queries) == 3
    answer = {"amount": 1.0, "base": "EUR", "date": "2025-06-02", "rates": {"USD": 1.14, "GBP": 0.84, "JPY": 163.5}}
    upstream.always["/latest"] = Reply(200, json.dumps(answer).encode())
    folder = tmp_path / "plugins"
    folder.mkdir()
    # The walkthrough's plugin as written, but pointed at the local server (no internet here).
    (folder / "rates.py").write_text(plugin.replace("https://api.frankfurter.app/latest", upstream.url("/latest")))
    with _app(tmp_path, folder) as client:
        api = _api(client)
        listed = api.data(queries[0])["plugins"]
        assert [(p["name"], p["status"]) for p in listed] == [("rates", "AVAILABLE")]
        fetched = api.data(queries[1])["fetchPlugin"]
        assert fetched["success"], fetched["error"]
        assert fetched["dataset"]["id"] == "eur-rates" and fetched["dataset"]["rowCount"] == 3
        assert api.data(queries[2])["dataset"]["filter"]["count"]["data"] == {"count": 2}
    assert "from=EUR" in upstream.hits[-1].target


SMALL = """
import polars as pl
from datagraph.plugin import DataSourcePlugin, Param

class SyncJson(DataSourcePlugin):
    name = "sync_json"
    params = (Param("url", str), Param("scale", float, required=False, default=1.0))
    def fetch(self, params, http):  # a plain def: http blocks
        return pl.DataFrame(http.get_json(params["url"])).with_columns(pl.col("a") * params["scale"])
"""


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Api]:
    """An app whose plugins folder holds SMALL, in small.py."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "small.py").write_text(SMALL)
    with _app(tmp_path, folder) as client:
        yield _api(client)


def test_a_plain_def_fetch_gets_a_blocking_http_client_that_works(small: Api, upstream: Upstream) -> None:
    upstream.always["/a"] = Reply(200, b'[{"a": 1}, {"a": 2}]')
    first = _fetch(small, "sync_json", {"url": upstream.url("/a"), "scale": 2})
    assert first["success"], first["error"]
    data = small.data('{ dataset(id: "%s") { slice(limit: 2) { rows { data } } } }' % first["dataset"]["id"])
    assert data["dataset"]["slice"]["rows"]["data"] == [{"a": 2.0}, {"a": 4.0}]


def test_parameters_equal_in_value_name_the_same_dataset(small: Api, upstream: Upstream) -> None:
    upstream.always["/a"] = Reply(200, b'[{"a": 1}, {"a": 2}]')
    first = _fetch(small, "sync_json", {"url": upstream.url("/a"), "scale": 2})
    same = _fetch(small, "sync_json", {"url": upstream.url("/a"), "scale": 2.0})  # 2 and 2.0: one dataset
    assert (same["dataset"]["id"], same["dataset"]["version"]) == (first["dataset"]["id"], 1)


def test_a_plugin_name_clash_is_listed_and_resolved_again_when_the_winner_goes(tmp_path: Path) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "small.py").write_text(SMALL)
    (folder / "zz_dup.py").write_text(SMALL)  # defines sync_json again: small.py keeps the name
    with _app(tmp_path, folder) as client:
        api = _api(client)
        plugins = _plugins(api)
        assert plugins["sync_json"]["file"] == "small.py" and plugins["zz_dup"]["status"] == "UNAVAILABLE"
        assert "already used by small.py" in plugins["zz_dup"]["reason"]
        (folder / "small.py").unlink()
        _wait_for(api, lambda p: p.get("sync_json", {}).get("file") == "zz_dup.py")


def test_a_secret_goes_only_to_its_hosts_and_jobs_never_show_header_values(
    shipped: Api, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAGRAPH_PLUGIN_TOKEN", "s3cret-value")
    monkeypatch.setenv("DATAGRAPH_PLUGIN_TOKEN_HOSTS", "api.example")  # not 127.0.0.1
    upstream.always["/a"] = Reply(200, b'[{"a": 1}, {"a": 2}]')
    secret = {"Authorization": "${DATAGRAPH_PLUGIN_TOKEN}"}
    leak = _fetch(shipped, "http_json", {"url": upstream.url("/a"), "headers": secret})
    assert leak["error"]["code"] == "BAD_INPUT" and "DATAGRAPH_PLUGIN_TOKEN_HOSTS" in leak["error"]["message"]
    assert all("Authorization" not in h.headers for h in upstream.hits)
    assert _fetch(shipped, "http_json", {"url": upstream.url("/a"), "headers": {"X-Key": "literal-key"}})["success"]
    assert upstream.hits[-1].headers.get("X-Key") == "literal-key"
    steps = json.dumps(shipped.data("{ jobs { steps } }")["jobs"])
    assert "literal-key" not in steps and "s3cret" not in steps and "***" in steps


def test_a_304_to_a_first_fetch_is_a_clear_problem(shipped_shared: Api, upstream: Upstream) -> None:
    upstream.always["/fresh"] = Reply(304)
    fresh = _fetch(shipped_shared, "http_json", {"url": upstream.url("/fresh")})
    assert fresh["error"]["code"] == "BAD_INPUT" and "304" in fresh["error"]["message"]


def test_failed_fetches_are_counted_too(shipped: Api, upstream: Upstream) -> None:
    upstream.always["/down"] = Reply(503)
    assert _fetch(shipped, "http_json", {"url": upstream.url("/down")})["error"]["code"] == "SOURCE_UNAVAILABLE"
    assert upstream.count("/down") == 3  # http_attempts
    http = shipped.client.get("/readyz").json()["plugins"]["http"]
    assert http["retries"] == 2 and http["status"] == {"503": 3}
