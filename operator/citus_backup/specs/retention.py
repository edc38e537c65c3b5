"""Which retention tiers a backup goes to.

* Every scheduled run goes to the policy's *base tier*: its most frequent
  enabled tier (``daily`` for both presets).
* The first run of an ISO week / month / year (in the policy's time zone)
  also goes to ``weekly`` / ``monthly`` / ``yearly`` when that tier is
  enabled. With the default daily 03:00 schedule and the ``standard`` preset
  that is: every day to ``daily``, the 1st of each month also to ``monthly``.
* Given the policy's backups (``held``), a run also goes to a tier whenever no
  backup of its period holds that tier yet except failed ones: a failed run on
  the 1st does not leave the month without a monthly copy (the 2nd's run
  takes it), and a policy created mid-month gets this month's copy.
* A manual CitusBackup goes to ``spec.tier`` (default: the base tier) and
  ``spec.alsoTiers``; each must be enabled in the policy's retention.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from citus_backup.api.backup import CitusBackupSpec
from citus_backup.api.common import Reason
from citus_backup.api.policy import CitusBackupPolicySpec, Tier
from citus_backup.errors import PermanentError
from citus_backup.specs.schedule import first_of_period, period_key

_PERIOD_OF_TIER = {Tier.WEEKLY: "week", Tier.MONTHLY: "month", Tier.YEARLY: "year"}


#: A backup that counts for tier placement: when it ran and the tiers it holds.
Held = tuple[datetime, Sequence[str]]


def tiers_for_run(
    spec: CitusBackupPolicySpec,
    scheduled_time: datetime,
    held: Iterable[Held] | None = None,
) -> tuple[Tier, ...]:
    """Tiers of the scheduled run at ``scheduled_time``: base tier first, then the others.

    ``held``: the policy's backups that did not fail (time, tiers). ``None`` when
    the catalogue is unknown: then only the first run of each period qualifies.
    """
    enabled = spec.retention.enabled_tiers()
    base = enabled[0]
    result = [base]
    history = None if held is None else list(held)
    for tier in enabled[1:]:
        period = _PERIOD_OF_TIER[tier]
        if first_of_period(spec.schedule, spec.time_zone, scheduled_time, period):
            result.append(tier)
        elif history is not None:
            here = period_key(scheduled_time, spec.time_zone, period)
            if not any(
                str(tier) in tiers and period_key(when, spec.time_zone, period) == here
                for when, tiers in history
            ):
                result.append(tier)
    return tuple(result)


def backup_tiers(
    policy: CitusBackupPolicySpec, backup: CitusBackupSpec
) -> tuple[Tier, tuple[Tier, ...]]:
    """``(tier, also_tiers)`` of a backup; PermanentError if one is not enabled in the policy."""
    enabled = policy.retention.enabled_tiers()
    primary = backup.tier or enabled[0]
    also = tuple(tier for tier in backup.also_tiers if tier != primary)
    for tier in (primary, *also):
        if tier not in enabled:
            raise PermanentError(
                f"tier {tier} is not enabled in the policy's retention "
                f"(enabled: {', '.join(enabled)})",
                reason=Reason.INVALID_SPEC,
            )
    return primary, also
