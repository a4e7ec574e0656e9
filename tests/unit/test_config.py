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
    import msgspec

    from gateway.config import KeySettings, Settings, UpstreamSettings

    example = ROOT / "config.example.toml"
    load_settings(example, {})
    text = example.read_text()
    structs = [f.type for f in msgspec.structs.fields(Settings) if isinstance(f.type, type)]
    for struct in [*structs, KeySettings, UpstreamSettings]:
        for field in msgspec.structs.fields(struct):
            if field.name == "api_key":
                continue  # a secret: never in the file
            assert f"{field.name} =" in text, f"{struct.__name__}.{field.name} is not documented"


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


def test_keys_from_file_and_environment(tmp_path: Path) -> None:
    from gateway.config import key_hash

    path = tmp_path / "c.toml"
    path.write_text(
        f"""
[[keys]]
name = "a"
key_sha256 = "{key_hash("secret-a").upper()}"
namespaces = ["tenant-a:*"]
memory_api = true

[[keys]]
name = "b"
key_env = "B_KEY"

[[upstreams]]
name = "local"
url = "http://127.0.0.1:1/v1"
models = ["llama*"]
api_key_env = "LOCAL_KEY"
"""
    )
    s = load_settings(path, {"B_KEY": "secret-b", "MEMGATE_ADMIN_KEY": "root", "LOCAL_KEY": "lk"})
    keys = {k.name: k for k in s.keys}
    assert keys["a"].key_sha256 == key_hash("secret-a")
    assert keys["b"].key_sha256 == key_hash("secret-b")
    assert keys["admin"].admin is True
    assert [u.name for u in s.all_upstreams()] == ["local", "default"]
    assert s.upstreams[0].api_key == "lk"
    with pytest.raises(ConfigError, match="B_KEY"):
        load_settings(path, {})
    path.write_text('[[keys]]\nname = "x"\nkey = "plain"\n')
    with pytest.raises(ConfigError, match="secret"):
        load_settings(path, {})
    s = load_settings(
        None, {"MEMGATE_KEYS_JSON": '[{"name": "j", "key_sha256": "ab", "admin": true}]'}
    )
    assert s.keys[0].name == "j"
    with pytest.raises(ConfigError, match="JSON"):
        load_settings(None, {"MEMGATE_KEYS_JSON": "{oops"})


def test_forwarded_headers_are_believed_only_from_trusted_proxies(tmp_path: Path) -> None:
    from gateway.server import proxy_options

    default = load_settings(env={})
    assert proxy_options(default) == {"proxy_headers": False, "forwarded_allow_ips": ""}
    behind = load_settings(env={"MEMGATE_SERVER_TRUSTED_PROXIES": "10.0.0.5, 172.16.0.0/12"})
    assert behind.server.trusted_proxies == ("10.0.0.5", "172.16.0.0/12")
    assert proxy_options(behind) == {
        "proxy_headers": True,
        "forwarded_allow_ips": ["10.0.0.5", "172.16.0.0/12"],
    }
