"""The kubelet test double (:mod:`harness.local_node`) against the real control plane.

Jobs here are plain ``batch/v1`` Jobs handled by the real Job controller;
only the node is played by the harness. What is checked is what the
operator's tests rely on: Jobs complete or fail with the kubelet's status
fields, Secret env reaches the process (and only the env), a missing Secret
key blocks the pod like a kubelet does, and deletion kills the process.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from harness.local_node import DEFAULT_NODE_NAME, TERMINATION_LOG_ENV, LocalNode
from harness.polling import eventually
from localenv.kube import KubeInfo


def make_job(
    name: str,
    script: str,
    *,
    env: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    mounts: list[dict[str, Any]] | None = None,
    command: list[str] | None = None,
    active_deadline: int | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": "busybox:1.36",
        "command": command or ["sh", "-c", script],
        "env": env or [],
        "volumeMounts": mounts or [],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    spec: dict[str, Any] = {
        "backoffLimit": 0,
        "template": {
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "containers": [container],
                "volumes": volumes or [],
            }
        },
    }
    if active_deadline is not None:
        spec["activeDeadlineSeconds"] = active_deadline
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}


def job_condition(batch: Any, namespace: str, name: str) -> str | None:
    """ "Complete" or "Failed" once the Job controller has decided, else None."""
    job = batch.read_namespaced_job_status(name, namespace)
    for condition in job.status.conditions or []:
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            return str(condition.type)
    return None


def job_pod(core: Any, namespace: str, job: str) -> Any:
    pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
    return pods[0] if pods else None


def finished_pod(core: Any, namespace: str, job: str) -> Any:
    def probe() -> Any:
        pod = job_pod(core, namespace, job)
        return pod if pod is not None and pod.status.phase in ("Succeeded", "Failed") else None

    return eventually(probe, f"a finished pod of job {job}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: it just has not been reaped yet.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for_output(node: LocalNode, namespace: str, pod: str, marker: str) -> str:
    """The pod's output once it contains ``marker``."""

    def probe() -> str:
        text = node.pod_log(namespace, pod)
        return text if marker in text else ""

    return eventually(probe, f"{marker!r} in the output of {pod}")


@pytest.fixture
def core(kube_api: Any) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api)


@pytest.fixture
def batch(kube_api: Any) -> client.BatchV1Api:
    return client.BatchV1Api(kube_api)


# --- the node


def test_node_is_registered_ready_with_a_lease_and_no_taints(
    local_node: LocalNode, core: Any, kube_api: Any
) -> None:
    node = core.read_node(DEFAULT_NODE_NAME)
    ready = {c.type: c.status for c in node.status.conditions}["Ready"]
    assert ready == "True"
    # The node-lifecycle controller may taint a new node not-ready for a moment.
    eventually(lambda: not core.read_node(DEFAULT_NODE_NAME).spec.taints, "no taints")
    lease = client.CoordinationV1Api(kube_api).read_namespaced_lease(
        DEFAULT_NODE_NAME, "kube-node-lease"
    )
    assert lease.spec is not None
    assert lease.spec.holder_identity == DEFAULT_NODE_NAME
    assert node.metadata.annotations["citusbackup.io/test-double"].startswith("kubelet")


# --- jobs


def test_succeeding_job_completes_through_the_real_job_controller(
    local_node: LocalNode,
    local_node_namespace: str,
    core: Any,
    batch: Any,
) -> None:
    ns = local_node_namespace
    batch.create_namespaced_job(ns, make_job("hello", "echo hi; exit 0"))
    eventually(lambda: job_condition(batch, ns, "hello") == "Complete", "job hello to complete")
    assert batch.read_namespaced_job_status("hello", ns).status.succeeded == 1
    pod = finished_pod(core, ns, "hello")
    assert pod.spec.node_name == DEFAULT_NODE_NAME
    assert pod.status.phase == "Succeeded"
    assert pod.status.start_time is not None
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert terminated.started_at is not None
    assert terminated.finished_at >= terminated.started_at
    assert local_node.pod_log(ns, pod.metadata.name) == "hi\n"


