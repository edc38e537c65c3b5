"""Cluster providers for the e2e suite: one suite, two ways to get a cluster.

The suite (``test_*.py`` here) speaks kubectl only, to whatever
:class:`Cluster` a provider hands it. A provider owns everything that differs
between clusters: how the cluster, PostgreSQL and MinIO come up, how pods
reach them, and how the test process reads them back.

- ``local`` (default): :mod:`localenv` on this machine: a real kubelet with
  containerd and runc, kube-proxy, kube-scheduler next to the control plane;
  PostgreSQL 15 and MinIO as processes listening on the node's bridge
  address; the project's image built from the unchanged Dockerfile
  (:mod:`localenv.images`) and loaded into containerd.
- ``kind`` (``make e2e-kind``, where Docker can pull images): a kind cluster
  from ``kind-config.yaml``, the image built and ``kind load``-ed, MinIO and a
  Citus coordinator (citusdata/citus) deployed from ``tests/e2e/kind/``.
  See :mod:`kind_provider`.

Pick one with ``E2E_PROVIDER=local|kind``.
"""

from __future__ import annotations

import os
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
# Seconds for one kubectl call (apply, get, create); waits pass their own timeout.
KUBECTL_TIMEOUT = 120


@dataclass(frozen=True)
class Database:
    """A PostgreSQL server as the pods see it, with superuser credentials."""

    host: str
    port: int
    user: str
    password: str


@dataclass(frozen=True)
class ObjectStore:
    """An S3 endpoint as the pods see it (``host:port``, plain HTTP)."""

    endpoint: str
    access_key: str
    secret_key: str


class Cluster(ABC):
    """A running cluster with PostgreSQL and MinIO that pods can reach."""

    name: str
    kubeconfig: Path
    kubectl_path: Path
    database: Database
    object_store: ObjectStore

    def kubectl(
        self,
        *args: str,
        stdin: str | None = None,
        check: bool = True,
        timeout: float = KUBECTL_TIMEOUT,
        extra_path: Sequence[Path] = (),
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; ``check`` raises with its stderr."""
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        if extra_path:
            env["PATH"] = os.pathsep.join([*map(str, extra_path), env.get("PATH", "")])
        done = subprocess.run(
            [str(self.kubectl_path), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {done.returncode}:\n{done.stderr}{done.stdout}"
            )
        return done

    @abstractmethod
    def sql(self, database: str, query: str) -> str:
        """Run ``query`` as superuser in ``database``; rows as psql -At prints them."""

    @abstractmethod
    def s3(self) -> Any:
        """A ``minio.Minio`` client the test process can use to read the bucket."""

    def describe(self) -> Mapping[str, str]:
        return {"provider": self.name, "kubeconfig": str(self.kubeconfig)}


def provider_name() -> str:
    name = os.environ.get("E2E_PROVIDER", "local")
    if name not in ("local", "kind"):
        raise ValueError(f"E2E_PROVIDER={name!r}: expected 'local' or 'kind'")
    return name


def start_cluster(state_dir: Path, log_dir: Path) -> Iterator[Cluster]:
    """The provider's cluster for the session (a generator: teardown after yield)."""
    if provider_name() == "kind":
        from kind_provider import kind_cluster  # noqa: PLC0415

        yield from kind_cluster(log_dir)
    else:
        from local_provider import local_cluster  # noqa: PLC0415

        yield from local_cluster(state_dir, log_dir)
