"""The leak sweep (tests/leaks.py): the detector flags each kind of leak and nothing in normal
answers, export links or an echo of the client's own input; a run whose app leaks fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from leaks import ROOT, Sweep, body_text, find_leaks

pytest_plugins = ["pytester"]


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("traceback", 'Traceback (most recent call last):\n  File "app.py", line 3, in <module>'),
        ("traceback", 'File "<string>", line 12, in resolve'),
        ("errno", "[Errno 28] No space left on device"),
        ("path", "could not open /tmp/pytest-of-me/pytest-3/data/uploads/1.parquet"),
        ("path", f"see {ROOT / 'engine' / '_worker.py'}"),
        ("path", "read failed: '/etc/passwd'"),
        ("dsn", "engine postgresql://reader:secret@db/shop failed"),
        ("dsn", "mysql+pymysql://root@127.0.0.1/test"),
        ("dsn", "sqlite:///data/metadata.db"),
        ("dsn", "cache redis://cache:6379/0 is down"),
        ("host:port", "could not reach 127.0.0.1:5432"),
        ("host:port", "db.internal:3306 refused the connection"),
        ("host:port", "timed out talking to localhost:40123"),
        ("host:port", "a URL to a database port: http://127.0.0.1:5432/"),
        ("driver", "psycopg.errors.QueryCanceled: canceling statement due to statement timeout"),
        ("driver", "(Background on this error at: https://sqlalche.me/e/20/e3q8)"),
        ("driver", 'ColumnNotFoundError: unable to find column "x"'),
        ("driver", "polars.exceptions.ComputeError: cannot compare"),
        ("driver", "OperationalError: (2013, 'Lost connection')"),
        ("driver", "<engine.runtime.Pool object at 0x7f3a2c1d9e50>"),
        ("driver", "httpx.ConnectError: All connection attempts failed"),
        (
            "driver",
            "Server error '503 Service Unavailable' for url 'x'\nFor more information check: https://developer.mozilla.org/",
        ),
    ],
)
def test_the_detector_flags_each_kind_of_leak(kind: str, text: str) -> None:
    assert kind in {found.kind for found in find_leaks(text)}, text


@pytest.mark.parametrize(
    "text",
    [
        '{"data": {"datasets": [{"id": "3", "name": "sales 2024/25", "rowCount": 120}]}}',
        "Cannot query field 'helo' on type 'Query'.",
        "table pg_catalog.pg_authid is not allowed; allowed tables: public.orders",
        "The source 'shop' is unavailable; try again later (error id 5f2c).",
        "POST /graphql, GET /exports/abc123, a/b, km/h, 2024/01/31",
        "http://testserver/exports/Zt9x-Q",
        "http://127.0.0.1:8123/exports/Zt9x-Q",
        "a plugin's url parameter defaults to http://127.0.0.1:38303/latest",
    ],
)
def test_the_detector_passes_normal_answers_and_the_apps_own_links(text: str) -> None:
    assert find_leaks(body_text(text.encode()), allowed={"127.0.0.1:8123"}) == []


def test_an_echo_of_the_clients_own_input_is_not_a_leak() -> None:
    request = json.dumps({"query": '{ sql(source: "shop", query: "SELECT read_csv(\'/etc/passwd\')") { rows } }'})
    answer = "function read_csv('/etc/passwd') is not allowed; psycopg was not asked"
    assert [found.text for found in find_leaks(answer, echo=body_text(request.encode()) + request)] == ["psycopg"]


def test_what_the_client_sent_earlier_in_the_test_is_its_own_input() -> None:
    sweep = Sweep()
    sweep.scan("http", "POST /graphql", '{"query": "{ fetchPlugin(params: {url: \\"127.0.0.1:9\\"}) }"}', "ok")
    sweep.scan("http", "POST /graphql", '{"query": "{ jobs { steps } }"}', "steps: fetch 127.0.0.1:9 at /etc/x")
    assert [leak.found.text for leak in sweep.leaks] == ["/etc/x"]


def test_json_answers_are_scanned_unescaped() -> None:
    body = json.dumps({"errors": [{"message": 'Traceback:\n  File "/srv/x.py", line 9'}]}).encode()
    assert {found.kind for found in find_leaks(body_text(body))} == {"traceback", "path"}


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_run_whose_app_leaks_fails_and_names_the_test_and_request(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, workers: list[str]
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    pytester.makeconftest(
        """
        from leaks import Sweep

        def pytest_configure(config):
            config.pluginmanager.register(Sweep(), "leak-sweep")
        """
    )
    pytester.makepyfile(
        """
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route
        from starlette.testclient import TestClient

        async def answer(request):
            body = (await request.body()).decode()
            if body == "boom":
                return JSONResponse({"error": "[Errno 111] Connection refused"})
            return JSONResponse({"echo": body, "link": "http://testserver/exports/t0k"})

        APP = Starlette(routes=[Route("/", answer, methods=["POST"])])

        def test_clean():
            with TestClient(APP) as client:
                assert client.post("/", content="/etc/passwd").status_code == 200

        def test_leaky():
            with TestClient(APP) as client:
                assert client.post("/", content="boom").status_code == 200
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *workers)  # under xdist the controller reports
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*leak sweep: 1 leaks in 2 http, 0 websocket responses*",
            "*::test_leaky",
            "*request: 'POST / boom'",
            "*errno*",
        ]
    )
    assert "test_clean" not in result.stdout.str().split("leak sweep")[1]
