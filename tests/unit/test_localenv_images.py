"""Pure pieces of the e2e image builder (:mod:`localenv.images`).

Building and importing for real needs root, dockerd and containerd; these
tests cover what decides whether to rebuild or re-import (stamps, ChainIDs,
names, parsed ctr output) and the commands and configs it writes.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import pytest

from localenv import images
from localenv.mounts import mounts_below


def _sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


# --- names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "ref"),
    [
        ("citus-backup-operator:dev", "docker.io/library/citus-backup-operator:dev"),
        ("debian", "docker.io/library/debian:latest"),
        ("debian:bookworm-slim", "docker.io/library/debian:bookworm-slim"),
        ("someone/tool:1.2", "docker.io/someone/tool:1.2"),
        ("localhost/citus-backup-operator/pause:1.0", "localhost/citus-backup-operator/pause:1.0"),
        ("registry.example.com/x/y", "registry.example.com/x/y:latest"),
        ("localhost:5000/x:tag", "localhost:5000/x:tag"),
        ("docker.io/library/busybox:1", "docker.io/library/busybox:1"),
    ],
)
def test_containerd_ref_normalizes_like_docker(image: str, ref: str) -> None:
    assert images.containerd_ref(image) == ref


def test_pause_image_is_already_fully_qualified() -> None:
    # containerd's sandbox_image must name exactly what the import creates.
    assert images.containerd_ref(images.PAUSE_IMAGE) == images.PAUSE_IMAGE


def test_project_image_matches_the_deployment_manifest() -> None:
    deployment = Path(__file__).parents[2] / "manifests" / "deployment.yaml"
    assert f"image: {images.PROJECT_IMAGE}" in deployment.read_text()


# --- ChainID -----------------------------------------------------------------------------


def test_chain_id_of_one_layer_is_its_diff_id() -> None:
    assert images.chain_id(["sha256:aa"]) == "sha256:aa"


def test_chain_id_folds_layers_in_order() -> None:
    first = _sha("sha256:aa sha256:bb")
    assert images.chain_id(["sha256:aa", "sha256:bb"]) == first
    assert images.chain_id(["sha256:aa", "sha256:bb", "sha256:cc"]) == _sha(f"{first} sha256:cc")
    assert images.chain_id(["sha256:bb", "sha256:aa"]) != first


def test_chain_id_needs_a_layer() -> None:
    with pytest.raises(ValueError, match="without layers"):
        images.chain_id([])


# --- stamps ------------------------------------------------------------------------------


def test_base_stamp_is_stable_and_ignores_the_bundle_without_extra_cas() -> None:
    assert images.base_stamp({}, None) == images.base_stamp({}, b"bundle")
    assert len(images.base_stamp({}, None)) == 16


def test_base_stamp_follows_the_ca_material() -> None:
    plain = images.base_stamp({}, None)
    with_ca = images.base_stamp({"proxy.crt": b"A"}, b"bundle")
    assert with_ca != plain
    assert images.base_stamp({"proxy.crt": b"B"}, b"bundle") != with_ca
    assert images.base_stamp({"proxy.crt": b"A"}, b"other") != with_ca
    assert images.base_stamp({"other.crt": b"A"}, b"bundle") != with_ca
    both = images.base_stamp({"a.crt": b"1", "b.crt": b"2"}, b"x")
    assert images.base_stamp({"b.crt": b"2", "a.crt": b"1"}, b"x") == both


def test_source_stamp_separates_file_boundaries() -> None:
    assert images.source_stamp({"f": b"ab", "g": b"c"}) != images.source_stamp(
        {"f": b"a", "g": b"bc"}
    )
    assert images.source_stamp({"f": b"x"}) == images.source_stamp({"f": b"x"})
    assert images.source_stamp({"f": b"x"}) != images.source_stamp({"f": b"y"})


# --- parsing -----------------------------------------------------------------------------

CTR_IMAGES_LS = """\
REF                                         TYPE                                                 DIGEST                                                                  SIZE      PLATFORMS   LABELS 
docker.io/library/citus-backup-operator:dev application/vnd.docker.distribution.manifest.v2+json sha256:a133b47c7b51dcbda3882bc5070da6360dda2222286668af3914a9045cb3cdc8 534.6 MiB linux/amd64 -      
localhost/citus-backup-operator/pause:1.0   application/vnd.docker.distribution.manifest.v2+json sha256:4aad286d81b0c20b552f9dd7130f33a0726689f784db78010c6c9509163317a1 1.4 MiB   linux/amd64 -      
"""  # noqa: E501, W291 - ctr's real output, trailing blanks included


def test_parse_ctr_images() -> None:
    assert images.parse_ctr_images(CTR_IMAGES_LS) == {
        "docker.io/library/citus-backup-operator:dev": (
            "sha256:a133b47c7b51dcbda3882bc5070da6360dda2222286668af3914a9045cb3cdc8"
        ),
        "localhost/citus-backup-operator/pause:1.0": (
            "sha256:4aad286d81b0c20b552f9dd7130f33a0726689f784db78010c6c9509163317a1"
        ),
    }
    assert images.parse_ctr_images(CTR_IMAGES_LS.splitlines()[0]) == {}
    assert images.parse_ctr_images("") == {}


def test_manifest_config_digest() -> None:
    manifest = {"schemaVersion": 2, "config": {"digest": "sha256:cc", "size": 1}, "layers": []}
    assert images.manifest_config_digest(manifest) == "sha256:cc"
    index = {"schemaVersion": 2, "manifests": [{"digest": "sha256:mm"}]}
    assert images.manifest_config_digest(index) is None
    assert images.manifest_config_digest({"config": "nonsense"}) is None


def test_mounts_under_finds_children_deepest_first() -> None:
    mounts = (
        "proc /proc proc rw 0 0\n"
        "proc /var/x/rootfs/proc proc rw 0 0\n"
        "sysfs /var/x/rootfs/sys sysfs rw 0 0\n"
        "devpts /var/x/rootfs/dev/pts devpts rw 0 0\n"
        "tmpfs /var/x/with\\040space tmpfs rw 0 0\n"
        "tmpfs /var/xy tmpfs rw 0 0\n"
    )
    found = mounts_below(mounts, Path("/var/x"))
    assert found[0] == "/var/x/rootfs/dev/pts"
    assert set(found) == {
        "/var/x/rootfs/proc",
        "/var/x/rootfs/sys",
        "/var/x/rootfs/dev/pts",
        "/var/x/with space",
    }
    assert mounts_below(mounts, Path("/nowhere")) == []


# --- commands and configs ----------------------------------------------------------------


def test_debootstrap_pins_suite_variant_and_mirror() -> None:
    argv = images.debootstrap_argv(Path("/c/rootfs"))
    assert argv[1:] == [
        "--variant=minbase",
        "bookworm",
        "/c/rootfs",
        "http://deb.debian.org/debian",
    ]


def test_base_import_labels_the_stamp() -> None:
    argv = images.import_base_argv("abc")
    assert argv[0] == "/usr/bin/docker"
    assert argv[-2:] == ["-", "debian:bookworm-slim"]
    assert f"LABEL {images.BASE_STAMP_LABEL}=abc" in argv
    tar = images.rootfs_tar_argv(Path("/c/rootfs"))
    assert tar[-4:] == ["-C", "/c/rootfs", "-c", "."]
    assert "--numeric-owner" in tar


def test_docker_build_argv() -> None:
    argv = images.docker_build_argv("t:1", Path("/repo"), host_network=True)
    assert argv == [
        "/usr/bin/docker", "build", "--force-rm", "--network", "host", "-t", "t:1", "/repo"
    ]  # fmt: skip
    assert "--network" not in images.docker_build_argv("t:1", Path("/ctx"), host_network=False)


def test_go_build_is_static_and_stripped() -> None:
    argv = images.go_build_argv(Path("/go/bin/go"), Path("/out/pause"))
    assert argv == [
        "/go/bin/go",
        "build",
        "-trimpath",
        "-ldflags",
        "-s -w",
        "-o",
        "/out/pause",
        ".",
    ]


def test_ctr_import_unpacks_for_the_snapshotter_from_stdin() -> None:
    argv = images.ctr_import_argv(Path("/run/x/containerd.sock"), "overlayfs")
    assert argv[:5] == ["/usr/bin/ctr", "--address", "/run/x/containerd.sock", "-n", "k8s.io"]
    assert argv[5:] == ["images", "import", "--snapshotter", "overlayfs", "-"]
    assert "--no-unpack" not in argv


def test_dockerd_uses_only_private_paths() -> None:
    run = images.RUN_DIR
    argv = images.dockerd_argv(
        data_root=Path("/c/docker"), run_dir=run, containerd_socket=run / "containerd.sock"
    )
    pairs = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert pairs["--data-root"] == "/c/docker"
    assert pairs["--host"] == f"unix://{run}/docker.sock"
    assert pairs["--containerd"] == f"{run}/containerd.sock"
    assert pairs["--config-file"] == f"{run}/daemon.json"
    assert {"--iptables=false", "--bridge=none"} <= set(argv)
    # unix socket paths (and containerd's derived .ttrpc one) must fit 108 bytes.
    assert len(f"{run}/containerd.sock.ttrpc") < 108


def test_private_containerd_config() -> None:
    text = images.build_containerd_config(
        root=Path("/c/docker-containerd"), state=Path("/run/d/containerd"), socket=Path("/run/d/s")
    )
    config = tomllib.loads(text)
    assert config["version"] == 2
    assert config["root"] == "/c/docker-containerd"
    assert config["state"] == "/run/d/containerd"
    assert config["grpc"]["address"] == "/run/d/s"
    assert config["disabled_plugins"] == ["io.containerd.grpc.v1.cri"]
    # Not containerd's default /opt/containerd: nothing outside our paths.
    assert config["plugins"]["io.containerd.internal.v1.opt"]["path"] == "/run/d/containerd/opt"


def test_pause_sources_exist() -> None:
    for name in images.PAUSE_SOURCES:
        assert (images.PAUSE_SRC / name).is_file()
