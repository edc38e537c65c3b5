"""Tiers of scheduled and manual backups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from citus_backup.api import CitusBackupPolicySpec, Tier
from citus_backup.api.backup import CitusBackupSpec
from citus_backup.errors import PermanentError
from citus_backup.specs.retention import backup_tiers, tiers_for_run
from citus_backup.specs.schedule import fire_times

BASE: dict[str, Any] = {
    "coordinator": {"host": "coord", "passwordSecretRef": {"name": "pg", "key": "pw"}},
    "storage": {
        "endpoint": "minio:9000",
        "bucket": "citus-backups",
        "accessKeyIdSecretRef": {"name": "s3", "key": "id"},
        "secretAccessKeySecretRef": {"name": "s3", "key": "secret"},
    },
}


def spec(**updates: Any) -> CitusBackupPolicySpec:
    return CitusBackupPolicySpec.model_validate({**BASE, **updates})


def test_standard_preset_daily_plus_first_of_month() -> None:
    policy = spec()  # 03:00 UTC, standard
    year = fire_times(policy.schedule, policy.time_zone, datetime(2026, 1, 1, tzinfo=UTC),
                      datetime(2027, 1, 1, tzinfo=UTC))  # fmt: skip
    tiers = [tiers_for_run(policy, t) for t in year]
    assert all(t[0] == Tier.DAILY for t in tiers)
    monthly = [t for t, ts in zip(year, tiers, strict=True) if Tier.MONTHLY in ts]
    assert [t.day for t in monthly] == [1] * 12
    assert len(monthly) == 12
    assert len(year) == 365


def test_explicit_tiers_in_local_time() -> None:
    policy = spec(
        schedule="30 0 * * *",
        timeZone="Europe/Madrid",
        retention={
            "daily": {"keepDays": 7},
            "weekly": {"keepDays": 35},
            "monthly": {"keepDays": 365},
            "yearly": {"forever": True},
        },
    )
    # 2027-01-01 00:30 in Madrid = 2026-12-31 23:30 UTC: a Friday, first of month and year
    new_year = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)
    assert tiers_for_run(policy, new_year) == (Tier.DAILY, Tier.MONTHLY, Tier.YEARLY)
    monday = datetime(2027, 1, 3, 23, 30, tzinfo=UTC)  # 2027-01-04 00:30 local, a Monday
    assert tiers_for_run(policy, monday) == (Tier.DAILY, Tier.WEEKLY)
    assert tiers_for_run(policy, monday + timedelta(days=1)) == (Tier.DAILY,)


def test_base_tier_when_daily_is_absent() -> None:
    policy = spec(retention={"weekly": {"keepDays": 60}, "yearly": {"forever": True}})
    tuesday = datetime(2026, 12, 1, 3, tzinfo=UTC)
    assert tiers_for_run(policy, tuesday) == (Tier.WEEKLY,)
    assert tiers_for_run(policy, datetime(2027, 1, 1, 3, tzinfo=UTC)) == (
        Tier.WEEKLY,
        Tier.YEARLY,
    )


def test_manual_backup_tiers() -> None:
    policy = spec()
    assert backup_tiers(policy, CitusBackupSpec(policy_name="p")) == (Tier.DAILY, ())
    assert backup_tiers(
        policy, CitusBackupSpec(policy_name="p", tier=Tier.MONTHLY, also_tiers=(Tier.DAILY,))
    ) == (Tier.MONTHLY, (Tier.DAILY,))
    with pytest.raises(PermanentError, match="weekly is not enabled") as excinfo:
        backup_tiers(policy, CitusBackupSpec(policy_name="p", also_tiers=(Tier.WEEKLY,)))
    assert excinfo.value.reason == "InvalidSpec"


def test_with_history_a_tier_goes_to_the_first_run_of_its_period_that_did_not_fail() -> None:
    policy = spec()  # 03:00 UTC, standard: daily + monthly
    second = datetime(2026, 12, 2, 3, tzinfo=UTC)
    # The 1st's run failed (so it is not in the history): the 2nd takes the monthly copy.
    assert tiers_for_run(policy, second, held=[]) == (Tier.DAILY, Tier.MONTHLY)
    # The month already has one (even from a run still in progress): daily only.
    held = [(datetime(2026, 12, 1, 3, tzinfo=UTC), ("daily", "monthly"))]
    assert tiers_for_run(policy, second, held=held) == (Tier.DAILY,)
    # A monthly copy of November does not count for December.
    november = [(datetime(2026, 11, 30, 3, tzinfo=UTC), ("daily", "monthly"))]
    assert tiers_for_run(policy, second, held=november) == (Tier.DAILY, Tier.MONTHLY)
