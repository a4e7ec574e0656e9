"""The compose stack without Docker: compose.yaml is valid against the Compose spec, describes
what the gateway and Chroma accept, README's (and docs/deployment.md's) compose commands need
only the variables they set (Compose interpolates the whole file for every command), and the
same processes started with the same settings on loopback serve memory chat with Chroma in
server mode, their healthcheck passing with ``auth.protect_operations``."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from gateway.config import ConfigError, load_settings
from gateway.server import check_bind
from memory.chroma import ChromaStore
from tests.e2e.conftest import start_gateway
from tests.fake_upstream import FakeUpstream, free_port
from tests.processes import ChromaServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
_VAR = re.compile(r"\$\$|\$\{(\w+)(?::([-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``; ``$$`` is a ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == "-":
            return arg
        if op == "?":
            raise ValueError(f"{name}: {arg}")
        return ""

    return _VAR.sub(sub, value)


def strings(node: Any) -> Iterator[str]:
    """Every string value of a loaded compose file (what Compose interpolates)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def interpolate_all(compose: dict[str, Any], env: dict[str, str]) -> None:
    """What Compose does first, whatever the command (``ps``, ``down``, ``logs`` too): every
    value of the file interpolated; a ``${VAR:?...}`` without its variable is an error."""
    for value in strings(compose):
        interpolate(value, env)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_file_is_valid_against_the_spec(compose: dict[str, Any]) -> None:
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    jsonschema.validate(compose, schema)


def test_compose_describes_what_the_gateway_expects(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"gateway", "lb", "chroma", "redis", "ollama", "ollama-pull"}
    gateway, chroma, lb = services["gateway"], services["chroma"], services["lb"]
    assert gateway["build"] == "."
    assert (ROOT / "Dockerfile").is_file()
    assert services["ollama"]["profiles"] == ["ollama"]
    assert services["redis"]["profiles"] == ["redis"]
    for name, service in services.items():
        if service.get("restart") != "no":  # one-shot jobs excepted, every service is watched
            assert "healthcheck" in service, name
    # the Chroma image ships without curl
    assert "curl" not in " ".join(chroma["healthcheck"]["test"])
    assert gateway["depends_on"]["chroma"]["condition"] == "service_healthy"
    assert "chroma-data:/data" in chroma["volumes"]
    assert "gateway-data:/data" in gateway["volumes"]
    # scalable: no host port on the gateway; the load balancer has it and finds every replica
    assert "ports" not in gateway
    assert lb["ports"] == ["11435:11435"]
    lb_conf = compose["configs"]["lb-conf"]["content"]
    assert "server gateway:11435 resolve;" in lb_conf
    assert "proxy_buffering off;" in lb_conf  # streams relayed chunk by chunk
    assert lb["configs"][0]["source"] == "lb-conf"

    env = {k: str(v) for k, v in gateway["environment"].items()}
    # Compose itself requires no variable; every "$" of the file is a form this test reads
    interpolate_all(compose, {})
    for value in strings(compose):
        assert "$" not in _VAR.sub("", value), value
    # the gateway does: without a key it refuses to listen on 0.0.0.0 (one line, exit 2)
    keyless = load_settings(None, {k: interpolate(v, {}) for k, v in env.items()})
    with pytest.raises(ConfigError, match="no API keys are configured"):
        check_bind(keyless)
    resolved = {k: interpolate(v, {"MEMGATE_ADMIN_KEY": "k"}) for k, v in env.items()}
    unknown = [
        k for k in resolved if k.startswith("MEMGATE_")
        and k not in {"MEMGATE_ADMIN_KEY", "MEMGATE_KEYS_JSON"} and not _is_setting(k)
    ]  # fmt: skip
    assert unknown == [], f"compose sets variables memgate does not read: {unknown}"
    settings = load_settings(None, resolved)
    assert settings.server.host == "0.0.0.0"
    assert settings.keys[0].admin is True  # so binding beyond loopback is allowed
    assert settings.upstream.url == "http://ollama:11434/v1"
    assert str(settings.server.port) in gateway["expose"]
    assert settings.store.data_dir == "/data/{hostname}"  # one queue a replica
    assert settings.auth.rate_limit_storage == ""
    keys = '[{"name": "app", "key_sha256": "' + "a" * 64 + '", "namespaces": ["app:*"]}]'
    passed = {
        k: interpolate(v, {"MEMGATE_ADMIN_KEY": "k", "MEMGATE_KEYS_JSON": keys})
        for k, v in env.items()
    }
    assert [k.name for k in load_settings(None, passed).keys] == ["app", "admin"]
    chroma_port = chroma["command"][chroma["command"].index("--port") + 1]
    assert settings.store.chroma_url == f"http://chroma:{chroma_port}"
    assert chroma["command"][0] == "run"
    assert "/readyz" in " ".join(gateway["healthcheck"]["test"])
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["memgate", "serve"]' in dockerfile
    # the image's own healthcheck is the stack's (run in test_the_stack_runs_on_loopback)
    assert json.dumps(gateway["healthcheck"]["test"][1:]) in dockerfile


