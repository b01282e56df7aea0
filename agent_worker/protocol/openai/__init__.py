"""OpenAI Responses codec (adapter tag ``openai-responses``): the official ``ResponsesCodec`` of
``@ably/ai-transport/openai`` — encoder, decoder, reducer and the Responses-input conversion."""

from agent_worker.protocol.openai.encoder import (
    ResponsesEncoder,
    encode_regenerate,
    encode_tool_approval_response,
    encode_tool_result,
    encode_tool_result_error,
    encode_user_message,
    user_text_message,
)

__all__ = [
    "ResponsesEncoder",
    "encode_regenerate",
    "encode_tool_approval_response",
    "encode_tool_result",
    "encode_tool_result_error",
    "encode_user_message",
    "user_text_message",
]
