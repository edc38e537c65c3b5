"""Fire times from cron + IANA time zone across daylight-saving changes."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from citus_backup.specs.schedule import (
    decide,
    fire_times,
    first_of_period,
    next_fire_time,
    previous_fire_time,
)

MADRID = "Europe/Madrid"
NEW_YORK = "America/New_York"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_utc_daily() -> None:
    assert next_fire_time("0 3 * * *", "UTC", utc(2026, 11, 27, 2, 59)) == utc(2026, 11, 27, 3)
    # strictly after
    assert next_fire_time("0 3 * * *", "UTC", utc(2026, 11, 27, 3)) == utc(2026, 11, 28, 3)
    # at or before
    assert previous_fire_time("0 3 * * *", "UTC", utc(2026, 11, 27, 3)) == utc(2026, 11, 27, 3)
    assert previous_fire_time("0 3 * * *", "UTC", utc(2026, 11, 27, 2)) == utc(2026, 11, 26, 3)


def test_local_time_zone() -> None:
    # 03:00 in Madrid is 02:00 UTC in winter and 01:00 UTC in summer
    assert next_fire_time("0 3 * * *", MADRID, utc(2026, 1, 10)) == utc(2026, 1, 10, 2)
    assert next_fire_time("0 3 * * *", MADRID, utc(2026, 7, 10)) == utc(2026, 7, 10, 1)


def test_spring_forward_nonexistent_time_runs_once_shifted() -> None:
    # Europe/Madrid 2026-03-29: 02:00 CET -> 03:00 CEST; 02:30 does not exist.
    times = fire_times("30 2 * * *", MADRID, utc(2026, 3, 27), utc(2026, 3, 31))
    assert times == [
        utc(2026, 3, 27, 1, 30),  # 02:30 CET
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 30),  # shifted: 03:30 CEST
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]
    assert times[2].astimezone(ZoneInfo(MADRID)).strftime("%H:%M") == "03:30"


def test_spring_forward_new_york() -> None:
    # America/New_York 2026-03-08: 02:00 EST -> 03:00 EDT.
    times = fire_times("30 2 * * *", NEW_YORK, utc(2026, 3, 7), utc(2026, 3, 10))
    assert times == [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 6, 30)]


def test_fall_back_repeated_time_runs_once_at_first_occurrence() -> None:
    # America/New_York 2026-11-01: 02:00 EDT -> 01:00 EST; 01:30 happens twice.
    times = fire_times("30 1 * * *", NEW_YORK, utc(2026, 10, 31), utc(2026, 11, 3))
    assert times == [
        utc(2026, 10, 31, 5, 30),  # 01:30 EDT
        utc(2026, 11, 1, 5, 30),  # first 01:30 (EDT) only
        utc(2026, 11, 2, 6, 30),  # 01:30 EST
    ]
    # Europe/Madrid 2026-10-25: 03:00 CEST -> 02:00 CET; 02:30 happens twice.
    madrid = fire_times("30 2 * * *", MADRID, utc(2026, 10, 24), utc(2026, 10, 27))
    assert madrid == [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]


def test_hourly_across_changes() -> None:
    spring = fire_times("0 * * * *", MADRID, utc(2026, 3, 28, 23), utc(2026, 3, 29, 3))
    assert spring == [utc(2026, 3, 29, h) for h in range(4)]  # 01, 03, 04, 05 local
    fall = fire_times("0 * * * *", MADRID, utc(2026, 10, 24, 22), utc(2026, 10, 25, 4))
    # 02:00 local happens twice; it runs once (00:00Z); no run at 01:00Z
    assert fall == [
        utc(2026, 10, 24, 23),
        utc(2026, 10, 25, 0),
        *(utc(2026, 10, 25, h) for h in (2, 3, 4)),
    ]


def test_wall_times_collapsing_into_one_instant_run_once() -> None:
    # 02:00..02:45 do not exist on 2026-03-29 in Madrid; they map onto 03:00..03:45.
    times = fire_times("*/15 2,3 * * *", MADRID, utc(2026, 3, 29, 0), utc(2026, 3, 29, 2))
    assert times == [utc(2026, 3, 29, 1, m) for m in (0, 15, 30, 45)]
    assert len(set(times)) == len(times)


def test_next_and_previous_are_consistent_across_a_year() -> None:
    start = utc(2026, 1, 1)
    times = fire_times("30 2 * * *", MADRID, start, utc(2027, 1, 1))
    assert len(times) == 365
    for earlier, later in itertools.pairwise(times):
        assert previous_fire_time("30 2 * * *", MADRID, later - timedelta(seconds=1)) == earlier
        assert earlier < later


def test_naive_datetimes_rejected() -> None:
    with pytest.raises(ValueError, match="naive"):
        next_fire_time("0 3 * * *", "UTC", datetime(2026, 1, 1))


# --------------------------------------------------------------------------- decide


CREATED = utc(2026, 11, 1)


def test_decide_due_run() -> None:
    d = decide(
        "0 3 * * *",
        "UTC",
        now=utc(2026, 11, 27, 3, 0, 5),
        last_schedule_time=utc(2026, 11, 26, 3),
        created=CREATED,
        starting_deadline_seconds=None,
    )
    assert d.run == utc(2026, 11, 27, 3)
    assert d.missed is None
    assert d.next_run == utc(2026, 11, 28, 3)
    assert d.handled == d.run


def test_decide_nothing_due() -> None:
    d = decide(
        "0 3 * * *",
        "UTC",
        now=utc(2026, 11, 27, 12),
        last_schedule_time=utc(2026, 11, 27, 3),
        created=CREATED,
        starting_deadline_seconds=60,
    )
    assert (d.run, d.missed, d.next_run) == (None, None, utc(2026, 11, 28, 3))


def test_decide_new_policy_does_not_run_for_times_before_creation() -> None:
    d = decide(
        "0 3 * * *",
        "UTC",
        now=utc(2026, 11, 27, 12),
        last_schedule_time=None,
        created=utc(2026, 11, 27, 11),
        starting_deadline_seconds=None,
    )
    assert d.run is None


def test_decide_catch_up_after_downtime_within_deadline() -> None:
    # operator down from 02:00 to 03:40; deadline one hour
    d = decide(
        "0 3 * * *",
        "UTC",
        now=utc(2026, 11, 27, 3, 40),
        last_schedule_time=utc(2026, 11, 26, 3),
        created=CREATED,
        starting_deadline_seconds=3600,
    )
    assert d.run == utc(2026, 11, 27, 3)


def test_decide_missed_beyond_deadline() -> None:
    d = decide(
        "0 3 * * *",
        "UTC",
        now=utc(2026, 11, 27, 9),
        last_schedule_time=utc(2026, 11, 24, 3),  # down for days: only the latest counts
        created=CREATED,
        starting_deadline_seconds=3600,
    )
    assert d.run is None
    assert d.missed == utc(2026, 11, 27, 3)
    assert d.handled == d.missed


def test_decide_no_deadline_always_catches_up_latest() -> None:
    d = decide(
        "0 3 * * *",
        "UTC",
        now=utc(2026, 11, 27, 23),
        last_schedule_time=utc(2026, 11, 20, 3),
        created=CREATED,
        starting_deadline_seconds=None,
    )
    assert d.run == utc(2026, 11, 27, 3)


def test_decide_suspended() -> None:
    d = decide(
        "0 3 * * *",
        "UTC",
        now=utc(2026, 11, 27, 3, 0, 1),
        last_schedule_time=utc(2026, 11, 26, 3),
        created=CREATED,
        starting_deadline_seconds=None,
        suspend=True,
    )
    assert d.run is None
    assert d.missed is None


def test_decide_on_spring_forward_day() -> None:
    d = decide(
        "30 2 * * *",
        MADRID,
        now=utc(2026, 3, 29, 1, 31),
        last_schedule_time=utc(2026, 3, 28, 1, 30),
        created=CREATED.replace(year=2025),
        starting_deadline_seconds=300,
    )
    assert d.run == utc(2026, 3, 29, 1, 30)
    assert d.next_run == utc(2026, 3, 30, 0, 30)


# --------------------------------------------------------------------------- periods


def test_first_of_period() -> None:
    assert first_of_period("0 3 * * *", "UTC", utc(2026, 12, 1, 3), "month")
    assert not first_of_period("0 3 * * *", "UTC", utc(2026, 12, 2, 3), "month")
    assert first_of_period("0 3 * * *", "UTC", utc(2026, 11, 30, 3), "week")  # a Monday
    assert not first_of_period("0 3 * * *", "UTC", utc(2026, 12, 1, 3), "week")
    assert first_of_period("0 3 * * *", "UTC", utc(2027, 1, 1, 3), "year")
    # local time decides: 00:30 Madrid on Dec 1 is still Nov 30 in UTC
    assert first_of_period("30 0 * * *", MADRID, utc(2026, 11, 30, 23, 30), "month")
    # a schedule that skips day 1 still has a first run in the month
    assert first_of_period("0 3 2-31 * *", "UTC", utc(2026, 12, 2, 3), "month")
    with pytest.raises(ValueError, match="period"):
        first_of_period("0 3 * * *", "UTC", utc(2026, 12, 1, 3), "fortnight")
