"""Helpers for tests/integration/test_operator_*.py: the operator as a subprocess, data, waits.

The operator runs as ``python -m citus_backup.cli operator -A --standalone``
with ``KUBECONFIG`` set to a kubeconfig minted for the ServiceAccount of
``manifests/rbac.yaml`` (applied from the manifests, like the CRDs), so a
missing RBAC rule fails the tests exactly as it would in a cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psycopg
from kubernetes import client

from harness.polling import eventually
from localenv.kube import KubeInfo
from localenv.minio import MinioInfo
from localenv.postgres import PostgresInfo
from localenv.process import free_port

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
GROUP, VERSION = "citusbackup.io", "v1alpha1"
OPERATOR_NAMESPACE = "citus-backup-system"
OPERATOR_SA = "citus-backup-operator"
#: Short intervals so the tests do not wait: scheduler tick and Job polling, seconds.
SCHEDULE_INTERVAL = "1"
POLL_INTERVAL = "1"


def kubectl(kube: KubeInfo, *args: str) -> str:
    result = subprocess.run(
        [str(kube.kubectl), f"--kubeconfig={kube.kubeconfig}", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def install_operator_manifests(kube: KubeInfo, kubeconfig: Path) -> Path:
    """Apply CRDs, namespace and RBAC from manifests/; mint the operator's kubeconfig."""
    kubectl(kube, "apply", "--server-side", "--force-conflicts", "-f", str(MANIFESTS / "crds"))
    kubectl(kube, "apply", "--server-side", "-f", str(MANIFESTS / "peering.yaml"))
    kubectl(
        kube,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/citusbackuppolicies.citusbackup.io",
        "crd/citusbackups.citusbackup.io",
        "crd/citusrestores.citusbackup.io",
        "crd/clusterkopfpeerings.kopf.dev",
    )
    kubectl(kube, "apply", "-f", str(MANIFESTS / "namespace.yaml"))
    kubectl(kube, "apply", "-f", str(MANIFESTS / "rbac.yaml"))
    eventually(
        lambda: kubectl(
            kube, "-n", OPERATOR_NAMESPACE, "get", "serviceaccount", OPERATOR_SA, "-o", "name"
        ),
        "the operator's ServiceAccount",
    )
    return kube.mint_sa_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_SA, kubeconfig)


def running_operator(kube: KubeInfo, work: Path, log_path: Path) -> Iterator[OperatorProcess]:
    """The manifests installed and one operator process for a module (stopped after)."""
    kubeconfig = install_operator_manifests(kube, work / "operator.kubeconfig")
    process = OperatorProcess(kubeconfig, log_path, work)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@dataclass
