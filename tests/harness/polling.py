"""Wait for the cluster to get somewhere: one polling helper for every test tier.

Tests against real controllers cannot assert at once (a Job controller, kopf's
timers and the kubelet all act on their own clocks), so they poll with a
deadline and, on timeout, say what they waited for and what they saw last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from kubernetes.client.exceptions import ApiException

T = TypeVar("T")

#: Seconds between two probes: short against a local API server, which answers in ms.
INTERVAL = 0.25


def eventually(
    probe: Callable[[], T],
    what: str,
    timeout: float = 60.0,
    *,
    retry_on: tuple[type[Exception], ...] = (ApiException,),
    interval: float = INTERVAL,
) -> T:
    """``probe()`` once it returns something truthy; ``retry_on`` exceptions count as
    "not yet". Raises AssertionError naming ``what`` and the last answer on timeout."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except retry_on as exc:
            last = exc
        else:
            if result:
                return result
            last = result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
