"""Start-up order of ``backup`` (no services): fake pg_dump scripts, a fake store.

The pg_dumps start before the S3 side is checked; these tests pin down that
this changes nothing that can be observed in S3: no object is written before
the bucket check, the "set already complete" check and ``started.json``
succeeded, and when one of them fails the dumps are killed and the run fails
with that check's own error, leaving nothing behind.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from citus_backup.errors import CitusBackupError, PermanentError, TransientError
from citus_backup.runner import backup, pg
from citus_backup.runner.backup import BackupOptions, run_backup
from citus_backup.runner.config import PgConfig, S3Config
from citus_backup.runner.manifest import DatabaseProperties, Manifest
from citus_backup.runner.s3 import ObjectStat, S3Store
from citus_backup.runner.summary import RunSummary
from citus_backup.runner.upload import Cancelled

DATABASES = ["db1", "db2"]
PREFIX = "unit"
BACKUP_ID = "20261127T030000Z"
#: Seconds a run may take; the fake pg_dump that keeps running sleeps longer.
RUN_TIMEOUT = 20

# Each fake tool records its pid (and argv) in $FAKE_DIR before doing anything.
PG_DUMP = """#!/bin/sh
if [ "$1" = "--version" ]; then echo "pg_dump (PostgreSQL) 15.99"; exit 0; fi
echo "$*" > "$FAKE_DIR/pg_dump.$$"
for arg in "$@"; do db="$arg"; done
case "$db" in *"$FAKE_FAIL_DB"*)
  echo "pg_dump: error: query failed: ERROR:  permission denied for table t" >&2; exit 1;;
