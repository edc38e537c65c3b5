"""Group commit (reconcile.groupcommit): concurrent callers share batches, each gets its own
outcome, failures reach every caller of the failed batch, keys do not wait for each other."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from citus_backup.reconcile.groupcommit import GroupCommit

pytestmark = pytest.mark.unit


def test_a_lone_request_runs_at_once_in_a_batch_of_one() -> None:
    commit: GroupCommit[str, int, int] = GroupCommit()
    seen: list[list[int]] = []

    def run(requests: Sequence[int]) -> list[int]:
        seen.append(list(requests))
        return [r * 10 for r in requests]

    assert commit.submit("b", 4, run) == 40
    assert seen == [[4]]


def test_callers_arriving_during_a_batch_share_the_next_one() -> None:
    commit: GroupCommit[str, int, int] = GroupCommit()
    first_started, release = threading.Event(), threading.Event()
    batches: list[list[int]] = []

    def run(requests: Sequence[int]) -> list[int]:
        batches.append(list(requests))
        if len(batches) == 1:
            first_started.set()
            assert release.wait(5)
        return [r + 100 for r in requests]

    with ThreadPoolExecutor(12) as pool:
        first = pool.submit(commit.submit, "b", 0, run)
        assert first_started.wait(5)
        rest = [pool.submit(commit.submit, "b", i, run) for i in range(1, 11)]
        time.sleep(0.2)  # all ten queue behind the running batch
        release.set()
        assert first.result() == 100
        assert [f.result() for f in rest] == [i + 100 for i in range(1, 11)]
    assert batches[0] == [0]
    assert sorted(batches[1]) == list(range(1, 11))
    assert len(batches) == 2
    assert commit.batches == 2


def test_a_failed_batch_fails_each_of_its_callers_and_not_the_next() -> None:
    commit: GroupCommit[str, int, int] = GroupCommit()

    def broken(_: Sequence[int]) -> list[int]:
        raise RuntimeError("bucket unreachable")

    with pytest.raises(RuntimeError, match="bucket unreachable"):
        commit.submit("b", 1, broken)
    assert commit.submit("b", 2, list) == 2


def test_a_batch_returning_the_wrong_number_of_outcomes_is_an_error() -> None:
    commit: GroupCommit[str, int, int] = GroupCommit()
    with pytest.raises(RuntimeError, match="returned 0 outcomes"):
        commit.submit("b", 1, lambda _: [])


def test_keys_do_not_wait_for_each_other() -> None:
    commit: GroupCommit[str, int, int] = GroupCommit()
    started, release = threading.Event(), threading.Event()

    def slow(requests: Sequence[int]) -> list[int]:
        started.set()
        assert release.wait(5)
        return list(requests)

    with ThreadPoolExecutor(2) as pool:
        blocked = pool.submit(commit.submit, "a", 1, slow)
        assert started.wait(5)
        assert commit.submit("b", 2, list) == 2  # "a" still running
        release.set()
        assert blocked.result() == 1
