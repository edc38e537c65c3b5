"""Deterministic, DNS-safe, length-limited names."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from citus_backup.specs.names import (
    backup_id,
    backup_job_name,
    label_value,
    restore_job_name,
    safe_dns_label,
    scheduled_backup_name,
    short_hash,
)

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
T = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


def test_scheduled_backup_name() -> None:
    assert scheduled_backup_name("citus", T) == "citus-202611270300"
    # the time is UTC whatever the zone of the datetime passed
    madrid = T.astimezone(timezone(timedelta(hours=1)))
    assert scheduled_backup_name("citus", madrid) == "citus-202611270300"


def test_scheduled_backup_name_long_policy() -> None:
    policy = "p" * 63
    name = scheduled_backup_name(policy, T)
    assert len(name) == 63
    assert DNS_LABEL.match(name)
    assert name.endswith("-202611270300")
    assert short_hash(policy) in name
    # deterministic, and distinct for policies sharing a long prefix
    assert name == scheduled_backup_name(policy, T)
    assert name != scheduled_backup_name("p" * 62 + "q", T)


def test_scheduled_backup_name_sorts_by_time() -> None:
    names = [scheduled_backup_name("x" * 60, T + timedelta(days=d)) for d in range(3)]
    assert names == sorted(names)


def test_safe_dns_label() -> None:
    assert safe_dns_label("citus") == "citus"
    changed = safe_dns_label("Citus_Prod.v2")
    assert DNS_LABEL.match(changed)
    assert changed.startswith("citus-prod-v2-")
    assert safe_dns_label("a.b") != safe_dns_label("a-b")
    assert DNS_LABEL.match(safe_dns_label("...."))
    long = safe_dns_label("a" * 100)
    assert len(long) == 63
    assert DNS_LABEL.match(long)
    assert len(safe_dns_label("a" * 100, max_length=20)) == 20
    with pytest.raises(ValueError, match="no room"):
        safe_dns_label("a" * 100, max_length=5)


@pytest.mark.parametrize(
    "value", ["citus", "a.b_c-D", "x" * 63, "x" * 64, "-lead", "trail.", "sp ace/slash", ""]
)
def test_label_value(value: str) -> None:
    result = label_value(value)
    assert len(result) <= 63
    assert LABEL_VALUE.match(result)
    if len(value) <= 63 and LABEL_VALUE.match(value):
        assert result == value


def test_job_names() -> None:
    assert backup_job_name("citus-202611270300") == "citus-202611270300-backup"
    assert restore_job_name("restore-app1") == "restore-app1-restore"
    long = backup_job_name("b" * 63)
    assert len(long) == 63
    assert long.endswith("-backup")
    assert DNS_LABEL.match(long)
    dotted = restore_job_name("restore.app1")
    assert DNS_LABEL.match(dotted)
    assert dotted.endswith("-restore")
    assert backup_job_name("b" * 63) != backup_job_name("b" * 62 + "c")


def test_backup_id() -> None:
    assert backup_id(T) == "20261127T030000Z"
    assert backup_id(datetime(2026, 3, 29, 3, 30, 15, 999, tzinfo=UTC)) == "20260329T033015Z"
    with pytest.raises(ValueError, match="naive"):
        backup_id(datetime(2026, 1, 1))
