"""Deterministic, DNS-safe, length-limited names (the idea of kubespawner's safe names).

A name that is already valid and short enough is used unchanged. Otherwise it
is lowercased, characters outside ``[a-z0-9-]`` become ``-``, it is truncated,
and ``-`` plus the first 8 hex digits of the SHA-256 of the *original* name is
appended, so two different inputs never collapse to the same name (``a.b``
and ``a-b`` differ) and the same input always gives the same name.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

DNS_LABEL_MAX = 63
DNS_SUBDOMAIN_MAX = 253
LABEL_VALUE_MAX = 63
HASH_LENGTH = 8

_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_INVALID_LABEL_CHARS = re.compile(r"[^a-z0-9-]+")
_INVALID_VALUE_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")

#: ``strftime`` format of the time part of scheduled backup names (UTC, minutes).
SCHEDULE_TIME_FORMAT = "%Y%m%d%H%M"
#: ``strftime`` format of backup ids (UTC, seconds): sortable and S3-key safe.
BACKUP_ID_FORMAT = "%Y%m%dT%H%M%SZ"

BACKUP_JOB_SUFFIX = "backup"
RESTORE_JOB_SUFFIX = "restore"


def short_hash(value: str, length: int = HASH_LENGTH) -> str:
    """First ``length`` hex digits of the SHA-256 of ``value``."""
    return hashlib.sha256(value.encode()).hexdigest()[:length]


def is_dns_label(value: str) -> bool:
    return len(value) <= DNS_LABEL_MAX and bool(_DNS_LABEL_RE.match(value))


def _sanitize_label(value: str) -> str:
    return _INVALID_LABEL_CHARS.sub("-", value.lower()).strip("-")


def _join_truncated(base: str, suffix: str, max_length: int) -> str:
    """``<base truncated>-<suffix>`` within ``max_length``; no leading/trailing/duplicate '-'."""
    room = max_length - len(suffix) - 1
    if room < 1:
        raise ValueError(f"no room for a name within {max_length} characters")
    head = base[:room].rstrip("-")
    return f"{head}-{suffix}" if head else suffix


def safe_dns_label(value: str, max_length: int = DNS_LABEL_MAX) -> str:
    """``value`` if it is a DNS label within ``max_length``; else a sanitized name with a hash."""
    if len(value) <= max_length and _DNS_LABEL_RE.match(value):
        return value
    return _join_truncated(_sanitize_label(value), short_hash(value), max_length)


def label_value(value: str) -> str:
    """A valid label value for ``value`` (at most 63 characters), hashed when changed."""
    if len(value) <= LABEL_VALUE_MAX and _LABEL_VALUE_RE.match(value):
        return value
    sanitized = _INVALID_VALUE_CHARS.sub("-", value).strip("-_.")
    name = _join_truncated(sanitized, short_hash(value), LABEL_VALUE_MAX)
    return name.lstrip("-_.")


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("naive datetime: pass a timezone-aware datetime")
    return value.astimezone(UTC)


def scheduled_backup_name(policy_name: str, scheduled_time: datetime) -> str:
    """``<policy>-<YYYYMMDDHHMM>`` (UTC) for the run scheduled at ``scheduled_time``.

    At most 63 characters (so it can be a label value and a Job name base);
    a longer (or invalid) policy name is truncated and followed by its hash,
    and the time stays last so names sort by time.
    """
    stamp = _utc(scheduled_time).strftime(SCHEDULE_TIME_FORMAT)
    candidate = f"{policy_name}-{stamp}"
    if is_dns_label(candidate) and is_dns_label(policy_name):
        return candidate
    head = _join_truncated(
        _sanitize_label(policy_name), short_hash(policy_name), DNS_LABEL_MAX - len(stamp) - 1
    )
    return f"{head}-{stamp}"


def backup_id(time: datetime) -> str:
    """The backup's identifier in the bucket: ``YYYYMMDDTHHMMSSZ`` in UTC.

    For a scheduled backup ``time`` is the scheduled time, so a retried run
    writes to the same place; for a manual one, its creation time.
    """
    return _utc(time).strftime(BACKUP_ID_FORMAT)


def job_name(owner_name: str, suffix: str) -> str:
    """``<owner>-<suffix>`` as a DNS label (Job names become pod label values: <= 63)."""
    candidate = f"{owner_name}-{suffix}"
    if is_dns_label(candidate):
        return candidate
    head = _join_truncated(
        _sanitize_label(owner_name), short_hash(owner_name), 63 - len(suffix) - 1
    )
    return f"{head}-{suffix}"


def backup_job_name(backup_name: str) -> str:
    """Name of the Job that runs the CitusBackup ``backup_name``."""
    return job_name(backup_name, BACKUP_JOB_SUFFIX)


def restore_job_name(restore_name: str) -> str:
    """Name of the Job that runs the CitusRestore ``restore_name``."""
    return job_name(restore_name, RESTORE_JOB_SUFFIX)


def progress_tag(namespace: str, name: str) -> str:
    """The tag of a CitusRestore's progress beacon (:mod:`citus_backup.runner.beacon`)."""
    return hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:12]
