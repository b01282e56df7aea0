"""Derive a tool's description and JSON schema from a Python function's signature and docstring.

Pydantic builds the schema and validates arguments, so ``int``, ``Literal[...]``, ``list[str]``,
dataclasses, ``TypedDict`` and pydantic models all work as parameter types. Parameter descriptions
come from a Google-style ``Args:`` section (``name: text`` lines, continuation lines indented).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from agent_worker.errors import ConfigError

__all__ = ["FunctionSignature", "parse_docstring"]

_SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Returns|Raises|Yields|Examples?|Notes?):\s*$")
_ARG = re.compile(r"^\s*\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Return (description, {parameter: description}) from a Google-style docstring."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    description: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    arg_indent: int | None = None
    for line in lines:
        header = _SECTION.match(line)
        if header:
            section, current, arg_indent = header.group(1), None, None
            continue
        if section is None:
            description.append(line)
        elif section in {"Args", "Arguments", "Parameters"}:
            if not line.strip():
                current = None
                continue
            indent = len(line) - len(line.lstrip())
            m = _ARG.match(line)
            if m and (arg_indent is None or indent <= arg_indent):
                arg_indent = indent
                current = m.group(1)
                params[current] = m.group(2).strip()
            elif current is not None:
                params[current] = f"{params[current]} {line.strip()}".strip()
    text = "\n".join(description).strip()
    return re.sub(r"\n{3,}", "\n\n", text), params


def _strip_titles(schema: Any) -> Any:
    """Pydantic's auto ``title`` keys only cost tokens; drop them (property names stay)."""
    if isinstance(schema, dict):
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key == "title" and isinstance(value, str):
                continue
            if key == "properties" and isinstance(value, dict):
                out[key] = {k: _strip_titles(v) for k, v in value.items()}
            else:
                out[key] = _strip_titles(value)
        return out
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


class FunctionSignature:
    """The parameters of a tool function: schema, validator, and whether it takes a RunContext."""

    def __init__(self, fn: Callable[..., Any], *, name: str, context_type: type) -> None:
        try:
            hints = get_type_hints(fn)
        except Exception as exc:
            msg = f"tool {name!r}: cannot resolve type hints ({exc}); import annotated types at module level"
            raise ConfigError(msg) from exc
        description, param_docs = parse_docstring(inspect.getdoc(fn))
        self.description = description
        params = list(inspect.signature(fn).parameters.values())
        self.takes_context = bool(params) and _is_context(hints.get(params[0].name), context_type)
        if self.takes_context:
            params = params[1:]
        fields: dict[str, Any] = {}
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
                msg = f"tool {name!r}: parameter {p.name!r} must be a plain named parameter"
                raise ConfigError(msg)
            if p.name not in hints:
                msg = f"tool {name!r}: parameter {p.name!r} needs a type hint"
                raise ConfigError(msg)
            default = ... if p.default is p.empty else p.default
            fields[p.name] = (hints[p.name], Field(default, description=param_docs.get(p.name)))
        self.model: type[BaseModel] = create_model(
            f"{name}_arguments",
            __config__=ConfigDict(extra="forbid"),
            **fields,
        )
        schema = _strip_titles(self.model.model_json_schema())
        schema.setdefault("properties", {})
        schema.pop("description", None)
        self.parameters: dict[str, Any] = schema

    def validate(self, arguments: Any) -> dict[str, Any]:
        """Validated keyword arguments (pydantic ``ValidationError`` on bad input)."""
        model = self.model.model_validate(arguments)
        return {k: getattr(model, k) for k in type(model).model_fields}


def _is_context(hint: Any, context_type: type) -> bool:
    origin = getattr(hint, "__origin__", hint)
    return isinstance(origin, type) and issubclass(origin, context_type)
