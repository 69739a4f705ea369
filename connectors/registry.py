"""The plugin registry: the plugins folder as the server knows it, watched.

The registry keeps, for each `.py` file in the folder, its text and what a worker found in it:
the plugins it defines, or why it is unavailable. A change to the folder (seen by watchfiles
within about a second) re-inspects the changed files in a worker and swaps the file's entry in one
assignment, so a fetch sees the old version or the new one, never a mix. A file that fails is
listed under its stem as UNAVAILABLE; the other plugins and the server are not touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from connectors.http import HttpStats
from connectors.plugins import PluginInfo, digest, inspect_file
from datagraph.errors import Timeout
from datagraph.locks import KeyedLocks
from engine.runtime import Executor

__all__ = ["INSPECT_TIMEOUT_S", "MAX_FILE_BYTES", "PluginFile", "PluginRegistry"]

MAX_FILE_BYTES = 1 << 20
INSPECT_TIMEOUT_S = 15.0
log = logging.getLogger("datagraph.plugins")


@dataclass(frozen=True, slots=True)
class PluginFile:
    stem: str
    code: str
    digest: str
    plugins: tuple[PluginInfo, ...]
    reason: str | None  # why the file is unavailable; None when it loaded


class PluginRegistry:
    """The plugins folder as the server knows it, kept current by `watch`."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.files: dict[str, PluginFile] = {}
        self.http = HttpStats()  # outbound requests, retries and upstream statuses, summed over fetches
        self.locks = KeyedLocks()  # one fetch at a time per plugin and parameters

    def available(self) -> dict[str, tuple[PluginFile, PluginInfo]]:
        """Every loaded plugin by name; a name two files define goes to the first file by name
        (decided on each read, so deleting that file hands the name to the next one)."""
        found: dict[str, tuple[PluginFile, PluginInfo]] = {}
        for stem in sorted(self.files):
            for info in self.files[stem].plugins:
                found.setdefault(info.name, (self.files[stem], info))
        return found

    def unavailable(self) -> list[tuple[str, str]]:
        """(file stem, reason) for files that failed to load or lost every name they define to another file."""
        winners = {name: file.stem for name, (file, _) in self.available().items()}
        out: list[tuple[str, str]] = []
        for stem in sorted(self.files):
            file = self.files[stem]
            if file.reason:
                out.append((stem, file.reason))
            elif file.plugins and all(winners.get(p.name) != stem for p in file.plugins):
                other = winners[file.plugins[0].name]
                out.append((stem, f'the plugin name "{file.plugins[0].name}" is already used by {other}.py'))
        return out

    async def load(self, executor: Executor, path: Path) -> None:
        """Inspect one file in a worker and swap its entry; remove it when the file is gone."""
        stem = path.stem
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            self.files.pop(stem, None)
            return
        if len(raw) > MAX_FILE_BYTES:
            self.files[stem] = PluginFile(stem, "", "", (), f"the file is over {MAX_FILE_BYTES // 1024} KiB")
            return
        code = raw.decode("utf-8", errors="replace")
        known = self.files.get(stem)
        if known is not None and known.digest == digest(code):
            return
        try:
            plugins, reason = await executor.run(inspect_file, stem, code, timeout=INSPECT_TIMEOUT_S)
        except Timeout:
            plugins, reason = [], f"loading it took longer than {INSPECT_TIMEOUT_S:g} s"
        except Exception as exc:  # the worker died importing it (memory, a crash)
            plugins, reason = [], getattr(exc, "message", type(exc).__name__)
        self.files[stem] = PluginFile(stem, code, digest(code), tuple(plugins), reason)
        log.info("plugin file %s: %s", stem, reason or ", ".join(p.name for p in plugins))

    def _paths(self) -> list[Path]:
        if self.folder is None or not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("*.py") if not p.name.startswith(("_", ".")))

    async def scan(self, executor: Executor) -> None:
        """Load every file in the folder, and forget files that are gone."""
        paths = self._paths()
        for stem in set(self.files) - {p.stem for p in paths}:
            self.files.pop(stem, None)
        await asyncio.gather(*(self.load(executor, p) for p in paths))

    async def watch(self, executor: Executor) -> None:
        """Follow the folder: a file added, edited or removed is reloaded within about a second."""
        if self.folder is None:
            return
        import watchfiles

        async for changes in watchfiles.awatch(self.folder, debounce=300, step=50, recursive=False):
            paths = {Path(p) for _, p in changes if p.endswith(".py") and not Path(p).name.startswith(("_", "."))}
            for path in sorted(paths):
                with contextlib.suppress(Exception):  # one bad file never stops the watch
                    await self.load(executor, path)
