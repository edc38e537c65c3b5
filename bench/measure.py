"""Run a command and measure it: wall time, peak memory, local disk writes, CPU.

How each number is obtained (also in docs/benchmarks.md):

* **Wall time**: ``time.monotonic()`` from spawn to reap.
* **Peak RSS of one process** (e.g. the runner's Python process): the kernel's
  own high-water mark ``VmHWM`` from ``/proc/<pid>/status``, read every
  ``interval`` seconds; since it is monotonic, only growth in the last
  interval before exit could be missed.
* **Peak memory of the process tree**: every ``interval`` seconds the tree
  under the root process is walked (``/proc/<pid>/task/<tid>/children``) and
  the ``VmRSS`` of its members summed; the maximum of these sums is reported
  (sampled, so a spike shorter than the interval can be missed). Shared pages
  (libraries) are counted once per process, so this is an upper bound. A
  child caught between ``fork`` and ``exec`` (same executable as the root) is
  left out: it is a copy-on-write image of the parent and would count the
  parent twice (seen once: a "173 MB tree" for an 88 MB runner). The summed
  ``Pss`` (``/proc/<pid>/smaps_rollup``) is recorded too; it is a lower
  bound, since pages shared with processes outside the tree are only
  partly counted.
* **Local disk writes**: Linux accounts ``write_bytes`` (bytes a task caused to
  be sent to the storage layer, i.e. page-cache pages it dirtied) per task;
  when a child is reaped its totals, including those of its own reaped
  children, are added to the parent's (``wait_task_zombie``). The measured
  command is the only child of this process that exits while it runs (the
  servers, also children, keep their counts to themselves until they are
  stopped at the end), and this process writes nothing to disk meanwhile
  (output goes to pipes held in memory), so the delta of ``/proc/self/io``
  over the run is the sum for the command's whole tree.
  ``cancelled_write_bytes`` (dirty page-cache data discarded before reaching
  disk, e.g. a file deleted right after writing) is reported separately.
  Caveat: on a ``relatime`` mount, *reading* a file modified since it was
  last read updates its atime, and ext4 charges the dirtied inode block
  (4096 bytes) to the reader; the benchmark therefore runs the runner once
  (``--help``, unmeasured) before each measured run, so source files that
  someone just edited do not show up as "disk writes".
* **CPU**: user and system seconds of the reaped tree (``getrusage`` of
  children, delta over the run), and of the root process alone (sampled);
  :class:`CpuSnapshot` splits the machine's CPU time over a step into the
  command, the servers and everyone else.
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
    peak_pss_tree_bytes: int  # max over samples of the summed Pss of the tree
    peak_processes: int  # most processes seen in the tree at once
    write_bytes: int
    cancelled_write_bytes: int
    read_bytes: int
    cpu_user_seconds: float
    cpu_system_seconds: float
    cpu_root_seconds: float  # the root process alone (last sample before it exited)
    samples: int
    #: child process name -> [first, last] second it was seen (sampled)
    seen: dict[str, list[float]] = field(default_factory=dict)
    stdout: str = field(repr=False, default="")
    stderr: str = field(repr=False, default="")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("stdout")
        dumps = [v for k, v in self.seen.items() if k.startswith("pg_dump")]
        if dumps:
            # Seconds from start until the first pg_dump/pg_dumpall was seen, and
            # from the last one seen until the command exited.
            data["prelude_seconds"] = round(min(v[0] for v in dumps), 2)
            data["epilogue_seconds"] = round(self.wall_seconds - max(v[1] for v in dumps), 2)
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


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _pss_kb(pid: int) -> int:
    """Proportional set size: private pages plus a share of pages shared with others."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
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


