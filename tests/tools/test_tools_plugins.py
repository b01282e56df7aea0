"""Plug-in points: a third-party package, installed with pip during the test run, adds a provider
and a tool through the ``agent_worker`` entry-point group; plugin objects can also be registered
directly, and AGENT_WORKER_PLUGINS restricts what loads."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_worker import plugins
from agent_worker.errors import ConfigError
from agent_worker.hookspecs import RegisterProvider, RegisterTool, hookimpl
from agent_worker.plugins import available_providers, available_tools, build_provider, build_tools
from agent_worker.protocol.model import TextPart, UserMessage
from agent_worker.providers import EchoProvider, ModelRequest
from agent_worker.tools import RunContext, ToolResult

PLUGIN_SRC = Path(__file__).resolve().parent.parent / "plugin_pkg"


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install`` the sample plugin (no deps) into a private directory, like a user would."""
    src = tmp_path_factory.mktemp("plugin_src") / "plugin_pkg"
    shutil.copytree(PLUGIN_SRC, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp_path_factory.mktemp("plugin_site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(src)],
        check=True,
    )
    assert (target / "aw_sample_plugin").is_dir()
    return target


@pytest.fixture
def installed_plugin(plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.syspath_prepend(str(plugin_site))
    importlib.invalidate_caches()
    plugins.reset_plugins()
    try:
        yield
    finally:
        monkeypatch.undo()
        plugins.reset_plugins()
        sys.modules.pop("aw_sample_plugin", None)


def hello() -> ModelRequest:
    return ModelRequest(messages=[UserMessage((TextPart("make some noise"),))])


class TestInstalledPlugin:
    async def test_entry_point_adds_a_provider_and_a_tool(self, installed_plugin: None) -> None:
        """After pip install, the plugin's provider streams and its tool runs, by name."""
        assert "shouty" in available_providers()
        provider = build_provider("shouty", {"exclamation": "!!"})
        async with provider.stream(hello()) as stream:
            [e async for e in stream]
        assert stream.get().text == "MAKE SOME NOISE !!"
        tools = build_tools(["reverse_text", "current_time"])
        assert await tools["reverse_text"].call(RunContext("s", "r"), {"text": "abc"}) == ToolResult("cba")
        assert "reverse_text" in available_tools()

    def test_env_var_restricts_entry_points(
        self, installed_plugin: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """AGENT_WORKER_PLUGINS="" loads only the built-ins; naming the plugin loads it."""
        monkeypatch.setenv(plugins.PLUGINS_ENV, "")
        plugins.reset_plugins()
        assert "shouty" not in available_providers()
        assert "echo" in available_providers()
        monkeypatch.setenv(plugins.PLUGINS_ENV, "sample")
        plugins.reset_plugins()
        assert "shouty" in available_providers()

    def test_fresh_process_discovers_the_plugin(self, plugin_site: Path) -> None:
        """A new interpreter with the plugin on its path finds it through importlib.metadata alone."""
        code = "from agent_worker.plugins import available_providers as a; print('shouty' in a())"
        env = {"PYTHONPATH": str(plugin_site), "PATH": "/usr/bin:/bin"}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        assert out.stdout.strip() == "True"


class _DirectPlugin:
    @hookimpl
    def register_providers(self, register: RegisterProvider) -> None:
        register("echo-direct", lambda options: EchoProvider(**options))

    @hookimpl
    def register_tools(self, register: RegisterTool) -> None:
        def double(n: int) -> int:
            """Double a number."""
            return n * 2

        register(double, requires_approval=True)


class _Clash:
    @hookimpl
    def register_providers(self, register: RegisterProvider) -> None:
        register("echo", lambda options: EchoProvider())


class TestDirectRegistration:
    async def test_register_and_unregister_a_plugin_object(self) -> None:
        """A plugin object registers like an entry point and disappears when unregistered."""
        plugin = _DirectPlugin()
        plugins.register_plugin(plugin)
        try:
            assert isinstance(build_provider("echo-direct", {"prefix": "> "}), EchoProvider)
            tool = build_tools(["double"])["double"]
            assert tool.requires_approval
            assert await tool.call(RunContext("s", "r"), {"n": 21}) == ToolResult(42)
        finally:
            plugins.unregister_plugin(plugin)
        assert "echo-direct" not in available_providers()

    def test_duplicate_provider_names_are_a_config_error(self) -> None:
        """Two plugins claiming one name fail loudly, naming both."""
        plugin = _Clash()
        plugins.register_plugin(plugin, name="clash")
        try:
            with pytest.raises(ConfigError, match=r"'echo' is registered by both"):
                available_providers()
        finally:
            plugins.unregister_plugin(plugin)