def split_image(image: str) -> tuple[str, str]:
    """``repository[:tag][@digest]`` -> (repository, tag); the tag is "" when there is none
    (a registry's port, ``host:5000/name``, is not a tag)."""
    reference = image.partition("@")[0]
    repository, colon, tag = reference.rpartition(":")
    if not colon or "/" in tag:
        return reference, ""
    return repository, tag


def test_split_image() -> None:
    assert split_image("nginx:1.28.0-alpine") == ("nginx", "1.28.0-alpine")
    assert split_image("ollama/ollama") == ("ollama/ollama", "")
    assert split_image("localhost:5000/memgate") == ("localhost:5000/memgate", "")
    assert split_image("localhost:5000/memgate:0.1@sha256:ab") == ("localhost:5000/memgate", "0.1")


def test_every_image_is_pinned_to_a_release(compose: dict[str, Any]) -> None:
    images = {name: service["image"] for name, service in compose["services"].items()}
    assert set(images) == set(compose["services"])  # every service names its image
    for name, image in images.items():
        _, tag = split_image(image)
        # a version, not a moving name ("latest", "alpine", "3", "1.5")
        assert re.fullmatch(r"\d+\.\d+\.\d+(-[a-z0-9.]+)?", tag), f"{name}: {image} is not pinned"
    # the image built here is tagged with the project's version
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert images["gateway"] == f"memgate:{version}"
    # the model pull runs the client of the same Ollama release as the server
    assert images["ollama-pull"] == images["ollama"]


def enabled_services(compose: dict[str, Any], profiles: set[str]) -> set[str]:
    """The services ``docker compose --profile P ... up`` starts: no profile, or an active one."""
    return {
        name
        for name, service in compose["services"].items()
        if not service.get("profiles") or profiles & set(service["profiles"])
    }


@pytest.mark.parametrize("profiles", [set(), {"ollama"}, {"redis"}, {"ollama", "redis"}])
def test_every_profile_starts_with_what_it_depends_on(
    compose: dict[str, Any], profiles: set[str]
) -> None:
    """Compose refuses to start a service whose required dependency is not enabled: each
    dependency on a service outside the active profiles must say ``required: false``; an
    optional one still holds (it is waited for) when its profile is on."""
    enabled = enabled_services(compose, profiles)
    assert {"gateway", "lb", "chroma"} <= enabled
    for name in enabled:
        for target, dep in compose["services"][name].get("depends_on", {}).items():
            assert target in compose["services"], f"{name} depends on unknown {target}"
            assert target in enabled or dep.get("required", True) is False, (
                f"with profiles {sorted(profiles)}, {name} needs {target}, which is not started"
            )


