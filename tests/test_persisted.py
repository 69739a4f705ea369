"""Persisted documents: Apollo's APQ (hash first, then register), trusted documents by documentId (the
documents folder and `datagraph documents add`), persisted_only, the bounds, sharing across server
processes, and ETag / 304 for persisted queries sent by GET."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import Api, add_key, datagraph_cli, datagraph_main, make_settings, running_server, serving, wait_for
from test_answer_cache import answer_cache

ABOUT = "query About($id: ID!) { dataset(id: $id) { name rowCount version } }"
LIST = "{ datasets { id rowCount } }"
CSV = b"city,temp\nOslo,3\nLima,19\n"
APPEND = 'mutation($r: JSON!) { appendRows(dataset: "%s", rows: $r) { success } }'


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def apq(digest: str) -> dict[str, Any]:
    return {"persistedQuery": {"version": 1, "sha256Hash": digest}}


def post(api: Api, body: dict[str, Any]) -> httpx.Response:
    return api.client.post("/graphql", json=body)


def get(api: Api, params: dict[str, Any], **headers: str) -> httpx.Response:
    encoded = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    return api.client.get("/graphql", params=encoded, headers=headers)


def error(response: httpx.Response) -> dict[str, Any]:
    errors = response.json()["errors"]
    assert len(errors) == 1, errors
    found: dict[str, Any] = errors[0]
    return found


@pytest.fixture
def city(api: Api) -> str:
    return api.upload_ok(CSV, "cities.csv")


def test_apq_by_post_misses_then_registers_then_hits(api: Api, city: str) -> None:
    digest = sha(ABOUT)
    variables = {"id": city}
    miss = post(api, {"extensions": apq(digest), "variables": variables})
    assert miss.status_code == 200
    assert error(miss) == {"message": "PersistedQueryNotFound", "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"}}
    registered = post(api, {"query": ABOUT, "extensions": apq(digest), "variables": variables})
    assert registered.json()["data"]["dataset"]["rowCount"] == 2
    hit = post(api, {"extensions": apq(digest), "variables": variables})
    assert hit.json() == registered.json()
    assert api.client.app.state.web.documents.table.get(digest) == ABOUT  # type: ignore[attr-defined]


def test_apq_by_get_misses_then_registers_then_hits(api: Api, city: str) -> None:
    digest = sha(ABOUT)
    params = {"extensions": apq(digest), "variables": {"id": city}, "operationName": "About"}
    miss = get(api, params)
    assert miss.status_code == 200
    assert error(miss)["message"] == "PersistedQueryNotFound"
    assert get(api, {**params, "query": ABOUT}).json()["data"]["dataset"]["name"] == "cities"
    hit = get(api, params)
    assert hit.status_code == 200
    assert hit.json()["data"]["dataset"]["rowCount"] == 2


@pytest.mark.parametrize("where", ["post", "get"])
def test_a_hash_that_is_not_the_querys_is_refused_and_nothing_is_kept(api: Api, where: str) -> None:
    body = {"query": LIST, "extensions": apq(sha(LIST + " "))}
    response = post(api, body) if where == "post" else get(api, body)
    assert response.status_code == 400
    assert error(response) == {"message": "provided sha does not match query", "extensions": {"code": "BAD_INPUT"}}
    assert api.client.app.state.web.documents.table.count() == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("extensions", "words"),
    [
        ({"persistedQuery": {"version": 2, "sha256Hash": "0" * 64}}, "version 1"),
        ({"persistedQuery": {"version": 1, "sha256Hash": "not hex"}}, "sha256Hash"),
        ({"persistedQuery": "yes"}, "version 1"),
    ],
)
def test_a_malformed_persisted_query_is_bad_input(api: Api, extensions: dict[str, Any], words: str) -> None:
    response = post(api, {"extensions": extensions})
    assert response.status_code == 400
    assert error(response)["extensions"]["code"] == "BAD_INPUT"
    assert words in error(response)["message"]


def test_a_trusted_document_runs_by_document_id_from_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "documents"
    folder.mkdir()
    text = "{ datasets { id } }\r\n"  # the exact text, line ends and all, is what is hashed
    (folder / "list.graphql").write_bytes(text.encode())
    with serving(make_settings(tmp_path, documents_dir=str(folder))) as api:
        body = post(api, {"documentId": f"sha256:{sha(text)}"}).json()
        assert body == {"data": {"datasets": []}}
        by_get = get(api, {"documentId": f"sha256:{sha(text)}"})
        assert by_get.json() == {"data": {"datasets": []}}
        later = "query Later { datasets { name } }"
        (folder / "later.graphql").write_text(later)
        wait_for(
            lambda: "data" in post(api, {"documentId": f"sha256:{sha(later)}"}).json(), 10, "a new file was not read"
        )
        unknown = post(api, {"documentId": f"sha256:{sha('{ datasets { id name } }')}"})
        assert unknown.status_code == 200
        assert error(unknown)["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"
        assert str(tmp_path) not in unknown.text
        malformed = post(api, {"documentId": "md5:abc"})
        assert malformed.status_code == 400
        assert error(malformed)["extensions"]["code"] == "BAD_INPUT"


def test_documents_add_registers_documents_that_every_server_runs(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    first = tmp_path / "first.graphql"
    first.write_text(LIST)
    second = tmp_path / "second.graphql"
    second.write_text(ABOUT)
    added = datagraph_cli("documents", "add", str(first), str(second), "--data-dir", str(settings.data_dir)).stdout
    assert added.splitlines() == [f"sha256:{sha(LIST)}\t{first}", f"sha256:{sha(ABOUT)}\t{second}"]
    listed = datagraph_main("documents", "list", "--data-dir", str(settings.data_dir)).stdout
    assert f"sha256:{sha(ABOUT)}\ttrusted" in listed
    broken = tmp_path / "broken.graphql"
    broken.write_text("{ datasets { id ")
    refused = datagraph_main("documents", "add", str(broken), "--data-dir", str(settings.data_dir), check=False)
    assert refused.returncode != 0 and "not a GraphQL document" in refused.stderr
    with serving(settings) as api:
        assert post(api, {"documentId": f"sha256:{sha(LIST)}"}).json() == {"data": {"datasets": []}}


def test_persisted_only_refuses_other_documents_and_runs_registered_ones(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, persisted_only=True)
    trusted = tmp_path / "list.graphql"
    trusted.write_text(LIST)
    datagraph_main("documents", "add", str(trusted), "--data-dir", str(settings.data_dir))
    with serving(settings) as api:
        plain = post(api, {"query": "{ datasets { id name } }"})
        assert plain.status_code == 400
        assert error(plain)["extensions"]["code"] == "PERSISTED_QUERY_NOT_ALLOWED"
        other = "{ datasets { name } }"
        registration = post(api, {"query": other, "extensions": apq(sha(other))})
        assert error(registration)["extensions"]["code"] == "PERSISTED_QUERY_NOT_ALLOWED"
        assert api.client.app.state.web.documents.table.get(sha(other)) is None  # type: ignore[attr-defined]
        upload = api.upload_raw(CSV, "cities.csv")
        assert error(upload)["extensions"]["code"] == "PERSISTED_QUERY_NOT_ALLOWED"
        assert post(api, {"documentId": f"sha256:{sha(LIST)}"}).json() == {"data": {"datasets": []}}
        assert post(api, {"extensions": apq(sha(LIST))}).json() == {"data": {"datasets": []}}
        assert post(api, {"query": LIST}).json() == {"data": {"datasets": []}}  # exactly a registered document
        with api.client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
            ws.send_json({"type": "connection_init", "payload": {}})
            assert ws.receive_json() == {"type": "connection_ack"}
            ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": "{ datasets { name } }"}})
            refused = ws.receive_json()
            assert refused["type"] == "error"
            assert refused["payload"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_ALLOWED"
            ws.send_json({"id": "2", "type": "subscribe", "payload": {"query": LIST}})
            assert ws.receive_json() == {"id": "2", "type": "next", "payload": {"data": {"datasets": []}}}


def test_a_flood_of_distinct_apq_registrations_stays_within_the_limit(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, persisted_max_documents=5, max_query_chars=200, rate_limit="")
    trusted = tmp_path / "list.graphql"
    trusted.write_text(LIST)
    datagraph_main("documents", "add", str(trusted), "--data-dir", str(settings.data_dir))
    with serving(settings) as api:
        documents = api.client.app.state.web.documents  # type: ignore[attr-defined]
        for n in range(40):
            text = "{ datasets(limit: %d) { id } }" % (n + 1)
            assert "data" in post(api, {"query": text, "extensions": apq(sha(text))}).json()
            assert documents.table.count() <= 5
        kept = documents.table.listed()
        assert len(kept) == 5
        assert [d.kind for d in kept].count("trusted") == 1  # trusted documents are never evicted
        assert "limit: 40" in kept[-1].text  # the newest stay, the oldest made room
        assert len(documents._lru) <= 1_024
        assert (
            documents.table.get(sha("{ datasets(limit: 1) { id } }")) is None
        )  # (this process's LRU may still know it)
        huge = "{ datasets { id } }" + " " * 300
        too_long = post(api, {"query": huge, "extensions": apq(sha(huge))})
        assert too_long.status_code == 413
        assert error(too_long)["extensions"]["code"] == "TOO_LARGE"


def _shared_between(b: str, a: Api) -> None:
    """A document registered through one process runs through the other, both ways."""
    text = "query Shared { datasets { id } }"
    miss = httpx.post(b + "/graphql", json={"extensions": apq(sha(text))}, timeout=30)
    assert error(miss)["message"] == "PersistedQueryNotFound"
    assert post(a, {"query": text, "extensions": apq(sha(text))}).json() == {"data": {"datasets": []}}
    hit = httpx.get(b + "/graphql", params={"extensions": json.dumps(apq(sha(text)))}, timeout=30)
    assert hit.json() == {"data": {"datasets": []}}
    other = "query Other { datasets { name } }"
    assert httpx.post(b + "/graphql", json={"query": other, "extensions": apq(sha(other))}, timeout=30).is_success
    assert post(a, {"extensions": apq(sha(other))}).json() == {"data": {"datasets": []}}


def test_a_document_registered_in_one_server_process_runs_in_another(tmp_path: Path) -> None:
    """A real `datagraph serve` and this test's app share one data directory (its SQLite metadata file)."""
    settings = make_settings(tmp_path)
    (tmp_path / "b").mkdir()
    with (
        running_server(tmp_path / "b", "--data-dir", str(settings.data_dir), workers=None) as b,
        serving(settings) as a,
    ):
        _shared_between(b, a)


