"""API-pull plugins as the API shows them."""

from __future__ import annotations

from enum import Enum
from typing import cast

import strawberry
from strawberry.scalars import JSON

from datagraph.context import Context
from resolvers.plugins import PluginRegistry

__all__ = ["Plugin", "PluginFetchInput", "PluginStatus", "list_plugins"]


@strawberry.enum
class PluginStatus(Enum):
    AVAILABLE = "AVAILABLE"
    UNAVAILABLE = "UNAVAILABLE"


@strawberry.type(description="A DataSourcePlugin found in the plugins folder, or a file there that failed to load.")
class Plugin:
    name: str
    version: str | None
    description: str | None
    status: PluginStatus
    reason: str | None = strawberry.field(description="Why UNAVAILABLE, in one line.")
    params: JSON | None = strawberry.field(description="The parameters it takes: name, type, required, default, ...")
    schema: JSON | None = strawberry.field(description="The columns and types it declares it returns, if it does.")
    file: str = strawberry.field(description="The file it comes from, without the folder.")


@strawberry.input(description="One fetch in fetchPlugins: a plugin, its parameters, and a name for a new dataset.")
class PluginFetchInput:
    plugin: str
    params: JSON | None = None
    name: str | None = None


def list_plugins(ctx: Context) -> list[Plugin]:
    """Available plugins by name, then files that failed, by file name."""
    registry: PluginRegistry = ctx.resources.plugins
    listed = [
        Plugin(
            name=info.name,
            version=info.version,
            description=info.description,
            status=PluginStatus.AVAILABLE,
            reason=None,
            params=cast(JSON, info.params),
            schema=cast(JSON, info.schema),
            file=f"{file.stem}.py",
        )
        for name, (file, info) in sorted(registry.available().items())
    ]
    broken = [
        Plugin(
            name=stem,
            version=None,
            description=None,
            status=PluginStatus.UNAVAILABLE,
            reason=reason,
            params=None,
            schema=None,
            file=f"{stem}.py",
        )
        for stem, reason in registry.unavailable()
    ]
    return listed + broken
