"""README, docs/, /docs and the code agree: each documented status, limit, default and order
that can be checked here is checked against what the gateway does (the namespaces' order: in
tests/integration/test_chroma_store.py; the compose commands: tests/e2e/test_compose.py).

README is the user's document (at most 400 lines, no diary of trials, no commit hashes); every
link in it and in docs/ leads somewhere, and every command, environment variable and
configuration key it names is one the code has."""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from gateway import config
from gateway.app import create_app
from gateway.cli import _parser
from gateway.config import KeySettings, Settings, UpstreamSettings, key_hash
from tests.conftest import AppHarness
from tests.unit.test_chat import assert_openai_error

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
API = (ROOT / "docs" / "api.md").read_text()


def section(title: str, text: str = README) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def fenced(text: str, languages: str = "bash|sh") -> list[str]:
    """The code blocks of a Markdown text in those languages, continuation lines joined."""
    blocks = re.findall(rf"^```(?:{languages})\n(.*?)^```", text, flags=re.M | re.S)
    return [block.replace("\\\n", " ") for block in blocks]


def inline_code(text: str) -> list[str]:
    """The inline code spans of a Markdown text (fenced blocks left out)."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.findall(r"`([^`\n]+)`", prose)


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
    api = section("Endpoints", API)
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


@pytest.mark.parametrize(
    ("text", "least"),
    [(CONFIGURATION, 60), (section("Configuration"), 18)],
    ids=["docs/configuration.md", "README.md"],
)
def test_the_configuration_tables_give_the_defaults(text: str, least: int) -> None:
    """docs/configuration.md: every key; README: the most used ones. Each default as it is."""
    rows = [
        line.split(" | ")
        for line in text.splitlines()
        if line.startswith("| `") and line.count(" | ") >= 2
    ]
    assert len(rows) >= least * 5 // 6
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
    assert checked >= least


def test_the_full_configuration_table_names_every_key() -> None:
    named = set(re.findall(r"`([a-z]+)\.([a-z_0-9]+)`", CONFIGURATION))
    for section_name, struct in config._sections().items():
        for field in msgspec.structs.fields(struct):
            if (section_name, field.name) in {("upstream", "api_key")}:
                continue  # a secret: from the environment only, said in the text
            assert (section_name, field.name) in named, f"{section_name}.{field.name}"


def test_the_quickstart_shows_a_local_upstream_and_how_memgate_gets_on_path() -> None:
    quickstart = section("Quickstart")
    first, tests, *rest = re.findall(r"```bash\n(.*?)```", quickstart, flags=re.S)
    # the two commands first: install-and-serve, then the tests (what .ci/run runs)
    assert "OPENAI_API_KEY=sk-... ./scripts/serve.sh" in first
    assert tests.strip() == "./scripts/test.sh"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == tests.strip()
    second = next(block for block in rest if block.startswith("export PATH="))
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
    """docs/api.md "Errors" (README's API section in brief): each status it names, produced
    the way it says."""
    errors = API[API.index("Errors produced") :]
    errors = " ".join(errors[: errors.index("\n\n")].split())
    brief = " ".join(section("API").split())
    for status in (400, 401, 403, 404, 413, 429, 502, 503, 504):
        assert f"{status} " in brief, status
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


# -- README as the user's document -----------------------------------------------------------

COMMIT = re.compile(r"(?<![\w/.#-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}(?![\w/-])")


def test_the_readme_is_a_short_users_document() -> None:
    """At most 400 lines; the trials, their dates and commits live in docs/ and CHANGELOG."""
    lines = README.splitlines()
    assert len(lines) <= 400, len(lines)
    assert not COMMIT.findall(README), COMMIT.findall(README)
    assert not re.findall(r"\b20\d\d-\d\d-\d\d\b", README), "a dated entry: move it to docs/"
    for heading in (line for line in lines if line.startswith("#")):
        assert not re.search(r"\bissue \d+|\b20\d\d\b|tried|dropped", heading, re.I), heading
    assert not re.search(r"\bissue \d+\b|tried and dropped", README, re.I)
    # the detector finds what it is for
    assert COMMIT.findall("at commit 81acc8e, run 3 at 83fd509") == ["81acc8e", "83fd509"]
    assert not COMMIT.findall("mem_0123... deadbeef 1234567 docs/ui-preview.png")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        name, n = slug(heading), 1
        while name in found:
            name, n = f"{slug(heading)}-{n}", n + 1
        found.add(name)
    return found


@pytest.mark.parametrize(
    "path",
    [ROOT / "README.md", ROOT / "CHANGELOG.md", *DOCS],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_relative_link_leads_to_a_file_and_anchor(path: Path) -> None:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links or path.name == "failure-modes.md"
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue  # https://..., mailto:
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        assert file.is_file(), f"{path.name}: {link} leads nowhere"
        assert ROOT in file.parents, link
        if anchor:
            assert file.suffix == ".md", link
            assert anchor in anchors(file), f"{path.name}: no heading for {link}"


def test_the_readme_leads_to_every_document() -> None:
    linked = {Path(t.partition("#")[0]) for t in re.findall(r"\]\(([^)\s]+)\)", README)}
    for doc in [*DOCS, ROOT / "CHANGELOG.md"]:
        assert doc.relative_to(ROOT) in linked, f"README does not link {doc.name}"
    images = sorted(p.name for p in (ROOT / "docs").glob("*.png"))
    assert images
    assert all(f"](docs/{name})" in README for name in images)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def memgate_commands(text: str) -> list[list[str]]:
    """Every ``memgate ...`` command line of a text (code blocks and inline code), as words."""
    lines = [line for block in fenced(text) for line in block.splitlines()]
    lines += inline_code(text)
    return [
        shlex.split(line, comments=True)
        for line in (line.strip() for line in lines)
        if line.startswith("memgate ")
    ]


def test_every_memgate_command_the_readme_shows_exists() -> None:
    """Its subcommands, and each option given, as the CLI's parser has them."""
    commands = memgate_commands(README)
    assert len(commands) >= 10
    shown = set()
    for words in commands:
        parser, chain = _parser(), []
        for word in words[1:]:
            choices = _subcommands(parser)
            if word not in choices:
                break
            parser, chain = choices[word], [*chain, word]
        assert chain, f"no such memgate command: {' '.join(words)}"
        assert not _subcommands(parser), f"{' '.join(words)}: a subcommand is missing"
        shown.add(" ".join(chain))
        for word in words:
            for option in re.findall(r"^\[?(--?[a-z][a-z0-9-]*)", word):
                assert option in parser._option_string_actions, f"{' '.join(chain)} {option}"
    # the commands README names are the CLI's, all of them
    assert shown == {
        "serve", "import", "export", "memories list", "memories search", "memories get",
        "memories delete", "memories erase-namespace",
    }  # fmt: skip


def known_variables() -> set[str]:
    """``MEMGATE_*`` names memgate reads: a setting's (``MEMGATE_<SECTION>_<KEY>``), the lists'
    JSON, the ones the code reads by name, and the compose file's own (its profiles)."""
    names = {
        f"MEMGATE_{section}_{field.name}".upper()
        for section, struct in config._sections().items()
        for field in msgspec.structs.fields(struct)
    }
    names |= {f"MEMGATE_{name.upper()}_JSON" for name in config._LISTS}
    code = "\n".join(p.read_text() for p in (ROOT / "gateway").rglob("*.py"))
    names |= set(re.findall(r"""\.get\(["'](MEMGATE_[A-Z0-9_]+)["']""", code))
    names |= set(re.findall(r"\$\{(MEMGATE_[A-Z0-9_]+)", (ROOT / "compose.yaml").read_text()))
    return names


def test_every_variable_the_readme_names_is_read() -> None:
    known = known_variables()
    assert {"MEMGATE_ADMIN_KEY", "MEMGATE_CONFIG", "MEMGATE_URL", "MEMGATE_API_KEY"} <= known
    named = set(re.findall(r"\bMEMGATE_[A-Z0-9_]*[A-Z0-9]\b", README))
    assert len(named) >= 10
    assert named <= known, named - known


SECTIONS = "|".join(config._sections())


def test_every_configuration_key_the_readme_names_exists() -> None:
    """``section.key`` anywhere in README, and every key of its TOML examples."""
    fields = {
        section: {f.name for f in msgspec.structs.fields(struct)}
        for section, struct in config._sections().items()
    }
    named = re.findall(rf"(?<![\w./-])({SECTIONS})\.([a-z_][a-z0-9_]*)\b", README)
    assert len(named) >= 30
    for section_name, key in named:
        assert key in fields[section_name], f"README names {section_name}.{key}: no such key"
    lists = {"keys": KeySettings, "upstreams": UpstreamSettings}
    blocks = fenced(README, "toml")
    assert blocks
    for block in blocks:
        for table, values in tomllib.loads(block).items():
            if table in lists:
                known = {f.name for f in msgspec.structs.fields(lists[table])}
                for entry in values:
                    assert set(entry) <= known, set(entry) - known
            else:
                assert set(values) <= fields[table], (table, set(values) - fields[table])


@pytest.mark.parametrize(
    "path", [ROOT / "README.md", *DOCS], ids=lambda p: str(p.relative_to(ROOT))
)
def test_the_scripts_and_benchmarks_the_documents_run_exist(path: Path) -> None:
    """``bench/X.py`` and ``scripts/X.sh`` exist, and a benchmark takes the options shown (the
    serve script passes its own to ``memgate serve``)."""
    text = path.read_text()
    lines = [line for block in fenced(text) for line in block.splitlines()]
    lines += inline_code(text)
    serve = _subcommands(_parser())["serve"]
    for line in lines:
        for script, rest in re.findall(r"((?:bench|scripts)/[\w/]+\.(?:py|sh))([^#|;&]*)", line):
            file = ROOT / script
            assert file.is_file(), f"{path.name}: {script} does not exist"
            options = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest)
            if script == "scripts/serve.sh":
                assert all(o in serve._option_string_actions for o in options), line
            elif script.startswith("bench/") and options:
                usage = _bench_help(script)
                for option in options:
                    assert option in usage, f"{path.name}: {script} has no {option}"


