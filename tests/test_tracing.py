"""OpenTelemetry tracing (`otel_endpoint`): a real server sends its spans, and its worker's, to a
local OTLP/HTTP receiver; the span tree of an upload and of an uncached query is checked parent by
parent, a client's `traceparent` is continued, and no attribute carries query text, values or paths.
A collector that is not there (a closed port, one that never answers) costs the requests nothing."""

from __future__ import annotations

import gzip
import http.server
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import ROOT, free_port, running_server, upload_request, wait_for
from upstream import Reply, Upstream

DESCRIBE = """query Describe($id: ID!, $cols: [String!]) {
  dataset(id: $id) { describe(columns: $cols) { success data error { code message } } }
}"""
SECRET_COLUMN = "zebra_amount_77"  # a variable value of the query, and a column of the file
SQL = "SELECT status, count(*) AS n FROM orders WHERE status <> 'zz-secret-literal' GROUP BY status"
# Spans are exported in batches this often (ms) by the server and its worker, so the test waits little.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "200"}


class Receiver:
    """A local OTLP/HTTP collector: POST /v1/traces with a protobuf body; keeps every span, with its
    resource's attributes, as plain data."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.spans: list[dict[str, Any]] = []
        self.paths: list[str] = []
        lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with lock:
                    receiver.paths.append(self.path)
                    receiver.spans.extend(_plain_spans(request))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def _plain_spans(request: Any) -> Iterator[dict[str, Any]]:
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield {
                    "name": span.name,
                    "trace": span.trace_id.hex(),
                    "id": span.span_id.hex(),
                    "parent": span.parent_span_id.hex(),
                    "attributes": {a.key: _value(a.value) for a in span.attributes},
                    "resource": resource,
                }


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def _one(spans: list[dict[str, Any]], name: str, parent: dict[str, Any], **attributes: Any) -> dict[str, Any]:
    """The one span named `name` whose parent is `parent` (and with these attributes)."""
    found = [
        s
        for s in spans
        if s["name"] == name
        and s["parent"] == parent["id"]
        and all(s["attributes"].get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, (name, parent["name"], [(s["name"], s["parent"], s["attributes"]) for s in spans])
    return found[0]


def _trace(receiver: Receiver, trace_id: str, *more: str) -> list[dict[str, Any]]:
    """The spans of one trace, once its first (the HTTP request's, ended last by the server), the
    worker's (sent by another process) and any named in `more` have arrived."""
    wanted = {"POST /graphql", "worker.job", *more}

    def arrived() -> list[dict[str, Any]] | None:
        spans = [s for s in list(receiver.spans) if s["trace"] == trace_id]
        return spans if wanted <= {s["name"] for s in spans} else None

    return wait_for(arrived, 30, f"the trace's spans {sorted(wanted)}")


def _under_a_worker(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The spans named `name`, each checked to be the child of a worker's job span."""
    workers = {s["id"] for s in spans if s["name"] == "worker.job"}
    found = [s for s in spans if s["name"] == name]
    assert found and all(s["parent"] in workers for s in found), [(s["name"], s["parent"]) for s in spans]
    return found


def _assert_job_tree(spans: list[dict[str, Any]], field: dict[str, Any]) -> None:
    """Under a field: the job, its wait and run, and the worker's own span, a child of the job."""
    job = _one(spans, "job", field)
    _one(spans, "job.wait", job)
    _one(spans, "job.run", job)
    worker = _one(spans, "worker.job", job)
    assert worker["attributes"]["datagraph.job.kind"] == job["attributes"]["datagraph.job.kind"]


@pytest.mark.e2e
@pytest.mark.slow
def test_upload_and_query_are_traced_from_the_request_to_the_worker(
    tmp_path: Path, receiver: Receiver, upstream: Upstream
) -> None:
    csv = f"city,{SECRET_COLUMN}\nOslo,1\nLima,2\nKyiv,3\n".encode()
    shop = ROOT / "examples" / "shop.sqlite"
    shutil.copytree(ROOT / "plugins", tmp_path / "plugins")
    upstream.always["/zz-secret-path"] = Reply(200, b'[{"a": 1}, {"a": 2}]', {"Content-Type": "application/json"})
    (tmp_path / "sources.yaml").write_text(f"sources:\n  shop: {{kind: sqlite, url: 'sqlite:///{shop}'}}\n")
    with running_server(tmp_path, "--otel-endpoint", receiver.url, env=FAST_EXPORT) as base:
        # The upload, with no traceparent: its HTTP span starts a trace of its own.
        response = httpx.post(base + "/graphql", **upload_request(csv, "ledger.csv"), timeout=60)
        payload = response.json()["data"]["uploadDataset"]
        assert payload["success"], payload
        dataset_id = payload["dataset"]["id"]
        # The query, continuing a client's trace.
        client_trace, client_span = secrets.token_hex(16), secrets.token_hex(8)
        answer = httpx.post(
            base + "/graphql",
            json={"query": DESCRIBE, "variables": {"id": dataset_id, "cols": [SECRET_COLUMN]}},
            headers={"traceparent": f"00-{client_trace}-{client_span}-01"},
            timeout=60,
        ).json()
        assert answer["data"]["dataset"]["describe"]["success"], answer

        upload_http = wait_for(
            lambda: next((s for s in list(receiver.spans) if s["name"] == "POST /graphql" and not s["parent"]), None),
            30,
            "the upload's HTTP span",
        )
        spans = _trace(receiver, upload_http["trace"])
        assert upload_http["attributes"]["http.response.status_code"] == 200
        operation = _one(spans, "graphql.operation", upload_http, **{"graphql.operation.type": "mutation"})
        field = _one(spans, "graphql.field", operation, **{"graphql.field.name": "uploadDataset"})
        _assert_job_tree(spans, field)

        spans = _trace(receiver, client_trace)
        query_http = next(s for s in spans if s["name"] == "POST /graphql")
        assert query_http["parent"] == client_span  # the client's span is the request's parent
        operation = _one(
            spans,
            "graphql.operation",
            query_http,
            **{"graphql.operation.type": "query", "graphql.operation.name": "Describe"},
        )
        field = _one(
            spans,
            "graphql.field",
            operation,
            **{"graphql.field.name": "describe", "datagraph.dataset.id": dataset_id, "datagraph.result.ok": True},
        )
        _one(spans, "cache.lookup", field, **{"datagraph.cache.hit": False})
        _assert_job_tree(spans, field)
        assert not any(s["name"] == "graphql.field" and s["attributes"]["graphql.field.name"] == "data" for s in spans)

        # A statement sent to a database source: its span is the worker's child, named by kind only.
        sql_trace = secrets.token_hex(16)
        answer = httpx.post(
            base + "/graphql",
            json={"query": '{ sql(source: "shop", query: "%s") { success } }' % SQL},
            headers={"traceparent": f"00-{sql_trace}-{secrets.token_hex(8)}-01"},
            timeout=60,
        ).json()
        assert answer["data"]["sql"]["success"], answer
        statements = _under_a_worker(_trace(receiver, sql_trace, "sql"), "sql")
        expected = {"db.system.name": "sqlite", "db.operation.name": "SELECT", "datagraph.source.id": "shop"}
        assert any(s["attributes"] == expected for s in statements), statements

        # A plugin's outbound HTTP call, in the worker: the method and host only.
        fetch_trace = secrets.token_hex(16)
        fetched = httpx.post(
            base + "/graphql",
            json={
                "query": 'mutation($p: JSON) { fetchPlugin(plugin: "http_json", params: $p) { success } }',
                "variables": {"p": {"url": upstream.url("/zz-secret-path?key=zz-api-key"), "records_path": ""}},
            },
            headers={"traceparent": f"00-{fetch_trace}-{secrets.token_hex(8)}-01"},
            timeout=60,
        ).json()
        assert fetched["data"]["fetchPlugin"]["success"], fetched
        calls = _under_a_worker(_trace(receiver, fetch_trace, "GET"), "GET")
        expected = {"http.request.method": "GET", "server.address": "127.0.0.1", "http.response.status_code": 200}
        assert [c["attributes"] for c in calls] == [expected]
        assert all(path == "/v1/traces" for path in receiver.paths)

    # Nothing of the query, its values or the server's paths in any attribute of any span.
    secrets_seen = [DESCRIBE, "describe(columns", SECRET_COLUMN, str(tmp_path), "uploads/", ".parquet"]
    secrets_seen += ["zz-secret-path", "zz-api-key", SQL, "FROM orders", "zz-secret-literal", "shop.sqlite"]
    for span in receiver.spans:
        for key, value in {**span["attributes"], **span["resource"]}.items():
            for secret in secrets_seen:
                assert secret not in str(value), (span["name"], key, value)


def _silent_collector() -> tuple[socket.socket, str]:
    """A port that takes connections (the kernel's backlog) and never answers a byte."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("collector", ["closed port", "never answers"])
def test_an_absent_collector_costs_requests_nothing(tmp_path: Path, collector: str) -> None:
    silent: socket.socket | None = None
    if collector == "closed port":
        endpoint = f"http://127.0.0.1:{free_port()}"
    else:
        silent, endpoint = _silent_collector()
    csv = b"x,y\n1,2\n3,4\n"
    try:
        with running_server(tmp_path, "--otel-endpoint", endpoint, env=FAST_EXPORT) as base:
            # Each request has a few seconds, well inside the exporter's own timeout of 5 s per batch
            # (were a request waiting for an export, the second batch's would pass it).
            response = httpx.post(base + "/graphql", **upload_request(csv, "xy.csv"), timeout=30)
            dataset_id = response.json()["data"]["uploadDataset"]["dataset"]["id"]
            for _ in range(10):
                answer = httpx.post(
                    base + "/graphql",
                    json={"query": DESCRIBE, "variables": {"id": dataset_id, "cols": ["y"]}},
                    timeout=4,
                ).json()
                described = answer["data"]["dataset"]["describe"]
                assert described["success"], described
                assert json.dumps(described["data"])  # an answer with data, as without tracing
    finally:
        if silent is not None:
            silent.close()


@pytest.mark.slow
def test_tracing_off_imports_nothing_of_opentelemetry(tmp_path: Path) -> None:
    """With otel_endpoint empty the app is built, and a job runs, without opentelemetry's tracing SDK or
    exporter in the process. (redis-py imports opentelemetry's metrics API when it is installed, for
    metrics it only records once an application turns them on; that is not ours to stop.)"""
    script = (
        "import sys, asyncio\n"
        "from datagraph.settings import Settings\n"
        "from server.app import create_app\n"
        "from engine.runtime import Executor\n"
        f"create_app(Settings(data_dir={str(tmp_path)!r}))\n"
        "async def main():\n"
        "    pool = Executor(1)\n"
        "    await pool.start()\n"
        "    try:\n"
        "        assert await pool.run(sum, [1, 2]) == 3\n"
        "    finally:\n"
        "        await pool.close()\n"
        "asyncio.run(main())\n"
        "tracing = ('opentelemetry.sdk.trace', 'opentelemetry.exporter', 'opentelemetry.propagators')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(tracing))\n"
        "assert not loaded, loaded\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAGRAPH_")}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize(
    ("statement", "operation"),
    [
        ("SELECT secret_column FROM t WHERE x = 'hunter2'", "SELECT"),
        ("  /* a comment */ -- another\n with q as (select 1) select * from q", "WITH"),
        ("SET LOCAL statement_timeout = 5000", "SET"),
        ("DROP TABLE ledger", "other"),
        ("'; DELETE FROM t; --", "other"),
        ("", "other"),
    ],
)
def test_a_statement_span_names_its_kind_never_its_text(statement: str, operation: str) -> None:
    from connectors._tracing import sql_attributes

    attributes = sql_attributes("warehouse", "postgresql", statement)
    assert attributes == {
        "db.system.name": "postgresql",
        "db.operation.name": operation,
        "datagraph.source.id": "warehouse",
    }


def test_hooks_do_nothing_while_tracing_is_off() -> None:
    from datagraph import tracing

    assert not tracing.enabled()
    assert tracing.carrier() is None
    assert tracing.begin("sql") is None
    with tracing.span("anything", {"a": 1}) as first, tracing.span("other") as second:
        first.set_attribute("b", 2)
    assert first is second  # one shared no-op, nothing made per call
