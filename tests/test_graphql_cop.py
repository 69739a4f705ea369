"""graphql-cop's checks, as tests against a real server in production mode (API keys on).

graphql-cop (github.com/dolevf/graphql-cop, lib/tests/) is a script, not a package on the index,
so each check is written here: the same request, and graphql-cop's own verdict, quoted in the
test's docstring. Its README lists twelve detections; its runner (graphql-cop.py) also runs
"Unhandled Errors Detection", and lib/tests holds a "Circular Fragment" check: both are here too.

graphql-cop is run as a user with a key would run it (`-H '{"X-API-Key": KEY}'`): without the key
every request is refused with 401, graphql-cop finds no GraphQL at the URL and checks nothing.
Its verdicts treat any exception (no JSON, a missing key) as "not vulnerable", and `response and ...`
is false for a requests response with a 4xx or 5xx status; `_flagged` and `_ok` reproduce both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import add_key, running_server

pytestmark = pytest.mark.e2e

IDE_HEURISTICS = ("graphiql.min.css", "GraphQL Playground", "GraphiQL", "graphql-playground")
IDE_ENDPOINTS = ("/graphiql", "/playground", "/console", "/graphql")


class Cop:
    """graphql-cop's two ways of sending a request (lib/utils.py), against one server."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url = url
        self.headers = headers

    def graph_query(self, payload: str, *, batch: bool = False) -> httpx.Response:
        """A JSON POST of `{"query": payload, "operationName": "cop"}`, or with `batch` an array of
        ten `{"query": payload}`."""
        data: Any = [{"query": payload} for _ in range(10)] if batch else {"query": payload, "operationName": "cop"}
        return httpx.post(self.url, json=data, headers=self.headers, follow_redirects=True, timeout=60)

    def request(
        self,
        url: str | None = None,
        *,
        params: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
        verb: str = "GET",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """A plain request (form-encoded when `data` is given), as `requests.request` sends it."""
        return httpx.request(
            verb,
            url or self.url,
            params=params,
            data=data,
            headers=headers or self.headers,
            follow_redirects=True,
            timeout=20,
        )


def _flagged(verdict: Callable[[], object]) -> bool:
    """graphql-cop's `try: if <verdict>: result = True  except: pass`."""
    try:
        return bool(verdict())
    except Exception:
        return False


def _ok(response: httpx.Response) -> bool:
    """What `if response and ...` means for a requests response: a status below 400."""
    return response.status_code < 400


@pytest.fixture(scope="module")
def cop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cop]:
    work: Path = tmp_path_factory.mktemp("graphql-cop")
    key = add_key(work / "data", "graphql-cop")
    with running_server(work, "--api-keys", "on") as base:  # production mode: auto, on with keys
        headers = {"User-Agent": "graphql-cop/1.14", "X-API-Key": key}
        yield Cop(base + "/graphql", headers)


def test_graphql_cop_finds_graphql_at_the_url_only_with_the_key(cop: Cop) -> None:
    """is_graphql: `'data' in response.json() and response.json()['data'] != None` and
    `response.json()['data']['__typename'] in ('Query', ...)`; without it graphql-cop checks nothing."""
    answer = cop.graph_query("\n    query cop {\n      __typename\n    }\n  ")
    assert answer.json() == {"data": {"__typename": "Query"}}
    without_key = httpx.post(cop.url, json={"query": "query cop { __typename }", "operationName": "cop"})
    assert without_key.status_code == 401


def test_alias_overloading_is_refused(cop: Cop) -> None:
    """Alias Overloading: 101 aliases of __typename; vulnerable if `gql_response.json()['data']['alias100']`."""
    aliases = "".join(f"alias{i}:__typename \n" for i in range(101))
    response = cop.graph_query("query cop { " + aliases + " }")
    assert not _flagged(lambda: response.json()["data"]["alias100"])
    assert "aliases" in response.json()["errors"][0]["message"]


def test_array_batching_is_refused(cop: Cop) -> None:
    """Array-based Query Batching: ten queries in one JSON array; vulnerable if `len(gql_response.json()) >= 10`."""
    response = cop.graph_query("query cop { __typename }", batch=True)
    assert not _flagged(lambda: len(response.json()) >= 10)
    assert response.status_code == 400


def test_queries_over_get_are_refused(cop: Cop) -> None:
    """GET Method Query Support (possible CSRF): `GET ?query=query cop {__typename}`; vulnerable if
    `response and response.json()['data']['__typename']`."""
    response = cop.request(params={"query": "query cop {__typename}"})
    assert not _flagged(lambda: _ok(response) and response.json()["data"]["__typename"]), response.text


def test_url_encoded_posts_are_refused(cop: Cop) -> None:
    """POST based url-encoded query (possible CSRF): a form body `query=query cop {__typename}`;
    vulnerable if `response and response.json()['data']['__typename']`."""
    response = cop.request(data={"query": "query cop {__typename}"}, verb="POST")
    assert not _flagged(lambda: _ok(response) and response.json()["data"]["__typename"])
    assert response.status_code == 400