esac
printf 'PGDMP-fake-archive-of-%s' "$db"
case "$db" in *"$FAKE_SLEEP_DB"*) exec sleep 60;; esac
"""
PG_DUMPALL = """#!/bin/sh
echo "$*" > "$FAKE_DIR/pg_dumpall.$$"
printf -- '-- roles\\n'
"""
PG_RESTORE = """#!/bin/sh
echo "$*" > "$FAKE_DIR/pg_restore.$$"
exec cat > /dev/null
"""


@dataclass
class FakeStore:
    """The part of S3Store the backup uses; records every call in order."""

    check: Callable[[], None] = lambda: None
    existing: set[str] = field(default_factory=set)
    bucket: str = "bucket"
    config: S3Config = field(
        default_factory=lambda: S3Config("s3:9000", secure=False, bucket="bucket", prefix=PREFIX)
    )
    calls: list[tuple[str, str]] = field(default_factory=list)
    objects: dict[str, bytes] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self, call: str, key: str = "") -> None:
        with self._lock:
            self.calls.append((call, key))

    def check_bucket(self, create: bool = False) -> bool:
        self._record("check_bucket")
        self.check()
        return False

    def stat(self, key: str) -> ObjectStat | None:
        self._record("stat", key)
        return ObjectStat(key, 1, "etag") if key in self.existing else None

    def put_bytes(
        self, key: str, data: bytes | bytearray, content_type: str = "application/octet-stream"
    ) -> str:
        self._record("put", key)
        self.objects[key] = bytes(data)
        return "etag"

    def create_multipart(self, key: str, content_type: str) -> str:  # pragma: no cover
        self._record("create_multipart", key)
        return "upload"

    def upload_part(
        self, key: str, upload_id: str, part_number: int, data: bytearray
    ) -> str:  # pragma: no cover - every fake dump fits in one part
        self._record("upload_part", key)
        return "etag"

    def complete_multipart(
        self, key: str, upload_id: str, etags: list[tuple[int, str]]
    ) -> None:  # pragma: no cover
        self._record("complete_multipart", key)

    def abort_multipart(self, key: str, upload_id: str) -> None:  # pragma: no cover
        self._record("abort_multipart", key)

    def copy(self, source_key: str, dest_key: str, size: int) -> None:
        self._record("copy", dest_key)
        self.objects[dest_key] = self.objects[source_key]

    def writes(self) -> list[str]:
        return [key for call, key in self.calls if call not in ("check_bucket", "stat")]


class FakeConn:
    """What the backup does on a psycopg connection, besides the patched queries."""

    isolation_level: object = None
    read_only: bool = False

    def execute(self, query: str) -> FakeConn:
        assert query == "SELECT pg_export_snapshot()"
        return self

    def fetchone(self) -> tuple[str]:
        return ("00000003-0000001B-1",)

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def fake_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, script in (
        ("pg_dump", PG_DUMP),
        ("pg_dumpall", PG_DUMPALL),
        ("pg_restore", PG_RESTORE),
    ):
        path = bindir / name
        path.write_text(script)
        path.chmod(0o755)
    record = tmp_path / "record"
    record.mkdir()
    monkeypatch.setenv("PG_BINDIR", str(bindir))
    monkeypatch.setenv("FAKE_DIR", str(record))
    monkeypatch.setenv("FAKE_FAIL_DB", "no database has this name")
    monkeypatch.setenv("FAKE_SLEEP_DB", "no database has this name")
    props = DatabaseProperties(owner="postgres", encoding="UTF8", collate="C", ctype="C")
    monkeypatch.setattr(pg.Pg, "connect", lambda self, database, autocommit=True: FakeConn())
    monkeypatch.setattr(pg, "server_info", lambda conn: pg.ServerInfo("15.99", 159900))
    monkeypatch.setattr(pg, "list_databases", lambda conn: list(DATABASES))
    monkeypatch.setattr(pg, "database_properties", lambda conn, name, version: props)
    monkeypatch.setattr(pg, "extensions", lambda conn: [])
    monkeypatch.setattr(pg, "schemas_and_roles", lambda conn: (["public"], ["postgres"]))
    return record


def pids(record: Path, tool: str) -> list[int]:
    return [int(path.name.rsplit(".", 1)[1]) for path in record.glob(f"{tool}.*")]


def wait_for_dumps(record: Path, count: int = len(DATABASES)) -> None:
    """Block until ``count`` pg_dumps (not ``--version``) have started."""
    deadline = time.monotonic() + 10
    while len(pids(record, "pg_dump")) < count:
        assert time.monotonic() < deadline, "the pg_dumps did not start before the S3 checks"
        time.sleep(0.01)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run(store: FakeStore, **options: Any) -> Manifest:
    """``run_backup`` on a thread: a run that hangs fails the test instead of hanging it."""
    result: list[Manifest] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(
                run_backup(
                    PgConfig(base_env=dict(os.environ)),  # the fake tools need FAKE_*, PATH
                    store.config,
                    # No split: the fake connection answers the snapshot query only.
                    BackupOptions(
                        backup_id=BACKUP_ID,
                        jobs=2,
                        keep_newest=False,
                        **{"split_threshold": 0, **options},
                    ),
                    RunSummary("backup"),
                    store=store,  # type: ignore[arg-type]
                )
            )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(RUN_TIMEOUT)
    assert not thread.is_alive(), f"the backup did not end within {RUN_TIMEOUT} s"
    if errors:
        raise errors[0]
    return result[0]


def set_key(name: str, tier: str = "daily") -> str:
    return f"{PREFIX}/{tier}/{BACKUP_ID}/{name}"


def test_dumps_start_first_and_nothing_is_uploaded_before_the_s3_checks(fake_dir: Path) -> None:
    store = FakeStore(check=lambda: wait_for_dumps(fake_dir))
    manifest = run(store, also_tiers=["monthly"])
    assert [e.name for e in manifest.databases] == DATABASES
    assert manifest.pg_dump_version == "pg_dump (PostgreSQL) 15.99"
    writes = store.writes()
    # The checks, then started.json, then the dumps, then the manifest.
    assert store.calls[:3] == [
        ("check_bucket", ""),
        ("stat", set_key("manifest.json")),
        ("stat", set_key("manifest.json", "monthly")),
    ]
    assert writes[0] == set_key("started.json")
    written = writes.index(set_key("manifest.json"))
    assert sorted(writes[1:written]) == [
        set_key("db1.dump"),
        set_key("db2.dump"),
        set_key("globals.sql"),
    ]
    assert writes[-1] == set_key("manifest.json", "monthly")  # the copies after it, manifest last
    assert store.objects[set_key("db1.dump")] == b"PGDMP-fake-archive-of-dbname=db1"
    # pg_dump ran in the snapshot the metadata was read in.
    argv = [(fake_dir / f"pg_dump.{pid}").read_text() for pid in pids(fake_dir, "pg_dump")]
    assert all("--snapshot 00000003-0000001B-1" in line for line in argv)


@pytest.mark.parametrize(
    "error",
    [
        PermanentError(
            "S3 check bucket s3://bucket: bucket does not exist at http://s3:9000 "
            "(create it, or pass --create-bucket to backup)",
            reason="BucketNotFound",
        ),
        PermanentError(
            "S3 check bucket s3://bucket: the S3 credentials were rejected by http://s3:9000 "
            "(SignatureDoesNotMatch: ...)",
            reason="S3AuthenticationFailed",
        ),
        TransientError("S3 check bucket s3://bucket: cannot connect", reason="S3Unreachable"),
    ],
    ids=lambda error: error.reason,
)
def test_failed_bucket_check_kills_the_started_dumps_and_writes_nothing(
    fake_dir: Path, monkeypatch: pytest.MonkeyPatch, error: CitusBackupError
) -> None:
    # db1's pg_dump keeps running (its worker is reading the pipe); db2's has
    # ended (its worker waits for the gate to upload it).
    monkeypatch.setenv("FAKE_SLEEP_DB", "db1")

    def check() -> None:
        wait_for_dumps(fake_dir)
        time.sleep(0.5)  # db2's worker is at its upload now, waiting for the gate
        raise error

    store = FakeStore(check=check)
    with pytest.raises(CitusBackupError) as raised:
        run(store)  # db1's pg_dump would run for a minute: it was killed
    assert raised.value is error  # the check's own error, not a Cancelled of a dump
    assert store.writes() == []  # no started.json, no dump, no manifest
    children = pids(fake_dir, "pg_dump") + pids(fake_dir, "pg_restore")
    assert len(pids(fake_dir, "pg_dump")) == len(DATABASES)
    assert not [pid for pid in children if alive(pid)]


def test_databases_queued_behind_the_first_dumps_are_not_started_after_a_failure(
    fake_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg, "list_databases", lambda conn: ["db1", "db2", "db3"])
    monkeypatch.setenv("FAKE_SLEEP_DB", "db")  # every dump keeps running
    connected: list[str] = []

    def connect(self: pg.Pg, database: str, autocommit: bool = True) -> FakeConn:
        connected.append(database)
        return FakeConn()

    monkeypatch.setattr(pg.Pg, "connect", connect)

    def check() -> None:
        wait_for_dumps(fake_dir, count=2)  # --jobs 2
        raise PermanentError("S3 check bucket s3://bucket: ...", reason="BucketNotFound")

    store = FakeStore(check=check)
    with pytest.raises(PermanentError, match="check bucket"):
        run(store)
    # db3 may have connected (on deck for the next free slot), but no pg_dump started.
    assert len(pids(fake_dir, "pg_dump")) == 2
    assert connected.count("db3") <= 1
    assert store.writes() == []
    assert not [pid for pid in pids(fake_dir, "pg_dump") if alive(pid)]


def test_a_slot_is_freed_when_a_dump_ends_not_when_its_upload_does(
    fake_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--jobs 2, three databases: while the first two uploads are still being
    sent, the third pg_dump has already started (no idle core between dumps)."""
    monkeypatch.setattr(pg, "list_databases", lambda conn: ["db1", "db2", "db3"])
    seen: list[int] = []

    @dataclass
    class SlowStore(FakeStore):
        def put_bytes(
            self, key: str, data: bytes | bytearray, content_type: str = "application/octet-stream"
        ) -> str:
            if key.endswith(("/db1.dump", "/db2.dump")):
                deadline = time.monotonic() + 5
                while len(pids(fake_dir, "pg_dump")) < 3 and time.monotonic() < deadline:
                    time.sleep(0.01)
                seen.append(len(pids(fake_dir, "pg_dump")))
            return super().put_bytes(key, data, content_type)

    manifest = run(SlowStore())
    assert [d.name for d in manifest.databases] == ["db1", "db2", "db3"]
    assert seen == [3, 3]