def test_the_ollama_profile_pulls_the_model_before_the_gateway_starts(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    services = compose["services"]
    gateway, ollama, pull = services["gateway"], services["ollama"], services["ollama-pull"]
    assert pull["profiles"] == ollama["profiles"] == ["ollama"]
    # the gateway waits for ollama to be healthy and the pull to finish, when they run
    assert gateway["depends_on"]["ollama"] == {"condition": "service_healthy", "required": False}
    assert gateway["depends_on"]["ollama-pull"] == {
        "condition": "service_completed_successfully",
        "required": False,
    }
    assert gateway["depends_on"]["chroma"].get("required", True) is True
    assert pull["depends_on"] == {"ollama": {"condition": "service_healthy"}}
    assert pull["restart"] == "no"
    # the gateway's default upstream is that Ollama, and so is the pulling client's server
    upstream = interpolate(gateway["environment"]["MEMGATE_UPSTREAM_URL"], {})
    assert upstream == "http://ollama:11434/v1"
    assert interpolate(pull["environment"]["OLLAMA_HOST"], {}) == "http://ollama:11434"

    # the pull command, run as the container runs it, against a stand-in ollama client
    fake = tmp_path / "bin" / "ollama"
    fake.parent.mkdir()
    calls = tmp_path / "calls"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        'case "$1" in pull) exit "$PULL_EXIT";; show) exit "$SHOW_EXIT";; esac\n'
        "exit 2\n"
    )
    fake.chmod(0o755)

    def run_pull(host_env: dict[str, str], pull_exit: int, show_exit: int) -> int:
        calls.write_text("")
        env = {k: interpolate(str(v), host_env) for k, v in pull["environment"].items()}
        argv = [*pull["entrypoint"], *(interpolate(a, host_env) for a in pull["command"])]
        assert argv[0] == "/bin/sh"
        env |= {"PATH": f"{fake.parent}:/usr/bin:/bin", "PULL_EXIT": str(pull_exit)}
        env["SHOW_EXIT"] = str(show_exit)
        return subprocess.run(["sh", *argv[1:]], env=env, check=False).returncode

    # a small chat model by default; MEMGATE_OLLAMA_MODEL picks another
    assert run_pull({}, 0, 0) == 0
    assert calls.read_text().splitlines() == ["pull qwen2.5:0.5b"]
    assert run_pull({"MEMGATE_OLLAMA_MODEL": "llama3.2:1b"}, 0, 0) == 0
    assert calls.read_text().splitlines() == ["pull llama3.2:1b"]
    # the registry out of reach (a restart offline): the copy already pulled will do
    assert run_pull({}, 1, 0) == 0
    assert calls.read_text().splitlines() == ["pull qwen2.5:0.5b", "show qwen2.5:0.5b"]
    # neither: the pull fails, and the gateway is not started on a model that is not there
    assert run_pull({}, 1, 1) != 0


def compose_commands(
    text: str, *, comments: bool = False
) -> list[tuple[dict[str, str], list[str]]]:
    """The ``docker compose`` commands of a text: README's code blocks (or, ``comments``,
    compose.yaml's comment lines), continuation lines joined; each as (the variables set
    before it, the arguments after ``compose``)."""
    if comments:
        lines = [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]
    else:
        blocks = re.findall(r"^```(?:bash|sh)\n(.*?)^```", text, flags=re.M | re.S)
        lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    found = []
    for line in lines:
        words = shlex.split(line, comments=True)
        if "docker" not in words or words[
            words.index("docker") + 1 : words.index("docker") + 2
        ] != ["compose"]:
            continue
        at = words.index("docker")
        env = dict(w.split("=", 1) for w in words[:at])
        assert all(re.fullmatch(r"[A-Z_][A-Z0-9_]*", name) for name in env), line
        found.append((env, words[at + 2 :]))
    return found


def parse_compose_args(args: list[str]) -> tuple[set[str], str, list[str]]:
    """(profiles, subcommand, its arguments) of ``docker compose ARGS``."""
    profiles: set[str] = set()
    while args[0].startswith("-"):
        assert args[0] == "--profile", args
        profiles.add(args[1])
        args = args[2:]
    return profiles, args[0], args[1:]


@pytest.mark.parametrize("source", ["README.md", "docs/deployment.md", "compose.yaml"])
def test_the_documented_compose_commands_run_as_written(
    compose: dict[str, Any], source: str
) -> None:
    """Each ``docker compose`` command of README, docs/deployment.md (and of compose.yaml's
    header) as Compose would take it, without Docker: the file interpolates with only the
    variables the command sets (every command, ps and down too); ``up`` starts a gateway that
    has a key (else it refuses to start), with its upstream and rate-limit store among the
    services started; ``logs``/``exec`` name a service of the profiles given; ``down`` and
    ``ps`` are given every profile that some ``up`` starts (Compose leaves the services of
    other profiles out)."""
    commands = compose_commands((ROOT / source).read_text(), comments=source == "compose.yaml")
    assert len(commands) >= (5 if source == "compose.yaml" else 8)
    ups = [parse_compose_args(args)[0] for _, args in commands if "up" in args]
    started_profiles = set().union(*ups)
    for env, args in commands:
        interpolate_all(compose, env)  # would raise for a variable the file requires
        profiles, command, rest = parse_compose_args(args)
        enabled = enabled_services(compose, profiles)
        if command == "up":
            gateway_env = {
                k: interpolate(str(v), env)
                for k, v in compose["services"]["gateway"]["environment"].items()
            }
            settings = load_settings(None, gateway_env)
            check_bind(settings)  # raises when the gateway would refuse to start
            host = settings.upstream.url.split("//", 1)[1].split(":")[0].split("/")[0]
            assert host not in compose["services"] or host in enabled, (args, host)
            if "redis://redis" in settings.auth.rate_limit_storage:
                assert "redis" in enabled, args
            for option in rest:
                if option.startswith("gateway="):
                    assert "--scale" in rest
        elif command in ("logs", "exec"):
            service = next(word for word in rest if not word.startswith("-"))
            assert service in enabled, (args, service)
        else:
            assert command in ("ps", "down"), args
            assert started_profiles <= profiles, (args, started_profiles)


