"""The agent: ``Agent[Deps]`` (provider, prompt, tools, deps, limits) and its model ↔ tools loop."""

from agent_worker.agent._agent import Agent, SystemPrompt

__all__ = ["Agent", "SystemPrompt"]