class OperatorProcess:
    """``citus-backup operator`` as a child process, restartable."""

    kubeconfig: Path
    log_path: Path
    home: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    #: Port of the operator's Prometheus endpoint (on 127.0.0.1).
    metrics_port: int = field(default_factory=free_port)
    #: Instead of --standalone: e.g. ["--peering=NAME", "--peering-lifetime=8"].
    peering: list[str] = field(default_factory=list)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> None:
        assert self.proc is None
        self.starts += 1
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": str(REPO / "operator"),
            "PYTHONUNBUFFERED": "1",
        }
        with self.log_path.open("ab") as log:
            log.write(f"\n===== operator start #{self.starts} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "citus_backup.cli",
                    "operator",
                    "--all-namespaces",
                    *(self.peering or ["--standalone"]),
                    "--schedule-interval",
                    SCHEDULE_INTERVAL,
                    "--poll-interval",
                    POLL_INTERVAL,
                    f"--metrics-port={self.metrics_port}",
                    "--metrics-address=127.0.0.1",
                    *(["--verbose"] if os.environ.get("OPERATOR_VERBOSE") else []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def kill(self) -> None:
        """An abrupt end (SIGKILL), as when a node dies."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


# --------------------------------------------------------------------------- data


@dataclass
class Fixture:
    """Per-module data: two databases with a table each, a bucket, credentials."""

    postgres: PostgresInfo
    minio: MinioInfo
    bucket: str
    app1: str
    app2: str
    extra: list[str] = field(default_factory=list)

    def sql(self, database: str, statement: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.postgres.dsn(database), autocommit=True) as conn:
            cur = conn.execute(statement)  # type: ignore[call-overload]
            return list(cur.fetchall()) if cur.description else []

    def exists(self, database: str) -> bool:
        with psycopg.connect(self.postgres.dsn("postgres"), autocommit=True) as conn:
            rows = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            return rows.fetchone() is not None


def make_fixture(postgres: PostgresInfo, minio: MinioInfo) -> Iterator[Fixture]:
    from minio import Minio  # noqa: PLC0415

    suffix = uuid.uuid4().hex[:6]
    data = Fixture(postgres, minio, f"op-{suffix}", f"opapp1_{suffix}", f"opapp2_{suffix}")
    for db in (data.app1, data.app2):
        data.sql("postgres", f"CREATE DATABASE {db}")
    data.sql(data.app1, "CREATE TABLE orders (id int PRIMARY KEY, item text)")
    data.sql(data.app1, "INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, 50) g")
    data.sql(data.app2, "CREATE TABLE notes (id int PRIMARY KEY, body text)")
    data.sql(data.app2, "INSERT INTO notes VALUES (1, 'before backup')")
    Minio(minio.endpoint, minio.access_key, minio.secret_key, secure=False).make_bucket(data.bucket)
    yield data
    for db in (data.app1, data.app2, *data.extra):
        data.sql("postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


# --------------------------------------------------------------------------- objects


def make_secrets(core: client.CoreV1Api, namespace: str, data: Fixture) -> None:
    core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": "pg"}, "stringData": {"password": data.postgres.password}},
    )
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "s3"},
            "stringData": {
                "accessKeyId": data.minio.access_key,
                "secretAccessKey": data.minio.secret_key,
            },
        },
    )


def policy_body(name: str, data: Fixture, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CitusBackupPolicy",
        "metadata": {"name": name},
        "spec": {
            # Never fires by itself during a test (the tests drive runs explicitly).
            "schedule": "0 3 1 1 *",
            "timeZone": "UTC",
            "coordinator": {
                "host": data.postgres.host,
                "port": data.postgres.port,
                "user": data.postgres.user,
                "passwordSecretRef": {"name": "pg", "key": "password"},
                "sslMode": "disable",
                "includeDatabases": [data.app1, data.app2],
            },
            "storage": {
                "endpoint": data.minio.endpoint,
                "secure": False,
                "bucket": data.bucket,
                "prefix": name,
                "accessKeyIdSecretRef": {"name": "s3", "key": "accessKeyId"},
                "secretAccessKeySecretRef": {"name": "s3", "key": "secretAccessKey"},
            },
            "jobTemplate": {"backoffLimit": 0},
        },
    }
    body["spec"].update(spec)
    return body


class Objects:
    """CRUD of the three kinds as cluster admin (what a user does)."""

    plurals: ClassVar[dict[str, str]] = {
        "CitusBackupPolicy": "citusbackuppolicies",
        "CitusBackup": "citusbackups",
        "CitusRestore": "citusrestores",
    }

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.namespace = namespace

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, self.plurals[body["kind"]], body
        )
        return result

    def get(self, kind: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, self.plurals[kind], name
        )
        return result

    def list(self, kind: str) -> list[dict[str, Any]]:
        answer = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, self.plurals[kind]
        )
        items: list[dict[str, Any]] = answer["items"]
        return items

    def patch(self, kind: str, name: str, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, self.plurals[kind], name, body
        )

    def patch_status(self, kind: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, self.plurals[kind], name, {"status": status}
        )

    def backup(self, name: str, policy: str, **spec: Any) -> dict[str, Any]:
        return self.create(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "CitusBackup",
                "metadata": {"name": name},
                "spec": {"policyName": policy, **spec},
            }
        )

    def restore(self, name: str, **spec: Any) -> dict[str, Any]:
        return self.create(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "CitusRestore",
                "metadata": {"name": name},
                "spec": spec,
            }
        )

    def status(self, kind: str, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.get(kind, name).get("status", {})
        return status

    def wait_phase(
        self, kind: str, name: str, phases: tuple[str, ...], timeout: float = 60.0
    ) -> dict[str, Any]:
        return eventually(
            lambda: (s := self.status(kind, name)).get("phase") in phases and s,
            f"{kind} {name} to reach {'/'.join(phases)}",
            timeout,
        )

    def condition(self, kind: str, name: str, type_: str) -> dict[str, Any] | None:
        for condition in self.status(kind, name).get("conditions", []):
            if condition["type"] == type_:
                result: dict[str, Any] = condition
                return result
        return None

    def jobs(self) -> list[str]:
        return [j.metadata.name for j in self.batch.list_namespaced_job(self.namespace).items]

    def events(self, name: str) -> list[tuple[str, str, str]]:
        items = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        ).items
        return [(e.type, e.reason, e.message or "") for e in items]

    def has_event(self, name: str, reason: str) -> list[tuple[str, str, str]]:
        return [e for e in self.events(name) if e[1] == reason]


def rbac_denials(log: str) -> list[str]:
    """Log lines where the API server denied the operator a request by RBAC.

    A 403 because a namespace is being deleted (``NamespaceTerminating``: an
    Event posted while a test's namespace goes away) is not a missing
    permission and is left out.
    """
    return [
        line
        for line in log.splitlines()
        if "Forbidden" in line and "NamespaceTerminating" not in line
    ]
