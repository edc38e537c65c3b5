"""The operator at scale (issue #12): N policies over B buckets, nothing due.

For each N (side by side in one run): a fresh control plane (etcd,
kube-apiserver, kube-controller-manager) and MinIO from ``hack/localenv``,
the operator as a process with its ServiceAccount's RBAC (as the integration
tier runs it; the Deployment runs the same command), then one burst of N
policies created at once (schedule ``0 3 1 1 *``: no run is due during the
benchmark), spread over B buckets and 10 namespaces. Measured:

* convergence: seconds from the first create until every policy has
  ``Ready=True`` and ``LifecycleInSync=True`` (or the timeout);
* idle, over ``--idle`` seconds after convergence: the operator's CPU
  (utime+stime from /proc, as a share of one core), RSS at the start and the
  end of the window, and API requests per minute by the operator (the
  apiserver's ``apiserver_request_total`` for the resources the operator
  uses, minus the same window's requests by everything else being zero:
  nothing else touches them).

Usage: ``bench/run-scale.sh`` or ``.venv/bin/python bench/scale.py --policies 100,1000``.
Results: ``bench/results/scale-<time>.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "hack"))
sys.path.insert(0, str(REPO / "operator"))

from kubernetes import client, config  # noqa: E402
from minio import Minio as MinioClient  # noqa: E402

from localenv.kube import KubeCluster, KubeInfo  # noqa: E402
from localenv.minio import Minio, MinioInfo  # noqa: E402
from localenv.process import free_port  # noqa: E402

GROUP, VERSION = "citusbackup.io", "v1alpha1"
NAMESPACES = 10
#: Resources whose requests are the operator's (nothing else in the benchmark uses them).
OPERATOR_RESOURCES = {
    "citusbackuppolicies",
    "citusbackups",
    "citusrestores",
    "secrets",
    "jobs",
    "pods",
    "events",
    "configmaps",
    "clusterkopfpeerings",
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def kubectl(kube: KubeInfo, *args: str) -> None:
    subprocess.run(
        [str(kube.kubectl), f"--kubeconfig={kube.kubeconfig}", *args],
        check=True,
        capture_output=True,
        text=True,
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def operator_requests(kube: KubeInfo) -> float:
    """Sum of apiserver_request_total for the operator's resources."""
    context = kube.admin_context()
    import urllib.request  # noqa: PLC0415

    with urllib.request.urlopen(kube.server + "/metrics", context=context, timeout=30) as r:  # noqa: S310
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, value = line.rsplit(" ", 1)
        resource = next(
            (p.split('"')[1] for p in labels.split(",") if p.startswith("resource=")), ""
        )
        if resource in OPERATOR_RESOURCES:
            total += float(value)
    return total


def policy_body(name: str, bucket: str, minio: MinioInfo) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CitusBackupPolicy",
        "metadata": {"name": name},
        "spec": {
            "schedule": "0 3 1 1 *",
            "coordinator": {
                "host": "coordinator.invalid",
                "passwordSecretRef": {"name": "pg", "key": "password"},
            },
            "storage": {
                "endpoint": minio.endpoint,
                "secure": False,
                "bucket": bucket,
                "prefix": name,
                "accessKeyIdSecretRef": {"name": "s3", "key": "accessKeyId"},
                "secretAccessKeySecretRef": {"name": "s3", "key": "secretAccessKey"},
            },
        },
    }


def converged(custom: client.CustomObjectsApi, namespaces: list[str], n: int) -> int:
    done = 0
    for ns in namespaces:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, "citusbackuppolicies")
        for item in items["items"]:
            conditions = {
                c["type"]: c["status"] for c in item.get("status", {}).get("conditions", [])
            }
            if conditions.get("Ready") == "True" and conditions.get("LifecycleInSync") == "True":
                done += 1
    return done


