"""The ``kind`` e2e provider: the same suite on a kind cluster (``make e2e-kind``).

Needs ``kind``, ``docker`` and ``kubectl`` on PATH (``KUBECTL`` overrides the
last) and a Docker that can pull ``kindest/node``, ``citusdata/citus`` and
``quay.io/minio/minio``: it cannot run on the project's CI machines, which
have no registry; ``make test`` uses the ``local`` provider.

What it does, in order:

1. create the cluster ``citus-backup`` from ``kind-config.yaml``, or reuse it
   if it exists (``KIND_RECREATE=1`` deletes and recreates it); its
   kubeconfig goes to a temporary file;
2. ``docker build`` the project's image as ``citus-backup-operator:dev`` (the
   tag ``manifests/deployment.yaml`` uses, with ``IfNotPresent``) and
   ``kind load`` it;
3. on a reused cluster, delete what a previous run left (the suite's
   namespaces and ``e2e-infra``), so that the operator runs the image just
   loaded and the suite starts from empty services;
4. create ``e2e-infra`` with Secrets holding credentials generated for this
   run, apply ``tests/e2e/kind/`` (a Citus coordinator and MinIO) and wait for
   both Deployments (``KIND_CITUS_IMAGE`` / ``KIND_MINIO_IMAGE`` replace their
   images);
5. for the test process: ``kubectl port-forward`` to MinIO on a free local
   port, and :meth:`KindCluster.sql` as ``psql`` through ``kubectl exec``.

Teardown stops the port-forward, saves the infrastructure pods' logs to
``<log_dir>/kind/`` and deletes the cluster only if this run created it and
``KIND_KEEP`` is not set.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import pytest
from providers import REPO, Cluster, Database, ObjectStore

CLUSTER_NAME = "citus-backup"
KIND_CONFIG = REPO / "kind-config.yaml"
INFRA_MANIFESTS = Path(__file__).resolve().parent / "kind"
INFRA_NS = "e2e-infra"
# Must match manifests/deployment.yaml (image and CITUS_BACKUP_RUNNER_IMAGE).
IMAGE = "citus-backup-operator:dev"
# What a previous run on a reused cluster may have left, in deletion order: the
# suite's namespace first, while the operator and MinIO still run to release
# its objects' finalizers; then the operator; then the services.
LEFTOVER_NAMESPACES = ("e2e-apps", "citus-backup-system", INFRA_NS)
# Seconds.
CREATE_TIMEOUT = 600
BUILD_TIMEOUT = 1800
LOAD_TIMEOUT = 600
NAMESPACE_DELETE_TIMEOUT = 180
# Pulling citusdata/citus and MinIO on first use is most of this.
INFRA_ROLLOUT_TIMEOUT = 600
PORT_FORWARD_TIMEOUT = 30

NOT_HERE = (
    "The kind provider (E2E_PROVIDER=kind, `make e2e-kind`) needs kind, Docker and "
    "kubectl, and a Docker that can pull images from registries (kindest/node, "
    "citusdata/citus, quay.io/minio/minio), so it cannot run on the project's CI "
    "machines; `make test` and `make test-e2e` use the local provider (E2E_PROVIDER=local)."
)


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false", "no")


def _tools() -> tuple[str, str, str]:
    """kind, docker and kubectl, or a failure naming what is missing."""
    wanted = ("kind", "docker", os.environ.get("KUBECTL") or "kubectl")
    kind, docker, kubectl = (shutil.which(command) for command in wanted)
    if kind is None or docker is None or kubectl is None:
        missing = [
            cmd for cmd, path in zip(wanted, (kind, docker, kubectl), strict=True) if not path
        ]
        pytest.fail(f"{' and '.join(missing)} not found on PATH. {NOT_HERE}", pytrace=False)
    info = subprocess.run(
        [docker, "info", "--format", "{{.ServerVersion}}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if info.returncode != 0:
        pytest.fail(
            f"`docker info` failed, is the Docker daemon running and reachable?\n"
            f"{info.stderr.strip()}\n{NOT_HERE}",
            pytrace=False,
        )
    return kind, docker, kubectl


class _Log:
    """Each command's output in its own file under ``<log_dir>/kind/``."""

    def __init__(self, log_dir: Path) -> None:
        self.dir = log_dir / "kind"
        self.dir.mkdir(parents=True, exist_ok=True)

    def note(self, message: str) -> None:
        with (self.dir / "provider.log").open("a") as out:
            out.write(f"{time.strftime('%H:%M:%S')} {message}\n")

    def run(
        self,
        name: str,
        args: Sequence[str],
        *,
        timeout: float,
        check: bool = True,
        secret_output: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args``; output to ``<name>.log`` (unless ``secret_output``); ``check``
        fails with its tail."""
        self.note(f"$ {' '.join(args)}")
        done = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        stdout = "(not recorded: it holds credentials)\n" if secret_output else done.stdout
        (self.dir / f"{name}.log").write_text(
            f"$ {' '.join(args)}\n{stdout}{done.stderr}exit {done.returncode}\n"
        )
        if check and done.returncode != 0:
            tail = "\n".join((stdout + done.stderr).splitlines()[-40:])
            raise AssertionError(
                f"{args[0]} {' '.join(args[1:3])} exited {done.returncode} "
                f"(full output: {self.dir / f'{name}.log'}):\n{tail}"
            )
        return done


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _PortForward:
    """``kubectl port-forward`` to a Service, restarted if it died."""

    def __init__(self, kubectl: str, kubeconfig: Path, target: str, port: int, log: Path) -> None:
        self.target = target
        self.local_port = _free_port()
        self.args = [
            kubectl,
            "port-forward",
            "-n",
            INFRA_NS,
            target,
            f"{self.local_port}:{port}",
            "--address",
            "127.0.0.1",
        ]
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.out: IO[bytes] | None = None

    def ensure(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.stop()
        self.out = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.args, stdout=self.out, stderr=subprocess.STDOUT, env=self.env
        )
        deadline = time.monotonic() + PORT_FORWARD_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.local_port), timeout=1).close()
                return
            time.sleep(0.3)
        self.stop()
        raise AssertionError(
            f"kubectl port-forward to {self.target} did not listen on "
            f"127.0.0.1:{self.local_port}:\n{self.log.read_text()[-2000:]}"
        )

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            self.proc = None
        if self.out is not None:
            self.out.close()
            self.out = None


class KindCluster(Cluster):
    name = "kind"

    def __init__(
        self,
        kubeconfig: Path,
        kubectl: str,
        database: Database,
        object_store: ObjectStore,
        log: _Log,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.kubectl_path = Path(kubectl)
        self.database = database
        self.object_store = object_store
        self.minio = _PortForward(
            kubectl, kubeconfig, "svc/minio", 9000, log.dir / "port-forward-minio.log"
        )

    def sql(self, database: str, query: str) -> str:
        # psql inside the coordinator's pod, over its local socket (trusted by
        # the image); PGPASSWORD comes from the pod's own environment, so the
        # password never appears on a command line.
        done = self.kubectl(
            "exec",
            "-n",
            INFRA_NS,
            "deploy/citus",
            "-c",
            "citus",
            "--",
            "sh",
            "-c",
            'PGPASSWORD="$POSTGRES_PASSWORD" exec psql "$@"',
            "psql",
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            "postgres",
            "-d",
            database,
            "-c",
            query,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"psql ({database}) {query!r}: {done.stderr}")
        return done.stdout.strip()

    def s3(self) -> Any:
        from minio import Minio  # noqa: PLC0415

        self.minio.ensure()
        store = self.object_store
        return Minio(
            f"127.0.0.1:{self.minio.local_port}", store.access_key, store.secret_key, secure=False
        )

    def describe(self) -> Mapping[str, str]:
        return {**super().describe(), "kind_cluster": CLUSTER_NAME}


def _secrets(pg_password: str, access_key: str, secret_key: str) -> str:
    def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": INFRA_NS},
            "type": "Opaque",
            "stringData": data,
        }

    items = [
        secret("citus-superuser", {"password": pg_password}),
        secret("minio-root", {"user": access_key, "password": secret_key}),
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def _infra_state(cluster: KindCluster) -> str:
    """Pods and recent events in ``e2e-infra``, for a failed rollout's message."""
    pods = cluster.kubectl("get", "pods", "-n", INFRA_NS, "-o", "wide", check=False)
    events = cluster.kubectl(
        "get", "events", "-n", INFRA_NS, "--sort-by=.lastTimestamp", check=False
    )
    return f"{pods.stdout}{pods.stderr}\n{events.stdout[-3000:]}"


def _save_infra_logs(cluster: KindCluster, log: _Log) -> None:
    for deploy in ("citus", "minio"):
        logs = cluster.kubectl(
            "logs", "-n", INFRA_NS, f"deploy/{deploy}", "--all-containers", check=False
        )
        (log.dir / f"{INFRA_NS}.{deploy}.log").write_text(logs.stdout + logs.stderr)


def _create_or_reuse(kind: str, log: _Log) -> bool:
    """Whether this run created the cluster (False: an existing one is reused)."""
    existing = log.run("kind-get-clusters", [kind, "get", "clusters"], timeout=60)
    if CLUSTER_NAME in existing.stdout.split():
        if not _flag("KIND_RECREATE"):
            log.note(f"reusing kind cluster {CLUSTER_NAME}")
            return False
        log.run(
            "kind-delete",
            [kind, "delete", "cluster", "--name", CLUSTER_NAME],
            timeout=CREATE_TIMEOUT,
        )
    create = [kind, "create", "cluster", "--name", CLUSTER_NAME, "--config", str(KIND_CONFIG)]
    log.run("kind-create", [*create, "--wait", "180s"], timeout=CREATE_TIMEOUT)
    return True


def _write_kubeconfig(kind: str, log: _Log) -> Path:
    fd, name = tempfile.mkstemp(prefix=f"kind-{CLUSTER_NAME}-", suffix=".kubeconfig")
    os.close(fd)
    config = log.run(
        "kind-kubeconfig",
        [kind, "get", "kubeconfig", "--name", CLUSTER_NAME],
        timeout=60,
        secret_output=True,
    )
    path = Path(name)
    path.write_text(config.stdout)
    return path


def _delete_leftovers(cluster: KindCluster) -> None:
    """A reused cluster: remove what a previous run left (see LEFTOVER_NAMESPACES)."""
    for namespace in LEFTOVER_NAMESPACES:
        done = cluster.kubectl(
            "delete",
            "namespace",
            namespace,
            "--ignore-not-found",
            "--wait=true",
            f"--timeout={NAMESPACE_DELETE_TIMEOUT}s",
            check=False,
            timeout=NAMESPACE_DELETE_TIMEOUT + 30,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"could not delete namespace {namespace}, left by a previous run on the "
                f"reused kind cluster {CLUSTER_NAME} (KIND_RECREATE=1 starts from a new "
                f"cluster):\n{done.stderr}"
            )


def _deploy_infra(cluster: KindCluster) -> None:
    """``e2e-infra``: this run's Secrets, then tests/e2e/kind/; waits for both Deployments."""
    db, store = cluster.database, cluster.object_store
    cluster.kubectl("apply", "-f", str(INFRA_MANIFESTS / "00-namespace.yaml"))
    cluster.kubectl(
        "apply", "-f", "-", stdin=_secrets(db.password, store.access_key, store.secret_key)
    )
    cluster.kubectl("apply", "-f", str(INFRA_MANIFESTS))
    for deploy, variable in (("citus", "KIND_CITUS_IMAGE"), ("minio", "KIND_MINIO_IMAGE")):
        if image := os.environ.get(variable):
            cluster.kubectl("set", "image", "-n", INFRA_NS, f"deploy/{deploy}", f"{deploy}={image}")
    for deploy in ("citus", "minio"):
        done = cluster.kubectl(
            "rollout",
            "status",
            "-n",
            INFRA_NS,
            f"deploy/{deploy}",
            f"--timeout={INFRA_ROLLOUT_TIMEOUT}s",
            check=False,
            timeout=INFRA_ROLLOUT_TIMEOUT + 30,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"deploy/{deploy} in {INFRA_NS} did not become available:\n"
                f"{done.stderr}\n{_infra_state(cluster)}"
            )


def kind_cluster(log_dir: Path) -> Iterator[Cluster]:
    kind, docker, kubectl = _tools()
    log = _Log(log_dir)
    created = False
    kubeconfig: Path | None = None
    cluster: KindCluster | None = None
    try:
        created = _create_or_reuse(kind, log)
        kubeconfig = _write_kubeconfig(kind, log)
        log.run("docker-build", [docker, "build", "-t", IMAGE, str(REPO)], timeout=BUILD_TIMEOUT)
        log.run(
            "kind-load",
            [kind, "load", "docker-image", IMAGE, "--name", CLUSTER_NAME],
            timeout=LOAD_TIMEOUT,
        )
        # Credentials for this run only: pods get them from Secrets.
        pg_password = secrets.token_urlsafe(24)
        cluster = KindCluster(
            kubeconfig,
            kubectl,
            Database(f"citus.{INFRA_NS}.svc", 5432, "postgres", pg_password),
            ObjectStore(
                f"minio.{INFRA_NS}.svc:9000",
                f"e2e{secrets.token_hex(8)}",
                secrets.token_urlsafe(30),
            ),
            log,
        )
        if not created:
            _delete_leftovers(cluster)
        _deploy_infra(cluster)
        cluster.minio.ensure()
        log.note("ready")
        yield cluster
    finally:
        if cluster is not None:
            cluster.minio.stop()
            with contextlib.suppress(Exception):
                _save_infra_logs(cluster, log)
        if created and not _flag("KIND_KEEP"):
            log.run(
                "kind-delete",
                [kind, "delete", "cluster", "--name", CLUSTER_NAME],
                timeout=CREATE_TIMEOUT,
                check=False,
            )
        elif created:
            log.note(f"KIND_KEEP: kept {CLUSTER_NAME} (kind delete cluster --name {CLUSTER_NAME})")
        if kubeconfig is not None:
            kubeconfig.unlink(missing_ok=True)
