"""The citusbackup.io/v1alpha1 models: samples, defaults, aliases, validation rules."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from citus_backup.api import (
    CitusBackup,
    CitusBackupPolicy,
    CitusBackupPolicySpec,
    CitusRestore,
    CitusRestoreSpec,
    Phase,
    RetentionSpec,
    Tier,
)
from citus_backup.api.backup import CitusBackupSpec, format_size
from citus_backup.api.common import (
    REASONS_BY_CONDITION,
    Condition,
    ConditionType,
    Reason,
    find_condition,
    format_time,
    make_condition,
    set_condition,
)
from citus_backup.api.policy import (
    PRESET_DAYS,
    RETENTION_EXCLUSIVE_MESSAGE,
    VERIFICATION_WHEN_MESSAGE,
    RetentionPreset,
)
from citus_backup.api.restore import CHECKS_MESSAGE, VERIFY_MESSAGE

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "manifests" / "samples"


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((SAMPLES / name).read_text())
    return data


MINIMAL_POLICY_SPEC: dict[str, Any] = {
    "coordinator": {"host": "coord", "passwordSecretRef": {"name": "pg", "key": "password"}},
    "storage": {
        "endpoint": "minio:9000",
        "bucket": "citus-backups",
        "accessKeyIdSecretRef": {"name": "s3", "key": "id"},
        "secretAccessKeySecretRef": {"name": "s3", "key": "secret"},
    },
}


def policy_spec(**updates: Any) -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL_POLICY_SPEC)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


# --------------------------------------------------------------------------- samples


def test_sample_policy_is_the_seed_set_up() -> None:
    policy = CitusBackupPolicy.model_validate(sample("policy.yaml"))
    assert policy.name == "citus"
    spec = policy.spec
    assert spec.schedule == "0 3 * * *"
    assert spec.time_zone == "UTC"
    assert spec.coordinator.include_databases == ("app1", "app2", "app3")
    assert spec.retention.preset == RetentionPreset.STANDARD
    assert spec.retention.tier_days() == {Tier.DAILY: 30, Tier.MONTHLY: 365}
    assert spec.delete_data_on_policy_deletion is False
    assert spec.coordinator.password_secret_ref.name == "citus-postgres"


def test_sample_backup_and_restore() -> None:
    backup = CitusBackup.model_validate(sample("backup-now.yaml"))
    assert backup.spec.policy_name == "citus"
    assert backup.spec.tier is None
    restore = CitusRestore.model_validate(sample("restore-app1.yaml"))
    assert restore.spec.policy_name == "citus"
    assert restore.spec.databases == ("app1",)
    assert restore.spec.replace is True
    assert restore.spec.effective_globals is False


# --------------------------------------------------------------------------- defaults, aliases


def test_policy_defaults() -> None:
    spec = CitusBackupPolicySpec.model_validate(MINIMAL_POLICY_SPEC)
    assert spec.schedule == "0 3 * * *"
    assert spec.time_zone == "UTC"
    assert spec.suspend is False
    assert spec.starting_deadline_seconds is None
    assert spec.coordinator.port == 5432
    assert spec.coordinator.user == "postgres"
    assert spec.coordinator.ssl_mode == "prefer"
    assert spec.storage.secure is True
    assert spec.storage.prefix == "citus"
    assert spec.retention.preset == "standard"
    assert (spec.dump.jobs, spec.dump.compression) == (None, 1)
    assert spec.delete_data_on_policy_deletion is False
    assert spec.job_template.backoff_limit == 1
    assert spec.job_template.ttl_seconds_after_finished == 86400
    assert spec.job_template.automount_service_account_token is False


def test_camel_case_round_trip_and_snake_case_names() -> None:
    spec = CitusBackupPolicySpec.model_validate(policy_spec(timeZone="Europe/Madrid"))
    dumped = spec.to_dict()
    assert dumped["timeZone"] == "Europe/Madrid"
    assert "time_zone" not in dumped
    assert dumped["storage"]["accessKeyIdSecretRef"] == {"name": "s3", "key": "id"}
    assert CitusBackupPolicySpec.model_validate(dumped) == spec
    by_name = CitusBackupSpec(policy_name="citus", also_tiers=(Tier.MONTHLY,))
    assert by_name.to_dict() == {"policyName": "citus", "alsoTiers": ["monthly"]}


def test_models_are_frozen() -> None:
    spec = CitusBackupPolicySpec.model_validate(MINIMAL_POLICY_SPEC)
    with pytest.raises(ValidationError):
        spec.suspend = True  # type: ignore[misc]


def test_unknown_spec_field_rejected_unknown_status_field_ignored() -> None:
    with pytest.raises(ValidationError, match="scheduel"):
        CitusBackupPolicySpec.model_validate(policy_spec(scheduel="0 4 * * *"))
    backup = CitusBackup.model_validate(
        {"spec": {"policyName": "p"}, "status": {"phase": "Running", "fromTheFuture": 1}}
    )
    assert backup.status.phase == Phase.RUNNING


def test_kopf_body_parses() -> None:
    body = {
        "apiVersion": "citusbackup.io/v1alpha1",
        "kind": "CitusBackupPolicy",
        "metadata": {
            "name": "citus",
            "namespace": "citus",
            "uid": "u-1",
            "generation": 3,
            "creationTimestamp": "2026-11-27T03:00:00Z",
            "managedFields": [{"manager": "kubectl"}],
            "finalizers": ["kopf.zalando.org/KopfFinalizerMarker"],
        },
        "spec": MINIMAL_POLICY_SPEC,
        "status": {
            "observedGeneration": 3,
            "nextScheduleTime": "2026-11-28T03:00:00Z",
            "kopf": {"progress": {}},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Reconciled",
                    "lastTransitionTime": "2026-11-27T03:00:00Z",
                }
            ],
        },
    }
    policy = CitusBackupPolicy.model_validate(body)
    assert policy.metadata.generation == 3
    assert policy.status.next_schedule_time == datetime(2026, 11, 28, 3, tzinfo=UTC)
    assert policy.status.conditions[0].is_true


# --------------------------------------------------------------------------- field validation


@pytest.mark.parametrize(
    ("updates", "match"),
    [
        ({"schedule": "0 3 * *"}, "pattern"),
        ({"schedule": "61 3 * * *"}, "invalid cron"),
        ({"schedule": "0 0 30 2 *"}, "never fires"),
        ({"schedule": "0 0 * * * *"}, "pattern"),
        ({"timeZone": "Mars/Olympus"}, "unknown time zone"),
        ({"timeZone": "localtime"}, "invalid time zone"),
        ({"storage": {"endpoint": "http://minio:9000"}}, "without a scheme"),
        ({"storage": {"endpoint": "minio:9000/path"}}, "pattern"),
        ({"storage": {"bucket": "Citus_Backups"}}, "pattern"),
        ({"storage": {"bucket": "ab"}}, "at least 3"),
        ({"storage": {"bucket": "a..b"}}, "adjacent periods"),
        ({"storage": {"prefix": "/citus/"}}, "pattern"),
        ({"coordinator": {"port": 0}}, "greater than or equal to 1"),
        ({"coordinator": {"sslMode": "on"}}, "sslMode|ssl_mode"),
        ({"coordinator": {"includeDatabases": ["a", "a"]}}, "duplicate"),
        ({"dump": {"compression": 10}}, "less than or equal to 9"),
        ({"dump": {"jobs": 0}}, "greater than or equal to 1"),
        ({"startingDeadlineSeconds": -1}, "greater than or equal to 0"),
        ({"jobTemplate": {"resources": {"limits": {"cpu": "lots"}}}}, "pattern"),
        ({"jobTemplate": {"backoffLimit": 11}}, "less than or equal to 10"),
    ],
)
def test_policy_field_validation(updates: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        CitusBackupPolicySpec.model_validate(policy_spec(**updates))


@pytest.mark.parametrize(
    "updates",
    [
        {"schedule": "@daily"},
        {"schedule": "30 2 * * 1-5", "timeZone": "Europe/Madrid"},
        {"timeZone": "America/New_York"},
        {"storage": {"endpoint": "[::1]:9000"}},
        {"storage": {"endpoint": "s3.eu-west-1.amazonaws.com", "region": "eu-west-1"}},
        {"storage": {"prefix": "prod/citus-1"}},
        {"jobTemplate": {"resources": {"limits": {"cpu": 2, "memory": "1.5Gi"}}}},
        {"startingDeadlineSeconds": 0},
    ],
)
def test_policy_field_validation_accepts(updates: dict[str, Any]) -> None:
    CitusBackupPolicySpec.model_validate(policy_spec(**updates))


def test_policy_name_is_a_dns_label() -> None:
    body = {"metadata": {"name": "nightly.prod"}, "spec": MINIMAL_POLICY_SPEC}
    with pytest.raises(ValidationError, match="DNS label"):
        CitusBackupPolicy.model_validate(body)
    body["metadata"] = {"name": "n" * 64}
    with pytest.raises(ValidationError, match="DNS label"):
        CitusBackupPolicy.model_validate(body)


# --------------------------------------------------------------------------- cross-field rules
# Each message is also the message of a CEL rule in the CRD (test_api_crdgen checks that).

CROSS_FIELD_CASES: list[tuple[type[BaseModel], dict[str, Any], str]] = [
    (
        CitusBackupPolicySpec,
        policy_spec(retention={"preset": "standard", "daily": {"keepDays": 3}}),
        RETENTION_EXCLUSIVE_MESSAGE,
    ),
    (CitusBackupPolicySpec, policy_spec(retention={}), RETENTION_EXCLUSIVE_MESSAGE),
    (
        CitusBackupPolicySpec,
        policy_spec(retention={"daily": {"keepDays": 3, "forever": True}}),
        "set exactly one of keepDays or forever: true",
    ),
    (
        CitusBackupPolicySpec,
        policy_spec(retention={"daily": {"forever": False}}),
        "set exactly one of keepDays or forever: true",
    ),
    (
        CitusBackupPolicySpec,
        policy_spec(storage={"secure": False, "ca": {"secretKeyRef": {"name": "a", "key": "b"}}}),
        "ca requires secure: true",
    ),
    (
        CitusBackupPolicySpec,
        policy_spec(storage={"secure": False, "insecureSkipVerify": True}),
        "insecureSkipVerify requires secure: true",
    ),
    (
        CitusBackupPolicySpec,
        policy_spec(
            storage={
                "insecureSkipVerify": True,
                "ca": {"configMapKeyRef": {"name": "a", "key": "b"}},
            }
        ),
        "ca and insecureSkipVerify are mutually exclusive",
    ),
    (
        CitusBackupPolicySpec,
        policy_spec(storage={"ca": {}}),
        "set exactly one of secretKeyRef or configMapKeyRef",
    ),
    (
        CitusBackupPolicySpec,
        policy_spec(
            coordinator={
                "sslRootCert": {
                    "secretKeyRef": {"name": "a", "key": "b"},
                    "configMapKeyRef": {"name": "a", "key": "b"},
                }
            }
        ),
        "set exactly one of secretKeyRef or configMapKeyRef",
    ),
    (
        CitusBackupSpec,
        {"policyName": "p", "tier": "daily", "alsoTiers": ["daily"]},
        "alsoTiers must not contain tier",
    ),
    (CitusRestoreSpec, {}, "set exactly one of backupName or policyName"),
    (
        CitusRestoreSpec,
        {"backupName": "b", "policyName": "p"},
        "set exactly one of backupName or policyName",
    ),
    (
        CitusRestoreSpec,
        {"backupName": "b", "before": "2026-11-01T00:00:00Z"},
        "before can only be used with policyName",
    ),
    (
        CitusRestoreSpec,
        {"policyName": "p", "targetDatabase": "x"},
        "targetDatabase requires exactly one entry in databases",
    ),
    (
        CitusRestoreSpec,
        {"policyName": "p", "databases": ["a", "b"], "targetDatabase": "x"},
        "targetDatabase requires exactly one entry in databases",
    ),
    (
        CitusRestoreSpec,
        {"policyName": "p", "tables": ["public.t"]},
        "tables requires exactly one entry in databases",
    ),
    (
        CitusRestoreSpec,
        {"policyName": "p", "databases": ["a", "b"], "schemas": ["s"]},
        "schemas requires exactly one entry in databases",
    ),
    (
        CitusRestoreSpec,
        {"policyName": "p", "databases": ["a"], "schemas": ["s"], "tables": ["s.t"]},
        "tables and schemas are mutually exclusive (name tables as schema.table)",
    ),
    (
        CitusRestoreSpec,
        {"policyName": "p", "databases": ["a"], "keepOld": True},
        "keepOld requires replace (only a replaced database can be kept)",
    ),
    (
        CitusRestoreSpec,
        {"backupName": "b", "databases": ["a"], "verify": True, "targetDatabase": "x"},
        VERIFY_MESSAGE,
    ),
    (CitusRestoreSpec, {"backupName": "b", "verify": True, "replace": True}, VERIFY_MESSAGE),
    (CitusRestoreSpec, {"backupName": "b", "verify": True, "globals": True}, VERIFY_MESSAGE),
    (CitusRestoreSpec, {"backupName": "b", "checksConfigMap": "c"}, CHECKS_MESSAGE),
    (
        CitusBackupPolicySpec,
        policy_spec(verification={"checksConfigMap": "c"}),
        VERIFICATION_WHEN_MESSAGE,
    ),
]


@pytest.mark.parametrize(("model", "data", "message"), CROSS_FIELD_CASES)
def test_cross_field_rules(model: type[BaseModel], data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        model.model_validate(data)


def test_restore_valid_combinations() -> None:
    spec = CitusRestoreSpec.model_validate(
        {
            "policyName": "citus",
            "before": "2026-11-01T00:00:00Z",
            "databases": ["app1"],
            "targetDatabase": "app1_restored",
            "tables": ["public.orders"],
        }
    )
    assert spec.effective_globals is False
    spec = CitusRestoreSpec.model_validate(
        {"backupName": "b", "databases": ["app1"], "schemas": ["public", "audit"]}
    )
    assert spec.effective_globals is False
    assert CitusRestoreSpec.model_validate({"backupName": "b", "tables": []}).is_full_restore


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"backupName": "b"}, True),
        ({"backupName": "b", "globals": False}, False),
        ({"backupName": "b", "databases": ["app1"]}, False),
        ({"backupName": "b", "databases": ["app1"], "globals": True}, True),
        ({"backupName": "b", "databases": ["app1"], "targetDatabase": "x"}, False),
    ],
)
def test_restore_globals_default(data: dict[str, Any], expected: bool) -> None:
    assert CitusRestoreSpec.model_validate(data).effective_globals is expected


def test_restore_before_must_have_a_time_zone() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        CitusRestoreSpec.model_validate({"policyName": "p", "before": "2026-11-01T00:00:00"})


# --------------------------------------------------------------------------- retention


def test_presets_match_the_seed() -> None:
    assert PRESET_DAYS[RetentionPreset.STANDARD] == {Tier.DAILY: 30, Tier.MONTHLY: 365}
    assert PRESET_DAYS[RetentionPreset.MINIMAL] == {Tier.DAILY: 7, Tier.MONTHLY: 90}
    minimal = RetentionSpec.model_validate({"preset": "minimal"})
    assert minimal.tier_days() == {Tier.DAILY: 7, Tier.MONTHLY: 90}
    assert minimal.base_tier == Tier.DAILY


def test_explicit_retention() -> None:
    retention = RetentionSpec.model_validate(
        {"yearly": {"forever": True}, "weekly": {"keepDays": 60}}
    )
    assert retention.tier_days() == {Tier.WEEKLY: 60, Tier.YEARLY: None}
    assert retention.enabled_tiers() == (Tier.WEEKLY, Tier.YEARLY)
    assert retention.base_tier == Tier.WEEKLY


# --------------------------------------------------------------------------- conditions


def test_set_condition_keeps_transition_time_when_status_unchanged() -> None:
    t0 = datetime(2026, 11, 27, 3, tzinfo=UTC)
    t1 = t0 + timedelta(hours=1)
    ready = make_condition(ConditionType.READY, True, Reason.RECONCILED, "ok", now=t0)
    conditions = set_condition((), ready)
    again = make_condition(
        ConditionType.READY, True, Reason.RECONCILED, "still ok", now=t1, observed_generation=2
    )
    conditions = set_condition(conditions, again)
    (only,) = conditions
    assert only.last_transition_time == t0
    assert only.message == "still ok"
    assert only.observed_generation == 2
    failed = make_condition(ConditionType.READY, False, Reason.SECRET_NOT_FOUND, "x", now=t1)
    conditions = set_condition(conditions, failed)
    assert conditions[0].last_transition_time == t1
    assert conditions[0].status == "False"
    last = make_condition(
        ConditionType.LAST_BACKUP_SUCCEEDED, None, Reason.NO_BACKUP_YET, "", now=t1
    )
    conditions = set_condition(conditions, last)
    assert [c.type for c in conditions] == ["Ready", "LastBackupSucceeded"]
    found = find_condition(conditions, "LastBackupSucceeded")
    assert found is not None
    assert found.status == "Unknown"
    assert find_condition(conditions, "Nope") is None


def test_reasons_are_camel_case_and_valid() -> None:
    for reason in Reason:
        Condition(
            type="Ready", status="True", reason=reason, last_transition_time=datetime.now(UTC)
        )
        assert reason.value[0].isupper()
        assert "_" not in reason.value
    assert set().union(*REASONS_BY_CONDITION.values()) == set(Reason)
    for required in ("BackupSucceeded", "BackupFailed", "SecretNotFound", "SecretKeyMissing",
                     "InvalidSpec", "BackupNotFound", "BackupNotSucceeded", "TargetExists",
                     "Conflict", "JobFailed"):  # fmt: skip
        assert Reason(required)


def test_condition_rejects_bad_reason() -> None:
    with pytest.raises(ValidationError):
        Condition(
            type="Ready",
            status="True",
            reason="not a reason",
            last_transition_time=datetime.now(UTC),
        )


def test_format_time_and_size() -> None:
    assert format_time(datetime(2026, 11, 27, 4, 5, 6, 789, tzinfo=UTC)) == "2026-11-27T04:05:06Z"
    with pytest.raises(ValueError, match="naive"):
        format_time(datetime(2026, 11, 27))
    assert format_size(0) == "0 B"
    assert format_size(1023) == "1023 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(5 * 1024**3) == "5.0 GiB"
    assert format_size(3 * 1024**7) == "3072.0 EiB"


def test_cross_field_messages_are_the_crd_cel_messages() -> None:
    """Every cross-field message is a CEL message of the CRDs, and every CEL rule is covered."""
    from citus_backup.api import crdgen  # noqa: PLC0415

    cel_messages = set()
    for info in crdgen.kinds():
        text = yaml.safe_dump(crdgen.build_crd(info))
        for doc in yaml.safe_load_all(text):
            stack = [doc]
            while stack:
                node = stack.pop()
                if isinstance(node, dict):
                    for rule in node.get("x-kubernetes-validations", []):
                        cel_messages.add(rule["message"])
                    stack.extend(node.values())
                elif isinstance(node, list):
                    stack.extend(node)
    covered = {message for _, _, message in CROSS_FIELD_CASES}
    assert covered <= cel_messages
    # Checked elsewhere: field rules (endpoint scheme, bucket dots, policy name) in
    # test_policy_field_validation / test_policy_name_is_a_dns_label; "spec is immutable"
    # needs the old object and exists only in the CRD.
    others = {
        "endpoint is host[:port] without a scheme; set secure: false for plain http",
        "bucket names must not contain two adjacent periods",
        "spec is immutable",
    }
    name_rule = {m for m in cel_messages if m.startswith("the name of a CitusBackupPolicy")}
    assert cel_messages == covered | others | name_rule
