"""A real single-node Kubernetes on this machine: kubelet, containerd, runc,
CNI bridge, kube-proxy and kube-scheduler next to the control plane of
:mod:`localenv.kube`.

Why not kind: kind needs a node image from a registry, which these machines
cannot reach. Every piece here is either built from the Go module proxy
(kubelet, kube-scheduler, kube-proxy: ``hack/build-components.sh
kubernetes-node``) or comes from Debian (containerd, runc, the CNI plugins,
iptables, conntrack), and the images are built locally
(:mod:`localenv.images`), so pods run the project's real image.

Networking, in one picture::

    pod 10.244.0.x --(veth)-- bridge cbo0 10.244.0.1 == the node address
                                 |  kube-apiserver, PostgreSQL, MinIO listen here
                                 |  kube-proxy (iptables): 10.0.0.1:443 -> 10.244.0.1:<apiserver>

The node's address is the bridge's own address, created before anything
starts, so the servers under test can listen on it and pods reach them
directly (no NAT, no masquerading, nothing on eth0). Pods reach the API
server through the ``kubernetes`` Service as on any cluster: kube-proxy
programs the ClusterIP. There is no cluster DNS: in-cluster clients use
``KUBERNETES_SERVICE_HOST``, and tests name PostgreSQL and MinIO by address.

kube-proxy's chains and the bridge are machine-wide, so one local node runs
per machine: :class:`NodeLock` refuses a second one (``make demo`` while
``make test`` runs its e2e tier, say) with a message saying which runs.

Teardown: pods are deleted through the API first so the kubelet tears down
their sandboxes (CNI DEL) itself; whatever is left is killed through ``ctr``;
the kubelet's mounts are undone, kube-proxy removes its rules (``--cleanup``),
the kubelet's own iptables chains are removed, and the bridge goes
(:func:`teardown`, shared by the tests and ``make demo-down``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from localenv import binaries
from localenv.kube import (
    CLUSTER_DOMAIN,
    LOOPBACK,
    PKI,
    KubeAPIError,
    KubeInfo,
    _cert_user,
    _https_get,
    write_kubeconfig,
)
from localenv.mounts import PROC_MOUNTS, mounts_below, unmount_below
from localenv.process import ManagedProcess, StartError, free_port

# The bridge, and the pod network behind it. 10.244/16 is the range kubeadm
# and flannel examples use; a /24 is one node's worth of pods.
BRIDGE = "cbo0"
POD_CIDR = "10.244.0.0/24"
PREFIX_LEN = 24
# The bridge's address: the pods' gateway and the node's InternalIP. The API
# server, PostgreSQL and MinIO listen on it so that pods reach them.
NODE_IP = "10.244.0.1"
NODE_NAME = "localnode"
CNI_NETWORK = "citus-backup-local"
# Debian's CNI plugins and runc.
CNI_BIN_DIR = Path("/usr/lib/cni")
# Runtime state (sockets, the lock) lives on /run: short paths for unix
# sockets (108-byte limit), gone after a reboot like the processes.
RUN_DIR = Path("/run/citus-backup-operator")
LOCK_FILE = RUN_DIR / "node.lock"
# Who started the running node ("make demo", "the e2e tier"), for the refusal message.
OWNER_FILE = RUN_DIR / "node.owner"
# containerd's namespace for CRI (kubelet) containers.
K8S_NAMESPACE = "k8s.io"
# Seconds the kubelet gets to tear pods down before leftovers are killed.
POD_TEARDOWN_TIMEOUT = 30.0
# Seconds for the node to register and turn Ready (first start pulls nothing,
# but cAdvisor and the PLEG need a few cycles).
NODE_READY_TIMEOUT = 120.0
# Debian packages this module runs (the Makefile's deps step installs them).
PACKAGES = ("containerd", "runc", "containernetworking-plugins", "iptables", "conntrack")


def _run(argv: list[str], *, check: bool = True) -> str:
    """Run a short host command (ip, ctr, ...); its stdout. On failure: raise
    StartError naming it with ``check``, else return ""."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise StartError(
            f"`{' '.join(argv)}` exited {done.returncode}: {(done.stderr or done.stdout).strip()}"
        )
    return done.stdout if done.returncode == 0 else ""


