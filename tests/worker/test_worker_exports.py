"""The public surface of the transport, runtime and worker packages."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize("name", ["agent_worker.transport", "agent_worker.runtime", "agent_worker.worker"])
def test_all_is_sorted_and_importable(name: str) -> None:
    """Each package's ``__all__`` is sorted and every name in it exists."""
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported)
    for attr in exported:
        assert getattr(module, attr) is not None


def test_cli_registration_stays_light() -> None:
    """Importing the `run` command's module loads neither ably-python nor aiohttp nor the runtime."""
    code = (
        "import sys, agent_worker.worker.cli\n"
        "heavy = [m for m in ('ably', 'aiohttp', 'agent_worker.runtime') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
