"""The PrometheusRule's alerts, evaluated by Prometheus's own rule engine (promtool).

promtool is built from its Go module like the other components
(hack/build-components.sh promtool); the series below are what the operator
exports (citus_backup.metrics.state), with the scrape labels Prometheus adds.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from citus_backup.metrics.state import family_names
from localenv.binaries import binary

REPO = Path(__file__).resolve().parents[2]
RULE = REPO / "manifests/components/prometheus/prometheusrule.yaml"
#: Labels a scrape adds; the rules must not depend on them.
SCRAPE = 'job="citus-backup-operator",instance="10.0.0.7:8081"'
DAY = 86400


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    extra = "".join(f',{k}="{v}"' for k, v in labels.items())
    return {
        "series": f'citus_backup_{name}{{namespace="db",policy="nightly",{SCRAPE}{extra}}}',
        "values": values,
    }


def policy(*, created: int = 0, interval: int = DAY, suspended: int = 0) -> list[dict[str, str]]:
    return [
        series("policy_created_timestamp_seconds", f"{created}x2000"),
        series("schedule_interval_seconds", f"{interval}x2000"),
        series("policy_info_suspended", f"{suspended}x2000"),
    ]


def alert(name: str, at: str, firing: bool) -> dict[str, Any]:
    rule = _rule(name)
    labels = {"namespace": "db", "policy": "nightly"}
    expected = [
        {
            "exp_labels": {**labels, **rule["labels"]},
            "exp_annotations": {k: _render(v, labels) for k, v in rule["annotations"].items()},
        }
    ]
    return {"eval_time": at, "alertname": name, "exp_alerts": expected if firing else []}


def _rule(name: str) -> dict[str, Any]:
    group = yaml.safe_load(RULE.read_text())["spec"]["groups"][0]
    return dict(next(r for r in group["rules"] if r["alert"] == name))


def _render(template: str, labels: dict[str, str]) -> str:
    """The annotation templates use only {{ $labels.x }}."""
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m[1]], template)


def promtool_test(tmp_path: Path, tests: list[dict[str, Any]]) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(yaml.safe_load(RULE.read_text())["spec"]))
    spec = tmp_path / "test.yml"
    spec.write_text(
        yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": tests})
    )
    result = subprocess.run(
        [str(binary("promtool")), "test", "rules", spec.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_are_valid_and_name_only_exported_metrics(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    doc = yaml.safe_load(RULE.read_text())["spec"]
    rules.write_text(yaml.safe_dump(doc))
    result = subprocess.run(
        [str(binary("promtool")), "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    exported = set(family_names())
    for rule in doc["groups"][0]["rules"]:
        names = set(re.findall(r"citus_backup_[a-z_]+", rule["expr"]))
        assert names <= exported, rule["alert"]


# 1 m steps: "2000" samples cover 33 h.
def test_missing_backup_fires_one_interval_plus_grace_after_the_last_success(
    tmp_path: Path,
) -> None:
    promtool_test(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": [*policy(), series("last_success_timestamp_seconds", "0x2000")],
                "alert_rule_test": [
                    alert("CitusBackupMissing", "24h", firing=False),
                    alert("CitusBackupMissing", "24h59m", firing=False),
                    alert("CitusBackupMissing", "25h2m", firing=True),
                ],
            },
            {  # never succeeded: counted from the policy's creation
                "interval": "1m",
                "input_series": policy(created=3600),
                "alert_rule_test": [
                    alert("CitusBackupMissing", "25h59m", firing=False),
                    alert("CitusBackupMissing", "26h2m", firing=True),
                ],
            },
            {  # a suspended policy is not missing backups
                "interval": "1m",
                "input_series": policy(suspended=1),
                "alert_rule_test": [alert("CitusBackupMissing", "30h", firing=False)],
            },
            {  # a new success (at 20 h) resets the clock
                "interval": "1m",
                "input_series": [
                    *policy(),
                    series("last_success_timestamp_seconds", "0x1199 72000x800"),
                ],
                "alert_rule_test": [alert("CitusBackupMissing", "30h", firing=False)],
            },
        ],
    )


def test_failed_fires_while_the_newest_finished_backup_failed(tmp_path: Path) -> None:
    promtool_test(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": [
                    # succeeded at t=60 s, failed at t=600 s, succeeded again at t=1200 s
                    series("last_success_timestamp_seconds", "60x19 1200x20"),
                    series("last_failure_timestamp_seconds", "_x9 600x30"),
                ],
                "alert_rule_test": [
                    alert("CitusBackupFailed", "5m", firing=False),
                    alert("CitusBackupFailed", "12m", firing=True),
                    alert("CitusBackupFailed", "25m", firing=False),
                ],
            },
            {  # failed and never succeeded
                "interval": "1m",
                "input_series": [series("last_failure_timestamp_seconds", "600x10")],
                "alert_rule_test": [alert("CitusBackupFailed", "5m", firing=True)],
            },
        ],
    )


def test_verification_failed_and_overdue(tmp_path: Path) -> None:
    promtool_test(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": [
                    *policy(),
                    series("verification_interval_seconds", f"{7 * DAY}x2000"),
                    series("last_verification_success", "1x10 0x10"),
                    series("last_verification_timestamp_seconds", "60x10 660x10"),
                ],
                "alert_rule_test": [
                    alert("CitusBackupVerificationFailed", "5m", firing=False),
                    alert("CitusBackupVerificationFailed", "15m", firing=True),
                    alert("CitusBackupVerificationOverdue", "15m", firing=False),
                ],
            },
            {  # verifies daily; the last verification is 26 h old
                "interval": "1m",
                "input_series": [
                    *policy(),
                    series("verification_interval_seconds", f"{DAY}x2000"),
                    series("last_verification_timestamp_seconds", "0x2000"),
                ],
                "alert_rule_test": [
                    alert("CitusBackupVerificationOverdue", "24h30m", firing=False),
                    alert("CitusBackupVerificationOverdue", "26h", firing=True),
                ],
            },
            {  # a policy that does not verify is never overdue
                "interval": "1m",
                "input_series": policy(),
                "alert_rule_test": [alert("CitusBackupVerificationOverdue", "30h", firing=False)],
            },
        ],
    )


def test_lifecycle_out_of_sync_fires_after_15_minutes(tmp_path: Path) -> None:
    promtool_test(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": [series("lifecycle_in_sync", "1x5 0x30")],
                "alert_rule_test": [
                    alert("CitusBackupLifecycleOutOfSync", "10m", firing=False),
                    alert("CitusBackupLifecycleOutOfSync", "25m", firing=True),
                ],
            }
        ],
    )


@pytest.mark.parametrize("name", sorted(family_names()))
def test_metric_names_follow_prometheus_conventions(name: str) -> None:
    assert name.startswith("citus_backup_")
    assert name == name.lower()
    units = ("_seconds", "_bytes", "_total", "_backups", "_active", "_running")
    flags = ("_in_sync", "_success", "_ready", "_suspended")
    assert name.endswith(units + flags), name
