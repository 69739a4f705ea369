"""`datagraph serve | settings | schema | keys | documents | versions | diff`: every setting is also a
command-line option."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from graphql import GraphQLError, parse
from pydantic import ValidationError

from connectors.sources import SourcesError, configured_sources
from datagraph.settings import Settings, keys_required, settings_table
from server.auth import NO_KEYS_MESSAGE, hash_key, new_key
from server.history_cli import CommandError, diff_versions, find_dataset, format_diff, format_versions
from server.responses import query_too_long
from storage import DataDir, Documents, MetadataStore, document_hash

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
    """The `datagraph` command. Output piped into a reader that stops early (`datagraph settings |
    head`) ends it quietly, as other command-line tools do, not with a traceback."""
    try:
        _main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit: point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)  # 128 + SIGPIPE, what a shell reports for a writer whose reader left


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="datagraph", description="A personal data-analysis server.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="Serve the GraphQL API.")
    _add_setting_options(serve)
    commands.add_parser("settings", help="Print the settings table (Markdown).")
    commands.add_parser("schema", help="Print the GraphQL schema (SDL).")
    keys = commands.add_parser("keys", help="Create, list and revoke API keys.")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="Make a key; it is printed once, alone on the last line.")
    create.add_argument("--name", required=True, help="What the key is for (unique).")
    key_commands.add_parser("list", help="The keys' names and when they were made.")
    revoke = key_commands.add_parser("revoke", help="Revoke a key by name; requests with it fail within a second.")
    revoke.add_argument("name")
    documents = commands.add_parser("documents", help="Register and list persisted (trusted) GraphQL documents.")
    document_commands = documents.add_subparsers(dest="documents_command", required=True)
    add = document_commands.add_parser("add", help="Register GraphQL documents; print each one's documentId.")
    add.add_argument("files", nargs="+", metavar="FILE", help="A .graphql file; its exact text is the document.")
    document_commands.add_parser("list", help="The registered documents' ids, kinds and first lines.")
    versions = commands.add_parser("versions", help="A dataset's kept versions, newest first.")
    versions.add_argument("dataset", metavar="DATASET", help="The dataset's id (or its name, when no other has it).")
    diff = commands.add_parser("diff", help="What changed in a dataset between two of its versions.")
    diff.add_argument("dataset", metavar="DATASET", help="The dataset's id (or its name, when no other has it).")
    diff.add_argument("before", metavar="FROM", type=int, help="The version compared against (before).")
    diff.add_argument("after", metavar="TO", type=int, help="The version compared (after).")
    diff.add_argument(
        "--key", action="append", metavar="COL", help="A column that identifies a row (repeat for more); without"
        " it, whole rows are compared and rows are only added or removed.",
    )  # fmt: skip
    diff.add_argument("--limit", type=int, default=20, metavar="N", help="Changed rows printed at most (20).")
    subs = (create, *key_commands.choices.values(), *document_commands.choices.values(), versions, diff)
    for sub in subs:
        for name in ("data_dir", "metadata_url"):
            flag = "--" + name.replace("_", "-")
            if flag not in sub._option_string_actions:
                sub.add_argument(flag, dest=name, default=None, help=Settings.model_fields[name].description)
    args = parser.parse_args(argv)

    if args.command == "settings":
        print(settings_table())
    elif args.command == "schema":
        from gql.schema import build_schema

        print(build_schema().as_str())
    elif args.command == "keys":
        _keys(args, load_settings(args))
    elif args.command == "documents":
        _documents(args, load_settings(args))
    elif args.command in ("versions", "diff"):
        _history(args, load_settings(args))
    else:
        settings = load_settings(args)
        try:
            configured_sources(settings.sources)  # a bad sources file stops here, naming the key
        except SourcesError as exc:
            sys.exit(f"datagraph: {exc}")
        if settings.webhook_url:  # a webhook on a blocked network stops here, saying so
            _check_webhook(settings)
        if keys_required(settings):
            with _store(settings) as store:
                if not store.key_hashes():
                    sys.exit(f"datagraph: {NO_KEYS_MESSAGE}")
        if settings.metrics_dir:  # read by prometheus_client when it is first imported, just below
            Path(settings.metrics_dir).mkdir(parents=True, exist_ok=True)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = settings.metrics_dir
        import uvicorn

        from server.app import create_app
        from server.observe import configure_logging

        configure_logging(settings.log_level, settings.log_format)
        # `kill -USR1 <pid>` prints every thread's stack to stderr: for a server that will not stop.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_config=None,  # uvicorn's loggers go through ours (text or JSON, with request ids)
            log_level=settings.log_level.lower(),
            access_log=False,  # the app logs each request itself, with its id
            # Messages over max_request_kb are closed by the app (1009, naming the setting); far larger
            # ones by uvicorn, before it has read them whole.
            ws_max_size=max(1 << 20, 2 * settings.max_request_kb * 1024),
            # A connection that does not end (a websocket whose handler waits on) must not keep a
            # stopping server up for ever: after the grace, uvicorn cancels what is left.
            timeout_graceful_shutdown=settings.shutdown_grace_s,
        )


@contextlib.contextmanager
def _store(settings: Settings) -> Iterator[MetadataStore]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = MetadataStore(settings.resolved_metadata_url)
    try:
        yield store
    finally:
        store.close()


def _check_webhook(settings: Settings) -> None:
    """The start-up check `open_resources` makes too, here before uvicorn starts: a plain exit message
    rather than a failed lifespan's traceback."""
    import asyncio

    from connectors.webhook import blocked_webhook
    from resolvers.plugins import http_settings

    refused = asyncio.run(blocked_webhook(settings.webhook_url, http_settings(settings).blocked_networks))
    if refused:
        sys.exit(f"datagraph: {refused}")