@pytest.mark.slow
def test_server_processes_sharing_a_postgresql_metadata_database_share_documents(
    tmp_path: Path, scratch_postgres: str
) -> None:
    settings = make_settings(tmp_path / "a", metadata_url=scratch_postgres)
    (tmp_path / "b").mkdir()
    common = ("--data-dir", str(tmp_path / "b" / "data"), "--metadata-url", scratch_postgres)
    with running_server(tmp_path / "b", *common, workers=None) as b, serving(settings) as a:
        _shared_between(b, a)


def test_a_persisted_get_carries_an_etag_that_answers_304_until_the_data_changes(api: Api, city: str) -> None:
    digest = sha(ABOUT)
    post(api, {"query": ABOUT, "extensions": apq(digest)})
    params = {"extensions": apq(digest), "variables": {"id": city}}
    first = get(api, params)
    tag = first.headers["etag"]
    assert first.status_code == 200 and tag.startswith('W/"')
    hits = answer_cache(api).hits
    again = get(api, params)  # from the answer cache this time: the same tag
    assert answer_cache(api).hits == hits + 1
    assert again.headers["etag"] == tag
    unchanged = get(api, params, **{"If-None-Match": tag})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert unchanged.headers["etag"] == tag
    other = get(api, {**params, "variables": {"id": "nope"}})
    assert other.headers["etag"] != tag  # other variables, another tag
    appended = api.data(APPEND % city, {"r": [{"city": "Pune", "temp": 30}]})
    assert appended["appendRows"]["success"]
    changed = get(api, params, **{"If-None-Match": tag})
    assert changed.status_code == 200
    assert changed.json()["data"]["dataset"]["rowCount"] == 3
    assert changed.headers["etag"] != tag
    assert get(api, params, **{"If-None-Match": changed.headers["etag"]}).status_code == 304


