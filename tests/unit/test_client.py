"""The command line's client: a rate limit (429) is waited out as the gateway says."""

from __future__ import annotations

import httpx
import pytest

from gateway.cli import client as client_module
from gateway.cli.client import RATE_LIMIT_RETRIES, ClientError, GatewayClient

LIMITED = httpx.Response(
    429,
    headers={"retry-after": "0"},
    json={
        "error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": None}
    },
)


def test_a_rate_limit_is_waited_out(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", waits.append)
    answers = [LIMITED, LIMITED, httpx.Response(200, json={"ids": ["mem_1"]})]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    with GatewayClient("http://gw.test", transport=httpx.MockTransport(handler)) as c:
        assert c.add("ns", [{"content": "hi"}]) == ["mem_1"]
    assert len(seen) == 3
    assert waits == [0.0, 0.0]


def test_a_rate_limit_that_lasts_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", waits.append)
    no_hint = httpx.Response(429, json={"error": {"message": "slow down"}})
    with (
        GatewayClient("http://gw.test", transport=httpx.MockTransport(lambda _: no_hint)) as c,
        pytest.raises(ClientError) as info,
    ):
        c.add("ns", [{"content": "hi"}])
    assert info.value.status == 429
    assert "slow down" in str(info.value)
    assert waits == [2.0**n for n in range(RATE_LIMIT_RETRIES)]  # 1, 2, 4, ... without a hint
