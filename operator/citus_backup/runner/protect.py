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

Cost: this runs after every backup, while the Job's pod waits, so it makes one
listing per tier (a set is complete when the listing shows its manifest; no
manifest is downloaded), one tag read per other complete set, and sends the
tag changes of a set concurrently (:data:`WORKERS` at a time). With 30 daily
sets kept that is ~40 small requests, about as long as a handful in a row.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from citus_backup.runner import layout
from citus_backup.runner.s3 import S3Store

log = logging.getLogger("citus_backup.runner")

#: Tag requests in flight at once (small requests; the store's connection
#: pool has at least 4 connections, more are opened as needed).
WORKERS = 8


@dataclass
class ProtectResult:
    """What :func:`protect` changed, per tier."""

    protected: dict[str, str] = field(default_factory=dict)
    #: tier -> backup ids made expirable again.
    released: dict[str, list[str]] = field(default_factory=dict)


def _sets_in_tier(store: S3Store, prefix: str, tier: str) -> dict[str, list[str]]:
    """backup id -> the keys of its objects in ``tier``, from one listing."""
    head = f"{prefix}/{tier}/" if prefix else f"{tier}/"
    sets: dict[str, list[str]] = defaultdict(list)
    for key, _ in store.list_objects(head):
        parsed = layout.parse_key(prefix, key)
        if parsed is not None and parsed.tier == tier:
            sets[parsed.backup_id].append(key)
    return sets


def _all(pool: ThreadPoolExecutor, action: Callable[[str], None], keys: Iterable[str]) -> None:
    """``action`` on every key concurrently; the first error is raised."""
    for _ in pool.map(action, keys):
        pass


def protect(store: S3Store, prefix: str, backup_id: str, tiers: list[str]) -> ProtectResult:
    """Make ``backup_id`` the protected (untagged) set of each of ``tiers``.

    The set must be complete in each tier (its manifest exists); other
    complete sets of those tiers become expirable again. Incomplete sets are
    left as uploaded (tagged).
    """
    result = ProtectResult()
    prefix = layout.normalize_prefix(prefix)

    def untag(key: str) -> None:
        store.set_expirable(key, False)

    def tag(key: str) -> None:
        store.set_expirable(key, True)

    with ThreadPoolExecutor(WORKERS, "protect") as pool:
        for tier in tiers:
            location = layout.make_location(prefix, tier, backup_id)
            manifest = location.key(layout.MANIFEST_NAME)
            sets = _sets_in_tier(store, prefix, tier)
            if manifest not in sets.get(backup_id, []):
                raise layout.invalid(
                    f"backup set {location.url(store.bucket)} is not complete: cannot protect it"
                )
            # Untag the manifest first: from then on the set counts as protected.
            untag(manifest)
            _all(pool, untag, (k for k in sets[backup_id] if k != manifest))
            result.protected[tier] = backup_id

            # The other complete sets (ids were checked by parse_key), by id.
            complete = {
                other: key
                for other in sorted(sets)
                if other != backup_id
                and (key := layout.SetLocation(prefix, tier, other).key(layout.MANIFEST_NAME))
                in sets[other]
            }
            expirable = dict(
                zip(complete, pool.map(store.expirable, complete.values()), strict=True)
            )
            released = [o for o in complete if not expirable[o]]
            for other in released:
                # The manifest last: a tagged manifest means a fully tagged set.
                _all(pool, tag, (k for k in sets[other] if k != complete[other]))
                tag(complete[other])
            result.released[tier] = released
            log.info(
                "backup %s protected in tier %s%s",
                backup_id,
                tier,
                f"; expirable again: {', '.join(released)}" if released else "",
            )
    return result
