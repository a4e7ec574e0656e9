"""The upstream side: one pooled httpx client per upstream, model → upstream routing, and the
ONE place that maps httpx exceptions to gateway errors (``upstream_errors``)."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TypeVar

import httpx

from gateway.config import UpstreamSettings
from gateway.errors import BadRequest, UpstreamError, UpstreamTimeout, UpstreamUnreachable
from gateway.telemetry import current_request_id

log = logging.getLogger("memgate.upstream")
T = TypeVar("T")

# Request headers the upstream gets from the client (besides the body's own type).
_FORWARDED = ("accept", "openai-beta", "openai-organization", "openai-project")
# Response headers worth relaying to the client; hop-by-hop and framing headers are not.
_RELAYED = frozenset({"content-type", "retry-after"})
_RELAYED_PREFIXES = ("x-ratelimit-", "openai-")


ErrorHook = Callable[[str, str], None]


@contextlib.contextmanager
def upstream_errors(name: str, on_error: ErrorHook | None = None) -> Iterator[None]:
    """Map httpx failures while talking to upstream ``name`` to gateway errors (and report
    them to ``on_error(upstream, kind)``)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        if on_error:
            on_error(name, "timeout")
        raise UpstreamTimeout(f"upstream {name} timed out ({type(exc).__name__})") from exc
    except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
        if on_error:
            on_error(name, "unreachable")
        log.warning("upstream %s unreachable: %r", name, exc)
        raise UpstreamUnreachable(f"upstream {name} is unreachable ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        if on_error:
            on_error(name, "error")
        log.warning("upstream %s failed: %r", name, exc)
        raise UpstreamError(f"upstream {name} failed ({type(exc).__name__})") from exc


class Upstream:
    """An OpenAI-compatible upstream reached at ``settings.url`` (a base URL ending in /v1)."""

    def __init__(
        self,
        settings: UpstreamSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        name: str = "default",
        on_error: ErrorHook | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.on_error = on_error
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

    def _headers(
        self, client_headers: Mapping[str, str], content_type: str | None = None
    ) -> dict[str, str]:
        headers = {
            "content-type": content_type or "application/json",
            "accept-encoding": "identity",
        }
        for name in _FORWARDED:
            value = client_headers.get(name)
            if value:
                headers[name] = value
        auth = client_headers.get("authorization")
        if self.settings.forward_client_authorization and auth:
            headers["authorization"] = auth
        elif self.settings.api_key:
            headers["authorization"] = f"Bearer {self.settings.api_key}"
        request_id = current_request_id() or client_headers.get("x-request-id")
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
        content_type: str | None = None,
    ) -> httpx.Response:
        """Send a request and return the response with its body not yet read (the caller
        reads or streams it and must close it)."""
        request = self.client.build_request(
            method,
            path.lstrip("/"),
            content=content,
            headers=self._headers(client_headers, content_type),
        )
        with upstream_errors(self.name, self.on_error):
            response = await self.client.send(request, stream=True)
        if response.status_code >= 400 and self.on_error:
            self.on_error(self.name, str(response.status_code))
        return response

    async def within(self, deadline: float, work: Awaitable[T]) -> T:
        """``work``, given until ``deadline`` (the event loop's clock): ``upstream.timeout``
        is the whole request's limit, not one read's."""
        try:
            async with asyncio.timeout_at(deadline):
                return await work
        except TimeoutError as exc:
            if self.on_error:
                self.on_error(self.name, "timeout")
            raise UpstreamTimeout(
                f"upstream {self.name} did not answer within {self.settings.timeout:g} s"
            ) from exc

    async def probe(self, timeout: float = 3.0) -> str:  # noqa: ASYNC109
        """``ok`` if the upstream answers HTTP (any status), else why not."""
        try:
            response = await self.client.get("models", headers=self._headers({}), timeout=timeout)
        except Exception as exc:  # any failure to get an answer means: not reachable
            return f"unreachable: {type(exc).__name__}"
        return "ok" if response.status_code < 500 else f"status {response.status_code}"

    async def aclose(self) -> None:
        await self.client.aclose()


def relayed_headers(response: httpx.Response, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """The upstream response headers the client gets too."""
    out: dict[str, str] = {}
    for key, value in response.headers.items():
        lower = key.lower()
        if lower in _RELAYED or lower in extra or lower.startswith(_RELAYED_PREFIXES):
            out[lower] = value
        elif lower == "x-request-id":  # ours goes out as x-request-id
            out["x-upstream-request-id"] = value
    return out


class Router:
    """Chooses the upstream for a request's ``model``: the first whose ``models`` patterns
    (fnmatch) match, in configuration order."""

    def __init__(self, upstreams: list[Upstream]) -> None:
        if not upstreams:
            raise ValueError("at least one upstream is needed")
        self.upstreams = upstreams

    @property
    def default(self) -> Upstream:
        """The upstream of requests that name no model: ``[upstream]``, configured last."""
        return self.upstreams[-1]

    def route(self, model: str) -> Upstream:
        for upstream in self.upstreams:
            if any(fnmatch.fnmatchcase(model, p) for p in upstream.settings.models):
                return upstream
        raise BadRequest(
            f"no upstream serves the model {model!r}", param="model", code="model_not_found"
        )

    async def aclose(self) -> None:
        for upstream in self.upstreams:
            await upstream.aclose()
