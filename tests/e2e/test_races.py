"""Deleted stays deleted, on one gateway with its embedded Chroma: a PATCH raced against a
DELETE or an erasure of the same memory never brings it back (tests/e2e/races.py). The same
races through two gateways on one Chroma server are in test_fleet.py."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import GatewayProcess
from tests.e2e.races import race

pytestmark = pytest.mark.slow

ROUNDS = 100


def test_a_patch_racing_a_delete_never_brings_the_memory_back(gateway: GatewayProcess) -> None:
    assert race(gateway, gateway, ROUNDS, erase=False) == []


def test_a_patch_racing_an_erasure_never_brings_the_memory_back(gateway: GatewayProcess) -> None:
    assert race(gateway, gateway, ROUNDS, erase=True) == []
