"""`datagraph serve | settings | schema`: every setting is also a command-line option."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from pydantic import ValidationError

from connectors.sources import SourcesError, configured_sources
from datagraph.settings import Settings, settings_table

__all__ = ["main"]


def _add_setting_options(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=field.description
            )
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=field.description)


def load_settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by options given on the command line."""
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        sys.exit(f"datagraph: bad setting: {problems}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="datagraph", description="A personal data-analysis server.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="Serve the GraphQL API.")
    _add_setting_options(serve)
    commands.add_parser("settings", help="Print the settings table (Markdown).")
    commands.add_parser("schema", help="Print the GraphQL schema (SDL).")
    args = parser.parse_args(argv)

    if args.command == "settings":
        print(settings_table())
    elif args.command == "schema":
        from gql.schema import schema

        print(schema.as_str())
    else:
        settings = load_settings(args)
        try:
            configured_sources(settings.sources)  # a bad sources file stops here, naming the key
        except SourcesError as exc:
            sys.exit(f"datagraph: {exc}")
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        import uvicorn

        from datagraph.app import create_app

        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            ws_max_size=1 << 20,
        )


if __name__ == "__main__":
    main()
