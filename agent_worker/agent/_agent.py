"""``Agent[Deps]``: the one agent record — provider, system prompt, tools, deps, limits, hooks.

Built in code (``Agent("openai", system_prompt=..., deps=make_deps)`` plus ``@agent.tool``) or from
the TOML file (:meth:`Agent.from_config`); either way it is a run handler the :class:`Worker` calls
once per pass, so a team with its own loop can pass a plain ``async def handler(run)`` instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

from agent_worker.agent.loop import run_pass
from agent_worker.config import Config, load_config
from agent_worker.errors import ConfigError
from agent_worker.logs import get_logger
from agent_worker.prompts import PromptTemplate, default_prompt_dirs, load_prompt
from agent_worker.providers.base import ModelProvider
from agent_worker.providers.registry import choose_default_provider
from agent_worker.runtime.handler import AgentRun
from agent_worker.runtime.run import CancelHook
from agent_worker.tools.base import DepsT, RunContext, Tool
from agent_worker.tools.registry import ToolRegistry

__all__ = ["Agent", "SystemPrompt"]

log = get_logger("agent_worker.agent")

SystemPrompt = (
    str | PromptTemplate | Callable[[RunContext[DepsT]], "str | Awaitable[str | None] | None"] | None
)
"""Fixed text, a prompt template (placeholders filled per run), or a function of the run context."""

ToolFunc = Callable[..., Any]
F = TypeVar("F", bound=Callable[..., Any])


class Agent(Generic[DepsT]):
    """An agent: what a run needs to think. ``DepsT`` is the type of ``RunContext.deps``.

    ``provider``: a :class:`ModelProvider`, a registered name (``"openai"``, ``"echo"``) or an
    import path (``"pkg.mod:factory"``) built with ``provider_options``; ``None`` picks one the way
    ``agent-worker run`` does (an API key in the environment, else the local model, else echo).
    ``prompt``: a prompt file by name (``prompts/<name>.md``) instead of ``system_prompt``.
    ``deps``: a factory (sync or async, no arguments) called for every pass of a run; its result is
    ``ctx.deps`` in tools and in a system-prompt function.
    """

    def __init__(
        self,
        provider: ModelProvider | str | None = None,
        *,
        name: str = "agent",
        system_prompt: SystemPrompt[DepsT] = None,
        prompt: str | None = None,
        tools: Iterable[Tool | ToolFunc] = (),
        deps: Callable[[], DepsT | Awaitable[DepsT]] | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        max_model_calls: int = 8,
        on_cancel: CancelHook | None = None,
        provider_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        if isinstance(provider, ModelProvider):
            self.provider: ModelProvider = provider
            self.provider_name = str(getattr(provider, "name", type(provider).__name__))
            self.provider_reason = "configured"
        else:
            from agent_worker.plugins import build_provider  # noqa: PLC0415 - plugins load on demand

            if provider is None:
                provider, self.provider_reason = choose_default_provider()
            else:
                self.provider_reason = "configured"
            self.provider_name = provider
            self.provider = build_provider(provider, provider_options)
        if prompt is not None and system_prompt is not None:
            msg = "pass either system_prompt= (text or a function) or prompt= (a prompt file's name)"
            raise ConfigError(msg)
        self.system_prompt: SystemPrompt[DepsT] = load_prompt(prompt) if prompt is not None else system_prompt
        self.tools = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)
        self.deps_factory = deps
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        if max_model_calls < 1:
            msg = "max_model_calls must be at least 1"
            raise ConfigError(msg)
        self.max_model_calls = max_model_calls
        self.on_cancel = on_cancel

    def __repr__(self) -> str:
        tools = [t.name for t in self.tools]
        return f"Agent(name={self.name!r}, provider={self.provider_name!r}, tools={tools})"

    # --- tools -------------------------------------------------------------------------------------

    @overload
    def tool(self, fn: F, /) -> F: ...

    @overload
    def tool(
        self,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        client_side: bool = False,
        requires_approval: bool = False,
    ) -> Callable[[F], F]: ...

    def tool(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        client_side: bool = False,
        requires_approval: bool = False,
    ) -> Any:
        """Register a tool whose first parameter is ``ctx: RunContext[Deps]`` (decorator, with or
        without arguments). ``client_side``: the client executes it; ``requires_approval``: the run
        suspends until the user approves the call."""
        options = {"name": name, "description": description, "client_side": client_side}
        return self._register(fn, with_context=True, requires_approval=requires_approval, **options)

    @overload
    def tool_plain(self, fn: F, /) -> F: ...

    @overload
    def tool_plain(
        self,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        client_side: bool = False,
        requires_approval: bool = False,
    ) -> Callable[[F], F]: ...

    def tool_plain(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        client_side: bool = False,
        requires_approval: bool = False,
    ) -> Any:
        """Register a tool that takes no run context (decorator, with or without arguments)."""
        options = {"name": name, "description": description, "client_side": client_side}
        return self._register(fn, with_context=False, requires_approval=requires_approval, **options)

    def _register(self, fn: Callable[..., Any] | None, *, with_context: bool, **options: Any) -> Any:
        def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
            tool = Tool.from_function(func, **options)
            if tool.takes_context != with_context:
                which = "@agent.tool" if tool.takes_context else "@agent.tool_plain"
                msg = (
                    f"tool {tool.name!r}: @agent.tool functions take 'ctx: RunContext[...]' first, "
                    f"@agent.tool_plain functions do not; use {which}"
                )
                raise ConfigError(msg)
            self.tools.add(tool)
            return func

        return decorate if fn is None else decorate(fn)

    # --- per run -----------------------------------------------------------------------------------

    async def context(self, run: AgentRun) -> RunContext[DepsT]:
        """The tools' view of ``run``, with fresh deps from the factory."""
        deps: Any = None
        if self.deps_factory is not None:
            deps = self.deps_factory()
            if inspect.isawaitable(deps):
                deps = await deps
        return RunContext(
            session_name=run.session_name,
            run_id=run.run_id,
            client_id=run.client_id,
            logger=log.bind(run_id=run.run_id, session=run.session_name),
            deps=deps,
        )

    async def render_system_prompt(self, ctx: RunContext[DepsT]) -> str | None:
        prompt = self.system_prompt
        if prompt is None or isinstance(prompt, str):
            return prompt
        if isinstance(prompt, PromptTemplate):
            return prompt.render(
                client_id=ctx.client_id,
                session_name=ctx.session_name,
                run_id=ctx.run_id,
                agent_name=self.name,
                model=str(self.model or getattr(self.provider, "model", "") or ""),
            )
        text = prompt(ctx)
        if inspect.isawaitable(text):
            text = await text
        return text

    async def __call__(self, run: AgentRun, /) -> None:
        """One pass of the model ↔ tools loop over ``run`` (the worker calls this)."""
        await run_pass(self, run)

    async def aclose(self) -> None:
        """Close the provider's HTTP client, if it has one."""
        aclose = getattr(self.provider, "aclose", None)
        if aclose is not None:
            await aclose()

    # --- from the TOML file ------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls, config: str | Path | Config | None = None, *, provider: str | None = None
    ) -> Agent[None]:
        """The agent the config file describes (``[provider]``, ``[providers.*]``, ``[tools]``,
        ``[prompts]``, ``[worker] max_model_calls``); ``provider`` overrides ``[provider] name``."""
        from agent_worker.plugins import build_tools  # noqa: PLC0415 - plugins load on demand

        config_dir: Path | None = None
        if isinstance(config, Config):
            cfg = config
        else:
            config_dir = Path(config).resolve().parent if config is not None else None
            cfg = load_config(config)
        name, reason = provider or cfg.provider.name, "configured"
        if not name:
            name, reason = choose_default_provider()
        options = dict(cfg.providers.get(name, {}))
        if cfg.provider.model:
            options["model"] = cfg.provider.model
        prompts = cfg.prompts
        dirs = default_prompt_dirs(config_dir, prompts.dir)
        template: PromptTemplate | None = None
        system = prompts.system
        if system and (prompts.system_set or any((d / f"{system}.md").is_file() for d in dirs)):
            # An explicitly chosen prompt must exist; the implicit "default" is used only if present
            # (an installed wheel without a prompts/ directory runs without a system prompt).
            template = load_prompt(system, dirs=dirs, values=prompts.values, timezone=prompts.timezone)
        agent: Agent[None] = Agent(
            name,
            system_prompt=template,
            tools=build_tools(cfg.tools.enabled),
            max_model_calls=cfg.worker.max_model_calls,
            provider_options=options,
        )
        agent.provider_reason = reason
        return agent
