"""The e2e tier's container images, built on this machine without a registry.

The e2e node (:mod:`localenv.node`) runs pods with containerd, which would
normally pull ``debian:bookworm-slim`` (the project image's base) and
``registry.k8s.io/pause`` (the pod sandbox) from a registry. These machines
reach PyPI, a Debian mirror and the Go module proxy, but no container
registry, so everything is built here:

1. **Base image.** ``debootstrap --variant=minbase`` of Debian bookworm is
   imported into a private dockerd as ``debian:bookworm-slim``. It is a
   stand-in for the registry's image of that name, close enough for the
   project's unchanged Dockerfile (apt, python3, pip). When the machine trusts
   extra CAs (``/usr/local/share/ca-certificates/*.crt``, e.g. a
   TLS-intercepting egress proxy's), they, the machine's CA bundle and an
   ``/etc/pip.conf`` naming that bundle go into the rootfs, so that pip in the
   build trusts the proxy; the Dockerfile's ``ca-certificates`` install then
   folds them into the image's own bundle. On a machine with a registry none
   of this is used: ``docker build`` there pulls the real image.
2. **dockerd** runs only while building: a private daemon (data root in the
   cache, sockets under :data:`RUN_DIR`) on a private containerd, both
   :class:`~localenv.process.ManagedProcess` children that die with the
   caller, stopped (SIGTERM, then wait) when the build is done.
3. **Pause image.** ``hack/pause/main.go``, our own few-line sandbox program,
   is built statically with the Go toolchain into the cache, and then into
   :data:`PAUSE_IMAGE` (``FROM scratch``, ``hack/pause/Dockerfile``).
4. **Project image.** ``docker build --network host -t`` :data:`PROJECT_IMAGE`
   of the repository, with its unchanged Dockerfile.
5. **containerd import.** ``docker save | ctr images import`` into the node's
   containerd (namespace ``k8s.io``), unpacked for its snapshotter so the
   kubelet starts the images without pulling (see :func:`load_into_containerd`).

Cache (``<cache>`` is :func:`localenv.binaries.cache_dir`): ``images/debian-
bookworm-slim-<stamp>/rootfs`` (the debootstrapped tree; the stamp hashes the
suite, mirror, recipe and the CA files put in it), ``images/pause-<stamp>/``
(the pause binary; the stamp hashes ``hack/pause``), ``docker/`` (dockerd's
images and layer cache) and ``docker-containerd/``. Each cached directory is
built under a temporary name and renamed into place with a ``.complete``
marker inside, so an interrupted build is never trusted.

Costs (measured on a 2-core machine): a cold run takes about a minute
(debootstrap ~20 s, base import ~1 s, Go build, project image ~30 s with apt
and pip, containerd import ~11 s). A warm run starts dockerd and containerd
(~0.3 s), lets ``docker build`` confirm its layer cache (~0.1 s each),
compares image IDs with what containerd holds and imports nothing: ~1 s in
all. A change under ``operator/`` reruns the Dockerfile's pip step (~20 s)
and re-imports the project image (~11 s).

Needs root (debootstrap, dockerd, ctr) and the Debian packages in
:data:`PACKAGES`, plus Go (``go`` on PATH or ``/usr/local/go/bin/go``) on a
cold run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from localenv.binaries import HACK_DIR, cache_dir
from localenv.mounts import unmount_below
from localenv.process import ManagedProcess, StartError, stop_pid, tail

# --- what is built ------------------------------------------------------------------

# The tag manifests/deployment.yaml (and the Jobs the operator creates) use.
PROJECT_IMAGE = "citus-backup-operator:dev"
# Bump when hack/pause/main.go changes behaviour (a changed binary is rebuilt
# and re-imported anyway; the tag only names it for containerd's sandbox_image).
PAUSE_VERSION = "1.0"
PAUSE_IMAGE = f"localhost/citus-backup-operator/pause:{PAUSE_VERSION}"
# The base the project's Dockerfile names (FROM debian:bookworm-slim).
BASE_IMAGE = "debian:bookworm-slim"

# --- how the base is made ---------------------------------------------------------------

# Debian release: the one the Dockerfile's base is (PostgreSQL 15 client tools).
SUITE = "bookworm"
# Plain http on purpose: apt verifies the Release file's signature
# (debian-archive-keyring), and http avoids needing a CA inside a bare rootfs;
# deb.debian.org is also the mirror the real debian images' sources.list names.
MIRROR = "http://deb.debian.org/debian"
# minbase: essential packages and apt only, the closest to the -slim images.
VARIANT = "minbase"
# Bump when the rootfs recipe below changes: a new stamp makes a new rootfs.
BASE_RECIPE = 1
# Label on the imported base naming its stamp: a different stamp re-imports.
BASE_STAMP_LABEL = "io.citus-backup-operator.base-stamp"
# The machine's extra CAs and its bundle (Debian's update-ca-certificates layout).
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PIP_CONF = "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"

# --- tools and places ---------------------------------------------------------------------

REPO_DIR = HACK_DIR.parent
PAUSE_SRC = HACK_DIR / "pause"
PAUSE_SOURCES = ("main.go", "go.mod", "Dockerfile")
# Debian's binaries by full path: /usr/local/bin/docker may be another client.
DOCKER = Path("/usr/bin/docker")
DOCKERD = Path("/usr/sbin/dockerd")
CONTAINERD = Path("/usr/bin/containerd")
CTR = Path("/usr/bin/ctr")
DEBOOTSTRAP = Path("/usr/sbin/debootstrap")
TAR = Path("/usr/bin/tar")
GO_FALLBACK = Path("/usr/local/go/bin/go")
# Debian packages this module runs (the Makefile's deps step installs them).
PACKAGES = ("debootstrap", "debian-archive-keyring", "docker.io", "containerd", "runc", "tar")
# Sockets and runtime state: short paths (unix sockets have a 108-byte limit),
# on /run like localenv.node's (which owns RUN_DIR's sibling containerd/).
RUN_DIR = Path("/run/citus-backup-operator/docker")
# containerd's namespace for CRI (kubelet) images.
K8S_NAMESPACE = "k8s.io"
# The snapshotter localenv.node's containerd gives CRI (its default, too).
DEFAULT_SNAPSHOTTER = "overlayfs"
# Seconds dockerd and its containerd get to answer.
DAEMON_READY_TIMEOUT = 60.0


def _say(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def images_dir() -> Path:
    return cache_dir() / "images"


# --- pure helpers (unit-tested) ------------------------------------------------------------


def _digest(parts: Sequence[bytes]) -> str:
    sha = hashlib.sha256()
    for part in parts:
        # Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
        sha.update(len(part).to_bytes(8, "big"))
        sha.update(part)
    return sha.hexdigest()[:16]


def base_stamp(ca_files: Mapping[str, bytes], ca_bundle: bytes | None) -> str:
    """Key of the base rootfs: recipe, suite, mirror and the CA material put in it.

    ``ca_files`` maps each extra CA's path relative to :data:`LOCAL_CA_DIR` to
    its content; without any, the bundle is not put in and does not count.
    """
    parts = [f"{BASE_RECIPE}|{SUITE}|{VARIANT}|{MIRROR}".encode()]
    if ca_files:
        for name in sorted(ca_files):
            parts += [name.encode(), ca_files[name]]
        parts.append(ca_bundle or b"")
    return _digest(parts)


def source_stamp(files: Mapping[str, bytes]) -> str:
    """Key of a build from its source files (name -> content)."""
    parts: list[bytes] = []
    for name in sorted(files):
        parts += [name.encode(), files[name]]
    return _digest(parts)


def chain_id(diff_ids: Sequence[str]) -> str:
    """The OCI ChainID of a layer stack: the name of its top unpacked snapshot.

    ``ChainID(L0) = DiffID(L0)``; ``ChainID(L0..n) = sha256(ChainID(L0..n-1)
    + " " + DiffID(Ln))``. containerd names the snapshots it unpacks a layer
    stack into by these, so the image is unpacked iff that snapshot exists.
    """
    if not diff_ids:
        raise ValueError("an image without layers has no chain ID")
    chain = diff_ids[0]
    for diff_id in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
    return chain


def containerd_ref(image: str) -> str:
    """The name under which containerd (and the kubelet) know a Docker-style name.

    ``citus-backup-operator:dev`` -> ``docker.io/library/citus-backup-operator:dev``;
    a first component with a dot, a colon or ``localhost`` is a registry host.
    """
    name, tag = image, "latest"
    last = image.rsplit("/", 1)[-1]
    if "@" not in image and ":" in last:
        name, _, tag = image.rpartition(":")
    first, sep, _ = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"):
        name = f"docker.io/{name}" if sep else f"docker.io/library/{name}"
    return f"{name}:{tag}"


def parse_ctr_images(output: str) -> dict[str, str]:
    """``ctr images ls`` output -> {ref: target digest} (the header line skipped)."""
    refs: dict[str, str] = {}
    for line in output.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[2].startswith("sha256:"):
            refs[fields[0]] = fields[2]
    return refs


def manifest_config_digest(manifest: Mapping[str, object]) -> str | None:
    """The config digest of an image manifest; None for an index or other JSON."""
    config = manifest.get("config")
    if isinstance(config, dict):
        digest = config.get("digest")
        if isinstance(digest, str):
            return digest
    return None


def debootstrap_argv(target: Path) -> list[str]:
    return [str(DEBOOTSTRAP), f"--variant={VARIANT}", SUITE, str(target), MIRROR]


def import_base_argv(stamp: str) -> list[str]:
    """``docker import`` of the rootfs tar on stdin as :data:`BASE_IMAGE`."""
    return [
        str(DOCKER),
        "import",
        "--change",
        'CMD ["bash"]',  # as the real debian images
        "--change",
        f"LABEL {BASE_STAMP_LABEL}={stamp}",
        "-",
        BASE_IMAGE,
    ]


def rootfs_tar_argv(rootfs: Path) -> list[str]:
    # /dev stays an empty directory, as in registry images: the runtime mounts it.
    return [str(TAR), "--numeric-owner", "--exclude=./dev/*", "-C", str(rootfs), "-c", "."]


def go_build_argv(go: Path, output: Path) -> list[str]:
    return [str(go), "build", "-trimpath", "-ldflags", "-s -w", "-o", str(output), "."]


def docker_build_argv(tag: str, context: Path, *, host_network: bool) -> list[str]:
    network = ["--network", "host"] if host_network else []
    # --force-rm: a failed step's container must not pile up in the data root.
    return [str(DOCKER), "build", "--force-rm", *network, "-t", tag, str(context)]


def ctr_argv(socket: Path, *args: str) -> list[str]:
    return [str(CTR), "--address", str(socket), "-n", K8S_NAMESPACE, *args]


def ctr_import_argv(socket: Path, snapshotter: str) -> list[str]:
    """``ctr images import`` of a ``docker save`` stream on stdin.

    Unpacking is on by default; ``--snapshotter`` makes it unpack for the
    snapshotter CRI uses, so the kubelet finds the rootfs ready.
    """
    return ctr_argv(socket, "images", "import", "--snapshotter", snapshotter, "-")


def dockerd_argv(*, data_root: Path, run_dir: Path, containerd_socket: Path) -> list[str]:
    """A private dockerd: no iptables, no bridge (builds use the host network)."""
    return [
        str(DOCKERD),
        "--data-root",
        str(data_root),
        "--exec-root",
        str(run_dir / "exec"),
        "--host",
        f"unix://{run_dir / 'docker.sock'}",
        "--pidfile",
        str(run_dir / "docker.pid"),
        # Our own containerd: otherwise dockerd would use any daemon found on
        # /run/containerd/containerd.sock (even a stale socket) and leave it.
        "--containerd",
        str(containerd_socket),
        # Ignore /etc/docker/daemon.json: this daemon is ours alone.
        "--config-file",
        str(run_dir / "daemon.json"),
        "--iptables=false",
        "--ip-masq=false",
        "--bridge=none",
    ]


def build_containerd_config(*, root: Path, state: Path, socket: Path) -> str:
    """containerd 1.6 config for dockerd's private containerd (no CRI)."""
    return f"""\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{state / "opt"}"
"""


