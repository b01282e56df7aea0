"""transport/local.py's rules, one by one: what a channel with echo off folds from its ACKs, and
when it gives up (doubt) instead of folding something that may be wrong."""

from __future__ import annotations

from agent_worker.protocol.wire import InboundMessage, OutboundMessage
from agent_worker.transport.local import LocalEcho

EXTRAS = {"ai": {"transport": {"stream": "true", "status": "streaming"}}}


def echo() -> tuple[LocalEcho, list[InboundMessage], list[str]]:
    folded: list[InboundMessage] = []
    doubts: list[str] = []
    local = LocalEcho("ch", lambda: "agent", lambda: "conn-1")
    local.listen(folded.append, doubts.append)
    return local, folded, doubts


def test_a_publish_folds_as_its_create_with_the_acks_serial_and_an_append_inherits_name_and_extras() -> None:
    local, folded, doubts = echo()
    local.created(0, [(OutboundMessage("ai-output", "", EXTRAS), "s1", "id:0")])
    local.appended(0, "s1", OutboundMessage(None, "abc"), None)
    assert [(m.action, m.name, m.serial, m.version_serial, m.data) for m in folded] == [
        ("message.create", "ai-output", "s1", "s1", ""),
        ("message.append", "ai-output", "s1", None, "abc"),
    ]
    assert folded[1].extras == EXTRAS
    assert (folded[0].client_id, folded[0].connection_id, folded[0].id) == ("agent", "conn-1", "id:0")
    assert doubts == []


def test_after_a_failed_append_the_stream_folds_again_only_from_its_full_text_update() -> None:
    local, folded, doubts = echo()
    local.created(0, [(OutboundMessage("ai-output", "", EXTRAS), "s1", None)])
    local.append_failed("s1")
    local.appended(0, "s1", OutboundMessage("ai-output", "later", EXTRAS), None)  # pipelined, landed
    assert [m.action for m in folded] == ["message.create"]
    local.updated(0, "s1", OutboundMessage(None, "full later", {}), "v9")
    local.appended(0, "s1", OutboundMessage("ai-output", " more", EXTRAS), None)
    assert [(m.action, m.data, m.version_serial) for m in folded[1:]] == [
        ("message.update", "full later", "v9"),
        ("message.append", " more", None),
    ]
    assert folded[1].name == "ai-output" and local.gaps == set() and doubts == []


def test_an_ack_across_a_continuity_loss_is_not_folded_but_doubted() -> None:
    local, folded, doubts = echo()
    local.on_state("attached", resumed=True)  # a resumed attach changes nothing
    assert local.epoch == 0
    local.on_state("attached", resumed=False)
    local.created(0, [(OutboundMessage("ai-run-end", None, {}), "s2", None)])
    assert folded == [] and len(doubts) == 1
    local.created(1, [(OutboundMessage("ai-run-end", None, {}), "s3", None)])  # sent after it: exact
    assert [m.serial for m in folded] == ["s3"]


def test_unknown_messages_and_missing_serials_are_doubted() -> None:
    local, folded, doubts = echo()
    local.appended(0, "someone-elses", OutboundMessage(None, "", {}), None)  # name unknown here
    local.created(0, [(OutboundMessage("ai-output", "x", {}), None, None)])  # ACK without a serial
    assert folded == [] and len(doubts) == 2


def test_without_a_listener_nothing_is_kept() -> None:
    local = LocalEcho("ch", lambda: None, lambda: None)
    local.append_failed("s1")
    assert local.gaps == set() and not local.active
    assert local.own("c") is False


def test_only_this_connections_own_deliveries_are_dropped() -> None:
    """The agent's clientId on another connection (another worker process, an engine activity
    elsewhere) is folded as any message; only this connection's, already folded, are dropped."""
    local, _, _ = echo()
    assert local.own("conn-1") is True
    assert local.own("conn-2") is False
    assert local.own(None) is False
