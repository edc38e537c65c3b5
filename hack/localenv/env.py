"""The detached demo environment behind ``make demo`` / ``make demo-down``.

Tests start services that die with the test run; the demo instead starts
PostgreSQL, MinIO and the Kubernetes control plane *detached* (no
PDEATHSIG, own sessions), so ``up`` returns and they keep running. Later
commands (``down``, ``status``, ``env``), run as separate processes, learn
PIDs, ports and credentials from ``<state-dir>/state.json``.

That file holds the demo's passwords, so it is written atomically with mode
0600. Each PID is recorded with its kernel start time, so ``down`` never
signals an unrelated process that reused the PID (after a reboot, say).
``up`` and ``down`` take a lock on the state directory, so two ``make demo``
runs cannot start two environments into the same place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO, TypeVar

from localenv import binaries, node, postgres
from localenv.binaries import HACK_DIR, binary
from localenv.kube import KubeInfo
from localenv.minio import MinioInfo
from localenv.mounts import PROC_MOUNTS, mounts_below
from localenv.postgres import PostgresInfo
from localenv.process import ManagedProcess, StartError
from localenv.stack import NodeStack

REPO = HACK_DIR.parent
DEFAULT_STATE_DIR = REPO / ".localenv" / "demo"
STATE_FILE = "state.json"
# Bumped when the state file's layout changes; older files are not trusted.
STATE_FORMAT = 2
# Subdirectories holding each service's data; ``down`` removes them.
DATA_DIRS = ("postgres", "minio", "kube", "node")
LOG_DIR = "logs"
# MinIO's default region; S3 clients need one even when the server ignores it.
S3_REGION = "us-east-1"
MC_ALIAS = "local"
# Seconds a server gets between SIGTERM and SIGKILL (PostgreSQL's smart
# shutdown waits for clients), and between checks that it is gone.
STOP_GRACE = 10.0
STOP_POLL = 0.05
# `status` exit codes, as LSB init scripts use them: 3 = not running.
EXIT_RUNNING, EXIT_PARTIAL, EXIT_NOT_RUNNING = 0, 1, 3


def _start_time(pid: int) -> int | None:
    """Kernel start time of ``pid`` (clock ticks since boot), None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may contain spaces and parentheses: parse after the last ')'.
    # What follows starts at field 3 (state); starttime is field 22.
    rest = stat.rsplit(")", 1)[1].split()
    if rest[0] == "Z":
        return None
    return int(rest[19])


@dataclasses.dataclass(frozen=True)
class ProcessRecord:
    """One detached server: enough to find it again, and to tell if it is ours."""

    name: str
    pid: int
    start_time: int
    endpoint: str

    def running(self) -> bool:
        return _start_time(self.pid) == self.start_time

    @classmethod
    def of(cls, process: ManagedProcess, endpoint: str) -> ProcessRecord:
        pid = process.pid
        start = None if pid is None else _start_time(pid)
        if pid is None or start is None:
            raise RuntimeError(f"{process.name} is not running")
        return cls(process.name, pid, start, endpoint)


_Info = TypeVar("_Info", PostgresInfo, MinioInfo)


def _dump(info: PostgresInfo | MinioInfo) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(info).items()}