# --- running commands ---------------------------------------------------------------------


def _failure(what: str, argv: Sequence[str], code: int, log: Path) -> StartError:
    # docker colours a RUN step's stderr; the message is read as plain text.
    lines = re.sub(r"\x1b\[[0-9;]*m", "", tail(log, 25))
    return StartError(f"{what}: `{' '.join(argv)}` exited {code}; last log lines ({log}):\n{lines}")


def _run_logged(
    what: str,
    argv: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> None:
    """Run a step with its output appended to ``log``; StartError on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        try:
            done = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                check=False,
            )
        except OSError as exc:
            raise StartError(f"{what}: cannot run `{' '.join(argv)}`: {exc}") from exc
    if done.returncode != 0:
        raise _failure(what, argv, done.returncode, log)


def _pipe_logged(
    what: str,
    producer: Sequence[str],
    consumer: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
) -> None:
    """``producer | consumer``, both logging to ``log``; StartError naming the one that failed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(producer)} | {' '.join(consumer)}\n".encode())
        out.flush()
        try:
            first = subprocess.Popen(
                list(producer),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=out,
                env=env,
            )
        except OSError as exc:
            raise StartError(f"{what}: cannot run `{' '.join(producer)}`: {exc}") from exc
        try:
            second = subprocess.run(
                list(consumer),
                stdin=first.stdout,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                check=False,
            )
        except OSError as exc:
            first.kill()
            raise StartError(f"{what}: cannot run `{' '.join(consumer)}`: {exc}") from exc
        finally:
            if first.stdout is not None:
                first.stdout.close()
            first.wait()
    if first.returncode != 0:
        raise _failure(what, producer, first.returncode, log)
    if second.returncode != 0:
        raise _failure(what, consumer, second.returncode, log)


