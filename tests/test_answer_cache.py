"""The answer cache: whole answers served again byte for byte (but `meta.cached` and `meta.elapsedMs`)
while every dataset they read is unchanged, and never after a change, in this process or another."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from support import (
    DATA,
    ROOT,
    Api,
    add_key,
    fresh_redis,
    make_settings,
    running_server,
    serving,
    upload_over_http,
    upload_request,
    wait_for,
)

from server.answers import AnswerCache

DESCRIBE = '{ dataset(id: "%s") { name rowCount describe(columns: ["tip", "day"]) { success data meta { cached elapsedMs cacheKey rowCount } } } }'
FRESH = '{ dataset(id: "%s") { name rowCount describe(columns: ["tip", "day"]) { data } } }'
ABOUT = '{ dataset(id: "%s") { name rowCount version } }'
REDIS_URL = "redis://127.0.0.1:6379/9"  # this module's own Redis database
_PATCHED = re.compile(rb'"(cached|elapsedMs)":(true|false|[-0-9.eE+]+)')


def answer_cache(api: Api) -> AnswerCache:
    """The app's answer-cache middleware (the app builds its stack on the first request)."""
    node: Any = api.client.app.middleware_stack  # type: ignore[attr-defined]
    while not isinstance(node, AnswerCache):
        node = node.app
    return node


