"""Key layout and names: the contract with restore, list, lifecycle rules and humans."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from citus_backup.errors import PermanentError
from citus_backup.runner import layout

WEIRD_NAMES = [
    "app1",
    "App1",
    "my db",
    "we\"ird 'db",
    "dash-name",
    "Ünïcødé-数据库",
    "a=b",
    "-starts-with-dash",
    "slash/in/name",
    "percent%20",
    ".hidden",
    "..",
    "x.y",
]


def test_backup_id_is_sortable_utc_timestamp() -> None:
    local = datetime(2026, 11, 27, 4, 0, 0, tzinfo=timezone(timedelta(hours=1)))
    assert layout.new_backup_id(local) == "20261127T030000Z"
    ids = [layout.new_backup_id(datetime(2026, 1, d, tzinfo=UTC)) for d in (9, 10, 2)]
    assert sorted(ids) == [ids[2], ids[0], ids[1]]
    assert layout.backup_id_time("20261127T030000Z") == datetime(2026, 11, 27, 3, tzinfo=UTC)
    assert layout.backup_id_time("custom-id") is None


@pytest.mark.parametrize("bad", ["", "a/b", "../x", "-x", "a" * 129, "a b", "x..y"])
def test_invalid_backup_ids_are_rejected(bad: str) -> None:
    with pytest.raises(PermanentError) as err:
        layout.validate_backup_id(bad)
    assert err.value.reason == "InvalidArgument"


@pytest.mark.parametrize("good", ["20261127T030000Z", "manual-1", "op.run_2"])
def test_valid_backup_ids(good: str) -> None:
    assert layout.validate_backup_id(good) == good


@pytest.mark.parametrize("bad", ["Daily", "", "a/b", "x_y", "-a"])
def test_invalid_tiers_are_rejected(bad: str) -> None:
    with pytest.raises(PermanentError):
        layout.validate_tier(bad)


def test_prefix_normalization() -> None:
    assert layout.normalize_prefix("/backups//prod/") == "backups/prod"
    assert layout.normalize_prefix("") == ""
    assert layout.normalize_prefix("/") == ""


def test_set_keys() -> None:
    loc = layout.make_location("/backups/prod/", "daily", "20261127T030000Z")
    assert loc.base == "backups/prod/daily/20261127T030000Z/"
    assert loc.key("manifest.json") == "backups/prod/daily/20261127T030000Z/manifest.json"
    assert loc.in_tier("monthly").base == "backups/prod/monthly/20261127T030000Z/"
    assert loc.url("b") == "s3://b/backups/prod/daily/20261127T030000Z/"
    assert layout.make_location("", "daily", "x1").base == "daily/x1/"


def test_plain_names_stay_readable() -> None:
    assert layout.dump_object_name("app1") == "app1.dump"
    assert layout.dump_object_name("my-db_2.v") == "my-db_2.v.dump"
    assert layout.dump_object_name("App1") == "App1.dump"


@pytest.mark.parametrize("name", WEIRD_NAMES)
def test_object_names_round_trip_and_stay_flat(name: str) -> None:
    obj = layout.dump_object_name(name)
    assert "/" not in obj
    assert not obj.startswith(".")
    assert " " not in obj
    assert '"' not in obj
    assert "'" not in obj
    assert obj.isascii()
    assert layout.database_from_object_name(obj) == name


def test_object_names_are_distinct() -> None:
    names = [layout.dump_object_name(n) for n in WEIRD_NAMES]
    assert len(set(names)) == len(names)
    assert layout.dump_object_name("percent%20") != layout.dump_object_name("percent ")


def test_non_dump_objects_are_not_databases() -> None:
    assert layout.database_from_object_name("manifest.json") is None
    assert layout.database_from_object_name("globals.sql") is None
    assert layout.database_from_object_name("started.json") is None


def test_parse_key() -> None:
    parsed = layout.parse_key("p/q", "p/q/daily/20261127T030000Z/app1.dump")
    assert parsed == layout.ParsedKey("daily", "20261127T030000Z", "app1.dump")
    assert layout.parse_key("", "monthly/x1/manifest.json") == layout.ParsedKey(
        "monthly", "x1", "manifest.json"
    )
    assert layout.parse_key("p", "other/daily/x/app.dump") is None
    assert layout.parse_key("p", "p/daily/x/deeper/app.dump") is None
    assert layout.parse_key("p", "p/Daily/x/app.dump") is None
    assert layout.parse_key("p", "p/daily/x") is None


def test_parse_location() -> None:
    bucket, loc = layout.parse_location("s3://bk/backups/prod/daily/20261127T030000Z/")
    assert bucket == "bk"
    assert loc == layout.SetLocation("backups/prod", "daily", "20261127T030000Z")
    bucket, loc = layout.parse_location("daily/x1/manifest.json")
    assert bucket is None
    assert loc == layout.SetLocation("", "daily", "x1")
    for bad in ("s3:///x/y", "x1", "s3://bk/"):
        with pytest.raises(PermanentError):
            layout.parse_location(bad)
