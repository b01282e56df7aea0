"""The ``agent-worker`` console script. Thin: each package registers its own commands.

Commands: ``server`` (embedded Ably-compatible server), ``run`` (the worker), ``chat`` (a terminal
device on a session), ``token`` (mint an Ably-style JWT).
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="agent-worker",
    help="The agent side of Ably AI Transport 0.8.0 sessions.",
    no_args_is_help=True,
    add_completion=False,
)

# Each module defines `register(app: typer.Typer) -> None` and imports its heavy dependencies lazily
# inside the command bodies, so `agent-worker --help` stays fast.
_COMMAND_MODULES = (
    "agent_worker.server.cli",
    "agent_worker.providers.cli",
    "agent_worker.worker.cli",
    "agent_worker.client.cli",
)

for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(_name)
    except ModuleNotFoundError as exc:  # pragma: no cover - only while a package is being built
        if exc.name != _name:
            raise
        continue
    _mod.register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
