from __future__ import annotations

from gateway.inject import HEADER, inject, memory_message
from memory.records import Hit, Memory


def _hits() -> list[Hit]:
    return [
        Hit(
            Memory(
                id="m1", namespace="a", content="I live in\n Lisbon", role="user", created_at=0.0
            ),
            0.9,
        ),
        Hit(
            Memory(
                id="m2",
                namespace="a",
                content="Rex is my dog",
                role="assistant",
                created_at=86400.0,
            ),
            0.5,
        ),
    ]


def test_memory_message_lists_hits_with_date_and_role() -> None:
    message = memory_message(_hits())
    assert message["role"] == "system"
    lines = message["content"].split("\n")
    assert lines[0] == HEADER
    assert lines[1] == "- [1970-01-01, user] I live in Lisbon"
    assert lines[2] == "- [1970-01-02, assistant] Rex is my dog"


def test_inject_goes_after_leading_system_messages_and_keeps_the_rest() -> None:
    tool_msg = {"role": "tool", "tool_call_id": "c1", "content": "18C", "extra": {"x": 1}}
    messages = [
        {"role": "system", "content": "s1"},
        {"role": "developer", "content": "s2"},
        {"role": "user", "content": "hi", "name": "bob"},
        {"role": "system", "content": "late system"},
        tool_msg,
    ]
    out = inject(messages, _hits())
    assert [m["role"] for m in out] == ["system", "developer", "system", "user", "system", "tool"]
    assert out[2]["content"].startswith(HEADER)
    assert out[3] is messages[2]
    assert out[5] is tool_msg
    assert messages[2] == {"role": "user", "content": "hi", "name": "bob"}


def test_inject_without_system_messages_goes_first_and_no_hits_changes_nothing() -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert inject(messages, _hits())[0]["content"].startswith(HEADER)
    assert inject(messages, []) == messages
