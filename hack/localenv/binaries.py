"""Where the pinned, source-built binaries live, and building them on demand.

``hack/build-components.sh`` owns the building; this module only knows the
cache layout (``<cache>/bin/<component>-<version>/``) and calls the script
when a component is missing, so a test run on a fresh machine builds once.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from localenv.process import StartError

HACK_DIR = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = HACK_DIR / "build-components.sh"
VERSIONS_FILE = HACK_DIR / "versions.env"


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "citus-backup-operator"
    return Path(os.environ.get("CITUS_BACKUP_CACHE", default))


def versions() -> dict[str, str]:
    pinned: dict[str, str] = {}
    for raw in VERSIONS_FILE.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            pinned[key] = value
    return pinned


# component -> (versions.env key, binaries it provides)
COMPONENTS = {
    "kubernetes": ("KUBERNETES_VERSION", ("kube-apiserver", "kube-controller-manager", "kubectl")),
    # Only the e2e tier and the demo run a node; a separate component keeps
    # the integration tier from ever waiting for these builds.
    "kubernetes-node": ("KUBERNETES_VERSION", ("kubelet", "kube-scheduler", "kube-proxy")),
    "etcd": ("ETCD_VERSION", ("etcd",)),
    "minio": ("MINIO_VERSION", ("minio",)),
    "mc": ("MC_VERSION", ("mc",)),
    # The alert rules' unit tests (tests/unit/test_alert_rules.py).
    "promtool": ("PROMETHEUS_VERSION", ("promtool",)),
}


def component_dir(component: str) -> Path:
    key, _ = COMPONENTS[component]
    return cache_dir() / "bin" / f"{component}-{versions()[key]}"


def binary(name: str, *, build: bool = True) -> Path:
    """Path of a pinned binary, building its component first if needed."""
    component = next((c for c, (_, names) in COMPONENTS.items() if name in names), None)
    if component is None:
        raise KeyError(name)
    directory = component_dir(component)
    if not (directory / ".complete").exists():
        if not build:
            raise StartError(f"{name}: not built yet; run {BUILD_SCRIPT} {component}")
        result = subprocess.run([str(BUILD_SCRIPT), component], check=False)
        if result.returncode != 0:
            raise StartError(
                f"{name}: build failed: `{BUILD_SCRIPT} {component}` exited {result.returncode}"
            )
    return directory / name
