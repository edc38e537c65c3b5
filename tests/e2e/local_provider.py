"""The ``local`` e2e provider: a real node on this machine (:mod:`localenv.stack`).

PostgreSQL and MinIO run as processes on the node's bridge address, which is
where pods reach them and where the test process reads them back, so
:meth:`LocalCluster.sql` is plain psql and :meth:`LocalCluster.s3` a plain
client: no port-forwarding.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from providers import Cluster, Database, ObjectStore

from localenv.postgres import pg_bindir
from localenv.stack import NodeStack, StackInfo


class LocalCluster(Cluster):
    name = "local"

    def __init__(self, info: StackInfo) -> None:
        self.info = info
        self.kubeconfig = info.kube.kubeconfig
        self.kubectl_path = info.kube.kubectl
        pg, s3 = info.postgres, info.minio
        self.database = Database(pg.host, pg.port, pg.user, pg.password)
        self.object_store = ObjectStore(s3.endpoint, s3.access_key, s3.secret_key)

    def sql(self, database: str, query: str) -> str:
        done = subprocess.run(
            [str(pg_bindir() / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", query],
            env=self.info.postgres.env(database),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if done.returncode != 0:
            raise AssertionError(f"psql ({database}) {query!r}: {done.stderr}")
        return done.stdout.strip()

    def s3(self) -> Any:
        from minio import Minio  # noqa: PLC0415

        s3 = self.info.minio
        return Minio(s3.endpoint, s3.access_key, s3.secret_key, secure=False)


def local_cluster(state_dir: Path, log_dir: Path) -> Iterator[Cluster]:
    stack = NodeStack(state_dir / "stack", log_dir, owner="the e2e tier (pytest tests/e2e)")
    try:
        yield LocalCluster(stack.start())
    finally:
        stack.stop()
    assert not stack.leftovers(), stack.leftovers()
