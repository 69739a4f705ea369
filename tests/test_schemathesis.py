"""Schemathesis against a live server: queries and mutations generated from the committed `schema.graphql`
(positive and negative) must never get a server error back.

A server error is a 5xx, an answer that is not a GraphQL response (a JSON object with `data` or
`errors`), an error or a `Problem` with code INTERNAL (our masked unexpected failure), schemathesis'
own GraphQL server-error and schema-violation checks, or an unexpected failure in the server log (an
INTERNAL problem the generated selection did not ask to see). The server has a fresh data directory
with one dataset (tips.csv), no database sources and no plugins, and short deadlines, so generated
pipelines and mutations stay bounded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import graphql
import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.graphql import nodes
from schemathesis.hooks import HookContext, HookDispatcher, HookScope
from support import DATA, ROOT, budget, running_server, upload_over_http

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # the slow tier: a fuzz budget

# Examples per operation and mode, the full budget under CI (16 operations: about 550 requests, 20-25 s
# here) and about half elsewhere; the soft budget stops sending (the count says so) on a much slower
# machine before pytest's 120 s timeout.
POSITIVE_EXAMPLES = budget(12, 25)
NEGATIVE_EXAMPLES = budget(5, 10)
BUDGET_S = 75.0
SERVER_ENV = {
    "DATAGRAPH_SOURCES": "",
    "DATAGRAPH_PLUGINS": "",
    "DATAGRAPH_TIMEOUT_S": "5",
    "DATAGRAPH_IMPORT_TIMEOUT_S": "10",
    "DATAGRAPH_WORKERS": "2",
    "DATAGRAPH_WORKER_MEMORY_MB": "2048",
    "DATAGRAPH_ROWS_MAX": "1000",
    "DATAGRAPH_CACHE_MEMORY_MB": "32",
}
TIPS_COLUMNS = ["total_bill", "tip", "sex", "smoker", "day", "time", "size"]
# What the server logs for an unexpected failure: masked resolver errors and INTERNAL problems
# (gql/extensions.py, resolvers/_outcome.py) and uvicorn's unhandled exceptions (a 500).
LOG_MARKERS = ("unexpected error", "Exception in ASGI application")


def _json_values() -> st.SearchStrategy[graphql.ValueNode]:
    """Any JSON value as a GraphQL literal, with tips' column names among the keys (appendRows)."""
    keys = st.sampled_from(TIPS_COLUMNS) | st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
    leaves = st.one_of(
        st.just(nodes.Null),
        st.booleans().map(nodes.Boolean),
        st.integers(-(2**53), 2**53).map(nodes.Int),
        st.floats(allow_nan=False, allow_infinity=False).map(nodes.Float),
        st.text(max_size=20).map(nodes.String),
    )

    def obj(fields: dict[str, graphql.ValueNode]) -> graphql.ValueNode:
        return nodes.Object(
            [graphql.ObjectFieldNode(name=graphql.NameNode(value=k), value=v) for k, v in fields.items()]
        )

    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4).map(nodes.List) | st.dictionaries(keys, inner, max_size=4).map(obj),
        max_leaves=12,
    )


def _register_scalars(dataset_id: str) -> None:
    """Strategies for the schema's custom scalars, and built-ins biased towards what exists on the server."""
    # An upload only travels in a multipart request, which schemathesis does not send: null, refused.
    schemathesis.graphql.scalar("Upload", st.just(nodes.Null))
    schemathesis.graphql.scalar("JSON", _json_values())
    # DateTime is only an output type here; an ISO timestamp should it ever become an argument.
    schemathesis.graphql.scalar("DateTime", st.datetimes().map(lambda d: nodes.String(d.isoformat())))
    ids = st.sampled_from([dataset_id, "uploads", "frames", "plugins"]) | st.text(max_size=12)
    schemathesis.graphql.scalar("ID", ids.map(nodes.String))
    schemathesis.graphql.scalar("String", (st.sampled_from(TIPS_COLUMNS) | st.text(max_size=24)).map(nodes.String))


def _one_key_per_one_of(types: graphql.GraphQLSchema) -> HookDispatcher:
    """A map_body hook for positive cases: hypothesis-graphql ignores @oneOf (Step, CleanStep), so
    keep only the first non-null field of such an input; otherwise most pipelines fail validation.

    `types` is built from the SDL: schemathesis' introspection query does not ask for isOneOf."""

    class Fix(graphql.Visitor):
        def __init__(self, info: graphql.TypeInfo) -> None:
            super().__init__()
            self.info = info

        def enter_object_value(self, node: graphql.ObjectValueNode, *_: Any) -> graphql.ObjectValueNode | None:
            named = graphql.get_named_type(self.info.get_input_type())
            if isinstance(named, graphql.GraphQLInputObjectType) and named.is_one_of and len(node.fields) > 1:
                given = [f for f in node.fields if not isinstance(f.value, graphql.NullValueNode)]
                return graphql.ObjectValueNode(fields=tuple(given[:1] or node.fields[:1]))
            return None

    def map_body(context: HookContext, body: graphql.DocumentNode) -> graphql.DocumentNode:
        info = graphql.TypeInfo(types)
        fixed: graphql.DocumentNode = graphql.visit(body, graphql.TypeInfoVisitor(info, Fix(info)))
        return fixed

    hooks = HookDispatcher(scope=HookScope.SCHEMA)
    hooks.register_hook_with_name(map_body, "map_body")
    return hooks