def test_the_dataset_list_gets_an_etag_that_a_new_dataset_changes(api: Api) -> None:
    post(api, {"query": LIST, "extensions": apq(sha(LIST))})
    params = {"extensions": apq(sha(LIST))}
    tag = get(api, params).headers["etag"]
    assert get(api, params, **{"If-None-Match": tag}).status_code == 304
    api.upload_ok(CSV, "cities.csv")
    assert get(api, params, **{"If-None-Match": tag}).status_code == 200


# A schedule changes no dataset version, so a tag made of the versions read would vouch for an old one.
@pytest.mark.parametrize(
    "text", ["{ sources { id } }", "{ jobs { id } }", "{ datasets { id } nope }", "{ datasets { id schedule } }"]
)
def test_answers_that_read_more_than_datasets_get_no_etag(api: Api, text: str) -> None:
    post(api, {"query": text, "extensions": apq(sha(text))})
    response = get(api, {"extensions": apq(sha(text))})
    assert "etag" not in response.headers
    assert get(api, {"extensions": apq(sha(text))}, **{"If-None-Match": "*"}).status_code != 304


def test_a_plain_post_pays_nothing_for_persisted_documents(api: Api) -> None:
    """A request that names no persisted document passes the middleware untouched (and untagged)."""
    response = api.client.get("/graphql", params={"query": LIST})
    assert response.json() == {"data": {"datasets": []}}
    assert "etag" not in response.headers