def _query(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> str | None:
    """Output of a short query, or None when it fails (e.g. no such image)."""
    done = subprocess.run(list(argv), capture_output=True, text=True, env=env, check=False)
    return done.stdout if done.returncode == 0 else None


def _host_env() -> dict[str, str]:
    env = dict(os.environ)
    # debootstrap, dockerd and containerd call chroot, runc, mount, ... from sbin.
    env["PATH"] = ":".join(
        [env.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    ).lstrip(":")
    return env


def _stop_leftover(pidfile: Path, marker: str) -> None:
    """Stop a daemon an earlier, killed run of this module left (``marker`` in its argv)."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError):
        return
    if marker in cmdline:
        _say(f"stopping a leftover daemon (pid {pid}) from an earlier run")
        stop_pid(pid)


def _remove_tree(path: Path) -> None:
    """rm -rf, after unmounting what an interrupted debootstrap left mounted inside."""
    if not path.exists():
        return
    if unmount_below(path):
        raise StartError(f"cannot remove {path}: something is still mounted below it")
    shutil.rmtree(path)


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """One image build at a time per cache (concurrent test sessions share it)."""
    images_dir().mkdir(parents=True, exist_ok=True)
    with (images_dir() / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say("waiting for another image build to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# --- dockerd ---------------------------------------------------------------------------


@dataclass
class DockerDaemon:
    """A private dockerd on its own containerd, for the duration of a build.

    ``with DockerDaemon(log_dir) as docker:`` starts both and waits until
    ``docker version`` answers; leaving the block stops dockerd, then
    containerd. Both die with the caller if it is killed.
    """

    log_dir: Path
    run_dir: Path = RUN_DIR
    processes: list[ManagedProcess] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.run_dir / "docker.sock"

    @property
    def containerd_socket(self) -> Path:
        return self.run_dir / "containerd.sock"

    def env(self) -> dict[str, str]:
        """Environment for /usr/bin/docker talking to this daemon only."""
        env = _host_env()
        for name in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
            env.pop(name, None)
        client_config = images_dir() / "docker-client"
        client_config.mkdir(parents=True, exist_ok=True)
        env.update(
            DOCKER_HOST=f"unix://{self.socket}",
            # No user config.json: no credential helpers, no injected proxy args.
            DOCKER_CONFIG=str(client_config),
            # The classic builder: Debian's 20.10 client has no buildx.
            DOCKER_BUILDKIT="0",
        )
        return env

    def __enter__(self) -> DockerDaemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        started = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        containerd_pidfile = self.run_dir / "containerd.pid"
        _stop_leftover(self.run_dir / "docker.pid", str(self.socket))
        _stop_leftover(containerd_pidfile, str(self.run_dir))
        (self.run_dir / "daemon.json").write_text("{}\n")
        config = self.run_dir / "containerd.toml"
        config.write_text(
            build_containerd_config(
                root=cache_dir() / "docker-containerd",
                state=self.run_dir / "containerd",
                socket=self.containerd_socket,
            )
        )
        try:
            containerd = self._start(
                "docker-containerd", [str(CONTAINERD), "--config", str(config)]
            )
            containerd_pidfile.write_text(f"{containerd.pid}\n")
            containerd.wait_ready(
                lambda: (
                    _query([str(CTR), "--address", str(self.containerd_socket), "version"])
                    is not None
                ),
                timeout=DAEMON_READY_TIMEOUT,
            )
            argv = dockerd_argv(
                data_root=cache_dir() / "docker",
                run_dir=self.run_dir,
                containerd_socket=self.containerd_socket,
            )
            dockerd = self._start("dockerd", argv)
            version = [str(DOCKER), "version", "--format", "{{.Server.Version}}"]
            dockerd.wait_ready(
                lambda: _query(version, env=self.env()) is not None,
                timeout=DAEMON_READY_TIMEOUT,
            )
        except BaseException:
            self.stop()
            raise
        _say(f"dockerd ready on {self.socket} ({time.monotonic() - started:.1f}s)")

    def _start(self, name: str, argv: list[str]) -> ManagedProcess:
        process = ManagedProcess(name, argv, self.log_dir / f"{name}.log", env=_host_env())
        self.processes.append(process)
        process.start()
        return process

    def stop(self) -> None:
        # dockerd first: it stops its containers through containerd.
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        # dockerd leaves its default network namespace mounted under exec-root.
        unmount_below(RUN_DIR)

    def docker(self, *args: str) -> str | None:
        """Output of a short docker query, or None when it fails."""
        return _query([str(DOCKER), *args], env=self.env())

    def image_id(self, image: str) -> str | None:
        return (self.docker("image", "inspect", "-f", "{{.Id}}", image) or "").strip() or None

    def diff_ids(self, image: str) -> list[str]:
        layers = self.docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", image)
        if layers is None:
            raise StartError(f"docker image inspect {image}: no such image after the build")
        found: list[str] = json.loads(layers)
        return found

    def build(self, what: str, tag: str, context: Path, log: Path, *, host_network: bool) -> str:
        """``docker build``; returns the image ID."""
        started = time.monotonic()
        _run_logged(
            what, docker_build_argv(tag, context, host_network=host_network), log, env=self.env()
        )
        image_id = self.image_id(tag)
        if image_id is None:
            raise StartError(f"{what}: {tag} missing after a successful build (log {log})")
        _say(f"{tag}: {image_id[:19]} ({time.monotonic() - started:.1f}s)")
        return image_id


# --- 1. the base image ------------------------------------------------------------------


def _local_cas() -> dict[str, bytes]:
    if not LOCAL_CA_DIR.is_dir():
        return {}
    return {
        str(path.relative_to(LOCAL_CA_DIR)): path.read_bytes()
        for path in sorted(LOCAL_CA_DIR.rglob("*.crt"))
        if path.is_file()
    }


def base_rootfs(log_dir: Path) -> tuple[Path, str]:
    """The debootstrapped rootfs (built once per stamp) and its stamp."""
    cas = _local_cas()
    bundle = CA_BUNDLE.read_bytes() if cas and CA_BUNDLE.is_file() else None
    stamp = base_stamp(cas, bundle)
    name = f"debian-{SUITE}-slim"
    final = images_dir() / f"{name}-{stamp}"
    if (final / ".complete").exists():
        return final / "rootfs", stamp
    # Older stamps and interrupted attempts: ~130 MB each, never used again.
    for stale in images_dir().glob(f"*{name}-*"):
        _remove_tree(stale)
    started = time.monotonic()
    _say(f"debootstrap {SUITE} ({VARIANT}) from {MIRROR} (cold: ~20-60 s)")
    work = images_dir() / f".{name}-{stamp}.tmp"
    rootfs = work / "rootfs"
    rootfs.mkdir(parents=True)
    log = log_dir / "debootstrap.log"
    try:
        _run_logged("debootstrap", debootstrap_argv(rootfs), log, env=_host_env())
    except StartError as exc:
        inner = tail(rootfs / "debootstrap" / "debootstrap.log", 15)
        raise StartError(f"{exc}\ndebootstrap's own log:\n{inner}" if inner else str(exc)) from exc
    _trim_rootfs(rootfs)
    if cas:
        _add_ca_trust(rootfs, cas, bundle)
    (work / ".complete").touch()
    work.rename(final)
    _say(f"base rootfs in {final} ({time.monotonic() - started:.1f}s)")
    return final / "rootfs", stamp


def _trim_rootfs(rootfs: Path) -> None:
    """What a registry image does not ship: downloaded packages, apt lists, host files."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*"):
        for path in rootfs.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()
    # debootstrap copies these from the host; the runtime provides its own.
    for name in ("etc/hostname", "etc/resolv.conf"):
        (rootfs / name).unlink(missing_ok=True)


def _add_ca_trust(rootfs: Path, cas: Mapping[str, bytes], bundle: bytes | None) -> None:
    """The machine's extra CAs (e.g. an intercepting proxy's), for pip in the build."""
    for name, content in cas.items():
        target = rootfs / "usr/local/share/ca-certificates" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    if bundle is not None:
        certs = rootfs / "etc/ssl/certs"
        certs.mkdir(parents=True, exist_ok=True)
        (certs / "ca-certificates.crt").write_bytes(bundle)
    (rootfs / "etc/pip.conf").write_text(PIP_CONF)


def import_base(docker: DockerDaemon, rootfs: Path, stamp: str, log_dir: Path) -> None:
    """``docker import`` the rootfs as :data:`BASE_IMAGE` unless that stamp is there."""
    label = docker.docker(
        "image", "inspect", "-f", f'{{{{index .Config.Labels "{BASE_STAMP_LABEL}"}}}}', BASE_IMAGE
    )
    if label is not None and label.strip() == stamp:
        return
    started = time.monotonic()
    _pipe_logged(
        f"import {BASE_IMAGE}",
        rootfs_tar_argv(rootfs),
        import_base_argv(stamp),
        log_dir / "docker-import.log",
        env=docker.env(),
    )
    _say(f"{BASE_IMAGE}: imported from {rootfs} ({time.monotonic() - started:.1f}s)")


# --- 3. the pause image --------------------------------------------------------------------


def _go() -> Path:
    found = shutil.which("go")
    if found:
        return Path(found)
    if GO_FALLBACK.exists():
        return GO_FALLBACK
    raise StartError("pause image: the Go toolchain (`go`) is needed to build hack/pause")


def pause_context(log_dir: Path) -> Path:
    """A build context with the static pause binary and its Dockerfile (built once)."""
    sources = {name: (PAUSE_SRC / name).read_bytes() for name in PAUSE_SOURCES}
    final = images_dir() / f"pause-{source_stamp(sources)}"
    if (final / ".complete").exists():
        return final
    for stale in images_dir().glob("*pause-*"):
        _remove_tree(stale)
    started = time.monotonic()
    work = images_dir() / f".{final.name}.tmp"
    work.mkdir(parents=True)
    env = _host_env()
    env.update(CGO_ENABLED="0", GOOS="linux", GOTOOLCHAIN="local", GOFLAGS="-buildvcs=false")
    _run_logged(
        "pause binary",
        go_build_argv(_go(), work / "pause"),
        log_dir / "go-build-pause.log",
        env=env,
        cwd=PAUSE_SRC,
    )
    shutil.copyfile(PAUSE_SRC / "Dockerfile", work / "Dockerfile")
    (work / ".complete").touch()
    work.rename(final)
    _say(f"pause binary built in {final} ({time.monotonic() - started:.1f}s)")
    return final


# --- 5. containerd import ------------------------------------------------------------------


def _in_containerd(socket: Path, ref: str, image_id: str, chain: str, snapshotter: str) -> bool:
    """Whether containerd has ``ref`` with that config (image ID), unpacked."""
    listing = _query(ctr_argv(socket, "images", "ls", f"name=={ref}"))
    target = parse_ctr_images(listing or "").get(ref)
    if target is None:
        return False
    manifest = _query(ctr_argv(socket, "content", "get", target))
    try:
        parsed = json.loads(manifest or "")
    except ValueError:
        return False
    if not isinstance(parsed, dict) or manifest_config_digest(parsed) != image_id:
        return False
    snapshot = ctr_argv(socket, "snapshots", "--snapshotter", snapshotter, "info", chain)
    return _query(snapshot) is not None


def load_into_containerd(
    socket: Path,
    images: Sequence[str],
    *,
    docker: DockerDaemon,
    log_dir: Path,
    snapshotter: str = DEFAULT_SNAPSHOTTER,
) -> list[str]:
    """Import images from ``docker`` into the containerd on ``socket`` (namespace k8s.io).

    Skips an image when containerd already has it under the same name with
    the same config digest (which is Docker's image ID: ``docker save`` ships
    the config byte for byte) and its top snapshot (the layers' ChainID)
    exists in ``snapshotter``. Asking containerd, rather than keeping a stamp
    file, stays right when its root is wiped or shared. After an import the
    same check must pass. Returns the images imported.
    """
    imported: list[str] = []
    for image in images:
        image_id = docker.image_id(image)
        if image_id is None:
            raise StartError(f"containerd import: {image} is not in dockerd")
        ref = containerd_ref(image)
        chain = chain_id(docker.diff_ids(image))
        if _in_containerd(socket, ref, image_id, chain, snapshotter):
            continue
        started = time.monotonic()
        log = log_dir / "ctr-import.log"
        _pipe_logged(
            f"import {image} into containerd {socket}",
            [str(DOCKER), "save", image],
            ctr_import_argv(socket, snapshotter),
            log,
            env=docker.env(),
        )
        if not _in_containerd(socket, ref, image_id, chain, snapshotter):
            raise StartError(
                f"import {image} into containerd {socket}: after the import, {ref} is not "
                f"{image_id} unpacked for {snapshotter}; log {log}:\n{tail(log)}"
            )
        _say(f"{ref}: imported into {socket} ({time.monotonic() - started:.1f}s)")
        imported.append(image)
    return imported


# --- all of it --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSet:
    """The built images: Docker names, image IDs, and what was imported this time."""

    project: str
    project_id: str
    pause: str
    pause_id: str
    imported: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, str]:
        return (self.project, self.pause)


