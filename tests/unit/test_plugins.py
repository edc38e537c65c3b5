"""The kubectl plugins' pure parts: arguments -> validated object -> kubectl-like output.

No API server: creation is a fake passed to :func:`citus_backup.plugins.run`;
the real ``kubectl`` and API server are in ``tests/integration/test_plugins_kubectl.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from citus_backup.api.restore import (
    CHECKS_MESSAGE,
    KEEP_OLD_MESSAGE,
    SOURCE_MESSAGE,
    TABLES_MESSAGE,
    TABLES_OR_SCHEMAS_MESSAGE,
    TARGET_DATABASE_MESSAGE,
    VERIFY_MESSAGE,
)
from citus_backup.plugins import (
    PluginError,
    Request,
    api_error_message,
    build_backup,
    build_restore,
    default_namespace,
    render,
    run,
)


def no_create(request: Request, namespace: str) -> dict[str, Any]:
    raise AssertionError("a client dry run must not talk to the API server")


def run_ok(build: Any, argv: list[str], capsys: pytest.CaptureFixture[str], **kw: Any) -> str:
    assert run(build, argv, **kw) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def run_error(build: Any, argv: list[str], capsys: pytest.CaptureFixture[str], **kw: Any) -> str:
    assert run(build, argv, create=kw.pop("create", no_create), **kw) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("\n")
    assert err.count("\n") == 1, err
    return err.strip()


# --- citusrestore


def test_restore_dry_run_prints_the_object_as_yaml_and_creates_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "r1",
        "--database",
        "app1",
        "--policy",
        "nightly",
        "--before",
        "2026-11-27T03:00:00Z",
        "--target-database",
        "app1_restored",
        "--table",
        "public.orders",
        "--table",
        "public.items",
        "--replace",
        "--dry-run=client",
        "-o",
        "yaml",
    ]
    out = run_ok(build_restore, argv, capsys, create=no_create)
    assert yaml.safe_load(out) == {
        "apiVersion": "citusbackup.io/v1alpha1",
        "kind": "CitusRestore",
        "metadata": {"name": "r1"},
        "spec": {
            "policyName": "nightly",
            "before": "2026-11-27T03:00:00Z",
            "databases": ["app1"],
            "targetDatabase": "app1_restored",
            "tables": ["public.orders", "public.items"],
            "replace": True,
        },
    }
    assert out.startswith("apiVersion: citusbackup.io/v1alpha1\nkind: CitusRestore\n")


def test_restore_spec_holds_only_what_was_given() -> None:
    request = build_restore(["r1", "--backup", "b1"])
    assert request.body["spec"] == {"backupName": "b1"}
    assert request.body["metadata"] == {"name": "r1"}
    assert request.namespace is None
    assert request.dry_run == "none"
    assert build_restore(["r", "--backup", "b", "--no-globals"]).body["spec"]["globals"] is False
    schemas = build_restore(["r", "--backup", "b", "--database", "d", "--schema", "s1"])
    assert schemas.body["spec"]["schemas"] == ["s1"]
    assert build_restore(["r", "--backup", "b", "--globals"]).body["spec"]["globals"] is True
    kept = build_restore(["r", "--backup", "b", "--database", "d", "--replace", "--keep-old"])
    assert kept.body["spec"]["keepOld"] is True
    verify = build_restore(["v", "--backup", "b", "--verify", "--checks-config-map", "cm"])
    assert verify.body["spec"] == {"backupName": "b", "verify": True, "checksConfigMap": "cm"}


def test_namespace_flag_is_in_the_object_like_kubectl() -> None:
    request = build_restore(["r1", "--backup", "b1", "-n", "prod"])
    assert request.namespace == "prod"
    assert request.body["metadata"] == {"name": "r1", "namespace": "prod"}
    assert build_restore(["r1", "--backup", "b1", "--namespace=prod"]).namespace == "prod"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["r1", "--database", "app1"], SOURCE_MESSAGE),
        (["r1", "--backup", "b", "--table", "t"], TABLES_MESSAGE),
        (["r1", "--backup", "b", "--target-database", "x"], TARGET_DATABASE_MESSAGE),
        (
            ["r1", "--backup", "b", "--database", "d", "--table", "t", "--schema", "s"],
            TABLES_OR_SCHEMAS_MESSAGE,
        ),
        (["r1", "--backup", "b", "--before", "2026-11-27T03:00:00Z"], "before can only be used"),
        (["r1", "--backup", "b", "--database", "d", "--keep-old"], KEEP_OLD_MESSAGE),
        (["r1", "--backup", "b", "--verify", "--replace"], VERIFY_MESSAGE),
        (["r1", "--backup", "b", "--checks-config-map", "cm"], CHECKS_MESSAGE),
        (["r1", "--policy", "p", "--before", "2026-11-27T03:00:00"], "--before"),
        (["r1", "--policy", "p", "--before", "yesterday"], "--before"),
        (["r1", "--backup", "b", "--database", "d" * 64], "--database"),
        (["r1", "--backup", "b", "--database", "d", "--database", "d"], "--database"),
        (["r1", "--backup", "Bad_Name"], "--backup"),
        (["R1", "--backup", "b"], "invalid CitusRestore name 'R1'"),
        (["r1", "--backup", "b", "--policy", "p"], "not allowed with argument --backup"),
        (["--backup", "b"], "required: NAME"),
        (["r1", "--backup", "b", "--bogus"], "unrecognized arguments: --bogus"),
        (["r1", "--backup", "b", "-o", "wide"], "invalid choice: 'wide'"),
    ],
)
def test_bad_restore_input_is_one_line_naming_the_cause_and_exit_1(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = run_error(build_restore, [*argv, "--dry-run=client"], capsys)
    assert err.startswith("error: ")
    assert expected in err


# --- citusbackup


def test_backup_dry_run_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["b1", "--policy", "p", "--tier", "monthly", "--dry-run=client", "-o", "json"]
    out = run_ok(build_backup, argv, capsys, create=no_create)
    assert json.loads(out) == {
        "apiVersion": "citusbackup.io/v1alpha1",
        "kind": "CitusBackup",
        "metadata": {"name": "b1"},
        "spec": {"policyName": "p", "tier": "monthly"},
    }
    assert '\n    "kind": "CitusBackup"' in out  # kubectl's four-space indentation


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["b1"], "required: --policy"),
        (["b1", "--policy", "p", "--tier", "hourly"], "invalid choice: 'hourly'"),
        (["b1", "--policy", "p", "--tier", "daily", "--also-tier", "daily"], "alsoTiers must not"),
        (["b1", "--policy", "P"], "--policy"),
    ],
)
def test_bad_backup_input(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert expected in run_error(build_backup, argv, capsys)


# --- output and errors


def test_render_matches_kubectl_lines() -> None:
    request = build_backup(["b1", "--policy", "p"])
    assert render(request, request.body) == "citusbackup.citusbackup.io/b1 created\n"
    named = build_backup(["b1", "--policy", "p", "-o", "name"])
    assert render(named, named.body) == "citusbackup.citusbackup.io/b1\n"
    dry = build_restore(["r1", "--backup", "b", "--dry-run=client"])
    assert render(dry, dry.body) == "citusrestore.citusbackup.io/r1 created (dry run)\n"
    server = build_restore(["r1", "--backup", "b", "--dry-run=server"])
    assert render(server, server.body).endswith("created (server dry run)\n")


def test_create_uses_the_resolved_namespace_and_prints_created(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen: list[tuple[str, str]] = []

    def create(request: Request, namespace: str) -> dict[str, Any]:
        seen.append((request.name, namespace))
        return dict(request.body)

    out = run_ok(build_restore, ["r1", "--backup", "b", "-n", "prod"], capsys, create=create)
    assert out == "citusrestore.citusbackup.io/r1 created\n"
    assert seen == [("r1", "prod")]


def test_api_errors_are_kubectls_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    body = {
        "kind": "Status",
        "status": "Failure",
        "message": 'citusrestores.citusbackup.io "r1" already exists',
        "reason": "AlreadyExists",
        "code": 409,
    }

    def create(request: Request, namespace: str) -> dict[str, Any]:
        exc = ApiException(status=409, reason="Conflict")
        exc.body = json.dumps(body)
        raise exc

    err = run_error(build_restore, ["r1", "--backup", "b", "-n", "x"], capsys, create=create)
    assert err == (
        'Error from server (AlreadyExists): citusrestores.citusbackup.io "r1" already exists'
    )
    assert api_error_message(503, "Service Unavailable", "down\nfor now") == (
        "Error from server (Service Unavailable): down for now"
    )
    assert api_error_message(500, "", "") == "Error from server (500): HTTP 500"


def write_kubeconfig(path: Path) -> Path:
    cluster = {"server": "https://127.0.0.1:1"}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [
            {"name": "with-ns", "context": {"cluster": "c", "user": "u", "namespace": "team"}},
            {"name": "without", "context": {"cluster": "c", "user": "u"}},
        ],
        "current-context": "with-ns",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_default_namespace_comes_from_the_kubeconfig_context(tmp_path: Path) -> None:
    kubeconfig = str(write_kubeconfig(tmp_path / "config"))
    assert default_namespace(kubeconfig, None) == "team"
    assert default_namespace(kubeconfig, "without") == "default"
    with pytest.raises(PluginError, match='context "nope" does not exist'):
        default_namespace(kubeconfig, "nope")


def test_unreadable_kubeconfig_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["r1", "--backup", "b", "--kubeconfig", str(tmp_path / "missing")]
    err = run_error(build_restore, argv, capsys)
    assert err.startswith("error: kubeconfig: ")