def test_in_production_mode_persisted_queries_go_by_get_and_other_get_queries_do_not(tmp_path: Path) -> None:
    with serving(make_settings(tmp_path, production="on")) as api:
        city = api.upload_ok(CSV, "cities.csv")
        plain = get(api, {"query": ABOUT, "variables": {"id": city}})
        assert "data" not in plain.json() or plain.json()["data"] is None, plain.text
        digest = sha(ABOUT)
        assert post(api, {"query": ABOUT, "extensions": apq(digest), "variables": {"id": city}}).status_code == 200
        params = {"extensions": apq(digest), "variables": {"id": city}}
        persisted = get(api, params)
        assert persisted.json()["data"]["dataset"]["rowCount"] == 2
        assert get(api, params, **{"If-None-Match": persisted.headers["etag"]}).status_code == 304
        # The persisted GET let nothing else through: a plain GET query right after is refused again.
        assert "data" not in get(api, {"query": ABOUT, "variables": {"id": city}}).json()


@pytest.mark.parametrize("accept", ["*/*", "text/html, */*"])
def test_a_persisted_get_without_a_key_is_refused_like_any_query(tmp_path: Path, accept: str) -> None:
    """The key check lets a GET of /graphql with no `query` through (the explorer page): one naming a
    persisted document must not run on that pass, by documentId or APQ hash."""
    key = add_key(tmp_path / "data", "alice")
    other = add_key(tmp_path / "data", "bob")
    with serving(make_settings(tmp_path, api_keys="on")) as api:
        registered = api.client.post(
            "/graphql", json={"query": LIST, "extensions": apq(sha(LIST))}, headers={"x-api-key": key}
        )
        assert registered.json() == {"data": {"datasets": []}}
        for params in ({"documentId": f"sha256:{sha(LIST)}"}, {"extensions": apq(sha(LIST))}):
            anonymous = get(api, params, accept=accept)
            assert anonymous.status_code == 401, anonymous.text
            assert error(anonymous)["extensions"]["code"] == "UNAUTHENTICATED"
            assert "etag" not in anonymous.headers
            keyed = get(api, params, accept=accept, **{"x-api-key": key})
            assert keyed.json() == {"data": {"datasets": []}}
            # Each key's tag is its own: another key's tag is no 304 for this one.
            tag = keyed.headers["etag"]
            assert get(api, params, accept=accept, **{"x-api-key": key, "if-none-match": tag}).status_code == 304
            theirs = get(api, params, accept=accept, **{"x-api-key": other, "if-none-match": tag})
            assert theirs.status_code == 200 and theirs.headers["etag"] != tag


def test_a_batch_registers_nothing_since_batches_do_not_run(api: Api) -> None:
    """One request (one unit of the rate budget) must not register a document per batch entry: 1,400
    of them took 4 s of database writes and evicted every other client's APQ documents, before the
    view refused the batch."""
    texts = ["{ datasets { id } # %d\n}" % i for i in range(50)]
    response = post_raw(api, json.dumps([{"query": t, "extensions": apq(sha(t))} for t in texts]))
    assert response.status_code in (200, 400) and "errors" in response.json()
    assert api.client.app.state.web.documents.table.count() == 0  # type: ignore[attr-defined]
    by_id = post_raw(api, json.dumps([{"documentId": f"sha256:{sha(texts[0])}"}]))
    assert "errors" in by_id.json() and "data" not in by_id.json()


def post_raw(api: Api, body: str) -> httpx.Response:
    return api.client.post("/graphql", content=body, headers={"content-type": "application/json"})


@pytest.mark.slow  # waits out SQLite's busy timeout (10 s)
def test_a_registration_the_database_cannot_take_still_runs_the_query(tmp_path: Path) -> None:
    """Another process holding the metadata database's write lock (a second server, `datagraph
    documents add`) made an APQ registration a bare 500 'Internal Server Error' in text/plain;
    registering is best effort: the query runs, and its client registers again later."""
    import sqlite3

    settings = make_settings(tmp_path)
    with serving(settings) as api:
        other = sqlite3.connect(settings.resolved_metadata_url.split("///", 1)[1], isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # the write lock, as another process's transaction holds it
            registered = post(api, {"query": LIST, "extensions": apq(sha(LIST))})
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert registered.json() == {"data": {"datasets": []}}
        assert api.client.app.state.web.documents.table.get(sha(LIST)) is None  # type: ignore[attr-defined]
        again = post(api, {"query": LIST, "extensions": apq(sha(LIST))})  # the lock is gone: kept now
        assert again.json() == {"data": {"datasets": []}}
        assert api.client.app.state.web.documents.table.get(sha(LIST)) == LIST  # type: ignore[attr-defined]
