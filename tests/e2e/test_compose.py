"""The compose stack without Docker: compose.yaml is valid against the Compose spec, describes
what the gateway and Chroma accept, and the same processes started with the same settings on
loopback serve memory chat with Chroma in server mode."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from gateway.config import load_settings
from memory.chroma import ChromaStore
from tests.e2e.conftest import start_gateway
from tests.fake_upstream import FakeUpstream, free_port
from tests.processes import ChromaServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
_VAR = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == "-":
            return arg
        if op == "?":
            raise ValueError(f"{name}: {arg}")
        return ""

    return _VAR.sub(sub, value)


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
    assert set(services) == {"gateway", "lb", "chroma", "redis", "ollama"}
    gateway, chroma, lb = services["gateway"], services["chroma"], services["lb"]
    assert gateway["build"] == "."
    assert (ROOT / "Dockerfile").is_file()
    assert services["ollama"]["profiles"] == ["ollama"]
    assert services["redis"]["profiles"] == ["redis"]
    for name in services:
        assert "healthcheck" in services[name], name
        image = services[name].get("image", "")
        assert name == "ollama" or not image.endswith(":latest") or name == "gateway", image
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
    with pytest.raises(ValueError, match="MEMGATE_ADMIN_KEY"):
        {k: interpolate(v, {}) for k, v in env.items()}
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
    assert dockerfile.index("torch==2.13.0") < dockerfile.index("pip install .")
    assert 'CMD ["memgate", "serve"]' in dockerfile


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
    # gateway: the compose environment, hosts mapped to loopback
    env = {
        k: interpolate(str(v), {"MEMGATE_ADMIN_KEY": "admin-key"})
        for k, v in services["gateway"]["environment"].items()
    }
    env["MEMGATE_STORE_CHROMA_URL"] = (
        env["MEMGATE_STORE_CHROMA_URL"]
        .replace("chroma:", "127.0.0.1:")
        .replace(":8000", f":{port}")
    )
    env["MEMGATE_UPSTREAM_URL"] = upstream[1]
    env["MEMGATE_SERVER_HOST"] = "127.0.0.1"
    env.pop("MEMGATE_SERVER_PORT")  # a free port instead
    env.pop("MEMGATE_STORE_DATA_DIR")
    gw = start_gateway(tmp_path / "data", upstream[1], env=env)
    try:
        key = {"authorization": "Bearer admin-key"}
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "Stack test fact"}]}
        assert (
            httpx.post(gw.url + "/v1/memory/ns/stack/chat/completions", json=body).status_code
            == 401
        )
        r = httpx.post(gw.url + "/v1/memory/ns/stack/chat/completions", json=body, headers=key)
        assert r.status_code == 200
        ready = httpx.get(gw.url + "/readyz").json()
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
