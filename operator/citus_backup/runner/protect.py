"""Keep the newest successful backup set of each tier out of reach of expiration.

Why: the bucket's lifecycle rules (owned by the operator, one per tier) expire
objects under ``<prefix>/<tier>/`` that are older than ``keepDays`` *and*
carry the tag ``citusbackup.io/expirable=true``. If backups stop succeeding
for longer than ``keepDays``, plain age-based expiry would delete every
backup; the tag makes the newest good one immune.

Scheme:

* every object a backup writes is uploaded with the tag (:class:`.s3.S3Store`),
  so a failed or abandoned run expires like any old backup;
* after ``manifest.json`` of a run is written (and the set copied to its
  other tiers), :func:`protect` removes the tag from every object of the set
  in each of its tiers, and only *then* puts it back on the other complete
  sets of those tiers that lack it (the previously protected one). At every
  moment at least one complete set per tier is untagged;
* a failed run never reaches this step, so it never un-protects anything.

Re-tagging is cheap: a set's ``manifest.json`` is tagged last, so a set whose
manifest carries the tag is fully tagged and skipped; only the previously
protected set (or one interrupted half-way) is touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from citus_backup.runner import layout
from citus_backup.runner.listing import list_sets
from citus_backup.runner.s3 import S3Store

log = logging.getLogger("citus_backup.runner")


@dataclass
class ProtectResult:
    """What :func:`protect` changed, per tier."""

    protected: dict[str, str] = field(default_factory=dict)
    #: tier -> backup ids made expirable again.
    released: dict[str, list[str]] = field(default_factory=dict)


def _keys(store: S3Store, location: layout.SetLocation) -> list[str]:
    """The set's object keys, manifest last."""
    keys = [key for key, _ in store.list_objects(location.base)]
    manifest = location.key(layout.MANIFEST_NAME)
    return [k for k in keys if k != manifest] + ([manifest] if manifest in keys else [])


def protect(store: S3Store, prefix: str, backup_id: str, tiers: list[str]) -> ProtectResult:
    """Make ``backup_id`` the protected (untagged) set of each of ``tiers``.

    The set must be complete in each tier (its manifest exists); other
    complete sets of those tiers become expirable again. Incomplete sets are
    left as uploaded (tagged).
    """
    result = ProtectResult()
    prefix = layout.normalize_prefix(prefix)
    for tier in tiers:
        location = layout.make_location(prefix, tier, backup_id)
        keys = _keys(store, location)
        if location.key(layout.MANIFEST_NAME) not in keys:
            raise layout.invalid(
                f"backup set {location.url(store.bucket)} is not complete: cannot protect it"
            )
        # Untag the manifest first: from then on the set counts as protected.
        for key in [keys[-1], *keys[:-1]]:
            store.set_expirable(key, False)
        result.protected[tier] = backup_id
        released: list[str] = []
        for other in list_sets(store, prefix, tier):
            if other.backup_id == backup_id or tier not in other.complete_tiers:
                continue
            other_location = layout.make_location(prefix, tier, other.backup_id)
            if store.expirable(other_location.key(layout.MANIFEST_NAME)):
                continue
            for key in _keys(store, other_location):
                store.set_expirable(key, True)
            released.append(other.backup_id)
        result.released[tier] = released
        log.info(
            "backup %s protected in tier %s%s",
            backup_id,
            tier,
            f"; expirable again: {', '.join(released)}" if released else "",
        )
    return result