def missing_prerequisites() -> list[str]:
    """What this machine lacks to run a node, in words (empty: nothing)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (kubelet, containerd and the bridge need it)")
    for exe in ("containerd", "ctr", "runc", "iptables", "conntrack", "ip"):
        if (
            shutil.which(exe, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            is None
        ):
            problems.append(f"`{exe}` not found (apt-get install {' '.join(PACKAGES)})")
    for plugin in ("bridge", "host-local", "loopback"):
        if not (CNI_BIN_DIR / plugin).exists():
            problems.append(f"CNI plugin {CNI_BIN_DIR / plugin} not found")
    return problems


class NodeLock:
    """One local node per machine (kube-proxy's chains and the bridge are global)."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        handle = LOCK_FILE.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StartError(
                f"a local node already runs on this machine ({holder}); only one can "
                f"(stop it first, e.g. `make demo-down`); lock {LOCK_FILE}"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{self.owner}, pid {os.getpid()}\n")
        handle.flush()
        self._file = handle
        # A detached node (make demo) holds no lock once `up` returns: its
        # containerd answering on the socket is what says it runs.
        socket = RUN_DIR / "containerd" / "containerd.sock"
        if socket.exists() and _answers(socket):
            holder = OWNER_FILE.read_text().strip() if OWNER_FILE.exists() else "unknown"
            self.release()
            raise StartError(
                f"a local node already runs on this machine (started by {holder}); only one "
                "can (kube-proxy's chains and the bridge are machine-wide): stop it first, "
                "e.g. `make demo-down`"
            )
        OWNER_FILE.write_text(f"{self.owner}, pid {os.getpid()}\n")

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _answers(socket: Path) -> bool:
    """Does a containerd answer on ``socket``?"""
    try:
        done = subprocess.run(
            ["ctr", "--address", str(socket), "version"], capture_output=True, check=False
        )
    except OSError:
        return False
    return done.returncode == 0


# --- the bridge ------------------------------------------------------------------


def bridge_up() -> None:
    """Create the bridge with the node address (idempotent).

    Created here rather than by the CNI bridge plugin on the first pod, so the
    servers can listen on NODE_IP before any pod exists.
    """
    if not Path(f"/sys/class/net/{BRIDGE}").exists():
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    addresses = _run(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE])
    if f"{NODE_IP}/" not in addresses:
        _run(["ip", "addr", "add", f"{NODE_IP}/{PREFIX_LEN}", "dev", BRIDGE])
    _run(["ip", "link", "set", BRIDGE, "up"])
    # Pod -> ClusterIP traffic is routed through the node; make sure it may be.
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")


def bridge_down() -> None:
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        _run(["ip", "link", "delete", BRIDGE], check=False)


def cni_config() -> dict[str, Any]:
    """The pod network: the bridge plugin on our bridge, host-local IPAM.

    No ipMasq: pods only talk to the node's own address (servers under test,
    the API server behind its ClusterIP), so nothing needs NAT, and no rule
    can leak onto the machine's real interface.
    """
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    # Allocations live and die with the node's runtime state,
                    # so addresses of an interrupted run never leak into the next.
                    "dataDir": str(RUN_DIR / "cni-ipam"),
                },
            }
        ],
    }


# --- containerd ------------------------------------------------------------------


def containerd_root() -> Path:
    """Persistent image store: imported images survive runs (warm starts import nothing)."""
    return binaries.cache_dir() / "containerd"


