"""CRD generation: committed crds/ up to date, structural schemas, CEL rules, columns."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from citus_backup import cli
from citus_backup.api import crdgen
from citus_backup.api.backup import CitusBackupSpec
from citus_backup.api.policy import CitusBackupPolicySpec
from citus_backup.api.restore import CitusRestoreSpec

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"


@pytest.fixture(scope="module")
def crds() -> dict[str, dict[str, Any]]:
    return {info.kind: crdgen.build_crd(info) for info in crdgen.kinds()}


def schema_of(crd: Mapping[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return result


def walk(schema: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), Mapping):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), Mapping):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def test_committed_crds_are_up_to_date() -> None:
    problems = crdgen.diff_crds(CRDS)
    assert not problems, "\n".join(problems) + "\nregenerate: citus-backup crds --output crds"


def test_output_is_deterministic_and_parses() -> None:
    first, second = crdgen.render_crds(), crdgen.render_crds()
    assert first == second
    assert sorted(first) == [
        "citusbackup.io_citusbackuppolicies.yaml",
        "citusbackup.io_citusbackups.yaml",
        "citusbackup.io_citusrestores.yaml",
    ]
    for text in first.values():
        assert text.startswith("# Generated")
        assert yaml.safe_load(text)["kind"] == "CustomResourceDefinition"


def test_schemas_are_structural(crds: dict[str, dict[str, Any]]) -> None:
    for kind, crd in crds.items():
        assert crdgen.check_structural(schema_of(crd)) == [], kind
        text = yaml.safe_dump(crd)
        for forbidden in ("$ref", "$defs", "nullable", "title:", "const:"):
            assert forbidden not in text, (kind, forbidden)


def test_every_field_is_documented(crds: dict[str, dict[str, Any]]) -> None:
    for kind, crd in crds.items():
        for path, node in walk(schema_of(crd)):
            if path in (".metadata",) or path.endswith(("[]", "{}")):
                continue
            assert node.get("description"), f"{kind}{path} has no description"


def test_names_scope_columns(crds: dict[str, dict[str, Any]]) -> None:
    expected = {
        "CitusBackupPolicy": ("citusbackuppolicies", ["cbp"]),
        "CitusBackup": ("citusbackups", ["cbk"]),
        "CitusRestore": ("citusrestores", ["crs"]),
    }
    columns = {
        "CitusBackupPolicy": ["Schedule", "Suspended", "Last Backup", "Last Result", "Next Run"],
        "CitusBackup": ["Policy", "Phase", "Size"],
        "CitusRestore": ["Backup", "Databases", "Phase"],
    }
    for kind, crd in crds.items():
        spec = crd["spec"]
        plural, short = expected[kind]
        assert crd["metadata"]["name"] == f"{plural}.citusbackup.io"
        assert spec["group"] == "citusbackup.io"
        assert spec["scope"] == "Namespaced"
        assert spec["names"]["plural"] == plural
        assert spec["names"]["shortNames"] == short
        assert spec["names"]["categories"] == ["citus-backup"]
        (version,) = spec["versions"]
        assert version["name"] == "v1alpha1"
        assert version["served"]
        assert version["storage"]
        assert version["subresources"] == {"status": {}}
        shown = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
        assert shown == [*columns[kind], "Age"]


def test_category_does_not_shadow_a_kind_name(crds: dict[str, dict[str, Any]]) -> None:
    # kubectl expands categories before singular names: `kubectl get citusbackup x` must work.
    names = {
        n for crd in crds.values() for n in crd["spec"]["names"].values() if isinstance(n, str)
    }
    for crd in crds.values():
        assert not set(crd["spec"]["names"]["categories"]) & names


def test_cel_rules(crds: dict[str, dict[str, Any]]) -> None:
    rules = {
        kind: [
            (path, rule["rule"], rule["message"])
            for path, node in walk(schema_of(crd))
            for rule in node.get("x-kubernetes-validations", [])
        ]
        for kind, crd in crds.items()
    }
    restore = {(p, r) for p, r, _ in rules["CitusRestore"]}
    assert (".spec", "has(self.backupName) != has(self.policyName)") in restore
    assert (".spec", "!has(self.before) || has(self.policyName)") in restore
    assert (".spec", "self == oldSelf") in restore
    assert (".spec", "self == oldSelf") in {(p, r) for p, r, _ in rules["CitusBackup"]}
    policy_paths = {p for p, _, _ in rules["CitusBackupPolicy"]}
    assert {
        "",
        ".spec.retention",
        ".spec.retention.daily",
        ".spec.storage",
        ".spec.storage.ca",
    } <= (policy_paths)
    for kind_rules in rules.values():
        for _, rule, message in kind_rules:
            assert rule
            assert message
            assert not message.endswith(".")


def test_defaults_match_the_models(crds: dict[str, dict[str, Any]]) -> None:
    """What the API server stores after defaulting parses to what the models default to."""
    minimal_policy = {
        "coordinator": {"host": "coord", "passwordSecretRef": {"name": "pg", "key": "pw"}},
        "storage": {
            "endpoint": "minio:9000",
            "bucket": "citus-backups",
            "accessKeyIdSecretRef": {"name": "s3", "key": "id"},
            "secretAccessKeySecretRef": {"name": "s3", "key": "secret"},
            "ca": {"secretKeyRef": {"name": "ca", "key": "ca.crt"}},
        },
        "retention": {"daily": {"keepDays": 3}, "yearly": {"forever": True}},
    }
    cases = [
        (crds["CitusBackupPolicy"], CitusBackupPolicySpec, minimal_policy),
        (crds["CitusBackup"], CitusBackupSpec, {"policyName": "p"}),
        (
            crds["CitusRestore"],
            CitusRestoreSpec,
            {
                "backupName": "b",
                "target": {"host": "h", "passwordSecretRef": {"name": "a", "key": "b"}},
                "jobTemplate": {},
            },
        ),
    ]
    for crd, model, spec in cases:
        defaulted = apply_defaults(schema_of(crd)["properties"]["spec"], copy.deepcopy(spec))
        assert model.model_validate(defaulted) == model.model_validate(spec)
    # Without retention the API server stores none; the model reads that as preset standard.
    without = {k: v for k, v in minimal_policy.items() if k != "retention"}
    assert (
        "default"
        not in schema_of(crds["CitusBackupPolicy"])["properties"]["spec"]["properties"]["retention"]
    )
    policy = CitusBackupPolicySpec.model_validate(without)
    assert policy.retention.preset == "standard"


def apply_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """Kubernetes structural defaulting: missing fields with a default get it, recursively."""
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            for key in value:
                value[key] = apply_defaults(extra, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def test_to_structural_conversions() -> None:
    defs = {"Sub": {"type": "object", "title": "Sub", "properties": {"a": {"type": "string"}}}}
    node = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "opt": {"anyOf": [{"$ref": "#/$defs/Sub"}, {"type": "null"}], "default": None,
                    "description": "d"},
            "qty": {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^x$"}]},
            "one": {"const": "v", "type": "string"},
            "lst": {"type": "array", "items": {"type": "string"}, "default": []},
        },
        "required": [],
    }  # fmt: skip
    result = crdgen.to_structural(node, defs)
    assert result == {
        "type": "object",
        "properties": {
            "opt": {"type": "object", "properties": {"a": {"type": "string"}}, "description": "d"},
            "qty": {
                "anyOf": [{"type": "integer"}, {"type": "string"}],
                "x-kubernetes-int-or-string": True,
                "pattern": "^x$",
            },
            "one": {"enum": ["v"], "type": "string"},
            "lst": {"type": "array", "items": {"type": "string"}},
        },
    }
    with pytest.raises(ValueError, match="anyOf"):
        crdgen.to_structural({"anyOf": [{"type": "integer"}, {"type": "boolean"}]}, {})
    assert crdgen.check_structural({"properties": {"x": {}}}) == [
        "<root>: no type",
        ".x: no type",
    ]


def test_cli_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "crds"
    assert cli.main(["crds", "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(crdgen.render_crds())
    assert cli.main(["crds", "--output", str(out), "--check"]) == 0
    (out / "citusbackup.io_citusbackups.yaml").write_text("# stale\n")
    (out / "extra.yaml").write_text("{}\n")
    assert cli.main(["crds", "--output", str(out), "--check"]) == 1
    err = capsys.readouterr().err
    assert "citusbackups.yaml: differs" in err
    assert "extra.yaml: not generated" in err
