"""One streamed call to the Messages API through the official SDK.

The SDK's own retries are off: the harness owns retries so each attempt is
visible in the session log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anthropic
import httpx2


@dataclass(frozen=True)
class ModelResult:
    content: list[dict[str, Any]]
    stop_reason: str | None
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


def make_client(api_key: str, base_url: str | None, stream_timeout: float) -> anthropic.AsyncAnthropic:
    """``stream_timeout`` bounds each wait for bytes, so a hung stream fails instead of hanging;
    a long generation that keeps streaming is never cut off."""
    return anthropic.AsyncAnthropic(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=httpx2.Timeout(stream_timeout, connect=10.0),
    )


async def call_model(client: anthropic.AsyncAnthropic, request: dict[str, Any]) -> ModelResult:
    try:
        async with client.messages.stream(**request) as stream:
            message = await stream.get_final_message()
    except anthropic.APIStatusError as exc:
        raise ModelCallFailed(
            _error_type(exc.status_code), _message(exc), exc.status_code, _retry_after(exc.response)
        ) from None
    except (anthropic.APITimeoutError, httpx2.TimeoutException):
        raise ModelCallFailed(
            "model_request_failed_error", "the model stream stalled and timed out"
        ) from None
    except anthropic.APIConnectionError as exc:
        raise ModelCallFailed("model_request_failed_error", f"could not reach the model: {exc}") from None
    except (httpx2.HTTPError, anthropic.APIError) as exc:
        raise ModelCallFailed("model_request_failed_error", f"the model stream failed: {exc}") from None
    usage = message.usage
    return ModelResult(
        content=[block.model_dump(mode="json", exclude_none=True) for block in message.content],
        stop_reason=message.stop_reason,
        usage={
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_input_tokens": usage.cache_read_input_tokens or 0,
            "cache_creation_input_tokens": usage.cache_creation_input_tokens or 0,
        },
    )


def _error_type(status: int) -> str:
    if status == 429:
        return "model_rate_limited_error"
    if status == 529:
        return "model_overloaded_error"
    return "model_request_failed_error"


def _message(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return f"HTTP {exc.status_code}: {error['message']}"
    return f"HTTP {exc.status_code}"


def _retry_after(response: httpx2.Response) -> float | None:
    raw = response.headers.get("retry-after")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None
