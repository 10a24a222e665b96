"""The `chit` command: the agent's commands always, the server's when it is installed.

`pip install chit` is the agent side alone (`chit exchange`, `chit agent`);
`pip install 'chit[server]'` adds the server and its tooling. The command
looks at its first word before importing anything: an agent command never
loads server code, and a server command on an agent-only installation says
how to get the server instead of failing on an import.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn, Sequence

import chit

# The server's commands, listed here so that `chit --help` names them without importing the server.
SERVER_COMMANDS = {
    "serve": "run the exchange server",
    "dev": "development helpers (a development cluster's tokens)",
    "keys": "signing keys: rotate, list, export, publish",
    "policy": "policy tooling: test, eval",
    "config": "configuration: check",
    "doctor": "check a configuration against the world: Redis, OPA, cluster keys and APIs, AWS, Google, files",
    "revoke": "revoke every token of a workload and refuse its exchanges (--lift to undo)",
    "aws": "AWS instance identity: forget-instance",
    "gateway": "run the credential-injection gateway (its own process and configuration)",
}
INSTALL_SERVER = "pip install 'chit[server]'"


def _server_missing(command: str, module: str) -> NoReturn:
    print(
        f"chit {command}: the chit server is not installed here (no module {module!r}); this installation "
        f"has the agent commands only. Install the server with: {INSTALL_SERVER}",
        file=sys.stderr,
    )
    raise SystemExit(2)


def _run_server_command(command: str, argv: list[str]) -> None:
    try:
        if command == "gateway":
            # The gateway is not the token server: its command never imports the server's code.
            from chit.gateway import cli as gateway_cli

            gateway_cli.main(argv)
            return
        from chit.server import cli as server_cli

        server_cli.main(argv)
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] == "chit":
            raise
        _server_missing(command, error.name)


def build_parser() -> argparse.ArgumentParser:
    from chit.agent.cli import add_client_commands

    parser = argparse.ArgumentParser(prog="chit", description="Workload-identity token exchange (RFC 8693).")
    parser.add_argument("--version", action="version", version=f"chit {chit.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_client_commands(commands, os.environ)
    for name, summary in SERVER_COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)  # dispatched before parsing (main)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = next((word for word in arguments if not word.startswith("-")), None)
    if command in SERVER_COMMANDS:
        _run_server_command(command, arguments)
        return
    args = build_parser().parse_args(arguments)
    args.handler(args)


if __name__ == "__main__":
    main()
