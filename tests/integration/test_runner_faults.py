"""Bad input and faults: a one-line error naming the cause, exit 1, nothing lost.

Real PostgreSQL and MinIO; S3 failures mid-upload go through
:class:`CuttingProxy`, a TCP proxy that resets large transfers or vanishes.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from test_runner_support import (
    Runner,
    admin,
    create_database,
    drop_databases,
    new_bucket,
    proxy_to,
)

from citus_backup.runner import pg, s3
from localenv.minio import MinioInfo
from localenv.postgres import PostgresInfo
from localenv.process import free_port

SMALL = "rf_small"
BIG = "rf_big"  # ~12 MB uncompressed: several 5 MiB parts


@pytest.fixture(scope="module")
def runner(postgres: PostgresInfo, minio: MinioInfo) -> Iterator[Runner]:
    create_database(postgres, SMALL, "CREATE TABLE t (x int)", "INSERT INTO t VALUES (1)")
    create_database(
        postgres,
        BIG,
        "CREATE TABLE blob (id int, v text)",
        "INSERT INTO blob SELECT g, md5(g::text) || md5((g * 7)::text)"
        " FROM generate_series(1, 160000) g",
    )
    yield Runner(postgres, minio, new_bucket(minio, "rfaults"), "faults")
    drop_databases(postgres, SMALL, BIG)


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer/faster S3 retries so that failure tests take seconds."""
    monkeypatch.setattr(s3, "RETRIES", 2)
    monkeypatch.setattr(s3, "RETRY_BACKOFF", 0.1)


def assert_one_line_failure(result_summary: dict[str, object], reason: str) -> str:
    assert result_summary["status"] == "failed"
    assert result_summary["reason"] == reason
    error = str(result_summary["error"])
    assert "\n" not in error
    return error


def test_wrong_password(runner: Runner, postgres: PostgresInfo) -> None:
    result = runner.run_process("backup", "--include-database", SMALL, PGPASSWORD="wrong-pw-123")
    assert result.code == 1
    error = assert_one_line_failure(result.summary, "AuthenticationFailed")
    assert 'password authentication failed for user "postgres"' in error
    assert "wrong-pw-123" not in result.stdout + result.stderr
    assert postgres.password not in result.stdout + result.stderr
    assert runner.keys() == {}


def test_postgres_unreachable(runner: Runner) -> None:
    result = runner.run("backup", PGPORT=str(free_port()))
    assert result.code == 1
    error = assert_one_line_failure(result.summary, "DatabaseUnreachable")
    assert "PostgreSQL unreachable" in error
    assert "Connection refused" in error


def test_restore_with_wrong_password(runner: Runner, postgres: PostgresInfo) -> None:
    base = dataclasses.replace(runner, prefix="faults-password")
    backup = base.run("backup", "--include-database", SMALL, "--backup-id", "pw-1")
    assert backup.code == 0, backup.stderr
    result = base.run("restore", "--backup-id", "pw-1", "--replace", PGPASSWORD="nope-pw-42")
    assert result.code == 1
    error = assert_one_line_failure(result.summary, "AuthenticationFailed")
    assert "password authentication failed" in error
    assert "nope-pw-42" not in result.stdout + result.stderr


def test_wrong_s3_credentials(runner: Runner) -> None:
    result = runner.run(
        "backup", "--include-database", SMALL, S3_SECRET_ACCESS_KEY="not-the-secret-key"
    )
    assert result.code == 1
    error = assert_one_line_failure(result.summary, "S3AuthenticationFailed")
    assert "S3 credentials were rejected" in error
    assert "SignatureDoesNotMatch" in error
    assert "not-the-secret-key" not in result.stdout + result.stderr
    listed = runner.run("list", S3_ACCESS_KEY_ID="nobody")
    assert listed.code == 1
    assert "InvalidAccessKeyId" in listed.stderr


