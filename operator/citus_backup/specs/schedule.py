"""Fire times of a policy's schedule: cron expression + IANA time zone, DST-correct.

The cron expression is evaluated in *local wall-clock time* of the time zone
(croniter on naive datetimes) and every wall-clock fire time is then mapped to
one instant:

* **Spring forward** (a local time that does not exist, e.g. 02:30 in
  Europe/Madrid on 2026-03-29): the run happens **once**, shifted forward by
  the length of the gap (02:30 becomes 03:30 CEST = 01:30 UTC). This is
  Python's ``fold=0`` reading of a nonexistent time (PEP 495). Several wall
  times that land on the same instant run once.
* **Fall back** (a local time that happens twice, e.g. 01:30 in
  America/New_York on 2026-11-01): the run happens **once**, at the first
  occurrence (01:30 EDT = 05:30 UTC), and not again an hour later. An
  hourly schedule therefore also runs once in the repeated hour.

All functions take and return timezone-aware datetimes; results are in UTC.
Time zone changes larger than :data:`MARGIN` (e.g. Samoa skipping a whole day
in 2011) are not handled.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from citus_backup.api.validation import check_cron, zone

#: Larger than any daylight-saving shift: how far around a time fire times are searched.
MARGIN = timedelta(hours=3)


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{what}: naive datetime, pass a timezone-aware datetime")
    return value


def _wall(instant: datetime, tz: ZoneInfo) -> datetime:
    """Naive local wall-clock time of ``instant``."""
    return instant.astimezone(tz).replace(tzinfo=None)


def _instant(wall: datetime, tz: ZoneInfo) -> datetime:
    """The instant (UTC) a wall-clock fire time maps to (fold=0: see the module docstring)."""
    return wall.replace(tzinfo=tz, fold=0).astimezone(UTC)


def next_fire_time(schedule: str, time_zone: str, after: datetime) -> datetime:
    """The first fire time strictly after ``after``."""
    _aware(after, "after")
    tz = zone(time_zone)
    iterator = croniter(check_cron(schedule), _wall(after, tz) - MARGIN)
    best: datetime | None = None
    while True:
        wall: datetime = iterator.get_next(datetime)
        instant = _instant(wall, tz)
        if instant > after and (best is None or instant < best):
            best = instant
        # Wall times this far past the best one map to later instants: done.
        if best is not None and wall > _wall(best, tz) + MARGIN:
            return best


def previous_fire_time(schedule: str, time_zone: str, at_or_before: datetime) -> datetime:
    """The last fire time at or before ``at_or_before``."""
    _aware(at_or_before, "at_or_before")
    tz = zone(time_zone)
    iterator = croniter(check_cron(schedule), _wall(at_or_before, tz) + MARGIN)
    best: datetime | None = None
    while True:
        wall: datetime = iterator.get_prev(datetime)
        instant = _instant(wall, tz)
        if instant <= at_or_before and (best is None or instant > best):
            best = instant
        if best is not None and wall < _wall(best, tz) - MARGIN:
            return best


def fire_times(schedule: str, time_zone: str, start: datetime, end: datetime) -> list[datetime]:
    """Every fire time in ``(start, end]``, in order (for tests, dry runs and previews)."""
    result: list[datetime] = []
    current = start
    while True:
        current = next_fire_time(schedule, time_zone, current)
        if current > end:
            return result
        result.append(current)


@dataclass(frozen=True)
class ScheduleDecision:
    """What a policy's scheduler should do at ``now``."""

    #: Start a backup for this scheduled time now (``None``: nothing due).
    run: datetime | None
    #: A run was due but is older than startingDeadlineSeconds: record it as missed.
    missed: datetime | None
    #: The next fire time strictly after ``now`` (to requeue at, and for status).
    next_run: datetime

    @property
    def handled(self) -> datetime | None:
        """The scheduled time to store as ``status.lastScheduleTime`` (run or missed)."""
        return self.run or self.missed


def decide(
    schedule: str,
    time_zone: str,
    *,
    now: datetime,
    last_schedule_time: datetime | None,
    created: datetime,
    starting_deadline_seconds: int | None,
    suspend: bool = False,
) -> ScheduleDecision:
    """Whether a scheduled run is due at ``now`` (after operator downtime too).

    Only the most recent fire time at or before ``now`` is considered (older
    missed runs are not replayed one by one). It is due when it is later than
    ``last_schedule_time`` (or, for a policy that never ran, later than its
    creation time ``created``). A due run is started if no more than
    ``starting_deadline_seconds`` have passed since its scheduled time (no
    limit when ``None``); otherwise it is reported as ``missed``. Nothing is
    due while ``suspend`` is set.
    """
    _aware(now, "now")
    next_run = next_fire_time(schedule, time_zone, now)
    latest = previous_fire_time(schedule, time_zone, now)
    baseline = last_schedule_time or created
    if suspend or latest <= _aware(baseline, "baseline"):
        return ScheduleDecision(run=None, missed=None, next_run=next_run)
    late = (now - latest).total_seconds()
    if starting_deadline_seconds is not None and late > starting_deadline_seconds:
        return ScheduleDecision(run=None, missed=latest, next_run=next_run)
    return ScheduleDecision(run=latest, missed=None, next_run=next_run)


def first_of_period(schedule: str, time_zone: str, scheduled_time: datetime, period: str) -> bool:
    """Whether ``scheduled_time`` is the first fire time of its ``period`` in local time.

    ``period`` is ``week`` (ISO week), ``month`` or ``year``. Used to decide
    the weekly/monthly/yearly tiers of a scheduled run.
    """
    tz = zone(time_zone)
    previous = previous_fire_time(schedule, time_zone, scheduled_time - timedelta(microseconds=1))
    return _period_key(previous.astimezone(tz), period) != _period_key(
        scheduled_time.astimezone(tz), period
    )


def period_key(instant: datetime, time_zone: str, period: str) -> tuple[int, ...]:
    """The ``week``/``month``/``year`` that ``instant`` falls in, in local time."""
    return _period_key(_aware(instant, "instant").astimezone(zone(time_zone)), period)


def _period_key(local: datetime, period: str) -> tuple[int, ...]:
    if period == "week":
        iso = local.isocalendar()
        return (iso.year, iso.week)
    if period == "month":
        return (local.year, local.month)
    if period == "year":
        return (local.year,)
    raise ValueError(f"unknown period {period!r}")