def _is_setting(name: str) -> bool:
    import msgspec

    from gateway.config import Settings

    for section in msgspec.structs.fields(Settings):
        if isinstance(section.type, type) and issubclass(section.type, msgspec.Struct):
            for field in msgspec.structs.fields(section.type):
                if name == f"MEMGATE_{section.name}_{field.name}".upper():
                    return True
    return False


def test_the_stack_runs_on_loopback(
    compose: dict[str, Any], tmp_path: Path, upstream: tuple[FakeUpstream, str]
) -> None:
    services = compose["services"]
    # chroma: the compose command, on a loopback port and a temp folder
    command = list(services["chroma"]["command"])
    command[command.index("--port") + 1] = str(free_port())
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--path") + 1] = str(tmp_path / "chroma")
    port = int(command[command.index("--port") + 1])
    chroma = ChromaServer(tmp_path / "chroma", port=port).start()
    # gateway: the compose environment, hosts mapped to loopback; /readyz behind the key
    host_env = {"MEMGATE_ADMIN_KEY": "admin-key", "MEMGATE_AUTH_PROTECT_OPERATIONS": "true"}
    env = {k: interpolate(str(v), host_env) for k, v in services["gateway"]["environment"].items()}
    env["MEMGATE_STORE_CHROMA_URL"] = (
        env["MEMGATE_STORE_CHROMA_URL"]
        .replace("chroma:", "127.0.0.1:")
        .replace(":8000", f":{port}")
    )
    env["MEMGATE_UPSTREAM_URL"] = upstream[1]
    env["MEMGATE_SERVER_HOST"] = "127.0.0.1"
    env.pop("MEMGATE_SERVER_PORT")  # a free port instead
    env.pop("MEMGATE_STORE_DATA_DIR")
    # without a key the gateway does not start on 0.0.0.0: one line, exit code 2
    keyless = {**os.environ, **env, "MEMGATE_SERVER_HOST": "0.0.0.0", "MEMGATE_ADMIN_KEY": ""}
    refused = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--data-dir", str(tmp_path / "no-key")],
        env=keyless, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith("memgate: no API keys are configured, so memgate will not")
    assert len(refused.stderr.strip().splitlines()) == 1
    key = {"authorization": "Bearer admin-key"}
    gw = start_gateway(tmp_path / "data", upstream[1], env=env, ready_headers=key)
    try:
        # the stack's healthcheck, run as the container runs it: ready, with the key it sends
        assert httpx.get(gw.url + "/readyz").status_code == 401  # protect_operations
        check = services["gateway"]["healthcheck"]["test"]
        assert check[:2] == ["CMD", "python"]
        argv = [
            sys.executable,
            *(a.replace(":11435/", f":{gw.url.rsplit(':', 1)[1]}/") for a in check[2:]),
        ]
        healthy = subprocess.run(
            argv, env={**os.environ, **env}, capture_output=True, timeout=30, check=False
        )
        assert healthy.returncode == 0, healthy.stderr
        without = {**os.environ, **env, "MEMGATE_ADMIN_KEY": ""}
        assert (
            subprocess.run(
                argv, env=without, capture_output=True, timeout=30, check=False
            ).returncode
            != 0
        )
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "Stack test fact"}]}
        assert (
            httpx.post(gw.url + "/v1/memory/ns/stack/chat/completions", json=body).status_code
            == 401
        )
        r = httpx.post(gw.url + "/v1/memory/ns/stack/chat/completions", json=body, headers=key)
        assert r.status_code == 200
        ready = httpx.get(gw.url + "/readyz", headers=key).json()
        assert ready["checks"]["store"] == "ok"
        line = next(x for x in gw.log().splitlines() if "memgate ready" in x)
        assert json.loads(line)["logger"] == "memgate"  # JSON logs, as compose asks
        store = ChromaStore(url=chroma.url)
        end = time.monotonic() + 30.0
        while store.count("stack") < 2 and time.monotonic() < end:
            time.sleep(0.2)
        assert store.count("stack") == 2  # written to the Chroma server, not to local disk
        assert not (tmp_path / "data" / "chroma").exists()
    finally:
        gw.stop()
        chroma.stop()
    assert os.path.exists(tmp_path / "data" / "outbox.sqlite3")