def test_s3_unreachable(runner: Runner, fast_retries: None) -> None:
    result = runner.run("backup", S3_ENDPOINT=f"http://127.0.0.1:{free_port()}")
    assert result.code == 1
    assert "cannot connect" in assert_one_line_failure(result.summary, "S3Unreachable")


def test_credentials_never_reach_argv(
    runner: Runner, postgres: PostgresInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []
    original = pg.subprocess.Popen

    def recording(argv: list[str], *args: object, **kwargs: object) -> object:
        seen.append(list(argv))
        return original(argv, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(pg.subprocess, "Popen", recording)
    result = runner.run("backup", "--include-database", SMALL, "--backup-id", "argv-1")
    assert result.code == 0, result.stderr
    assert {argv[0].rsplit("/", 1)[-1] for argv in seen} >= {"pg_dump", "pg_dumpall", "pg_restore"}
    flat = " ".join(" ".join(argv) for argv in seen)
    for secret in (postgres.password, runner.minio.secret_key, runner.minio.access_key):
        assert secret not in flat
        assert secret not in result.stdout + result.stderr


def test_s3_connection_cut_mid_upload(runner: Runner, minio: MinioInfo, fast_retries: None) -> None:
    """Every large transfer is reset after 1 MiB: the part upload fails,
    the multipart upload is aborted, no manifest, `list` shows incomplete."""
    with proxy_to(minio) as proxy:
        proxy.cut_after = 1024 * 1024
        result = runner.run(
            "backup",
            "--include-database",
            BIG,
            "--compress",
            "0",
            "--part-size",
            "5",
            "--backup-id",
            "cut-1",
            S3_ENDPOINT=f"http://{proxy.endpoint}",
        )
    assert result.code == 1
    error = assert_one_line_failure(result.summary, "S3ConnectionLost")
    # Two parts are in flight: whichever fails first is reported.
    assert re.search(r"upload part \d+ of s3://", error), error
    assert proxy.cuts >= 1
    assert "aborted the incomplete multipart upload" in result.stderr
    assert runner.incomplete_uploads("daily/cut-1/", BIG) == []
    keys = runner.keys("daily/cut-1/")
    assert "faults/daily/cut-1/manifest.json" not in keys
    assert "faults/daily/cut-1/rf_big.dump" not in keys
    listed = json.loads(runner.run("list", "-o", "json").stdout)
    entry = next(s for s in listed if s["backupId"] == "cut-1")
    assert entry["status"] == "incomplete"
    # A later restore refuses the incomplete set.
    restore = runner.run("restore", "--backup-id", "cut-1")
    assert restore.summary["reason"] == "BackupNotFound"
    assert "incomplete" in restore.summary["error"]


def test_s3_vanishes_mid_upload(runner: Runner, minio: MinioInfo, fast_retries: None) -> None:
    """S3 disappears entirely: the run fails cleanly and says so; the upload
    cannot be aborted (S3 is gone), which is logged; no manifest."""
    with proxy_to(minio) as proxy:
        proxy.vanish_after = 3 * 1024 * 1024
        result = runner.run(
            "backup",
            "--include-database",
            BIG,
            "--compress",
            "0",
            "--part-size",
            "5",
            "--backup-id",
            "gone-1",
            S3_ENDPOINT=f"http://{proxy.endpoint}",
        )
    assert result.code == 1
    error = assert_one_line_failure(result.summary, str(result.summary["reason"]))
    assert result.summary["reason"] in {"S3ConnectionLost", "S3Unreachable"}
    assert "s3://" in error
    assert "could not abort the multipart upload" in result.stderr
    assert "faults/daily/gone-1/manifest.json" not in runner.keys("daily/gone-1/")
    listed = json.loads(runner.run("list", "-o", "json").stdout)
    assert next(s for s in listed if s["backupId"] == "gone-1")["status"] == "incomplete"
    # What a lifecycle rule (AbortIncompleteMultipartUpload) cleans up later:
    for key in runner.incomplete_uploads("daily/gone-1/", BIG):
        assert key.startswith("faults/daily/gone-1/")


def test_sigterm_stops_the_backup_cleanly(
    runner: Runner, minio: MinioInfo, postgres: PostgresInfo
) -> None:
    """A deleted pod: SIGTERM aborts the upload, stops pg_dump, reports, exits 1."""
    with proxy_to(minio) as proxy:
        proxy.rate = 2 * 1024 * 1024  # bytes/s: the backup takes several seconds
        proc = runner.popen(
            "backup",
            "--include-database",
            BIG,
            "--compress",
            "0",
            "--part-size",
            "5",
            "--backup-id",
            "term-1",
            S3_ENDPOINT=f"http://{proxy.endpoint}",
        )
        deadline = time.monotonic() + 30
        while proxy.upstream_total < 6 * 1024 * 1024 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hang is the failure
            proc.kill()
            raise
    assert proc.returncode == 1
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["reason"] == "Interrupted"
    assert "aborted the incomplete multipart upload" in err
    assert runner.incomplete_uploads("daily/term-1/", BIG) == []
    assert "faults/daily/term-1/manifest.json" not in runner.keys("daily/term-1/")
    with admin(postgres) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump'"
        ).fetchone()
    assert row == (0,)


def test_restore_target_exists_and_missing_database(runner: Runner) -> None:
    base = dataclasses.replace(runner, prefix="faults-restore")
    backup = base.run("backup", "--include-database", SMALL, "--backup-id", "r-1")
    assert backup.code == 0, backup.stderr
    exists = base.run("restore", "--backup-id", "r-1")
    assert exists.code == 1
    assert_one_line_failure(exists.summary, "TargetExists")
    missing = base.run("restore", "--backup-id", "r-1", "--database", "rf_nope")
    assert_one_line_failure(missing.summary, "DatabaseNotInBackup")


def test_missing_bucket_for_restore_and_list(runner: Runner) -> None:
    gone = dataclasses.replace(runner, bucket="rf-no-such-bucket")
    assert gone.run("restore", "--latest").summary["reason"] == "BucketNotFound"
    listed = gone.run("list")
    assert listed.code == 1
    assert "bucket does not exist" in listed.stderr


def test_backup_fails_when_pg_dump_fails(runner: Runner, postgres: PostgresInfo) -> None:
    """pg_dump exiting non-zero aborts its object: no truncated dump is kept."""
    create_database(postgres, "rf_locked", "CREATE TABLE t (x int)")
    holder = admin(postgres, "rf_locked")
    holder.execute("BEGIN")
    holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
    try:
        result = runner.run(
            "backup",
            "--include-database",
            "rf_locked",
            "--lock-wait-timeout",
            "200ms",
            "--backup-id",
            "locked-1",
        )
    finally:
        holder.close()
        drop_databases(postgres, "rf_locked")
    assert result.code == 1
    error = assert_one_line_failure(result.summary, "ToolFailed")
    assert 'pg_dump of database "rf_locked"' in error
    assert "statement timeout" in error
    assert not [k for k in runner.keys("daily/locked-1/") if k.endswith(".dump")]


def test_restore_downloads_the_object_about_once(
    runner: Runner, minio: MinioInfo, postgres: PostgresInfo
) -> None:
    """pre-data and post-data read only the head of the dump (ranged GETs)."""
    base = dataclasses.replace(runner, prefix="faults-once")
    backup = base.run("backup", "--include-database", BIG, "--compress", "0", "--backup-id", "o-1")
    assert backup.code == 0, backup.stderr
    size = base.manifest("o-1")["databases"][0]["object"]["size"]
    assert size > 10 * 1024 * 1024
    try:
        with proxy_to(minio) as proxy:
            result = base.run(
                "restore",
                "--backup-id",
                "o-1",
                "--database",
                BIG,
                "--target-database",
                "rf_once",
                S3_ENDPOINT=f"http://{proxy.endpoint}",
            )
        assert result.code == 0, result.stderr
        assert size < proxy.downstream_total < size + 1024 * 1024, proxy.downstream_total - size
    finally:
        drop_databases(postgres, "rf_once")
