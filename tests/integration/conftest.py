"""Fixtures shared by the operator modules of the integration tier.

``data`` (module scope: two databases, a bucket, credentials) and ``ns`` (a
fresh namespace served by the local-node harness, with the Secrets) are the
same wherever the operator runs; each module keeps its own ``operator``
fixture, built with :func:`operator_support.running_operator`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from operator_support import Fixture, Objects, make_fixture, make_secrets

from localenv.minio import MinioInfo
from localenv.postgres import PostgresInfo


@pytest.fixture(scope="module")
def data(postgres: PostgresInfo, minio: MinioInfo) -> Iterator[Fixture]:
    yield from make_fixture(postgres, minio)


@pytest.fixture
def ns(local_node_namespace: str, kube_api: Any, data: Fixture) -> Objects:
    objects = Objects(kube_api, local_node_namespace)
    make_secrets(objects.core, local_node_namespace, data)
    return objects
