"""Real JavaScript GraphQL clients for the tests: the npm packages pinned in tests/js/package-lock.json,
installed with `npm ci` into tests/js/node_modules when it is missing or the lock changed (npm's own
cache makes a reinstall quick), and the small Node scripts in tests/js/ that drive them against a
running server and answer with JSON. Without Node 20 and npm the tests skip, saying so; under CI
(which has them) they fail instead."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import require

JS = Path(__file__).resolve().parent / "js"
_STAMP = JS / "node_modules" / ".datagraph-lock-sha256"  # the lock the installed packages came from
_NODE_MAJOR = 20


def _lock_digest() -> str:
    return hashlib.sha256((JS / "package-lock.json").read_bytes()).hexdigest()


def _missing_tools() -> str | None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "Node.js and npm are needed to run the JavaScript client tests (tests/js/)"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    major = version.lstrip("v").split(".", 1)[0]
    if not major.isdigit() or int(major) < _NODE_MAJOR:
        return f"the JavaScript client tests need Node.js {_NODE_MAJOR} or later (found {version or 'none'})"
    return None


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    """One `npm ci` at a time on this machine (pytest-xdist workers may ask at once)."""
    tag = hashlib.sha256(str(JS).encode()).hexdigest()[:12]
    with open(Path(tempfile.gettempdir()) / f"datagraph-npm-{tag}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def installed() -> Path:
    """tests/js with its packages installed as the lock file pins them (installing them if needed)."""
    require(_missing_tools(), ci="CI images have Node 20 and npm")
    digest = _lock_digest()
    with _install_lock():
        if _STAMP.exists() and _STAMP.read_text().strip() == digest:
            return JS
        command = ["npm", "ci", "--no-audit", "--no-fund", "--prefer-offline"]
        done = subprocess.run(command, cwd=JS, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            require(
                f"`npm ci` in tests/js failed (is the npm registry reachable?):\n{done.stderr[-2000:]}",
                ci="the npm registry must be reachable",
            )
        _STAMP.write_text(digest)
    return JS


def run_node(script: str, args: dict[str, Any], *, timeout: float = 120) -> Any:
    """Run tests/js/`script` with `args` (one JSON argument) and return the JSON it printed; fail with
    its output when it exits otherwise."""
    js = installed()
    done = subprocess.run(
        ["node", script, json.dumps(args)], cwd=js, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"node {script} exited {done.returncode}:\n{done.stderr[-4000:]}\n{done.stdout[-2000:]}")
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"node {script} printed no JSON:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
