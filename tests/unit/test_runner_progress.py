"""Progress lines: bytes and MB/s per stream, at a fixed interval."""

from __future__ import annotations

import time

from citus_backup.runner.progress import Progress, human_bytes, rate_mb_s


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_report_shows_bytes_and_rate_since_last_line() -> None:
    clock, lines = Clock(), []
    progress = Progress("backup", 10, emit=lines.append, clock=clock)
    app1 = progress.track('"app1"')
    app1.add(50_000_000)
    clock.now += 10
    progress.report()
    app1.add(100_000_000)
    clock.now += 10
    progress.report()
    assert lines[0].startswith('backup "app1": 47.7 MiB (50000000 bytes), 5.0 MB/s, 10 s')
    assert "10.0 MB/s" in lines[1]
    progress.finish(app1)
    assert lines[2] == 'backup "app1": done, 143.1 MiB in 20.0 s (7.5 MB/s)'
    assert progress.report() == []  # finished streams are not repeated


def test_reporter_thread_emits_at_the_interval() -> None:
    lines: list[str] = []
    with Progress("restore", 0.05, emit=lines.append) as progress:
        progress.track("db").add(1)
        time.sleep(0.3)
    assert len(lines) >= 2


def test_formatting_helpers() -> None:
    assert human_bytes(10) == "10 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 1024**4) == "3.0 TiB"
    assert rate_mb_s(10_000_000, 2) == 5.0
    assert rate_mb_s(1, 0) == 0.0