def _load(cls: type[_Info], data: Mapping[str, Any]) -> _Info:
    values: dict[str, Any] = {
        f.name: Path(data[f.name]) if f.type in ("Path", Path) else data[f.name]
        for f in dataclasses.fields(cls)
    }
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class DemoState:
    """What ``up`` started, as recorded in the state file."""

    state_dir: Path
    started_at: str
    processes: list[ProcessRecord]
    postgres: PostgresInfo
    minio: MinioInfo
    kube: KubeInfo
    node: node.NodeInfo

    @property
    def log_dir(self) -> Path:
        return self.state_dir / LOG_DIR

    def not_running(self) -> list[ProcessRecord]:
        return [p for p in self.processes if not p.running()]

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": STATE_FORMAT,
                "started_at": self.started_at,
                "processes": [dataclasses.asdict(p) for p in self.processes],
                "postgres": _dump(self.postgres),
                "minio": _dump(self.minio),
                "kube": self.kube.to_dict(),
                "node": self.node.to_dict(),
            },
            indent=2,
        )

    @classmethod
    def load(cls, state_dir: Path) -> DemoState | None:
        """The recorded state, or None when there is none (or it is unreadable)."""
        try:
            data = json.loads((state_dir / STATE_FILE).read_text())
            if data.get("format") != STATE_FORMAT:
                return None
            return cls(
                state_dir=state_dir,
                started_at=data["started_at"],
                processes=[ProcessRecord(**p) for p in data["processes"]],
                postgres=_load(PostgresInfo, data["postgres"]),
                minio=_load(MinioInfo, data["minio"]),
                kube=KubeInfo.from_dict(data["kube"]),
                node=node.NodeInfo.from_dict(data["node"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self) -> None:
        path = self.state_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self.to_json())
        tmp.replace(path)

    def env(self) -> dict[str, str]:
        """Shell environment for reaching every service (credentials included)."""
        minio = self.minio
        return {
            **self.kube.env(),
            **self.postgres.env(),
            **minio.mc_env(MC_ALIAS),
            "AWS_ACCESS_KEY_ID": minio.access_key,
            "AWS_SECRET_ACCESS_KEY": minio.secret_key,
            "AWS_ENDPOINT_URL": minio.url,
            "AWS_REGION": S3_REGION,
        }


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (state_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _cli(state_dir: Path, command: str) -> str:
    """How to run ``command`` of this CLI again, from any directory."""
    cmd = f"PYTHONPATH={shlex.quote(str(HACK_DIR))} {shlex.quote(sys.executable)} -m localenv"
    cmd += f" {command}"
    if state_dir != DEFAULT_STATE_DIR:
        cmd += f" --state-dir {shlex.quote(str(state_dir))}"
    return cmd


def _stop_record(record: ProcessRecord, grace: float = STOP_GRACE) -> None:
    """SIGTERM the process group, SIGKILL after ``grace`` seconds.

    Not :func:`localenv.process.stop_pid`: our detached servers are children
    of PID 1 by now, which reaps them only every so often, and a zombie still
    answers ``kill(pid, 0)``. :meth:`ProcessRecord.running` treats a zombie
    (and a reused PID) as stopped, so each stop takes milliseconds, not seconds.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not record.running():
                return
            time.sleep(STOP_POLL)


def _stop(state: DemoState, out: TextIO) -> None:
    """Stop the node (pods drained first), then the other servers; delete their data."""
    by_name = {record.name: record for record in state.processes}

    def running(name: str) -> bool:
        record = by_name.get(name)
        return record is not None and record.running()

    def stop(name: str) -> None:
        if running(name):
            record = by_name[name]
            print(f"stopping {name} (pid {record.pid})", file=out)
            _stop_record(record)

    node.teardown(
        state.kube,
        Path(state.node.containerd_socket),
        state.state_dir / "node" / "kubelet",
        running=running,
        stop=stop,
    )
    for record in reversed(state.processes):
        stop(record.name)
    node.bridge_down()
    _remove_data(state.state_dir)
    (state.state_dir / STATE_FILE).unlink(missing_ok=True)


def _remove_data(state_dir: Path) -> None:
    """The servers' data, including PostgreSQL's if it had to live in the temp dir."""
    for name in DATA_DIRS:
        shutil.rmtree(state_dir / name, ignore_errors=True)
    shutil.rmtree(postgres.relocated_dir(state_dir / "postgres"), ignore_errors=True)


def _start(state_dir: Path, out: TextIO) -> DemoState:
    logs = state_dir / LOG_DIR
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    stack = NodeStack(state_dir, logs, owner="make demo", die_with_parent=False, progress=out)
    try:
        info = stack.start()
        endpoints = {
            "postgres": f"{info.postgres.host}:{info.postgres.port}",
            "minio": f"{info.minio.url} (console {info.minio.console_url})",
            "kube-apiserver": info.kube.server,
            "containerd": info.node.containerd_socket,
        }
        records = [ProcessRecord.of(p, endpoints.get(p.name, "")) for p in stack.processes()]
        state = DemoState(
            state_dir=state_dir,
            started_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            processes=records,
            postgres=info.postgres,
            minio=info.minio,
            kube=info.kube,
            node=info.node,
        )
        state.save()
    except BaseException:
        # Detached children outlive us: a failed or interrupted start must
        # not leave half an environment running (NodeStack.start stopped
        # what it had started; this covers a failure after it).
        stack.stop()
        _remove_data(state_dir)
        raise
    finally:
        if stack.lock is not None:
            stack.lock.release()
    return state


def describe(state: DemoState) -> str:
    """The "how to reach everything" text ``up`` prints."""
    kube, minio, pg = state.kube, state.minio, state.postgres
    mc_host = minio.mc_env(MC_ALIAS)[f"MC_HOST_{MC_ALIAS}"]
    make_down = "make demo-down   (or: {})" if state.state_dir == DEFAULT_STATE_DIR else "{}"
    return f"""\
Local environment is up (started {state.started_at}; state in {state.state_dir}).

Kubernetes {kube.version}: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
and one real node "{state.node.name}" (kubelet, containerd, runc, kube-proxy;
pods on {state.node.pod_cidr}, reaching PostgreSQL and MinIO at {state.node.address})
  API server:   {kube.server}
  export KUBECONFIG={shlex.quote(str(kube.kubeconfig))}
  kubectl:      {kube.kubectl}

MinIO
  S3 endpoint:  {minio.url}
  console:      {minio.console_url}
  access key:   {minio.access_key}
  secret key:   {minio.secret_key}
  export MC_HOST_{MC_ALIAS}={shlex.quote(mc_host)}

PostgreSQL
  DSN:          {pg.dsn()}
  (a local throw-away demo: the password is printed here and by `env` only)

Logs:           {state.log_dir}/
All of the above as shell variables (kubectl and mc put on PATH too):
  eval "$({_cli(state.state_dir, "env")})"
Stop everything and delete its data:
  {make_down.format(_cli(state.state_dir, "down"))}
"""


def up(state_dir: Path, out: TextIO = sys.stdout, progress: TextIO = sys.stderr) -> int:
    """Start everything detached, or report what already runs; prints how to reach it."""
    with _locked(state_dir):
        state = DemoState.load(state_dir)
        if state is not None:
            stopped = state.not_running()
            if not stopped:
                print(describe(state), file=out, end="")
                return 0
            names = ", ".join(p.name for p in stopped)
            print(
                f"previous environment is partly down ({names} not running); restarting it",
                file=progress,
            )
            _stop(state, progress)
        state = _start(state_dir, progress)
        print(describe(state), file=out, end="")
        return 0


def down(state_dir: Path, out: TextIO = sys.stdout) -> int:
    """Stop what the state file records and remove the data (logs stay)."""
    if not state_dir.exists():
        print(f"nothing to stop: {state_dir} does not exist", file=out)
        return 0
    with _locked(state_dir):
        state = DemoState.load(state_dir)
        if state is None:
            print(f"nothing to stop: no state in {state_dir}", file=out)
            _remove_data(state_dir)
            return 0
        _stop(state, out)
        print(f"stopped; logs kept in {state.log_dir}/", file=out)
        return 0


def status(state_dir: Path, out: TextIO = sys.stdout) -> int:
    """Say what runs; exit code 0 all running, 1 partly, 3 nothing."""
    state = DemoState.load(state_dir)
    if state is None:
        print(f"not running (no state in {state_dir})", file=out)
        return EXIT_NOT_RUNNING
    print(f"started {state.started_at}; state in {state.state_dir}", file=out)
    running = 0
    for p in state.processes:
        alive = p.running()
        running += alive
        word = "running" if alive else "STOPPED"
        print(f"  {p.name:<24} {word:<8} pid {p.pid:<8} {p.endpoint}", file=out)
    print(f"  postgres DSN: {state.postgres.redacted_dsn()}", file=out)
    print(f"  KUBECONFIG={state.kube.kubeconfig}", file=out)
    if running == len(state.processes):
        return EXIT_RUNNING
    return EXIT_PARTIAL if running else EXIT_NOT_RUNNING


def env(state_dir: Path, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``export`` lines for ``eval``; kubectl and mc are put on PATH."""
    state = DemoState.load(state_dir)
    if state is None:
        print(f"localenv: not running (no state in {state_dir}); run `make demo`", file=err)
        return EXIT_NOT_RUNNING
    if stopped := state.not_running():
        names = ", ".join(p.name for p in stopped)
        print(f"localenv: warning: {names} not running; `make demo` restarts", file=err)
    for key, value in state.env().items():
        print(f"export {key}={shlex.quote(value)}", file=out)
    print(f'export PATH={shlex.quote(str(tool_dir(state)))}:"$PATH"', file=out)
    return 0


# The project's console scripts a demo user types (the kubectl plugins are
# found by kubectl on PATH); the venv's other executables (python, pip, ...)
# are deliberately not put on the user's PATH.
USER_SCRIPTS = ("citus-backup", "kubectl-create-citusbackup", "kubectl-create-citusrestore")


def tool_dir(state: DemoState) -> Path:
    """``<state>/bin``: links to kubectl, mc and :data:`USER_SCRIPTS`, remade on each
    call so it follows a rebuilt venv or binary cache."""
    tools = {"kubectl": state.kube.kubectl}
    with contextlib.suppress(StartError):  # mc is a convenience, not required
        tools["mc"] = binary("mc", build=False)
    venv_bin = REPO / ".venv" / "bin"
    tools.update({name: venv_bin / name for name in USER_SCRIPTS if (venv_bin / name).exists()})
    bin_dir = state.state_dir / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, target in tools.items():
        link = bin_dir / name
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    return bin_dir


def leftovers(state_dir: Path) -> list[str]:
    """What a stopped demo must not have left on the machine: processes started
    from the state dir, the binary cache or the node's run dir; mounts below
    them; the bridge; pod network namespaces; Kubernetes iptables chains;
    PostgreSQL's relocated data. Empty when the machine is clean."""
    found: list[str] = []
    roots = (state_dir, binaries.cache_dir(), node.RUN_DIR, postgres.relocated_dir(state_dir))
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        words = [w.decode(errors="replace") for w in argv if w]
        if any(str(root) in word for word in words for root in roots):
            found.append(f"process {proc.name} still running: {shlex.join(words)[:200]}")
    mounts = mounts_below_any(roots)
    found += [f"{point} still mounted" for point in mounts]
    if Path(f"/sys/class/net/{node.BRIDGE}").exists():
        found.append(f"bridge {node.BRIDGE} still exists")
    found += [
        f"network namespace {p.name} still exists" for p in Path("/var/run/netns").glob("cni-*")
    ]
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue  # no iptables on the machine: no chains either
        for table in ("filter", "nat", "mangle"):
            listing = subprocess.run(
                [tool, "-t", table, "-S"], capture_output=True, text=True, check=False
            ).stdout
            chains = sorted(
                {line.split()[1] for line in listing.splitlines() if line.startswith("-N KUBE-")}
            )
            found += [f"{tool} {table} chain {chain} still exists" for chain in chains]
    if postgres.relocated_dir(state_dir / "postgres").exists():
        found.append(f"{postgres.relocated_dir(state_dir / 'postgres')} still exists")
    return found


def mounts_below_any(roots: tuple[Path, ...]) -> list[str]:
    text = PROC_MOUNTS.read_text()
    return [point for root in roots for point in mounts_below(text, root)]


def check_clean(state_dir: Path, out: TextIO = sys.stdout) -> int:
    """Exit 0 when :func:`leftovers` finds nothing, else list them and exit 1."""
    found = leftovers(state_dir)
    for line in found:
        print(f"localenv: leftover: {line}", file=out)
    if not found:
        print(
            "localenv: nothing left behind (processes, mounts, bridge, netns, iptables)", file=out
        )
    return 1 if found else 0


def sa_kubeconfig(
    state_dir: Path, namespace: str, name: str, output: Path | None, out: TextIO = sys.stdout
) -> int:
    """Write a kubeconfig for ServiceAccount ``namespace/name``; prints its path."""
    state = DemoState.load(state_dir)
    if state is None:
        print(f"localenv: not running (no state in {state_dir}); run `make demo`", file=sys.stderr)
        return EXIT_NOT_RUNNING
    path = output or state_dir / "kube" / f"sa-{namespace}-{name}.kubeconfig"
    print(state.kube.mint_sa_kubeconfig(namespace, name, path), file=out)
    return 0
