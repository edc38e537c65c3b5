"""Metrics computed from watched objects (citus_backup.metrics), and their exposition."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from citus_backup.metrics.exporter import Metrics, registry_for
from citus_backup.metrics.state import parse_time

T0 = "2026-12-01T03:00:00Z"
STARTED = parse_time("2026-12-02T00:00:00Z")


def policy(name: str = "nightly", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "db", "creationTimestamp": "2026-11-01T00:00:00Z"},
        "spec": {"schedule": "0 3 * * *", "timeZone": "Europe/Madrid"},
        "status": status,
    }


def backup(name: str, phase: str, start: str, end: str | None, **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "db"},
        "spec": {"policyName": "nightly"},
        "status": {"phase": phase, "startTime": start, **status},
    }
    if end:
        body["status"]["completionTime"] = end
    return body


def scrape(metrics: Metrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = generate_latest(registry_for(metrics)).decode()
    values: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return values


NP = (("namespace", "db"), ("policy", "nightly"))


def test_gauges_come_from_the_newest_backups_of_each_policy() -> None:
    metrics = Metrics(started=parse_time("2026-12-03T00:00:00Z"))
    metrics.observe(
        "policy",
        policy(
            nextScheduleTime="2026-12-03T02:00:00Z",
            conditions=[
                {"type": "LifecycleInSync", "status": "True"},
                {"type": "Ready", "status": "False"},
            ],
        ),
    )
    ok = {"conditions": [{"type": "Restorable", "status": "True"}]}
    metrics.observe(
        "backup",
        backup("old", "Succeeded", T0, "2026-12-01T03:10:00Z", totalSizeBytes=10, **ok),
    )
    metrics.observe(
        "backup",
        backup(
            "new",
            "Succeeded",
            "2026-12-02T03:00:00Z",
            "2026-12-02T03:01:40Z",
            totalSizeBytes=300,
            databases={"app1": 100, "app2": 200},
            conditions=[
                {"type": "Restorable", "status": "True"},
                {
                    "type": "Verified",
                    "status": "False",
                    "lastTransitionTime": "2026-12-02T04:00:00Z",
                },
            ],
        ),
    )
    metrics.observe("backup", backup("bad", "Failed", T0, "2026-12-01T03:00:05Z"))
    metrics.observe(
        "backup",
        backup(
            "expired",
            "Succeeded",
            "2026-10-01T03:00:00Z",
            "2026-10-01T03:00:09Z",
            conditions=[{"type": "Restorable", "status": "False"}],
        ),
    )
    metrics.observe("backup", backup("now", "Running", "2026-12-03T03:00:00Z", None))
    v = scrape(metrics)
    assert v["citus_backup_last_success_timestamp_seconds"][NP] == parse_time(
        "2026-12-02T03:01:40Z"
    )
    assert v["citus_backup_last_duration_seconds"][NP] == 100.0
    assert v["citus_backup_last_size_bytes"][NP] == 300.0
    assert v["citus_backup_last_database_size_bytes"][(("database", "app2"), *NP)] == 200.0
    assert v["citus_backup_last_failure_timestamp_seconds"][NP] == parse_time(
        "2026-12-01T03:00:05Z"
    )
    assert v["citus_backup_oldest_restorable_timestamp_seconds"][NP] == parse_time(
        "2026-12-01T03:10:00Z"
    )
    assert v["citus_backup_restorable_backups"][NP] == 2.0
    assert v["citus_backup_backups_running"][NP] == 1.0
    assert v["citus_backup_last_verification_success"][NP] == 0.0
    assert v["citus_backup_last_verification_timestamp_seconds"][NP] == parse_time(
        "2026-12-02T04:00:00Z"
    )
    assert v["citus_backup_lifecycle_in_sync"][NP] == 1.0
    assert v["citus_backup_policy_ready"][NP] == 0.0
    assert v["citus_backup_next_run_timestamp_seconds"][NP] == parse_time("2026-12-03T02:00:00Z")
    assert v["citus_backup_schedule_interval_seconds"][NP] == 86400.0
    assert v["citus_backup_policy_info_suspended"][NP] == 0.0
    # Finished before this process started: in the gauges, not in the counters.
    assert "citus_backup_backups_total" not in v or not v["citus_backup_backups_total"]
    # The process's own metrics are there too.
    assert "process_resident_memory_bytes" in v


def test_counters_count_what_finishes_while_the_process_runs_once() -> None:
    metrics = Metrics(started=STARTED)
    running = backup("b1", "Running", "2026-12-02T03:00:00Z", None)
    done = backup("b1", "Succeeded", "2026-12-02T03:00:00Z", "2026-12-02T03:05:00Z")
    failed = backup("b2", "Failed", "2026-12-02T03:00:00Z", "2026-12-02T03:01:00Z")
    for body in (running, done, done, failed, failed):
        metrics.observe("backup", body)
    restore = {
        "metadata": {"name": "r1", "namespace": "db"},
        "spec": {"backupName": "b1"},
        "status": {"phase": "Failed", "completionTime": "2026-12-02T05:00:00Z"},
    }
    metrics.observe("restore", restore)
    metrics.observe("restore", restore)
    v = scrape(metrics)
    assert v["citus_backup_backups_total"][(*NP, ("result", "succeeded"))] == 1.0
    assert v["citus_backup_backups_total"][(*NP, ("result", "failed"))] == 1.0
    assert v["citus_backup_restores_total"][(("namespace", "db"), ("result", "failed"))] == 1.0
    # Deleting an object drops its gauges, never the counts.
    metrics.forget("backup", "db", "b1")
    metrics.forget("backup", "db", "b2")
    v = scrape(metrics)
    assert v["citus_backup_backups_total"][(*NP, ("result", "succeeded"))] == 1.0
    assert NP not in v.get("citus_backup_last_success_timestamp_seconds", {})


def test_a_deleted_policy_leaves_no_series_and_labels_stay_bounded() -> None:
    metrics = Metrics(started=STARTED)
    metrics.observe("policy", policy("p1"))
    metrics.forget("policy", "db", "p1")
    v = scrape(metrics)
    assert all(("policy", "p1") not in labels for samples in v.values() for labels in samples)
    labels = {name for samples in v.values() for key in samples for name, _ in key}
    assert labels <= {
        "namespace",
        "policy",
        "result",
        "database",
        "implementation",
        "major",
        "minor",
        "patchlevel",
        "version",
        "generation",
    }


def test_verification_interval_is_exported_only_for_scheduled_verification() -> None:
    metrics = Metrics(started=STARTED)
    body = policy()
    body["spec"]["verification"] = {"schedule": "0 5 * * 0"}
    metrics.observe("policy", body)
    assert scrape(metrics)["citus_backup_verification_interval_seconds"][NP] == 7 * 86400.0
