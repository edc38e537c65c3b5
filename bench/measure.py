"""Run a command and measure it: wall time, peak memory, local disk writes, CPU.

How each number is obtained (also in docs/benchmarks.md):

* **Wall time**: ``time.monotonic()`` from spawn to reap.
* **Peak RSS of one process** (e.g. the runner's Python process): the kernel's
  own high-water mark ``VmHWM`` from ``/proc/<pid>/status``, read every
  ``interval`` seconds; since it is monotonic, only growth in the last
  interval before exit could be missed.
* **Peak RSS of the process tree**: every ``interval`` seconds the tree under
  the root process is walked (``/proc/<pid>/task/<tid>/children``) and the
  ``VmRSS`` of all members summed; the maximum of these sums is reported
  (sampled, so a spike shorter than the interval can be missed). Shared pages
  (libraries) are counted once per process, so this over-estimates slightly.
* **Local disk writes**: Linux accounts ``write_bytes`` (bytes a task caused to
  be sent to the storage layer, i.e. page-cache pages it dirtied) per task;
  when a child is reaped its totals, including those of its own reaped
  children, are added to the parent's (``wait_task_zombie``). The measured
  command is the only child of this process and this process writes nothing
  to disk while it runs (output goes to pipes held in memory), so the delta
  of ``/proc/self/io`` over the run is the sum for the command's whole tree.
  ``cancelled_write_bytes`` (dirty page-cache data discarded before reaching
  disk, e.g. a file deleted right after writing) is reported separately.
* **CPU**: user and system seconds of the reaped tree (``getrusage`` of
  children, delta over the run).
"""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_INTERVAL = 0.05


@dataclass
class Measurement:
    argv: list[str]
    returncode: int
    wall_seconds: float
    peak_rss_root_bytes: int  # VmHWM of the root process
    peak_rss_tree_bytes: int  # max over samples of the summed VmRSS of the tree
    peak_processes: int  # most processes seen in the tree at once
    write_bytes: int
    cancelled_write_bytes: int
    read_bytes: int
    cpu_user_seconds: float
    cpu_system_seconds: float
    samples: int
    stdout: str = field(repr=False, default="")
    stderr: str = field(repr=False, default="")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("stdout")
        data["stderr_tail"] = self.stderr[-2000:]
        data.pop("stderr")
        return data


def _read_io(pid: str = "self") -> dict[str, int]:
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        values[key.strip()] = int(value)
    return values


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return 0


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return kids
    for task in tasks:
        try:
            kids += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def process_tree(root: int) -> list[int]:
    seen: list[int] = []
    stack = [root]
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.append(pid)
        stack += _children(pid)
    return seen


class _Sampler(threading.Thread):
    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True, name="sampler")
        self.pid = pid
        self.interval = interval
        self.stop_event = threading.Event()
        self.root_hwm_kb = 0
        self.tree_peak_kb = 0
        self.peak_processes = 0
        self.samples = 0

    def sample(self) -> None:
        hwm = _status_kb(self.pid, "VmHWM")
        self.root_hwm_kb = max(self.root_hwm_kb, hwm)
        pids = process_tree(self.pid)
        total = sum(_status_kb(p, "VmRSS") for p in pids)
        self.tree_peak_kb = max(self.tree_peak_kb, total)
        self.peak_processes = max(self.peak_processes, len(pids))
        self.samples += 1

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)


def run_measured(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: Path | None = None,
    interval: float = DEFAULT_INTERVAL,
    shell: bool = False,
) -> Measurement:
    """Run ``argv`` to completion, measuring it (see the module docstring)."""
    io_before = _read_io()
    ru_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.Popen(
        list(argv) if not shell else " ".join(argv),
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        shell=shell,  # noqa: S602 - the seed's method is a shell pipeline on purpose
    )
    sampler = _Sampler(proc.pid, interval)
    sampler.start()
    out, err = proc.communicate()
    wall = time.monotonic() - started
    sampler.stop_event.set()
    sampler.join()
    io_after = _read_io()
    ru_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Measurement(
        argv=list(argv),
        returncode=proc.returncode,
        wall_seconds=wall,
        peak_rss_root_bytes=sampler.root_hwm_kb * 1024,
        peak_rss_tree_bytes=sampler.tree_peak_kb * 1024,
        peak_processes=sampler.peak_processes,
        write_bytes=io_after["write_bytes"] - io_before["write_bytes"],
        cancelled_write_bytes=io_after["cancelled_write_bytes"]
        - io_before["cancelled_write_bytes"],
        read_bytes=io_after["read_bytes"] - io_before["read_bytes"],
        cpu_user_seconds=ru_after.ru_utime - ru_before.ru_utime,
        cpu_system_seconds=ru_after.ru_stime - ru_before.ru_stime,
        samples=sampler.samples,
        stdout=out.decode("utf-8", "replace"),
        stderr=err.decode("utf-8", "replace"),
    )


def loadavg() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return (one, five, fifteen)
