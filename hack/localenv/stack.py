"""Everything a real-node environment needs, started in the right order.

The e2e tier (``tests/e2e/local_provider.py``) and ``make demo`` both need
the same thing: PostgreSQL and MinIO that pods can reach, a control plane
whose API server pods reach through the ``kubernetes`` Service, and a node
running the project's image. The order matters and is easy to get wrong, so
it lives here once:

1. claim the machine's node lock, create the bridge (its address is where
   every server listens, so it must exist first);
2. PostgreSQL (pod CIDR allowed with a password) and MinIO on the bridge address;
3. etcd, kube-apiserver (advertising the bridge address), kube-controller-manager;
4. containerd, then the images (built once, cached), then kube-scheduler,
   kube-proxy and the kubelet, until the Node is Ready.

:meth:`NodeStack.stop` undoes it in reverse and is safe after a partial start.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from localenv import images, node
from localenv.kube import KubeCluster, KubeInfo
from localenv.minio import Minio, MinioInfo
from localenv.postgres import Postgres, PostgresInfo
from localenv.process import ManagedProcess


@dataclass(frozen=True)
class StackInfo:
    postgres: PostgresInfo
    minio: MinioInfo
    kube: KubeInfo
    node: node.NodeInfo
    image: str


@dataclass
class NodeStack:
    """PostgreSQL, MinIO, control plane and one real node under ``base_dir``."""

    base_dir: Path
    log_dir: Path
    owner: str
    die_with_parent: bool = True
    progress: TextIO = field(default_factory=lambda: sys.stderr)
    lock: node.NodeLock | None = field(default=None, init=False)
    postgres: Postgres | None = field(default=None, init=False)
    minio: Minio | None = field(default=None, init=False)
    kube: KubeCluster | None = field(default=None, init=False)
    node: node.LocalNode | None = field(default=None, init=False)
    info: StackInfo | None = field(default=None, init=False)

    def _say(self, message: str) -> None:
        print(message, file=self.progress, flush=True)

    def start(self) -> StackInfo:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> StackInfo:
        self.lock = node.NodeLock(self.owner)
        self.lock.acquire()
        node.bridge_up()
        self._say(f"starting PostgreSQL and MinIO on {node.NODE_IP} ...")
        self.postgres = Postgres(
            self.base_dir / "postgres",
            self.log_dir,
            die_with_parent=self.die_with_parent,
            host=node.NODE_IP,
            allow_cidrs=(node.POD_CIDR,),
        )
        pg = self.postgres.start()
        self.minio = Minio(
            self.base_dir / "minio",
            self.log_dir,
            die_with_parent=self.die_with_parent,
            host=node.NODE_IP,
        )
        s3 = self.minio.start()
        self._say("starting etcd, kube-apiserver, kube-controller-manager ...")
        self.kube = KubeCluster(
            self.base_dir / "kube",
            self.log_dir,
            die_with_parent=self.die_with_parent,
            apiserver_address=node.NODE_IP,
        )
        kube = self.kube.start()
        self._say("starting containerd ...")
        self.node = node.LocalNode(
            kube,
            self.kube.pki,
            self.base_dir / "node",
            self.log_dir,
            images.PAUSE_IMAGE,
            die_with_parent=self.die_with_parent,
        )
        self.node.start_runtime()
        self._say("building and loading images (cached after the first run) ...")
        images.ensure_images(self.log_dir, self.node.containerd_socket)
        self._say("starting kube-scheduler, kube-proxy, kubelet ...")
        node_info = self.node.start_kubernetes()
        self.info = StackInfo(pg, s3, kube, node_info, images.PROJECT_IMAGE)
        return self.info

    def processes(self) -> list[ManagedProcess]:
        """Started processes, in start order (for the demo's state file)."""
        found: list[ManagedProcess] = []
        for part in (self.postgres, self.minio):
            if part is not None and part.process is not None:
                found.append(part.process)
        if self.kube is not None:
            found += self.kube.processes()
        if self.node is not None:
            found += list(self.node.processes.values())
        return found

    def stop(self) -> None:
        """Stop in reverse order; the node first (it needs the API server to drain)."""
        steps: list[Callable[[], None]] = []
        if self.node is not None:
            steps.append(self.node.stop)
        for part in (self.kube, self.minio, self.postgres):
            if part is not None:
                steps.append(part.stop)
        steps.append(node.bridge_down)
        for step in steps:
            step()
        if self.lock is not None:
            self.lock.release()

    def leftovers(self) -> list[str]:
        found: list[str] = []
        if self.node is not None:
            found += self.node.leftovers()
        if self.kube is not None:
            found += self.kube.leftovers()
        return found
