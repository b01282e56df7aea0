"""Number settings are finite: ``--http-write-timeout-s inf`` (``inf > 0``) was accepted, and so was a
TOML ``inf`` / ``nan`` for every float of the config — an infinite timeout silently meaning "no bound",
a ``nan`` comparing false everywhere. Each is now a ConfigError naming the setting, in the worker's
config (every float field of every section, found by introspection so a new one is covered), its
flags, provider options and the embedded server's config and flags."""

from __future__ import annotations

import math
import subprocess
import sys
import types
import typing

import pytest
from pydantic import BaseModel

from agent_worker.config import Config, config_from_mapping
from agent_worker.errors import ConfigError
from agent_worker.providers._options import ClientOptions, RetryOptions, parse_options
from agent_worker.server.config import Retention, ServerConfig
from agent_worker.worker.main import Overrides, apply_overrides


def _is_float(annotation: object) -> bool:
    if annotation is float:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return float in typing.get_args(annotation)
    return False


def _float_settings() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for section, field in Config.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            out.extend((section, name) for name, f in model.model_fields.items() if _is_float(f.annotation))
    return out


FLOATS = _float_settings()


def test_the_config_has_float_settings_to_check() -> None:
    assert ("http", "write_timeout_s") in FLOATS and ("worker", "drain_timeout_s") in FLOATS
    assert len(FLOATS) >= 10


@pytest.mark.parametrize(("section", "name"), FLOATS)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_float_setting_refuses_non_finite_values(section: str, name: str, value: float) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping({section: {name: value}})
    assert f"[{section}] {name}" in err.value.message
    assert "finite" in err.value.message or "greater" in err.value.message


@pytest.mark.parametrize("name", ["drain_timeout_s", "trigger_wait_s", "session_idle_s"])
def test_worker_durations_are_not_negative(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[worker\] {name}"):
        config_from_mapping({"worker": {name: -1.0}})
    assert getattr(config_from_mapping({"worker": {name: 0.0}}).worker, name) == 0.0


@pytest.mark.parametrize("value", [math.inf, math.nan, -1.0, 0.0])
def test_the_write_timeout_flag_refuses_non_finite_and_non_positive(value: float) -> None:
    with pytest.raises(ConfigError) as err:
        apply_overrides(Config(), Overrides(http_write_timeout_s=value))
    assert "--http-write-timeout-s" in err.value.message
    assert apply_overrides(Config(), Overrides(http_write_timeout_s=2.5)).http.write_timeout_s == 2.5


def _command(*args: str) -> tuple[int, str]:
    """``agent-worker ARGS`` in a process of its own (a command configures logging for its process)."""
    runner = "from agent_worker.cli import app; app()"
    result = subprocess.run(
        [sys.executable, "-c", runner, *args], capture_output=True, text=True, timeout=60, check=False
    )
    return result.returncode, result.stdout + result.stderr


def test_the_run_command_says_which_flag() -> None:
    code, out = _command("run", "--http-write-timeout-s", "inf")
    assert code == 1
    assert "--http-write-timeout-s must be a finite number" in out


@pytest.mark.parametrize("options", [{"timeout": math.inf}, {"retry": {"initial_wait": math.nan}}])
def test_provider_options_are_finite(options: dict[str, object]) -> None:
    with pytest.raises(
        ConfigError, match=r"\[providers\.openai[.\w]*\] \w+: Input should be a finite number"
    ):
        parse_options("openai", ClientOptions, options)
    assert parse_options("openai", RetryOptions, {"max_wait": 3.0}).max_wait == 3.0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"http_write_timeout_s": math.inf}, "http_write_timeout_s"),
        ({"http_idle_timeout_s": math.nan}, "http_idle_timeout_s"),
        ({"http_body_timeout_s": 0.0}, "http_body_timeout_s"),
        ({"retention": Retention(max_age_s=math.inf)}, "retention max_age_s"),
        ({"max_history_bytes": -5}, "max_history_bytes"),
    ],
)
def test_server_config_numbers_are_finite(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ConfigError, match=f"server setting {name} must be a finite number"):
        ServerConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "args",
    [["--http-write-timeout-s", "inf"], ["--http-idle-timeout-s", "nan"], ["--retention-seconds", "inf"]],
)
def test_the_server_command_refuses_them_before_starting(args: list[str]) -> None:
    code, out = _command("server", "--port", "0", *args)
    assert code == 2
    # (a nan fails the flag's own range check first, before the config's)
    assert "must be a finite number" in out or "Input should be greater" in out
    assert args[0] in out or "server setting" in out