def missing_prerequisites() -> list[str]:
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("must run as root (debootstrap, dockerd and ctr need it)")
    for path in (DOCKER, DOCKERD, CONTAINERD, CTR, DEBOOTSTRAP, TAR):
        if not path.exists():
            problems.append(f"{path} missing")
    if problems:
        problems.append(f"Debian packages needed: {' '.join(PACKAGES)}")
    return problems


def ensure_images(
    log_dir: Path,
    containerd_socket: Path | None = None,
    *,
    snapshotter: str = DEFAULT_SNAPSHOTTER,
) -> ImageSet:
    """Build (or confirm) :data:`PROJECT_IMAGE` and :data:`PAUSE_IMAGE`; import them.

    Idempotent and cached (see the module docstring): a warm run takes ~1 s
    and imports nothing. With ``containerd_socket``, both images end
    up in that containerd's ``k8s.io`` namespace, unpacked for
    ``snapshotter``. Progress goes to stderr, logs to ``log_dir``; any failure
    raises :class:`StartError` with the command, exit code and last log lines.
    """
    if problems := missing_prerequisites():
        raise StartError("images: " + "; ".join(problems))
    started = time.monotonic()
    log_dir.mkdir(parents=True, exist_ok=True)
    with _lock():
        rootfs, stamp = base_rootfs(log_dir)
        pause_ctx = pause_context(log_dir)
        with DockerDaemon(log_dir) as docker:
            import_base(docker, rootfs, stamp, log_dir)
            pause_id = docker.build(
                "pause image",
                PAUSE_IMAGE,
                pause_ctx,
                log_dir / "docker-build-pause.log",
                host_network=False,
            )
            project_id = docker.build(
                "project image",
                PROJECT_IMAGE,
                REPO_DIR,
                log_dir / "docker-build-project.log",
                host_network=True,
            )
            # Earlier builds' images, now untagged: keep the data root from growing.
            docker.docker("image", "prune", "--force")
            imported: list[str] = []
            if containerd_socket is not None:
                imported = load_into_containerd(
                    containerd_socket,
                    [PROJECT_IMAGE, PAUSE_IMAGE],
                    docker=docker,
                    log_dir=log_dir,
                    snapshotter=snapshotter,
                )
    _say(f"images ready ({time.monotonic() - started:.1f}s)")
    return ImageSet(PROJECT_IMAGE, project_id, PAUSE_IMAGE, pause_id, tuple(imported))