@functools.cache
def _bench_help(script: str) -> str:
    """What ``python bench/X.py --help`` prints (its options, wherever they are defined)."""
    done = subprocess.run(
        [sys.executable, str(Path(script).relative_to("bench")), "--help"],
        cwd=ROOT / "bench",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_the_architecture_names_every_module_and_create_app_as_it_is() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    titles = {
        "gateway": "`gateway/`: HTTP (Litestar)",
        "memory": "`memory/`: no HTTP, usable as a library",
    }
    for package, title in titles.items():
        part = section(title, text)
        bullets = {
            m.group(1): m.group(0) for m in re.finditer(r"^- `(\w+)/`.*(?:\n  .*)*", part, re.M)
        }
        for module in sorted((ROOT / package).rglob("*.py")):
            relative = module.relative_to(ROOT / package)
            if len(relative.parts) == 1:
                assert f"`{module.name}`" in part, f"{package}/{relative} is not described"
            elif module.name not in ("__init__.py", "__main__.py") or relative.parts[0] == "cli":
                where = bullets.get(relative.parts[0], "")
                assert f"`{module.name}`" in where, f"{package}/{relative} is not described"
    signature = inspect.signature(create_app)
    first, *rest = signature.parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in rest)
    shown = f"create_app({first.name}, *, {', '.join(p.name for p in rest)})"
    assert shown in text, shown