def containerd_config(
    *, root: Path, state: Path, socket: Path, cni_conf_dir: Path, sandbox_image: str
) -> str:
    """containerd 1.6 config (version 2) for CRI with runc, cgroupfs and our CNI."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""\
version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{state / "opt"}"

[{cri}]
  # Built locally (localenv.images); never pulled.
  sandbox_image = "{sandbox_image}"
  enable_selinux = false
  # The kubelet asks for negative oom_score_adj (-998 for sandboxes), which
  # needs CAP_SYS_RESOURCE; this machine's root lacks it and runc then fails
  # with "failed to update /proc/self/oom_score_adj: Permission denied".
  # Clamp to containerd's own score instead (what rootless setups do).
  restrict_oom_score_adj = true
  # This machine runs cgroup v1 and no systemd: cgroupfs, like the kubelet.
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni_conf_dir}"
"""


# --- kubelet, scheduler, proxy configs -----------------------------------------------


def kubelet_config(
    *,
    pki: PKI,
    serving_cert: Path,
    serving_key: Path,
    runtime_socket: Path,
    port: int,
    healthz_port: int,
) -> dict[str, Any]:
    """KubeletConfiguration for one node on this machine.

    Choices that differ from kubeadm's defaults, and why:
    - ``failCgroupV1: false``: this machine runs cgroup v1 (kubelet 1.34 still
      supports it, in maintenance mode).
    - ``cgroupDriver: cgroupfs``: no systemd here (containerd agrees).
    - ``failSwapOn: false``: harmless on machines with swap.
    - tiny eviction thresholds: a shared disk that is 90 % full must not
      taint the node and evict the pods under test.
    - kubelet API: client certificates from our CA, authorization
      AlwaysAllow (only the API server holds such a certificate).
    """
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": LOOPBACK,
        "healthzPort": healthz_port,
        "tlsCertFile": str(serving_cert),
        "tlsPrivateKeyFile": str(serving_key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(pki.ca.cert)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{runtime_socket}",
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": "/etc/resolv.conf",
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        # Never garbage-collect the locally built images: they cannot be pulled.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "maxPods": 50,
    }


def kube_proxy_config(*, kubeconfig: Path, healthz_port: int, metrics_port: int) -> dict[str, Any]:
    """KubeProxyConfiguration: iptables mode, no conntrack sysctl tuning.

    The conntrack zeros keep kube-proxy from rewriting machine-wide sysctls
    (nf_conntrack_max and timeouts) it would otherwise size for a server.
    """
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "bindAddress": NODE_IP,
        "clusterCIDR": POD_CIDR,
        "healthzBindAddress": f"{LOOPBACK}:{healthz_port}",
        "metricsBindAddress": f"{LOOPBACK}:{metrics_port}",
        # Node ports on 127.0.0.1 would need the machine-wide route_localnet.
        "iptables": {"localhostNodePorts": False},
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }


def _write_yaml(path: Path, data: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False))
    return path


# --- the node ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeInfo:
    """How to reach the node's parts (JSON-serializable via ``to_dict``)."""

    name: str
    address: str
    pod_cidr: str
    containerd_socket: str

    def to_dict(self) -> dict[str, str]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> NodeInfo:
        return cls(**{k: data[k] for k in ("name", "address", "pod_cidr", "containerd_socket")})


