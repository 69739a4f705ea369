"""API keys: made, listed and revoked with the CLI, required beyond loopback (or with api_keys=on),
checked on HTTP requests and on websockets from connectionParams; a wrong key reveals nothing."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient
from support import (
    DATA,
    ROOT,
    add_key,
    create_key,
    datagraph_cli,
    datagraph_main,
    make_settings,
    running_server,
    upload_over_http,
)
from websockets.exceptions import ConnectionClosed
from wsclient import Ws, ws_open

from datagraph.settings import keys_required
from server.app import create_app
from server.auth import KEY_PREFIX, KeyRing, hash_key, new_key
from storage import MetadataStore

COUNT = "query($d: ID!) { frame(dataset: $d) { count { success data } } }"
DATASETS = {"query": "{ datasets { id } }"}


def test_each_of_many_keys_is_found_by_one_look_up(tmp_path: Path) -> None:
    """The key ring finds a key by its hash (a dict look-up per request, not a scan of every key)."""
    store = MetadataStore(f"sqlite:///{tmp_path / 'keys.sqlite3'}")
    keys = {f"k{i}": new_key() for i in range(300)}
    for name, key in keys.items():
        assert store.add_key(name, hash_key(key))
    ring = KeyRing(store)
    try:
        assert ring.count() == 300
        assert all(ring.check(key) == name for name, key in keys.items())
        assert ring.check(new_key()) is None and ring.check("") is None and ring.check(None) is None
        assert ring.check(keys["k7"] + "x") is None and ring.check(hash_key(keys["k7"])) is None
    finally:
        store.close()


@pytest.mark.parametrize(
    ("host", "mode", "required"),
    [
        ("127.0.0.1", "auto", False),
        ("localhost", "auto", False),
        ("::1", "auto", False),
        ("127.0.0.1", "on", True),
        ("0.0.0.0", "auto", True),
        ("192.168.1.20", "auto", True),
        ("my-host.lan", "auto", True),
    ],
)
def test_keys_are_required_beyond_loopback(tmp_path: Path, host: str, mode: str, required: bool) -> None:
    assert keys_required(make_settings(tmp_path, host=host, api_keys=mode)) is required


def test_the_cli_creates_lists_and_revokes_keys_stored_hashed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key = create_key(data, "laptop")  # the installed command, in a process of its own; then its main, here
    other = datagraph_main("keys", "create", "--name", "phone", "--data-dir", str(data)).stdout.splitlines()[-1]
    assert other.startswith(KEY_PREFIX) and key != other
    listed = datagraph_main("keys", "list", "--data-dir", str(data)).stdout.splitlines()
    assert [line.split("\t")[0] for line in listed] == ["laptop", "phone"]
    again = datagraph_main("keys", "create", "--name", "laptop", "--data-dir", str(data), check=False)
    assert again.returncode != 0 and "already a key called 'laptop'" in again.stderr
    stored = (data / "datagraph.sqlite3").read_bytes()
    assert key.encode() not in stored and other.encode() not in stored  # only hashes are kept
    assert datagraph_main("keys", "revoke", "laptop", "--data-dir", str(data)).returncode == 0
    listed = datagraph_main("keys", "list", "--data-dir", str(data)).stdout.splitlines()
    assert [line.split("\t")[0] for line in listed] == ["phone"]
    missing = datagraph_main("keys", "revoke", "laptop", "--data-dir", str(data), check=False)
    assert missing.returncode != 0 and "no key called 'laptop'" in missing.stderr


def test_serving_beyond_loopback_without_a_key_refuses_to_start_and_says_how(tmp_path: Path) -> None:
    # The check runs before anything binds, so the address is never opened.
    refused = datagraph_cli(
        "serve", "--host", "0.0.0.0", "--port", "1", "--data-dir", str(tmp_path / "data"), check=False
    )
    assert refused.returncode != 0
    assert "datagraph keys create --name NAME" in refused.stderr and "Traceback" not in refused.stderr
    with (
        pytest.raises(RuntimeError, match="keys create"),
        TestClient(create_app(make_settings(tmp_path, api_keys="on"))),
    ):
        pass


def _unauthenticated(response: httpx.Response) -> None:
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert body["errors"][0]["extensions"] == {"code": "UNAUTHENTICATED"}
    assert "data" not in body


def test_http_requests_need_a_valid_key(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys="on", graphiql=True)  # GraphiQL asked for, as production needs
    key = add_key(settings.data_dir, "script")
    with TestClient(create_app(settings)) as client:
        _unauthenticated(client.post("/graphql", json=DATASETS))
        _unauthenticated(client.post("/graphql", json=DATASETS, headers={"X-API-Key": key + "x"}))
        _unauthenticated(client.post("/graphql", json=DATASETS, headers={"Authorization": "Bearer " + KEY_PREFIX}))
        _unauthenticated(client.post("/graphql", json=DATASETS, headers={"Authorization": key}))  # no scheme
        _unauthenticated(
            client.get("/graphql", params={"query": "{ datasets { id } }"}, headers={"Accept": "text/html"})
        )
        _unauthenticated(client.get("/readyz"))
        for headers in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"}, {"authorization": f"bearer {key}"}):
            answer = client.post("/graphql", json=DATASETS, headers=headers)
            assert answer.status_code == 200 and answer.json() == {"data": {"datasets": []}}
        assert client.get("/readyz", headers={"X-API-Key": key}).status_code == 200
        # Open without a key: liveness, the web page and its files, and the explorer page itself.
        assert client.get("/healthz").status_code == 200
        assert client.get("/", follow_redirects=False).status_code == 200
        assert client.get("/static/vendor/README.md").status_code == 200
        assert client.get("/graphql", headers={"Accept": "text/html"}).status_code == 200


def test_a_revoked_key_stops_working_within_a_second(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys="on")
    add_key(settings.data_dir, "keep")
    key = add_key(settings.data_dir, "old")
    with TestClient(create_app(settings)) as client:
        headers = {"X-API-Key": key}
        assert client.post("/graphql", json=DATASETS, headers=headers).status_code == 200
        datagraph_main("keys", "revoke", "old", "--data-dir", str(settings.data_dir))  # its own connection
        deadline = time.monotonic() + 5
        while client.post("/graphql", json=DATASETS, headers=headers).status_code == 200:
            assert time.monotonic() < deadline, "the revoked key still works"
            time.sleep(0.2)
        _unauthenticated(client.post("/graphql", json=DATASETS, headers=headers))


def test_websockets_authenticate_with_connection_params(tmp_path: Path) -> None:
    key = add_key(tmp_path / "data", "browser")
    with running_server(tmp_path, "--api-keys", "on") as base:
        assert httpx.post(base + "/graphql", json=DATASETS).status_code == 401
        tips = upload_over_http(base, DATA / "tips.csv", headers={"X-API-Key": key})
        for params in ({}, {"apiKey": "dg_wrong"}, {"Authorization": "Bearer dg_wrong"}):
            with ws_open(base) as conn:
                conn.send(json.dumps({"type": "connection_init", "payload": params}))
                with pytest.raises(ConnectionClosed) as closed:
                    conn.recv(timeout=5)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
        subscription = "subscription($d: ID!) { watch(dataset: $d, result: COUNT) { success data } }"
        ways = [({"apiKey": key}, None), ({"Authorization": f"Bearer {key}"}, None), ({}, {"X-API-Key": key})]
        for params, headers in ways:  # in connectionParams (two spellings), or on the upgrade request
            with Ws(base, params, headers=headers) as ws:
                ws.subscribe(subscription, {"d": tips})
                assert ws.next_data()["watch"] == {"success": True, "data": {"count": 244}}


def test_the_readme_keys_example_runs_as_written(tmp_path: Path) -> None:
    readme = (ROOT / "docs/security.md").read_text("utf-8").split("## API keys", 1)[1]
    block = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    outputs = []
    for line in block.strip().splitlines():
        command = line.split("#", 1)[0].strip().replace(".venv/bin/", str(ROOT / ".venv/bin") + "/")
        done = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    created, listed, revoked = outputs
    assert created.strip().splitlines()[-1].startswith(KEY_PREFIX)
    assert listed.startswith("laptop\t") and "Revoked" in revoked
    assert datagraph_main("keys", "list", "--data-dir", str(tmp_path / "var")).stdout == ""


INTROSPECTION = {"query": "{ __schema { queryType { name } } }"}
TYPO = {"query": "{ datasetz { id } }"}


def _errors(client: TestClient, body: dict[str, str], headers: dict[str, str]) -> list[dict[str, object]]:
    answer = client.post("/graphql", json=body, headers=headers).json()
    errors: list[dict[str, object]] = answer.get("errors", [])
    return errors


def test_production_mode_hides_the_schema_and_graphiql(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys="on")  # production: auto follows the keys
    headers = {"X-API-Key": add_key(settings.data_dir, "prod")}
    with TestClient(create_app(settings)) as client:
        refused = _errors(client, INTROSPECTION, headers)
        assert refused and "introspection" in str(refused[0]["message"]).lower()
        typo = _errors(client, TYPO, headers)
        assert typo and "Cannot query field" in str(typo[0]["message"]) and "Did you mean" not in str(typo)
        assert "graphiql" not in client.get("/graphql", headers={"Accept": "text/html"}).text.lower()
    explicit = make_settings(tmp_path, api_keys="on", graphiql=True)
    with TestClient(create_app(explicit)) as client:
        assert "graphiql" in client.get("/graphql", headers={"Accept": "text/html"}).text.lower()


def test_outside_production_the_schema_is_open_to_explore(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as client:  # loopback, no keys
        assert _errors(client, INTROSPECTION, {}) == []
        assert "Did you mean" in str(_errors(client, TYPO, {}))
        assert "graphiql" in client.get("/graphql", headers={"Accept": "text/html"}).text.lower()
    settings = make_settings(tmp_path, api_keys="on", production="off")
    headers = {"X-API-Key": add_key(settings.data_dir, "dev")}
    with TestClient(create_app(settings)) as client:
        assert _errors(client, INTROSPECTION, headers) == []


def test_cors_lets_the_listed_origins_call_the_api_and_no_other(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    key = add_key(data_dir, "front-end")
    settings = make_settings(tmp_path, api_keys="on", cors_origins="https://app.example, https://other.example")
    with TestClient(create_app(settings)) as client:
        asks = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type, x-api-key"}
        allowed = client.options("/graphql", headers={"Origin": "https://app.example", **asks})
        assert allowed.status_code == 200  # a preflight carries no key, and needs none
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-api-key" in allowed.headers["access-control-allow-headers"].lower()
        stranger = client.options("/graphql", headers={"Origin": "https://evil.example", **asks})
        assert stranger.status_code == 400 and "access-control-allow-origin" not in stranger.headers
        answer = client.post(
            "/graphql",
            json={"query": "{ datasets { id } }"},
            headers={"Origin": "https://app.example", "X-API-Key": key},
        )
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()
        refused = client.post(
            "/graphql", json={"query": "{ datasets { id } }"}, headers={"Origin": "https://app.example"}
        )
        assert refused.status_code == 401  # CORS lets the page ask; the key still decides
    with TestClient(create_app(make_settings(tmp_path / "closed"))) as client:
        closed = client.post(
            "/graphql", json={"query": "{ datasets { id } }"}, headers={"Origin": "https://app.example"}
        )
        assert "access-control-allow-origin" not in closed.headers  # no origins listed: same origin only
