"""A few useful built-in tools, registered by :mod:`agent_worker.plugins_builtin`."""

from __future__ import annotations

import ast
import operator
import random
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent_worker.errors import ToolError
from agent_worker.tools.base import RunContext

__all__ = ["calculate", "current_time", "get_client_location", "random_number", "send_notification"]


def current_time(timezone: str = "UTC") -> str:
    """Get the current date and time.

    Args:
        timezone: An IANA time zone name such as "Europe/London" or "UTC".
    """
    try:
        tz = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        msg = f"unknown time zone {timezone!r}; use an IANA name such as 'Europe/London'"
        raise ToolError(msg) from exc
    return datetime.now(tz).isoformat(timespec="seconds")


_BINOPS: dict[type[ast.operator], Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Any] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _eval(node: ast.AST) -> float | int:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value: float | int = node.value  # type: ignore[assignment]
        return value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 1000:
            msg = "exponent too large"
            raise ToolError(msg)
        return _BINOPS[type(node.op)](left, right)  # type: ignore[no-any-return]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))  # type: ignore[no-any-return]
    msg = f"unsupported expression element {type(node).__name__}; use numbers and + - * / // % ** ( )"
    raise ToolError(msg)


def calculate(expression: str) -> float | int:
    """Evaluate an arithmetic expression exactly instead of guessing.

    Args:
        expression: Numbers with + - * / // % ** and parentheses, e.g. "(3 + 4) * 2".
    """
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        msg = f"not an arithmetic expression: {expression!r}"
        raise ToolError(msg) from exc
    try:
        return _eval(tree)
    except ZeroDivisionError as exc:
        msg = "division by zero"
        raise ToolError(msg) from exc


def random_number(low: int = 1, high: int = 6) -> int:
    """Draw a random integer between low and high inclusive (a die roll by default).

    Args:
        low: Smallest possible value.
        high: Largest possible value.
    """
    if low > high:
        msg = "low must not be greater than high"
        raise ToolError(msg)
    return random.randint(low, high)


def get_client_location() -> dict[str, Any]:
    """Ask the user's device for its approximate location (the client runs this tool)."""
    msg = "get_client_location runs on the client; the worker never executes it"
    raise ToolError(msg)


def send_notification(ctx: RunContext, message: str) -> str:
    """Send a notification to the user's other devices. Needs the user's approval first.

    Args:
        message: The notification text.
    """
    ctx.logger.info("notification_sent", message_len=len(message), client_id=ctx.client_id)
    return f"notification sent: {message}"
