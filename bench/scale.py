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
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
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


def operator_pid_in_pod() -> int | None:
    """The deployed operator's process on this host (containers are host processes)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"operator" in argv and any(a.startswith(b"--peering=") for a in argv):
            return int(proc.name)
    return None


@contextlib.contextmanager
def process_operator(
    n: int, work: Path, logs: Path
) -> Iterator[tuple[KubeInfo, MinioInfo, Callable[[], int]]]:
    """A fresh control plane and MinIO, the operator as a process with its RBAC."""
    kube_cluster = KubeCluster(work / f"kube-{n}", logs)
    minio_server = Minio(work / f"minio-{n}", logs)
    proc: subprocess.Popen[bytes] | None = None
    try:
        kube = kube_cluster.start()
        minio = minio_server.start()
        for path in ("crds", "peering.yaml", "namespace.yaml", "rbac.yaml"):
            kubectl(kube, "apply", "--server-side", "-f", str(REPO / "manifests" / path))
        kubectl(kube, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        sa_config = kube.mint_sa_kubeconfig(
            "citus-backup-system", "citus-backup-operator", work / f"operator-{n}.kubeconfig"
        )
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(work),
            "KUBECONFIG": str(sa_config),
            "PYTHONPATH": str(REPO / "operator"),
            "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2"),  # as the image sets it
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
        pid = proc.pid
        yield kube, minio, lambda: pid
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        minio_server.stop()
        kube_cluster.stop()


@contextlib.contextmanager
def deployed_operator(
    work: Path, logs: Path
) -> Iterator[tuple[KubeInfo, MinioInfo, Callable[[], int]]]:
    """The real local node (hack/localenv: kubelet, containerd, the project's image)
    with the operator installed by ``kubectl apply -k manifests/``, as users run it
    (peering on, the Deployment's requests and limits)."""
    from localenv.stack import NodeStack  # noqa: PLC0415 - needs root; only here

    stack = NodeStack(work / "stack", logs, owner="bench/scale.py --deployed")
    try:
        info = stack.start()
        kubectl(info.kube, "apply", "-k", str(REPO / "manifests"))
        kubectl(
            info.kube, "-n", "citus-backup-system", "rollout", "status",
            "deployment/citus-backup-operator", "--timeout=300s",
        )  # fmt: skip
        time.sleep(5)
        pid = operator_pid_in_pod()
        if pid is None:
            raise RuntimeError("the operator pod runs, but its process was not found in /proc")
        yield info.kube, info.minio, lambda: pid
    finally:
        stack.stop()


def run_one(
    n: int,
    buckets: int,
    idle: float,
    timeout: float,
    work: Path,
    *,
    fire: int = 0,
    rounds: int = 0,
    deployed: bool = False,
    settle: float = 0.0,
) -> dict[str, Any]:
    logs = work / f"logs-{n}"
    logs.mkdir(parents=True)
    environment = deployed_operator(work, logs) if deployed else process_operator(n, work, logs)
    with environment as (kube, minio, operator_pid):
        proc_pid = operator_pid()
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
        rss_start = rss_mb(proc_pid)

        def create(i: int) -> None:
            ns = namespaces[i % NAMESPACES]
            body = policy_body(f"p{i:04d}", bucket_names[i % buckets], minio)
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, "citusbackuppolicies", body)

        requests_before = operator_requests(kube)
        cpu_before = cpu_seconds(proc_pid)
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
        converge_requests = operator_requests(kube) - requests_before
        converge_cpu = cpu_seconds(proc_pid) - cpu_before
        # The first periodic pass of every policy (with its catalogue) comes within
        # one interval after the apply: --settle skips it, the window is steady state.
        time.sleep(settle)
        # --- idle window
        rss_idle_start = rss_mb(proc_pid)
        cpu0, req0, t0 = cpu_seconds(proc_pid), operator_requests(kube), time.monotonic()
        time.sleep(idle)
        cpu1, req1, t1 = cpu_seconds(proc_pid), operator_requests(kube), time.monotonic()
        window = t1 - t0
        fired = fire_rounds(api, namespaces, n, fire, rounds) if fire and rounds else {}
        if fired:
            fired["rss_mb_after_fire"] = round(rss_mb(proc_pid), 1)
        return {
            **fired,
            "policies": n,
            "buckets": buckets,
            "created_seconds": round(created, 1),
            "converged": done,
            "converged_seconds": None if seconds is None else round(seconds, 1),
            "timeout_seconds": timeout,
            "converge_api_requests_per_policy": round(converge_requests / n, 1),
            "converge_operator_cpu_seconds": round(converge_cpu, 1),
            "rss_mb_before_policies": round(rss_start, 1),
            "rss_mb_idle_start": round(rss_idle_start, 1),
            "rss_mb_idle_end": round(rss_mb(proc_pid), 1),
            "operator": "Deployment on the local node" if deployed else "process",
            "settle_seconds": settle,
            "idle_seconds": round(window, 1),
            "idle_cpu_share_of_one_core": round((cpu1 - cpu0) / window, 4),
            "api_requests_per_minute_idle": round((req1 - req0) / window * 60, 1),
        }


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of values, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class Seen:
    """Wall-clock time at which a watch first delivered each object (ADDED)."""

    def __init__(self, api: client.ApiClient) -> None:
        self.backups: dict[tuple[str, str], float] = {}  # (namespace, policy) -> time
        self.jobs: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._watch, args=(api, kind), daemon=True)
            for kind in ("backups", "jobs")
        ]

    def __enter__(self) -> Seen:
        for thread in self._threads:
            thread.start()
        time.sleep(1.0)  # both watches established
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()

    def reset(self) -> None:
        self.backups.clear()
        self.jobs.clear()

    def _watch(self, api: client.ApiClient, kind: str) -> None:
        while not self._stop.is_set():
            try:
                self._watch_once(api, kind)
            except Exception:  # the control plane going away at the end, or a dropped stream
                if self._stop.is_set():
                    return
                time.sleep(0.2)

    def _watch_once(self, api: client.ApiClient, kind: str) -> None:
        from kubernetes import watch  # noqa: PLC0415

        if not self._stop.is_set():
            w = watch.Watch()
            if kind == "backups":
                custom = client.CustomObjectsApi(api)
                stream = w.stream(
                    custom.list_cluster_custom_object, GROUP, VERSION, "citusbackups",
                    timeout_seconds=3600,
                )  # fmt: skip
            else:
                stream = w.stream(
                    client.BatchV1Api(api).list_job_for_all_namespaces, timeout_seconds=3600
                )
            for event in stream:
                if self._stop.is_set():
                    w.stop()
                    return
                if event["type"] != "ADDED":
                    continue
                obj = event["object"]
                if kind == "backups":
                    meta = obj["metadata"]
                    key = (meta["namespace"], obj["spec"].get("policyName", ""))
                    target = self.backups
                else:
                    labels = obj.metadata.labels or {}
                    key = (obj.metadata.namespace, labels.get("citusbackup.io/policy", ""))
                    target = self.jobs
                target.setdefault(key, time.time())


