"""The bodies of the OpenAI calls the gateway reads (chat completions, Responses), decoded
and checked in one place: only the fields the gateway reads are checked; the body goes on as
it came (a msgspec Struct view would drop fields it does not know)."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.errors import BadRequest

ChatBody = dict[str, Any]
ResponsesBody = dict[str, Any]
TOO_DEEP = "the request body is nested too deeply"


def decode_object(raw: bytes, expected: str) -> dict[str, Any]:
    """The JSON object a request body holds (``expected`` names it in the errors)."""
    if not raw.strip():
        raise BadRequest(f"the request body is empty: expected a JSON {expected}")
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise BadRequest(TOO_DEEP, code="invalid_json") from exc
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def parse_chat_body(raw: bytes) -> ChatBody:
    """Decode and check the fields the gateway reads; everything else is left as it is."""
    body = decode_object(raw, "chat completions request")
    model = body.get("model")
    if model is None:
        raise BadRequest(
            "you must provide a model parameter", param="model", code="missing_required_parameter"
        )
    if not isinstance(model, str) or not model:
        raise BadRequest("model must be a non-empty string", param="model", code="invalid_type")
    messages = body.get("messages")
    if messages is None:
        raise BadRequest(
            "you must provide a messages parameter",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(messages, list) or not messages:
        raise BadRequest(
            "messages must be a non-empty array", param="messages", code="invalid_type"
        )
    check_messages(messages)
    if "stream" in body and not isinstance(body["stream"], bool | None):
        raise BadRequest("stream must be a boolean", param="stream", code="invalid_type")
    return body


def check_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """A chat's messages, each an object with a string role (a 400 naming the first that is
    not)."""
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(
                f"messages[{i}] must be an object with a string role",
                param=f"messages[{i}]",
                code="invalid_type",
            )
    return messages


def parse_responses_body(raw: bytes) -> ResponsesBody:
    """Decode and check the fields the gateway reads (model, input, instructions, stream);
    everything else goes to the upstream as it is."""
    body = decode_object(raw, "Responses API request")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest(
            "you must provide a model parameter (a non-empty string)",
            param="model",
            code="missing_required_parameter" if model is None else "invalid_type",
        )
    if not isinstance(body.get("input"), str | list):
        raise BadRequest(
            "input must be a string or an array of input items",
            param="input",
            code="missing_required_parameter" if body.get("input") is None else "invalid_type",
        )
    if not isinstance(body.get("instructions"), str | None):
        raise BadRequest("instructions must be a string", param="instructions", code="invalid_type")
    if not isinstance(body.get("stream"), bool | None):
        raise BadRequest("stream must be a boolean", param="stream", code="invalid_type")
    return body
