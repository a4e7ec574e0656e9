"""The upstream side: one pooled httpx client per upstream, model → upstream routing, and the
ONE place that maps httpx exceptions to gateway errors (``upstream_errors``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import httpx

from gateway.config import UpstreamSettings
from gateway.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable

# Response headers worth relaying to the client; hop-by-hop and framing headers are not.
_RELAYED = frozenset({"content-type", "retry-after", "x-request-id"})
_RELAYED_PREFIXES = ("x-ratelimit-", "openai-")


@contextlib.contextmanager
def upstream_errors(name: str) -> Iterator[None]:
    """Map httpx failures while talking to upstream ``name`` to gateway errors."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(f"upstream {name} timed out ({type(exc).__name__})") from exc
    except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
        raise UpstreamUnreachable(f"upstream {name} is unreachable: {exc}") from exc
    except httpx.HTTPError as exc:
        raise UpstreamError(f"upstream {name} failed: {exc}") from exc


class Upstream:
    """An OpenAI-compatible upstream reached at ``settings.url`` (a base URL ending in /v1)."""

    def __init__(
        self,
        settings: UpstreamSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        name: str = "default",
    ) -> None:
        self.settings = settings
        self.name = name
        self.client = httpx.AsyncClient(
            base_url=settings.url.rstrip("/") + "/",
            timeout=httpx.Timeout(settings.timeout, connect=settings.connect_timeout),
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_connections,
            ),
            transport=transport,
            trust_env=False,
        )

    def _headers(self, client_headers: Mapping[str, str]) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "accept-encoding": "identity",
        }
        accept = client_headers.get("accept")
        if accept:
            headers["accept"] = accept
        auth = client_headers.get("authorization")
        if self.settings.forward_client_authorization and auth:
            headers["authorization"] = auth
        elif self.settings.api_key:
            headers["authorization"] = f"Bearer {self.settings.api_key}"
        request_id = client_headers.get("x-request-id")
        if request_id:
            headers["x-request-id"] = request_id
        return headers

    async def send(
        self,
        method: str,
        path: str,
        *,
        client_headers: Mapping[str, str],
        content: bytes | None = None,
    ) -> httpx.Response:
        """Send a request and return the response with its body not yet read (the caller
        reads or streams it and must close it)."""
        request = self.client.build_request(
            method, path.lstrip("/"), content=content, headers=self._headers(client_headers)
        )
        with upstream_errors(self.name):
            return await self.client.send(request, stream=True)

    async def aclose(self) -> None:
        await self.client.aclose()


def relayed_headers(response: httpx.Response) -> dict[str, str]:
    """The upstream response headers the client gets too."""
    out: dict[str, str] = {}
    for key, value in response.headers.items():
        lower = key.lower()
        if lower in _RELAYED or lower.startswith(_RELAYED_PREFIXES):
            out[lower] = value
    return out


class Router:
    """Chooses the upstream for a request's ``model``. One upstream for now; the seam for
    routing by model patterns."""

    def __init__(self, upstreams: list[Upstream]) -> None:
        if not upstreams:
            raise ValueError("at least one upstream is needed")
        self.upstreams = upstreams

    def route(self, model: str) -> Upstream:
        del model
        return self.upstreams[0]

    async def aclose(self) -> None:
        for upstream in self.upstreams:
            await upstream.aclose()