def fire_rounds(
    api: client.ApiClient, namespaces: list[str], n: int, fire: int, rounds: int
) -> dict[str, Any]:
    """``rounds`` times: ``fire`` of the loaded policies get a schedule that fires at one
    instant (a minute boundary at least 45 s ahead); measured: when each one's
    CitusBackup and Job appeared (watch), relative to the scheduled instant."""
    custom = client.CustomObjectsApi(api)
    backup_lat: list[float] = []
    job_lat: list[float] = []
    spreads: list[float] = []
    with Seen(api) as seen:
        for r in range(rounds):
            seen.reset()
            now = datetime.now(UTC)
            instant = now.replace(second=0, microsecond=0).timestamp() + 60
            while instant - now.timestamp() < 45:
                instant += 60
            at = datetime.fromtimestamp(instant, UTC)
            chosen = [(r * fire + k) % n for k in range(fire)]
            keys = []
            for i in chosen:
                ns, name = namespaces[i % NAMESPACES], f"p{i:04d}"
                custom.patch_namespaced_custom_object(
                    GROUP, VERSION, ns, "citusbackuppolicies", name,
                    {"spec": {"schedule": f"{at.minute} {at.hour} * * *", "timeZone": "UTC"}},
                )  # fmt: skip
                keys.append((ns, name))
            time.sleep(max(0.0, instant - time.time()) + 20)
            b = [seen.backups[k] - instant for k in keys if k in seen.backups]
            j = [seen.jobs[k] - instant for k in keys if k in seen.jobs]
            print(
                f"scale: fire round {r + 1}: {len(b)}/{fire} backups, {len(j)}/{fire} jobs",
                file=sys.stderr,
                flush=True,
            )
            backup_lat += b
            job_lat += j
            if j:
                spreads.append(max(j))

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {
        "fire_policies_per_round": fire,
        "fire_rounds": rounds,
        "fire_backups_seen": len(backup_lat),
        "fire_jobs_seen": len(job_lat),
        "fire_backup_latency_p50_s": rounded(percentile(backup_lat, 0.5)),
        "fire_backup_latency_p99_s": rounded(percentile(backup_lat, 0.99)),
        "fire_job_latency_p50_s": rounded(percentile(job_lat, 0.5)),
        "fire_job_latency_p99_s": rounded(percentile(job_lat, 0.99)),
        "fire_all_jobs_within_s": rounded(max(spreads) if spreads else None),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| policies | buckets | all Ready + LifecycleInSync | operator RSS idle (start → end) | "
        "idle CPU (share of a core) | API requests/min idle |",
        "|---|---|---|---|---|---|",
    ]
    fired = [r for r in rows if r.get("fire_rounds")]
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
    if fired:
        lines += [
            "",
            "| policies | runs (policies x rounds) | CitusBackup after the instant p50 / p99 | "
            "Job after the instant p50 / p99 | all Jobs of a round within |",
            "|---|---|---|---|---|",
        ]
        for r in fired:
            lines.append(
                f"| {r['policies']} | {r['fire_jobs_seen']} of "
                f"{r['fire_policies_per_round']} x {r['fire_rounds']} | "
                f"{r['fire_backup_latency_p50_s']} / {r['fire_backup_latency_p99_s']} s | "
                f"{r['fire_job_latency_p50_s']} / {r['fire_job_latency_p99_s']} s | "
                f"{r['fire_all_jobs_within_s']} s |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--policies", default="100,1000", help="comma-separated N (default 100,1000)"
    )
    parser.add_argument("--buckets", type=int, default=10)
    parser.add_argument("--idle", type=float, default=300.0, help="idle window, seconds")
    parser.add_argument(
        "--settle",
        type=float,
        default=300.0,
        help="seconds between convergence and the idle window (the first periodic passes)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="convergence limit, seconds")
    parser.add_argument(
        "--fire", type=int, default=50, help="policies whose schedule fires at one instant"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of --fire (0: none)")
    parser.add_argument(
        "--deployed",
        action="store_true",
        help="the operator as a Deployment from manifests/ on the real local node (root)",
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="citus-backup-scale-") as tmp:
        for n in (int(x) for x in args.policies.split(",")):
            print(f"scale: {n} policies ...", file=sys.stderr, flush=True)
            rows.append(
                run_one(
                    n,
                    args.buckets,
                    args.idle,
                    args.timeout,
                    Path(tmp),
                    fire=args.fire,
                    rounds=args.rounds,
                    deployed=args.deployed,
                    settle=args.settle,
                )
            )
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