def _keys(args: argparse.Namespace, settings: Settings) -> None:
    with _store(settings) as store:
        if args.keys_command == "create":
            name = args.name.strip()
            if not name or len(name) > 80:
                sys.exit("datagraph: a key's name must have 1 to 80 characters.")
            key = new_key()
            if not store.add_key(name, hash_key(key)):
                sys.exit(f"datagraph: there is already a key called {name!r}; revoke it first or pick another name.")
            print(f"Created the API key {name!r}. Keep it now: it is stored hashed and cannot be shown again.")
            print(key)
        elif args.keys_command == "list":
            for name, made in store.list_keys():
                print(f"{name}\t{made.isoformat(timespec='seconds')}")
        elif not store.revoke_key(args.name):
            sys.exit(f"datagraph: there is no key called {args.name!r}.")
        else:
            print(f"Revoked the API key {args.name!r}.")


def _history(args: argparse.Namespace, settings: Settings) -> None:
    with _store(settings) as store:
        try:
            record = find_dataset(store, args.dataset)
            if args.command == "versions":
                print(format_versions(store, record))
                return
            files = DataDir(settings.data_dir)
            data, _ = diff_versions(store, files, record, args.before, args.after, key=args.key, limit=args.limit)
        except CommandError as exc:
            sys.exit(f"datagraph: {exc}")
        print(format_diff(data, before=args.before, after=args.after))


def _documents(args: argparse.Namespace, settings: Settings) -> None:
    with _store(settings) as store:
        table = Documents(store.engine)
        if args.documents_command == "list":
            for doc in table.listed():
                first = doc.text.strip().splitlines()[0][:60] if doc.text.strip() else ""
                print(f"sha256:{doc.id}\t{doc.kind}\t{doc.created_at.isoformat(timespec='seconds')}\t{first}")
            return
        for name in args.files:
            try:
                text = Path(name).read_bytes().decode("utf-8")  # bytes: the exact text, line ends and all
            except (OSError, UnicodeDecodeError) as exc:
                sys.exit(f"datagraph: cannot read {name} as UTF-8 text ({type(exc).__name__}).")
            if too_long := query_too_long(text, settings.max_query_chars):
                sys.exit(f"datagraph: {name}: {too_long}")
            try:
                parse(text, no_location=True)
            except GraphQLError as exc:
                sys.exit(f"datagraph: {name} is not a GraphQL document: {exc.message}")
            if table.add(text, kind="trusted", limit=settings.persisted_max_documents) == "full":
                sys.exit(f"datagraph: {settings.persisted_max_documents:,} trusted documents are registered already"
                         " (setting persisted_max_documents).")  # fmt: skip
            print(f"sha256:{document_hash(text)}\t{name}")


if __name__ == "__main__":
    main()
