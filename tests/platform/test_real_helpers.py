"""The scene helpers of ``_real.py`` do what the platform's cookbook says (other tests rely on
them for pause and delete)."""

from __future__ import annotations

from ._real import AgentServer, RealPlatform, wait_until


def test_pause_and_delete_reach_the_row(real_platform: RealPlatform) -> None:
    parent, _ = real_platform.create_workspace("parent")
    child, child_token = real_platform.create_workspace("child", parent_id=parent)
    real_platform.register(child, child_token, delivery_mode="poll")
    assert real_platform.row(child)["status"] == "online"
    assert real_platform.pause(child)["status"] == "paused"
    assert real_platform.row(child)["status"] == "paused"
    assert real_platform.delete(parent)["status"] == "removed"
    assert real_platform.row(parent)["status"] == "removed"
    assert real_platform.row(child)["status"] == "removed"


def test_the_agent_answers_what_it_is_told(
    real_platform: RealPlatform, agent_server: AgentServer
) -> None:
    a, ta = real_platform.create_workspace("agent-owner")
    b, tb = real_platform.create_workspace("sender")
    real_platform.register(a, ta, url=agent_server.url)
    agent_server.reply_text = "understood"
    reply = real_platform.peer_message(a, b, tb, "hello")
    assert reply.status_code == 200, reply.text
    assert reply.json()["result"]["parts"][0]["text"] == "understood"
    assert agent_server.received[-1]["params"]["message"]["parts"][0]["text"] == "hello"
    # The proxy writes its activity row from a goroutine, possibly after it answered.
    assert wait_until(lambda: len(real_platform.activity(a, ta, type="a2a_receive")) == 1)
    assert real_platform.activity(a, ta, type="a2a_receive")[0]["source_id"] == b
