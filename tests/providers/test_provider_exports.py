"""The public surface of the provider and tool packages, and lazy vendor imports."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

MODULES = [
    "agent_worker.providers",
    "agent_worker.providers.base",
    "agent_worker.tools",
    "agent_worker.plugins",
    "agent_worker.prompts",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_and_resolves(name: str) -> None:
    """Each ``__all__`` is sorted and every name in it exists."""
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported)
    for attr in exported:
        assert hasattr(module, attr), attr


def test_importing_providers_does_not_import_vendor_sdks() -> None:
    """Vendor SDKs (and llama.cpp) load only when their adapter is built."""
    code = (
        "import sys, agent_worker.providers, agent_worker.tools, agent_worker.plugins;"
        "from agent_worker.plugins import available_providers; available_providers();"
        "print(sorted(m for m in ('openai', 'anthropic', 'llama_cpp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
