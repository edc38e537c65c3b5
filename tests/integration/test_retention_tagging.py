"""The runner's expirable tag on real MinIO: every object is tagged on upload, the newest
successful set of each tier is untagged, the previous one tagged again, a failed run
changes nothing, and ``citus-backup protect`` moves protection by hand."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from test_runner_support import Runner, create_database, drop_databases, new_bucket

from localenv.minio import MinioInfo
from localenv.postgres import PostgresInfo

pytestmark = pytest.mark.integration

DB = "rt_app"
FIRST = "20261101T030000Z"
SECOND = "20261102T030000Z"


@pytest.fixture(scope="module")
def runner(postgres: PostgresInfo, minio: MinioInfo) -> Iterator[Runner]:
    create_database(postgres, DB, "CREATE TABLE t (x int)", "INSERT INTO t VALUES (1)")
    yield Runner(postgres, minio, new_bucket(minio, "tagging"), "tg")
    drop_databases(postgres, DB)


def tags(runner: Runner, tier: str, backup_id: str) -> dict[str, dict[str, str]]:
    """key -> tags of every object of a set."""
    client = runner.s3()
    return {
        key: dict(client.get_object_tags(runner.bucket, key) or {})
        for key in runner.keys(f"{tier}/{backup_id}/")
    }


def untagged(runner: Runner, tier: str, backup_id: str) -> bool:
    found = tags(runner, tier, backup_id)
    assert found, f"no objects in {tier}/{backup_id}"
    return all(not t for t in found.values())


def expirable(runner: Runner, tier: str, backup_id: str) -> bool:
    found = tags(runner, tier, backup_id)
    assert found, f"no objects in {tier}/{backup_id}"
    return all(t == {"citusbackup.io/expirable": "true"} for t in found.values())


def backup(runner: Runner, backup_id: str, *extra: str) -> dict[str, object]:
    result = runner.run("backup", "--backup-id", backup_id, "--include-database", DB, *extra)
    assert result.code == 0, result.stderr
    summary: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary


def test_newest_set_is_never_expirable(runner: Runner) -> None:
    first = backup(runner, FIRST)
    assert first["protected"] is True
    assert untagged(runner, "daily", FIRST)
    assert len(tags(runner, "daily", FIRST)) == 4  # started, globals, dump, manifest

    backup(runner, SECOND, "--also-tier", "monthly")
    assert untagged(runner, "daily", SECOND)
    assert untagged(runner, "monthly", SECOND)
    assert expirable(runner, "daily", FIRST)  # protection moved: the previous one is back

    # A failed run un-protects nothing.
    failed = runner.run("backup", "--include-database", "rt_missing_db")
    assert failed.code == 1
    assert untagged(runner, "daily", SECOND)
    assert expirable(runner, "daily", FIRST)

    # An abandoned run's objects carry the tag from the upload on.
    from citus_backup.runner.config import S3Config  # noqa: PLC0415
    from citus_backup.runner.s3 import S3Store  # noqa: PLC0415

    store = S3Store(
        S3Config(
            endpoint=runner.minio.endpoint,
            secure=False,
            bucket=runner.bucket,
            prefix="tg",
            access_key=runner.minio.access_key,
            secret_key=runner.minio.secret_key,
        )
    )
    store.put_bytes("tg/daily/20261103T030000Z/started.json", b"{}")
    assert expirable(runner, "daily", "20261103T030000Z")

    # Protection can be moved by hand (e.g. to keep an older set after a bad one).
    moved = runner.run("protect", "--backup-id", FIRST)
    assert moved.code == 0, moved.stderr
    assert untagged(runner, "daily", FIRST)
    assert expirable(runner, "daily", SECOND)
    assert untagged(runner, "monthly", SECOND)  # other tiers are not touched
    assert expirable(runner, "daily", "20261103T030000Z")  # incomplete: never protected