def test_no_tracing_or_stack_traces_in_answers(cop: Cop) -> None:
    """Trace Mode: `query cop { __typename }`; vulnerable if `gql_response.json()['errors'][0]['extensions']['tracing']`
    or `'extensions': {'tracing':` is in `str(gql_response.json()).lower()` (earlier versions: an
    `exception` extension, or `stacktrace` anywhere in the answer)."""
    response = cop.graph_query("query cop { __typename }")
    body = response.json()
    text = str(body).lower()
    assert not _flagged(lambda: body["errors"][0]["extensions"]["tracing"])
    assert "'extensions': {'tracing':" not in text
    assert not _flagged(lambda: body["errors"][0]["extensions"]["exception"])
    assert "stacktrace" not in text
    assert "extensions" not in body  # no tracing or timing extensions on a success either


def test_field_duplication_is_refused(cop: Cop) -> None:
    """Field Duplication: `__typename` 500 times in one selection; vulnerable if
    `gql_response.json()['data']['__typename']`."""
    response = cop.graph_query("query cop { " + "__typename \n" * 500 + "} ")
    assert not _flagged(lambda: response.json()["data"]["__typename"]), response.text[:300]


def test_no_field_suggestions(cop: Cop) -> None:
    """Field Suggestions: `query cop { __schema { directive } }`; vulnerable if `'Did you mean' in get_error(...)`
    (the first error's message). Every message is checked here."""
    response = cop.graph_query("query cop { __schema { directive } }")
    messages = [error["message"] for error in response.json()["errors"]]
    assert messages and not any("Did you mean" in message for message in messages), messages


def test_no_graphql_ide_is_served(cop: Cop) -> None:
    """GraphQL IDE: the target URL with `Accept: text/html` (earlier versions: /graphiql, /playground,
    /console and /graphql at the root and under the target's path); vulnerable if
    `response and any(word in response.text for word in heuristics)`."""
    html = {**cop.headers, "Accept": "text/html"}
    root = cop.url.rsplit("/", 1)[0]
    probes = [(cop.url, html)]
    probes += [(root + endpoint, cop.headers) for endpoint in IDE_ENDPOINTS]
    probes += [(base + endpoint, html) for base in (root, cop.url) for endpoint in IDE_ENDPOINTS]
    for url, headers in probes:
        response = cop.request(url, headers=headers)
        assert not (_ok(response) and any(word in response.text for word in IDE_HEURISTICS)), url


def test_introspection_is_refused(cop: Cop) -> None:
    """Introspection: `query cop { __schema { types { name fields { name } } } }`; vulnerable if
    `gql_response.json()['data']['__schema']['types']`."""
    response = cop.graph_query("query cop { __schema { types { name fields { name } } } }")
    assert not _flagged(lambda: response.json()["data"]["__schema"]["types"])
    assert "introspection" in response.json()["errors"][0]["message"].lower()


def test_directive_overloading_is_refused(cop: Cop) -> None:
    """Directive Overloading: `query cop { __typename @aa@aa@aa@aa@aa@aa@aa@aa@aa@aa }`; vulnerable if
    `len(gql_response.json()['errors']) == 10` (one error per directive: the server went through them all)."""
    response = cop.graph_query("query cop { __typename @aa@aa@aa@aa@aa@aa@aa@aa@aa@aa }")
    body = response.json()
    assert not _flagged(lambda: len(body["errors"]) == 10), body
    assert body.get("data") is None


def test_circular_introspection_query_is_refused(cop: Cop) -> None:
    """Introspection-based Circular Query: `__schema { types { fields { type { fields { ... } } } } }`
    four levels deep; vulnerable if `len(gql_response.json()['data']['__schema']['types']) > 25`."""
    q = "query cop { __schema { types { fields { type { fields { type { fields { type { fields { type { name } } } } } } } } } } }"
    response = cop.graph_query(q)
    assert not _flagged(lambda: len(response.json()["data"]["__schema"]["types"]) > 25)
    assert response.json()["errors"]


def test_mutations_over_get_are_refused(cop: Cop) -> None:
    """Mutation is allowed over GET (possible CSRF): `GET ?query=mutation cop {__typename}`; vulnerable if
    `response and response.json()['data']['__typename']`."""
    response = cop.request(params={"query": "mutation cop {__typename}"})
    assert not _flagged(lambda: _ok(response) and response.json()["data"]["__typename"])
    assert response.status_code in (400, 405)


def test_errors_carry_no_exception_details(cop: Cop) -> None:
    """Unhandled Errors Detection: `qwerty cop { abc }`; vulnerable if
    `gql_response.json()['errors'][0]['extensions']['exception']` or `'extensions': {'exception':` is in
    `str(gql_response.json()).lower()`."""
    response = cop.graph_query("qwerty cop { abc }")
    body = response.json()
    assert not _flagged(lambda: body["errors"][0]["extensions"]["exception"])
    assert "'extensions': {'exception':" not in str(body).lower()
    assert "Syntax Error" in body["errors"][0]["message"]


def test_circular_fragments_are_refused(cop: Cop) -> None:
    """Circular Fragment (lib/tests, not in the README's list): fragments A and B spreading each other;
    vulnerable if `not 'errors' in gql_response.json()`."""
    q = """
    query {
        __schema {
          ...A
        }
    }

    fragment A on __Schema {
        __typename
        ...B
    }

    fragment B on __Schema {
        ...A
    }
"""
    response = cop.graph_query(q)
    assert not _flagged(lambda: "errors" not in response.json())
    # Sent without graphql-cop's operationName too, so that the cycle itself is what gets refused.
    alone = httpx.post(cop.url, json={"query": q}, headers=cop.headers, timeout=20).json()
    assert alone.get("data") is None
    assert any("within itself" in error["message"] for error in alone["errors"]), alone
