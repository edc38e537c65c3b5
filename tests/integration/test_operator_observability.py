"""Metrics and verification through the real operator: real API server, Job
controller, PostgreSQL and MinIO, Job pods run by the local-node harness.

The metrics are scraped over HTTP from the operator process and their values
compared with the objects' status (not only their names); verifications run
as the operator creates them (``spec.verification``) and by hand
(``spec.verify``), including a corrupted object and failing SQL checks, and
no scratch database is ever left on the server.
"""

from __future__ import annotations

import io
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from operator_support import (
    Fixture,
    Objects,
    OperatorProcess,
    policy_body,
    running_operator,
)
from prometheus_client.parser import text_string_to_metric_families

from citus_backup.runner import layout
from citus_backup.runner.verify import SCRATCH_PREFIX, scratch_name
from harness.polling import eventually
from localenv.kube import KubeInfo

RUN_TIMEOUT = 120.0
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


@pytest.fixture(scope="module")
def operator(
    kube: KubeInfo, tmp_path_factory: pytest.TempPathFactory, log_dir: Path
) -> Iterator[OperatorProcess]:
    work = tmp_path_factory.mktemp("operator-observability")
    yield from running_operator(kube, work, log_dir / "operator-observability.log")


def scrape(operator: OperatorProcess) -> Samples:
    with urllib.request.urlopen(operator.metrics_url, timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def labels(namespace: str, policy: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"namespace": namespace, "policy": policy, **extra}.items()))


