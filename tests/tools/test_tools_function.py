"""Tools from plain functions: schema from hints and docstrings, validation, errors as results."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Literal

import pytest
from pydantic import BaseModel
from structlog.testing import capture_logs

from agent_worker.errors import ConfigError, ToolError, UnknownToolError
from agent_worker.plugins import available_tools, build_tools
from agent_worker.tools import (
    RunContext,
    Tool,
    ToolRegistry,
    ToolResult,
)

CTX = RunContext(session_name="sess-1", run_id="run-1", client_id="alice")


async def get_weather(city: str, unit: Literal["c", "f"] = "c", days: int = 1) -> dict[str, object]:
    """Get the weather forecast for a city.

    Longer explanation that is part of the description.

    Args:
        city: The city name, e.g. "Paris".
        unit: Temperature unit.
            Celsius or Fahrenheit.
        days: How many days ahead.

    Returns:
        The forecast.
    """
    return {"city": city, "unit": unit, "days": days}


def whoami(ctx: RunContext, shout: bool = False) -> str:
    """Say who is asking."""
    text = f"{ctx.client_id}@{ctx.session_name}/{ctx.run_id}"
    return text.upper() if shout else text


class Point(BaseModel):
    x: int
    y: int


@dataclass
class Pair:
    a: int
    b: int


class TestSchema:
    def test_schema_and_description_from_hints_and_docstring(self) -> None:
        """Types, defaults, Literal enums and Args descriptions end up in the JSON schema."""
        d = Tool.from_function(get_weather).definition
        assert d.name == "get_weather"
        assert (
            d.description
            == "Get the weather forecast for a city.\n\nLonger explanation that is part of the description."
        )
        assert d.parameters == {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "city": {"type": "string", "description": 'The city name, e.g. "Paris".'},
                "unit": {
                    "enum": ["c", "f"],
                    "type": "string",
                    "default": "c",
                    "description": "Temperature unit. Celsius or Fahrenheit.",
                },
                "days": {"type": "integer", "default": 1, "description": "How many days ahead."},
            },
            "required": ["city"],
        }

    def test_context_parameter_is_not_in_the_schema(self) -> None:
        """A leading RunContext parameter is injected, not exposed to the model."""
        assert set(Tool.from_function(whoami).definition.parameters["properties"]) == {"shout"}

    def test_flags_and_overrides(self) -> None:
        """name/client_side/requires_approval are kept on the tool."""
        t = Tool.from_function(whoami, name="who", client_side=True, requires_approval=True)
        assert (t.name, t.client_side, t.requires_approval) == ("who", True, True)
        assert "client_side=True" in repr(t)

    def test_rejects_nameless_and_untyped(self) -> None:
        """Lambdas need a name; every parameter needs a type hint; *args is refused."""
        with pytest.raises(ConfigError, match="name"):
            Tool.from_function(lambda: 1)

        def untyped(x):  # type: ignore[no-untyped-def]
            return x

        with pytest.raises(ConfigError, match="type hint"):
            Tool.from_function(untyped)

        def star(*names: str) -> None: ...

        with pytest.raises(ConfigError, match="plain named"):
            Tool.from_function(star)
        with pytest.raises(ConfigError, match="a-zA-Z0-9"):
            Tool.from_function(whoami, name="has space")


class TestCall:
    async def test_async_tool_with_validated_arguments(self) -> None:
        """Arguments are validated and coerced ("2" → 2) before the call; JSON text works too."""
        t = Tool.from_function(get_weather)
        assert await t.call(CTX, {"city": "Oslo", "days": "2"}) == ToolResult(
            {"city": "Oslo", "unit": "c", "days": 2}
        )
        assert await t.call(CTX, '{"city": "Rome", "unit": "f"}') == ToolResult(
            {"city": "Rome", "unit": "f", "days": 1}
        )

    async def test_sync_tool_runs_in_a_thread_and_gets_the_context(self) -> None:
        """Sync functions run off the event loop and receive the RunContext."""
        seen: list[str] = []

        def where(ctx: RunContext) -> str:
            """Which thread runs me."""
            seen.append(threading.current_thread().name)
            return ctx.run_id

        assert await Tool.from_function(where).call(CTX, {}) == ToolResult("run-1")
        assert seen and seen[0] != threading.current_thread().name
        assert await Tool.from_function(whoami).call(CTX, {"shout": True}) == ToolResult("ALICE@SESS-1/RUN-1")

    async def test_exceptions_become_error_results(self) -> None:
        """A raised exception is reported to the model, with its type, and logged."""

        def broken(x: int) -> int:
            """Always fails."""
            raise KeyError(x)

        with capture_logs() as logs:
            result = await Tool.from_function(broken).call(CTX, {"x": 1})
        assert result == ToolResult("KeyError: 1", is_error=True)
        assert any(entry["event"] == "tool_failed" for entry in logs)

    async def test_tool_error_message_is_passed_verbatim(self) -> None:
        """ToolError is the way to tell the model something precise."""

        def picky() -> None:
            """Refuses."""
            msg = "try again with a city name"
            raise ToolError(msg)

        assert await Tool.from_function(picky).call(CTX, {}) == ToolResult("try again with a city name", True)

    async def test_bad_arguments_become_error_results(self) -> None:
        """Missing, extra or mistyped arguments and bad JSON come back as explanations."""
        t = Tool.from_function(get_weather)
        missing = await t.call(CTX, {})
        assert missing.is_error and "city" in missing.output
        extra = await t.call(CTX, {"city": "x", "country": "y"})
        assert extra.is_error and "country" in extra.output
        wrong = await t.call(CTX, {"city": "x", "unit": "kelvin"})
        assert wrong.is_error and "unit" in wrong.output
        bad_json = await t.call(CTX, "{not json")
        assert bad_json.is_error and "JSON" in bad_json.output

    async def test_structured_outputs_are_json_ready(self) -> None:
        """Pydantic models and dataclasses are returned as plain dicts."""

        def point(x: int, y: int) -> Point:
            """A point."""
            return Point(x=x, y=y)

        def pair(p: Pair) -> Pair:
            """Echo a pair."""
            return p

        assert await Tool.from_function(point).call(CTX, {"x": 1, "y": 2}) == ToolResult({"x": 1, "y": 2})
        assert await Tool.from_function(pair).call(CTX, {"p": {"a": 1, "b": 2}}) == ToolResult(
            {"a": 1, "b": 2}
        )

    async def test_cancellation_propagates(self) -> None:
        """Cancelling the run cancels an async tool; it is not turned into a result."""
        started = asyncio.Event()

        async def slow() -> None:
            """Waits forever."""
            started.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(Tool.from_function(slow).call(CTX, {}))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


class TestRegistry:
    def test_duplicates_are_refused_and_definitions_keep_order(self) -> None:
        """Names are unique; definitions come in registration order."""
        reg = ToolRegistry([Tool.from_function(get_weather)])
        reg.add(whoami)
        with pytest.raises(ConfigError, match="twice"):
            reg.add(get_weather)
        assert [d.name for d in reg.definitions()] == ["get_weather", "whoami"]
        assert reg.get("nope") is None
        with pytest.raises(UnknownToolError):
            reg["nope"]

    def test_build_tools_from_names_and_import_paths(self) -> None:
        """Registered names and import paths (with ?client / ?approval flags) both work."""
        reg = build_tools(
            ["current_time", f"{__name__}:get_weather?approval", f"{__name__}:whoami?client&approval"]
        )
        assert [t.name for t in reg] == ["current_time", "get_weather", "whoami"]
        weather, who = reg["get_weather"], reg["whoami"]
        assert (weather.client_side, weather.requires_approval) == (False, True)
        assert (who.client_side, who.requires_approval) == (True, True)
        with pytest.raises(UnknownToolError, match="current_time"):
            build_tools(["no_such_tool"])
        with pytest.raises(ConfigError, match="flag"):
            build_tools([f"{__name__}:whoami?sometimes"])
        with pytest.raises(ConfigError, match="cannot import"):
            build_tools(["no_such_module_xyz:fn"])


class TestBuiltins:
    def test_builtins_are_registered_with_their_flags(self) -> None:
        """The built-in plugin provides the documented tools, client-side and approval ones flagged."""
        tools = available_tools()
        assert {
            "current_time",
            "calculate",
            "random_number",
            "get_client_location",
            "send_notification",
        } <= set(tools)
        assert tools["get_client_location"].client_side
        assert tools["send_notification"].requires_approval

    async def test_current_time_and_calculate(self) -> None:
        """current_time honours the zone; calculate evaluates arithmetic only."""
        tools = build_tools(["current_time", "calculate", "random_number"])
        now = await tools["current_time"].call(CTX, {"timezone": "Asia/Tokyo"})
        assert not now.is_error and now.output.endswith("+09:00")
        bad_zone = await tools["current_time"].call(CTX, {"timezone": "Mars/Olympus"})
        assert bad_zone.is_error
        assert await tools["calculate"].call(CTX, {"expression": "(3 + 4) * 2 ** 3"}) == ToolResult(56)
        for expr in ["__import__('os')", "1/0", "2 ** 99999", "1 +"]:
            assert (await tools["calculate"].call(CTX, {"expression": expr})).is_error, expr
        roll = await tools["random_number"].call(CTX, {"low": 3, "high": 3})
        assert roll == ToolResult(3)
