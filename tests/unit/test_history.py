"""Reading history files: formats, import keys, and what a bad record is reported as."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.history import (
    HistoryError,
    Keys,
    conversation_files,
    existing_keys,
    export_line,
    keyed,
    read_histories,
    read_history,
    sources,
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


def test_an_export_line_keeps_every_character_and_stays_one_line(tmp_path: Path) -> None:
    """What ``str.splitlines`` takes for line breaks (and JSON leaves raw) survives export and
    import: the export escapes it, the import splits at newlines only (also for files written
    before the export escaped them)."""
    content = "a\u2028b\u2029c\u0085d\x1ce\x1df\x1eg\u00e9"
    memory = {"content": content, "role": "user", "created_at": "2024-01-01T00:00:00Z"}
    line = export_line(memory)
    assert len(line.splitlines()) == 1
    raw = json.dumps({"content": content}, ensure_ascii=False)
    path = tmp_path / "h.jsonl"
    path.write_text(line + "\n" + raw + "\r\n", encoding="utf-8")
    history = read_history(path)
    assert history.problems == []
    assert [r.content for r in history.records] == [content, content]


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
        ('{"messages": ' + "[" * 1100 + "]" * 1100 + "}", "line 1: not valid JSON: nested too"),
        (
            '{"content": "x", "metadata": {"a": ' + "[" * 3000 + "]" * 3000 + "}}",
            "line 1: not valid JSON: nested too deeply",
        ),
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
    (tmp_path / "deep.json").write_text("[" * 1100 + "]" * 1100)
    with pytest.raises(HistoryError, match=r"deep\.json: not valid JSON: nested too deeply"):
        read_history(tmp_path / "deep.json")
    with pytest.raises(HistoryError, match="is a folder"):
        read_history(tmp_path)
    (tmp_path / "x.zip").write_text("not a zip")
    with pytest.raises(HistoryError, match=r"x\.zip: not a valid zip file"):
        read_history(tmp_path / "x.zip")


# ChatGPT exports split into shards


def conversation(conversation_id: str, *texts: str, at: float = 1700000000.0) -> dict[str, Any]:
    """A ChatGPT conversation whose thread is ``texts``, user and assistant in turn."""
    mapping: dict[str, Any] = {}
    for index, text in enumerate(texts):
        mapping[f"n{index}"] = {
            "parent": f"n{index - 1}" if index else None,
            "children": [f"n{index + 1}"] if index + 1 < len(texts) else [],
            "message": {
                "author": {"role": "assistant" if index % 2 else "user"},
                "content": {"content_type": "text", "parts": [text]},
                "create_time": at + index,
            },
        }
    return {
        "title": conversation_id,
        "id": conversation_id,
        "current_node": f"n{len(texts) - 1}",
        "mapping": mapping,
    }


def test_conversation_files_are_found_in_reading_order() -> None:
    names = [
        "export/conversations-010.json",
        "export/chat.html",
        "export/conversations-002.json",
        "export/conversations-1000.json",
        "__MACOSX/export/._conversations-000.json",
        "export/conversations.json",
        "export/conversations-abc.json",
        "export/user.json",
        "export/conversations-000.json",
        "conversations-001.json",
    ]
    assert conversation_files(names) == [
        "conversations-001.json",  # the top folder sorts first
        "export/conversations.json",
        "export/conversations-000.json",
        "export/conversations-002.json",
        "export/conversations-010.json",  # by number, not by name
        "export/conversations-1000.json",
    ]
    assert conversation_files(["export/user.json", "conversations.jsonl"]) == []


def test_a_sharded_zip_and_its_unpacked_folder_read_shard_by_shard(tmp_path: Path) -> None:
    shards = {
        f"Export 2025/conversations-{n:03d}.json": [
            conversation(f"c{n}-{i}", f"question {n}.{i}", f"answer {n}.{i}") for i in range(2)
        ]
        for n in (2, 0, 11, 1)
    }
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("Export 2025/user.json", "{}")
        for name, conversations in shards.items():
            z.writestr(name, json.dumps(conversations))
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(archive) as z:
        z.extractall(folder)
    order = [0, 1, 2, 11]
    expected = [
        f"{word} {n}.{i}" for n in order for i in range(2) for word in ("question", "answer")
    ]
    for path, root in ((archive, archive), (folder, folder)):
        found = sources(path)
        assert [s.path for s in found] == [
            root / f"Export 2025/conversations-{n:03d}.json" for n in order
        ]
        parts = list(read_histories(path))
        assert [len(p.records) for p in parts] == [4, 4, 4, 4]
        assert [r.content for p in parts for r in p.records] == expected
        merged = read_history(path)
        assert merged.format == "chatgpt"
        assert [r.content for r in merged.records] == expected
        assert merged.records[0].metadata == {
            "source": "chatgpt",
            "conversation": "c0-0",
            "conversation_id": "c0-0",
        }
    # One shard given on its own is a file like any other.
    assert [s.path for s in sources(folder / "Export 2025/conversations-011.json")] == [
        folder / "Export 2025/conversations-011.json"
    ]


def test_shards_are_parsed_one_at_a_time(tmp_path: Path) -> None:
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("conversations-000.json", json.dumps([conversation("a", "hello")]))
        z.writestr("conversations-001.json", "[{broken")
    histories = read_histories(archive)
    first = next(histories)  # read before the broken shard is touched
    assert [r.content for r in first.records] == ["hello"]
    with pytest.raises(HistoryError, match=r"export\.zip/conversations-001\.json: line 1"):
        next(histories)


def test_keys_across_shards_are_those_of_one_file(tmp_path: Path) -> None:
    # Conversations without an id, holding the same message at the same time: the repeat in
    # a later shard gets #2, as it would in one conversations.json holding both.
    same = {**conversation("t", "hi"), "id": None}
    other = {**conversation("u", "other"), "id": None}
    whole = tmp_path / "conversations.json"
    whole.write_text(json.dumps([same, other, same]))
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("conversations-000.json", json.dumps([same, other]))
        z.writestr("conversations-001.json", json.dumps([same]))
    keys = Keys()
    sharded = [key for history in read_histories(archive) for key, _ in keys(history.records)]
    assert sharded[2] == sharded[0] + "#2"
    assert len(set(sharded)) == 3
    assert sharded == [key for key, _ in keyed(read_history(whole).records)]
    assert sharded == [key for key, _ in keyed(read_history(archive).records)]


def test_a_conversation_in_two_files_of_an_export_is_read_once(tmp_path: Path) -> None:
    a, b, c = (conversation(x, f"text {x}") for x in "abc")
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("conversations.json", json.dumps([a, b, c]))
        z.writestr("conversations-000.json", json.dumps([a, b]))
        z.writestr("conversations-001.json", json.dumps([c, conversation("d", "text d")]))
    history = read_history(archive)
    assert [r.content for r in history.records] == ["text a", "text b", "text c", "text d"]
    assert history.repeated == 3
    # Conversations without an id are never taken for repeats.
    anonymous = {**conversation("x", "same"), "id": None}
    path = tmp_path / "anon.json"
    path.write_text(json.dumps([anonymous, anonymous]))
    assert len(read_history(path).records) == 2


def test_an_export_without_conversations_is_a_clear_error(tmp_path: Path) -> None:
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("export/user.json", "{}")
        z.writestr("export/conversations.jsonl", "{}")
    with pytest.raises(
        HistoryError,
        match=r"export\.zip: no conversations\.json or conversations-NNN\.json in this zip "
        r"\(is it a ChatGPT data export\?\)",
    ):
        sources(archive)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.json").write_text("[]")
    with pytest.raises(HistoryError, match=r"folder: is a folder without conversations\.json"):
        sources(tmp_path / "folder")
    with pytest.raises(HistoryError, match=r"gone\.zip: no such file"):
        sources(tmp_path / "gone.zip")


def test_records_of_one_time_stay_a_microsecond_apart() -> None:
    """Records without a time are stamped a microsecond apart in file order; float steps of
    1e-6 landed about 4% of consecutive pairs on the same microsecond (then their listing
    order was the ids' random part, and an export -> import -> export changed order)."""
    import random

    from memory.records import micros, micros_later, to_rfc3339

    rng = random.Random(7)
    for _ in range(2000):
        base = 1.796e9 + rng.random() * 1e6
        stamps = [to_rfc3339(micros_later(base, k)) for k in range(4)]
        assert len(set(stamps)) == 4
        assert [micros(micros_later(base, k)) - micros(base) for k in range(4)] == [0, 1, 2, 3]
