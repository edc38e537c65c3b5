"""The Citus tier: the runner against a real Citus cluster (a coordinator and
two workers on loopback, see :mod:`cluster`).

Citus is in no package registry this project can install from, so the tier
takes a Citus-enabled PostgreSQL from ``$CITUS_PG_BINDIR`` (its ``bin``
directory; README: "Citus") and is skipped, with one line naming the
variable, where it is not set.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import CITUS_ENV, CitusCluster, citus_bindir

from localenv.minio import MinioInfo

# The runner helpers of the integration tier (in-process runner, S3 access).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))

from test_runner_support import Runner

SKIP_REASON = (
    f"{CITUS_ENV} is not set: the Citus tier needs a PostgreSQL with the Citus extension "
    "(README: Citus)"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/citus/" in str(item.path):
            item.add_marker(pytest.mark.citus)


@pytest.fixture(scope="session")
def citus_cluster(state_dir: Path, log_dir: Path) -> Iterator[CitusCluster]:
    """The cluster; without Citus every test of the tier is skipped here, which
    pytest reports as one line naming the variable."""
    bindir = citus_bindir()
    if bindir is None:
        pytest.skip(SKIP_REASON)
    if not (bindir / "postgres").exists():
        pytest.skip(f"{CITUS_ENV}={bindir}: no postgres binary there")
    cluster = CitusCluster(state_dir / "citus", log_dir, bindir)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def citus_runner(citus_cluster: CitusCluster, minio: MinioInfo) -> Runner:
    """The runner against the coordinator, a bucket prefix of its own."""
    bucket = "citus-tier"
    runner = Runner(citus_cluster.coordinator, minio, bucket, f"t-{uuid.uuid4().hex[:8]}")
    s3 = runner.s3()
    if not s3.bucket_exists(bucket):
        s3.make_bucket(bucket)
    return runner
