"""Which retention tiers a backup goes to.

* Every scheduled run goes to the policy's *base tier*: its most frequent
  enabled tier (``daily`` for both presets).
* The first run of an ISO week / month / year (in the policy's time zone)
  also goes to ``weekly`` / ``monthly`` / ``yearly`` when that tier is
  enabled. With the default daily 03:00 schedule and the ``standard`` preset
  that is: every day to ``daily``, the 1st of each month also to ``monthly``.
* A manual CitusBackup goes to ``spec.tier`` (default: the base tier) and
  ``spec.alsoTiers``; each must be enabled in the policy's retention.
"""

from __future__ import annotations

from datetime import datetime

from citus_backup.api.backup import CitusBackupSpec
from citus_backup.api.common import Reason
from citus_backup.api.policy import CitusBackupPolicySpec, Tier
from citus_backup.errors import PermanentError
from citus_backup.specs.schedule import first_of_period

_PERIOD_OF_TIER = {Tier.WEEKLY: "week", Tier.MONTHLY: "month", Tier.YEARLY: "year"}


def tiers_for_run(spec: CitusBackupPolicySpec, scheduled_time: datetime) -> tuple[Tier, ...]:
    """Tiers of the scheduled run at ``scheduled_time``: base tier first, then the others."""
    enabled = spec.retention.enabled_tiers()
    base = enabled[0]
    result = [base]
    for tier in enabled[1:]:
        if first_of_period(spec.schedule, spec.time_zone, scheduled_time, _PERIOD_OF_TIER[tier]):
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
