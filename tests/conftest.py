"""Fixtures and hooks only (helpers are in support.py): a real app (lifespan and all) on a fresh data
directory, per test or shared by a module's tests that only read, and the scripted upstreams."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import DATA, SWEEP, Api, ingested, make_settings, scratch_postgres_database, serving
from upstream import Listener, Upstream

from datagraph.settings import Settings
from engine import Source


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SWEEP, "leak-sweep")


_SLOW_MODULE = re.compile(r"^pytestmark = .*\bpytest\.mark\.slow\b", re.MULTILINE)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """A tier does not import the test modules it would deselect whole: each xdist worker imports
    every module it collects (schemathesis, Playwright, pandas, ... some seconds of CPU apiece). Under
    `-m "not slow"` a module marked slow as a whole is left out, under `-m slow` a module with no slow
    mark at all; any other selection collects everything, as pytest does."""
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    tier = (config.option.markexpr or "").strip()
    if tier not in ("slow", "not slow"):
        return None
    text = collection_path.read_text(encoding="utf-8")
    if tier == "not slow":
        return True if _SLOW_MODULE.search(text) else None
    return None if "mark.slow" in text else True


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def api(settings: Settings) -> Iterator[Api]:
    """An app of the test's own: for tests that change what is stored or assert what is left."""
    with serving(settings) as app:
        yield app


@pytest.fixture(scope="module")
def shared_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app for the module's tests that only read (datasette's module-scoped app): a test that
    asserts a first, uncached answer asks for `cache: BYPASS`."""
    with serving(make_settings(tmp_path_factory.mktemp("shared"))) as app:
        yield app


@pytest.fixture(scope="session")
def shared_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Source]:
    """Each shared CSV parsed once per session as an upload is, into Parquet: the engine's `Source`
    by file stem ("titanic"), for testing operations in-process."""
    folder = tmp_path_factory.mktemp("shared-data")
    return {path.stem: ingested(path, folder, path.stem) for path in sorted(DATA.glob("*.csv"))}


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """A scripted HTTP server on 127.0.0.1 (tests/upstream.py)."""
    server = Upstream()
    yield server
    server.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    """A listener on 127.0.0.2 that counts the connections it accepts."""
    server = Listener()
    yield server
    server.close()


@pytest.fixture
def scratch_postgres() -> Iterator[str]:
    """A new, empty PostgreSQL database for the test (the metadata store of several server
    processes); its SQLAlchemy URL. Dropped afterwards, whoever is still connected."""
    with scratch_postgres_database() as url:
        yield url
