"""README, /docs and the code agree: each documented status, limit, default and order that can
be checked here is checked against what the gateway does (the namespaces' order: in
tests/integration/test_chroma_store.py; the compose commands: tests/e2e/test_compose.py)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from gateway.config import KeySettings, Settings, key_hash
from tests.conftest import AppHarness
from tests.unit.test_chat import assert_openai_error

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    with AppHarness(tmp_path_factory.mktemp("docs")).client() as client:
        found: dict[str, Any] = client.get("/docs/openapi.json").json()
    return found


def test_every_route_documents_openais_error_body(spec: dict[str, Any]) -> None:
    """Not Litestar's {status_code, detail, extra}: the body every error has."""
    schemas = spec["components"]["schemas"]
    detail = schemas["ErrorDetail"]
    assert set(detail["properties"]) == set(detail["required"]) == {
        "message", "type", "param", "code"
    }  # fmt: skip
    assert schemas["ErrorBody"]["required"] == ["error"]
    assert "status_code" not in json.dumps(spec)
    operations = [
        (method.upper(), path, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    ]
    assert len(operations) >= 20
    for method, path, op in operations:
        errors = {int(s): r for s, r in op["responses"].items() if int(s) >= 400}
        assert 500 in errors, (method, path)
        for status, response in errors.items():
            if (path, status) == ("/readyz", 503):
                continue  # not ready: the readiness body, as with 200
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
            assert response["description"]
    # what each route may answer: keys everywhere but /healthz; 403 where scopes apply
    by_route = {(m, p): {int(s) for s in op["responses"]} for m, p, op in operations}
    assert {400, 401, 403, 404, 429, 503} <= by_route[("DELETE", "/v1/memory/memories")]
    assert {400, 401, 413, 429, 502, 504} <= by_route[("POST", "/v1/memory/chat/completions")]
    assert by_route[("GET", "/healthz")] == {200, 500}


def test_the_documented_limits_are_the_apis(spec: dict[str, Any]) -> None:
    api = section("API")
    for claim in (
        "Add up to 1,000 memories",
        "`limit` 1-100;",
        '"k"?: 1-100 (10)',
        "`limit` 1-1000. Admin keys.",
    ):
        assert claim in api, claim
    params = {
        (path, method, p["name"]): p["schema"]
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        for p in op.get("parameters", [])
    }

    def bounds(schema: dict[str, Any]) -> tuple[int, int]:
        if "oneOf" in schema:  # optional: one of the integer and null
            schema = next(s for s in schema["oneOf"] if s.get("type") == "integer")
        return schema["minimum"], schema["maximum"]

    assert bounds(params[("/v1/memory/memories", "get", "limit")]) == (1, 100)
    assert bounds(params[("/v1/memory/namespaces", "get", "limit")]) == (1, 1000)
    schemas = spec["components"]["schemas"]
    search = next(s for n, s in schemas.items() if n.endswith("SearchRequest"))
    assert (search["properties"]["k"]["minimum"], search["properties"]["k"]["maximum"]) == (
        1,
        100,
    )
    assert search["properties"]["k"]["default"] == 10
    add = next(s for n, s in schemas.items() if n.endswith("AddMemoriesRequest"))
    assert add["properties"]["memories"]["maxItems"] == 1000


def _cell_values(cell: str) -> list[Any]:
    """The defaults of a configuration table row, in order (`a`, `b`; empty; none)."""
    if cell.strip() in ("empty", "none"):
        return [None if cell.strip() == "none" else ""]
    values = []
    for code in re.findall(r"`([^`]*)`", cell):
        try:
            values.append(json.loads(code))
        except ValueError:
            values.append(code)
    return values


def test_the_configuration_table_gives_the_defaults() -> None:
    rows = [
        line.split(" | ")
        for line in section("Configuration").splitlines()
        if line.startswith("| `") and line.count(" | ") >= 2
    ]
    assert len(rows) >= 50
    defaults = msgspec.to_builtins(Settings())
    checked = 0
    for key_cell, default_cell, *_ in rows:
        keys = re.findall(r"`([a-z_]+\.[a-z_0-9]+)`", key_cell)
        values = _cell_values(default_cell)
        if not keys or values == [None]:
            continue  # [[keys]], [[upstreams]]: lists, none by default
        assert len(keys) == len(values), key_cell
        for key, value in zip(keys, values, strict=True):
            section_name, name = key.split(".")
            actual = defaults[section_name][name]
            actual = list(actual) if isinstance(actual, tuple) else actual
            assert actual == value, f"README says {key} = {value!r}, the default is {actual!r}"
            checked += 1
    assert checked >= 55


def test_the_quickstart_shows_a_local_upstream_and_how_memgate_gets_on_path() -> None:
    quickstart = section("Quickstart")
    first, second = re.findall(r"```bash\n(.*?)```", quickstart, flags=re.S)[:2]
    assert "OPENAI_API_KEY=sk-... ./scripts/serve.sh" in first
    local = re.findall(r"--upstream-url http://127\.0\.0\.1:(\d+)/v1", first)
    assert {"11434", "8080"} <= set(local)  # Ollama, llama.cpp
    # memgate is .venv/bin/memgate (scripts/install.sh's venv, pyproject's script)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["memgate"] == "gateway.cli:main"
    assert "-m venv .venv" in (ROOT / "scripts" / "install.sh").read_text()
    assert second.splitlines()[0].startswith('export PATH="$PWD/.venv/bin:$PATH"')
    assert second.splitlines()[1].startswith("memgate ")
    # the install sizes are given for both sets
    assert re.search(r"618 MB", quickstart)
    assert re.search(r"torch.*1\.9 GB", quickstart, flags=re.S)


def test_the_documented_error_statuses(tmp_path: Path) -> None:
    """README "Errors": each status it names, produced the way it says."""
    errors = README[README.index("**Errors** produced") :]
    errors = " ".join(errors[: errors.index("\n\n")].split())
    for claim in (
        "bad memory input → 400",
        "unknown id → 404",
        "`server.max_body_bytes` → 413",
        "upstream unreachable → 502",
        "upstream timeout → 504",
        "store down (memory API) → 503",
        "a missing or wrong key → 401",
        "outside its scope → 403",
        "429 with `retry-after`",
    ):
        assert claim in errors, claim
    keys = (
        KeySettings(name="k", key_sha256=key_hash("good"), namespaces=("mine",), memory_api=True,
                    requests_per_minute=3),
    )  # fmt: skip
    h = AppHarness(tmp_path, keys=keys, server={"max_body_bytes": 2000})
    key = {"authorization": "Bearer good"}
    failures = iter([httpx.ConnectError("refused")] * 3 + [httpx.ReadTimeout("slow")])

    def fail(request: httpx.Request) -> httpx.Response:
        raise next(failures)  # unreachable (the first try and its two retries), then slow

    with h.client() as c:
        chat = "/v1/memory/chat/completions?namespace=mine"
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        assert_openai_error(c.post(chat, content=b"{", headers=key), 400)
        assert_openai_error(c.post(chat, json=body), 401)
        assert_openai_error(c.post(chat.replace("mine", "theirs"), json=body, headers=key), 403)
        # a new window of requests for the key: the calls above were counted
        h2 = AppHarness(tmp_path / "2", keys=keys[:0], server={"max_body_bytes": 2000})
        h2.upstream.post("/chat/completions").mock(side_effect=fail)
        with h2.client() as c2:
            assert_openai_error(c2.post("/v1/chat/completions", json=body), 502)
            assert_openai_error(c2.post("/v1/chat/completions", json=body), 504)
            assert_openai_error(c2.get("/v1/memory/memories/mem_nope"), 404)
            assert_openai_error(c2.post(chat, json={**body, "pad": "x" * 3000}), 413)
            bad = c2.post("/v1/memory/memories", json={"memories": [{"content": ""}]})
            assert_openai_error(bad, 400)
            h2.store.down = True
            assert_openai_error(c2.get("/v1/memory/memories"), 503)
        # requests_per_minute = 3: the key's fourth request in the minute is refused
        answers = [c.get("/v1/memory/memories?namespace=mine", headers=key) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 429, 429]
        assert_openai_error(answers[-1], 429)
        assert int(answers[-1].headers["retry-after"]) >= 1
