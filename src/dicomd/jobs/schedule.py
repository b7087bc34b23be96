"""When a background job runs next: its interval spread by jitter (the workers of many replicas that
started together do not all wake at once), stretched by exponential back-off while its passes fail (a
database or object store that is down is not hammered by every worker)."""

from __future__ import annotations

import random

MAX_BACKOFF = 600.0  # seconds: the longest pause after repeated failures


def next_delay(interval: float, failures: int, *, jitter: float = 0.2) -> float:
    """Seconds until the next pass: ``interval`` doubled per consecutive failure (at most MAX_BACKOFF,
    never less than ``interval``), times a random factor in [1 - jitter, 1 + jitter]."""
    base = interval if failures <= 0 else max(interval, min(interval * 2.0 ** min(failures, 30), MAX_BACKOFF))
    return base * random.uniform(1.0 - jitter, 1.0 + jitter)
