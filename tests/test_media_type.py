"""The GraphQL-over-HTTP response media types: `Accept: application/graphql-response+json` answers in
it with the spec's status codes, `application/json` (or no Accept, or `*/*`) as always, and every
refusal made before GraphQL runs answers in the type the client accepted, with an `extensions.code`.
The real clients (Apollo, urql, graphql-http's audits) are in test_clients.py."""

from __future__ import annotations

import gc
import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import Api, add_key, make_settings, serving, upload_request

from server.answers import AnswerCache
from server.responses import GRAPHQL_RESPONSE, JSON, negotiate

GQL_TYPE = "application/graphql-response+json; charset=utf-8"
APOLLO_ACCEPT = "application/graphql-response+json,application/json;q=0.9"  # what Apollo Client 4 sends
TYPES = {"graphql-response": (APOLLO_ACCEPT, GQL_TYPE), "json": ("application/json", "application/json")}


@pytest.mark.parametrize(
    ("accept", "answered"),
    [
        ("", JSON),
        ("*/*", JSON),
        ("application/json", JSON),
        ("application/*", JSON),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", JSON),  # a browser's
        (APOLLO_ACCEPT, GRAPHQL_RESPONSE),
        ("application/graphql-response+json, application/graphql+json, application/json", GRAPHQL_RESPONSE),  # urql
        ("application/json, application/graphql-response+json", JSON),  # a tie: the first listed
        ("application/json;q=0.5, application/graphql-response+json", GRAPHQL_RESPONSE),
        ("APPLICATION/GRAPHQL-RESPONSE+JSON", GRAPHQL_RESPONSE),
        ("application/graphql-response+json;q=0, application/json;q=0.1", JSON),
        ("text/plain", None),
        ("application/json;q=0", None),
        ("application/json;q=abc", None),
        ("application/xml, text/csv", None),
    ],
)
def test_accept_headers_are_negotiated_by_quality_then_order(accept: str, answered: str | None) -> None:
    assert negotiate(accept.encode()) == answered


def _post(api: Api, body: Any, accept: str | None, **headers: str) -> httpx.Response:
    if accept is not None:
        headers["accept"] = accept
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return api.client.post("/graphql", content=content, headers={"content-type": "application/json", **headers})


def _errors(response: httpx.Response, content_type: str, *, coded: bool = True) -> list[dict[str, Any]]:
    """The answer's GraphQL errors, after checking its media type and that each has a code (`coded`)."""
    assert response.headers["content-type"] == content_type, response.headers
    errors: list[dict[str, Any]] = response.json()["errors"]
    assert errors and (not coded or all(e["extensions"]["code"] for e in errors)), errors
    return errors


INVALID = {
    "parse": {"query": "{"},
    "validation": {"query": "{ noSuchField }"},
    "variables": {"query": "query($id: ID!) { dataset(id: $id) { id } }", "variables": {"id": None}},
}


@pytest.mark.parametrize("kind", INVALID)
def test_a_request_that_never_runs_is_400_without_data_in_graphql_response_json(shared_api: Api, kind: str) -> None:
    response = _post(shared_api, INVALID[kind], APOLLO_ACCEPT)
    assert response.status_code == 400
    assert [e["extensions"]["code"] for e in _errors(response, GQL_TYPE)] == ["BAD_INPUT"]
    assert "data" not in response.json()


@pytest.mark.parametrize("kind", INVALID)
@pytest.mark.parametrize("accept", [None, "application/json", "*/*"])
def test_in_application_json_it_stays_200_with_data_null(shared_api: Api, kind: str, accept: str | None) -> None:
    response = _post(shared_api, INVALID[kind], accept)
    assert response.status_code == 200
    (error,) = _errors(response, "application/json", coded=False)
    assert set(error) <= {"message", "locations"}  # as always (and as over a websocket)
    assert response.json()["data"] is None


def test_a_field_error_keeps_200_and_its_data_entry_in_both_types(shared_api: Api) -> None:
    # `datasets` is non-null: its error makes the whole data null, and the request still ran.
    query = {"query": "{ datasets(limit: 100000000) { id } }"}
    for accept, content_type in TYPES.values():
        response = _post(shared_api, query, accept)
        assert response.status_code == 200
        assert _errors(response, content_type)[0]["path"] == ["datasets"]
        assert response.json()["data"] is None


def test_a_good_query_is_200_in_the_type_asked_for(shared_api: Api) -> None:
    for accept, content_type in TYPES.values():
        response = _post(shared_api, {"query": "{ sources { id } }"}, accept)
        assert response.status_code == 200 and response.headers["content-type"] == content_type
        assert response.json()["data"]["sources"][0] == {"id": "uploads"}


def test_a_mutation_by_get_is_405_in_graphql_response_json(shared_api: Api) -> None:
    params = {"query": 'mutation { deleteDataset(id: "x") { success } }'}
    refused = shared_api.client.get("/graphql", params=params, headers={"accept": APOLLO_ACCEPT})
    assert refused.status_code == 405 and refused.headers["allow"] == "POST"
    assert _errors(refused, GQL_TYPE)[0]["extensions"]["code"] == "BAD_INPUT"
    as_before = shared_api.client.get("/graphql", params=params, headers={"accept": "application/json"})
    assert as_before.status_code == 400 and _errors(as_before, "application/json")


