"""``citus-backup restore --verify`` against real PostgreSQL 15 and MinIO.

A verification restores every database of a set into a scratch database,
compares row counts with the manifest, runs the user's SQL checks and drops
the scratch database. These tests check that it never touches anything else
(the source databases keep their OID and contents, no role is created), that
scratch databases are gone afterwards whatever happened (success, a failed
check, a corrupted object, SIGTERM mid-run, a SIGKILLed earlier run), and that
each failure has its typed reason.
"""

from __future__ import annotations

import io
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_runner_support import (
    Runner,
    admin,
    checksums,
    create_database,
    database_names,
    drop_databases,
    new_bucket,
)

from citus_backup.runner import layout
from citus_backup.runner.verify import SCRATCH_PREFIX, scratch_name
from harness.polling import eventually
from localenv.minio import MinioInfo
from localenv.postgres import PostgresInfo

APP1, APP2 = "rv_app1", "rv_app2"
BACKUP_ID = "20261201T030000Z"
ROLE = "rv_owner"


@pytest.fixture(scope="module")
def runner(postgres: PostgresInfo, minio: MinioInfo) -> Iterator[Runner]:
    with admin(postgres) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {ROLE}")
        conn.execute(f"CREATE ROLE {ROLE}")
    create_database(
        postgres,
        APP1,
        "CREATE TABLE orders (id serial PRIMARY KEY, v text)",
        "INSERT INTO orders (v) SELECT md5(g::text) FROM generate_series(1, 300) g",
        "CREATE TABLE items (id int PRIMARY KEY, o int REFERENCES orders)",
        "INSERT INTO items SELECT g, g FROM generate_series(1, 30) g",
        f"ALTER TABLE orders OWNER TO {ROLE}",
    )
    create_database(
        postgres, APP2, "CREATE TABLE t (x int)", "INSERT INTO t SELECT generate_series(1, 70)"
    )
    runner = Runner(postgres, minio, new_bucket(minio, "rverify"), "verify-tests")
    result = runner.run(
        "backup", "--backup-id", BACKUP_ID, "--include-database", APP1, "--include-database", APP2
    )
    assert result.code == 0, result.stderr
    yield runner
    leftovers = [n for n in database_names(postgres) if n.startswith(("rv_", "citus_"))]
    drop_databases(postgres, *leftovers)
    with admin(postgres) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {ROLE}")


def state(postgres: PostgresInfo) -> dict[str, object]:
    """What a verification must leave as it was: sources (OID + rows), roles, databases."""
    with admin(postgres) as conn:
        roles = sorted(r[0] for r in conn.execute("SELECT rolname FROM pg_roles").fetchall())
    return {
        APP1: checksums(postgres, APP1),
        APP2: checksums(postgres, APP2),
        "roles": roles,
        "databases": sorted(database_names(postgres)),
    }


def scratch(postgres: PostgresInfo) -> list[str]:
    return sorted(
        n for n in database_names(postgres) if n.startswith((SCRATCH_PREFIX, "citus_backup_tmp_"))
    )


def verify(runner: Runner, *extra: str) -> list[str]:
    return ["restore", "--backup-id", BACKUP_ID, "--verify", *extra]


def write_checks(directory: Path, **checks: str) -> Path:
    directory.mkdir(exist_ok=True)
    for name, query in checks.items():
        (directory / name).write_text(query)
    # What a ConfigMap volume holds besides its keys.
    (directory / "..data").mkdir(exist_ok=True)
    return directory


def test_verification_restores_checks_and_drops_everything_it_made(
    runner: Runner, postgres: PostgresInfo, tmp_path: Path
) -> None:
    before = state(postgres)
    checks = write_checks(
        tmp_path / "checks",
        **{
            f"{APP1}.orders-not-empty.sql": "SELECT count(*) = 300 FROM orders",
            f"{APP1}.fk-holds.sql": "SELECT NOT EXISTS (SELECT 1 FROM items i "
            "LEFT JOIN orders o ON o.id = i.o WHERE o.id IS NULL)",
            f"{APP2}.sum.sql": "SELECT sum(x) = 2485 FROM t",
        },
    )
    result = runner.run(*verify(runner, "--checks-dir", str(checks)))
    assert result.code == 0, result.stderr
    summary = result.summary
    assert summary["status"] == "succeeded"
    assert sorted(summary["verified"]) == [APP1, APP2]
    assert "330 rows" in summary["verified"][APP1] or "2 table" in summary["verified"][APP1]
    assert summary["verification"][APP1]["checks"] == ["fk-holds", "orders-not-empty"]
    assert summary["verification"][APP2]["checks"] == ["sum"]
    assert scratch(postgres) == []
    assert state(postgres) == before


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({f"{APP1}.wrong.sql": "SELECT count(*) = 1 FROM orders"}, "returned False"),
        ({f"{APP1}.null.sql": "SELECT NULL::boolean"}, "returned None"),
        ({f"{APP1}.none.sql": "SELECT true WHERE false"}, "returned 0 rows"),
        ({f"{APP1}.broken.sql": "SELECT * FROM no_such_table"}, "no_such_table"),
        ({f"{APP1}.writes.sql": "INSERT INTO orders (v) VALUES ('x') RETURNING true"}, "read-only"),
    ],
)
def test_a_failing_check_fails_the_verification_naming_it_and_leaves_nothing(
    runner: Runner, postgres: PostgresInfo, tmp_path: Path, files: dict[str, str], message: str
) -> None:
    before = state(postgres)
    result = runner.run(*verify(runner, "--checks-dir", str(write_checks(tmp_path / "c", **files))))
    assert result.code == 1
    assert result.summary["reason"] == "CheckFailed"
    check = next(iter(files)).removesuffix(".sql")
    assert f"check {check}" in result.summary["error"]
    assert message in result.summary["error"]
    assert scratch(postgres) == []
    assert state(postgres) == before


