"""When and how long to wait before retrying a failed model call.

Full-jitter exponential backoff, except that a server's ``retry-after`` is honoured
(bounded by ``max_delay`` so a hostile header cannot park a session for hours).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    base_delay: float = 1.0
    max_delay: float = 30.0

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1-based)."""
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.max_delay)
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (failures - 1)))


def is_retryable(status: int | None) -> bool:
    """429, 529 and 5xx are worth retrying, as are connection failures and timeouts (no status)."""
    return status is None or status in (408, 409, 429) or status >= 500