@dataclass
class LocalNode:
    """containerd + kubelet + kube-proxy + kube-scheduler for a running control plane.

    Start order: containerd, images (the caller loads them between
    :meth:`start_runtime` and :meth:`start_kubernetes`), then the scheduler,
    kube-proxy and the kubelet; ready when the Node is Ready.
    """

    kube: KubeInfo
    pki: PKI
    base_dir: Path
    log_dir: Path
    # The pod sandbox ("pause") image; it must be loaded, it is never pulled.
    sandbox_image: str
    die_with_parent: bool = True
    processes: dict[str, ManagedProcess] = field(default_factory=dict)

    @property
    def runtime_dir(self) -> Path:
        return RUN_DIR / "containerd"

    @property
    def kubelet_dir(self) -> Path:
        """The kubelet's --root-dir (pod volumes are mounted below it)."""
        return self.base_dir / "kubelet"

    @property
    def containerd_socket(self) -> Path:
        return self.runtime_dir / "containerd.sock"

    @property
    def info(self) -> NodeInfo:
        return NodeInfo(NODE_NAME, NODE_IP, POD_CIDR, str(self.containerd_socket))

    def _process(
        self, name: str, argv: list[str], env: Mapping[str, str] | None = None
    ) -> ManagedProcess:
        process = ManagedProcess(
            name,
            argv,
            self.log_dir / f"{name}.log",
            env=env,
            die_with_parent=self.die_with_parent,
        )
        self.processes[name] = process
        process.start()
        return process

    def _kubeconfig(self, name: str, cn: str, org: str | None = None) -> Path:
        pair = self.pki.issue(name, cn, org=org, client=True)
        return write_kubeconfig(
            self.base_dir / f"{name}.kubeconfig",
            server=self.kube.server,
            ca_cert=self.pki.ca.cert,
            user_name=cn,
            user=_cert_user(pair),
        )

    def start_runtime(self) -> None:
        """containerd with CRI, on the bridge's CNI network."""
        if problems := missing_prerequisites():
            raise StartError("local node: " + "; ".join(problems))
        self.base_dir.mkdir(parents=True, exist_ok=True)
        cni_dir = self.base_dir / "cni"
        cni_dir.mkdir(exist_ok=True)
        (cni_dir / "10-citus-backup.conflist").write_text(json.dumps(cni_config(), indent=2))
        unmount_below(self.runtime_dir)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        shutil.rmtree(RUN_DIR / "cni-ipam", ignore_errors=True)
        self.runtime_dir.mkdir(parents=True)
        root = containerd_root()
        root.mkdir(parents=True, exist_ok=True)
        config = self.base_dir / "containerd.toml"
        config.write_text(
            containerd_config(
                root=root,
                state=self.runtime_dir / "state",
                socket=self.containerd_socket,
                cni_conf_dir=cni_dir,
                sandbox_image=self.sandbox_image,
            )
        )
        process = self._process("containerd", ["/usr/bin/containerd", "--config", str(config)])
        process.wait_ready(
            lambda: (
                subprocess.run(
                    ["ctr", "--address", str(self.containerd_socket), "version"],
                    capture_output=True,
                    check=False,
                ).returncode
                == 0
            )
        )
        # Containers of an earlier run that ended without a teardown.
        remove_containers(self.containerd_socket)

    def start_kubernetes(self) -> NodeInfo:
        """kube-scheduler, kube-proxy and the kubelet; returns once the Node is Ready."""
        exe = {name: binaries.binary(name) for name in ("kubelet", "kube-scheduler", "kube-proxy")}
        self._start_scheduler(exe["kube-scheduler"])
        # kube-proxy reports healthy only once it has synced rules for a
        # registered Node, so it is checked after the kubelet's Node is Ready.
        proxy_ready = self._start_proxy(exe["kube-proxy"])
        self._start_kubelet(exe["kubelet"])
        self.processes["kube-proxy"].wait_ready(proxy_ready)
        return self.info

    def _start_scheduler(self, exe: Path) -> None:
        kubeconfig = self._kubeconfig("scheduler", "system:kube-scheduler")
        # A serving certificate from our CA, as kube-controller-manager has, so
        # the readiness probe verifies TLS instead of trusting a self-signed one.
        serving = self.pki.issue(
            "scheduler-serving", "kube-scheduler", sans=(LOOPBACK, "localhost"), server=True
        )
        port = free_port()
        process = self._process(
            "kube-scheduler",
            [
                str(exe),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={port}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )
        url = f"https://{LOOPBACK}:{port}/healthz"
        context = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        process.wait_ready(lambda: _https_get(url, context) == "ok")

    def _start_proxy(self, exe: Path) -> Callable[[], bool]:
        kubeconfig = self._kubeconfig("kube-proxy", "system:kube-proxy")
        healthz = free_port()
        config = _write_yaml(
            self.base_dir / "kube-proxy.yaml",
            kube_proxy_config(
                kubeconfig=kubeconfig, healthz_port=healthz, metrics_port=free_port()
            ),
        )
        self._process(
            "kube-proxy",
            [str(exe), f"--config={config}"],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        url = f"http://{LOOPBACK}:{healthz}/healthz"
        return lambda: urllib.request.urlopen(url, timeout=2).status == 200

    def _start_kubelet(self, exe: Path) -> None:
        kubeconfig = self._kubeconfig("kubelet", f"system:node:{NODE_NAME}", "system:nodes")
        serving = self.pki.issue(
            "kubelet-serving", NODE_NAME, sans=(NODE_IP, NODE_NAME), server=True
        )
        port, healthz = free_port(), free_port()
        config = _write_yaml(
            self.base_dir / "kubelet.yaml",
            kubelet_config(
                pki=self.pki,
                serving_cert=serving.cert,
                serving_key=serving.key,
                runtime_socket=self.containerd_socket,
                port=port,
                healthz_port=healthz,
            ),
        )
        root = self.kubelet_dir
        process = self._process(
            "kubelet",
            [
                str(exe),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={root}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                f"--volume-plugin-dir={root / 'volume-plugins'}",
                "--v=1",
            ],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.base_dir)},
        )
        process.wait_ready(self._node_ready, timeout=NODE_READY_TIMEOUT)

    def _node_ready(self) -> bool:
        try:
            node = self.kube.request("GET", f"/api/v1/nodes/{NODE_NAME}")
        except KubeAPIError:
            return False
        conditions = node.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    # --- teardown ------------------------------------------------------------------

    def stop(self) -> None:
        """Stop pods, the node's processes, kube-proxy's rules; safe to call twice."""

        def running(name: str) -> bool:
            process = self.processes.get(name)
            return process is not None and process.proc is not None and process.proc.poll() is None

        def stop(name: str) -> None:
            if name in self.processes:
                self.processes[name].stop()

        teardown(
            self.kube,
            self.containerd_socket,
            self.kubelet_dir,
            running=running,
            stop=stop,
            proxy_ran="kube-proxy" in self.processes,
        )

    def leftovers(self) -> list[str]:
        found = [
            f"{p.name} (pid {p.pid}) still running"
            for p in self.processes.values()
            if p.proc is not None and p.proc.poll() is None
        ]
        shims = _run(
            ["pgrep", "-f", f"containerd-shim.*-address {self.containerd_socket}"], check=False
        )
        found += [f"containerd shim pid {pid} still running" for pid in shims.split()]
        mounts = PROC_MOUNTS.read_text()
        for root in (self.runtime_dir, self.base_dir):
            found += [f"{point} still mounted" for point in mounts_below(mounts, root)]
        return found


