"""An httpx transport that sends requests with aiohttp.

The gateway speaks httpx everywhere (requests, responses, errors, and the transports the tests
inject); only the bytes on the wire to a real upstream go through aiohttp's connection pool
and C parser. Measured on the pass-through (docs/performance.md): httpx's own transport
(httpcore on anyio) cost about 1.3 ms of CPU a request at c=1 and 2.2-2.5 ms at c=32 (its pool
looks at every connection, for every connection, on every request), aiohttp 0.15 ms.

A response's body is streamed as it arrives (chunk by chunk: SSE is relayed as it comes);
aiohttp's failures are raised as the httpx exceptions httpcore would raise, so that
``upstream_errors`` and the retry rules see the same types.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import aiohttp
import httpx
from yarl import URL


@contextlib.contextmanager
def _mapped(request: httpx.Request) -> Iterator[None]:
    """aiohttp's exceptions as the httpx exceptions httpcore raises for the same failure."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:  # no connection within the connect limit
        raise httpx.ConnectTimeout(str(exc) or "connect timeout", request=request) from exc
    except aiohttp.SocketTimeoutError as exc:
        raise httpx.ReadTimeout(str(exc) or "read timeout", request=request) from exc
    except aiohttp.ClientConnectorError as exc:  # could not connect: nothing was sent
        raise httpx.ConnectError(str(exc), request=request) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except aiohttp.ClientResponseError as exc:  # a malformed answer
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except aiohttp.ClientOSError as exc:  # reset or broken once connected
        raise httpx.ReadError(str(exc), request=request) from exc
    except aiohttp.ClientError as exc:
        raise httpx.TransportError(str(exc), request=request) from exc
    except TimeoutError as exc:
        raise httpx.ReadTimeout("read timeout", request=request) from exc


class _Body(httpx.AsyncByteStream):
    """The answer's body as aiohttp receives it; closing it before its end drops the
    connection (a half-read answer cannot be reused)."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped(self._request):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests through one aiohttp session (made on first use, inside the event
    loop): up to ``max_connections`` pooled connections, no cookies kept, no environment
    proxies, bodies left as sent (no decompression)."""

    def __init__(self, *, max_connections: int = 100, keepalive_expiry: float = 5.0) -> None:
        self._limit = max_connections
        self._keepalive = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._limit, limit_per_host=0, keepalive_timeout=self._keepalive
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                trust_env=False,
                # httpx has set every header it sends: aiohttp adds none of its own
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._open()
        timeouts = request.extensions.get("timeout", {})
        connect = timeouts.get("connect")
        pool = timeouts.get("pool")
        timeout = aiohttp.ClientTimeout(
            total=None,
            # waiting for a pooled connection, then making one
            connect=None if pool is None or connect is None else pool + connect,
            sock_connect=connect,
            sock_read=timeouts.get("read"),
        )
        content = request.content if isinstance(request.stream, httpx.ByteStream) else None
        if content is None:
            content = await request.aread()
        with _mapped(request):
            response = await session.request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=request.headers.multi_items(),
                data=content or None,
                timeout=timeout,
                allow_redirects=False,
                compress=None,
                chunked=None,
            )
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_Body(response, request),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
            },
        )

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
            await asyncio.sleep(0)  # let the connector's transports close