def run_one(  # noqa: PLR0915 - one linear measurement
    n: int, buckets: int, idle: float, timeout: float, work: Path
) -> dict[str, Any]:
    logs = work / f"logs-{n}"
    logs.mkdir(parents=True)
    kube_cluster = KubeCluster(work / f"kube-{n}", logs)
    minio_server = Minio(work / f"minio-{n}", logs)
    kube = kube_cluster.start()
    minio = minio_server.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        for path in ("crds", "peering.yaml", "namespace.yaml", "rbac.yaml"):
            kubectl(kube, "apply", "--server-side", "-f", str(REPO / "manifests" / path))
        kubectl(kube, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        sa_config = kube.mint_sa_kubeconfig(
            "citus-backup-system", "citus-backup-operator", work / f"operator-{n}.kubeconfig"
        )
        api = config.new_client_from_config(config_file=str(kube.kubeconfig))
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        s3 = MinioClient(minio.endpoint, minio.access_key, minio.secret_key, secure=False)
        bucket_names = [f"bench-{i:02d}" for i in range(buckets)]
        for bucket in bucket_names:
            s3.make_bucket(bucket)
        namespaces = [f"scale-{i:02d}" for i in range(NAMESPACES)]
        for ns in namespaces:
            core.create_namespace({"metadata": {"name": ns}})
            core.create_namespaced_secret(
                ns, {"metadata": {"name": "pg"}, "stringData": {"password": "unused"}}
            )
            core.create_namespaced_secret(
                ns,
                {
                    "metadata": {"name": "s3"},
                    "stringData": {
                        "accessKeyId": minio.access_key,
                        "secretAccessKey": minio.secret_key,
                    },
                },
            )
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(work),
            "KUBECONFIG": str(sa_config),
            "PYTHONPATH": str(REPO / "operator"),
        }
        metrics_port = free_port()
        with (logs / "operator.log").open("wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable, "-m", "citus_backup.cli", "operator", "-A", "--standalone",
                    f"--metrics-port={metrics_port}", "--metrics-address=127.0.0.1",
                ],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip
        time.sleep(5)  # the operator's start-up (imports, first listing)
        rss_start = rss_mb(proc.pid)

        def create(i: int) -> None:
            ns = namespaces[i % NAMESPACES]
            body = policy_body(f"p{i:04d}", bucket_names[i % buckets], minio)
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, "citusbackuppolicies", body)

        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(create, range(n)))
        created = time.monotonic() - started
        done, seconds = 0, None
        while time.monotonic() - started < timeout:
            done = converged(custom, namespaces, n)
            if done == n:
                seconds = time.monotonic() - started
                break
            time.sleep(2)
        # --- idle window
        rss_idle_start = rss_mb(proc.pid)
        cpu0, req0, t0 = cpu_seconds(proc.pid), operator_requests(kube), time.monotonic()
        time.sleep(idle)
        cpu1, req1, t1 = cpu_seconds(proc.pid), operator_requests(kube), time.monotonic()
        window = t1 - t0
        return {
            "policies": n,
            "buckets": buckets,
            "created_seconds": round(created, 1),
            "converged": done,
            "converged_seconds": None if seconds is None else round(seconds, 1),
            "timeout_seconds": timeout,
            "rss_mb_before_policies": round(rss_start, 1),
            "rss_mb_idle_start": round(rss_idle_start, 1),
            "rss_mb_idle_end": round(rss_mb(proc.pid), 1),
            "idle_seconds": round(window, 1),
            "idle_cpu_share_of_one_core": round((cpu1 - cpu0) / window, 4),
            "api_requests_per_minute_idle": round((req1 - req0) / window * 60, 1),
        }
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        minio_server.stop()
        kube_cluster.stop()


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| policies | buckets | all Ready + LifecycleInSync | operator RSS idle (start → end) | "
        "idle CPU (share of a core) | API requests/min idle |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        conv = (
            f"{r['converged_seconds']} s"
            if r["converged_seconds"] is not None
            else f"{r['converged']}/{r['policies']} after {r['timeout_seconds']:.0f} s"
        )
        lines.append(
            f"| {r['policies']} | {r['buckets']} | {conv} | {r['rss_mb_idle_start']} → "
            f"{r['rss_mb_idle_end']} MB | {r['idle_cpu_share_of_one_core'] * 100:.1f} % | "
            f"{r['api_requests_per_minute_idle']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--policies", default="100,1000", help="comma-separated N (default 100,1000)"
    )
    parser.add_argument("--buckets", type=int, default=10)
    parser.add_argument("--idle", type=float, default=300.0, help="idle window, seconds")
    parser.add_argument("--timeout", type=float, default=600.0, help="convergence limit, seconds")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="citus-backup-scale-") as tmp:
        for n in (int(x) for x in args.policies.split(",")):
            print(f"scale: {n} policies ...", file=sys.stderr, flush=True)
            rows.append(run_one(n, args.buckets, args.idle, args.timeout, Path(tmp)))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    out = REPO / "bench" / "results" / f"scale-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(
        json.dumps({"machine": os.uname().nodename, "cpus": os.cpu_count(), "rows": rows}, indent=2)
    )
    print(table(rows))
    print(f"\n(results: {out.relative_to(REPO)})")
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
