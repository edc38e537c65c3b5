"""Process supervision shared by all components.

Children run in their own process group (so a stop reaches their children
too) and, when ``die_with_parent`` is set, get ``PR_SET_PDEATHSIG`` so that an
interrupted or killed test run never leaves servers behind. The demo starts
them without it and stops them later from the recorded PIDs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Seconds a component gets to become ready; kube-apiserver on a loaded 2-core
# machine can need most of a minute on its first start.
DEFAULT_READY_TIMEOUT = 120.0
# Seconds between readiness probes: short, since each probe is cheap.
PROBE_INTERVAL = 0.2
# Seconds between SIGTERM and SIGKILL when stopping.
STOP_GRACE = 10.0
_PR_SET_PDEATHSIG = 1


class StartError(RuntimeError):
    """A component failed to start; the message names it, its command and log."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ManagedProcess:
    """One long-running child process with its log file."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    user: str | None = None  # run as this user (PostgreSQL refuses root)
    die_with_parent: bool = True
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def describe(self) -> str:
        return f"{self.name}: command `{' '.join(self.argv)}`, log {self.log_path}"

    def start(self) -> None:
        if not Path(self.argv[0]).exists():
            raise StartError(f"{self.name}: binary {self.argv[0]} not found (log {self.log_path})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        with self.log_path.open("ab") as log:
            try:
                self.proc = subprocess.Popen(
                    list(self.argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.cwd,
                    user=self.user,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if self.die_with_parent else None,  # noqa: PLW1509
                )
            except OSError as exc:
                raise StartError(f"{self.describe()}: cannot start: {exc}") from exc

    def wait_ready(self, probe: Callable[[], bool], timeout: float = DEFAULT_READY_TIMEOUT) -> None:
        """Poll ``probe`` until it returns True; fail fast if the process exits.

        On failure the process is stopped before StartError is raised, so a
        failed start never leaves it running.
        """
        try:
            self._wait_ready(probe, timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, probe: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise StartError(
                    f"{self.describe()}: exited early with code {self.proc.returncode}; "
                    f"last log lines:\n{tail(self.log_path)}"
                )
            with contextlib.suppress(Exception):
                if probe():
                    return
            time.sleep(PROBE_INTERVAL)
        raise StartError(
            f"{self.describe()}: not ready after {timeout:.0f}s; last log lines:\n"
            f"{tail(self.log_path)}"
        )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        stop_pid(self.proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=1)


def stop_pid(pid: int, grace: float = STOP_GRACE) -> None:
    """SIGTERM the process group of ``pid``, SIGKILL it after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    while _alive(pid) and time.monotonic() < deadline + 5:
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    # Reap if it is our child; then check the PID still exists.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    # A zombie (state Z) has exited; a detached child's zombie waits for PID 1
    # to reap it, and it still answers kill(pid, 0).
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
