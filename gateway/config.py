"""Settings: frozen msgspec Structs loaded from TOML, then ``MEMGATE_*`` environment overrides,
then command-line flags (``with_overrides``). ``config.example.toml`` documents every key.

Environment overrides are named ``MEMGATE_<SECTION>_<KEY>`` in upper case, e.g.
``MEMGATE_SERVER_PORT=8080`` or ``MEMGATE_RECALL_TOKEN_BUDGET=500``. Secrets (the upstream API
key) come from the environment only: a TOML file that holds one is refused.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"


class ServerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 11435
    max_body_bytes: int = 4 * 1024 * 1024
    default_namespace: str = "default"
    log_level: str = "info"
    shutdown_flush_seconds: float = 30.0


class UpstreamSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str = "https://api.openai.com/v1"
    api_key_env: str = DEFAULT_API_KEY_ENV
    api_key: str = ""  # from the environment or --upstream-api-key only
    timeout: float = 600.0
    connect_timeout: float = 10.0
    forward_client_authorization: bool = False
    max_connections: int = 256


class StoreSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    data_dir: str = "./data"
    chroma_url: str = ""
    collection_prefix: str = "mg-"
    cache_size: int = 1024


class EmbedderSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    model_path: str = ""
    device: str = "cpu"
    threads: int = 0
    max_batch: int = 64


class RecallSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    k: int = 8
    candidates: int = 30
    similarity_floor: float = 0.2
    token_budget: int = 1000
    query_context_messages: int = 0
    recency_weight: float = 0.0
    recency_half_life_days: float = 30.0


class QueueSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    batch_size: int = 64


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    upstream: UpstreamSettings = msgspec.field(default_factory=UpstreamSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    embedder: EmbedderSettings = msgspec.field(default_factory=EmbedderSettings)
    recall: RecallSettings = msgspec.field(default_factory=RecallSettings)
    queue: QueueSettings = msgspec.field(default_factory=QueueSettings)

    @property
    def data_dir(self) -> Path:
        return Path(self.store.data_dir)


class ConfigError(Exception):
    """The configuration cannot be loaded; the message says which key and why."""


_SECRET_KEYS = {("upstream", "api_key")}


def _sections() -> dict[str, type[msgspec.Struct]]:
    return {
        name: field.type
        for name, field in ((f.name, f) for f in msgspec.structs.fields(Settings))
        if isinstance(field.type, type)
    }


def load_settings(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Settings from a TOML file (optional), the environment ``env`` and ``overrides``
    (``{"section": {"key": value}}``, e.g. from command-line flags), later winning."""
    raw: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"config key {section!r} must be a table like [{section}]")
            for key in values:
                if (section, key) in _SECRET_KEYS:
                    raise ConfigError(
                        f"{section}.{key} must not be in a config file: set it in the environment"
                    )
            raw[section] = dict(values)
    env = env or {}
    sections = _sections()
    for section, struct in sections.items():
        for field in msgspec.structs.fields(struct):
            name = f"MEMGATE_{section}_{field.name}".upper()
            if name in env:
                raw.setdefault(section, {})[field.name] = _parse_env(env[name], field.type)
    upstream = raw.setdefault("upstream", {})
    if not upstream.get("api_key"):
        key_env = str(upstream.get("api_key_env", DEFAULT_API_KEY_ENV))
        if env.get(key_env):
            upstream["api_key"] = env[key_env]
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            if value is not None:
                raw.setdefault(section, {})[key] = value
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc


def _parse_env(value: str, typ: Any) -> Any:
    if typ is bool:
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
    return value
