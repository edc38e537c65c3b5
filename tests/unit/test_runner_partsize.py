"""The part-size schedule: S3's limits hold and memory stays small for small dumps."""

from __future__ import annotations

import pytest

from citus_backup.runner.partsize import (
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    GiB,
    MiB,
    PartLimitExceeded,
    PartSchedule,
    TiB,
)

TB = 10**12


def test_small_dumps_use_the_initial_part_size() -> None:
    schedule = PartSchedule()
    assert schedule.initial == 8 * MiB
    assert {schedule.size(n) for n in range(1, 1001)} == {8 * MiB}
    assert schedule.parts_needed(2 * GiB) == 256


def test_every_part_is_within_s3_limits_and_sizes_never_shrink() -> None:
    schedule = PartSchedule()
    sizes = [schedule.size(n) for n in range(1, MAX_PARTS + 1)]
    assert min(sizes) >= MIN_PART_SIZE
    assert max(sizes) <= MAX_PART_SIZE
    assert sizes == sorted(sizes)
    assert max(sizes) < 1.5 * GiB  # memory bound for the largest dumps


def test_capacity_covers_the_largest_s3_object() -> None:
    assert PartSchedule().capacity() >= MAX_OBJECT_SIZE
    assert PartSchedule(MIN_PART_SIZE).capacity() >= MAX_OBJECT_SIZE


def test_a_database_over_one_terabyte_fits() -> None:
    schedule = PartSchedule()
    parts = schedule.parts_needed(int(1.5 * TB))
    assert parts < MAX_PARTS
    assert schedule.size(parts) < 1 * GiB
    assert schedule.parts_needed(TB) < 5000


def test_the_limit_is_enforced() -> None:
    schedule = PartSchedule()
    with pytest.raises(PartLimitExceeded):
        schedule.size(MAX_PARTS + 1)
    with pytest.raises(PartLimitExceeded):
        schedule.size(0)
    with pytest.raises(PartLimitExceeded):
        schedule.parts_needed(schedule.capacity() + 1)
    assert schedule.parts_needed(schedule.capacity()) == MAX_PARTS


@pytest.mark.parametrize("initial", [MIN_PART_SIZE - 1, MAX_PART_SIZE + 1, 0])
def test_initial_size_must_be_a_valid_part(initial: int) -> None:
    with pytest.raises(ValueError, match="initial part size"):
        PartSchedule(initial)


def test_large_initial_sizes_are_capped() -> None:
    schedule = PartSchedule(5 * GiB)
    assert schedule.size(MAX_PARTS) == MAX_PART_SIZE
    assert schedule.capacity() <= MAX_PARTS * MAX_PART_SIZE
    assert schedule.capacity() > 5 * TiB
