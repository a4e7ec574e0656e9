"""``memgate memories ...``, ``import`` and ``export`` as subprocesses against a gateway."""

from __future__ import annotations

import json
import re
import signal
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import wait_until
from tests.e2e.cli import memgate, memgate_process, memgate_tty, ok_json
from tests.e2e.conftest import ADMIN_KEY, TEAM_KEY, GatewayProcess
from tests.fake_upstream import free_port

pytestmark = pytest.mark.slow


def ns(prefix: str = "cli") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def add(gateway: GatewayProcess, namespace: str, *memories: dict[str, Any]) -> list[str]:
    r = httpx.post(
        gateway.url + "/v1/memory/memories",
        params={"namespace": namespace},
        json={"memories": list(memories)},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return [str(i) for i in r.json()["ids"]]


def listed(gateway: GatewayProcess, namespace: str) -> list[dict[str, Any]]:
    page = httpx.get(
        gateway.url + "/v1/memory/memories", params={"namespace": namespace, "limit": 100}
    ).json()
    assert page["has_more"] is False
    return list(page["data"])


def test_list_search_get_delete(gateway: GatewayProcess) -> None:
    name = ns()
    url = ("--url", gateway.url)
    ids = add(
        gateway,
        name,
        {"content": "Owns a red kayak", "created_at": "2024-01-01T09:00:00Z", "role": "fact"},
        {"content": "Takes the 7:40 train", "created_at": "2024-01-02T09:00:00Z"},
        {"content": "Plays the cello", "created_at": "2024-01-03T09:00:00Z", "metadata": {"k": 1}},
    )
    first = ok_json(memgate("memories", "list", "-n", name, "--limit", "2", "--json", *url))
    assert [m["id"] for m in first["data"]] == [ids[2], ids[1]]
    assert first["has_more"] is True
    rest = ok_json(memgate("memories", "list", "-n", name, "--after", ids[1], "--json", *url))
    assert [m["id"] for m in rest["data"]] == [ids[0]]
    assert rest["has_more"] is False
    everything = ok_json(memgate("memories", "list", "-n", name, "--all", "--json", *url))
    assert [m["id"] for m in everything["data"]] == [ids[2], ids[1], ids[0]]

    table = memgate("memories", "list", "-n", name, "--limit", "2", *url)
    assert table.returncode == 0, table.stderr
    assert "Plays the cello" in table.stdout
    assert "2024-01-03 09:00:00" in table.stdout
    assert ids[2] in table.stdout
    assert "Owns a red kayak" not in table.stdout
    assert f"--after {ids[1]}" in table.stderr

    hits = ok_json(memgate("memories", "search", "-n", name, "boat", "--k", "1", "--json", *url))
    assert [h["id"] for h in hits["data"]] == [ids[0]]
    assert 0 < hits["data"][0]["score"] <= 1
    shown = memgate("memories", "search", "-n", name, "a boat on the water", *url)
    assert shown.returncode == 0, shown.stderr
    assert "Owns a red kayak" in shown.stdout
    assert f"{hits['data'][0]['score']:.2f}"[:3] in shown.stdout

    one = ok_json(memgate("memories", "get", "-n", name, ids[2], "--json", *url))
    assert one["content"] == "Plays the cello"
    assert one["metadata"] == {"k": 1}
    human = memgate("memories", "get", "-n", name, ids[2], *url)
    assert "Plays the cello" in human.stdout
    assert "metadata.k" in human.stdout

    gone = memgate("memories", "delete", "-n", name, ids[2], *url)
    assert gone.returncode == 0, gone.stderr
    assert f"Deleted {ids[2]}" in gone.stdout
    missing = memgate("memories", "get", "-n", name, ids[2], *url)
    assert missing.returncode == 1
    assert "failed with 404" in missing.stderr
    assert f"no memory '{ids[2]}' in this namespace" in missing.stderr
    assert len(listed(gateway, name)) == 2

    bad = memgate("memories", "list", "-n", "not ok!", *url)
    assert bad.returncode == 1
    assert "invalid namespace" in bad.stderr


def test_delete_a_conversation_a_filter_or_a_time_range(gateway: GatewayProcess) -> None:
    name = ns()
    url = ("--url", gateway.url)
    trip = {"conversation_id": "trip"}
    add(
        gateway,
        name,
        {"content": "trip one", "created_at": "2024-01-01T09:00:00Z", "metadata": trip},
        {"content": "trip two", "created_at": "2024-01-02T09:00:00Z", "metadata": trip},
        {"content": "imported", "created_at": "2024-01-03T09:00:00Z",
         "metadata": {"source": "chatgpt"}},
        {"content": "kept", "created_at": "2024-01-04T09:00:00Z"},
    )  # fmt: skip
    one = memgate("memories", "delete", "-n", name, "--conversation", "trip",
                  "--created-after", "2024-01-02", *url)  # fmt: skip
    assert one.returncode == 0, one.stderr
    assert "Deleted 1 memories" in one.stdout
    assert "conversation_id trip" in one.stdout
    rest = ok_json(
        memgate("memories", "delete", "-n", name, "--conversation", "trip", "--json", *url)
    )
    assert rest == {"object": "memories.deleted", "namespace": name, "deleted": 1}
    by_filter = ok_json(
        memgate(
            "memories", "delete", "-n", name, "--filter", '{"source": "chatgpt"}', "--json", *url
        )
    )
    assert by_filter["deleted"] == 1
    assert [m["content"] for m in listed(gateway, name)] == ["kept"]
    for refused in ((), ("mem_x", "--conversation", "c")):
        bad = memgate("memories", "delete", "-n", name, *refused, *url)
        assert bad.returncode == 2
        assert "give a memory id, or conditions" in bad.stderr
    bad_time = memgate("memories", "delete", "-n", name, "--created-before", "soon", *url)
    assert bad_time.returncode == 1
    assert "created_before" in bad_time.stderr
    assert [m["content"] for m in listed(gateway, name)] == ["kept"]


def test_erase_namespace_asks_first(gateway: GatewayProcess) -> None:
    name = ns()
    url = ("--url", gateway.url)
    add(gateway, name, {"content": "one"}, {"content": "two"})

    declined = memgate("memories", "erase-namespace", "-n", name, *url, stdin="n\n")
    assert declined.returncode == 1
    assert "cannot be undone" in declined.stderr
    assert "Nothing erased." in declined.stderr
    no_answer = memgate("memories", "erase-namespace", "-n", name, *url)
    assert no_answer.returncode == 2
    assert "pass --yes" in no_answer.stderr
    assert len(listed(gateway, name)) == 2

    confirmed = memgate("memories", "erase-namespace", "-n", name, *url, stdin="y\n")
    assert confirmed.returncode == 0, confirmed.stderr
    assert "2 memories deleted" in confirmed.stdout
    assert listed(gateway, name) == []
    add(gateway, name, {"content": "three"})
    erased = ok_json(memgate("memories", "erase-namespace", "-n", name, "--yes", "--json", *url))
    assert erased == {"namespace": name, "deleted": 1, "object": "namespace.deleted"}


def write_lines(path: Path, items: list[Any]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


MESSAGES: list[Any] = [
    {"role": "system", "content": "You are helpful."},
    {
        "role": "user",
        "content": "I moved to Lisbon last spring.",
        "created_at": "2024-04-01T10:00:00Z",
    },
    {"role": "assistant", "content": "Lisbon is lovely!", "created_at": "2024-04-01T10:00:05Z"},
    {
        "messages": [
            {"role": "user", "content": "My cat is called Miso."},
            {"role": "assistant", "content": [{"type": "text", "text": "What a cute name."}]},
            {"role": "tool", "tool_call_id": "c1", "content": "ignored"},
        ],
        "created_at": 1712000000,
    },
    {"content": "Allergic to peanuts", "role": "fact", "metadata": {"source": "doctor"}},
    {"role": "user", "content": "ok"},
    {"role": "user", "content": "ok"},
]


def test_import_jsonl_is_batched_resumable_and_summarised(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    name = ns()
    url = ("--url", gateway.url)
    partial = write_lines(tmp_path / "partial.jsonl", MESSAGES[:3])
    first = ok_json(memgate("import", "-n", name, str(partial), "--json", *url))
    assert first["imported"] == 2
    assert first["skipped"] == 0
    assert first["ignored"] == 1  # the system message

    full = write_lines(tmp_path / "history.jsonl", MESSAGES)
    result = memgate("import", "-n", name, str(full), "--batch-size", "2", *url)
    assert result.returncode == 0, result.stderr
    assert "Imported 5, skipped 2 (already there), failed 0" in result.stdout
    assert "ignored 2" in result.stdout
    assert "importing" in result.stderr  # the progress bar

    memories = listed(gateway, name)
    assert len(memories) == 7
    by_content = {m["content"]: m for m in memories}
    assert by_content["I moved to Lisbon last spring."]["created_at"] == (
        "2024-04-01T10:00:00.000000Z"
    )
    assert by_content["What a cute name."]["role"] == "assistant"
    assert by_content["My cat is called Miso."]["created_at"] == "2024-04-01T19:33:20.000000Z"
    assert by_content["Allergic to peanuts"]["metadata"]["source"] == "doctor"
    assert all("import_key" in m["metadata"] for m in memories)
    oldest_first = [m["content"] for m in reversed(memories)]
    assert oldest_first[:4] == [
        "I moved to Lisbon last spring.",
        "Lisbon is lovely!",
        "My cat is called Miso.",
        "What a cute name.",
    ]
    assert oldest_first.count("ok") == 2

    again = ok_json(memgate("import", "-n", name, str(full), "--json", *url))
    assert (again["imported"], again["skipped"], again["failed"]) == (0, 7, 0)
    hits = httpx.post(
        gateway.url + "/v1/memory/search",
        params={"namespace": name},
        json={"query": "Which city do I live in?", "k": 1},
    ).json()["data"]
    assert hits[0]["content"] == "I moved to Lisbon last spring."


def chatgpt_export() -> list[dict[str, Any]]:
    def node(
        node_id: str, parent: str | None, children: list[str], said: tuple[str, str, float] | None
    ) -> dict[str, Any]:
        message = None
        if said is not None:
            role, text, t = said
            message = {
                "id": node_id,
                "author": {"role": role},
                "content": {"content_type": "text", "parts": [text]},
                "create_time": t,
                "metadata": {"model_slug": "gpt-4o"} if role == "assistant" else {},
            }
        return {"id": node_id, "message": message, "parent": parent, "children": children}

    mapping = {
        "root": node("root", None, ["sys"], None),
        "sys": node("sys", "root", ["u1"], ("system", "You are ChatGPT", 1717000000)),
        "u1": node("u1", "sys", ["a1"], ("user", "Plan a trip to Rome", 1717000100.25)),
        "a1": node("a1", "u1", ["u2old", "u2"], ("assistant", "Day 1: the Colosseum", 1717000110)),
        # an edited message: the old branch is not the one the user last saw
        "u2old": node("u2old", "a1", [], ("user", "Actually, Naples", 1717000200)),
        "u2": node("u2", "a1", ["a2"], ("user", "Add a food tour", 1717000300)),
        "a2": node("a2", "u2", [], ("assistant", "Day 2: Trastevere food tour", 1717000310)),
    }
    return [
        {
            "title": "Rome trip",
            "id": "conv-1",
            "create_time": 1717000000,
            "mapping": mapping,
            "current_node": "a2",
        }
    ]


def test_import_chatgpt_export(gateway: GatewayProcess, tmp_path: Path) -> None:
    name = ns()
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps(chatgpt_export()))
    summary = ok_json(memgate("import", "-n", name, str(path), "--json", "--url", gateway.url))
    assert summary["format"] == "chatgpt"
    assert (summary["imported"], summary["ignored"]) == (4, 1)
    memories = list(reversed(listed(gateway, name)))
    assert [(m["role"], m["content"]) for m in memories] == [
        ("user", "Plan a trip to Rome"),
        ("assistant", "Day 1: the Colosseum"),
        ("user", "Add a food tour"),
        ("assistant", "Day 2: Trastevere food tour"),
    ]
    assert memories[0]["created_at"] == "2024-05-29T16:28:20.250000Z"
    meta = dict(memories[1]["metadata"])
    meta.pop("import_key")
    assert meta == {
        "source": "chatgpt",
        "conversation": "Rome trip",
        "conversation_id": "conv-1",
        "model": "gpt-4o",
    }
    again = ok_json(memgate("import", "-n", name, str(path), "--json", "--url", gateway.url))
    assert (again["imported"], again["skipped"]) == (0, 4)


def everything(gateway: GatewayProcess, namespace: str) -> list[dict[str, Any]]:
    """Every memory of the namespace, page after page, through the API."""
    out: list[dict[str, Any]] = []
    params: dict[str, str | int] = {"namespace": namespace, "limit": 100}
    while True:
        page = httpx.get(gateway.url + "/v1/memory/memories", params=params, timeout=60).json()
        out.extend(page["data"])
        if not page["has_more"]:
            return out
        params["after"] = page["data"][-1]["id"]


def conversations(first: int, count: int, *, words: int = 3) -> list[dict[str, Any]]:
    """``count`` ChatGPT conversations numbered from ``first``, each a question and its answer."""
    out = []
    for n in range(first, first + count):
        said = [("user", f"Question {n}: " + "tell me more " * words), ("assistant", f"Answer {n}")]
        mapping: dict[str, Any] = {"root": {"message": None, "parent": None, "children": ["m0"]}}
        for i, (role, text) in enumerate(said):
            mapping[f"m{i}"] = {
                "parent": "root" if i == 0 else f"m{i - 1}",
                "children": [f"m{i + 1}"] if i + 1 < len(said) else [],
                "message": {
                    "author": {"role": role},
                    "content": {"content_type": "text", "parts": [text]},
                    "create_time": 1717000000 + n * 10 + i,
                },
            }
        out.append({"title": f"Chat {n}", "id": f"conv-{n}", "mapping": mapping,
                    "current_node": "m1"})  # fmt: skip
    return out


def sharded_zip(path: Path, shards: list[list[dict[str, Any]]], **extra: Any) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("Export/user.json", "{}")
        for n, shard in enumerate(shards):
            z.writestr(f"Export/conversations-{n:03d}.json", json.dumps(shard))
        for name, content in extra.items():
            z.writestr(f"Export/{name}.json", json.dumps(content))
    return path


def test_import_sharded_chatgpt_export_once(gateway: GatewayProcess, tmp_path: Path) -> None:
    name = ns()
    url = ("--url", gateway.url)
    shards = [conversations(4 * n, 4) for n in range(3)]
    archive = sharded_zip(tmp_path / "export.zip", shards)
    expected = sorted(f"{w} {n}" for n in range(12) for w in ("Question", "Answer"))

    summary = ok_json(memgate("import", "-n", name, str(archive), "--json", *url))
    assert (summary["format"], summary["total"], summary["imported"]) == ("chatgpt", 24, 24)
    memories = everything(gateway, name)
    assert sorted(m["content"].split(":")[0] for m in memories) == expected
    assert len({m["metadata"]["import_key"] for m in memories}) == 24
    assert [m["metadata"]["conversation"] for m in reversed(memories)][::2] == [
        f"Chat {n}" for n in range(12)
    ]
    again = ok_json(memgate("import", "-n", name, str(archive), "--json", *url))
    assert (again["imported"], again["skipped"]) == (0, 24)
    # The same export unpacked into a folder: the same records, so nothing new.
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(archive) as z:
        z.extractall(folder)
    unpacked = memgate("import", "-n", name, str(folder), *url)
    assert unpacked.returncode == 0, unpacked.stderr
    assert "Imported 0, skipped 24 (already there)" in unpacked.stdout
    assert len(everything(gateway, name)) == 24

    # Shards beside a conversations.json holding some of the same conversations: read once.
    both = sharded_zip(tmp_path / "both.zip", shards, conversations=shards[0] + shards[2])
    other = ns()
    mixed = ok_json(memgate("import", "-n", other, str(both), "--json", *url))
    assert (mixed["imported"], mixed["repeated"]) == (24, 8)
    assert sorted(m["content"].split(":")[0] for m in everything(gateway, other)) == expected

    empty = tmp_path / "not-chatgpt.zip"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("Export/user.json", "{}")
    refused = memgate("import", "-n", other, str(empty), *url)
    assert refused.returncode == 2
    assert (
        f"memgate: {empty}: no conversations.json or conversations-NNN.json in this zip "
        "(is it a ChatGPT data export?)"
    ) in refused.stderr
    assert "Traceback" not in refused.stderr


def test_ctrl_c_stops_cleanly_and_the_same_command_continues(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    name = ns()
    url = ("--url", gateway.url)
    archive = sharded_zip(tmp_path / "export.zip", [conversations(0, 100), conversations(100, 100)])
    command = ("import", "-n", name, str(archive), "--batch-size", "50", *url)
    process = memgate_process(*command)
    try:
        deadline = time.monotonic() + 120
        while len(everything(gateway, name)) < 50:  # some have landed, most have not
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the import did not start in time"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert out == ""
    [line] = [line for line in err.splitlines() if line.startswith("memgate:")]
    stopped = len(everything(gateway, name))
    assert 50 <= stopped < 400
    assert line == (
        f"memgate: interrupted: imported {stopped} of 400 records so far; running the same "
        "command again imports the rest: what is there already is skipped, so nothing is "
        "imported twice."
    )

    resumed = ok_json(memgate(*command, "--json"))
    assert (resumed["imported"], resumed["skipped"]) == (400 - stopped, stopped)
    memories = everything(gateway, name)
    assert len(memories) == 400
    assert len({m["content"] for m in memories}) == 400


def test_import_progress_moves_within_a_batch(gateway: GatewayProcess, tmp_path: Path) -> None:
    name = ns()
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps(conversations(0, 150)))
    code, shown = memgate_tty(
        "import", "-n", name, str(path), "--batch-size", "200", "--url", gateway.url
    )
    assert code == 0, shown
    assert "Imported 300, skipped 0 (already there), failed 0" in shown
    counts = {int(n) for n in re.findall(r"\b(\d+)/300\b", shown)}
    assert 300 in counts
    # The progress line showed every request (25 memories) as it landed, within a batch too,
    # however fast the gateway lands them.
    assert set(range(25, 301, 25)) <= counts, sorted(counts)
    assert len(everything(gateway, name)) == 300


def test_export_import_round_trip(gateway: GatewayProcess, tmp_path: Path) -> None:
    source, copy = ns("src"), ns("copy")
    url = ("--url", gateway.url)
    chat = httpx.post(
        gateway.url + "/v1/memory/chat/completions",
        params={"namespace": source},
        json={"model": "fake-model", "messages": [{"role": "user", "content": "I play chess."}]},
        timeout=60,
    )
    assert chat.status_code == 200
    write_lines(tmp_path / "in.jsonl", MESSAGES)
    assert memgate("import", "-n", source, str(tmp_path / "in.jsonl"), *url).returncode == 0
    # 7 imported, and the chat's user turn and reply once the writer stored them
    wait_until(lambda: len(listed(gateway, source)) == 9, timeout=30)
    first = tmp_path / "first.jsonl"
    done = memgate("export", "-n", source, "-o", str(first), *url)
    assert done.returncode == 0, done.stderr
    assert f"Exported 9 memories of namespace {source}" in done.stderr
    lines = [json.loads(line) for line in first.read_text().splitlines()]
    assert [sorted(line) for line in lines] == [["content", "created_at", "metadata", "role"]] * 9
    assert [line["created_at"] for line in lines] == sorted(line["created_at"] for line in lines)
    assert all("import_key" not in line["metadata"] for line in lines)
    assert {"source": "chat", "model": "fake-model"} in [line["metadata"] for line in lines]

    ok_json(memgate("import", "-n", copy, str(first), "--json", *url))
    second = memgate("export", "-n", copy, *url)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.read_text()

    back = ok_json(memgate("import", "-n", source, str(first), "--json", *url))
    assert (back["imported"], back["skipped"]) == (0, 9)


def test_bad_files_are_reported_with_line_and_reason(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    name = ns()
    url = ("--url", gateway.url)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"role": "user", "content": "fine"}\n'
        '{"role": "user", "content": "broken\n'
        '{"role": "user", "content": "x", "created_at": "yesterday"}\n'
        "[1, 2]\n"
        '{"content": "x", "metadata": {"nested": {"a": 1}}}\n'
        '{"text": "no content"}\n'
    )
    result = memgate("import", "-n", name, str(bad), *url)
    assert result.returncode == 2
    err = result.stderr
    assert f"{bad}: line 2: not valid JSON" in err
    assert f"{bad}: line 3: created_at 'yesterday' is not an RFC 3339 timestamp" in err
    assert f"{bad}: line 4: expected a JSON object, got an array" in err
    assert f"{bad}: line 5: metadata 'nested' must be a string, number or boolean" in err
    assert f'{bad}: line 6: not a message {{"role", "content"}}' in err
    assert "5 bad record(s)" in err
    assert "nothing imported" in err
    assert listed(gateway, name) == []

    partial = memgate("import", "-n", name, str(bad), "--skip-invalid", "--json", *url)
    assert partial.returncode == 1
    summary = json.loads(partial.stdout)
    assert (summary["imported"], summary["failed"]) == (1, 5)
    assert [m["content"] for m in listed(gateway, name)] == ["fine"]

    missing = memgate("import", "-n", name, str(tmp_path / "nope.jsonl"), *url)
    assert missing.returncode == 2
    assert f"{tmp_path / 'nope.jsonl'}: no such file" in missing.stderr
    broken_array = tmp_path / "conversations.json"
    broken_array.write_text('[\n  {"title": "x",\n   "mapping": }\n]')
    array = memgate("import", "-n", name, str(broken_array), *url)
    assert array.returncode == 2
    assert f"{broken_array}: line 3 column 15: not valid JSON" in array.stderr


def test_unreachable_gateway_is_reported(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = memgate("memories", "list", "-n", "x", "--url", url)
    assert result.returncode == 3
    assert f"cannot reach the gateway at {url} (connection refused)" in result.stderr
    assert "Is `memgate serve` running there?" in result.stderr
    path = write_lines(tmp_path / "h.jsonl", MESSAGES)
    imported = memgate("import", "-n", "x", str(path), "--url", url)
    assert imported.returncode == 3
    assert "cannot reach the gateway" in imported.stderr
    assert "Traceback" not in imported.stderr


def test_keys_are_sent_and_refusals_explained(
    keyed_gateway: GatewayProcess, tmp_path: Path
) -> None:
    url = ("--url", keyed_gateway.url)
    team_ns = ns("team")
    missing = memgate("memories", "list", "-n", team_ns, *url)
    assert missing.returncode == 1
    assert "the gateway refused the API key (401): missing API key" in missing.stderr
    assert "set MEMGATE_API_KEY or pass --api-key" in missing.stderr
    wrong = memgate("memories", "list", "-n", team_ns, "--api-key", "nope", *url)
    assert wrong.returncode == 1
    assert "(401): incorrect API key provided" in wrong.stderr

    team = {"MEMGATE_API_KEY": TEAM_KEY}
    path = write_lines(tmp_path / "h.jsonl", MESSAGES)
    imported = ok_json(memgate("import", "-n", team_ns, str(path), "--json", *url, env=team))
    assert imported["imported"] == 7
    page = ok_json(memgate("memories", "list", "-n", team_ns, "--json", *url, env=team))
    assert len(page["data"]) == 7
    flag_wins = memgate("memories", "list", "-n", team_ns, "--api-key", "nope", *url, env=team)
    assert flag_wins.returncode == 1
    assert "incorrect API key" in flag_wins.stderr

    other = memgate("memories", "list", "-n", "elsewhere", *url, env=team)
    assert other.returncode == 1
    assert "not allowed to do this (403): this key may not use namespace 'elsewhere'" in (
        other.stderr
    )
    erase = memgate("memories", "erase-namespace", "-n", team_ns, "--yes", *url, env=team)
    assert erase.returncode == 1
    assert "(403): this operation needs an admin key" in erase.stderr
    erased = ok_json(
        memgate(
            "memories", "erase-namespace", "-n", team_ns, "--yes", "--json", *url,
            "--api-key", ADMIN_KEY,
        )
    )  # fmt: skip
    assert erased["deleted"] == 7