# The node's processes that go before containerd, kubelet first (it must not
# restart containers that are being removed).
NODE_WORKERS = ("kubelet", "kube-proxy", "kube-scheduler")


def teardown(
    kube: KubeInfo,
    socket: Path,
    kubelet_dir: Path,
    *,
    running: Callable[[str], bool],
    stop: Callable[[str], None],
    proxy_ran: bool = True,
) -> None:
    """The node's stop sequence, whether its processes are our children (tests) or
    recorded PIDs of a detached node (``make demo-down``): drain the pods while the
    kubelet can still tear them down, stop the kubelet, kube-proxy and the
    scheduler, remove leftover containers, stop containerd, then clean the host.
    ``running(name)``/``stop(name)`` answer for and stop one process by name."""
    runtime_up = running("containerd")
    if runtime_up and running("kubelet"):
        drain(kube, socket)
    for name in NODE_WORKERS:
        stop(name)
    if runtime_up:
        remove_containers(socket)
    stop("containerd")
    cleanup_host(kubelet_dir=kubelet_dir, proxy_ran=proxy_ran)


def _ctr(socket: Path, *args: str) -> str:
    return _run(["ctr", "--address", str(socket), "-n", K8S_NAMESPACE, *args], check=False)


def drain(kube: KubeInfo, socket: Path, timeout: float = POD_TEARDOWN_TIMEOUT) -> None:
    """Delete every pod through the API so the kubelet stops their sandboxes itself
    (CNI DEL, unmounts), then wait until containerd runs no task or ``timeout`` passes."""
    with contextlib.suppress(Exception):
        for ns in kube.request("GET", "/api/v1/namespaces")["items"]:
            name = ns["metadata"]["name"]
            with contextlib.suppress(KubeAPIError):
                kube.request("DELETE", f"/api/v1/namespaces/{name}/pods?gracePeriodSeconds=0")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _ctr(socket, "tasks", "ls", "-q").split():
        time.sleep(0.5)


