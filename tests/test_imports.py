"""What starting costs: a worker process imports `engine` and nothing of the settings (pydantic) or
the metadata database (SQLAlchemy: `storage` loads its parts when used),
and a server process imports aiocache (redis-py, OpenTelemetry) only when Redis caches results.
Each of those is most of a second of CPU at every worker start, server start and CLI run."""

from __future__ import annotations

import json
import subprocess
import sys

from support import ROOT

PROBE = """
import json, sys
heavy = ("pydantic", "aiocache", "redis", "opentelemetry", "sqlglot", "strawberry", "sqlalchemy")
import engine, engine._worker, connectors
worker = sorted(m for m in heavy if m in sys.modules)
import server.app
server = sorted(m for m in heavy if m in sys.modules)
print(json.dumps({"worker": worker, "server": server}))
"""


def test_a_worker_imports_no_settings_and_a_server_no_redis_client() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["worker"] == [], loaded  # what engine._worker's start imports
    # The server needs pydantic, sqlglot and strawberry; aiocache, redis and OpenTelemetry wait for their settings.
    assert not {"aiocache", "redis", "opentelemetry"} & set(loaded["server"]), loaded
    assert {"pydantic", "strawberry", "sqlalchemy"} <= set(loaded["server"]), loaded
