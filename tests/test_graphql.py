"""GraphQL hardening: limits on depth, aliases, tokens and size; malformed requests; error masking."""

from __future__ import annotations

import re
import sqlite3

import pytest
from conftest import DATA, Api

LEAKS = re.compile(r"Traceback|Errno|/work/|/tmp/|site-packages|\.py\b|polars|sqlalchemy", re.IGNORECASE)


def _post(api: Api, body: object) -> tuple[int, str]:
    response = api.client.post("/graphql", json=body)
    return response.status_code, response.text


def _still_serving(api: Api) -> None:
    assert api.data("{ sources { id } }")["sources"] == [{"id": "uploads"}, {"id": "frames"}, {"id": "plugins"}]


def test_depth_bomb_is_refused(api: Api) -> None:
    inner = "count { data }"
    for _ in range(10):
        inner = f"filter(where: []) {{ {inner} }}"
    body = api.query(f'{{ dataset(id: "x") {{ {inner} }} }}')
    assert body.get("data") is None and "exceeds maximum operation depth" in body["errors"][0]["message"]
    _still_serving(api)


def test_five_thousand_nested_braces_are_refused(api: Api) -> None:
    status, text = _post(api, {"query": "{" * 5000 + "}" * 5000})
    assert status in (200, 400) and "errors" in text and not LEAKS.search(text)
    _still_serving(api)


def test_too_many_aliases_also_through_fragments(api: Api) -> None:
    many = " ".join(f"a{i}: sources {{ id }}" for i in range(16))
    assert "aliases" in api.query(f"{{ {many} }}")["errors"][0]["message"]
    fragment = "fragment F on Query { " + " ".join(f"b{i}: sources {{ id }}" for i in range(10)) + " }"
    spread = " ".join(f"x{i}: __typename" for i in range(1)) + " ...F ...F"
    body = api.query(f"{{ {spread} }} {fragment}")
    assert body.get("data") is None and "aliases" in body["errors"][0]["message"]


def test_three_thousand_duplicate_fields_hit_the_token_limit(api: Api) -> None:
    body = api.query("{ sources { " + "id " * 3000 + "} }")
    assert body.get("data") is None and "token" in body["errors"][0]["message"].lower()


def test_long_query_and_large_bodies_are_refused_with_the_limit_named(api: Api) -> None:
    status, text = _post(api, {"query": "{ sources { id } }" + " " * 20_001})
    assert status == 413 and "20,000 characters" in text and "max_query_chars" in text
    status, text = _post(api, {"query": "#" + "c" * (5 * 1024 * 1024) + "\n{ sources { id } }"})
    assert status == 413 and "256 KiB" in text and "max_request_kb" in text
    status, text = _post(api, {"query": "{ sources { id } }", "variables": {"v": "x" * (2 * 1024 * 1024)}})
    assert status == 413
    _still_serving(api)


@pytest.mark.parametrize(
    ("content", "ctype"),
    [
        (b"{not json", "application/json"),
        (b'{"query": 5}', "application/json"),
        (b'{"query": "{ sources { id } }", "variables": [1]}', "application/json"),
        (b"query=%7B+sources+%7B+id+%7D+%7D", "application/x-www-form-urlencoded"),
        (b'[{"query": "{ sources { id } }"}, {"query": "{ sources { id } }"}]', "application/json"),
    ],
    ids=["malformed-json", "query-not-string", "variables-list", "urlencoded", "batch"],
)
def test_malformed_requests_get_400_without_internals(api: Api, content: bytes, ctype: str) -> None:
    response = api.client.post("/graphql", content=content, headers={"content-type": ctype})
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_INPUT"
    assert not LEAKS.search(response.text)
    _still_serving(api)


def test_get_cannot_run_a_mutation(api: Api) -> None:
    response = api.client.get("/graphql", params={"query": 'mutation { deleteDataset(id: "x") { success } }'})
    assert response.status_code in (400, 405)
    ok = api.client.get("/graphql", params={"query": "{ sources { id } }"})
    assert ok.json() == {"data": {"sources": [{"id": "uploads"}, {"id": "frames"}, {"id": "plugins"}]}}


def test_validation_errors_are_not_masked(api: Api) -> None:
    body = api.query("{ helo }")
    assert "Cannot query field 'helo'" in body["errors"][0]["message"]


def test_a_vanished_dataset_file_is_an_internal_problem_with_an_error_id(api: Api) -> None:
    dataset_id = api.upload_ok(DATA / "tips.csv")
    for path in (api.settings.data_dir / "datasets" / dataset_id).iterdir():
        path.unlink()
    answer = api.data(
        "query($id: ID!) { dataset(id: $id) { describe { success error { code message } } } }", {"id": dataset_id}
    )
    problem = answer["dataset"]["describe"]["error"]
    assert problem["code"] == "INTERNAL" and re.search(r"error id [0-9a-f]{12}", problem["message"])
    assert not LEAKS.search(problem["message"])
    _still_serving(api)


def test_corrupt_metadata_is_masked_not_leaked(api: Api) -> None:
    api.upload_ok(DATA / "tips.csv")
    with sqlite3.connect(api.settings.data_dir / "datagraph.sqlite3") as db:
        db.execute("UPDATE datasets SET columns = '{{{not json' WHERE id = 'tips'")
    body = api.query('{ dataset(id: "tips") { id columns { name } } }')
    message = body["errors"][0]["message"]
    assert re.search(r"error id [0-9a-f]{12}", message) and body["errors"][0]["extensions"]["code"] == "INTERNAL"
    assert not LEAKS.search(body.__repr__())
    _still_serving(api)


def test_graphiql_is_served_from_local_files(api: Api) -> None:
    page = api.client.get("/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(a.startswith("/static/") for a in assets), assets
    for asset in assets:
        assert api.client.get(asset).status_code == 200, asset