def test_failing_job_reports_exit_code_and_falls_back_to_the_log_tail(
    local_node: LocalNode,
    local_node_namespace: str,
    core: Any,
    batch: Any,
) -> None:
    ns = local_node_namespace
    script = "for i in $(seq 1 200); do echo line $i; done; echo 'fatal: it broke' >&2; exit 3"
    batch.create_namespaced_job(ns, make_job("broken", script))
    eventually(lambda: job_condition(batch, ns, "broken") == "Failed", "job broken to fail")
    pod = finished_pod(core, ns, "broken")
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    # The kubelet's fallback: the last 80 lines of the output, at most 2 KiB.
    lines = terminated.message.splitlines()
    assert lines[-1] == "fatal: it broke"
    assert lines[0].startswith("line ")
    assert len(lines) <= 80
    assert len(terminated.message.encode()) <= 2048


def test_termination_log_secret_volume_and_private_tmp_as_the_operator_jobs_use_them(
    local_node: LocalNode,
    local_node_namespace: str,
    core: Any,
    batch: Any,
) -> None:
    ns = local_node_namespace
    ca = "-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n"
    core.create_namespaced_secret(
        ns,
        {
            "metadata": {"name": "s3-ca"},
            "data": {"tls.crt": base64.b64encode(ca.encode()).decode()},
        },
    )
    # The same shape as specs/jobs.py: HOME=/tmp on an emptyDir, a CA file
    # from a Secret under /etc/citus-backup, the message at /dev/termination-log.
    script = (
        'cat "$S3_CA_FILE"; test "$HOME" = "$TMPDIR"; touch "$HOME/scratch" /tmp/other; '
        'test -f "$TMPDIR/other"; stat -c %a /etc/citus-backup/s3-ca/ca.crt; '
        f'printf \'{{"result":"ok"}}\' > "${TERMINATION_LOG_ENV}"'
    )
    job = make_job(
        "shaped",
        script,
        env=[
            {"name": "HOME", "value": "/tmp"},
            {"name": "S3_CA_FILE", "value": "/etc/citus-backup/s3-ca/ca.crt"},
        ],
        volumes=[
            {"name": "tmp", "emptyDir": {}},
            {
                "name": "s3-ca",
                "secret": {
                    "secretName": "s3-ca",
                    "items": [{"key": "tls.crt", "path": "ca.crt"}],
                    "defaultMode": 0o444,
                },
            },
        ],
        mounts=[
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "s3-ca", "mountPath": "/etc/citus-backup/s3-ca", "readOnly": True},
        ],
    )
    batch.create_namespaced_job(ns, job)
    pod = finished_pod(core, ns, "shaped")
    output = local_node.pod_log(ns, pod.metadata.name)
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0, output
    assert terminated.message == '{"result":"ok"}'
    assert output == ca + "444\n"


def test_termination_message_path_in_args_is_the_same_per_pod_file(
    local_node: LocalNode,
    local_node_namespace: str,
    core: Any,
    batch: Any,
) -> None:
    ns = local_node_namespace
    batch.create_namespaced_job(ns, make_job("msg", "echo written > /dev/termination-log"))
    pod = finished_pod(core, ns, "msg")
    assert pod.status.container_statuses[0].state.terminated.message == "written\n"


