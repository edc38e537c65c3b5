"""The Kubernetes control plane of the local environment is real: CRDs are
served, kube-controller-manager's controllers run (Jobs create Pods, the
garbage collector deletes them, namespaces get a ServiceAccount and the root
CA), RBAC is enforced for ServiceAccount tokens, and failed starts are clean.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from harness.polling import eventually
from localenv.kube import PKI, Etcd, KubeCluster, KubeInfo
from localenv.process import StartError

GROUP = "envcheck.example.com"


def api_status(call: Callable[[], Any]) -> int:
    with pytest.raises(ApiException) as err:
        call()
    status: int = err.value.status
    return status


def a_job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "busybox:1.36", "command": ["true"]}],
                }
            },
        },
    }


# --- the running control plane -------------------------------------------------


def test_crd_becomes_established_and_serves_custom_objects(
    kube_api: Any, kube_namespace: str
) -> None:
    extensions = client.ApiextensionsV1Api(kube_api)
    name = f"widgets.{GROUP}"
    size = {"type": "integer", "minimum": 1}
    extensions.create_custom_resource_definition(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {
                "group": GROUP,
                "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "properties": {
                                    "spec": {"type": "object", "properties": {"size": size}}
                                },
                            }
                        },
                    }
                ],
            },
        }
    )
    try:

        def established() -> bool:
            conditions = extensions.read_custom_resource_definition(name).status.conditions
            return any(c.type == "Established" and c.status == "True" for c in conditions or [])

        eventually(established, "the CRD to become Established")
        custom = client.CustomObjectsApi(kube_api)

        def widget(size: int) -> dict[str, Any]:
            return {
                "apiVersion": f"{GROUP}/v1",
                "kind": "Widget",
                "metadata": {"name": f"w{size}"},
                "spec": {"size": size},
            }

        custom.create_namespaced_custom_object(GROUP, "v1", kube_namespace, "widgets", widget(3))
        got = custom.get_namespaced_custom_object(GROUP, "v1", kube_namespace, "widgets", "w3")
        assert got["spec"] == {"size": 3}
        # The structural schema is enforced by the apiserver.
        invalid = widget(0)
        assert (
            api_status(
                lambda: custom.create_namespaced_custom_object(
                    GROUP, "v1", kube_namespace, "widgets", invalid
                )
            )
            == 422
        )
    finally:
        extensions.delete_custom_resource_definition(name)


def test_job_controller_creates_a_pending_pod_and_gc_deletes_it(
    kube_api: Any, kube_namespace: str
) -> None:
    batch, core = client.BatchV1Api(kube_api), client.CoreV1Api(kube_api)
    job = batch.create_namespaced_job(kube_namespace, a_job("hello"))

    def job_pods() -> list[Any]:
        pods: list[Any] = core.list_namespaced_pod(
            kube_namespace, label_selector="job-name=hello"
        ).items
        return pods

    (pod,) = eventually(job_pods, "the Job controller to create the Pod")
    owner = pod.metadata.owner_references[0]
    assert (owner.kind, owner.uid) == ("Job", job.metadata.uid)
    # No scheduler and no kubelet: the Pod exists, unbound and Pending.
    assert pod.spec.node_name is None
    assert pod.status.phase == "Pending"
    # ServiceAccount admission gave it the namespace's default account's token.
    assert pod.spec.service_account_name == "default"
    assert any(v.name.startswith("kube-api-access-") for v in pod.spec.volumes)

    batch.delete_namespaced_job("hello", kube_namespace, propagation_policy="Background")
    eventually(lambda: not job_pods(), "the garbage collector to delete the Job's Pod")


def test_new_namespace_gets_the_cluster_root_ca(
    kube: KubeInfo, kube_api: Any, kube_namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    configmap = eventually(
        lambda: core.read_namespaced_config_map("kube-root-ca.crt", kube_namespace),
        "root-ca-cert-publisher to create kube-root-ca.crt",
    )
    assert configmap.data["ca.crt"].strip() == kube.ca_path.read_text().strip()


def test_service_account_kubeconfig_has_exactly_its_rbac(
    kube: KubeInfo, kube_api: Any, kube_namespace: str, tmp_path: Path
) -> None:
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    core.create_namespaced_service_account(kube_namespace, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(
        kube_namespace,
        {
            "metadata": {"name": "configmap-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        kube_namespace,
        {
            "metadata": {"name": "reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "configmap-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": kube_namespace}],
        },
    )
    path = kube.mint_sa_kubeconfig(kube_namespace, "reader", tmp_path / "reader.kubeconfig")
    assert path.stat().st_mode & 0o777 == 0o600
    reader = config.new_client_from_config(config_file=str(path))
    try:
        review = client.AuthenticationV1Api(reader).create_self_subject_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        )
        assert review.status.user_info.username == f"system:serviceaccount:{kube_namespace}:reader"
        reader_core = client.CoreV1Api(reader)
        # The RBAC authorizer sees new bindings through an informer: allow a moment.
        allowed = eventually(
            lambda: reader_core.list_namespaced_config_map(kube_namespace).items,
            "the Role to allow listing configmaps",
        )
        assert "kube-root-ca.crt" in [c.metadata.name for c in allowed]
        forbidden = {
            "create a Job": lambda: client.BatchV1Api(reader).create_namespaced_job(
                kube_namespace, a_job("not-allowed")
            ),
            "list secrets": lambda: reader_core.list_namespaced_secret(kube_namespace),
            "list configmaps elsewhere": lambda: reader_core.list_namespaced_config_map("default"),
        }
        assert {what: api_status(call) for what, call in forbidden.items()} == dict.fromkeys(
            forbidden, 403
        )
    finally:
        reader.close()


def test_requests_without_credentials_are_rejected(kube: KubeInfo) -> None:
    context = ssl.create_default_context(cafile=str(kube.ca_path))
    url = f"{kube.server}/api/v1/namespaces"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url, context=context, timeout=10)  # noqa: S310 - https, ours
    assert err.value.code == 401


def test_kubectl_works_with_the_admin_kubeconfig(kube: KubeInfo, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(kube.kubectl), "--kubeconfig", str(kube.kubeconfig), "get", "ns/default", "-o=name"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "namespace/default"), done.stderr


# --- PKI and faults (no shared control plane) --------------------------------------


def test_certificates_carry_the_names_and_identities_components_need(tmp_path: Path) -> None:
    pki = PKI(tmp_path / "pki").generate()

    def load(path: Path) -> x509.Certificate:
        return x509.load_pem_x509_certificate(path.read_bytes())

    san = load(pki.apiserver.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    names = {str(n) for n in san.value.get_values_for_type(x509.DNSName)}
    names |= {str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)}
    assert names == {
        "127.0.0.1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "10.0.0.1",
    }
    admin = load(pki.admin.cert).subject
    assert admin.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    manager = load(pki.controller_manager.cert).subject
    cn = manager.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "system:kube-controller-manager"
    kubelet_client = load(pki.apiserver_kubelet_client.cert).subject
    assert kubelet_client.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "system:masters"
    )
    keys = [*pki.directory.glob("*.key")]
    assert len(keys) == 11
    assert {k.stat().st_mode & 0o777 for k in keys} == {0o600}


def test_taken_port_fails_naming_component_and_log_and_stops_the_rest(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        cluster = KubeCluster(tmp_path / "kube", logs, apiserver_port=port)
        with pytest.raises(StartError) as err:
            cluster.start()
    message = str(err.value)
    assert message.startswith("kube-apiserver: command `")
    assert f"log {logs / 'kube-apiserver.log'}" in message
    assert f"127.0.0.1:{port} is already in use" in message
    # etcd had started before kube-apiserver failed; it was stopped again.
    assert cluster.etcd is not None
    assert cluster.etcd.process is not None
    assert cluster.etcd.process.proc is not None
    assert cluster.etcd.process.proc.poll() is not None
    assert cluster.leftovers() == []


def test_early_exit_is_reported_with_the_log_tail(tmp_path: Path) -> None:
    etcd = Etcd(tmp_path / "etcd", tmp_path / "logs")
    etcd.base_dir.mkdir()
    etcd.data_dir.write_text("a file where etcd wants its data directory\n")
    try:
        with pytest.raises(StartError, match="exited early") as err:
            etcd.start()
    finally:
        etcd.stop()
    message = str(err.value)
    assert message.startswith("etcd: command `")
    assert str(etcd.log_path) in message
    assert "last log lines" in message


def test_missing_binary_fails_before_anything_starts(tmp_path: Path) -> None:
    missing = tmp_path / "bin" / "kube-controller-manager"
    cluster = KubeCluster(
        tmp_path / "kube", tmp_path / "logs", executables={"kube-controller-manager": missing}
    )
    with pytest.raises(StartError) as err:
        cluster.start()
    assert str(err.value).startswith(f"kube-controller-manager: binary {missing} not found")
    assert "build-components.sh" in str(err.value)
    assert cluster.processes() == []
    assert cluster.leftovers() == []


def test_unbuilt_component_says_how_to_build_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CITUS_BACKUP_CACHE", str(tmp_path / "empty-cache"))
    cluster = KubeCluster(tmp_path / "kube", tmp_path / "logs", build=False)
    with pytest.raises(StartError, match=r"^etcd: not built yet; run \S*build-components\.sh etcd"):
        cluster.start()
    assert cluster.leftovers() == []
