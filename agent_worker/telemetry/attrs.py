"""Attribute, event and metric names: the OpenTelemetry GenAI semantic conventions as published with
``opentelemetry-semantic-conventions`` 0.66b2 (schema 1.44.0; the GenAI conventions are still marked
*Development*, so the names are pinned here rather than imported from the incubating module), plus
this worker's own ``agent_worker.*`` attributes for what the conventions do not name."""

from __future__ import annotations

INSTRUMENTATION_NAME = "agent_worker"
INSTRUMENTATION_VERSION = "0.1.0"
SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"

# gen_ai.operation.name values
OP_INVOKE_AGENT = "invoke_agent"
OP_CHAT = "chat"
OP_EXECUTE_TOOL = "execute_tool"

# GenAI attributes
OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
AGENT_NAME = "gen_ai.agent.name"
CONVERSATION_ID = "gen_ai.conversation.id"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
REQUEST_STREAM = "gen_ai.request.stream"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
RESPONSE_TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
TOKEN_TYPE = "gen_ai.token.type"
TOOL_NAME = "gen_ai.tool.name"
TOOL_CALL_ID = "gen_ai.tool.call.id"
TOOL_TYPE = "gen_ai.tool.type"
TOOL_DESCRIPTION = "gen_ai.tool.description"
# opt-in content (OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true)
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
TOOL_CALL_ARGUMENTS = "gen_ai.tool.call.arguments"
TOOL_CALL_RESULT = "gen_ai.tool.call.result"
ERROR_TYPE = "error.type"

# agent_worker.* attributes
AW_RUN_ID = "agent_worker.run.id"
AW_RUN_OUTCOME = "agent_worker.run.outcome"
AW_RUN_RESUMED = "agent_worker.run.resumed"
AW_INVOCATION_ID = "agent_worker.invocation.id"
AW_EVENT_ID = "agent_worker.input.event_id"
AW_CLIENT_ID = "agent_worker.client_id"
"""The Ably-verified clientId that published the run's trigger."""
AW_ERROR_CODE = "agent_worker.error.code"
"""The Ably/AIT error code (the one on ``ai-run-end``)."""
AW_CANCELLED = "agent_worker.cancelled"
AW_TOOL_EXECUTION = "agent_worker.tool.execution"
"""``server`` (run here), ``approval`` (run here after the user approved), ``client`` (the client runs it)."""
AW_TOOL_SUSPENDED = "agent_worker.tool.suspended"
AW_SUSPEND_REASON = "agent_worker.suspend.reason"
AW_CANCEL_SOURCE = "agent_worker.cancel.source"
AW_CANCEL_REQUESTED_BY = "agent_worker.cancel.requested_by"
AW_CANCEL_ALLOWED = "agent_worker.cancel.allowed"

# events
EV_FIRST_CHUNK = "agent_worker.first_chunk"
EV_CANCEL = "agent_worker.cancel"
EV_SUSPEND = "agent_worker.suspend"

# metrics
METRIC_OPERATION_DURATION = "gen_ai.client.operation.duration"
METRIC_TOKEN_USAGE = "gen_ai.client.token.usage"
METRIC_TIME_TO_FIRST_CHUNK = "gen_ai.client.operation.time_to_first_chunk"
METRIC_ACTIVE_RUNS = "agent_worker.runs.active"

CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