def epoch(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def checks_config_map(ns: Objects, name: str, checks: dict[str, str]) -> None:
    ns.core.create_namespaced_config_map(ns.namespace, {"metadata": {"name": name}, "data": checks})


def no_scratch(data: Fixture) -> bool:
    rows = data.sql("postgres", "SELECT datname FROM pg_database")
    return not [r[0] for r in rows if r[0].startswith((SCRATCH_PREFIX, "citus_backup_tmp_"))]


def test_metrics_follow_a_backup_a_failure_and_a_verification(
    operator: OperatorProcess, ns: Objects, data: Fixture
) -> None:
    checks_config_map(
        ns,
        "checks",
        {
            f"{data.app1}.orders.sql": "SELECT count(*) = 50 FROM orders",
            f"{data.app2}.notes.sql": "SELECT count(*) >= 1 FROM notes",
        },
    )
    ns.create(
        policy_body(
            "obs",
            data,
            verification={"everyNthBackup": 1, "checksConfigMap": "checks"},
        )
    )
    broken = policy_body("broken", data)
    broken["spec"]["coordinator"]["includeDatabases"] = ["no_such_database_here"]
    ns.create(broken)

    ns.backup("ok-1", "obs")
    ns.backup("bad-1", "broken")
    ok = ns.wait_phase("CitusBackup", "ok-1", ("Succeeded", "Failed"), RUN_TIMEOUT)
    assert ok["phase"] == "Succeeded", ok
    bad = ns.wait_phase("CitusBackup", "bad-1", ("Succeeded", "Failed"), RUN_TIMEOUT)
    assert bad["phase"] == "Failed", bad

    # --- the verification the policy asked for (everyNthBackup: 1)
    verify = ns.wait_phase("CitusRestore", "ok-1-verify", ("Succeeded", "Failed"), RUN_TIMEOUT)
    assert verify["phase"] == "Succeeded", verify
    restore = ns.get("CitusRestore", "ok-1-verify")
    assert restore["spec"]["verify"] is True
    assert restore["metadata"]["ownerReferences"][0]["name"] == "ok-1"
    assert f"checks passed: {data.app1}.orders, {data.app2}.notes" in verify["message"]
    assert sorted(verify["restoredDatabases"]) == sorted([data.app1, data.app2])
    verified = eventually(
        lambda: ns.condition("CitusBackup", "ok-1", "Verified"), "Verified on the backup"
    )
    assert (verified["status"], verified["reason"]) == ("True", "VerificationSucceeded")
    assert ns.condition("CitusBackup", "ok-1", "Restorable")["status"] == "True"  # type: ignore[index]
    policy = eventually(
        lambda: ns.status("CitusBackupPolicy", "obs").get("lastVerification"),
        "the policy's lastVerification",
    )
    assert (policy["backupName"], policy["succeeded"]) == ("ok-1", True)
    assert ns.has_event("ok-1", "VerificationSucceeded")
    assert ns.has_event("obs", "VerificationSucceeded")
    assert no_scratch(data)
    # The databases themselves were never touched.
    assert data.sql(data.app1, "SELECT count(*) FROM orders") == [(50,)]

    # --- the metrics, over HTTP, against the objects' status
    obs, brk = labels(ns.namespace, "obs"), labels(ns.namespace, "broken")
    ok = ns.status("CitusBackup", "ok-1")

    def settled() -> Samples | None:
        m = scrape(operator)
        wanted = m.get("citus_backup_last_verification_success", {}).get(obs) == 1.0
        return (
            m
            if wanted and brk in m.get("citus_backup_last_failure_timestamp_seconds", {})
            else None
        )

    m = eventually(settled, "the metrics to show the verification and the failure")
    assert m["citus_backup_last_success_timestamp_seconds"][obs] == epoch(ok["completionTime"])
    assert m["citus_backup_last_duration_seconds"][obs] == epoch(ok["completionTime"]) - epoch(
        ok["startTime"]
    )
    assert m["citus_backup_last_size_bytes"][obs] == ok["totalSizeBytes"]
    for database, size in ok["databases"].items():
        assert (
            m["citus_backup_last_database_size_bytes"][
                labels(ns.namespace, "obs", database=database)
            ]
            == size
        )
    assert m["citus_backup_backups_total"][labels(ns.namespace, "obs", result="succeeded")] == 1
    assert m["citus_backup_backups_total"][labels(ns.namespace, "broken", result="failed")] == 1
    assert m["citus_backup_last_failure_timestamp_seconds"][brk] == epoch(bad["completionTime"])
    assert brk not in m.get("citus_backup_last_success_timestamp_seconds", {})
    ns_labels = (("namespace", ns.namespace), ("result", "succeeded"))
    assert m["citus_backup_restores_total"][ns_labels] >= 1
    assert m["citus_backup_restorable_backups"][obs] == 1
    assert m["citus_backup_oldest_restorable_timestamp_seconds"][obs] == epoch(ok["completionTime"])
    assert m["citus_backup_schedule_interval_seconds"][obs] == 365 * 86400  # "0 3 1 1 *"
    next_run = ns.status("CitusBackupPolicy", "obs")["nextScheduleTime"]
    assert m["citus_backup_next_run_timestamp_seconds"][obs] == epoch(next_run)
    assert m["citus_backup_policy_ready"][obs] == 1
    assert m["process_resident_memory_bytes"][()] > 0


def test_a_corrupted_object_or_a_failing_check_fails_verification_and_the_backup_stays(
    operator: OperatorProcess, ns: Objects, data: Fixture
) -> None:
    ns.create(policy_body("corrupt", data))
    ns.backup("c-1", "corrupt")
    ok = ns.wait_phase("CitusBackup", "c-1", ("Succeeded", "Failed"), RUN_TIMEOUT)
    assert ok["phase"] == "Succeeded", ok

    # --- a failing user check
    checks_config_map(ns, "failing", {f"{data.app2}.never.sql": "SELECT count(*) = 999 FROM notes"})
    ns.restore("check-1", backupName="c-1", verify=True, checksConfigMap="failing")
    status = ns.wait_phase("CitusRestore", "check-1", ("Succeeded", "Failed"), RUN_TIMEOUT)
    assert status["phase"] == "Failed", status
    assert f"check {data.app2}.never returned False" in status["message"]
    verified = eventually(
        lambda: ns.condition("CitusBackup", "c-1", "Verified"), "Verified on the backup"
    )
    assert (verified["status"], verified["reason"]) == ("False", "CheckFailed")
    assert no_scratch(data)

    # --- a corrupted object in the bucket
    from minio import Minio  # noqa: PLC0415

    s3 = Minio(data.minio.endpoint, data.minio.access_key, data.minio.secret_key, secure=False)
    key = f"corrupt/daily/{ok['backupId']}/{layout.dump_object_name(data.app2)}"
    response = s3.get_object(data.bucket, key)
    original = response.read()
    response.close()
    corrupted = bytearray(original)
    corrupted[-10] ^= 0xFF
    s3.put_object(data.bucket, key, io.BytesIO(bytes(corrupted)), len(corrupted))
    ns.restore("corrupt-1", backupName="c-1", verify=True)
    status = ns.wait_phase("CitusRestore", "corrupt-1", ("Succeeded", "Failed"), RUN_TIMEOUT)
    assert status["phase"] == "Failed", status
    verified = eventually(
        lambda: (
            (c := ns.condition("CitusBackup", "c-1", "Verified"))
            and c["reason"] == ("ChecksumMismatch")
            and c
        ),
        "Verified=False ChecksumMismatch on the backup",
    )
    assert verified["status"] == "False"
    assert ns.has_event("c-1", "VerificationFailed")
    # The backup stays: phase, data, Restorable.
    backup = ns.status("CitusBackup", "c-1")
    assert backup["phase"] == "Succeeded"
    assert ns.condition("CitusBackup", "c-1", "Restorable")["status"] == "True"  # type: ignore[index]
    response = s3.get_object(data.bucket, key)
    assert response.read() == bytes(corrupted)
    response.close()
    assert no_scratch(data)
    assert scratch_name(data.app2) not in {
        r[0] for r in data.sql("postgres", "SELECT datname FROM pg_database")
    }
    m = eventually(
        lambda: (
            (s := scrape(operator))
            .get("citus_backup_last_verification_success", {})
            .get(labels(ns.namespace, "corrupt"))
            == 0.0
            and s
        ),
        "the failed verification in the metrics",
    )
    assert (
        m["citus_backup_restores_total"][(("namespace", ns.namespace), ("result", "failed"))] == 2
    )
