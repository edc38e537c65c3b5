"""A TEST DOUBLE for the kubelet: one fake node that runs Job pods as local processes.

Why it exists: the local control plane (:mod:`localenv.kube`) is real, but
this machine has no container engine, so there is no kubelet and no
scheduler, and Pods created by the Job controller would stay Pending for
ever. Until a later issue brings a real kubelet, :class:`LocalNode` plays the
node at that boundary so that tests can see Jobs run to completion through
the *real* kube-apiserver and kube-controller-manager (Job controller, GC,
node-lifecycle and PodGC controllers). It is a stand-in, not an
implementation: whatever passes here must still pass on a real kubelet
(the ``e2e`` tier).

What it emulates:

* a Node object (``local-harness`` by default) that is Ready, with a Lease in
  ``kube-node-lease`` and node status renewed every ``HEARTBEAT_SECONDS``, so
  the node-lifecycle controller neither taints it nor evicts its pods and
  PodGC does not delete them;
* the scheduler's last step only: an unbound Pod in a served namespace with
  ``schedulerName: default-scheduler`` is bound to the node through the
  ``pods/binding`` subresource (``nodeSelector`` is honoured; taints,
  affinity and resources are not looked at);
* the kubelet running the pod's single container: ``command`` + ``args`` run
  here as a process in its own process group, the executable resolved on
  ``PATH`` (the current interpreter's bin dir first, so the venv's
  ``citus-backup`` console script is found); ``$(VAR)`` references expanded
  as the kubelet does;
* the environment: ``value``, ``valueFrom.secretKeyRef`` /
  ``configMapKeyRef`` (read through the API), ``fieldRef`` for the usual
  metadata/spec/status fields, ``envFrom``; a missing Secret/ConfigMap or key
  leaves the Pod Pending with container waiting reason
  ``CreateContainerConfigError`` and the kubelet's message, retried every
  ``CONFIG_RETRY_SECONDS`` (creating the Secret later lets the pod start);
* volumes, by path substitution: each ``volumeMount`` gets a per-pod
  directory (Secret and ConfigMap volumes materialised there with their
  items and modes; emptyDir empty), and every occurrence of its
  ``mountPath`` as a path prefix in ``command``, ``args``, literal env values
  and ``workingDir`` is replaced by that directory. ``/tmp`` is always
  private to the pod (a per-pod directory, also exported as ``TMPDIR``), so
  ``HOME=/tmp`` becomes that directory. A Secret volume that cannot be built
  leaves the container waiting in ``ContainerCreating``;
* the termination message: ``terminationMessagePath`` is substituted like a
  mount, and the per-pod file is also exported as ``CITUS_BACKUP_TERMINATION_LOG``
  (:data:`TERMINATION_LOG_ENV`); the runner writes its summary there when the
  variable is set. After exit the first 4 KiB of the file become
  ``state.terminated.message``; with ``FallbackToLogsOnError`` and a non-zero
  exit, an empty file is replaced by the last 80 lines / 2 KiB of the output
  (the kubelet's own limits);
* Pod status through the ``status`` subresource, like the kubelet: Pending
  (waiting ContainerCreating / CreateContainerConfigError) → Running
  (startTime, ``state.running``, Ready) → Succeeded / Failed with
  ``state.terminated`` {exitCode, reason Completed/Error, message,
  startedAt, finishedAt}; death by signal N reports exit code 128+N;
* deletion: a Pod deleted gracefully (by a test, by the Job controller for
  ``activeDeadlineSeconds`` or backoff, by the namespace controller) gets
  SIGTERM on its process group, SIGKILL after its grace period, a Failed
  status, and is then removed with ``gracePeriodSeconds=0`` as the kubelet
  does; a Pod that disappears is killed at once.

What it does NOT emulate (a real kubelet is needed to test these):

* images, image pulls, the image's entrypoint (``command`` is required) or
  its files: processes see this machine's filesystem and tools;
* isolation: no namespaces, cgroups, resource limits, user ids
  (``runAsUser``, ``readOnlyRootFilesystem`` are ignored: processes run as
  the test user), seccomp, capabilities, network (the pod IP is 127.0.0.1);
* real mounts: a program that finds a file by a path it computes itself
  (not from its args/env) sees the host path, not the volume;
* projected, downwardAPI, hostPath, PVC ... volumes (they are empty
  directories), service-account token files, ``imagePullSecrets``;
* init containers, sidecars, more than one container, restarts
  (``restartPolicy`` is treated as ``Never``), probes, lifecycle hooks,
  ephemeral containers, port forwarding, ``exec``/``attach`` and
  ``kubectl logs``: pod output goes to ``<log_dir>/pods/<ns>_<pod>_<container>.log``
  (:meth:`LocalNode.pod_log`) instead;
* the Node authorizer / NodeRestriction: the harness acts with the admin
  (system:masters) credentials, and it binds as the scheduler would.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime
import http.client
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localenv.kube import KubeAPIError, KubeInfo

DEFAULT_NODE_NAME = "local-harness"
#: The runner writes its termination message to the file named here when set.
TERMINATION_LOG_ENV = "CITUS_BACKUP_TERMINATION_LOG"
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
DEFAULT_SCHEDULER = "default-scheduler"
# The kubelet's limits (pkg/kubelet/container): the termination message file
# is read up to 4 KiB; the fallback to logs takes the last 80 lines, of which
# at most the last 2 KiB.
MAX_TERMINATION_MESSAGE_BYTES = 4 * 1024
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2 * 1024
# Lease duration and renewal as the kubelet's defaults (40 s lease renewed at
# a quarter of it); the node-lifecycle controller's grace period is 50 s.
LEASE_DURATION_SECONDS = 40
HEARTBEAT_SECONDS = 10.0
# How often a pod whose Secret/ConfigMap is missing is retried.
CONFIG_RETRY_SECONDS = 1.0
# Server-side timeout of one pod watch; the watch is then resumed.
WATCH_TIMEOUT_SECONDS = 60
# Seconds for one API call.
REQUEST_TIMEOUT = 10.0
# Default terminationGracePeriodSeconds of a pod.
DEFAULT_GRACE_SECONDS = 30.0
# When the harness itself stops, running processes get this long after SIGTERM.
STOP_GRACE_SECONDS = 2.0
# How often a pod's worker checks for a deletion request while its process runs.
POLL_SECONDS = 0.1
# Exit code reported when the process could not be started (as containerd's
# "StartError"), and for a container killed before it ever ran.
START_ERROR_EXIT_CODE = 128
UNKNOWN_EXIT_CODE = 137
POD_IP = "127.0.0.1"
SMP = "application/strategic-merge-patch+json"
MERGE_PATCH = "application/merge-patch+json"
_PR_SET_PDEATHSIG = 1

log = logging.getLogger("harness.local_node")


class _ConfigError(Exception):
    """The container cannot be created yet; ``reason`` is the waiting reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class _Prepared:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    termination_file: Path


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_micro() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # The pod's worker thread waits for the child for its whole life, so the
    # "parent" (that thread) outlives the process unless the test run dies.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _killpg(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def expand(text: str, variables: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion: ``$$`` escapes, unknown names stay as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "$" and i + 1 < len(text):
            following = text[i + 1]
            if following == "$":
                out.append("$")
                i += 2
                continue
            if following == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(variables.get(name, text[i : end + 1]))
                    i = end + 1
                    continue
        out.append(char)
        i += 1
    return "".join(out)


