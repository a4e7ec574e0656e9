"""A small synchronous client for a running gateway's memory API, used by the command line.

Every failure becomes a ``ClientError`` whose message says what went wrong in words a person
can act on: the gateway cannot be reached, it refused the key (401/403, with the gateway's own
message), or it answered another error (status and message from the OpenAI-shaped body).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:11435"
PAGE_LIMIT = 100  # the most the list endpoint returns per page
RATE_LIMIT_RETRIES = 5  # a 429 is waited out this many times before it is an error

# Exit codes of the client commands (argparse itself exits 2 on bad usage).
EXIT_ERROR = 1  # the gateway answered with an error, or some memories failed to import
EXIT_INPUT = 2  # bad usage or a bad input file
EXIT_UNREACHABLE = 3  # no answer from the gateway


class ClientError(Exception):
    """A request to the gateway failed; ``str(exc)`` is the message to show."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Unreachable(ClientError):
    exit_code = EXIT_UNREACHABLE


def error_message(response: httpx.Response) -> str:
    """The message of an OpenAI-shaped error body, else the start of the body's text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str) and error:
            return error
        if body.get("detail"):
            return str(body["detail"])
    text = " ".join(response.text.split())
    return text[:300] or (response.reason_phrase or "no message")


class GatewayClient:
    """The memory API of the gateway at ``url``, authenticated with ``api_key`` if given."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"user-agent": "memgate-cli"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self.has_key = bool(api_key)
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
    ) -> Any:
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            response = self._send(method, path, params=params, json=json)
            if response.status_code != 429 or attempt == RATE_LIMIT_RETRIES:
                break
            # refused before anything was done (a rate limit): wait as told, then again
            time.sleep(_wait(response.headers.get("retry-after"), attempt))
        if response.status_code >= 400:
            raise self._refusal(method, path, response)
        try:
            return response.json()
        except ValueError as exc:
            raise ClientError(
                f"{method} {path} answered {response.status_code} but not with JSON: is "
                f"{self.url} a memgate gateway?",
                status=response.status_code,
            ) from exc

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
    ) -> httpx.Response:
        try:
            return self._http.request(method, path, params=params, json=json)
        except httpx.TimeoutException as exc:
            raise Unreachable(
                f"the gateway at {self.url} did not answer {method} {path} within "
                f"{self.timeout:g} s ({type(exc).__name__}); try a larger --timeout"
            ) from exc
        except httpx.ConnectError as exc:
            raise Unreachable(
                f"cannot reach the gateway at {self.url} ({_reason(exc)}). "
                "Is `memgate serve` running there? Point to another one with --url."
            ) from exc
        except httpx.HTTPError as exc:
            raise Unreachable(
                f"the connection to the gateway at {self.url} failed during {method} {path}: "
                f"{_reason(exc)}"
            ) from exc

    def _refusal(self, method: str, path: str, response: httpx.Response) -> ClientError:
        status = response.status_code
        message = error_message(response)
        if status == 401:
            hint = (
                "check the key in MEMGATE_API_KEY or --api-key"
                if self.has_key
                else "this gateway needs a key: set MEMGATE_API_KEY or pass --api-key"
            )
            return ClientError(
                f"the gateway refused the API key (401): {message}; {hint}", status=401
            )
        if status == 403:
            return ClientError(
                f"the API key is not allowed to do this (403): {message}", status=403
            )
        if status == 404 and "/v1/memory/" not in path:
            message = f"{message} (is {self.url} a memgate gateway?)"
        return ClientError(f"{method} {path} failed with {status}: {message}", status=status)

    # The memory API, one method an endpoint.

    def add(self, namespace: str, memories: Sequence[Mapping[str, Any]]) -> list[str]:
        body = self.request(
            "POST",
            "/v1/memory/memories",
            params={"namespace": namespace},
            json={"memories": list(memories)},
        )
        return [str(i) for i in body["ids"]]

    def page(
        self, namespace: str, *, limit: int = 20, after: str | None = None
    ) -> tuple[list[dict[str, Any]], bool]:
        params: dict[str, str | int] = {"namespace": namespace, "limit": limit}
        if after:
            params["after"] = after
        body = self.request("GET", "/v1/memory/memories", params=params)
        return list(body["data"]), bool(body["has_more"])

    def iter_all(self, namespace: str) -> Iterator[dict[str, Any]]:
        """Every memory of the namespace, newest first, page by page."""
        after: str | None = None
        while True:
            data, has_more = self.page(namespace, limit=PAGE_LIMIT, after=after)
            yield from data
            if not has_more or not data:
                return
            after = str(data[-1]["id"])

    def get(self, namespace: str, memory_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self.request(
            "GET", f"/v1/memory/memories/{_segment(memory_id)}", params={"namespace": namespace}
        )
        return body

    def delete(self, namespace: str, memory_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self.request(
            "DELETE", f"/v1/memory/memories/{_segment(memory_id)}", params={"namespace": namespace}
        )
        return body

    def delete_where(self, namespace: str, conditions: Mapping[str, str]) -> dict[str, Any]:
        """Delete the memories matching ``conditions`` (``conversation_id``, ``filter``,
        ``created_after``, ``created_before``: query parameters of ``DELETE
        /v1/memory/memories``)."""
        body: dict[str, Any] = self.request(
            "DELETE", "/v1/memory/memories", params={"namespace": namespace, **conditions}
        )
        return body

    def search(self, namespace: str, query: str, k: int = 10) -> list[dict[str, Any]]:
        body = self.request(
            "POST",
            "/v1/memory/search",
            params={"namespace": namespace},
            json={"query": query, "k": k},
        )
        return list(body["data"])

    def erase(self, namespace: str) -> dict[str, Any]:
        body: dict[str, Any] = self.request(
            "DELETE", f"/v1/memory/namespaces/{_segment(namespace)}"
        )
        return body


def _wait(retry_after: str | None, attempt: int) -> float:
    """Seconds to wait before asking again after a 429: its retry-after, else 1, 2, 4, ...
    (at most a minute either way)."""
    try:
        seconds = float(retry_after) if retry_after else 2.0**attempt
    except ValueError:
        seconds = 2.0**attempt
    return min(max(seconds, 0.0), 60.0)


def _segment(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def _reason(exc: Exception) -> str:
    text = str(exc)
    if "refused" in text.lower() or "Errno 111" in text:
        return "connection refused"
    return text or type(exc).__name__
