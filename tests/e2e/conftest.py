"""The e2e tier's cluster: one per session, from the provider ``E2E_PROVIDER`` names.

See :mod:`providers`. Logs (every component's, the operator's and the Job
pods' collected at the end) go to ``.localenv/test-logs/`` like the other tiers'.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from providers import Cluster, start_cluster


@pytest.fixture(scope="session")
def cluster(state_dir: Path, log_dir: Path) -> Iterator[Cluster]:
    yield from start_cluster(state_dir, log_dir)
