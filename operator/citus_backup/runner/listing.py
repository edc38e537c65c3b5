"""``citus-backup list``: the backup sets under a prefix, complete or not.

One recursive listing of ``<prefix>/`` is grouped by backup id and tier
(:func:`.layout.parse_key`); a set is complete in a tier when that tier holds
its ``manifest.json``, which is then read (once per backup id) for the time,
databases and size. A set without manifest anywhere — a failed or running
backup — is shown as incomplete with the objects it has, so a failure is
visible instead of silently missing. ``restore --latest`` uses the same
listing to pick the newest complete set.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from citus_backup.errors import PermanentError
from citus_backup.runner import layout
from citus_backup.runner.manifest import Manifest
from citus_backup.runner.progress import human_bytes
from citus_backup.runner.s3 import S3Store

#: A manifest larger than this is not one of ours.
MANIFEST_LIMIT = 64 * 1024 * 1024


@dataclass
class BackupSet:
    backup_id: str
    complete_tiers: list[str] = field(default_factory=list)
    incomplete_tiers: list[str] = field(default_factory=list)
    time: datetime | None = None
    databases: list[str] = field(default_factory=list)
    size: int = 0
    manifest: Manifest | None = None

    @property
    def complete(self) -> bool:
        return bool(self.complete_tiers)

    @property
    def tiers(self) -> list[str]:
        return self.complete_tiers or self.incomplete_tiers

    def as_dict(self) -> dict[str, Any]:
        return {
            "backupId": self.backup_id,
            "time": self.time.isoformat().replace("+00:00", "Z") if self.time else None,
            "status": "complete" if self.complete else "incomplete",
            "tiers": self.tiers,
            "incompleteTiers": self.incomplete_tiers if self.complete else [],
            "databases": self.databases,
            "size": self.size,
        }


def load_manifest(store: S3Store, location: layout.SetLocation) -> Manifest:
    key = location.key(layout.MANIFEST_NAME)
    if store.stat(key) is None:
        raise PermanentError(
            f"backup set {location.url(store.bucket)} has no {layout.MANIFEST_NAME}: "
            "it does not exist or is incomplete (see `citus-backup list`)",
            reason="BackupNotFound",
        )
    data = store.get_bytes(key, MANIFEST_LIMIT)
    try:
        return Manifest.from_json(data)
    except ValueError as exc:
        raise PermanentError(
            f"{location.url(store.bucket)}{layout.MANIFEST_NAME} is not a valid manifest: "
            f"{' '.join(str(exc).split())[:300]}",
            reason="InvalidManifest",
        ) from exc


def list_sets(store: S3Store, prefix: str, tier: str | None = None) -> list[BackupSet]:
    """Every set under ``prefix`` (only ``tier`` if given), oldest first (by start time)."""
    prefix = layout.normalize_prefix(prefix)
    objects: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for key, size in store.list_objects(f"{prefix}/" if prefix else ""):
        parsed = layout.parse_key(prefix, key)
        if parsed is None or (tier is not None and parsed.tier != tier):
            continue
        objects[parsed.backup_id][parsed.tier][parsed.name] = size
    sets = []
    for backup_id in sorted(objects):
        tiers = objects[backup_id]
        entry = BackupSet(backup_id, time=layout.backup_id_time(backup_id))
        for tier_name in sorted(tiers):
            if layout.MANIFEST_NAME in tiers[tier_name]:
                entry.complete_tiers.append(tier_name)
            else:
                entry.incomplete_tiers.append(tier_name)
        if entry.complete:
            location = layout.SetLocation(prefix, entry.complete_tiers[0], backup_id)
            manifest = load_manifest(store, location)
            entry.manifest = manifest
            entry.time = manifest.started_at
            entry.databases = [db.name for db in manifest.databases]
            entry.size = manifest.total_size
        else:
            names = tiers[entry.incomplete_tiers[0]]
            entry.databases = sorted(
                db for db in map(layout.database_from_object_name, names) if db is not None
            )
            entry.size = sum(names.values())
        sets.append(entry)
    sets.sort(key=_order)
    return sets


def _order(entry: BackupSet) -> tuple[datetime, str]:
    return (entry.time or datetime.min.replace(tzinfo=UTC), entry.backup_id)


def latest_complete(store: S3Store, prefix: str, tier: str) -> layout.SetLocation:
    """The complete set in ``tier`` that started last (custom ids sort by time too)."""
    complete = [s for s in list_sets(store, prefix, tier) if tier in s.complete_tiers]
    complete.sort(key=_order)
    if not complete:
        where = f"s3://{store.bucket}/{layout.normalize_prefix(prefix)}"
        raise PermanentError(
            f"no complete backup set in tier {tier!r} under {where}", reason="BackupNotFound"
        )
    return layout.make_location(prefix, tier, complete[-1].backup_id)


def render_json(sets: list[BackupSet]) -> str:
    return json.dumps([s.as_dict() for s in sets], ensure_ascii=False, indent=2)


def render_table(sets: list[BackupSet]) -> str:
    header = ("BACKUP ID", "TIME", "TIERS", "DATABASES", "SIZE", "STATUS")
    rows = [header]
    for s in sets:
        shown = ",".join(s.databases)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        rows.append(
            (
                s.backup_id,
                s.time.strftime("%Y-%m-%d %H:%M:%SZ") if s.time else "-",
                ",".join(s.tiers),
                f"{len(s.databases)} ({shown})" if s.databases else "0",
                human_bytes(s.size),
                "complete" if s.complete else "INCOMPLETE",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines)