@pytest.mark.parametrize(
    ("name", "reason"),
    [("rv_gone.x.sql", "InvalidCheck"), ("no-database.sql", "InvalidCheck")],
)
def test_bad_check_files_are_refused_before_anything_is_created(
    runner: Runner, postgres: PostgresInfo, tmp_path: Path, name: str, reason: str
) -> None:
    result = runner.run(
        *verify(runner, "--checks-dir", str(write_checks(tmp_path / "c", **{name: "SELECT true"})))
    )
    assert result.code == 1
    assert result.summary["reason"] == reason
    assert scratch(postgres) == []


@pytest.mark.parametrize(
    "extra", [["--replace"], ["--globals"], ["--database", APP1, "--target-database", "x"]]
)
def test_verify_refuses_options_that_name_a_real_target(
    runner: Runner, postgres: PostgresInfo, extra: list[str]
) -> None:
    result = runner.run(*verify(runner, *extra))
    assert result.code == 1
    assert result.summary["reason"] == "InvalidArgument"


def test_a_corrupted_object_fails_verification_and_the_backup_stays(
    runner: Runner, postgres: PostgresInfo
) -> None:
    key = f"{runner.prefix}/daily/{BACKUP_ID}/{layout.dump_object_name(APP2)}"
    original = runner.read(key)
    corrupted = bytearray(original)
    corrupted[-10] ^= 0xFF
    s3 = runner.s3()
    s3.put_object(runner.bucket, key, io.BytesIO(bytes(corrupted)), len(corrupted))
    before = state(postgres)
    try:
        result = runner.run(*verify(runner))
        assert result.code == 1
        assert result.summary["reason"] == "ChecksumMismatch"
        assert scratch(postgres) == []
        assert state(postgres) == before
        assert runner.read(key) == bytes(corrupted)  # verification never changes the set
    finally:
        s3.put_object(runner.bucket, key, io.BytesIO(original), len(original))


def test_leftover_scratch_of_a_killed_run_is_dropped_by_the_next(
    runner: Runner, postgres: PostgresInfo
) -> None:
    leftover = scratch_name(APP1)
    create_database(postgres, leftover, "CREATE TABLE junk (x int)")
    other = SCRATCH_PREFIX + "00000000_gone"
    create_database(postgres, other)
    result = runner.run(*verify(runner))
    assert result.code == 0, result.stderr
    assert scratch(postgres) == []


def test_sigterm_mid_verification_drops_the_scratch_database(
    runner: Runner, postgres: PostgresInfo
) -> None:
    before = state(postgres)
    # The runner waits once the scratch database is restored (before the checks).
    proc = runner.popen(*verify(runner), CITUS_BACKUP_PAUSE_AT="checks")
    eventually(
        lambda: scratch_name(APP1) in database_names(postgres) or proc.poll() is not None,
        "the scratch database",
    )
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert scratch(postgres) == []
    assert state(postgres) == before


def test_a_restore_advertises_its_progress_to_the_operators_probe(
    runner: Runner, postgres: PostgresInfo
) -> None:
    """The beacon (runner.beacon) read by the operator's real probe (clients.postgres)."""
    from citus_backup.api.policy import PostgresConnection  # noqa: PLC0415
    from citus_backup.clients.postgres import PsycopgProbe  # noqa: PLC0415
    from citus_backup.runner.beacon import PREFIX, parse_beacon  # noqa: PLC0415

    tag = "0123456789ab"
    connection = PostgresConnection.model_validate(
        {
            "host": postgres.host,
            "port": postgres.port,
            "user": postgres.user,
            "passwordSecretRef": {"name": "unused", "key": "unused"},
            "sslMode": "disable",
        }
    )
    probe = PsycopgProbe()
    proc = runner.popen(
        *["restore", "--progress-interval=0.2", "--backup-id", BACKUP_ID, "--progress-tag", tag],
        *["--database", APP1, "--target-database", "rv_progress"],
        CITUS_BACKUP_PAUSE_AT="verified",  # restored and checked, not yet named: one done
        CITUS_BACKUP_PAUSE_SECONDS="10",
    )
    try:

        def beacon() -> tuple[int, int, int] | None:
            names = probe.application_names(connection, postgres.password, f"{PREFIX}{tag}:")
            found = [p for p in (parse_beacon(n, tag) for n in names) if p]
            return found[0] if found and found[0][0] == 1 else None

        done, total, size = eventually(beacon, "the restore's beacon", timeout=60)
        assert (done, total) == (1, 1)
        assert size > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    # SIGTERM before the swap: nothing was created.
    assert "rv_progress" not in database_names(postgres)
    assert scratch(postgres) == []
