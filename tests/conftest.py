"""Session fixtures for the real services of the local environment.

Tiers are folders: ``tests/unit`` (no services) and ``tests/integration``
(real PostgreSQL, MinIO, etcd, kube-apiserver, kube-controller-manager).
Each service starts lazily, the first time a test asks for it, and stops at
the end of the session; a tier that needs only PostgreSQL never builds or
starts Kubernetes. Logs go to ``.localenv/test-logs/`` so they survive a
failed run; data lives in a temporary directory removed at the end.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from harness.local_node import LocalNode
from localenv.kube import KubeAPIError, KubeCluster, KubeInfo
from localenv.minio import Minio, MinioInfo
from localenv.postgres import Postgres, PostgresInfo

REPO = Path(__file__).resolve().parent.parent
LOG_DIR = REPO / ".localenv" / "test-logs"


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    # CI or a developer stopping the run with SIGTERM still tears fixtures down.
    raise KeyboardInterrupt


def pytest_configure(config: pytest.Config) -> None:
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.path)
        for tier in ("unit", "integration", "e2e"):
            if f"/tests/{tier}/" in path:
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def state_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="citus-backup-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def log_dir() -> Path:
    shutil.rmtree(LOG_DIR, ignore_errors=True)
    LOG_DIR.mkdir(parents=True)
    return LOG_DIR


@pytest.fixture(scope="session")
def postgres(state_dir: Path, log_dir: Path) -> Iterator[PostgresInfo]:
    """A PostgreSQL 15 server with SCRAM password auth; superuser credentials."""
    server = Postgres(state_dir / "postgres", log_dir)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def minio(state_dir: Path, log_dir: Path) -> Iterator[MinioInfo]:
    """A MinIO server with generated root credentials."""
    server = Minio(state_dir / "minio", log_dir)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kube(state_dir: Path, log_dir: Path) -> Iterator[KubeInfo]:
    """etcd + kube-apiserver + kube-controller-manager (no nodes); admin access.

    Yields a :class:`KubeInfo`: ``kubeconfig`` (system:masters), ``server``,
    ``ca_path``, ``kubectl``, ``request()`` and ``mint_sa_kubeconfig()``.
    Teardown fails the session if stopping left a process, port or directory.
    """
    cluster = KubeCluster(state_dir / "kube", log_dir)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
    assert not cluster.leftovers(), cluster.leftovers()


@pytest.fixture(scope="session")
def kube_api(kube: KubeInfo) -> Iterator[Any]:
    """A ``kubernetes.client.ApiClient`` authenticated as cluster admin."""
    # Imported here: the unit tier should not pay for the Kubernetes client.
    from kubernetes import config  # noqa: PLC0415

    client = config.new_client_from_config(config_file=str(kube.kubeconfig))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def kube_namespace(kube: KubeInfo) -> Iterator[str]:
    """A fresh namespace whose ``default`` ServiceAccount exists (Pods can be admitted)."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    deadline = time.monotonic() + 30
    while True:
        try:
            kube.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")
            break
        except KubeAPIError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    yield name
    # Deletion is asynchronous (the namespace controller empties it); no need to wait.
    kube.request("DELETE", f"/api/v1/namespaces/{name}")


@pytest.fixture(scope="session")
def local_node(kube: KubeInfo, state_dir: Path, log_dir: Path) -> Iterator[LocalNode]:
    """A TEST DOUBLE for the kubelet (:mod:`harness.local_node`): node ``local-harness``.

    It binds and runs, as local processes, the pods of the namespaces it
    serves: ``local_node.serve(ns)``, or use ``local_node_namespace``. Pod
    output: ``local_node.pod_log(ns, pod)`` (``kubectl logs`` cannot reach it).
    Teardown kills every pod process and fails if anything was left behind.
    """
    node = LocalNode(kube, state_dir / "local-node", log_dir, namespaces=())
    node.start()
    try:
        yield node
    finally:
        node.stop()
    assert not node.leftovers(), node.leftovers()


@pytest.fixture
def local_node_namespace(local_node: LocalNode, kube_namespace: str) -> Iterator[str]:
    """A fresh namespace whose pods ``local_node`` binds and runs (Jobs complete)."""
    local_node.serve(kube_namespace)
    yield kube_namespace
    local_node.unserve(kube_namespace)
