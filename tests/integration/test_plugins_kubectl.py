"""``kubectl create citusrestore|citusbackup`` through the real kubectl and API server.

kubectl finds the plugins (``kubectl-create-*`` console scripts of the venv)
on PATH; the CRDs come from ``crds/``, so the API server enforces their
schema and CEL rules. Checked: client dry runs print and create nothing,
creation prints kubectl's line, the default namespace comes from the
kubeconfig context, and server errors (AlreadyExists, Forbidden, a CEL
rule) come back as one line with exit status 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from citus_backup.api.common import API_VERSION
from citus_backup.api.restore import KIND_INFO as RESTORE_KIND_INFO
from citus_backup.api.restore import SOURCE_MESSAGE
from citus_backup.plugins import Request, run
from localenv.kube import KubeInfo

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
BIN = Path(sys.executable).parent


def kubectl(
    kube: KubeInfo, args: Sequence[str], *, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "/usr/bin:/bin")]),
        "KUBECONFIG": str(kubeconfig or kube.kubeconfig),
        "HOME": os.environ.get("HOME", "/tmp"),
    }
    return subprocess.run(
        [str(kube.kubectl), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def crds(kube: KubeInfo) -> None:
    ok(kubectl(kube, ["apply", "--server-side", "-f", str(CRDS)]))
    ok(kubectl(kube, ["wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"]))


def get(kube: KubeInfo, what: str, namespace: str) -> Any:
    return json.loads(ok(kubectl(kube, ["get", what, "-n", namespace, "-o", "json"])))


def test_client_dry_run_prints_yaml_and_creates_nothing(
    kube: KubeInfo, crds: None, kube_namespace: str
) -> None:
    args = ["create", "citusrestore", "r1", "-n", kube_namespace, "--database", "app1"]
    args += ["--policy", "nightly", "--before", "2026-11-27T03:00:00Z"]
    args += ["--target-database", "app1_restored", "--dry-run=client", "-o", "yaml"]
    printed = yaml.safe_load(ok(kubectl(kube, args)))
    assert printed == {
        "apiVersion": API_VERSION,
        "kind": "CitusRestore",
        "metadata": {"name": "r1", "namespace": kube_namespace},
        "spec": {
            "policyName": "nightly",
            "before": "2026-11-27T03:00:00Z",
            "databases": ["app1"],
            "targetDatabase": "app1_restored",
        },
    }
    assert get(kube, "citusrestores", kube_namespace)["items"] == []


def test_create_restore_then_already_exists(
    kube: KubeInfo, crds: None, kube_namespace: str
) -> None:
    args = ["create", "citusrestore", "r1", "-n", kube_namespace, "--database", "app1"]
    args += ["--backup", "nightly-202611270300", "--table", "public.orders", "--replace"]
    assert ok(kubectl(kube, args)) == "citusrestore.citusbackup.io/r1 created\n"
    stored = get(kube, "citusrestore/r1", kube_namespace)
    assert stored["spec"] == {
        "backupName": "nightly-202611270300",
        "databases": ["app1"],
        "tables": ["public.orders"],
        "replace": True,
        # The CRD's defaults, filled in by the API server:
        "keepOld": False,
        "verify": False,
    }
    error = one_line_error(kubectl(kube, args))
    assert (
        error
        == 'Error from server (AlreadyExists): citusrestores.citusbackup.io "r1" already exists'
    )


def test_create_backup_in_the_context_namespace_with_yaml_output(
    kube: KubeInfo, crds: None, kube_namespace: str, tmp_path: Path
) -> None:
    config = yaml.safe_load(kube.kubeconfig.read_text())
    config["contexts"][0]["context"]["namespace"] = kube_namespace
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    args = [
        "create",
        "citusbackup",
        "now",
        "--policy",
        "nightly",
        "--tier",
        "monthly",
        "-o",
        "yaml",
    ]
    created = yaml.safe_load(ok(kubectl(kube, args, kubeconfig=kubeconfig)))
    assert created["metadata"]["namespace"] == kube_namespace
    assert created["metadata"]["uid"]  # the server's answer, not the request
    assert created["spec"] == {"policyName": "nightly", "tier": "monthly"}
    # --kubeconfig given to the plugin wins over KUBECONFIG, as in kubectl.
    args = [
        "create",
        "citusbackup",
        "later",
        "--policy",
        "nightly",
        "--kubeconfig",
        str(kubeconfig),
    ]
    assert ok(kubectl(kube, args)) == "citusbackup.citusbackup.io/later created\n"
    names = [i["metadata"]["name"] for i in get(kube, "citusbackups", kube_namespace)["items"]]
    assert sorted(names) == ["later", "now"]


def test_server_dry_run_validates_without_creating(
    kube: KubeInfo, crds: None, kube_namespace: str
) -> None:
    args = ["create", "citusbackup", "b1", "-n", kube_namespace, "--policy", "p"]
    out = ok(kubectl(kube, [*args, "--dry-run=server"]))
    assert out == "citusbackup.citusbackup.io/b1 created (server dry run)\n"
    assert get(kube, "citusbackups", kube_namespace)["items"] == []


def test_client_side_validation_fails_before_the_server(
    kube: KubeInfo, crds: None, kube_namespace: str
) -> None:
    args = ["create", "citusrestore", "r1", "-n", kube_namespace, "--backup", "b"]
    error = one_line_error(kubectl(kube, [*args, "--table", "public.orders"]))
    assert error == "error: invalid CitusRestore: tables requires exactly one entry in databases"


def test_forbidden_is_one_line(
    kube: KubeInfo, crds: None, kube_namespace: str, tmp_path: Path
) -> None:
    # The namespace's default ServiceAccount has no RBAC at all.
    sa = kube.mint_sa_kubeconfig(kube_namespace, "default", tmp_path / "sa.kubeconfig")
    args = ["create", "citusbackup", "b1", "--policy", "p"]
    error = one_line_error(kubectl(kube, args, kubeconfig=sa))
    assert error.startswith("Error from server (Forbidden): ")
    assert "cannot create resource" in error


def test_a_cel_rule_of_the_crd_comes_back_as_one_line(
    kube: KubeInfo, crds: None, kube_namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Client-side validation would stop this; send it anyway to see the server's answer.
    body = {
        "apiVersion": API_VERSION,
        "kind": "CitusRestore",
        "metadata": {"name": "both"},
        "spec": {"backupName": "b", "policyName": "p"},
    }
    request = Request(
        kind=RESTORE_KIND_INFO,
        body=body,
        namespace=kube_namespace,
        kubeconfig=str(kube.kubeconfig),
        context=None,
        dry_run="none",
        output=None,
    )
    assert run(lambda argv: request, []) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("Error from server (Invalid): ")
    assert SOURCE_MESSAGE in error
