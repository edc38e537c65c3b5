"""Progress lines on stderr while streams run.

A multi-hour backup with no output looks hung to whoever reads the pod's log,
and an operator cannot tell a stalled dump from a slow one. A reporter thread
prints, at a fixed interval (10 s by default), one line per active stream with
bytes done and the rate since the previous line, plus a line when each stream
finishes. Counters are updated from worker threads with a lock; reading them
never blocks a stream for long.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("citus_backup.runner")

DEFAULT_INTERVAL = 10.0


def human_bytes(size: float) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - loop always returns


def rate_mb_s(size: int, seconds: float) -> float:
    """Throughput in MB/s (10^6 bytes, as network tools print it)."""
    return size / seconds / 1e6 if seconds > 0 else 0.0


@dataclass
class Counter:
    name: str
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    finished: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, count: int) -> None:
        with self._lock:
            self.done += count

    def snapshot(self) -> tuple[int, float | None]:
        with self._lock:
            return self.done, self.finished


class Progress:
    """Tracks named streams and reports them every ``interval`` seconds."""

    def __init__(
        self,
        action: str,
        interval: float = DEFAULT_INTERVAL,
        emit: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.action = action
        self.interval = interval
        self._emit = emit or log.info
        self._clock = clock
        self._counters: dict[str, Counter] = {}
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def track(self, name: str) -> Counter:
        counter = Counter(name, started=self._clock())
        with self._lock:
            self._counters[name] = counter
            self._last[name] = (counter.started, 0)
        return counter

    def finish(self, counter: Counter, what: str = "done") -> None:
        now = self._clock()
        with counter._lock:
            counter.finished = now
            size = counter.done
        elapsed = now - counter.started
        self._emit(
            f"{self.action} {counter.name}: {what}, {human_bytes(size)} in {elapsed:.1f} s "
            f"({rate_mb_s(size, elapsed):.1f} MB/s)"
        )

    def totals(self) -> tuple[int, int]:
        """(streams finished, bytes of every stream so far)."""
        with self._lock:
            counters = list(self._counters.values())
        finished, size = 0, 0
        for counter in counters:
            done, end = counter.snapshot()
            size += done
            finished += end is not None
        return finished, size

    def report(self) -> list[str]:
        """One line per unfinished stream; called by the thread (and tests)."""
        now = self._clock()
        lines = []
        with self._lock:
            counters = list(self._counters.values())
        for counter in counters:
            size, finished = counter.snapshot()
            if finished is not None:
                continue
            last_time, last_size = self._last.get(counter.name, (counter.started, 0))
            self._last[counter.name] = (now, size)
            lines.append(
                f"{self.action} {counter.name}: {human_bytes(size)} "
                f"({size} bytes), {rate_mb_s(size - last_size, now - last_time):.1f} MB/s, "
                f"{now - counter.started:.0f} s"
            )
        for line in lines:
            self._emit(line)
        return lines

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.report()

    def __enter__(self) -> Progress:
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