def test_an_accept_the_server_cannot_meet_is_406_and_the_explorer_page_still_opens(shared_api: Api) -> None:
    refused = _post(shared_api, {"query": "{ sources { id } }"}, "text/plain")
    assert refused.status_code == 406
    assert "application/graphql-response+json" in _errors(refused, "application/json")[0]["message"]
    by_get = shared_api.client.get("/graphql", params={"query": "{ sources { id } }"}, headers={"accept": "text/csv"})
    assert by_get.status_code == 406
    page = shared_api.client.get("/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, str]]:
    """An app with small limits and API keys on, and a key to it."""
    settings = make_settings(tmp_path_factory.mktemp("strict"), max_request_kb=4, max_query_chars=500, api_keys="on")
    key = add_key(settings.data_dir, "client")
    with serving(settings) as app:
        yield app, key


def _refusals(api: Api, key: str, accept: str) -> dict[str, httpx.Response]:
    """One of each refusal made before GraphQL runs, asked with `accept`."""
    with_key = {"x-api-key": key}
    deep = b'{"query": "{ sources { id } }", "variables": {"v": ' + b"[" * 200 + b"]" * 200 + b"}}"
    return {
        "key": _post(api, {"query": "{ sources { id } }"}, accept),
        "size": _post(api, {"query": "{ sources { id } }", "v": "x" * 5000}, accept, **with_key),
        "long": _post(api, {"query": "{ sources { id } }" + " " * 600}, accept, **with_key),
        "malformed": _post(api, b"{not json", accept, **with_key),
        "deep": _post(api, deep, accept, **with_key),
    }


@pytest.mark.parametrize("kind", TYPES)
def test_every_refusal_before_graphql_answers_in_the_accepted_type_with_a_code(
    strict: tuple[Api, str], kind: str
) -> None:
    accept, content_type = TYPES[kind]
    answers = _refusals(*strict, accept)
    expected = {
        "key": (401, "UNAUTHENTICATED"),
        "size": (413, "TOO_LARGE"),
        "long": (413, "TOO_LARGE"),
        "malformed": (400, "BAD_INPUT"),
        "deep": (400, "BAD_INPUT"),
    }
    for what, (status, code) in expected.items():
        response = answers[what]
        assert response.status_code == status, (what, response.text)
        assert [e["extensions"]["code"] for e in _errors(response, content_type)] == [code], what


def test_a_spent_rate_limit_a_wrong_host_and_a_cross_site_upload_answer_in_the_accepted_type(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, rate_limit="2/minute")
    with serving(settings) as api:
        for _ in range(2):
            assert _post(api, {"query": "{ sources { id } }"}, None).status_code == 200
        for accept, content_type in TYPES.values():
            spent = _post(api, {"query": "{ sources { id } }"}, accept)
            assert spent.status_code == 429 and spent.headers["retry-after"]
            assert _errors(spent, content_type)[0]["extensions"]["code"] == "RATE_LIMITED"
            elsewhere = _post(api, {"query": "{ sources { id } }"}, accept, host="evil.test")
            assert elsewhere.status_code == 421
            assert _errors(elsewhere, content_type)[0]["extensions"]["code"] == "BAD_INPUT"
            # multipart with no header a browser needs a preflight for (an API key would be one)
            cross_site = api.client.post("/graphql", **upload_request(b"a\n1\n", "a.csv", headers={"accept": accept}))
            assert cross_site.status_code == 400
            assert _errors(cross_site, content_type)[0]["extensions"]["code"] == "BAD_INPUT"


def test_a_cached_answer_is_served_in_the_type_each_request_asked_for(api: Api) -> None:
    dataset = api.upload_ok(b"city,temp\nOslo,3\nLima,19\n", "cities.csv")
    query = {"query": '{ dataset(id: "%s") { rows { data meta { cached } } } }' % dataset}
    seen = []
    for accept, content_type in [*TYPES.values(), *TYPES.values()]:
        response = _post(api, query, accept)
        assert response.status_code == 200 and response.headers["content-type"] == content_type
        seen.append(response.json()["data"]["dataset"]["rows"]["meta"]["cached"])
    # Each type's first answer is computed (the second's from the result cache), then kept for that
    # type alone: the answer cache serves each its own.
    node: Any = api.client.app.middleware_stack  # type: ignore[attr-defined]
    while not isinstance(node, AnswerCache):
        node = node.app
    assert seen == [False, True, True, True] and (node.stored, node.hits) == (2, 2)


def test_long_accept_headers_are_answered_and_not_kept(shared_api: Api) -> None:
    """The server reads Accept headers of any length (uvicorn takes 1 MB ones); the negotiation memo
    must not keep them: 80 distinct 1 MB headers held 72 MB of a server's memory until it stopped."""
    filler = "x/y;q=0.1," * 10_000  # 100 KB
    accept = f"{filler}application/graphql-response+json;q=0.2,application/json;q=0.05"
    response = shared_api.client.post("/graphql", json={"query": "{ datasets { id } }"}, headers={"accept": accept})
    assert response.status_code == 200 and response.headers["content-type"] == GQL_TYPE
    assert negotiate(("x/y," * 50_000 + "application/json").encode()) == JSON
    headers = [f"{filler}application/json;q=0.5,{i}/z".encode() for i in range(40)]
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for header in headers:
            assert negotiate(bytes(bytearray(header))) == JSON  # a fresh copy, as each request brings
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 400_000, f"{kept:,} bytes kept after 40 Accept headers of 100 KB"
