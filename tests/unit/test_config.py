from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    s = load_settings(None, {})
    assert (s.server.host, s.server.port) == ("127.0.0.1", 11435)
    assert s.store.data_dir == "./data"
    assert s.store.chroma_url == ""
    assert s.server.default_namespace == "default"


def test_example_config_loads_and_documents_every_key() -> None:
    example = ROOT / "config.example.toml"
    s = load_settings(example, {})
    text = example.read_text()
    import msgspec

    for section in msgspec.structs.fields(s):
        struct = getattr(s, section.name)
        for field in msgspec.structs.fields(struct):
            if (section.name, field.name) == ("upstream", "api_key"):
                continue
            assert f"{field.name} =" in text, f"{section.name}.{field.name} is not documented"


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nport = 9000\nhost = "0.0.0.0"\n[recall]\nk = 3\n')
    env = {
        "MEMGATE_SERVER_PORT": "9100",
        "MEMGATE_RECALL_ENABLED": "false",
        "OPENAI_API_KEY": "sk-env",
    }
    s = load_settings(path, env, {"server": {"host": "127.0.0.2", "port": None}})
    assert s.server.port == 9100
    assert s.server.host == "127.0.0.2"
    assert s.recall.k == 3
    assert s.recall.enabled is False
    assert s.upstream.api_key == "sk-env"


def test_api_key_env_name_is_configurable() -> None:
    s = load_settings(None, {"MEMGATE_UPSTREAM_API_KEY_ENV": "GROQ_KEY", "GROQ_KEY": "gk"})
    assert s.upstream.api_key == "gk"
    s = load_settings(None, {"MEMGATE_UPSTREAM_API_KEY": "direct", "OPENAI_API_KEY": "other"})
    assert s.upstream.api_key == "direct"


def test_secret_in_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[upstream]\napi_key = "sk-leak"\n')
    with pytest.raises(ConfigError, match="environment"):
        load_settings(path, {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nport = 'x'\n", "invalid configuration"),
        ("[server]\nbogus = 1\n", "invalid configuration"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(path, {})


def test_bad_env_value_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="port"):
        load_settings(None, {"MEMGATE_SERVER_PORT": "eighty"})
