"""``citus-backup backup`` and ``list`` against real PostgreSQL 15 and MinIO."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio.error import S3Error
from test_runner_support import (
    Runner,
    admin,
    checksums,
    create_database,
    drop_databases,
    new_bucket,
    scalar,
)

from localenv.binaries import binary
from localenv.minio import MinioInfo
from localenv.postgres import PostgresInfo
from localenv.process import StartError

APP1 = "rb_app1"
APP2 = "rb_app2"
WEIRD = "Rb We\"ird 'Näme-ü =x"
DATABASES = (APP1, APP2, WEIRD)


@pytest.fixture(scope="module")
def databases(postgres: PostgresInfo) -> Iterator[tuple[str, ...]]:
    create_database(
        postgres,
        APP1,
        "CREATE TABLE orders (id int PRIMARY KEY, v text)",
        "INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 300) g",
        "CREATE SCHEMA sales",
        'CREATE TABLE sales."Line Items" (id int PRIMARY KEY, o int REFERENCES orders)',
        'INSERT INTO sales."Line Items" SELECT g, g FROM generate_series(1, 50) g',
        "CREATE INDEX ON orders (v)",
    )
    create_database(postgres, APP2, "CREATE TABLE t (x int)", "INSERT INTO t VALUES (1), (2)")
    create_database(
        postgres, WEIRD, 'CREATE TABLE "T ü" (x text)', "INSERT INTO \"T ü\" VALUES ('ok')"
    )
    yield DATABASES
    drop_databases(postgres, *DATABASES)


@pytest.fixture(scope="module")
def runner(postgres: PostgresInfo, minio: MinioInfo) -> Runner:
    return Runner(postgres, minio, new_bucket(minio, "rbackup"), "backups/prod")


@pytest.fixture(scope="module")
def backup(
    runner: Runner, databases: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, object]:
    """One backup set of the three databases, also copied to tier monthly."""
    log = tmp_path_factory.mktemp("termination") / "termination-log"
    args = [
        "backup",
        "--backup-id",
        "20261127T030000Z",
        "--also-tier",
        "monthly",
        "--termination-log",
        str(log),
        "--progress-interval",
        "0.05",
    ]
    for name in databases:
        args += ["--include-database", name]
    result = runner.run(*args)
    assert result.code == 0, result.stderr
    return {"result": result, "log": log}


def test_summary_line_and_termination_log(backup: dict[str, object], runner: Runner) -> None:
    result = backup["result"]
    summary = result.summary  # type: ignore[attr-defined]
    assert summary["status"] == "succeeded"
    assert summary["backupId"] == "20261127T030000Z"
    assert summary["location"] == f"s3://{runner.bucket}/backups/prod/daily/20261127T030000Z/"
    assert summary["tiers"] == ["daily", "monthly"]
    assert set(summary["databases"]) == set(DATABASES)
    assert summary["error"] is None
    log = backup["log"]
    assert json.loads(log.read_bytes()) == summary  # type: ignore[attr-defined]


def test_progress_is_logged_to_stderr(backup: dict[str, object]) -> None:
    stderr = backup["result"].stderr  # type: ignore[attr-defined]
    for name in ('"rb_app1"', '"rb_app2"', "globals"):
        assert f"backup {name}: done," in stderr
    assert "MB/s" in stderr
    assert "backup 20261127T030000Z complete" in stderr


def test_set_layout_and_manifest(
    backup: dict[str, object], runner: Runner, postgres: PostgresInfo
) -> None:
    keys = runner.keys("daily/20261127T030000Z/")
    base = "backups/prod/daily/20261127T030000Z/"
    assert set(keys) == {
        base + "started.json",
        base + "globals.sql",
        base + "manifest.json",
        base + "rb_app1.dump",
        base + "rb_app2.dump",
        base + "Rb%20We%22ird%20%27N%C3%A4me-%C3%BC%20%3Dx.dump",
    }
    manifest = runner.manifest("20261127T030000Z")
    assert manifest["backupId"] == "20261127T030000Z"
    assert manifest["tier"] == "daily"
    assert manifest["tiers"] == ["daily", "monthly"]
    assert manifest["serverVersionNum"] >= 150000
    assert manifest["pgDumpVersion"].startswith("pg_dump (PostgreSQL) ")
    assert manifest["startedAt"] <= manifest["finishedAt"]
    assert "CREATE ROLE" in runner.read(base + "globals.sql").decode()
    assert manifest["globals"]["name"] == "globals.sql"
    by_name = {db["name"]: db for db in manifest["databases"]}
    assert set(by_name) == set(DATABASES)
    for db in by_name.values():
        data = runner.read(base + db["object"]["name"])
        assert len(data) == db["object"]["size"] == keys[base + db["object"]["name"]]
        assert hashlib.sha256(data).hexdigest() == db["object"]["sha256"]
        assert data.startswith(b"PGDMP")
        assert db["citus"] is None  # plain PostgreSQL: the Citus path is skipped
        assert {"name": "plpgsql", "version": "1.0", "schema": "pg_catalog"} in db["extensions"]
        assert db["properties"]["owner"] == postgres.user
    app1 = by_name[APP1]
    assert app1["toc"]["tables"] == [
        {"schema": "public", "name": "orders"},
        {"schema": "sales", "name": "Line Items"},
    ]
    counts = app1["toc"]["countsByType"]
    assert (counts["TABLE"], counts["TABLE DATA"], counts["INDEX"], counts["FK CONSTRAINT"]) == (
        2,
        2,
        1,
        1,
    )
    assert by_name[WEIRD]["toc"]["tables"] == [{"schema": "public", "name": "T ü"}]


def test_tier_copy_is_complete(backup: dict[str, object], runner: Runner) -> None:
    daily = runner.keys("daily/20261127T030000Z/")
    monthly = runner.keys("monthly/20261127T030000Z/")
    assert {k.replace("/daily/", "/monthly/"): v for k, v in daily.items()} == monthly
    assert runner.manifest("20261127T030000Z", "monthly") == runner.manifest("20261127T030000Z")


def test_list_shows_the_set(backup: dict[str, object], runner: Runner) -> None:
    text = runner.run("list")
    assert text.code == 0
    assert "20261127T030000Z" in text.stdout
    assert "daily,monthly" in text.stdout
    assert "complete" in text.stdout
    listed = runner.run("list", "-o", "json")
    sets = json.loads(listed.stdout)
    entry = next(s for s in sets if s["backupId"] == "20261127T030000Z")
    assert entry["status"] == "complete"
    assert entry["tiers"] == ["daily", "monthly"]
    assert sorted(entry["databases"]) == sorted(DATABASES)
    assert entry["time"].startswith("2026-")
    assert entry["size"] > 0
    only_monthly = json.loads(runner.run("list", "-o", "json", "--tier", "monthly").stdout)
    assert [s["tiers"] for s in only_monthly] == [["monthly"]]


def test_same_backup_id_twice_is_refused(backup: dict[str, object], runner: Runner) -> None:
    result = runner.run("backup", "--backup-id", "20261127T030000Z", "--include-database", APP2)
    assert result.code == 1
    assert result.summary["reason"] == "BackupExists"
    assert "already exists" in result.summary["error"]


def _mc() -> Path | None:
    try:
        return binary("mc", build=False)
    except StartError:
        return None


def test_stored_dump_restores_with_stock_tools(
    backup: dict[str, object], runner: Runner, postgres: PostgresInfo, tmp_path: Path
) -> None:
    """docs/runner.md: download with mc, then pg_restore --clean --if-exists --create."""
    key = f"{runner.prefix}/daily/20261127T030000Z/rb_app1.dump"
    target = tmp_path / "rb_app1.dump"
    mc = _mc()
    if mc is not None:
        env = {**os.environ, "MC_CONFIG_DIR": str(tmp_path / "mc"), **runner.minio.mc_env("backup")}
        subprocess.run(
            [str(mc), "cp", f"backup/{runner.bucket}/{key}", str(target)],
            env=env,
            check=True,
            capture_output=True,
        )
    else:  # pragma: no cover - mc is built with the local environment
        target.write_bytes(runner.read(key))
    before = checksums(postgres, APP1)
    with admin(postgres, APP1) as conn:
        conn.execute('DROP TABLE sales."Line Items"')
        conn.execute("DELETE FROM orders WHERE id > 10")
    env = {**os.environ, **postgres.env()}
    subprocess.run(
        [
            shutil.which("pg_restore") or "pg_restore",
            "-d",
            "postgres",
            "--clean",
            "--if-exists",
            "--create",
            str(target),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    after = checksums(postgres, APP1)
    before.pop("<oid>")
    after.pop("<oid>")
    assert after == before


def test_include_exclude_and_default_id(runner: Runner, databases: tuple[str, ...]) -> None:
    result = runner.run(
        "backup",
        "--include-database",
        APP1,
        "--include-database",
        APP2,
        "--exclude-database",
        APP1,
        "--no-globals",
        "--tier",
        "weekly",
        "--jobs",
        "1",
    )
    assert result.code == 0, result.stderr
    summary = result.summary
    assert list(summary["databases"]) == [APP2]
    assert summary["tiers"] == ["weekly"]
    backup_id = summary["backupId"]
    assert len(backup_id) == 16
    assert backup_id.endswith("Z")
    manifest = runner.manifest(backup_id, "weekly")
    assert manifest["globals"] is None
    missing = runner.run("backup", "--include-database", "rb_nope")
    assert missing.code == 1
    assert missing.summary["reason"] == "DatabaseNotFound"


def test_bucket_is_created_only_when_asked(
    postgres: PostgresInfo, minio: MinioInfo, databases: tuple[str, ...]
) -> None:
    runner = Runner(postgres, minio, "rb-missing-bucket", "p")
    refused = runner.run("backup", "--include-database", APP2)
    assert refused.code == 1
    assert refused.summary["reason"] == "BucketNotFound"
    assert "--create-bucket" in refused.summary["error"]
    with pytest.raises(S3Error):
        runner.s3().list_objects("rb-missing-bucket").__next__()
    created = runner.run("backup", "--include-database", APP2, "--create-bucket")
    assert created.code == 0, created.stderr
    assert any(key.endswith("/manifest.json") for key in list(runner.keys()))


def test_multipart_stream_of_a_larger_dump(
    runner: Runner, postgres: PostgresInfo, databases: tuple[str, ...]
) -> None:
    """A dump bigger than a part: several parts, uploaded while pg_dump runs."""
    create_database(
        postgres,
        "rb_big",
        "CREATE TABLE blob (id int, v text)",
        "INSERT INTO blob SELECT g, md5(g::text) || md5((g * 7)::text)"
        " FROM generate_series(1, 160000) g",
    )
    try:
        result = runner.run(
            "backup",
            "--include-database",
            "rb_big",
            "--compress",
            "0",
            "--part-size",
            "5",
            "--no-globals",
            "--backup-id",
            "big-1",
        )
        assert result.code == 0, result.stderr
        manifest = runner.manifest("big-1")
        size = manifest["databases"][0]["object"]["size"]
        assert size > 2 * 5 * 1024 * 1024
        data = runner.read(f"{runner.prefix}/daily/big-1/rb_big.dump")
        assert hashlib.sha256(data).hexdigest() == manifest["databases"][0]["object"]["sha256"]
        assert runner.incomplete_uploads("daily/big-1/", "rb_big") == []
        assert scalar(postgres, "rb_big", "SELECT count(*) FROM blob") == 160000
    finally:
        drop_databases(postgres, "rb_big")
