"""The upstream side: one connection pool per upstream (httpx requests and responses, sent by
aiohttp), model → upstream routing, and the ONE place that maps httpx exceptions to gateway
errors (``upstream_errors``)."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import fnmatch
import logging
import random
import time
import typing as t
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Future
from typing import TypeVar

import httpx
from tenacity import AsyncRetrying, RetryCallState

from gateway.config import UpstreamSettings
from gateway.errors import BadRequest, UpstreamError, UpstreamTimeout, UpstreamUnreachable
from gateway.telemetry import current_request_id
from gateway.transport import AiohttpTransport

log = logging.getLogger("memgate.upstream")
T = TypeVar("T")

# Request headers the upstream gets from the client (besides the body's own type).
_FORWARDED = ("accept", "openai-beta", "openai-organization", "openai-project")
# Response headers worth relaying to the client; hop-by-hop and framing headers are not.
_RELAYED = frozenset({"content-type", "retry-after"})
_RELAYED_PREFIXES = ("x-ratelimit-", "openai-")
# What httpx's client sent besides (the upstream sees the same request as before).
_DEFAULT_HEADERS = {
    "accept": "*/*",
    "connection": "keep-alive",
    "user-agent": f"python-httpx/{httpx.__version__}",
}
_URL_CACHE = 256  # paths remembered an upstream


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
        self.base_url = httpx.URL(settings.url.rstrip("/") + "/")
        self._timeouts = httpx.Timeout(settings.timeout, connect=settings.connect_timeout).as_dict()
        # Requests go straight to the transport (httpx's requests and responses, without the
        # client's redirects, auth, cookies and hooks: none is used, and an upstream's cookies
        # are not sent back for other callers). A real upstream is reached with aiohttp
        # (``AiohttpTransport``: a tenth of the CPU of httpx's own pool, docs/performance.md).
        self.transport = transport or AiohttpTransport(max_connections=settings.max_connections)
        self._urls: dict[str, httpx.URL] = {}

    def url(self, path: str) -> httpx.URL:
        """``path`` (relative, may carry a query) under the upstream's base URL; remembered, as
        most requests go to a few paths."""
        url = self._urls.get(path)
        if url is None:
            # appended as it is (percent-encoded ASCII): never parsed as a URL of its own, so a
            # first segment such as "http:" is a segment, not a scheme
            relative = path.lstrip("/").encode("ascii")
            url = self.base_url.copy_with(raw_path=self.base_url.raw_path + relative)
            if len(self._urls) >= _URL_CACHE:
                self._urls.clear()
            self._urls[path] = url
        return url

    def _headers(
        self, client_headers: Mapping[str, str], content_type: str | None = None
    ) -> dict[str, str]:
        headers = {
            **_DEFAULT_HEADERS,
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
        request = httpx.Request(
            method,
            self.url(path),
            content=content,
            headers=self._headers(client_headers, content_type),
            extensions={"timeout": self._timeouts},
        )
        with upstream_errors(self.name, self.on_error):
            response = await self.transport.handle_async_request(request)
        response.request = request
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
        request = httpx.Request(
            "GET",
            self.url("models"),
            headers=self._headers({}),
            extensions={"timeout": httpx.Timeout(timeout).as_dict()},
        )
        try:
            async with asyncio.timeout(timeout):
                response = await self.transport.handle_async_request(request)
                await response.aclose()
        except Exception as exc:  # any failure to get an answer means: not reachable
            return f"unreachable: {type(exc).__name__}"
        return "ok" if response.status_code < 500 else f"status {response.status_code}"

    async def aclose(self) -> None:
        await self.transport.aclose()


RETRIES_SPENT = "memgate_retries_spent"


def relayed_headers(response: httpx.Response, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """The upstream response headers the client gets too."""
    out: dict[str, str] = {}
    if response.extensions.get(RETRIES_SPENT):
        out["x-should-retry"] = "false"
    for key, value in response.headers.items():
        lower = key.lower()
        if lower in _RELAYED or lower in extra or lower.startswith(_RELAYED_PREFIXES):
            out[lower] = value
        elif lower == "x-request-id":  # ours goes out as x-request-id
            out["x-upstream-request-id"] = value
    return out


RetryHook = Callable[[str, str], None]

# Failures that happen before the request reached the upstream: safe to send it again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def retryable_status(status: int) -> bool:
    """Answers worth asking again (or elsewhere): rate limited, or a server-side failure that
    may pass (501 Not Implemented and 505 will not)."""
    return status == 429 or (500 <= status < 600 and status not in {501, 505})


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the upstream asks to wait: ``retry-after-ms``, or ``retry-after`` in seconds or
    as an HTTP date; None when it says nothing usable."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _outcome(state: RetryCallState) -> Future[httpx.Response]:
    """The outcome of the attempt just made."""
    return t.cast("Future[httpx.Response]", state.outcome)


def _reason(outcome: Future[httpx.Response]) -> str:
    """What failed, as the metrics name it: the status, or ``connect`` / ``timeout``."""
    failure = outcome.exception()
    if failure is None:
        return str(outcome.result().status_code)
    return "timeout" if isinstance(failure, UpstreamTimeout) else "connect"


def backoff(settings: UpstreamSettings, attempt: int) -> float:
    """The wait before retry ``attempt + 1``: exponential, with half of it random."""
    base = settings.retry_backoff_seconds * (2**attempt)
    return float(min(settings.retry_max_wait_seconds, base * (0.5 + random.random() / 2)))  # noqa: S311


class Router:
    """Chooses the upstream for a request's ``model`` (the first whose ``models`` patterns
    match, fnmatch, in configuration order) and sends requests with retries and fallbacks."""

    def __init__(
        self,
        upstreams: list[Upstream],
        *,
        on_retry: RetryHook | None = None,
        on_fallback: RetryHook | None = None,
    ) -> None:
        if not upstreams:
            raise ValueError("at least one upstream is needed")
        self.upstreams = upstreams
        self.by_name = {u.name: u for u in upstreams}
        self.on_retry = on_retry
        self.on_fallback = on_fallback

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

    async def send(
        self,
        upstream: Upstream,
        method: str,
        path: str,
        *,
        client_headers: Mapping[str, str],
        content: bytes | None = None,
        content_type: str | None = None,
        deadline: float,
        fallbacks: bool = True,
    ) -> tuple[Upstream, httpx.Response]:
        """Send the request to ``upstream``, again after a failure that allows it (connect
        error, 429, 5xx), then to its fallbacks; the answer's body is not read yet (the caller
        streams it, so nothing is retried once a byte went to the client). Returns the
        upstream that answered and its answer: the last one, whatever its status, when every
        attempt failed by status; the last failure is raised when none answered. The retries
        of one upstream are tenacity's (``_attempts``); this chooses the next upstream."""
        chain = [upstream]
        if fallbacks:
            chain += [self.by_name[name] for name in upstream.settings.fallbacks]
        for position, current in enumerate(chain):
            # The first attempt is made here: most requests need no retry, and tenacity's
            # machinery costs ~40 µs of CPU a call (more than the rest of this path). An
            # answer or failure that calls for a retry is replayed as tenacity's first attempt.
            try:
                answer = await current.send(
                    method,
                    path,
                    client_headers=client_headers,
                    content=content,
                    content_type=content_type,
                )
            except (UpstreamUnreachable, UpstreamTimeout) as exc:
                if not isinstance(exc.__cause__, _NOT_SENT):
                    raise  # it may have reached the upstream: never sent twice
                first: Future[httpx.Response] = Future()
                first.set_exception(exc)
            else:
                if not retryable_status(answer.status_code):
                    return current, answer
                first = Future()
                first.set_result(answer)
            replay = [first]

            async def attempt(
                current: Upstream = current, replay: list[Future[httpx.Response]] = replay
            ) -> httpx.Response:
                if replay:
                    return replay.pop().result()
                return await current.send(
                    method,
                    path,
                    client_headers=client_headers,
                    content=content,
                    content_type=content_type,
                )

            retried: list[str] = []  # the reasons of this upstream's retries
            last: httpx.Response | Future[httpx.Response] = await self._attempts(
                current, deadline, retried
            )(attempt)
            if isinstance(last, httpx.Response):
                return current, last  # an answer that is not retried
            # every attempt allowed failed: ``last`` is the outcome of the last one
            failure = last.exception()
            response = None if failure is not None else last.result()
            if position + 1 < len(chain):
                if response is not None:
                    await response.aclose()
                if self.on_fallback:
                    self.on_fallback(current.name, chain[position + 1].name)
                log.warning(
                    "upstream %s: %s, sending to fallback %s",
                    current.name,
                    _reason(last),
                    chain[position + 1].name,
                )
                continue
            if response is None:
                raise t.cast("BaseException", failure)
            # The client gets the last answer as it is; if it was already asked again, the
            # SDKs are told not to multiply the retries (openai's x-should-retry).
            if retried or position > 0:
                response.extensions[RETRIES_SPENT] = True
            return current, response
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempts(self, current: Upstream, deadline: float, retried: list[str]) -> AsyncRetrying:
        """One upstream's attempts (tenacity): again after a failure before the request was
        sent or after a retryable status, once the upstream's ``retry-after`` (else the
        backoff) has passed, while retries are left, the wait is at most
        ``retry_max_wait_seconds`` and it ends before ``deadline``. An answer that is not
        retried is returned; when the attempts are spent, the last outcome (an answer or a
        failure, in a future) is returned, never raised, for ``send`` to relay it or go on to
        a fallback. A failure after the request may have reached the upstream is raised at
        once: it is never sent twice. Each retry's reason goes into ``retried``."""
        settings = current.settings
        loop = asyncio.get_running_loop()

        def again(state: RetryCallState) -> bool:
            outcome = _outcome(state)
            failure = outcome.exception()
            if failure is None:
                return retryable_status(outcome.result().status_code)
            return isinstance(failure, UpstreamUnreachable | UpstreamTimeout) and isinstance(
                failure.__cause__, _NOT_SENT
            )

        def wait(state: RetryCallState) -> float:
            outcome = _outcome(state)
            hint = None if outcome.exception() else retry_after(outcome.result().headers)
            return backoff(settings, state.attempt_number - 1) if hint is None else hint

        def stop(state: RetryCallState) -> bool:
            return (
                state.attempt_number > settings.retries
                or state.upcoming_sleep > settings.retry_max_wait_seconds
                or loop.time() + state.upcoming_sleep >= deadline
            )

        async def before_sleep(state: RetryCallState) -> None:
            outcome = _outcome(state)
            reason = _reason(outcome)
            retried.append(reason)
            if self.on_retry:
                self.on_retry(current.name, reason)
            log.info(
                "upstream %s: %s, sending again in %.2f s (retry %d of %d)",
                current.name,
                reason,
                state.upcoming_sleep,
                state.attempt_number,
                settings.retries,
            )
            if outcome.exception() is None:
                await outcome.result().aclose()

        return AsyncRetrying(
            retry=again,
            wait=wait,
            stop=stop,
            before_sleep=before_sleep,
            retry_error_callback=_outcome,
            sleep=asyncio.sleep,
        )

    async def aclose(self) -> None:
        for upstream in self.upstreams:
            await upstream.aclose()
