from __future__ import annotations

import pytest

from gateway.errors import InvalidNamespace
from gateway.namespaces import check_namespace


@pytest.mark.parametrize("name", ["a", "user123", "tenant-a:user@example.com", "x.y_z", "A" * 128])
def test_valid_namespaces(name: str) -> None:
    assert check_namespace(name, "default") == name


@pytest.mark.parametrize("name", ["", "a b", "a/b", "ü", "A" * 129, "semi;colon", "a\n"])
def test_invalid_namespaces(name: str) -> None:
    with pytest.raises(InvalidNamespace) as info:
        check_namespace(name, "default")
    assert info.value.status == 400
    assert info.value.param == "namespace"


def test_missing_namespace_is_the_default() -> None:
    assert check_namespace(None, "global") == "global"


def test_sources_are_tried_in_the_configured_order() -> None:
    from gateway.namespaces import NamespaceResolver

    every = NamespaceResolver(["path", "query", "header", "user"], "global", keys=True)
    given = {
        "path": "p",
        "query": "q",
        "headers": {"x-memory-namespace": "h"},
        "body": {"user": "u"},
    }
    assert every.resolve(**given) == "p"  # type: ignore[arg-type]
    assert every.resolve(query="q", headers={"x-memory-namespace": "h"}) == "q"
    assert every.resolve(headers={"x-memory-namespace": "h"}, body={"user": "u"}) == "h"
    assert every.resolve(body={"user": "u"}) == "u"
    assert every.resolve() == "global"
    user_first = NamespaceResolver(["user", "query"], "global", keys=True)
    assert user_first.resolve(query="q", body={"user": "u"}) == "u"
    no_user = NamespaceResolver(["path", "query", "header"], "global", keys=True)
    assert no_user.resolve(body={"user": "u"}) == "global"  # not a source: ignored
    with pytest.raises(InvalidNamespace) as info:
        every.resolve(body={"user": "dave smith"})
    assert info.value.param == "user"
    with pytest.raises(InvalidNamespace) as info:
        every.resolve(headers={"x-memory-namespace": "a/b"})
    assert info.value.param == "x-memory-namespace"


def test_unknown_sources_are_a_config_error() -> None:
    from gateway.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="namespace_sources"):
        load_settings(None, {}, {"server": {"namespace_sources": ["query", "cookie"]}})