def test_existing_complete_set_is_refused_before_anything_is_written(
    fake_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SLEEP_DB", "db1")
    store = FakeStore(existing={set_key("manifest.json", "monthly")})
    with pytest.raises(PermanentError) as raised:
        run(store, also_tiers=["monthly"])
    assert raised.value.reason == "BackupExists"
    assert f"s3://bucket/unit/monthly/{BACKUP_ID}/ already exists" in str(raised.value)
    assert store.writes() == []
    assert not [pid for pid in pids(fake_dir, "pg_dump") if alive(pid)]


def test_interrupt_during_the_s3_checks_stops_the_dumps(
    fake_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM arrives as an exception in the main thread, wherever it is."""
    monkeypatch.setenv("FAKE_SLEEP_DB", "db1")

    def check() -> None:
        wait_for_dumps(fake_dir)
        raise KeyboardInterrupt

    store = FakeStore(check=check)
    with pytest.raises(KeyboardInterrupt):
        run(store)
    assert store.writes() == []
    assert not [pid for pid in pids(fake_dir, "pg_dump") if alive(pid)]


def test_a_dump_failing_during_the_s3_checks_fails_the_run_without_manifest(
    fake_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL_DB", "db2")

    def check() -> None:
        wait_for_dumps(fake_dir)
        time.sleep(0.3)  # db2's pg_dump fails meanwhile

    store = FakeStore(check=check)
    with pytest.raises(PermanentError) as raised:
        run(store)
    assert 'pg_dump of database "db2"' in str(raised.value)
    assert "permission denied for table t" in str(raised.value)
    assert set_key("manifest.json") not in store.writes()
    assert set_key("db2.dump") not in store.writes()


def test_catalog_failure_comes_before_any_dump_or_s3_call(
    fake_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: pg.Pg, database: str, autocommit: bool = True) -> FakeConn:
        raise PermanentError("cannot connect: authentication failed", reason="AuthenticationFailed")

    monkeypatch.setattr(pg.Pg, "connect", refuse)
    store = FakeStore()
    with pytest.raises(PermanentError, match="authentication failed"):
        run(store)
    assert store.calls == []
    assert pids(fake_dir, "pg_dump") == []


def test_gate_hands_out_the_store_only_once_open() -> None:
    cancelled = threading.Event()
    gate = backup._S3Gate(cancelled)
    store = S3Store.__new__(S3Store)
    got: list[S3Store] = []
    waiter = threading.Thread(target=lambda: got.append(gate.store()))
    waiter.start()
    time.sleep(0.1)
    assert not got
    gate.open(store)
    waiter.join(5)
    assert got == [store]


def test_gate_waiters_are_cancelled_with_the_run() -> None:
    cancelled = threading.Event()
    gate = backup._S3Gate(cancelled)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            gate.store()
        except Cancelled as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    cancelled.set()
    waiter.join(5)
    assert not waiter.is_alive()
    assert len(errors) == 1
