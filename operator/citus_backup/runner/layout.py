"""Where a backup set lives in the bucket, and how its names are made.

The layout is the contract between ``backup``, ``restore``, ``list``, the
operator's retention rules (lifecycle rules filter on ``<prefix>/<tier>/``) and
a human with ``mc``/``aws s3``, so it is defined once, here, without I/O::

    <prefix>/<tier>/<backup-id>/started.json    written first: the run exists
    <prefix>/<tier>/<backup-id>/globals.sql     pg_dumpall --globals-only
    <prefix>/<tier>/<backup-id>/<database>.dump pg_dump -Fc, one per database
    <prefix>/<tier>/<backup-id>/<database>.dump.0001 data parts of a split
                                                database (.dump is then its
                                                schema-only archive; :mod:`.split`)
    <prefix>/<tier>/<backup-id>/manifest.json   written last: the set is complete

Backup ids are UTC timestamps (``20261127T030000Z``) so that lexical order is
time order. Database names may contain anything PostgreSQL allows (spaces,
quotes, slashes, non-ASCII); in object names every byte outside
``[A-Za-z0-9._-]`` is percent-encoded (UTF-8), which is injective, keeps plain
names readable (``app1.dump``) and never creates extra "directories".
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime

from citus_backup.errors import PermanentError

BACKUP_ID_FORMAT = "%Y%m%dT%H%M%SZ"
DEFAULT_TIER = "daily"
MANIFEST_NAME = "manifest.json"
GLOBALS_NAME = "globals.sql"
STARTED_NAME = "started.json"
DUMP_SUFFIX = ".dump"
#: Part indexes are four digits.
MAX_PART_INDEX = 9999

_BACKUP_ID_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")
_TIER_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_SAFE = "-_."


def invalid(message: str) -> PermanentError:
    return PermanentError(message, reason="InvalidArgument")


def new_backup_id(now: datetime) -> str:
    """A sortable UTC timestamp id, e.g. ``20261127T030000Z``."""
    return now.astimezone(UTC).strftime(BACKUP_ID_FORMAT)


def validate_backup_id(backup_id: str) -> str:
    if not _BACKUP_ID_RE.match(backup_id) or ".." in backup_id:
        raise invalid(
            f"invalid backup id {backup_id!r}: use letters, digits, '.', '_' and '-' "
            "(at most 128, starting with a letter or digit)"
        )
    return backup_id


def validate_tier(tier: str) -> str:
    if not _TIER_RE.match(tier):
        raise invalid(
            f"invalid tier {tier!r}: use lower-case letters, digits and '-' (e.g. daily, monthly)"
        )
    return tier


def backup_id_time(backup_id: str) -> datetime | None:
    """The time encoded in a generated backup id, or None for a custom id."""
    try:
        return datetime.strptime(backup_id, BACKUP_ID_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def normalize_prefix(prefix: str) -> str:
    """``"/backups//prod/"`` -> ``"backups/prod"``; empty means the bucket root."""
    return "/".join(part for part in prefix.split("/") if part)


def dump_object_name(database: str) -> str:
    """Object name of a database's dump inside its set, e.g. ``app1.dump``."""
    encoded = urllib.parse.quote(database, safe=_SAFE, encoding="utf-8")
    if encoded.startswith("."):
        # No hidden files or "." / ".." lookalikes when downloaded.
        encoded = "%2E" + encoded[1:]
    return encoded + DUMP_SUFFIX


def part_object_name(database: str, index: int) -> str:
    """Object name of data part ``index`` of a split database: ``app1.dump.0001``.

    The name never ends in ``.dump``, so it is never taken for a database's
    archive (:func:`database_from_object_name`), and the fixed-width index
    after the database's own object name keeps it unique and sorted.
    """
    if not 0 <= index <= MAX_PART_INDEX:
        raise invalid(f"part index {index} out of range 0..{MAX_PART_INDEX}")
    return f"{dump_object_name(database)}.{index:04d}"


def database_from_object_name(name: str) -> str | None:
    """Inverse of :func:`dump_object_name`; None for non-dump objects."""
    if not name.endswith(DUMP_SUFFIX) or "/" in name:
        return None
    return urllib.parse.unquote(name[: -len(DUMP_SUFFIX)], encoding="utf-8", errors="strict")


@dataclass(frozen=True)
class SetLocation:
    """One backup set: ``<prefix>/<tier>/<backup_id>/``."""

    prefix: str
    tier: str
    backup_id: str

    @property
    def base(self) -> str:
        """Key prefix of the set, with a trailing slash."""
        head = f"{self.prefix}/" if self.prefix else ""
        return f"{head}{self.tier}/{self.backup_id}/"

    def key(self, name: str) -> str:
        return self.base + name

    def in_tier(self, tier: str) -> SetLocation:
        return SetLocation(self.prefix, tier, self.backup_id)

    def url(self, bucket: str) -> str:
        return f"s3://{bucket}/{self.base}"


def make_location(prefix: str, tier: str, backup_id: str) -> SetLocation:
    return SetLocation(normalize_prefix(prefix), validate_tier(tier), validate_backup_id(backup_id))


def parse_location(location: str) -> tuple[str | None, SetLocation]:
    """``s3://bucket/p/daily/ID/`` or ``p/daily/ID`` -> (bucket or None, set).

    The last two path segments are the tier and the backup id; everything
    before them is the prefix.
    """
    bucket: str | None = None
    path = location
    if location.startswith("s3://"):
        rest = location[len("s3://") :]
        bucket, _, path = rest.partition("/")
        if not bucket:
            raise invalid(f"invalid location {location!r}: no bucket after s3://")
    parts = [part for part in path.split("/") if part]
    if parts and parts[-1] == MANIFEST_NAME:
        parts = parts[:-1]
    if len(parts) < 2:
        raise invalid(
            f"invalid location {location!r}: expected [s3://bucket/]<prefix>/<tier>/<backup-id>"
        )
    return bucket, make_location("/".join(parts[:-2]), parts[-2], parts[-1])


@dataclass(frozen=True)
class ParsedKey:
    tier: str
    backup_id: str
    name: str


def parse_key(prefix: str, key: str) -> ParsedKey | None:
    """Split an object key under ``prefix`` into tier, backup id and name.

    Keys that do not follow the layout (other tools' files) give None.
    """
    head = f"{prefix}/" if prefix else ""
    if not key.startswith(head):
        return None
    parts = key[len(head) :].split("/")
    if len(parts) != 3 or not all(parts):
        return None
    tier, backup_id, name = parts
    if not _TIER_RE.match(tier) or not _BACKUP_ID_RE.match(backup_id):
        return None
    return ParsedKey(tier, backup_id, name)
