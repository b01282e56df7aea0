"""The worker and Ably's mutable-messages channel rule: the embedded server enables it for the
sessions' namespaces, and a missing rule (93002) ends a run with an error that says what to fix."""

from __future__ import annotations

from structlog.testing import capture_logs

from agent_worker.config import config_from_mapping
from agent_worker.providers.echo import EchoProvider
from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.server.channel_rules import ChannelRule
from agent_worker.worker.connect import embedded_server_config
from tests.runtime.runtime_support import ChatClient, start_harness


def test_embedded_server_enables_mutable_messages_for_the_session_namespaces() -> None:
    cfg = config_from_mapping(
        {"worker": {"sessions": ["conversations:*"], "watch_channels": ["support:desk"]}}
    )
    assert embedded_server_config(cfg, 0).channel_rules == (
        ChannelRule("conversations", mutable_messages=True),
        ChannelRule("support", mutable_messages=True),
    )
    assert embedded_server_config(config_from_mapping({}), 0).channel_rules == (
        ChannelRule("*", mutable_messages=True),
    )


def test_server_table_overrides_the_derived_rules() -> None:
    cfg = config_from_mapping(
        {
            "worker": {"sessions": ["conversations:*"]},
            "server": {
                "channel_rules": [{"namespace": "chat", "mutable_messages": True, "identified_only": True}]
            },
        }
    )
    assert embedded_server_config(cfg, 0).channel_rules == (
        ChannelRule("chat", mutable_messages=True, identified_only=True),
    )


async def test_missing_mutable_rule_ends_the_run_with_a_clear_error() -> None:
    """Against a server (as Ably) whose session namespace lacks the rule, the first append is
    refused with 93002: the run ends with an error naming the rule and namespace, logged once."""
    config = ServerConfig(port=0, channel_rules=(ChannelRule("other", mutable_messages=True),))
    async with EmbeddedServer(config) as server:
        harness = await start_harness(server, EchoProvider(tokens_per_second=2000), coalesce_window_ms=0.0)
        client = ChatClient(server, "norule:session", "user-abc")
        try:
            await client.connect()
            with capture_logs() as logs:
                sent = await client.send_text("hello there friend", parent=None)
                await harness.invoke("norule:session", sent.event_id)
                end = await client.run_end_for(sent.codec_message_id, wait_s=60)
            headers = end.transport_headers
            assert headers["run-reason"] == "error"
            message = headers["error-message"]
            assert "93002" in message and "'norule'" in message and "Message annotations, updates" in message
            explained = [e for e in logs if e.get("event") == "mutable_messages_rule_missing"]
            assert len(explained) == 1 and explained[0]["namespace"] == "norule"
        finally:
            await client.close()
            await harness.close()
