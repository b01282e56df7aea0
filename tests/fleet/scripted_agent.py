"""An agent for ``agent-worker run`` subprocesses in the Temporal tests: a :class:`ScriptedProvider`
following the declarative rules of :mod:`tests.conformance.reference` given in ``AW_FLEET_RULES``
(JSON), answering as worker ``AW_FLEET_WORKER`` (the rules' ``worker`` condition), with the
differential tests' tools.

    AW_FLEET_RULES='[...]' AW_FLEET_WORKER=a agent-worker run tests.fleet.scripted_agent:agent ...
"""

from __future__ import annotations

import json
import os

from agent_worker.agent import Agent
from agent_worker.providers.echo import ScriptedProvider
from tests.conformance.reference import rules_script, tools

__all__ = ["agent"]


def _agent() -> Agent:
    rules = json.loads(os.environ.get("AW_FLEET_RULES", "[]"))
    script, _ = rules_script(rules, context={"worker": os.environ.get("AW_FLEET_WORKER", "")})
    return Agent(ScriptedProvider(script), tools=tools())


agent = _agent()
