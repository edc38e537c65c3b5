"""Bucket lifecycle rules from retention, merging with foreign rules, the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from citus_backup import cli
from citus_backup.api import CitusBackupPolicy
from citus_backup.specs.lifecycle import (
    EXPIRABLE_TAG_KEY,
    build_rules,
    lifecycle_configuration,
    merge,
    owner_id_prefix,
    policies_overlap,
    prefixes_overlap,
    rules_in_sync,
    summarize,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "manifests" / "samples" / "policy.yaml"


def policy(retention: dict[str, Any] | None = None, **meta: Any) -> CitusBackupPolicy:
    data = yaml.safe_load(SAMPLE.read_text())
    data["metadata"].update(meta)
    if retention is not None:
        data["spec"]["retention"] = retention
    return CitusBackupPolicy.model_validate(data)


def expiration_days(rules: list[dict[str, Any]]) -> dict[str, int]:
    return {
        r["Filter"]["And"]["Prefix"]: r["Expiration"]["Days"] for r in rules if "Expiration" in r
    }


def test_standard_preset_gives_the_seed_rules() -> None:
    rules = build_rules(policy())
    assert expiration_days(rules) == {"citus/daily/": 30, "citus/monthly/": 365}
    daily = rules[0]
    assert daily == {
        "ID": "citusbackup.citus.citus.daily",
        "Status": "Enabled",
        "Filter": {
            "And": {
                "Prefix": "citus/daily/",
                "Tags": [{"Key": "citusbackup.io/expirable", "Value": "true"}],
            }
        },
        "Expiration": {"Days": 30},
    }
    assert rules[-1] == {
        "ID": "citusbackup.citus.citus.abort-incomplete-multipart-uploads",
        "Status": "Enabled",
        "Filter": {"Prefix": "citus/"},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    }
    assert len(rules) == 3


def test_minimal_preset() -> None:
    rules = build_rules(policy({"preset": "minimal"}))
    assert expiration_days(rules) == {"citus/daily/": 7, "citus/monthly/": 90}


def test_explicit_tiers_forever_and_absent() -> None:
    rules = build_rules(
        policy(
            {"weekly": {"keepDays": 60}, "monthly": {"keepDays": 400}, "yearly": {"forever": True}}
        )
    )
    assert expiration_days(rules) == {"citus/weekly/": 60, "citus/monthly/": 400}
    assert not [r for r in rules if "daily" in r["ID"] or "yearly" in r["ID"]]
    for rule in rules:
        assert len(rule["ID"]) <= 255
        if "Expiration" in rule:
            assert rule["Filter"]["And"]["Tags"] == [{"Key": EXPIRABLE_TAG_KEY, "Value": "true"}]


def test_ids_name_the_owner_and_fit() -> None:
    long_policy = policy(name="p" * 63, namespace="n" * 63)
    prefix = owner_id_prefix("n" * 63, "p" * 63)
    for rule in build_rules(long_policy):
        assert rule["ID"].startswith(prefix)
        assert len(rule["ID"]) <= 255
    # a namespace override (lifecycle-rules CLI) and a missing namespace
    assert build_rules(policy(), "other")[0]["ID"] == "citusbackup.other.citus.daily"
    nameless = policy(namespace=None)
    with pytest.raises(ValueError, match="namespace"):
        build_rules(nameless)


FOREIGN = [
    {
        "ID": "logs-expire",
        "Status": "Enabled",
        "Filter": {"Prefix": "logs/"},
        "Expiration": {"Days": 3},
    },
    {
        "ID": "citusbackup.citus.citus-other.daily",
        "Status": "Enabled",
        "Filter": {"Prefix": "other/daily/"},
        "Expiration": {"Days": 9},
    },
]


def test_merge_never_touches_foreign_rules_and_drops_stale_own() -> None:
    owner = owner_id_prefix("citus", "citus")
    old = build_rules(policy({"daily": {"keepDays": 5}, "weekly": {"keepDays": 20}}))
    existing = [FOREIGN[0], *old, FOREIGN[1]]
    new = build_rules(policy())  # weekly gone, monthly added, daily changed
    merged = merge(copy.deepcopy(existing), new, owner)
    assert merged[:2] == FOREIGN
    assert merged[2:] == new
    assert not [r for r in merged if r["ID"].endswith(".weekly")]
    # the other policy "citus-other" shares the "citusbackup.citus.citus" text but not the prefix
    assert FOREIGN[1] in merged
    # deleting the policy removes only its rules
    assert merge(merged, [], owner) == FOREIGN
    with pytest.raises(ValueError, match="does not start"):
        merge(existing, FOREIGN, owner)


def test_rules_in_sync() -> None:
    owner = owner_id_prefix("citus", "citus")
    owned = build_rules(policy())
    bucket = merge(FOREIGN, owned, owner)
    assert rules_in_sync(bucket, owned, owner)
    # order, empty values and tag order as another S3 implementation may return them
    returned = [copy.deepcopy(r) for r in reversed(bucket)]
    returned[0]["Filter"]["Prefix"] = "citus/"  # unchanged
    returned[1]["NoncurrentVersionExpiration"] = None
    assert rules_in_sync(returned, owned, owner)
    assert not rules_in_sync(FOREIGN, owned, owner)  # missing
    changed = merge(FOREIGN, build_rules(policy({"preset": "minimal"})), owner)
    assert not rules_in_sync(changed, owned, owner)
    extra = [*bucket, {"ID": owner + "weekly", "Status": "Enabled", "Filter": {"Prefix": "x/"}}]
    assert not rules_in_sync(extra, owned, owner)
    assert rules_in_sync(FOREIGN, [], owner)


def test_summarize() -> None:
    summary = summarize(build_rules(policy()))
    assert [(s.prefix, s.expiration_days) for s in summary] == [
        ("citus/daily/", 30),
        ("citus/monthly/", 365),
        ("citus/", None),
    ]
    assert summary[-1].abort_incomplete_multipart_upload_days == 1


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("citus", "citus", True),
        ("citus", "citus/app", True),
        ("citus/app", "citus", True),
        ("citus", "citus2", False),
        ("citus/a", "citus/b", False),
        ("a/b/c", "a/b", True),
    ],
)
def test_prefixes_overlap(a: str, b: str, overlap: bool) -> None:
    assert prefixes_overlap(a, b) is overlap


def test_policies_overlap_needs_same_bucket() -> None:
    data = yaml.safe_load(SAMPLE.read_text())
    one = CitusBackupPolicy.model_validate(data)
    data["metadata"]["name"] = "two"
    data["spec"]["storage"]["prefix"] = "citus/sub"
    two = CitusBackupPolicy.model_validate(data)
    assert policies_overlap(one, two)
    data["spec"]["storage"]["bucket"] = "elsewhere"
    assert not policies_overlap(one, CitusBackupPolicy.model_validate(data))


def test_configuration_shape() -> None:
    config = lifecycle_configuration(build_rules(policy()))
    assert list(config) == ["Rules"]
    assert json.loads(json.dumps(config)) == config


def test_cli_prints_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["lifecycle-rules", "-f", str(SAMPLE)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == lifecycle_configuration(build_rules(policy()))


def test_cli_namespace_and_selection(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load(SAMPLE.read_text())
    del data["metadata"]["namespace"]
    other = copy.deepcopy(data)
    other["metadata"]["name"] = "other"
    path = tmp_path / "policies.yaml"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}}
    path.write_text(yaml.safe_dump_all([secret, data, other]))
    assert cli.main(["lifecycle-rules", "-f", str(path)]) == 2
    assert "found 2" in capsys.readouterr().err
    assert cli.main(["lifecycle-rules", "-f", str(path), "--name", "other", "-n", "prod"]) == 0
    rules = json.loads(capsys.readouterr().out)["Rules"]
    assert rules[0]["ID"] == "citusbackup.prod.other.daily"
    single = tmp_path / "single.yaml"
    single.write_text(yaml.safe_dump(data))
    assert cli.main(["lifecycle-rules", "-f", str(single)]) == 0
    assert (
        json.loads(capsys.readouterr().out)["Rules"][0]["ID"] == "citusbackup.default.citus.daily"
    )


def test_cli_reports_invalid_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load(SAMPLE.read_text())
    data["spec"]["retention"] = {"preset": "standard", "daily": {"keepDays": 1}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["lifecycle-rules", "-f", str(path)]) == 2
    err = capsys.readouterr().err
    assert "spec.retention" in err
    assert "not both" in err
    assert cli.main(["lifecycle-rules", "-f", str(tmp_path / "missing.yaml")]) == 2
