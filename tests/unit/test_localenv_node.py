"""Pure pieces of the real local node (:mod:`localenv.node`) and its PKI.

Running the node needs root, containerd and a free machine; these tests cover
what its configs say and why (the machine's constraints: cgroup v1, no
systemd, root without CAP_SYS_RESOURCE, a shared disk, no registry, nothing
leaking onto the real network), the parsing of ``/proc/mounts`` that teardown
trusts, and the client and serving certificates :meth:`localenv.kube.PKI.issue`
hands to the node's components.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store

from localenv import node
from localenv.kube import APISERVER_SANS, LOOPBACK, PKI, CertPair

# --- CNI -----------------------------------------------------------------------------------


def _bridge_plugin() -> dict[str, Any]:
    plugins: list[dict[str, Any]] = node.cni_config()["plugins"]
    (plugin,) = plugins
    return plugin


def test_cni_config_is_a_single_bridge_plugin_on_our_bridge() -> None:
    config = node.cni_config()
    assert config["name"] == node.CNI_NETWORK
    plugin = _bridge_plugin()
    assert plugin["type"] == "bridge"
    # The bridge that bridge_up() created with NODE_IP, not one the plugin invents.
    assert plugin["bridge"] == node.BRIDGE
    assert plugin["isGateway"] is True


def test_cni_config_never_masquerades_so_no_nat_rule_leaks_onto_the_machine() -> None:
    # Pods only talk to the node's own address; ipMasq would add a NAT rule
    # for the pod CIDR that rewrites traffic leaving through the real interface.
    assert _bridge_plugin()["ipMasq"] is False


def test_cni_ipam_subnet_and_gateway_agree_with_the_node_address() -> None:
    ipam = _bridge_plugin()["ipam"]
    assert ipam["type"] == "host-local"
    ((pod_range,),) = ipam["ranges"]
    assert pod_range == {"subnet": node.POD_CIDR, "gateway": node.NODE_IP}
    # The gateway is the bridge's own address, inside the pod subnet of PREFIX_LEN.
    subnet = ipaddress.ip_network(pod_range["subnet"])
    assert ipaddress.ip_address(pod_range["gateway"]) in subnet
    assert subnet.prefixlen == node.PREFIX_LEN
    assert ipam["routes"] == [{"dst": "0.0.0.0/0"}]


def test_cni_ipam_allocations_live_under_the_runtime_dir_so_a_reboot_or_teardown_frees_them() -> (
    None
):
    data_dir = Path(_bridge_plugin()["ipam"]["dataDir"])
    assert data_dir == node.RUN_DIR / "cni-ipam"
    assert data_dir.is_relative_to(Path("/run/citus-backup-operator"))


def test_cni_config_is_json_as_written_to_the_conflist() -> None:
    config = node.cni_config()
    assert json.loads(json.dumps(config)) == config


# --- containerd ----------------------------------------------------------------------------

CRI = "io.containerd.grpc.v1.cri"


def _containerd(sandbox_image: str = "localhost/citus-backup-operator/pause:1.0") -> dict[str, Any]:
    text = node.containerd_config(
        root=Path("/cache/containerd"),
        state=Path("/run/citus-backup-operator/containerd/state"),
        socket=Path("/run/citus-backup-operator/containerd/containerd.sock"),
        cni_conf_dir=Path("/work/.localenv/node/cni"),
        sandbox_image=sandbox_image,
    )
    return tomllib.loads(text)


def test_containerd_config_parses_as_toml_version_2_with_the_given_paths() -> None:
    config = _containerd()
    assert config["version"] == 2
    assert config["root"] == "/cache/containerd"
    assert config["state"] == "/run/citus-backup-operator/containerd/state"
    assert config["grpc"]["address"] == "/run/citus-backup-operator/containerd/containerd.sock"
    # containerd's opt plugin would otherwise install into /opt/containerd.
    assert config["plugins"]["io.containerd.internal.v1.opt"]["path"] == (
        "/run/citus-backup-operator/containerd/state/opt"
    )


def test_containerd_restricts_oom_score_adj_because_root_lacks_cap_sys_resource() -> None:
    # Without it runc fails to set the kubelet's negative oom_score_adj for sandboxes.
    assert _containerd()["plugins"][CRI]["restrict_oom_score_adj"] is True


def test_containerd_uses_cgroupfs_like_the_kubelet_since_there_is_no_systemd() -> None:
    containerd = _containerd()["plugins"][CRI]["containerd"]
    assert containerd["default_runtime_name"] == "runc"
    runc = containerd["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"]["SystemdCgroup"] is False


def test_containerd_sandbox_image_is_exactly_the_locally_built_one_so_it_is_never_pulled() -> None:
    image = "localhost/example/pause:test"
    assert _containerd(image)["plugins"][CRI]["sandbox_image"] == image


def test_containerd_cni_uses_debians_plugins_and_our_conf_dir() -> None:
    cni = _containerd()["plugins"][CRI]["cni"]
    assert cni == {"bin_dir": "/usr/lib/cni", "conf_dir": "/work/.localenv/node/cni"}
    assert Path(cni["bin_dir"]) == node.CNI_BIN_DIR


def test_containerd_config_paths_with_spaces_stay_one_toml_string() -> None:
    text = node.containerd_config(
        root=Path("/a b/root"),
        state=Path("/a b/state"),
        socket=Path("/a b/c.sock"),
        cni_conf_dir=Path("/a b/cni"),
        sandbox_image="x:1",
    )
    config = tomllib.loads(text)
    assert config["root"] == "/a b/root"
    assert config["plugins"][CRI]["cni"]["conf_dir"] == "/a b/cni"


# --- kubelet -------------------------------------------------------------------------------


def _kubelet(tmp_path: Path) -> dict[str, Any]:
    # Only the CA's path is read from the PKI; nothing is generated or opened.
    return node.kubelet_config(
        pki=PKI(tmp_path / "pki"),
        serving_cert=Path("/pki/kubelet-serving.crt"),
        serving_key=Path("/pki/kubelet-serving.key"),
        runtime_socket=Path("/run/citus-backup-operator/containerd/containerd.sock"),
        port=10250,
        healthz_port=10248,
    )


def test_kubelet_runs_on_cgroup_v1_with_cgroupfs_and_no_systemd(tmp_path: Path) -> None:
    config = _kubelet(tmp_path)
    assert config["failCgroupV1"] is False
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["failSwapOn"] is False


def test_kubelet_api_is_authenticated_with_our_ca_and_never_anonymous(tmp_path: Path) -> None:
    config = _kubelet(tmp_path)
    assert config["readOnlyPort"] == 0  # the unauthenticated read-only port is off
    authn = config["authentication"]
    assert authn["anonymous"] == {"enabled": False}
    assert authn["webhook"] == {"enabled": False}
    assert authn["x509"] == {"clientCAFile": str(tmp_path / "pki" / "ca.crt")}
    assert config["tlsCertFile"] == "/pki/kubelet-serving.crt"
    assert config["tlsPrivateKeyFile"] == "/pki/kubelet-serving.key"


def test_kubelet_never_garbage_collects_the_locally_built_images(tmp_path: Path) -> None:
    # They cannot be pulled again; 100 disables image GC.
    config = _kubelet(tmp_path)
    assert config["imageGCHighThresholdPercent"] == 100
    assert config["imageGCLowThresholdPercent"] < config["imageGCHighThresholdPercent"]


def test_kubelet_eviction_thresholds_tolerate_a_nearly_full_shared_disk(tmp_path: Path) -> None:
    eviction = _kubelet(tmp_path)["evictionHard"]
    for signal in ("nodefs.available", "nodefs.inodesFree", "imagefs.available"):
        assert eviction[signal] == "1%"


def test_kubelet_listens_on_the_node_address_and_healthz_on_loopback(tmp_path: Path) -> None:
    config = _kubelet(tmp_path)
    assert config["address"] == node.NODE_IP
    assert config["port"] == 10250
    assert config["healthzBindAddress"] == LOOPBACK
    assert config["healthzPort"] == 10248
    assert config["containerRuntimeEndpoint"] == (
        "unix:///run/citus-backup-operator/containerd/containerd.sock"
    )


def test_kubelet_config_is_plain_yaml_data(tmp_path: Path) -> None:
    # _write_yaml uses safe_dump: a Path left in the config would raise there.
    config = _kubelet(tmp_path)
    assert yaml.safe_load(yaml.safe_dump(config)) == config
    assert config["kind"] == "KubeletConfiguration"


# --- kube-proxy ----------------------------------------------------------------------------


def _proxy() -> dict[str, Any]:
    return node.kube_proxy_config(
        kubeconfig=Path("/state/kube-proxy.kubeconfig"), healthz_port=10256, metrics_port=10249
    )


def test_kube_proxy_programs_iptables_for_the_pod_cidr() -> None:
    config = _proxy()
    assert config["mode"] == "iptables"
    assert config["clusterCIDR"] == node.POD_CIDR
    assert config["hostnameOverride"] == node.NODE_NAME
    assert config["bindAddress"] == node.NODE_IP


def test_kube_proxy_keeps_node_ports_off_localhost_to_leave_route_localnet_alone() -> None:
    assert _proxy()["iptables"]["localhostNodePorts"] is False


def test_kube_proxy_conntrack_zeros_leave_the_machines_sysctls_untouched() -> None:
    assert _proxy()["conntrack"] == {
        "maxPerCore": 0,
        "min": 0,
        "tcpEstablishedTimeout": "0s",
        "tcpCloseWaitTimeout": "0s",
    }


def test_kube_proxy_serves_health_and_metrics_on_loopback_only() -> None:
    config = _proxy()
    assert config["healthzBindAddress"] == f"{LOOPBACK}:10256"
    assert config["metricsBindAddress"] == f"{LOOPBACK}:10249"
    assert config["clientConnection"] == {"kubeconfig": "/state/kube-proxy.kubeconfig"}
    assert yaml.safe_load(yaml.safe_dump(config)) == config


# --- mounts_below --------------------------------------------------------------------------

ROOT = Path("/run/citus-backup-operator/containerd")


def _mounts(*points: str) -> str:
    return "".join(f"overlay {p} overlay rw,relatime 0 0\n" for p in points)


def test_mounts_below_lists_deepest_first_so_children_unmount_before_parents() -> None:
    text = _mounts(
        f"{ROOT}",
        f"{ROOT}/state/io.containerd.grpc.v1.cri/sandboxes/abc/shm",
        f"{ROOT}/state/io.containerd.runtime.v2.task/k8s.io/abc/rootfs",
        f"{ROOT}/state",
    )
    points = node.mounts_below(text, ROOT)
    depths = [p.count("/") for p in points]
    assert depths == sorted(depths, reverse=True)
    assert points[-1] == str(ROOT)
    assert points.index(f"{ROOT}/state") > points.index(
        f"{ROOT}/state/io.containerd.grpc.v1.cri/sandboxes/abc/shm"
    )
    assert len(points) == 4


def test_mounts_below_ignores_siblings_that_only_share_a_string_prefix() -> None:
    text = _mounts("/run/x", "/run/x/a", "/run/xy", "/run/xy/a", "/run", "/proc")
    assert node.mounts_below(text, Path("/run/x")) == ["/run/x/a", "/run/x"]


def test_mounts_below_accepts_a_root_with_a_trailing_slash() -> None:
    text = _mounts("/run/x/a", "/run/xy")
    assert node.mounts_below(text, Path("/run/x/")) == ["/run/x/a"]


def test_mounts_below_decodes_the_040_escape_for_spaces() -> None:
    # /proc/mounts writes a space in a mount point as \040.
    text = _mounts("/run/with\\040space/a", "/run/with\\040space", "/run/with")
    assert node.mounts_below(text, Path("/run/with space")) == [
        "/run/with space/a",
        "/run/with space",
    ]


def test_mounts_below_keeps_a_point_mounted_twice_so_each_layer_is_unmounted() -> None:
    text = _mounts(f"{ROOT}/shm", f"{ROOT}/shm")
    assert node.mounts_below(text, ROOT) == [f"{ROOT}/shm", f"{ROOT}/shm"]


def test_mounts_below_skips_blank_and_malformed_lines() -> None:
    text = f"\nnone\n{_mounts(f'{ROOT}/a')}"
    assert node.mounts_below(text, ROOT) == [f"{ROOT}/a"]


def test_mounts_below_of_nothing_mounted_is_empty() -> None:
    assert node.mounts_below(_mounts("/", "/proc", "/run"), ROOT) == []


# --- PKI.issue -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"), extra_sans=(node.NODE_IP,)).generate()


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def kubelet_client(pki: PKI) -> CertPair:
    # As LocalNode._kubeconfig("kubelet", ...) issues it.
    return pki.issue("kubelet", f"system:node:{node.NODE_NAME}", org="system:nodes", client=True)


def test_issued_client_cert_names_the_node_as_the_node_authorizer_expects(
    kubelet_client: CertPair,
) -> None:
    subject = _cert(kubelet_client.cert).subject
    cn = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    org = subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [a.value for a in cn] == ["system:node:localnode"]
    assert [a.value for a in org] == ["system:nodes"]


def test_issued_client_cert_is_for_client_auth_only_and_cannot_sign(
    kubelet_client: CertPair,
) -> None:
    cert = _cert(kubelet_client.cert)
    assert _eku(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature is True
    assert usage.key_cert_sign is False


def test_issued_client_cert_verifies_against_the_cluster_ca(
    pki: PKI, kubelet_client: CertPair
) -> None:
    ca = _cert(pki.ca.cert)
    cert = _cert(kubelet_client.cert)
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    # Full path validation with the clientAuth EKU, as the API server does. Go's
    # verifier (Kubernetes') needs no SAN on a client cert; WebPKI's defaults do.
    no_san_needed = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    verifier = (
        PolicyBuilder()
        .store(Store([ca]))
        .time(_now())
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=no_san_needed)
        .build_client_verifier()
    )
    verified = verifier.verify(cert, [])
    assert verified.chain[-1] == ca


def test_issued_cert_is_signed_by_this_pki_not_by_an_earlier_one_of_the_same_name(
    tmp_path: Path, kubelet_client: CertPair
) -> None:
    # The PKI is regenerated on every start: same CA name, new key.
    other = PKI(tmp_path / "other").generate()
    with pytest.raises(InvalidSignature):
        _cert(kubelet_client.cert).verify_directly_issued_by(_cert(other.ca.cert))


def test_issued_private_key_is_readable_by_its_owner_only(kubelet_client: CertPair) -> None:
    assert stat.S_IMODE(kubelet_client.key.stat().st_mode) == 0o600


def test_issued_client_cert_without_org_has_no_organization(pki: PKI) -> None:
    pair = pki.issue("scheduler", "system:kube-scheduler", client=True)
    subject = _cert(pair.cert).subject
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME) == []
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:kube-scheduler"


def test_issued_kubelet_serving_cert_is_valid_for_the_node_address_and_name(pki: PKI) -> None:
    # As LocalNode._start_kubelet issues it: the API server dials NODE_IP for logs and exec.
    pair = pki.issue(
        "kubelet-serving", node.NODE_NAME, sans=(node.NODE_IP, node.NODE_NAME), server=True
    )
    cert = _cert(pair.cert)
    assert _eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH}
    assert set(_sans(cert)) == {
        x509.IPAddress(ipaddress.ip_address(node.NODE_IP)),
        x509.DNSName(node.NODE_NAME),
    }
    ca = _cert(pki.ca.cert)
    verifier = (
        PolicyBuilder()
        .store(Store([ca]))
        .time(_now())
        .build_server_verifier(x509.IPAddress(ipaddress.ip_address(node.NODE_IP)))
    )
    assert verifier.verify(cert, [])[-1] == ca


def test_apiserver_cert_carries_the_extra_san_for_pods_on_the_node(pki: PKI) -> None:
    cert = _cert(pki.apiserver.cert)
    sans = _sans(cert)
    assert x509.IPAddress(ipaddress.ip_address(node.NODE_IP)) in sans
    # ... next to the usual names, the `kubernetes` Service's ClusterIP among them.
    for name in APISERVER_SANS:
        try:
            expected: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            expected = x509.DNSName(name)
        assert expected in sans
    cert.verify_directly_issued_by(_cert(pki.ca.cert))
