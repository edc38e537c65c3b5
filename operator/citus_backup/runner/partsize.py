"""Part sizes for streaming multipart uploads of unknown length.

A dump's size is unknown until pg_dump finishes, yet S3 allows at most 10,000
parts per object, each 5 MiB..5 GiB (only the last may be smaller), and at most
5 TiB per object. Memory is proportional to the part size (a few parts are
buffered), so parts should stay small for small dumps and grow only when the
part count says the dump is large.

The schedule: the first 1,000 parts have the initial size (8 MiB by default,
so dumps up to ~7.8 GiB never use more); after that every 7 parts add 1 MiB.
With the default, 10,000 parts hold ~5.6 TiB (more than the 5 TiB object
limit), a 1 TB dump ends around 4,600 parts of ~520 MiB, and no part exceeds
~1.3 GiB. Linear growth keeps the largest part (and thus memory) far smaller
than doubling would for the same capacity.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB

MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * TiB

DEFAULT_INITIAL_PART_SIZE = 8 * MiB
FLAT_PARTS = 1_000
GROWTH_EVERY = 7
GROWTH_STEP = MiB


class PartLimitExceeded(ValueError):
    """The stream is larger than the schedule's 10,000 parts can hold."""


@dataclass(frozen=True)
class PartSchedule:
    initial: int = DEFAULT_INITIAL_PART_SIZE

    def __post_init__(self) -> None:
        if not MIN_PART_SIZE <= self.initial <= MAX_PART_SIZE:
            raise ValueError(
                f"initial part size {self.initial} must be between {MIN_PART_SIZE} "
                f"and {MAX_PART_SIZE} bytes"
            )

    def size(self, part_number: int) -> int:
        """Size of part ``part_number`` (1-based)."""
        if not 1 <= part_number <= MAX_PARTS:
            raise PartLimitExceeded(
                f"part {part_number} is beyond the S3 limit of {MAX_PARTS} parts"
            )
        steps = max(0, -(-(part_number - FLAT_PARTS) // GROWTH_EVERY))
        return min(self.initial + steps * GROWTH_STEP, MAX_PART_SIZE)

    def capacity(self, parts: int = MAX_PARTS) -> int:
        """Bytes that the first ``parts`` parts hold."""
        return sum(self.size(n) for n in range(1, parts + 1))

    def parts_needed(self, object_size: int) -> int:
        """Number of parts an object of ``object_size`` bytes uploads as."""
        total = 0
        for n in range(1, MAX_PARTS + 1):
            total += self.size(n)
            if total >= object_size:
                return n
        raise PartLimitExceeded(f"{object_size} bytes do not fit in {MAX_PARTS} parts")
