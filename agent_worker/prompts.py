"""System prompts as Markdown files with simple placeholders.

A prompt is a ``.md`` file in a prompts directory (``prompts/`` next to the config file, in the
working directory, or the one shipped in this repository). Placeholders are ``{name}`` with a
known name — see :data:`BUILTIN_PLACEHOLDERS`, plus any added under ``[prompts.values]`` in the
config. ``{{`` and ``}}`` write literal braces; other braces (JSON examples) are left alone as long
as they do not look like ``{identifier}``. An unknown placeholder is a :class:`ConfigError` at load
time, so a typo fails at startup rather than reaching the model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent_worker.errors import ConfigError

__all__ = [
    "BUILTIN_PLACEHOLDERS",
    "PromptTemplate",
    "default_prompt_dirs",
    "list_prompts",
    "load_prompt",
]

BUILTIN_PLACEHOLDERS: Mapping[str, str] = {
    "date": "today's date, e.g. 2025-06-01",
    "time": "the time of day, e.g. 14:05",
    "datetime": "ISO 8601 date and time with offset",
    "weekday": "e.g. Monday",
    "timezone": "the zone used for the values above",
    "client_id": "the requesting user's verified Ably clientId (or 'anonymous')",
    "session_name": "the AI Transport session (channel) name",
    "run_id": "the run's id",
    "agent_name": "the worker's agent name",
    "model": "the model name, when the provider has one",
}

_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_REPO_PROMPTS = Path(__file__).resolve().parent.parent / "prompts"


def _placeholders(text: str) -> set[str]:
    return {m.group(1) for m in _TOKEN.finditer(text) if m.group(1)}


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    name: str
    text: str
    path: Path | None = None
    values: Mapping[str, str] = field(default_factory=dict)
    """Fixed placeholder values from the config (``[prompts.values]``)."""
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        allowed = set(BUILTIN_PLACEHOLDERS) | set(self.values)
        unknown = sorted(_placeholders(self.text) - allowed)
        if unknown:
            where = f" in {self.path}" if self.path else ""
            msg = (
                f"prompt {self.name!r}{where} uses unknown placeholder(s) "
                f"{', '.join('{' + u + '}' for u in unknown)}; known: {', '.join(sorted(allowed))} "
                "(add your own under [prompts.values], or write {{ and }} for literal braces)"
            )
            raise ConfigError(msg)
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            msg = f"[prompts] timezone {self.timezone!r} is not an IANA zone name"
            raise ConfigError(msg) from exc

    @property
    def placeholders(self) -> set[str]:
        return _placeholders(self.text)

    def render(
        self,
        *,
        client_id: str | None = None,
        session_name: str = "",
        run_id: str = "",
        agent_name: str = "",
        model: str = "",
        now: datetime | None = None,
    ) -> str:
        when = (now or datetime.now(ZoneInfo(self.timezone))).astimezone(ZoneInfo(self.timezone))
        values: dict[str, str] = {
            "date": when.date().isoformat(),
            "time": when.strftime("%H:%M"),
            "datetime": when.isoformat(timespec="seconds"),
            "weekday": when.strftime("%A"),
            "timezone": self.timezone,
            "client_id": client_id or "anonymous",
            "session_name": session_name,
            "run_id": run_id,
            "agent_name": agent_name,
            "model": model,
            **self.values,
        }

        def sub(m: re.Match[str]) -> str:
            token = m.group(0)
            if token == "{{":
                return "{"
            if token == "}}":
                return "}"
            return values[m.group(1)]

        return _TOKEN.sub(sub, self.text).strip()


def default_prompt_dirs(config_dir: Path | None = None, prompt_dir: str | None = None) -> list[Path]:
    """Where prompts are looked up, first match wins."""
    dirs: list[Path] = []
    if prompt_dir:
        base = config_dir or Path.cwd()
        dirs.append((base / prompt_dir).resolve())
    if config_dir is not None:
        dirs.append(config_dir / "prompts")
    dirs.extend([Path.cwd() / "prompts", _REPO_PROMPTS])
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def list_prompts(dirs: Iterable[Path]) -> dict[str, Path]:
    """Prompt names (file stems) to files, earlier directories shadowing later ones."""
    found: dict[str, Path] = {}
    for d in dirs:
        if d.is_dir():
            for path in sorted(d.glob("*.md")):
                if path.stem.upper() != "README":
                    found.setdefault(path.stem, path)
    return found


def load_prompt(
    name_or_path: str,
    *,
    dirs: Sequence[Path] | None = None,
    values: Mapping[str, str] | None = None,
    timezone: str = "UTC",
) -> PromptTemplate:
    """Load a prompt by name (``"default"`` → ``default.md`` in ``dirs``) or by file path."""
    dirs = list(dirs) if dirs is not None else default_prompt_dirs()
    values = {str(k): str(v) for k, v in (values or {}).items()}
    candidate = Path(name_or_path)
    if candidate.suffix == ".md" or candidate.is_absolute() or len(candidate.parts) > 1:
        paths = [candidate] if candidate.is_absolute() else [d / candidate for d in [Path.cwd(), *dirs]]
        for path in paths:
            if path.is_file():
                return PromptTemplate(
                    candidate.stem, path.read_text(encoding="utf-8"), path, values, timezone
                )
        msg = f"prompt file {name_or_path!r} not found (looked in {', '.join(str(p) for p in paths)})"
        raise ConfigError(msg)
    known = list_prompts(dirs)
    found = known.get(name_or_path)
    if found is None:
        msg = (
            f"unknown prompt {name_or_path!r}; available: {', '.join(sorted(known)) or '(none)'} "
            f"(searched {', '.join(str(d) for d in dirs)})"
        )
        raise ConfigError(msg)
    return PromptTemplate(name_or_path, found.read_text(encoding="utf-8"), found, values, timezone)
