"""Settings: frozen msgspec Structs loaded from TOML, then ``MEMGATE_*`` environment overrides,
then command-line flags (``with_overrides``). ``config.example.toml`` documents every key.

Environment overrides are named ``MEMGATE_<SECTION>_<KEY>`` in upper case, e.g.
``MEMGATE_SERVER_PORT=8080`` or ``MEMGATE_RECALL_TOKEN_BUDGET=500``. Secrets (the upstream API
key) come from the environment only: a TOML file that holds one is refused.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from gateway.namespaces import SOURCES as NAMESPACE_SOURCES
from memory.recall import RecallSettings

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"


class ServerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 11435
    max_body_bytes: int = 4 * 1024 * 1024
    default_namespace: str = "default"
    # Where a request names its namespace, first found first: "path" (/v1/memory/ns/NS/...),
    # "query" (?namespace=), "header" (x-memory-namespace), "user" (the chat body's user).
    namespace_sources: tuple[str, ...] = ("path", "query", "header")

    def __post_init__(self) -> None:
        unknown = [s for s in self.namespace_sources if s not in NAMESPACE_SOURCES]
        if unknown or not self.namespace_sources:
            raise ValueError(
                f"server.namespace_sources: {unknown or 'none'}; "
                f"choose from {', '.join(NAMESPACE_SOURCES)}"
            )

    log_level: str = "info"
    log_format: str = "auto"
    shutdown_flush_seconds: float = 30.0
    # A connection whose request head has not come in this long is closed (slowloris), and
    # one whose request body has not come in body_timeout_seconds after its head.
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 60.0
    # Addresses or networks of reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are
    # believed (the client address that keys' throttles and logs use). Empty: none, not even
    # loopback; the compose stack names its nginx.
    trusted_proxies: tuple[str, ...] = ()


class UpstreamSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str = "default"
    url: str = "https://api.openai.com/v1"
    # fnmatch patterns of the model names this upstream serves ("*": any)
    models: tuple[str, ...] = ("*",)
    api_key_env: str = DEFAULT_API_KEY_ENV
    api_key: str = ""  # from the environment or --upstream-api-key only
    timeout: float = 600.0
    connect_timeout: float = 10.0
    forward_client_authorization: bool = False
    max_connections: int = 256
    # Sent again after a connect error, a 429 or a 5xx (not 501/505), only before any byte of
    # the answer was relayed: up to `retries` more times, waiting retry-after (if the upstream
    # sends one, up to retry_max_wait_seconds) or backoff * 2**n with jitter.
    retries: int = 2
    retry_backoff_seconds: float = 0.5
    retry_max_wait_seconds: float = 20.0
    # Names of other upstreams to send the request to, in order, when this one still fails.
    fallbacks: tuple[str, ...] = ()
    # Ask for usage in streams (stream_options.include_usage) when the client did not, to
    # count their tokens; what it adds is taken out of the client's stream again.
    stream_usage: bool = True

    def __post_init__(self) -> None:
        if self.retries < 0 or self.retry_backoff_seconds < 0 or self.retry_max_wait_seconds < 0:
            raise ValueError(f"upstream {self.name}: retries and waits must not be negative")


class StoreSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    data_dir: str = "./data"
    chroma_url: str = ""
    collection_prefix: str = "mg-"
    cache_size: int = 1024
    embedded_process: bool = True
    vector_cache: int = 128
    open_namespaces: int = 64
    postings_memory_mb: int = 256
    vectors_memory_mb: int = 256
    sync_interval_seconds: float = 1.0
    sync_margin_seconds: float = 5.0


class EmbedderSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    backend: str = "onnx"
    model_path: str = ""
    device: str = "cpu"
    threads: int = 1
    max_batch: int = 64
    concurrency: int = 1
    # onnx: run an int8 copy of the model (built once, kept in cache_dir); false: the file as is
    int8: bool = True
    # where the int8 copy is kept (empty: $XDG_CACHE_HOME/memgate, or ~/.cache/memgate)
    cache_dir: str = ""


class AuthSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # With no keys configured, serve beyond loopback anyway (otherwise the start is refused).
    allow_unauthenticated_remote: bool = False
    # Requests a minute per key (per client address when no keys are configured); 0: no limit.
    requests_per_minute: int = 0
    # Where rate limits are counted: empty, in each gateway process; "redis://host:6379/0",
    # in Redis, for every gateway that uses the same one.
    rate_limit_storage: str = ""
    # Wrong or missing keys a minute from one client address before it gets 429s (0: no limit).
    failed_keys_per_minute: int = 20
    # With keys configured, /readyz, /metrics and /docs need a valid key too.
    protect_operations: bool = False


class McpSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # The MCP endpoint (/mcp, /mcp/ns/{namespace}): the memory API as tools for agents, with
    # the same keys, scopes and rate limits.
    enabled: bool = True
    # Origins (scheme://host:port) of browser pages allowed to call it; a request that carries
    # another Origin header is refused (DNS rebinding). MCP clients that are programs send none.
    allowed_origins: tuple[str, ...] = ()


class KeySettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    # The key itself never goes in a file: its SHA-256 (hex), or the variable holding it.
    key_sha256: str = ""
    key_env: str = ""
    # Namespaces the key may use: exact names, or prefixes ending in "*" ("tenant-a:*", "*").
    namespaces: tuple[str, ...] = ()
    # May use the memory management API (add, list, get, delete, search) in its namespaces.
    memory_api: bool = False
    # May erase and list namespaces, and use every namespace.
    admin: bool = False
    # Overrides auth.requests_per_minute for this key (-1: the default).
    requests_per_minute: int = -1


class QueueSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    batch_size: int = 64
    coalesce_ms: float = 100.0


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    upstream: UpstreamSettings = msgspec.field(default_factory=UpstreamSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    embedder: EmbedderSettings = msgspec.field(default_factory=EmbedderSettings)
    recall: RecallSettings = msgspec.field(default_factory=RecallSettings)
    queue: QueueSettings = msgspec.field(default_factory=QueueSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    mcp: McpSettings = msgspec.field(default_factory=McpSettings)
    keys: tuple[KeySettings, ...] = ()
    upstreams: tuple[UpstreamSettings, ...] = ()

    def __post_init__(self) -> None:
        names = [u.name for u in self.all_upstreams()]
        if len(set(names)) != len(names):
            raise ValueError(f"upstream names must be unique: {names}")
        for upstream in self.all_upstreams():
            for fallback in upstream.fallbacks:
                if fallback not in names or fallback == upstream.name:
                    raise ValueError(
                        f"upstream {upstream.name}: fallback {fallback!r} is not another "
                        f"configured upstream ({', '.join(names)})"
                    )

    def all_upstreams(self) -> list[UpstreamSettings]:
        """The routed upstreams in order: the ``[[upstreams]]`` entries, then ``[upstream]``."""
        return [*self.upstreams, self.upstream]

    @property
    def data_dir(self) -> Path:
        """This gateway's data dir (``{hostname}`` in ``store.data_dir`` made this host's)."""
        from memory.datadir import resolve

        return resolve(self.store.data_dir)


class ConfigError(Exception):
    """The configuration cannot be loaded; the message says which key and why."""


_SECRET_KEYS = {("upstream", "api_key")}
_LISTS = {"keys", "upstreams"}


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _resolve_lists(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """Keys and extra upstreams: lists from the file, ``MEMGATE_KEYS_JSON`` /
    ``MEMGATE_UPSTREAMS_JSON`` (JSON arrays of the same objects) and ``MEMGATE_ADMIN_KEY``;
    secrets resolved from the environment."""
    for name in _LISTS:
        text = env.get(f"MEMGATE_{name.upper()}_JSON")
        if text:
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise ConfigError(f"MEMGATE_{name.upper()}_JSON is not valid JSON: {exc}") from exc
            if not isinstance(value, list):
                raise ConfigError(f"MEMGATE_{name.upper()}_JSON must be a JSON array")
            raw[name] = value
    keys: list[Any] = [dict(k) if isinstance(k, dict) else k for k in raw.get("keys", [])]
    if env.get("MEMGATE_ADMIN_KEY"):
        keys.append({"name": "admin", "key_env": "MEMGATE_ADMIN_KEY", "admin": True})
    for entry in keys:
        if not isinstance(entry, dict):
            continue
        key_env = entry.get("key_env")
        if key_env:
            if not env.get(key_env):
                raise ConfigError(
                    f"key {entry.get('name')!r}: environment variable {key_env} is not set"
                )
            entry["key_sha256"] = key_hash(env[key_env])
        elif not entry.get("key_sha256"):
            raise ConfigError(f"key {entry.get('name')!r} needs key_sha256 or key_env")
        entry["key_sha256"] = str(entry["key_sha256"]).lower()
    if keys:
        raw["keys"] = keys
    upstreams: list[Any] = []
    for item in raw.get("upstreams", []):
        entry = dict(item) if isinstance(item, dict) else item
        if isinstance(entry, dict):
            key_env = entry.setdefault("api_key_env", "")  # no key unless one is named
            if key_env and env.get(key_env):
                entry["api_key"] = env[key_env]
        upstreams.append(entry)
    if upstreams:
        raw["upstreams"] = upstreams


def _sections() -> dict[str, type[msgspec.Struct]]:
    return {
        field.name: field.type
        for field in msgspec.structs.fields(Settings)
        if isinstance(field.type, type) and issubclass(field.type, msgspec.Struct)
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
            if section in _LISTS:
                if not isinstance(values, list):
                    raise ConfigError(f"config key {section!r} must be an array like [[{section}]]")
                for entry in values:
                    if isinstance(entry, dict) and ("api_key" in entry or "key" in entry):
                        raise ConfigError(
                            f"a secret must not be in a config file ({section}): use the "
                            "environment (api_key_env / key_env) or key_sha256"
                        )
                raw[section] = list(values)  # type: ignore[assignment]
                continue
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
    _resolve_lists(raw, env)
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            if value is not None:
                raw.setdefault(section, {})[key] = value
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc


def _parse_env(value: str, typ: Any) -> Any:
    if typing.get_origin(typ) is tuple:  # a list: comma-separated
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if typ is bool:
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
    return value