def path_rewriter(paths: Mapping[str, Path]) -> Callable[[str], str]:
    """Replace container paths (``/tmp``, mount paths) by their host directories.

    A container path matches only as a whole path prefix starting a token:
    ``/tmp`` and ``/tmp/x`` and ``--dir=/tmp/x`` are rewritten, ``/tmpx`` and
    ``/a/tmp`` are not. Longer mount paths win over their parents.
    """
    if not paths:
        return lambda text: text
    ordered = sorted(paths, key=len, reverse=True)
    pattern = re.compile(
        r"(?<![\w.\-/])(" + "|".join(re.escape(p) for p in ordered) + r")(?=/|$|[^\w.\-])"
    )
    return lambda text: pattern.sub(lambda m: str(paths[m.group(1)]), text)


def tail_for_message(output: bytes) -> str:
    """The kubelet's FallbackToLogsOnError text: last 80 lines, at most the last 2 KiB."""
    lines = output.splitlines(keepends=True)[-FALLBACK_LOG_LINES:]
    return b"".join(lines)[-FALLBACK_LOG_BYTES:].decode(errors="replace")


def exit_code(returncode: int) -> int:
    """A container runtime's exit code: death by signal N is 128+N."""
    return 128 - returncode if returncode < 0 else returncode


class _Api:
    """Admin REST calls (JSON dicts in and out) and the pod watch's connection."""

    def __init__(self, kube: KubeInfo) -> None:
        self.server = kube.server
        self.context = kube.admin_context()
        url = urllib.parse.urlsplit(kube.server)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 443

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - our own https:// server URL
            self.server + path,
            data=data,
            method=method,
            headers={"Content-Type": content_type, "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(  # noqa: S310
                req, context=self.context, timeout=REQUEST_TIMEOUT
            ) as response:
                result: dict[str, Any] = json.loads(response.read() or b"{}")
                return result
        except urllib.error.HTTPError as exc:
            raise KubeAPIError(method, path, exc.code, exc.read().decode(errors="replace")) from exc

    def connection(self, read_timeout: float) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(
            self.host, self.port, context=self.context, timeout=read_timeout
        )
        conn.connect()
        return conn


