"""GraphQL hardening: limits on depth, aliases, tokens and size; malformed requests; error masking.

Tests that only ask share one app (`shared_api`); those that break files or assert that a refused
request left nothing behind have their own (`api`)."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
from support import DATA, Api, staged_files

LEAKS = re.compile(r"Traceback|Errno|/work/|/tmp/|site-packages|\.py\b|polars|sqlalchemy", re.IGNORECASE)


def _post(api: Api, body: object) -> tuple[int, str]:
    response = api.client.post("/graphql", json=body)
    return response.status_code, response.text


def _still_serving(api: Api) -> None:
    assert api.data("{ sources { id } }")["sources"] == [{"id": "uploads"}, {"id": "frames"}, {"id": "plugins"}]


def test_depth_bomb_is_refused(shared_api: Api) -> None:
    inner = "count { data }"
    for _ in range(10):
        inner = f"filter(where: []) {{ {inner} }}"
    body = shared_api.query(f'{{ dataset(id: "x") {{ {inner} }} }}')
    assert body.get("data") is None and "exceeds maximum operation depth" in body["errors"][0]["message"]
    _still_serving(shared_api)


def test_five_thousand_nested_braces_are_refused(shared_api: Api) -> None:
    status, text = _post(shared_api, {"query": "{" * 5000 + "}" * 5000})
    assert status in (200, 400) and "errors" in text and not LEAKS.search(text)
    _still_serving(shared_api)


def test_too_many_aliases_also_through_fragments(shared_api: Api) -> None:
    many = " ".join(f"a{i}: sources {{ id }}" for i in range(16))
    assert "aliases" in shared_api.query(f"{{ {many} }}")["errors"][0]["message"]
    fragment = "fragment F on Query { " + " ".join(f"b{i}: sources {{ id }}" for i in range(10)) + " }"
    spread = " ".join(f"x{i}: __typename" for i in range(1)) + " ...F ...F"
    body = shared_api.query(f"{{ {spread} }} {fragment}")
    assert body.get("data") is None and "aliases" in body["errors"][0]["message"]


def test_three_thousand_duplicate_fields_hit_the_token_limit(shared_api: Api) -> None:
    body = shared_api.query("{ sources { " + "id " * 3000 + "} }")
    assert body.get("data") is None and "token" in body["errors"][0]["message"].lower()


def test_long_query_and_large_bodies_are_refused_with_the_limit_named(shared_api: Api) -> None:
    status, text = _post(shared_api, {"query": "{ sources { id } }" + " " * 20_001})
    assert status == 413 and "20,000 characters" in text and "max_query_chars" in text
    status, text = _post(shared_api, {"query": "#" + "c" * (5 * 1024 * 1024) + "\n{ sources { id } }"})
    assert status == 413 and "256 KiB" in text and "max_request_kb" in text
    status, text = _post(shared_api, {"query": "{ sources { id } }", "variables": {"v": "x" * (2 * 1024 * 1024)}})
    assert status == 413
    _still_serving(shared_api)


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
def test_malformed_requests_get_400_without_internals(shared_api: Api, content: bytes, ctype: str) -> None:
    response = shared_api.client.post("/graphql", content=content, headers={"content-type": ctype})
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_INPUT"
    assert not LEAKS.search(response.text)
    _still_serving(shared_api)


def test_get_cannot_run_a_mutation(shared_api: Api) -> None:
    response = shared_api.client.get("/graphql", params={"query": 'mutation { deleteDataset(id: "x") { success } }'})
    assert response.status_code in (400, 405)
    ok = shared_api.client.get("/graphql", params={"query": "{ sources { id } }"})
    assert ok.json() == {"data": {"sources": [{"id": "uploads"}, {"id": "frames"}, {"id": "plugins"}]}}


def test_validation_errors_are_not_masked(shared_api: Api) -> None:
    body = shared_api.query("{ helo }")
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


def test_graphiql_is_served_from_local_files(shared_api: Api) -> None:
    page = shared_api.client.get("/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    # Everything it loads is local; "/" is its link back to the web page.
    assert assets and all(a.startswith("/static/") or a == "/" for a in assets), assets
    assert assets.count("/") == 1
    for asset in assets:
        assert shared_api.client.get(asset).status_code == 200, asset


def test_fifty_directives_are_answered_with_at_most_five_errors(shared_api: Api) -> None:
    response = shared_api.client.post(
        "/graphql", json={"query": "{ sources { id } }".replace("id", "id" + " @skip(if: false)" * 50)}
    )
    body = response.json()
    assert body.get("data") is None or body["data"] == {
        "sources": [{"id": "uploads"}, {"id": "frames"}, {"id": "plugins"}]
    }
    unknown = shared_api.client.post("/graphql", json={"query": "query { __typename " + "@aa " * 50 + "}"}).json()
    assert len(unknown["errors"]) == 6 and "45 more errors" in unknown["errors"][-1]["message"]
    assert "graphql_max_errors" in unknown["errors"][-1]["message"]
    _still_serving(shared_api)


UPLOAD_OPS = json.dumps(
    {
        "query": "mutation($f: Upload!) { uploadDataset(file: $f) { success error { code message } } }",
        "variables": {"f": None},
    }
)


def _multipart(parts: list[tuple[str, bytes, str | None]], boundary: str = "b0undary") -> bytes:
    body = b""
    for name, content, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def _send_multipart(api: Api, body: bytes, content_type: str = "multipart/form-data; boundary=b0undary") -> dict:
    response = api.client.post(
        "/graphql", content=body, headers={"content-type": content_type, "Apollo-Require-Preflight": "true"}
    )
    assert response.status_code in (200, 400, 413), response.text
    assert not LEAKS.search(response.text), response.text
    answer: dict = response.json()
    return answer


def _refused(answer: dict) -> bool:
    payload = (answer.get("data") or {}).get("uploadDataset")
    return bool(answer.get("errors")) or (payload is not None and not payload["success"])


CSV = b"a,b\n1,2\n"


@pytest.mark.parametrize(
    "body",
    [
        _multipart([("operations", UPLOAD_OPS.encode(), None), ("map", b'{"0": ["variables.f"]}', None)]
                   + [(str(i), CSV, f"{i}.csv") for i in range(1001)]),
        _multipart([("operations", b'{"query": "' + b" " * (2 * 1024 * 1024) + b'"}', None), ("map", b"{}", None)]),
        _multipart([("operations", UPLOAD_OPS.encode(), None), ("map", b'{"0": ["variables.nothing"]}', None), ("0", CSV, "a.csv")]),
        _multipart([("operations", UPLOAD_OPS.encode(), None), ("map", b'{"7": ["variables.f"]}', None), ("0", CSV, "a.csv")]),
        _multipart([("operations", UPLOAD_OPS.encode(), None), ("map", b'{"0": ["variables.f"]}', None), ("0", CSV, "a.csv")])[:-40],
        _multipart([("operations", UPLOAD_OPS.encode(), None), ("map", b'{"0": ["variables.f"]}', None),
                    ("notes", b"x" * (19 * 1024 * 1024), None), ("0", CSV, "a.csv")]),
    ],
    ids=["1001-file-parts", "2-MiB-operations", "map-to-nothing", "map-to-a-missing-part", "truncated", "19-MiB-field"],
)  # fmt: skip
def test_hostile_multipart_requests_are_refused_and_leave_nothing(api: Api, body: bytes) -> None:
    answer = _send_multipart(api, body)
    assert _refused(answer), answer
    assert api.data("{ datasets { id } }")["datasets"] == []
    assert staged_files(api.settings.data_dir) == []
    _still_serving(api)


def test_multipart_without_a_boundary_is_refused(api: Api) -> None:
    body = _multipart(
        [("operations", UPLOAD_OPS.encode(), None), ("map", b'{"0": ["variables.f"]}', None), ("0", CSV, "a.csv")]
    )
    answer = _send_multipart(api, body, content_type="multipart/form-data")
    assert answer["errors"] and api.data("{ datasets { id } }")["datasets"] == []
    _still_serving(api)
