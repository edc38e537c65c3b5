"""Retention through the real API server: the operator (subprocess, its own RBAC) writes a
policy's lifecycle rules into MinIO, repairs a hand deletion, refuses an overlapping
policy, imports a set it finds, marks it expired once its manifest is gone, and on
policy deletion removes only that policy's rules (and no data)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from minio import Minio as S3Client
from minio.commonconfig import ENABLED, Filter
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule
from operator_support import (
    REPO,
    Fixture,
    Objects,
    OperatorProcess,
    install_operator_manifests,
    make_secrets,
    policy_body,
    rbac_denials,
)

from citus_backup.controllers.retention import FINALIZER
from harness.polling import eventually
from localenv.kube import KubeInfo

pytestmark = pytest.mark.integration

#: Seconds between the retention timer's passes in this test's operator.
LIFECYCLE_INTERVAL = "1"
TIMEOUT = 30.0


class RetentionOperator(OperatorProcess):
    """The operator with a short retention timer ($CITUS_BACKUP_LIFECYCLE_INTERVAL)."""

    def start(self) -> None:
        assert self.proc is None
        self.starts += 1
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": str(REPO / "operator"),
            "PYTHONUNBUFFERED": "1",
            "CITUS_BACKUP_LIFECYCLE_INTERVAL": LIFECYCLE_INTERVAL,
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "citus_backup.cli",
                    "operator",
                    "-A",
                    "--standalone",
                    "--metrics-port=0",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )


@pytest.fixture(scope="module")
def operator(
    kube: KubeInfo, tmp_path_factory: pytest.TempPathFactory, log_dir: Path
) -> Iterator[OperatorProcess]:
    work = tmp_path_factory.mktemp("retention-operator")
    kubeconfig = install_operator_manifests(kube, work / "operator.kubeconfig")
    process = RetentionOperator(kubeconfig, log_dir / "retention-operator.log", work)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def rule_ids(client: S3Client, bucket: str) -> set[str]:
    config = client.get_bucket_lifecycle(bucket)
    return {str(r.rule_id) for r in config.rules} if config else set()


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), None)


def test_policy_rules_drift_overlap_catalogue_and_deletion(
    operator: OperatorProcess, data: Fixture, kube_namespace: str, kube_api: Any
) -> None:
    ns = Objects(kube_api, kube_namespace)
    make_secrets(ns.core, kube_namespace, data)
    s3 = S3Client(data.minio.endpoint, data.minio.access_key, data.minio.secret_key, secure=False)
    bucket = data.bucket
    foreign = Rule(ENABLED, Filter(prefix="logs/"), "logs-7d", expiration=Expiration(days=7))
    s3.set_bucket_lifecycle(bucket, LifecycleConfig([foreign]))
    old_set = "ret/daily/20261001T030000Z"
    for name in ("started.json", "manifest.json"):  # a set from an "old cluster"
        s3.put_object(bucket, f"{old_set}/{name}", io.BytesIO(b"{}"), 2)

    ns.create(policy_body("ret", data))
    mine = {
        f"citusbackup.{kube_namespace}.ret.daily",
        f"citusbackup.{kube_namespace}.ret.monthly",
    }
    eventually(lambda: mine <= rule_ids(s3, bucket), "the policy's rules in the bucket", TIMEOUT)
    assert "logs-7d" in rule_ids(s3, bucket)
    status = eventually(
        lambda: (
            (s := ns.status("CitusBackupPolicy", "ret")).get("lifecycle", {}).get("inSync") and s
        ),
        "status.lifecycle.inSync",
        TIMEOUT,
    )
    assert {r["id"] for r in status["lifecycle"]["rules"]} == mine
    cond = condition(status, "LifecycleInSync")
    assert cond is not None
    assert cond["status"] == "True"
    assert FINALIZER in ns.get("CitusBackupPolicy", "ret")["metadata"]["finalizers"]

    # Drift: delete the daily rule by hand; the timer puts it back and says so.
    kept = list((s3.get_bucket_lifecycle(bucket) or LifecycleConfig([])).rules)
    kept = [r for r in kept if not str(r.rule_id).endswith(".ret.daily")]
    s3.set_bucket_lifecycle(bucket, LifecycleConfig(kept))
    eventually(lambda: mine <= rule_ids(s3, bucket), "the deleted rule restored", TIMEOUT)
    eventually(
        lambda: any(
            e.reason == "LifecycleDriftRepaired"
            for e in ns.core.list_namespaced_event(kube_namespace).items
        ),
        "a LifecycleDriftRepaired Event",
        TIMEOUT,
    )

    # The set found in the bucket becomes a restorable CitusBackup.
    imported = eventually(
        lambda: next(
            (
                b
                for b in ns.list("CitusBackup")
                if b["metadata"].get("labels", {}).get("citusbackup.io/imported") == "true"
                and b.get("status", {}).get("phase") == "Succeeded"
            ),
            None,
        ),
        "an imported CitusBackup",
        TIMEOUT,
    )
    assert imported["metadata"]["name"] == "ret-20261001t030000z"
    assert imported["status"]["backupId"] == "20261001T030000Z"
    # Its data expires (here: deleted): the CitusBackup says it cannot be restored.
    s3.remove_object(bucket, f"{old_set}/manifest.json")
    eventually(
        lambda: (
            (c := condition(ns.status("CitusBackup", "ret-20261001t030000z"), "Restorable"))
            and c["status"] == "False"
            and c["reason"] == "DataExpired"
        ),
        "Restorable=False DataExpired",
        TIMEOUT,
    )
    assert ns.status("CitusBackup", "ret-20261001t030000z")["phase"] == "Succeeded"

    # A later policy whose prefix overlaps gets no rules and a clear condition.
    ns.create(
        policy_body(
            "ret-sub",
            data,
            storage={**policy_body("x", data)["spec"]["storage"], "prefix": "ret/sub"},
        )
    )
    cond = eventually(
        lambda: condition(ns.status("CitusBackupPolicy", "ret-sub"), "LifecycleInSync"),
        "LifecycleInSync on the overlapping policy",
        TIMEOUT,
    )
    assert (cond["status"], cond["reason"]) == ("False", "PrefixOverlap")
    assert f"CitusBackupPolicy {kube_namespace}/ret" in cond["message"]
    assert not any(".ret-sub." in i for i in rule_ids(s3, bucket))

    # Deleting the policy removes its rules only; its data stays.
    ns.custom.delete_namespaced_custom_object(
        "citusbackup.io", "v1alpha1", kube_namespace, "citusbackuppolicies", "ret"
    )
    eventually(
        lambda: not any(".ret." in i for i in rule_ids(s3, bucket)),
        "the policy's rules removed",
        TIMEOUT,
    )
    assert "logs-7d" in rule_ids(s3, bucket)
    eventually(
        lambda: "ret" not in {p["metadata"]["name"] for p in ns.list("CitusBackupPolicy")},
        "the policy gone (finalizer released)",
        TIMEOUT,
    )
    assert [o.object_name for o in s3.list_objects(bucket, prefix=f"{old_set}/")] == [
        f"{old_set}/started.json"
    ]
    log = operator.log()
    assert not rbac_denials(log)
    assert data.minio.secret_key not in log
