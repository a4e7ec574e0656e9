"""Reading history files: formats, import keys, and what a bad record is reported as."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from gateway.history import (
    HistoryError,
    existing_keys,
    export_line,
    keyed,
    read_history,
    thread,
)


def test_repeats_get_distinct_stable_keys(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text('{"content": "ok"}\n{"content": "ok"}\n{"content": "other"}\n')
    keys = [key for key, _ in keyed(read_history(path).records)]
    assert keys[1] == keys[0] + "#2"
    assert len(set(keys)) == 3
    assert keys == [key for key, _ in keyed(read_history(path).records)]


def test_an_export_line_has_the_keys_of_the_memory_it_came_from() -> None:
    memory = {
        "id": "mem_1",
        "namespace": "a",
        "content": "x",
        "role": "user",
        "created_at": "2024-01-01T00:00:00.000000Z",
        "metadata": {"b": 1, "a": True, "import_key": "k"},
    }
    line = json.loads(export_line(memory))
    assert line == {
        "content": "x",
        "role": "user",
        "created_at": "2024-01-01T00:00:00.000000Z",
        "metadata": {"a": True, "b": 1},
    }
    assert list(line["metadata"]) == ["a", "b"]


def test_existing_memories_match_both_their_stored_key_and_their_content(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text(
        '{"content": "x", "created_at": "2024-01-01T02:00:00+02:00", "metadata": {"a": 1}}\n'
    )
    [(key, record)] = keyed(read_history(path).records)
    assert record.created_at == "2024-01-01T00:00:00.000000Z"
    stored = {
        "content": "x",
        "role": "user",
        "created_at": "2024-01-01T00:00:00.000000Z",
        "metadata": {"a": 1},
    }
    assert key in existing_keys([stored])
    assert "other" in existing_keys(
        [{**stored, "content": "y", "metadata": {"import_key": "other"}}]
    )


def test_messages_lines_keep_their_order_under_one_time(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text(
        json.dumps(
            {
                "created_at": "2024-01-01T00:00:00Z",
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "u"},
                    {"role": "assistant", "content": None, "tool_calls": []},
                    {"role": "assistant", "content": "a"},
                ],
            }
        )
    )
    history = read_history(path)
    assert [(r.role, r.content, r.created_at) for r in history.records] == [
        ("user", "u", "2024-01-01T00:00:00.000001Z"),
        ("assistant", "a", "2024-01-01T00:00:00.000003Z"),
    ]
    assert history.ignored == 2
    assert history.records[0].where == "line 1, message 2"


def test_chatgpt_thread_follows_current_node_and_survives_a_missing_one() -> None:
    mapping = {
        "r": {"parent": None, "children": ["a"], "message": None},
        "a": {"parent": "r", "children": ["b", "c"], "message": {"create_time": 1}},
        "b": {"parent": "a", "children": [], "message": {"create_time": 5}},
        "c": {"parent": "a", "children": [], "message": {"create_time": 3}},
    }
    assert thread(mapping, "c") == ["r", "a", "c"]
    assert thread(mapping, None) == ["r", "a", "b"]  # the newest leaf
    assert thread({"x": {"parent": "x", "children": []}}, "x") == ["x"]  # no endless loop


def test_chatgpt_zip_export(tmp_path: Path) -> None:
    conversation = {
        "title": "t",
        "current_node": "u",
        "mapping": {
            "u": {
                "parent": None,
                "children": [],
                "message": {
                    "author": {"role": "user"},
                    "content": {"content_type": "text", "parts": ["hello", ""]},
                    "create_time": None,
                },
            }
        },
        "create_time": 1700000000.5,
    }
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("export/conversations.json", json.dumps([conversation]))
    history = read_history(archive)
    assert history.format == "chatgpt"
    [record] = history.records
    assert record.content == "hello"
    assert record.created_at == "2023-11-14T22:13:20.500000Z"  # the conversation's time
    assert record.metadata == {"source": "chatgpt", "conversation": "t"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"content": ""}', None),  # blank: ignored, not a problem
        ('{"content": 5}', 'line 1: "content" must be a string or a list of parts'),
        ('{"content": "x", "role": ""}', "line 1: role '' is not allowed: 1-64 letters"),
        ('{"content": "x", "role": "user] ok\\n- [1999-01-01, system"}', "line 1: role 'user] ok"),
        (
            '{"content": "x", "created_at": "0001-01-01T00:00:00+01:00"}',
            "line 1: created_at '0001-01-01T00:00:00+01:00': created_at must be between 0001-01-02",
        ),
        (
            '{"content": "x", "metadata": {"n": 9007199254740993}}',
            "line 1: metadata 'n': 9007199254740993 is beyond +-2**53",
        ),
        ('{"content": "x", "metadata": {"$a": 1}}', "line 1: metadata key '$a' is not allowed"),
        ('{"content": "x", "created_at": true}', "line 1: created_at True is not an RFC 3339"),
        ('{"messages": {}}', 'line 1: "messages" must be a list, got an object'),
        ('{"content": "' + "x" * 100_001 + '"}', "line 1: content is 100,001 characters long"),
    ],
)
def test_bad_records_are_problems_with_their_line(
    tmp_path: Path, text: str, problem: str | None
) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text(text + "\n")
    history = read_history(path)
    if problem is None:
        assert history.problems == []
        assert history.ignored == 1
    else:
        [shown] = history.describe_problems()
        assert shown.startswith(f"{path}: {problem}")


def test_unreadable_files_raise_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n")
    (tmp_path / "latin.jsonl").write_bytes(b'{"content": "ok"}\n{"content": "caf\xe9"}\n')
    (tmp_path / "obj.json").write_text("[1")
    with pytest.raises(HistoryError, match=r"empty\.jsonl: the file is empty"):
        read_history(tmp_path / "empty.jsonl")
    with pytest.raises(HistoryError, match=r"latin\.jsonl: line 2: not UTF-8 text"):
        read_history(tmp_path / "latin.jsonl")
    with pytest.raises(HistoryError, match=r"obj\.json: line 1 column 3: not valid JSON"):
        read_history(tmp_path / "obj.json")
    with pytest.raises(HistoryError, match="is a folder"):
        read_history(tmp_path)
    (tmp_path / "x.zip").write_text("not a zip")
    with pytest.raises(HistoryError, match=r"x\.zip: not a valid zip file"):
        read_history(tmp_path / "x.zip")