def post(api: Api, query: str, variables: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
    response = api.client.post("/graphql", json={"query": query, "variables": variables or {}}, headers=headers)
    assert response.status_code == 200, response.text
    return response


def served(api: Api, query: str, **headers: str) -> tuple[dict[str, Any], bool]:
    """The answer's data, and whether the answer cache served it."""
    cache = answer_cache(api)
    hits = cache.hits
    body = post(api, query, **headers).json()
    assert "errors" not in body, body
    return body["data"], cache.hits > hits


@pytest.fixture(scope="module")
def tips(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with serving(make_settings(tmp_path_factory.mktemp("answers"))) as api:
        api.upload_ok(DATA / "tips.csv")
        yield api


def test_an_answer_whose_fields_finish_out_of_document_order_is_kept(tips: Api) -> None:
    """The second field is in the result cache already, so it is resolved while the first (a fresh
    describe, in a worker) still runs: the answer is kept all the same."""
    post(tips, '{ dataset(id: "tips") { count { meta { cached } } } }')
    query = """{ dataset(id: "tips") {
      describe(columns: ["size", "day"]) { meta { cached elapsedMs } } count { meta { cached } } } }"""
    first, served_first = served(tips, query)
    assert not served_first and first["dataset"]["count"]["meta"]["cached"] is True
    assert first["dataset"]["describe"]["meta"]["cached"] is False
    second, served_second = served(tips, query)
    assert served_second
    assert second["dataset"]["describe"]["meta"]["cached"] is True


def test_a_hit_is_the_uncached_answer_byte_for_byte_but_cached_and_elapsed(tips: Api) -> None:
    query = DESCRIBE.replace("describe(", "a: count { meta { cached } } describe(") % "tips"
    first = post(tips, query)
    hits = answer_cache(tips).hits
    second = post(tips, query)
    assert answer_cache(tips).hits == hits + 1
    assert first.headers["content-type"] == second.headers["content-type"]
    assert [m[1] for m in _PATCHED.findall(second.content) if m[0] == b"cached"] == [b"true", b"true"]
    assert _PATCHED.sub(rb'"\1":X', first.content) == _PATCHED.sub(rb'"\1":X', second.content)
    assert len(_PATCHED.findall(first.content)) == 3  # both results' cached, describe's elapsedMs
    assert json.loads(second.content)["data"]["dataset"]["describe"]["meta"]["elapsedMs"] >= 0


def test_variables_in_another_order_share_an_entry_and_other_values_do_not(tips: Api) -> None:
    query = "query($d: ID!, $c: [String!]) { dataset(id: $d) { describe(columns: $c) { data } } }"
    cache = answer_cache(tips)
    post(tips, query, {"d": "tips", "c": ["size"]})
    hits = cache.hits
    reordered = json.dumps({"variables": {"c": ["size"], "d": "tips"}, "query": query})
    tips.client.post("/graphql", content=reordered, headers={"content-type": "application/json"})
    assert cache.hits == hits + 1
    post(tips, query, {"d": "tips", "c": ["tip"]})
    post(tips, query.replace("$d: ID!, $c: [String!]", "$c: [String!], $d: ID!"), {"d": "tips", "c": ["size"]})
    assert cache.hits == hits + 1  # other values, another document


def test_bypass_and_refresh_are_never_answered_from_it(tips: Api) -> None:
    for mode in ("BYPASS", "REFRESH"):
        query = '{ dataset(id: "tips") { count(cache: %s) { data meta { cached } } } }' % mode
        for _ in range(2):
            data, hit = served(tips, query)
            assert hit is False and data["dataset"]["count"]["meta"]["cached"] is False
    variables = 'query($m: CacheMode) { dataset(id: "tips") { count(cache: $m) { data } } }'
    post(tips, variables, {"m": "BYPASS"})
    cache = answer_cache(tips)
    hits = cache.hits
    post(tips, variables, {"m": "BYPASS"})
    assert cache.hits == hits


def test_a_mutation_and_what_is_not_about_datasets_are_never_kept(tips: Api) -> None:
    cache = answer_cache(tips)
    for query in (
        'mutation { renameDataset(id: "tips", name: "tips") { success } }',
        "{ sources { id } }",
        "{ jobs { id } }",
        "{ plugins { name } }",
        "{ __schema { queryType { name } } }",
        '{ dataset(id: "tips") { export { success } } }',
        '{ dataset(id: "tips") { source { id } } }',
        '{ dataset(id: "tips") { describe(columns: ["nope"]) { success } } }',  # a failed result
    ):
        stored = cache.stored
        post(tips, query)
        post(tips, query)
        assert cache.stored == stored, query


def test_a_request_that_is_refused_stays_refused(tips: Api) -> None:
    long = "{ datasets { id } }" + " " * tips.settings.max_query_chars
    for _ in range(2):
        assert tips.client.post("/graphql", json={"query": long}).status_code == 413
    query = '{ dataset(id: "tips") { name } }'
    post(tips, query)
    wrong_type = tips.client.post(
        "/graphql", content=json.dumps({"query": query}), headers={"content-type": "text/plain"}
    )
    assert wrong_type.status_code == 400


@pytest.mark.parametrize("change", ["append", "replace", "refresh", "delete", "rename"])
def test_the_first_answer_after_a_change_is_computed_afresh(tmp_path: Path, change: str) -> None:
    with serving(make_settings(tmp_path)) as api:
        dataset = api.upload_ok(DATA / "tips.csv")
        other = api.upload_ok(DATA / "titanic.csv")
        query = FRESH % dataset
        listing = "{ datasets { id name rowCount } }"
        before, _ = served(api, query)
        assert served(api, query) == (before, True)
        assert served(api, listing)[1] is False and served(api, listing)[1] is True
        unrelated = ABOUT % other
        served(api, unrelated)
        if change == "append":
            rows = [
                {
                    "total_bill": 1.0,
                    "tip": 99.0,
                    "sex": "Male",
                    "smoker": "No",
                    "day": "Sun",
                    "time": "Dinner",
                    "size": 2,
                }
            ]
            payload = api.data(
                'mutation($r: JSON!) { appendRows(dataset: "%s", rows: $r) { success } }' % dataset, {"r": rows}
            )
            assert payload["appendRows"]["success"]
        elif change == "replace":
            content = (DATA / "tips.csv").read_bytes().splitlines(keepends=True)[:50]
            response = api.client.post("/graphql", **upload_request(b"".join(content), "tips.csv", replace=dataset))
            assert response.json()["data"]["uploadDataset"]["success"], response.text
        elif change == "refresh":  # what a plugin refresh or a re-import announces
            api.client.portal.call(api.client.app.state.resources.events.publish, "REFRESHED", dataset, 9, 0)  # type: ignore[union-attr, attr-defined]
        elif change == "delete":
            assert api.data('mutation { deleteDataset(id: "%s") { success } }' % dataset)["deleteDataset"]["success"]
        else:
            renamed = api.data('mutation { renameDataset(id: "%s", name: "Tips, renamed") { success } }' % dataset)
            assert renamed["renameDataset"]["success"]
        after, hit = served(api, query)
        assert hit is False
        if change in ("append", "replace"):
            assert after["dataset"]["rowCount"] != before["dataset"]["rowCount"]
            assert after["dataset"]["describe"]["data"] != before["dataset"]["describe"]["data"]
        elif change == "delete":
            assert after["dataset"] is None
        elif change == "rename":
            assert after["dataset"]["name"] == "Tips, renamed"
        assert served(api, listing)[1] is False  # the list read every dataset
        assert served(api, unrelated)[1] is True  # another dataset's answers stay


def test_a_linked_tables_answers_are_never_served_from_it(tmp_path: Path) -> None:
    with serving(make_settings(tmp_path, sources=str(ROOT / "sources.yaml"))) as api:
        linked = api.data('mutation { importTable(source: "shop", table: "orders", mode: LINK) { dataset { id } } }')
        dataset = linked["importTable"]["dataset"]["id"]
        query = '{ dataset(id: "%s") { count { data } } }' % dataset
        for _ in range(3):
            assert served(api, query)[1] is False
        assert answer_cache(api).stored == 0


def test_a_hit_still_spends_rate_budget(tmp_path: Path) -> None:
    with serving(make_settings(tmp_path, rate_limit="4/hour")) as api:
        query = "{ datasets { id } }"
        assert [api.client.post("/graphql", json={"query": query}).status_code for _ in range(5)] == [200] * 4 + [429]
        assert answer_cache(api).hits == 3


def test_a_hit_for_another_keys_scope_is_not_served(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys="on")
    first, second = add_key(settings.data_dir, "first"), add_key(settings.data_dir, "second")
    with serving(settings) as api:
        query = "{ datasets { id } }"
        assert served(api, query, authorization=f"Bearer {first}")[1] is False
        assert served(api, query, authorization=f"Bearer {first}")[1] is True
        assert served(api, query, authorization=f"Bearer {second}")[1] is False
        assert api.client.post("/graphql", json={"query": query}).status_code == 401


def test_its_memory_stays_within_the_setting(tmp_path: Path) -> None:
    with serving(make_settings(tmp_path, answer_cache_mb=1)) as api:
        cache = answer_cache(api)
        padding = "#" + "x" * 15_000 + "\n"
        for n in range(100):  # 100 answers of over 15 KB each: half again the budget
            post(api, padding + "{ n%d: datasets { id } }" % n)
        assert 0 < cache.used <= 1024 * 1024 and len(cache.entries) < 100
        assert served(api, padding + "{ n99: datasets { id } }")[1] is True  # the newest stays
        assert served(api, padding + "{ n0: datasets { id } }")[1] is False  # the oldest went first


def test_it_can_be_turned_off(tmp_path: Path) -> None:
    with serving(make_settings(tmp_path, answer_cache_mb=0)) as api:
        node: Any = api.client.app.middleware_stack  # type: ignore[attr-defined]
        assert api.data("{ datasets { id } }") == {"datasets": []}
        while hasattr(node, "app"):
            assert not isinstance(node, AnswerCache)
            node = node.app


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    with fresh_redis(REDIS_URL) as client:
        yield client


@pytest.mark.slow
def test_a_change_through_another_process_invalidates_this_ones_answer(
    tmp_path: Path, scratch_postgres: str, redis_db: redis.Redis
) -> None:
    shared = tmp_path / "shared-data"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    common = ("--data-dir", str(shared), "--cache-url", REDIS_URL, "--metadata-url", scratch_postgres)
    with running_server(tmp_path / "a", *common) as a, running_server(tmp_path / "b", *common) as b:
        dataset = upload_over_http(a, DATA / "tips.csv")
        query = {"query": ABOUT % dataset}

        def about(base: str) -> dict[str, Any]:
            response = httpx.post(base + "/graphql", json=query, timeout=30)
            assert response.status_code == 200, response.text
            return dict(response.json()["data"]["dataset"])

        before = about(a)
        assert about(a) == before  # now kept in A
        rename = {"query": 'mutation { renameDataset(id: "%s", name: "renamed in B") { success } }' % dataset}
        assert httpx.post(b + "/graphql", json=rename, timeout=30).json()["data"]["renameDataset"]["success"]
        wait_for(lambda: about(a)["name"] == "renamed in B", 2, "the change never reached A")
        rows = [
            {"total_bill": 1.0, "tip": 1.0, "sex": "Male", "smoker": "No", "day": "Sun", "time": "Dinner", "size": 2}
        ]
        append = {"query": 'mutation($r: JSON!) { appendRows(dataset: "%s", rows: $r) { success } }' % dataset,
                  "variables": {"r": rows}}  # fmt: skip
        assert httpx.post(b + "/graphql", json=append, timeout=30).json()["data"]["appendRows"]["success"]
        wait_for(lambda: about(a)["rowCount"] == before["rowCount"] + 1, 2, "the change never reached A")
