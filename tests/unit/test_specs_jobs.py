"""Backup and restore Job builders: golden files, secrets, security context, ownership.

Regenerate the golden files after an intended change with
``UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_specs_jobs.py``
and review the diff.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, V1Job

from citus_backup.api import CitusBackup, CitusBackupPolicy, CitusRestore
from citus_backup.errors import PermanentError
from citus_backup.specs import contract
from citus_backup.specs.jobs import build_backup_job, build_restore_job

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
SAMPLES = REPO / "manifests" / "samples"
IMAGE = "registry.example.com/citus-backup:0.1.0"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def load_sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((SAMPLES / name).read_text())
    return data


def sample_policy(**spec_updates: Any) -> CitusBackupPolicy:
    data = load_sample("policy.yaml")
    data["metadata"]["uid"] = "0b5c1a4e-policy"
    data["spec"].update(spec_updates)
    return CitusBackupPolicy.model_validate(data)


def full_policy() -> CitusBackupPolicy:
    """Every optional Job setting set: TLS with CAs, region, job template."""
    data = load_sample("policy.yaml")
    data["metadata"]["uid"] = "0b5c1a4e-policy"
    spec = data["spec"]
    spec["coordinator"].update(
        sslMode="verify-full",
        sslRootCert={"configMapKeyRef": {"name": "citus-ca", "key": "ca.crt"}},
        includeDatabases=[],
        excludeDatabases=["scratch"],
    )
    spec["storage"].update(
        endpoint="minio.example.com:443",
        secure=True,
        region="eu-west-1",
        ca={"secretKeyRef": {"name": "minio-tls", "key": "ca.crt"}},
    )
    spec["retention"] = {
        "daily": {"keepDays": 14},
        "weekly": {"keepDays": 60},
        "yearly": {"forever": True},
    }
    spec["dump"] = {
        "jobs": 4,
        "compression": 9,
        "parallelDump": {"thresholdBytes": 5368709120, "jobs": 3},
    }
    spec["jobTemplate"] = {
        "image": "registry.example.com/citus-backup:custom",
        "imagePullPolicy": "IfNotPresent",
        "imagePullSecrets": [{"name": "registry-credentials"}],
        "resources": {
            "requests": {"cpu": "500m", "memory": "1Gi"},
            "limits": {"memory": 2147483648},
        },
        "nodeSelector": {"kubernetes.io/arch": "amd64"},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}
        ],
        "serviceAccountName": "citus-backup-runner",
        "priorityClassName": "low",
        "activeDeadlineSeconds": 21600,
        "backoffLimit": 2,
        "ttlSecondsAfterFinished": 3600,
    }
    return CitusBackupPolicy.model_validate(data)


def backup(name: str = "citus-202611270300", **spec: Any) -> CitusBackup:
    return CitusBackup.model_validate(
        {
            "metadata": {"name": name, "namespace": "citus", "uid": "7d1e2f3a-backup"},
            "spec": {"policyName": "citus", **spec},
        }
    )


def succeeded(item: CitusBackup, backup_id: str = "20261127T030000Z") -> CitusBackup:
    return CitusBackup.model_validate(
        {**item.model_dump(mode="json"), "status": {"phase": "Succeeded", "backupId": backup_id}}
    )


def restore(name: str = "restore-app1", **spec: Any) -> CitusRestore:
    return CitusRestore.model_validate(
        {"metadata": {"name": name, "namespace": "citus", "uid": "c0ffee00-restore"}, "spec": spec}
    )


def serialize(job: V1Job) -> dict[str, Any]:
    data: dict[str, Any] = ApiClient().sanitize_for_serialization(job)
    return data


CASES: dict[str, Callable[[], V1Job]] = {
    "job-backup-sample": lambda: build_backup_job(
        sample_policy(), backup(alsoTiers=["monthly"]), image=IMAGE, backup_id="20261127T030000Z"
    ),
    "job-backup-full": lambda: build_backup_job(
        full_policy(),
        backup("citus-manual-x7k2p", tier="weekly", alsoTiers=["yearly"]),
        image=IMAGE,
        backup_id="20261127T101500Z",
    ),
    "job-restore-sample": lambda: build_restore_job(
        restore(**load_sample("restore-app1.yaml")["spec"]),
        succeeded(backup()),
        sample_policy(),
        image=IMAGE,
    ),
    "job-restore-full": lambda: build_restore_job(
        restore(
            "restore-orders",
            backupName="citus-manual-x7k2p",
            databases=["app1"],
            targetDatabase="app1_restored",
            tables=["public.orders", "public.order_lines"],
            replace=True,
            globals=True,
            target={
                "host": "10.0.0.12",
                "port": 6432,
                "user": "restorer",
                "passwordSecretRef": {"name": "restorer", "key": "pw"},
                "sslMode": "require",
            },
            jobTemplate={"activeDeadlineSeconds": 7200, "backoffLimit": 0},
        ),
        succeeded(backup("citus-manual-x7k2p"), "20261127T101500Z"),
        full_policy(),
        image=IMAGE,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    rendered = yaml.safe_dump(serialize(CASES[case]()), sort_keys=True, default_flow_style=False)
    path = GOLDEN / f"{case}.yaml"
    if UPDATE:
        path.write_text(rendered)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert rendered == path.read_text(), f"{case} differs from {path}: UPDATE_GOLDEN=1 to accept"


def all_jobs() -> list[V1Job]:
    return [build() for build in CASES.values()]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_secrets_only_via_secret_key_refs() -> None:
    for job in all_jobs():
        container = job.spec.template.spec.containers[0]
        env = {e.name: e for e in container.env}
        for name in contract.SECRET_ENV:
            assert env[name].value is None, name
            assert env[name].value_from.secret_key_ref is not None, name
        for var in container.env:
            if var.value_from is not None:
                assert var.name in contract.SECRET_ENV, var.name


def test_no_secret_value_or_reference_in_argv_labels_annotations() -> None:
    sentinel = "s3cr3t-sentinel"
    policy = sample_policy(
        coordinator={
            "host": "coordinator",
            "passwordSecretRef": {"name": f"{sentinel}-pg", "key": f"{sentinel}-pw"},
        },
        storage={
            "endpoint": "minio:9000",
            "bucket": "citus-backups",
            "accessKeyIdSecretRef": {"name": f"{sentinel}-s3", "key": f"{sentinel}-id"},
            "secretAccessKeySecretRef": {"name": f"{sentinel}-s3", "key": f"{sentinel}-key"},
        },
    )
    jobs = [
        build_backup_job(policy, backup(), image=IMAGE, backup_id="20261127T030000Z"),
        build_restore_job(restore(policyName="citus"), succeeded(backup()), policy, image=IMAGE),
    ]
    for job in jobs:
        container = job.spec.template.spec.containers[0]
        exposed = [
            *container.command,
            *container.args,
            *_strings(serialize(job)["metadata"]),
            *_strings(serialize(job)["spec"]["template"]["metadata"]),
        ]
        assert not [s for s in exposed if sentinel in s]
        assert not [e for e in container.env if e.value and sentinel in e.value]


def test_restricted_pod_security() -> None:
    for job in all_jobs():
        pod = job.spec.template.spec
        assert pod.restart_policy == "Never"
        assert pod.security_context.run_as_non_root is True
        assert pod.security_context.run_as_user == contract.RUNNER_UID
        assert pod.security_context.seccomp_profile.type == "RuntimeDefault"
        assert pod.automount_service_account_token is False
        assert not pod.host_network
        assert not pod.host_pid
        assert not pod.host_ipc
        for container in pod.containers:
            sc = container.security_context
            assert sc.allow_privilege_escalation is False
            assert sc.read_only_root_filesystem is True
            assert sc.capabilities.drop == ["ALL"]
            assert not sc.capabilities.add
            assert sc.run_as_non_root is True
            assert container.termination_message_path == "/dev/termination-log"
            assert container.termination_message_policy == "FallbackToLogsOnError"
            assert any(m.mount_path == "/tmp" for m in container.volume_mounts)
        for volume in pod.volumes:
            assert volume.host_path is None


def test_owner_reference_and_labels() -> None:
    job = CASES["job-restore-sample"]()
    (owner,) = job.metadata.owner_references
    assert (owner.api_version, owner.kind, owner.name, owner.uid) == (
        "citusbackup.io/v1alpha1",
        "CitusRestore",
        "restore-app1",
        "c0ffee00-restore",
    )
    assert owner.controller is True
    assert owner.block_owner_deletion is True
    labels = job.metadata.labels
    assert labels["app.kubernetes.io/name"] == "citus-backup"
    assert labels["app.kubernetes.io/managed-by"] == "citus-backup-operator"
    assert labels["citusbackup.io/policy"] == "citus"
    assert labels["citusbackup.io/backup"] == "citus-202611270300"
    assert labels["citusbackup.io/restore"] == "restore-app1"
    assert job.spec.template.metadata.labels == labels
    assert job.metadata.namespace == "citus"


def test_ca_mounted_from_secret_and_config_map() -> None:
    job = CASES["job-backup-full"]()
    pod = job.spec.template.spec
    volumes = {v.name: v for v in pod.volumes}
    assert volumes["s3-ca"].secret.secret_name == "minio-tls"
    assert volumes["pg-ca"].config_map.name == "citus-ca"
    env = {e.name: e.value for e in pod.containers[0].env}
    assert env["S3_CA_FILE"] == "/etc/citus-backup/s3-ca/ca.crt"
    assert env["PGSSLROOTCERT"] == "/etc/citus-backup/pg-ca/ca.crt"
    assert env["S3_ENDPOINT"] == "https://minio.example.com:443"
    assert env["S3_REGION"] == "eu-west-1"


def test_restore_globals_default() -> None:
    full = build_restore_job(
        restore(backupName="citus-202611270300"), succeeded(backup()), sample_policy(), image=IMAGE
    )
    assert "--globals" in full.spec.template.spec.containers[0].args
    assert "--no-globals" not in full.spec.template.spec.containers[0].args
    partial = CASES["job-restore-sample"]()
    assert "--globals" not in partial.spec.template.spec.containers[0].args
    assert "--no-globals" in partial.spec.template.spec.containers[0].args
    no_roles = build_restore_job(
        restore(backupName="citus-202611270300", globals=False),
        succeeded(backup()),
        sample_policy(),
        image=IMAGE,
    )
    assert "--no-globals" in no_roles.spec.template.spec.containers[0].args


def test_restore_reads_the_primary_tier() -> None:
    def tier_arg(job: V1Job) -> str:
        args = job.spec.template.spec.containers[0].args
        return str(args[args.index("--tier") + 1])

    weekly = CitusBackup.model_validate(
        {
            **backup(tier="weekly").model_dump(mode="json"),
            "status": {"phase": "Succeeded", "backupId": "x", "tiers": ["weekly", "yearly"]},
        }
    )
    job = build_restore_job(restore(backupName=weekly.name), weekly, full_policy(), image=IMAGE)
    assert tier_arg(job) == "weekly"
    # no status.tiers (older status): resolved from the backup's spec and the policy
    job = build_restore_job(restore(policyName="citus"), succeeded(backup()), sample_policy(),
                            image=IMAGE)  # fmt: skip
    assert tier_arg(job) == "daily"


def test_restore_of_several_databases_refused_while_the_runner_takes_one() -> None:
    with pytest.raises(PermanentError, match="one CitusRestore per database"):
        build_restore_job(
            restore(policyName="citus", databases=["app1", "app2"]),
            succeeded(backup()),
            sample_policy(),
            image=IMAGE,
        )


def test_backup_tier_must_be_enabled() -> None:
    with pytest.raises(PermanentError) as excinfo:
        build_backup_job(sample_policy(), backup(tier="yearly"), image=IMAGE, backup_id="x")
    assert excinfo.value.reason == "InvalidSpec"


def test_backup_of_other_policy_rejected() -> None:
    other = CitusBackup.model_validate(
        {
            "metadata": {"name": "b", "namespace": "citus", "uid": "u"},
            "spec": {"policyName": "other"},
        }
    )
    with pytest.raises(PermanentError):
        build_backup_job(sample_policy(), other, image=IMAGE, backup_id="x")


def test_restore_needs_succeeded_backup() -> None:
    with pytest.raises(PermanentError) as excinfo:
        build_restore_job(restore(policyName="citus"), backup(), sample_policy(), image=IMAGE)
    assert excinfo.value.reason == "BackupNotSucceeded"


def test_owner_needs_uid_and_one_namespace() -> None:
    no_uid = CitusBackup.model_validate(
        {"metadata": {"name": "b", "namespace": "citus"}, "spec": {"policyName": "citus"}}
    )
    with pytest.raises(ValueError, match="uid"):
        build_backup_job(sample_policy(), no_uid, image=IMAGE, backup_id="x")
    elsewhere = CitusBackup.model_validate(
        {
            "metadata": {"name": "b", "namespace": "other", "uid": "u"},
            "spec": {"policyName": "citus"},
        }
    )
    with pytest.raises(ValueError, match="namespace"):
        build_backup_job(sample_policy(), elsewhere, image=IMAGE, backup_id="x")


def test_long_names_are_shortened() -> None:
    name = "a-very-long-manual-backup-name-that-goes-on-and-on-and-on-and-on-x"
    job = build_backup_job(sample_policy(), backup(name), image=IMAGE, backup_id="x")
    assert len(job.metadata.name) <= 63
    assert all(len(v) <= 63 for v in job.metadata.labels.values())


# --------------------------------------------------------------------------- runner contract


def _env_with_fake_secrets(job: V1Job) -> dict[str, str]:
    env = {}
    for var in job.spec.template.spec.containers[0].env:
        env[var.name] = var.value if var.value is not None else f"fake-{var.name.lower()}"
    return env


@pytest.mark.parametrize("case", sorted(CASES))
def test_runner_accepts_the_job(case: str) -> None:
    """The runner's own CLI and config parse the argv and environment the Job passes."""
    runner_config = pytest.importorskip("citus_backup.runner.config")
    from citus_backup import cli  # noqa: PLC0415

    job = CASES[case]()
    container = job.spec.template.spec.containers[0]
    assert container.command == [contract.COMMAND]
    args = cli.build_parser().parse_args(container.args)
    assert args.command == container.args[0]
    env = _env_with_fake_secrets(job)
    s3 = runner_config.s3_config(env)
    assert s3.bucket == env["S3_BUCKET"]
    assert s3.secure is env["S3_ENDPOINT"].startswith("https://")
    runner_config.pg_config(env)


def test_block_writes_consistency_reaches_the_runner() -> None:
    from citus_backup import cli  # noqa: PLC0415

    data = sample_policy().model_dump(by_alias=True, exclude_none=True, mode="json")
    data["spec"]["dump"] = {"consistency": "blockWrites"}
    policy = CitusBackupPolicy.model_validate(data)
    job = build_backup_job(policy, backup(), image=IMAGE, backup_id="20261127T030000Z")
    args = job.spec.template.spec.containers[0].args
    assert args[args.index("--consistency") + 1] == "block-writes"
    assert cli.build_parser().parse_args(args).consistency == "block-writes"
    default = build_backup_job(sample_policy(), backup(), image=IMAGE, backup_id="x")
    assert "--consistency" not in default.spec.template.spec.containers[0].args