def remove_containers(socket: Path) -> None:
    """Kill and remove whatever containers are left (the kubelet is gone by now)."""
    for task in _ctr(socket, "tasks", "ls", "-q").split():
        _ctr(socket, "tasks", "kill", "-s", "SIGKILL", task)
        _ctr(socket, "tasks", "rm", "-f", task)
    for container in _ctr(socket, "containers", "ls", "-q").split():
        _ctr(socket, "containers", "rm", container)


def cleanup_host(*, kubelet_dir: Path, proxy_ran: bool = True) -> None:
    """Undo what the node did to the machine: pod netns, CRI mounts, the kubelet's
    mounts (its root dir, which it bind-mounts onto itself, and pod volumes such as
    the projected ServiceAccount token tmpfs), kube-proxy's iptables chains, runtime
    state. The bridge goes separately (:func:`bridge_down`), after the servers
    listening on it."""
    unmount_below(kubelet_dir)
    _cleanup_netns()
    runtime = RUN_DIR / "containerd"
    unmount_below(runtime)
    if proxy_ran:
        with contextlib.suppress(StartError):
            proxy = binaries.binary("kube-proxy", build=False)
            _run([str(proxy), "--cleanup"], check=False)
    _remove_kubelet_chains()
    shutil.rmtree(runtime, ignore_errors=True)
    shutil.rmtree(RUN_DIR / "cni-ipam", ignore_errors=True)
    OWNER_FILE.unlink(missing_ok=True)


# What the kubelet adds to the machine's iptables (and kube-proxy --cleanup does
# not remove): the KUBE-FIREWALL chain (dropping non-local traffic to 127/8) hooked
# into INPUT and OUTPUT, and marker chains. (table, chain, hooks jumping to it)
KUBELET_CHAINS = (
    ("filter", "KUBE-FIREWALL", ("INPUT", "OUTPUT")),
    ("filter", "KUBE-KUBELET-CANARY", ()),
    ("nat", "KUBE-KUBELET-CANARY", ()),
    ("mangle", "KUBE-KUBELET-CANARY", ()),
    ("mangle", "KUBE-IPTABLES-HINT", ()),
)


def _remove_kubelet_chains() -> None:
    for tool in ("iptables", "ip6tables"):
        for table, chain, hooks in KUBELET_CHAINS:
            for hook in hooks:
                _run([tool, "-t", table, "-D", hook, "-j", chain], check=False)
            _run([tool, "-t", table, "-F", chain], check=False)
            _run([tool, "-t", table, "-X", chain], check=False)


def _cleanup_netns() -> None:
    """Pod network namespaces whose sandbox the kubelet did not get to remove
    (containerd's CRI names them cni-<uuid> under /var/run/netns)."""
    for path in Path("/var/run/netns").glob("cni-*"):
        _run(["umount", str(path)], check=False)
        with contextlib.suppress(OSError):
            path.unlink()