class ServerLog:
    """The lines the server logged since the last look (complete lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def new_lines(self) -> list[str]:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        return complete.decode("utf-8", errors="replace").splitlines()


def _internal(value: Any) -> bool:
    """Whether a `Problem` (or an error's extensions) with code INTERNAL is anywhere in `value`."""
    if isinstance(value, dict):
        return value.get("code") == "INTERNAL" or any(_internal(v) for v in value.values())
    if isinstance(value, list):
        return any(_internal(v) for v in value)
    return False


_CLIENT_CODES = frozenset({"BAD_INPUT", "NOT_FOUND", "TOO_LARGE", "READ_ONLY", "UNSUPPORTED_FORMAT"})


def _labelled_as_client(body: object) -> bool:
    """Whether every error in the answer carries one of the API's client-error codes."""
    errors = body.get("errors") if isinstance(body, dict) else None
    return bool(errors) and all(
        isinstance(e, dict) and isinstance(e.get("extensions"), dict) and e["extensions"].get("code") in _CLIENT_CODES
        for e in errors
    )


def _server_errors(case: schemathesis.Case, response: schemathesis.Response, log_lines: list[str]) -> list[str]:
    """What is wrong with this answer, from the server's side; empty when nothing is."""
    found = []
    if response.status_code >= 500:
        found.append(f"status {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not ({"data", "errors"} & body.keys()):
        found.append("not a GraphQL response")
    elif _internal(body):
        found.append("code INTERNAL in the answer")
    try:
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
    except FailureGroup as group:
        for failure in group.exceptions:
            # schemathesis knows Apollo's client-error codes, not ours: an error the server labelled as
            # the client's (BAD_INPUT, NOT_FOUND, ...: a limit out of range on a list field) is no
            # server error, whatever it did to `data`. INTERNAL is caught above.
            if failure.title == "GraphQL server error" and _labelled_as_client(body):
                continue
            found.append(f"schemathesis: {failure.title}")
    found.extend(f"server log: {line}" for line in log_lines if any(m in line for m in LOG_MARKERS))
    return found


def test_generated_queries_and_mutations_get_no_server_error(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    sdl = (ROOT / "schema.graphql").read_text("utf-8")
    schema = schemathesis.graphql.from_file(sdl)
    positive_hooks = _one_key_per_one_of(graphql.build_schema(sdl))
    failures: list[str] = []
    ran: dict[str, int] = {}
    with running_server(tmp_path, env=SERVER_ENV, workers=None) as base, requests.Session() as session:
        _register_scalars(upload_over_http(base, DATA / "tips.csv"))
        log = ServerLog(tmp_path / "server.log")
        started = time.monotonic()

        def check(case: schemathesis.Case) -> None:
            if time.monotonic() - started > BUDGET_S:
                return
            response = case.call(base_url=base + "/graphql", session=session, timeout=30)
            label = case.operation.label
            ran[label] = ran.get(label, 0) + 1
            problems = _server_errors(case, response, log.new_lines())
            if problems:
                failures.append(
                    f"{label}: {'; '.join(problems)}\n--- query\n{case.body}\n--- answer {response.status_code}\n"
                    f"{response.text[:2000]}"
                )

        operations = [result.ok() for result in schema.get_all_operations()]
        for operation in operations:
            for mode, examples, hooks in (
                (GenerationMode.POSITIVE, POSITIVE_EXAMPLES, positive_hooks),
                (GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES, None),
            ):
                run = settings(
                    max_examples=examples,
                    deadline=None,
                    derandomize=True,
                    database=None,
                    phases=[Phase.generate],  # no shrinking: every failure is collected and reported
                    suppress_health_check=list(HealthCheck),
                )(given(case=operation.as_strategy(generation_mode=mode, hooks=hooks))(check))
                run()
        elapsed = time.monotonic() - started
        still_up = httpx.get(base + "/healthz", timeout=10)
        answers = httpx.post(base + "/graphql", json={"query": "{ sources { id } }"}, timeout=10)
    total = sum(ran.values())
    record_property("schemathesis_operations", total)
    print(f"schemathesis: {total} operations in {elapsed:.1f} s: {json.dumps(ran)}")
    assert not failures, f"{len(failures)} of {total} generated operations got a server error:\n\n" + "\n\n".join(
        failures
    )
    assert still_up.status_code == 200 and still_up.json() == {"status": "ok"}
    assert answers.json()["data"]["sources"][0] == {"id": "uploads"}
    # Every operation of the schema was exercised (a generator or scalar problem would starve one).
    assert set(ran) == {op.label for op in operations}, ran
    assert total >= len(operations) * 10, ran