def test_secret_env_reaches_the_process_but_not_its_args(
    local_node: LocalNode,
    local_node_namespace: str,
    core: Any,
    batch: Any,
) -> None:
    ns = local_node_namespace
    secret = f"pw-{uuid.uuid4().hex}"
    core.create_namespaced_secret(
        ns, {"metadata": {"name": "db"}, "stringData": {"password": secret}}
    )
    # The process proves it has the value without printing it: its hash, and
    # its own command line, which must not contain it.
    script = 'printf %s "$PGPASSWORD" | sha256sum; tr "\\0" " " < /proc/$$$$/cmdline; echo'
    env = [
        {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    batch.create_namespaced_job(ns, make_job("secret-env", script, env=env))
    pod = finished_pod(core, ns, "secret-env")
    assert pod.status.phase == "Succeeded"
    output = local_node.pod_log(ns, pod.metadata.name)
    digest, cmdline = output.splitlines()
    assert digest.split()[0] == hashlib.sha256(secret.encode()).hexdigest()
    assert "sh -c" in cmdline
    assert secret not in output
    assert secret not in json.dumps(core.api_client.sanitize_for_serialization(pod))


def test_missing_secret_key_is_create_container_config_error_until_it_exists(
    local_node: LocalNode,
    local_node_namespace: str,
    core: Any,
    batch: Any,
) -> None:
    ns = local_node_namespace
    core.create_namespaced_secret(ns, {"metadata": {"name": "db"}, "stringData": {"user": "u"}})
    env = [{"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]
    batch.create_namespaced_job(ns, make_job("no-key", 'echo "got $PGPASSWORD"', env=env))

    def waiting() -> Any:
        pod = job_pod(core, ns, "no-key")
        statuses = pod.status.container_statuses if pod is not None else None
        return statuses[0].state.waiting if statuses and statuses[0].state.waiting else None

    def config_error() -> Any:
        state = waiting()
        return state if state is not None and state.reason == "CreateContainerConfigError" else None

    state = eventually(config_error, "CreateContainerConfigError")
    assert state.message == f"couldn't find key password in Secret {ns}/db"
    pod = job_pod(core, ns, "no-key")
    assert pod.status.phase == "Pending"
    assert local_node.pid_of(ns, pod.metadata.name) is None

    # Like a kubelet, the harness retries: once the key exists the pod runs.
    core.patch_namespaced_secret("db", ns, {"stringData": {"password": "late"}})
    pod = finished_pod(core, ns, "no-key")
    assert pod.status.phase == "Succeeded"
    assert local_node.pod_log(ns, pod.metadata.name) == "got late\n"


def test_missing_secret_is_reported_with_the_kubelet_message(
    local_node_namespace: str, core: Any, batch: Any
) -> None:
    ns = local_node_namespace
    env = [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]
    batch.create_namespaced_job(ns, make_job("no-secret", "true", env=env))

    def message() -> str | None:
        pod = job_pod(core, ns, "no-secret")
        statuses = pod.status.container_statuses if pod is not None else None
        waiting = statuses[0].state.waiting if statuses else None
        if waiting is None or waiting.reason != "CreateContainerConfigError":
            return None
        return str(waiting.message)

    assert eventually(message, "CreateContainerConfigError") == 'secret "absent" not found'


def test_deleting_the_pod_kills_its_process_group(
    local_node: LocalNode,
    local_node_namespace: str,
    core: Any,
    batch: Any,
) -> None:
    ns = local_node_namespace
    # `$$$$`: the kubelet's $(VAR) expansion turns `$$` into `$`.
    script = "sleep 300 & echo child=$!; echo pid=$$$$; wait"
    batch.create_namespaced_job(ns, make_job("sleeper", script))

    def running() -> Any:
        pod = job_pod(core, ns, "sleeper")
        return pod if pod is not None and pod.status.phase == "Running" else None

    name = eventually(running, "the sleeper pod to run").metadata.name
    output = wait_for_output(local_node, ns, name, "pid=")
    pids = {k: int(v) for k, v in (line.split("=") for line in output.splitlines())}
    assert local_node.pid_of(ns, name) == pids["pid"]
    assert alive(pids["pid"])
    assert alive(pids["child"])

    core.delete_namespaced_pod(name, ns)
    eventually(lambda: not alive(pids["pid"]) and not alive(pids["child"]), "the processes to die")

    def gone() -> bool:
        try:
            core.read_namespaced_pod(name, ns)
        except ApiException as exc:
            return bool(exc.status == 404)
        return False

    # The harness reports the kill and confirms the deletion as a kubelet does,
    # so the pod goes away and the Job controller, seeing it failed, fails the Job.
    eventually(gone, "the pod to be removed")
    eventually(lambda: job_condition(batch, ns, "sleeper") == "Failed", "job sleeper to fail")


def test_active_deadline_kills_the_process_through_the_job_controller(
    local_node: LocalNode,
    local_node_namespace: str,
    core: Any,
    batch: Any,
) -> None:
    ns = local_node_namespace
    batch.create_namespaced_job(
        ns, make_job("slow", "echo pid=$$$$; exec sleep 300", active_deadline=2)
    )
    pod = eventually(lambda: job_pod(core, ns, "slow"), "the slow pod")
    output = wait_for_output(local_node, ns, pod.metadata.name, "pid=")
    pid = int(output.strip().split("=")[1])
    eventually(lambda: job_condition(batch, ns, "slow") == "Failed", "job slow to fail")
    job = batch.read_namespaced_job_status("slow", ns)
    reasons = {c.reason for c in job.status.conditions}
    # The controller marks the Job DeadlineExceeded and deletes its pod. If that
    # status write loses a race (a 409 on "adding uncounted pods", seen in
    # CI-like runs), its next sync finds the pod already Failed and checks the
    # backoff limit first: BackoffLimitExceeded, for the same deadline kill
    # (the pod's `sleep 300` cannot end on its own within this test).
    assert reasons & {"DeadlineExceeded", "BackoffLimitExceeded"}, reasons
    eventually(lambda: not alive(pid), "the process to die")


def test_the_venv_console_script_is_on_path(
    local_node: LocalNode,
    local_node_namespace: str,
    core: Any,
    batch: Any,
) -> None:
    ns = local_node_namespace
    job = make_job("cli", "", command=["citus-backup", "--version"])
    batch.create_namespaced_job(ns, job)
    pod = finished_pod(core, ns, "cli")
    output = local_node.pod_log(ns, pod.metadata.name)
    assert pod.status.phase == "Succeeded", output
    assert output.startswith("citus-backup ")


def test_unknown_executable_fails_like_a_start_error(
    local_node_namespace: str, core: Any, batch: Any
) -> None:
    ns = local_node_namespace
    batch.create_namespaced_job(ns, make_job("nope", "", command=["no-such-binary-here"]))

    def waiting_reason() -> str | None:
        pod = job_pod(core, ns, "nope")
        statuses = pod.status.container_statuses if pod is not None else None
        waiting = statuses[0].state.waiting if statuses else None
        return str(waiting.reason) if waiting is not None and waiting.message else None

    assert eventually(waiting_reason, "a waiting reason") == "RunContainerError"


def test_pods_outside_served_namespaces_stay_unbound(
    local_node: LocalNode, kube_namespace: str, core: Any, batch: Any
) -> None:
    batch.create_namespaced_job(kube_namespace, make_job("ignored", "true"))
    pod = eventually(lambda: job_pod(core, kube_namespace, "ignored"), "the pod")
    time.sleep(2)
    pod = core.read_namespaced_pod(pod.metadata.name, kube_namespace)
    assert pod.spec.node_name is None
    assert pod.status.phase == "Pending"


def test_stop_kills_running_pods_and_leaves_nothing(
    kube: KubeInfo,
    kube_namespace: str,
    core: Any,
    batch: Any,
    tmp_path: Path,
) -> None:
    node = LocalNode(
        kube, tmp_path / "node", tmp_path / "logs", name="stop-test", namespaces=[kube_namespace]
    )
    with node:
        batch.create_namespaced_job(
            kube_namespace, make_job("long", "echo pid=$$$$; exec sleep 300")
        )
        pod = eventually(lambda: job_pod(core, kube_namespace, "long"), "the pod")
        output = wait_for_output(node, kube_namespace, pod.metadata.name, "pid=")
        pid = int(output.strip().split("=")[1])
        assert alive(pid)
    assert not alive(pid)
    assert node.leftovers() == []
    eventually(
        lambda: "stop-test" not in [n.metadata.name for n in core.list_node().items],
        "the node object to be deleted",
    )
