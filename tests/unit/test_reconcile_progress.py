"""Progress of a running backup (reconcile.progress) and how often it is read."""

from __future__ import annotations

from reconcile_fakes import World, backup, policy, world

from citus_backup.api.backup import CitusBackup
from citus_backup.api.policy import CitusBackupPolicy
from citus_backup.reconcile.backup import BackupReconciler
from citus_backup.reconcile.ports import Kind
from citus_backup.reconcile.progress import RunProgress, backup_progress


def test_progress_counts_stored_dumps_and_parts_uploaded_so_far() -> None:
    started = {"databases": ["app1", "app2", "a b"]}
    sizes = {"started.json": 10, "app1.dump": 100, "globals.sql": 5}
    progress = backup_progress(started, sizes, {"app2": 40, "a b": 0})
    assert progress == RunProgress(databases_done=1, databases_total=3, bytes_done=140)
    assert progress.to_status() == {"databasesDone": 1, "databasesTotal": 3, "bytes": 140}
    assert backup_progress(None, {}, {}).to_status() == {"databasesDone": 0, "bytes": 0}


def test_progress_counts_the_parts_of_a_split_database() -> None:
    started = {"databases": ["big", "app1"]}
    sizes = {"started.json": 10, "big.dump.0001": 700, "big.dump.0000": 50, "app1.dump": 100}
    progress = backup_progress(started, sizes, {"big": 0})
    assert progress == RunProgress(databases_done=1, databases_total=2, bytes_done=850)
    sizes["big.dump"] = 5  # the schema archive completes the database
    assert backup_progress(started, sizes, {}).databases_done == 2


class FakeProgress:
    """A TEST DOUBLE for the bucket read (clients.progress.BucketProgress)."""

    def __init__(self) -> None:
        self.reads = 0
        self.value = RunProgress(0, 2, 0)

    def backup(self, policy: CitusBackupPolicy, backup: CitusBackup) -> RunProgress | None:
        self.reads += 1
        return self.value


def test_a_running_backup_shows_progress_read_at_a_bounded_rate() -> None:
    w: World = world()
    w.cluster.add_secrets()
    w.cluster.add(Kind.POLICY, policy())
    w.cluster.add(Kind.BACKUP, backup("b1"))
    source = FakeProgress()
    w.deps.progress = source
    w.deps.poll_seconds = 1.0
    reconciler = BackupReconciler(w.deps)
    reconciler.reconcile("b1", "ns")  # Job created
    w.cluster.set_job("b1-backup", running=True)
    reconciler.reconcile("b1", "ns")
    status = w.cluster.status(Kind.BACKUP, "b1")
    assert status["phase"] == "Running"
    assert status["progress"] == {"databasesDone": 0, "databasesTotal": 2, "bytes": 0}
    assert "0/2 databases stored" in status["message"]
    source.value = RunProgress(1, 2, 2048)
    for _ in range(5):  # polls within 10 s: no new read
        w.clock.advance(seconds=1)
        reconciler.reconcile("b1", "ns")
    assert source.reads == 1
    w.clock.advance(seconds=6)
    reconciler.reconcile("b1", "ns")
    assert source.reads == 2
    status = w.cluster.status(Kind.BACKUP, "b1")
    assert status["progress"] == {"databasesDone": 1, "databasesTotal": 2, "bytes": 2048}
    assert "1/2 databases stored, 2.0 KiB" in status["message"]
    assert w.events.reasons("b1").count("BackupRunning") == 1
    w.cluster.finish_job(
        "b1-backup",
        {"status": "succeeded", "databases": {"app1": 10, "app2": 20}, "tiers": ["daily"]},
    )
    reconciler.reconcile("b1", "ns")
    status = w.cluster.status(Kind.BACKUP, "b1")
    assert status["progress"] == {"databasesDone": 2, "databasesTotal": 2, "bytes": 30}


def test_the_beacon_name_round_trips_and_fits_postgres_limit() -> None:
    from citus_backup.runner.beacon import beacon_name, parse_beacon  # noqa: PLC0415
    from citus_backup.specs.names import progress_tag  # noqa: PLC0415

    tag = progress_tag("ns", "r" * 253)
    name = beacon_name(tag, 2, 3, 123456789012)
    assert len(name) <= 63
    assert parse_beacon(name, tag) == (2, 3, 123456789012)
    assert parse_beacon(name, progress_tag("ns", "other")) is None
    assert parse_beacon("psql", tag) is None


def test_a_running_restore_shows_the_runners_beacon() -> None:
    from reconcile_fakes import restore  # noqa: PLC0415

    from citus_backup.reconcile.restore import RestoreReconciler  # noqa: PLC0415
    from citus_backup.runner.beacon import beacon_name  # noqa: PLC0415
    from citus_backup.specs.names import progress_tag  # noqa: PLC0415

    w = world()
    w.cluster.add_secrets()
    w.cluster.add(Kind.POLICY, policy())
    w.cluster.add(Kind.BACKUP, backup("b1"))
    w.cluster.obj(Kind.BACKUP, "b1")["status"] = {
        "phase": "Succeeded",
        "backupId": "id-b1",
        "completionTime": "2026-11-27T01:00:00Z",
        "databases": {"app1": 10, "app2": 20},
    }
    w.cluster.add(Kind.RESTORE, restore("r", backupName="b1", replace=True))
    reconciler = RestoreReconciler(w.deps)
    reconciler.reconcile("r", "ns")
    args = w.cluster.jobs[("ns", "r-restore")]["spec"]["template"]["spec"]["containers"][0]["args"]
    tag = progress_tag("ns", "r")
    assert args[args.index("--progress-tag") + 1] == tag
    w.probe.sessions = ["psql", beacon_name(progress_tag("ns", "x"), 9, 9, 9)]
    w.cluster.set_job("r-restore", running=True)
    reconciler.reconcile("r", "ns")
    assert "progress" not in w.cluster.status(Kind.RESTORE, "r")  # no beacon of ours yet
    w.probe.sessions.append(beacon_name(tag, 1, 2, 4096))
    w.clock.advance(seconds=11)
    reconciler.reconcile("r", "ns")
    status = w.cluster.status(Kind.RESTORE, "r")
    assert status["progress"] == {"databasesDone": 1, "databasesTotal": 2, "bytes": 4096}
    assert "1/2 databases restored, 4.0 KiB read" in status["message"]
    w.cluster.finish_job(
        "r-restore", {"status": "succeeded", "databases": {"app1": 10, "app2": 20}}
    )
    reconciler.reconcile("r", "ns")
    status = w.cluster.status(Kind.RESTORE, "r")
    assert status["progress"] == {"databasesDone": 2, "databasesTotal": 2, "bytes": 4096}
    assert w.events.reasons("r").count("RestoreRunning") == 1
