"""One streamed call to the Messages API through the official SDK.

The SDK's own retries are off: the harness owns retries so each attempt is
visible in the session log. A response counts only when its stream completed
(``message_stop`` seen with a ``stop_reason`` set) and every tool input in it is a
whole JSON object; anything less is a failed attempt, never a partial reply.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import httpx2

if TYPE_CHECKING:  # the SDK itself is imported on first use: see ModelClient
    import anthropic
    from anthropic.lib.streaming import AsyncMessageStream
    from anthropic.types import Message

FAILED = "model_request_failed_error"
DRAIN_SECONDS = 1.0
INCOMPLETE = "the model stream ended before the message was complete"
IN_STREAM_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
"""The HTTP status each API error type stands for, for an ``error`` event inside a 200 stream."""


StreamListener = Callable[[Any], None]
"""Receives each event of the SDK's message stream (``ParsedMessageStreamEvent``)."""


@dataclass(frozen=True)
class ModelResult:
    content: list[dict[str, Any]]
    stop_reason: str
    usage: dict[str, int]


class ModelCallFailed(Exception):
    """``error_type`` is one of the SDK's session error object types."""

    def __init__(
        self, error_type: str, message: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.usage: dict[str, int] | None = None
        """What the failed attempt consumed, when the model said (it is billed all the same)."""


def make_client(api_key: str, base_url: str | None, stream_timeout: float) -> anthropic.AsyncAnthropic:
    """``stream_timeout`` bounds each wait for bytes, so a hung stream fails instead of hanging;
    a long generation that keeps streaming is never cut off."""
    import anthropic

    return anthropic.AsyncAnthropic(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=httpx2.Timeout(stream_timeout, connect=10.0),
    )


class ModelClient:
    """The gateway's SDK client, built on the first model call. Importing the SDK costs about
    two CPU-seconds, more than the rest of the gateway's start-up together: a gateway is
    listening without it, and one that never calls the model never pays it. The import runs in
    a worker thread, so the event loop keeps serving meanwhile."""

    def __init__(self, api_key: str, base_url: str | None, stream_timeout: float) -> None:
        self._settings = (api_key, base_url, stream_timeout)
        self._client: anthropic.AsyncAnthropic | None = None
        self._building = anyio.Lock()

    async def sdk(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            async with self._building:
                if self._client is None:
                    self._client = await anyio.to_thread.run_sync(lambda: make_client(*self._settings))
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


async def call_model(
    client: anthropic.AsyncAnthropic | ModelClient,
    request: dict[str, Any],
    on_event: StreamListener | None = None,
) -> ModelResult:
    """One attempt; every way it can fail is a ``ModelCallFailed`` whose message names the cause.
    ``on_event`` sees each stream event as it arrives (previews of the reply; it must not raise)."""
    if isinstance(client, ModelClient):
        client = await client.sdk()
    opened: list[AsyncMessageStream[Any]] = []
    try:
        return await _attempt(client, request, on_event, opened)
    except ModelCallFailed as exc:
        if exc.usage is None and opened:
            exc.usage = _usage_so_far(opened[0])
        raise


async def _attempt(
    client: anthropic.AsyncAnthropic,
    request: dict[str, Any],
    on_event: StreamListener | None,
    opened: list[AsyncMessageStream[Any]],
) -> ModelResult:
    import anthropic  # loaded by now: the client is the SDK's

    try:
        async with client.messages.stream(**request) as stream:
            opened.append(stream)
            message, tool_json = await _read_to_stop(stream, on_event)
    except anthropic.APIStatusError as exc:
        raise _status_failure(exc) from None
    except (anthropic.APITimeoutError, httpx2.TimeoutException):
        raise ModelCallFailed(FAILED, "the model stream stalled and timed out") from None
    except anthropic.APIConnectionError as exc:
        raise ModelCallFailed(
            FAILED, f"could not reach the model: {_describe(exc.__cause__ or exc)}"
        ) from None
    except (httpx2.HTTPError, anthropic.APIError) as exc:
        raise ModelCallFailed(FAILED, f"the model stream broke off: {_describe(exc)}") from None
    except (ValueError, RuntimeError, IndexError) as exc:  # the SDK's accumulator refused an event
        raise ModelCallFailed(FAILED, _malformed(exc)) from None
    usage = _usage(message.usage)
    try:
        if message.stop_reason is None:
            raise ModelCallFailed(FAILED, f"{INCOMPLETE} (message_stop without a stop_reason)")
        content = []
        for index, block in enumerate(message.content):
            dumped = block.model_dump(mode="json", exclude_none=True)
            if index in tool_json:
                dumped["input"] = _tool_input(dumped, tool_json[index], message.stop_reason)
            content.append(dumped)
    except ModelCallFailed as exc:
        exc.usage = usage  # a complete reply refused here was still generated, and billed
        raise
    return ModelResult(content=content, stop_reason=message.stop_reason, usage=usage)


def _usage(usage: Any) -> dict[str, int]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens or 0,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens or 0,
    }


def _usage_so_far(stream: AsyncMessageStream[Any]) -> dict[str, int] | None:
    """The usage a broken stream reported before it broke (``message_start`` carries the input
    side), or None if it broke before saying."""
    try:
        return _usage(stream.current_message_snapshot.usage)
    except Exception:  # no message_start yet: the SDK has no snapshot
        return None


async def _read_to_stop(
    stream: AsyncMessageStream[Any], on_event: StreamListener | None
) -> tuple[Message, dict[int, str]]:
    """The message once ``message_stop`` arrives, and the raw JSON of each tool input by block
    index. A stream that ends (cleanly or not) before ``message_stop`` is a failed attempt:
    ``get_final_message`` would return whatever had arrived."""
    tool_json: dict[int, str] = {}
    stopped: Message | None = None
    async for event in stream:
        if on_event is not None:
            on_event(event)
        if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
            tool_json[event.index] = tool_json.get(event.index, "") + event.delta.partial_json
        elif event.type == "message_stop":
            stopped = event.message
            break
    if stopped is None:
        raise ModelCallFailed(FAILED, f"{INCOMPLETE} (it ended without message_stop)")
    await _drain(stream)
    return stopped, tool_json


async def _drain(stream: AsyncMessageStream[Any]) -> None:
    """Read the response to its end, briefly: only a fully read response hands its connection
    back to the pool, so the next call skips a new TCP (and, against the API, TLS) handshake.
    The reply is already complete, so nothing here can fail the call."""
    with anyio.move_on_after(DRAIN_SECONDS):
        try:
            async for _ in stream:
                pass
        except Exception:  # a broken tail after message_stop changes nothing
            pass


def _tool_input(block: dict[str, Any], raw: str, stop_reason: str) -> dict[str, Any]:
    """The input exactly as the model streamed it, parsed strictly: the SDK's partial parser
    accepts a cut-off or trailing-garbage JSON text that must never reach a tool."""
    where = f"the model's input for tool {block.get('name')!r}"
    cut_off = " (the reply hit max_tokens)" if stop_reason == "max_tokens" else ""
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ModelCallFailed(FAILED, f"{where} is not valid JSON: {exc}{cut_off}") from None
    if not isinstance(value, dict):
        raise ModelCallFailed(FAILED, f"{where} is not a JSON object{cut_off}")
    return value


def _malformed(exc: Exception) -> str:
    if (
        isinstance(exc, ValueError)
        and isinstance(exc.__cause__, ValueError)
        and "tool parameter JSON" in str(exc)
    ):
        return f"the model sent tool input that is not valid JSON: {exc.__cause__}"
    return f"the model stream was malformed: {_describe(exc)}"


def _describe(exc: BaseException) -> str:
    """The exception's type and text: a bare ``str(exc)`` is often empty for transport errors."""
    text = str(exc).strip()
    return f"{type(exc).__name__} ({text})" if text else type(exc).__name__


def _status_failure(exc: anthropic.APIStatusError) -> ModelCallFailed:
    status = exc.status_code
    if status < 400:  # an ``error`` event inside a stream that began as a 200
        kind, text = _error_body(exc.body)
        status = IN_STREAM_STATUS.get(kind or "", 500)
        cause = f"{kind or 'error'}: {text}" if text else kind or "error"
        return ModelCallFailed(_error_type(status), f"the model stream reported {cause}", status)
    return ModelCallFailed(_error_type(status), _message(exc), status, _retry_after(exc.response))


def _error_type(status: int) -> str:
    if status == 429:
        return "model_rate_limited_error"
    if status == 529:
        return "model_overloaded_error"
    return FAILED


def _error_body(body: object) -> tuple[str | None, str | None]:
    """``(type, message)`` of an Anthropic-style error body, where present."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, None
    kind, message = error.get("type"), error.get("message")
    return (kind if isinstance(kind, str) else None), (message if isinstance(message, str) else None)


def _message(exc: anthropic.APIStatusError) -> str:
    _, message = _error_body(exc.body)
    return f"HTTP {exc.status_code}: {message}" if message else f"HTTP {exc.status_code}"


def _retry_after(response: httpx2.Response) -> float | None:
    raw = response.headers.get("retry-after")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None