def _own_seconds(pid: int) -> float:
    """utime + stime of ``pid`` itself (all its threads, not its children)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


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
    def __init__(self, pid: int, interval: float, started: float) -> None:
        super().__init__(daemon=True, name="sampler")
        self.pid = pid
        self.interval = interval
        self.stop_event = threading.Event()
        self.root_hwm_kb = 0
        self.root_cpu = 0.0
        self.tree_peak_kb = 0
        self.tree_pss_peak_kb = 0
        self.root_exe: str | None = None
        self.peak_processes = 0
        self.samples = 0
        self.started = started
        # process name -> [first, last] second (since start) it was seen in the tree
        self.seen: dict[str, list[float]] = {}

    def sample(self) -> None:
        hwm = _status_kb(self.pid, "VmHWM")
        self.root_cpu = max(self.root_cpu, _own_seconds(self.pid))
        self.root_hwm_kb = max(self.root_hwm_kb, hwm)
        pids = process_tree(self.pid)
        if self.root_exe is None:
            self.root_exe = _exe(self.pid)
        # A child between fork() and exec() is still a copy of its parent: its
        # VmRSS counts the parent's (shared, copy-on-write) pages a second time.
        counted = [self.pid] + [p for p in pids[1:] if _exe(p) != self.root_exe]
        now = time.monotonic() - self.started
        for pid in pids[1:]:
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            span = self.seen.setdefault(name, [now, now])
            span[1] = now
        total = sum(_status_kb(p, "VmRSS") for p in counted)
        self.tree_peak_kb = max(self.tree_peak_kb, total)
        self.tree_pss_peak_kb = max(self.tree_pss_peak_kb, sum(_pss_kb(p) for p in pids))
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
) -> Measurement:
    """Run ``argv`` to completion, measuring it (see the module docstring)."""
    io_before = _read_io()
    ru_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.Popen(
        list(argv),
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    sampler = _Sampler(proc.pid, interval, started)
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
        peak_pss_tree_bytes=sampler.tree_pss_peak_kb * 1024,
        peak_processes=sampler.peak_processes,
        write_bytes=io_after["write_bytes"] - io_before["write_bytes"],
        cancelled_write_bytes=io_after["cancelled_write_bytes"]
        - io_before["cancelled_write_bytes"],
        read_bytes=io_after["read_bytes"] - io_before["read_bytes"],
        cpu_user_seconds=ru_after.ru_utime - ru_before.ru_utime,
        cpu_system_seconds=ru_after.ru_stime - ru_before.ru_stime,
        cpu_root_seconds=sampler.root_cpu,
        samples=sampler.samples,
        seen={k: [round(v[0], 2), round(v[1], 2)] for k, v in sampler.seen.items()},
        stdout=out.decode("utf-8", "replace"),
        stderr=err.decode("utf-8", "replace"),
    )


def loadavg() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return (one, five, fifteen)


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _busy_seconds() -> float:
    """CPU seconds all CPUs spent in processes since boot (/proc/stat user+nice+system).

    irq/softirq time (e.g. loopback networking of our own transfers) belongs to
    no process, so it is left out on both sides of the comparison.
    """
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system = (int(x) for x in fields[:3])
    return (user + nice + system) / _CLK_TCK


def _tree_seconds(root: int) -> float:
    """CPU seconds of ``root`` and its live descendants, plus all they reaped."""
    total = 0
    for pid in process_tree(root):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        # fields after "(comm)": state=0 ... utime=11 stime=12 cutime=13 cstime=14
        total += sum(int(x) for x in stat[11:15])
    return total / _CLK_TCK


@dataclass
class CpuSnapshot:
    """Process CPU seconds of the machine and of the benchmark's parts."""

    busy: float
    harness: float  # this process and all its descendants (commands and servers)
    servers: dict[str, float]  # server name -> CPU of its process tree (part of harness)

    @classmethod
    def take(cls, servers: Mapping[str, int]) -> CpuSnapshot:
        return cls(
            _busy_seconds(),
            _tree_seconds(os.getpid()),
            {name: _tree_seconds(pid) for name, pid in servers.items()},
        )


def cpu_breakdown(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU seconds between two snapshots: machine, measured tree, each server, others.

    ``others`` is the busy time of the whole machine minus that of this
    process tree (which includes every measured command) and of the
    PostgreSQL and MinIO servers (with the backends they reaped): the load
    other users put on the machine while a step ran. Load average cannot tell
    that, as it counts the benchmark's own processes.
    """
    harness = after.harness - before.harness
    out = {"machine": after.busy - before.busy}
    for name in after.servers:
        out[name] = after.servers[name] - before.servers.get(name, 0.0)
    # The servers are children of this process: the rest of its tree is the command.
    out["command"] = harness - sum(out[name] for name in after.servers)
    out["others"] = max(0.0, out["machine"] - harness)
    return out


def wait_for_quiet(
    servers: Mapping[str, int], max_wait: float, window: float = 3.0, threshold: float = 0.15
) -> tuple[float, float]:
    """Wait until other processes use < ``threshold`` cores over ``window`` s.

    Gives up after ``max_wait`` seconds. Returns (seconds waited, cores other
    processes used in the last window).
    """
    started = time.monotonic()
    if max_wait <= 0:
        return 0.0, float("nan")
    while True:
        before = CpuSnapshot.take(servers)
        time.sleep(window)
        cores = cpu_breakdown(before, CpuSnapshot.take(servers))["others"] / window
        waited = time.monotonic() - started
        if cores < threshold or waited >= max_wait:
            return waited, cores
