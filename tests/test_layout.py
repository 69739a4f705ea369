"""The layers: every package's public face is true, the floors import one way (import-linter, as
`make lint` runs it, refuses a back-arrow and a circle), workers load no server code, plugins
import only the ground floor, and per-key locks do not outlive their use."""

from __future__ import annotations

import ast
import asyncio
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from datagraph.locks import KeyedLocks

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["server", "gql", "resolvers", "connectors", "engine", "storage", "datagraph"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_names_its_public_face_truly(package: str) -> None:
    module = importlib.import_module(package)
    names = module.__all__
    doc = module.__doc__ or ""
    assert "Layer" in doc or "floor" in doc, f"{package}'s docstring says where it stands"
    namespace: dict[str, object] = {}
    exec(f"from {package} import *", namespace)  # fails on a name in __all__ that is not there
    assert set(names) <= set(namespace)


def test_the_worker_side_of_the_engine_loads_nothing_of_the_server() -> None:
    code = (
        "import sys, engine, engine._worker\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in"
        " {'server', 'gql', 'resolvers', 'connectors', 'strawberry', 'starlette', 'prometheus_client'})\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == ""


def test_the_command_loads_no_metrics_library_before_it_reads_the_metrics_dir() -> None:
    # prometheus_client reads PROMETHEUS_MULTIPROC_DIR once, when first imported.
    code = "import sys, server.cli; print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("path", sorted((ROOT / "plugins").glob("*.py")), ids=lambda p: p.name)
def test_shipped_plugins_import_only_the_ground_floor(path: Path) -> None:
    tree = ast.parse(path.read_text("utf-8"))
    used = {
        name.split(".")[0]
        for node in ast.walk(tree)
        for name in (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
    }
    assert used & set(PACKAGES) <= {"datagraph"}, used


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` with the project's own contracts over the packages written under `tree`."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["importlinter"]
    lines = ["[importlinter]", "root_packages =", *(f"    {p}" for p in PACKAGES)]
    lines.append(f"include_external_packages = {config['include_external_packages']}")
    for i, contract in enumerate(config["contracts"]):
        lines.append(f"[importlinter:contract:{i}]")
        for key, value in contract.items():
            lines.append(
                f"{key} =" + ("".join(f"\n    {v}" for v in value) if isinstance(value, list) else f" {value}")
            )
    (tree / ".importlinter").write_text("\n".join(lines) + "\n")
    command = [str(Path(sys.executable).parent / "lint-imports"), "--no-cache", ".importlinter"]
    return subprocess.run(command, capture_output=True, text=True, cwd=tree, env={"PYTHONPATH": str(tree)})


def _packages(tree: Path, imports: dict[str, str]) -> None:
    for package in PACKAGES:
        (tree / package).mkdir()
        (tree / package / "__init__.py").write_text("")
    for module, source in imports.items():
        (tree / (module.replace(".", "/") + ".py")).write_text(source)


def test_the_layer_contract_passes_on_imports_that_point_down(tmp_path: Path) -> None:
    _packages(
        tmp_path, {"server.app": "import gql.types\n", "gql.types": "import datagraph.errors\n", "datagraph.errors": ""}
    )
    result = _lint(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_layer_contract_refuses_a_back_arrow_even_for_type_checking(tmp_path: Path) -> None:
    back = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import resolvers.context\n"
    _packages(tmp_path, {"resolvers.context": "", "engine.jobs": back})
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "engine is not allowed to import resolvers" in result.stdout


def test_the_plain_function_contract_refuses_a_resolver_that_imports_strawberry(tmp_path: Path) -> None:
    _packages(tmp_path, {"resolvers.frames": "import strawberry\n"})
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "resolvers is not allowed to import strawberry" in result.stdout


def test_the_cycle_contract_refuses_two_modules_that_import_each_other(tmp_path: Path) -> None:
    _packages(
        tmp_path, {"engine._plan": "import engine._clean\n", "engine._clean": "def f():\n    import engine._plan\n"}
    )
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "._plan -> ._clean" in result.stdout


def test_keyed_locks_serialise_one_key_and_forget_it_when_unused() -> None:
    async def scenario() -> tuple[list[str], int, int]:
        locks = KeyedLocks()
        order: list[str] = []

        async def change(key: str, name: str) -> None:
            async with locks.hold(key):
                order.append(f"{name} in")
                await asyncio.sleep(0.01)
                order.append(f"{name} out")

        first = asyncio.create_task(change("a", "1"))
        await asyncio.sleep(0)
        second = asyncio.create_task(change("a", "2"))
        await asyncio.sleep(0)
        during = len(locks)
        await asyncio.gather(first, second)
        for i in range(1000):  # many keys, each used once
            async with locks.hold(f"k{i}"):
                pass
        return order, during, len(locks)

    order, during, after = asyncio.run(scenario())
    assert order == ["1 in", "1 out", "2 in", "2 out"]
    assert during == 1
    assert after == 0


def test_keyed_locks_forget_a_key_whose_holder_was_cancelled() -> None:
    async def scenario() -> int:
        locks = KeyedLocks()

        async def hold_long() -> None:
            async with locks.hold("a"):
                await asyncio.sleep(10)

        holder = asyncio.create_task(hold_long())
        await asyncio.sleep(0)
        waiter = asyncio.create_task(hold_long())
        await asyncio.sleep(0)
        waiter.cancel()
        holder.cancel()
        await asyncio.gather(holder, waiter, return_exceptions=True)
        return len(locks)

    assert asyncio.run(scenario()) == 0