class _WatchExpired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class _ConditionClock:
    """lastTransitionTime per condition type, kept when the status does not change."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, str]] = {}

    def condition(
        self, kind: str, status: bool, reason: str = "", message: str = ""
    ) -> dict[str, Any]:
        value = "True" if status else "False"
        previous = self._seen.get(kind)
        since = previous[1] if previous is not None and previous[0] == value else _now()
        self._seen[kind] = (value, since)
        result: dict[str, Any] = {
            "type": kind,
            "status": value,
            "lastProbeTime": None,
            "lastTransitionTime": since,
        }
        if reason:
            result["reason"] = reason
        if message:
            result["message"] = message
        return result


class _PodRun:
    """One pod on the node: its worker thread, process and deletion request."""

    def __init__(self, node: LocalNode, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        self.node = node
        self.pod = pod
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.container: dict[str, Any] = pod["spec"]["containers"][0]
        self.proc: subprocess.Popen[bytes] | None = None
        self.stop_requested = threading.Event()
        self.grace = DEFAULT_GRACE_SECONDS
        self.deleting = False  # the pod is being deleted (not just the harness stopping)
        self.done = threading.Event()
        self.clock = _ConditionClock()
        self.start_time = _now()
        self.dir = node.base_dir / "pods" / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        self.thread = threading.Thread(
            target=self._run, name=f"local-node pod {self.namespace}/{self.name}", daemon=True
        )

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def request_stop(self, grace: float, *, deleting: bool) -> None:
        self.grace = min(self.grace, grace) if self.stop_requested.is_set() else grace
        self.deleting = self.deleting or deleting
        self.stop_requested.set()

    # --- status

    def _container_status(
        self, state: dict[str, Any], *, ready: bool = False, started: bool = False
    ) -> dict[str, Any]:
        status: dict[str, Any] = {
            "name": self.container["name"],
            "image": self.container.get("image") or "local-node-harness",
            "imageID": "",
            "ready": ready,
            "restartCount": 0,
            "started": started,
            "state": state,
            "lastState": {},
        }
        if self.proc is not None:
            status["containerID"] = f"local-node-harness://{self.uid}/{self.proc.pid}"
        return status

    def _patch_status(
        self,
        phase: str,
        state: dict[str, Any],
        *,
        ready: bool = False,
        started: bool = False,
        not_ready_reason: str = "ContainersNotReady",
    ) -> None:
        not_ready = (
            f"containers with unready status: [{self.container['name']}]" if not ready else ""
        )
        reason = "" if ready else not_ready_reason
        status = {
            "phase": phase,
            "hostIP": POD_IP,
            "hostIPs": [{"ip": POD_IP}],
            "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}],
            "startTime": self.start_time,
            "qosClass": self.pod.get("status", {}).get("qosClass", "BestEffort"),
            "conditions": [
                self.clock.condition("PodReadyToStartContainers", phase in ("Pending", "Running")),
                self.clock.condition("Initialized", True),
                self.clock.condition("ContainersReady", ready, reason, not_ready),
                self.clock.condition("Ready", ready, reason, not_ready),
            ],
            "containerStatuses": [self._container_status(state, ready=ready, started=started)],
        }
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status"
        try:
            self.node.api.request("PATCH", path, {"status": status}, content_type=SMP)
        except KubeAPIError as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report to
                raise

    def _finalize_deletion(self) -> None:
        self.node.delete_pod_now(self.namespace, self.name, self.uid)

    # --- lifecycle

    def _run(self) -> None:
        try:
            self._lifecycle()
        except Exception:
            log.exception("pod %s: harness error", self.key)
        finally:
            if self.proc is not None:
                _killpg(self.proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
            self.done.set()

    def _lifecycle(self) -> None:
        self._patch_status("Pending", {"waiting": {"reason": "ContainerCreating"}})
        last_error: tuple[str, str] | None = None
        while True:
            if self.stop_requested.is_set():
                self._never_started()
                return
            try:
                prepared = self.node.prepare(self.pod, self.dir)
                break
            except _ConfigError as err:
                if (err.reason, err.message) != last_error:
                    log.info("pod %s: %s: %s", self.key, err.reason, err.message)
                    waiting = {"waiting": {"reason": err.reason, "message": err.message}}
                    self._patch_status("Pending", waiting)
                    last_error = (err.reason, err.message)
                self.stop_requested.wait(CONFIG_RETRY_SECONDS)
        self._execute(prepared)

    def _never_started(self) -> None:
        if not self.deleting:
            return  # the harness stops: a dying node reports nothing
        state = {
            "terminated": {
                "exitCode": UNKNOWN_EXIT_CODE,
                "reason": "ContainerStatusUnknown",
                "message": "The container could not be located when the pod was deleted.",
                "startedAt": None,
                "finishedAt": _now(),
            }
        }
        self._patch_status("Failed", state, not_ready_reason="PodCompleted")
        self._finalize_deletion()

    def _execute(self, prepared: _Prepared) -> None:
        log_path = self.node.pod_log_path(self.namespace, self.name, self.container["name"])
        log_path.parent.mkdir(parents=True, exist_ok=True)
        started_at = _now()
        with log_path.open("ab") as output:
            offset = output.tell()
            try:
                self.proc = subprocess.Popen(
                    prepared.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=prepared.env,
                    cwd=prepared.cwd,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, no locks
                )
            except OSError as exc:
                self._start_error(f"cannot start {prepared.argv[0]!r}: {exc}")
                return
        log.info("pod %s: started pid %d: %s", self.key, self.proc.pid, prepared.argv)
        running = {"running": {"startedAt": started_at}}
        self._patch_status("Running", running, ready=True, started=True)
        returncode = self._wait()
        # The container's cgroup dies with its main process: so do its children.
        _killpg(self.proc.pid, signal.SIGKILL)
        finished_at = _now()
        code = exit_code(returncode)
        message = self._termination_message(prepared.termination_file, log_path, offset, code)
        log.info("pod %s: exited with %d", self.key, code)
        if self.stop_requested.is_set() and not self.deleting:
            return  # the harness stops: a dying node reports nothing
        terminated: dict[str, Any] = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": started_at,
            "finishedAt": finished_at,
            "containerID": f"local-node-harness://{self.uid}/{self.proc.pid}",
        }
        if message:
            terminated["message"] = message
        phase = "Succeeded" if code == 0 else "Failed"
        self._patch_status(phase, {"terminated": terminated}, not_ready_reason="PodCompleted")
        if self.deleting:
            self._finalize_deletion()

    def _start_error(self, message: str) -> None:
        log.info("pod %s: StartError: %s", self.key, message)
        now = _now()
        terminated = {
            "exitCode": START_ERROR_EXIT_CODE,
            "reason": "StartError",
            "message": message,
            "startedAt": now,
            "finishedAt": now,
        }
        self._patch_status("Failed", {"terminated": terminated}, not_ready_reason="PodCompleted")
        if self.deleting:
            self._finalize_deletion()

    def _wait(self) -> int:
        assert self.proc is not None
        while True:
            try:
                return self.proc.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                if self.stop_requested.is_set():
                    break
        log.info("pod %s: stopping pid %d (grace %.0fs)", self.key, self.proc.pid, self.grace)
        _killpg(self.proc.pid, signal.SIGTERM)
        started = time.monotonic()
        while True:
            try:
                return self.proc.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                # The grace may shrink meanwhile (a forced deletion).
                if time.monotonic() - started >= self.grace:
                    _killpg(self.proc.pid, signal.SIGKILL)

    def _termination_message(
        self, termination_file: Path, log_path: Path, offset: int, code: int
    ) -> str:
        try:
            with termination_file.open("rb") as handle:
                message = handle.read(MAX_TERMINATION_MESSAGE_BYTES)
        except OSError:
            message = b""
        policy = self.container.get("terminationMessagePolicy", "File")
        if not message and code != 0 and policy == "FallbackToLogsOnError":
            with log_path.open("rb") as handle:
                handle.seek(offset)
                return tail_for_message(handle.read())
        return message.decode(errors="replace")


class LocalNode:
    """The kubelet test double (see the module docstring); :meth:`start` / :meth:`stop`.

    ``namespaces``: where unbound pods are bound to this node (``None``: every
    namespace); :meth:`serve` adds one later. Pods bound to the node are run
    wherever they are. Per-pod directories live under ``base_dir`` (removed
    by :meth:`stop`); the harness log is ``<log_dir>/<name>.log`` and pod
    output ``<log_dir>/pods/``.
    """

    def __init__(
        self,
        kube: KubeInfo,
        base_dir: Path,
        log_dir: Path,
        *,
        name: str = DEFAULT_NODE_NAME,
        namespaces: Iterable[str] | None = None,
        bin_dir: Path | None = None,
    ) -> None:
        self.kube = kube
        self.api = _Api(kube)
        self.base_dir = base_dir
        self.log_dir = log_dir
        self.name = name
        self._namespaces = None if namespaces is None else set(namespaces)
        # Not resolved: the venv's bin dir holds symlinks to the base interpreter.
        self.bin_dir = bin_dir if bin_dir is not None else Path(sys.executable).parent
        self._lock = threading.RLock()
        self._runs: dict[str, _PodRun] = {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watch_socket: socket.socket | None = None
        self._log_handler: logging.Handler | None = None
        self._unschedulable_reported: set[str] = set()
        self._node_uid = ""
        self._started_at = _now()

    # --- public

    def __enter__(self) -> LocalNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalNode:
        """Register the Node and Lease, then watch and run pods in background threads."""
        self.base_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.log_dir / f"{self.name}.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        self._log_handler = handler
        self._register()
        for target, what in ((self._watch_loop, "watch"), (self._heartbeat_loop, "heartbeat")):
            thread = threading.Thread(target=target, name=f"local-node {what}", daemon=True)
            thread.start()
            self._threads.append(thread)
        served = "all" if self._namespaces is None else sorted(self._namespaces)
        log.info("node %s started (namespaces: %s)", self.name, served)
        return self

    def stop(self) -> None:
        """Kill every pod process, stop the threads, delete the Node; safe to call twice."""
        self._stopping.set()
        with self._lock:
            sock = self._watch_socket
            runs = list(self._runs.values())
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for run in runs:
            run.request_stop(STOP_GRACE_SECONDS, deleting=False)
        for run in runs:
            if run.thread.is_alive():
                run.thread.join(timeout=STOP_GRACE_SECONDS + 10)
        for thread in self._threads:
            thread.join(timeout=REQUEST_TIMEOUT + 5)
        with contextlib.suppress(KubeAPIError, OSError):
            self.api.request("DELETE", f"/api/v1/nodes/{self.name}")
        shutil.rmtree(self.base_dir, ignore_errors=True)
        if self._log_handler is not None:
            log.info("node %s stopped", self.name)
            log.removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def leftovers(self) -> list[str]:
        """What :meth:`stop` failed to clean up (processes, threads, files); ideally []."""
        with self._lock:
            runs = list(self._runs.values())
        found = [
            f"pod {run.key}: process {run.proc.pid} still running"
            for run in runs
            if run.proc is not None and run.proc.poll() is None
        ]
        found += [f"thread {t.name} still running" for t in self._threads if t.is_alive()]
        found += [f"thread {r.thread.name} still running" for r in runs if r.thread.is_alive()]
        if self.base_dir.exists():
            found.append(f"{self.base_dir} still exists")
        return found

    def serve(self, namespace: str) -> None:
        """Bind unbound pods of ``namespace`` from now on (and those already there)."""
        with self._lock:
            if self._namespaces is not None:
                self._namespaces.add(namespace)
        listing = self.api.request("GET", f"/api/v1/namespaces/{namespace}/pods")
        for pod in listing.get("items", []):
            self._handle("ADDED", pod)

    def unserve(self, namespace: str) -> None:
        """Stop binding new pods of ``namespace``; pods already bound keep running."""
        with self._lock:
            if self._namespaces is not None:
                self._namespaces.discard(namespace)

    def pod_log_path(self, namespace: str, pod: str, container: str | None = None) -> Path:
        """Where a pod's output goes (``kubectl logs`` cannot reach this node)."""
        if container is None:
            with self._lock:
                runs = list(self._runs.values())
            run = next((r for r in runs if (r.namespace, r.name) == (namespace, pod)), None)
            container = run.container["name"] if run is not None else "*"
        return self.log_dir / "pods" / f"{namespace}_{pod}_{container}.log"

    def pod_log(self, namespace: str, pod: str, container: str | None = None) -> str:
        """A pod's output so far ('' if it has not started)."""
        path = self.pod_log_path(namespace, pod, container)
        matches = sorted(path.parent.glob(path.name)) if "*" in path.name else [path]
        return "".join(p.read_text(errors="replace") for p in matches if p.exists())

    def pid_of(self, namespace: str, pod: str) -> int | None:
        """The pid of a pod's process while the harness knows it."""
        with self._lock:
            for run in self._runs.values():
                if (run.namespace, run.name) == (namespace, pod) and run.proc is not None:
                    return run.proc.pid
        return None

    # --- node registration and heartbeat

    def _register(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": _arch(),
                },
                "annotations": {
                    "citusbackup.io/test-double": "kubelet (tests/harness/local_node.py)",
                },
            },
            "spec": {},
            # Ready from the first moment, as a kubelet registers its node:
            # the node-lifecycle controller may still add (and then remove) a
            # transient not-ready:NoSchedule taint, which binding ignores.
            "status": self._node_status(),
        }
        try:
            created = self.api.request("POST", "/api/v1/nodes", node)
        except KubeAPIError as exc:
            if exc.status != 409:
                raise
            created = self.api.request("GET", f"/api/v1/nodes/{self.name}")
        self._node_uid = created["metadata"]["uid"]
        self._post_node_status()
        self._renew_lease()

    def _node_status(self) -> dict[str, Any]:
        now = _now()
        resources = {
            "cpu": str(os.cpu_count() or 1),
            "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 1024}Ki",
            "pods": "110",
            "ephemeral-storage": "10Gi",
        }

        def condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self._started_at,
            }

        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
                condition("Ready", "True", "KubeletReady", "local node harness is posting ready"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": POD_IP},
                {"type": "Hostname", "address": self.name},
            ],
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": platform.release(),
                "osImage": "local node harness (test double)",
                "containerRuntimeVersion": "local-node-harness://0",
                "kubeletVersion": self.kube.version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": _arch(),
            },
        }

    def _post_node_status(self) -> None:
        self.api.request(
            "PATCH",
            f"/api/v1/nodes/{self.name}/status",
            {"status": self._node_status()},
            content_type=SMP,
        )

    def _renew_lease(self) -> None:
        path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        spec = {
            "holderIdentity": self.name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": _now_micro(),
        }
        try:
            self.api.request(
                "PATCH", f"{path}/{self.name}", {"spec": spec}, content_type=MERGE_PATCH
            )
        except KubeAPIError as exc:
            if exc.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self._node_uid}
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "ownerReferences": [owner]},
                "spec": spec,
            }
            self.api.request("POST", path, lease)

    def _heartbeat_loop(self) -> None:
        while not self._stopping.wait(HEARTBEAT_SECONDS):
            try:
                self._renew_lease()
                self._post_node_status()
            except Exception:
                log.exception("node %s: heartbeat failed", self.name)

    # --- pods

    def _watch_loop(self) -> None:
        version = ""
        while not self._stopping.is_set():
            try:
                if not version:
                    version = self._relist()
                version = self._watch(version)
            except _WatchExpired:
                version = ""
            except Exception:
                if self._stopping.is_set():
                    return
                log.exception("node %s: pod watch failed; listing again", self.name)
                version = ""
                self._stopping.wait(1.0)

    def _relist(self) -> str:
        listing = self.api.request("GET", "/api/v1/pods")
        present = set()
        for pod in listing.get("items", []):
            present.add(pod["metadata"]["uid"])
            self._handle("ADDED", pod)
        with self._lock:
            gone = [run for uid, run in self._runs.items() if uid not in present]
        for run in gone:
            self._handle("DELETED", run.pod)
        version: str = listing["metadata"]["resourceVersion"]
        return version

    def _watch(self, version: str) -> str:
        query = urllib.parse.urlencode(
            {
                "watch": "1",
                "allowWatchBookmarks": "true",
                "resourceVersion": version,
                "timeoutSeconds": str(WATCH_TIMEOUT_SECONDS),
            }
        )
        conn = self.api.connection(read_timeout=WATCH_TIMEOUT_SECONDS + 30)
        with self._lock:
            self._watch_socket = conn.sock
        try:
            if self._stopping.is_set():
                return version
            conn.request("GET", f"/api/v1/pods?{query}", headers={"Accept": "application/json"})
            response = conn.getresponse()
            if response.status != 200:
                body = response.read().decode(errors="replace")
                raise KubeAPIError("WATCH", "/api/v1/pods", response.status, body)
            for line in response:
                if self._stopping.is_set():
                    break
                event = json.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _WatchExpired
                    raise KubeAPIError("WATCH", "/api/v1/pods", obj.get("code", 0), str(obj))
                version = obj["metadata"]["resourceVersion"]
                if kind != "BOOKMARK":
                    self._handle(kind, obj)
            return version
        finally:
            with self._lock:
                self._watch_socket = None
            conn.close()

    def _serves(self, namespace: str) -> bool:
        return self._namespaces is None or namespace in self._namespaces

    def _handle(self, kind: str, pod: dict[str, Any]) -> None:
        if self._stopping.is_set():
            return
        with self._lock:
            try:
                self._handle_locked(kind, pod)
            except Exception:
                meta = pod.get("metadata", {})
                log.exception(
                    "pod %s/%s: cannot handle %s", meta.get("namespace"), meta.get("name"), kind
                )

    def _handle_locked(self, kind: str, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        run = self._runs.get(uid)
        if kind == "DELETED":
            # Kept in _runs so that stop() and leftovers() still see its process.
            if run is not None and not run.done.is_set():
                run.request_stop(0, deleting=False)
            return
        node_name = spec.get("nodeName")
        if not node_name:
            if (
                self._serves(meta["namespace"])
                and spec.get("schedulerName", DEFAULT_SCHEDULER) == DEFAULT_SCHEDULER
                and not meta.get("deletionTimestamp")
            ):
                self._bind(pod)
            return
        if node_name != self.name:
            return
        if meta.get("deletionTimestamp"):
            grace = float(meta.get("deletionGracePeriodSeconds") or 0)
            if run is not None and not run.done.is_set():
                run.request_stop(grace, deleting=True)
            elif grace > 0:
                # Not running here (finished, or never started): confirm the deletion.
                self.delete_pod_now(meta["namespace"], meta["name"], uid)
            return
        phase = pod.get("status", {}).get("phase", "Pending")
        if run is None and phase == "Pending":
            run = _PodRun(self, pod)
            self._runs[uid] = run
            run.thread.start()

    def _bind(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        labels = {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux"}
        labels["kubernetes.io/arch"] = _arch()
        selector: dict[str, str] = pod["spec"].get("nodeSelector") or {}
        mismatch = {k: v for k, v in selector.items() if labels.get(k) != v}
        if mismatch:
            if meta["uid"] not in self._unschedulable_reported:
                self._unschedulable_reported.add(meta["uid"])
                message = (
                    "0/1 nodes are available: 1 node(s) didn't match Pod's node "
                    f"affinity/selector ({mismatch})."
                )
                condition = {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                    "lastProbeTime": None,
                    "lastTransitionTime": _now(),
                }
                self.api.request(
                    "PATCH",
                    f"/api/v1/namespaces/{namespace}/pods/{name}/status",
                    {"status": {"conditions": [condition]}},
                    content_type=SMP,
                )
            return
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace, "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.name},
        }
        try:
            self.api.request("POST", f"/api/v1/namespaces/{namespace}/pods/{name}/binding", binding)
            log.info("pod %s/%s: bound to %s", namespace, name, self.name)
        except KubeAPIError as exc:
            if exc.status not in (404, 409):  # deleted, or already bound
                raise

    def delete_pod_now(self, namespace: str, name: str, uid: str) -> None:
        """What the kubelet does once a deleted pod's containers are gone."""
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": uid},
        }
        try:
            self.api.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body)
        except KubeAPIError as exc:
            if exc.status not in (404, 409):
                raise

    # --- container configuration

    def prepare(self, pod: dict[str, Any], pod_dir: Path) -> _Prepared:
        """Command, environment and directories of the pod's container, or :class:`_ConfigError`."""
        meta, spec = pod["metadata"], pod["spec"]
        namespace = meta["namespace"]
        containers = spec.get("containers") or []
        if len(containers) != 1 or spec.get("initContainers"):
            raise _ConfigError(
                "CreateContainerError",
                "the local node harness runs exactly one container and no init containers",
            )
        container = containers[0]
        if not container.get("command"):
            raise _ConfigError(
                "CreateContainerError",
                "the local node harness needs container.command (it has no image entrypoint)",
            )
        tmp = pod_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {"/tmp": tmp}  # the container's /tmp
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            host = pod_dir / "volumes" / mount["name"]
            self._materialize(namespace, volumes.get(mount["name"], {}), host)
            if mount.get("subPath"):
                host = host / mount["subPath"]
                host.mkdir(parents=True, exist_ok=True)
            mount_path = mount["mountPath"].rstrip("/")
            if mount_path:
                paths[mount_path] = host
        termination_path = (
            container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH
        )
        termination_file = pod_dir / "termination-log"
        termination_file.write_bytes(b"")
        paths[termination_path] = termination_file
        rewrite = path_rewriter(paths)

        env: dict[str, str] = {
            "PATH": os.pathsep.join([str(self.bin_dir), os.environ.get("PATH", "/usr/bin:/bin")]),
            "HOSTNAME": meta["name"],
            "HOME": str(pod_dir),  # the container's "/"
            "KUBERNETES_SERVICE_HOST": self.api.host,
            "KUBERNETES_SERVICE_PORT": str(self.api.port),
        }
        declared = self._environment(pod, container, rewrite)
        env.update(declared)
        env.setdefault("TMPDIR", str(paths["/tmp"]))
        env.setdefault(TERMINATION_LOG_ENV, str(termination_file))

        argv = [
            expand(rewrite(a), env) for a in [*container["command"], *(container.get("args") or [])]
        ]
        if "/" not in argv[0]:
            found = shutil.which(argv[0], path=env.get("PATH", ""))
            if found is None:
                raise _ConfigError(
                    "RunContainerError", f'exec: "{argv[0]}": executable file not found in $PATH'
                )
            argv[0] = found
        cwd = pod_dir
        if container.get("workingDir"):
            cwd = Path(expand(rewrite(container["workingDir"]), env))
            if not cwd.is_dir():
                raise _ConfigError(
                    "RunContainerError", f"working directory {cwd} does not exist on this machine"
                )
        return _Prepared(argv=argv, env=env, cwd=cwd, termination_file=termination_file)

    def _environment(
        self, pod: dict[str, Any], container: dict[str, Any], rewrite: Callable[[str], str]
    ) -> dict[str, str]:
        namespace = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "secretRef" in source:
                ref = source["secretRef"]
                data = self._object_data(namespace, "Secret", ref["name"], ref.get("optional"))
            else:
                ref = source["configMapRef"]
                data = self._object_data(namespace, "ConfigMap", ref["name"], ref.get("optional"))
            for key, raw in (data or {}).items():
                env[prefix + key] = raw.decode(errors="surrogateescape")
        for var in container.get("env") or []:
            value_from = var.get("valueFrom")
            if value_from is None:
                env[var["name"]] = expand(rewrite(var.get("value", "")), env)
                continue
            value = self._value_from(pod, value_from)
            if value is not None:
                env[var["name"]] = value
        return env

    def _value_from(self, pod: dict[str, Any], source: dict[str, Any]) -> str | None:
        namespace = pod["metadata"]["namespace"]
        for field_name, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
            if field_name in source:
                ref = source[field_name]
                optional = bool(ref.get("optional"))
                data = self._object_data(namespace, kind, ref["name"], optional)
                if data is None:
                    return None
                if ref["key"] not in data:
                    if optional:
                        return None
                    raise _ConfigError(
                        "CreateContainerConfigError",
                        f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}",
                    )
                return data[ref["key"]].decode(errors="surrogateescape")
        if "fieldRef" in source:
            return _field(pod, source["fieldRef"]["fieldPath"])
        raise _ConfigError(
            "CreateContainerConfigError",
            f"the local node harness does not support env valueFrom {sorted(source)}",
        )

    def _object_data(
        self, namespace: str, kind: str, name: str, optional: bool | None
    ) -> dict[str, bytes] | None:
        """A Secret's or ConfigMap's data as bytes; None if missing and optional."""
        resource = "secrets" if kind == "Secret" else "configmaps"
        try:
            obj = self.api.request("GET", f"/api/v1/namespaces/{namespace}/{resource}/{name}")
        except KubeAPIError as exc:
            if exc.status != 404:
                raise
            if optional:
                return None
            raise _ConfigError(
                "CreateContainerConfigError", f'{kind.lower()} "{name}" not found'
            ) from exc
        if kind == "Secret":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    def _materialize(self, namespace: str, volume: dict[str, Any], host: Path) -> None:
        """Build a volume's content in ``host`` (Secret/ConfigMap files; others empty)."""
        if "secret" in volume or "configMap" in volume:
            shutil.rmtree(host, ignore_errors=True)
        host.mkdir(parents=True, exist_ok=True)
        if "secret" in volume:
            source, kind, name = volume["secret"], "Secret", volume["secret"]["secretName"]
        elif "configMap" in volume:
            source, kind, name = volume["configMap"], "ConfigMap", volume["configMap"]["name"]
        else:
            if "emptyDir" not in volume:
                log.warning("volume %s: not emulated, an empty directory", volume.get("name"))
            return
        try:
            data = self._object_data(namespace, kind, name, source.get("optional"))
        except _ConfigError as err:
            raise _ConfigError(
                "ContainerCreating",
                f"MountVolume.SetUp failed for volume {volume['name']!r}: {err}",
            ) from err
        if data is None:
            return
        default_mode = source.get("defaultMode", 0o644)
        items = source.get("items") or [{"key": k, "path": k} for k in sorted(data)]
        for item in items:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                raise _ConfigError(
                    "ContainerCreating",
                    f"MountVolume.SetUp failed for volume {volume['name']!r}: "
                    f"configmap/secret references non-existent key {item['key']}",
                )
            target = host / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data[item["key"]])
            target.chmod(item.get("mode", default_mode))


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _field(pod: dict[str, Any], path: str) -> str:
    """A ``fieldRef`` value as the kubelet computes it."""
    meta, spec = pod["metadata"], pod["spec"]
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": POD_IP,
        "status.podIP": POD_IP,
    }
    if path in simple:
        return str(simple[path])
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise _ConfigError(
        "CreateContainerConfigError", f"the local node harness does not support fieldRef {path}"
    )
