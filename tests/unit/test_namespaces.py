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
