"""The operator's wiring: CLI, kopf registration, the Kubernetes client's error mapping
and Job reading, and the manifests (CRD copies, least-privilege RBAC, restricted Deployment).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from kubernetes.client import (
    V1ContainerState,
    V1ContainerStateTerminated,
    V1ContainerStatus,
    V1Job,
    V1JobCondition,
    V1JobStatus,
    V1ObjectMeta,
    V1Pod,
    V1PodStatus,
)
from kubernetes.client.exceptions import ApiException
from reconcile_fakes import policy, world

from citus_backup import operator_main
from citus_backup.clients.kube import AlreadyExistsError, NotFoundError, convert, job_state_of
from citus_backup.controllers import register, unfinished
from citus_backup.errors import PermanentError, TransientError
from citus_backup.reconcile.jobs import Progress, outcome, parse_summary
from citus_backup.reconcile.ports import JobState, Kind

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --------------------------------------------------------------------------- CLI, kopf


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    operator_main.register(parser.add_subparsers())
    return parser.parse_args(["operator", *argv])


def test_cli_scope_is_required_and_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("--all-namespaces", "--standalone")
    assert (args.all_namespaces, args.standalone, args.image) == (
        True,
        True,
        "citus-backup-operator:dev",
    )
    assert parse("-n", "a", "-n", "b").namespaces == ["a", "b"]
    for argv in ((), ("-A", "-n", "a")):
        with pytest.raises(SystemExit):
            parse(*argv)
    capsys.readouterr()


def test_policies_have_a_daemon_and_backup_timers_stop_when_finished() -> None:
    registry = kopf.OperatorRegistry()
    register(registry, world().deps, schedule_interval=7)
    handlers = list(registry._spawning.get_all_handlers())
    assert sorted(str(h.id) for h in handlers) == ["backup", "restore", "schedule"]
    intervals = {str(h.id): getattr(h, "interval", None) for h in handlers}
    assert intervals == {"schedule": None, "backup": 5.0, "restore": 5.0}  # a daemon: no tick
    watching = sorted(str(h.id) for h in registry._watching.get_all_handlers())
    assert "schedule-wake" in watching
    assert registry._changing.get_all_handlers() == []  # no change handlers, no diffbase
    assert unfinished(status={})
    assert unfinished(status={"phase": "Running"})
    assert not unfinished(status={"phase": "Succeeded"})
    assert not unfinished(status={"phase": "Failed"})


def test_a_policy_daemon_sleeps_until_due_woken_or_stopped() -> None:
    import asyncio  # noqa: PLC0415
    import time  # noqa: PLC0415

    from citus_backup.controllers import _sleep, _wake_event  # noqa: PLC0415

    class Stopped:
        def __init__(self) -> None:
            self.flag = asyncio.Event()

        async def wait(self) -> None:
            await self.flag.wait()

    async def scenario() -> list[float]:
        memo = kopf.Memo()
        wake = _wake_event(memo)
        assert _wake_event(memo) is wake  # one per object
        stopped = Stopped()
        took = []
        start = time.monotonic()
        await _sleep(0.05, wake, stopped)  # type: ignore[arg-type]
        took.append(time.monotonic() - start)
        asyncio.get_running_loop().call_later(0.02, wake.set)
        start = time.monotonic()
        await _sleep(30, wake, stopped)  # type: ignore[arg-type]
        took.append(time.monotonic() - start)
        wake.clear()
        asyncio.get_running_loop().call_later(0.02, stopped.flag.set)
        start = time.monotonic()
        await _sleep(30, wake, stopped)  # type: ignore[arg-type]
        took.append(time.monotonic() - start)
        return took

    timeout, woken, stopped = asyncio.run(scenario())
    assert 0.04 < timeout < 5
    assert woken < 5
    assert stopped < 5


def test_a_policy_daemon_runs_the_periodic_pass_with_the_catalogue_every_nth_time() -> None:
    import asyncio  # noqa: PLC0415

    w = world()
    w.cluster.add(Kind.POLICY, policy("main"))

    class Periodic:
        interval = 0.05

        def __init__(self) -> None:
            self.calls: list[bool] = []

        def periodic(
            self, name: str, namespace: str, body: Mapping[str, Any], *, catalogue: bool
        ) -> None:
            assert (name, namespace, body["metadata"]["name"]) == ("main", "ns", "main")
            self.calls.append(catalogue)

    periodic = Periodic()
    registry = kopf.OperatorRegistry()
    register(registry, w.deps, schedule_interval=0.05, periodic=periodic, catalogue_every=3)
    daemon = next(h for h in registry._spawning.get_all_handlers() if str(h.id) == "schedule")

    class Stopped:
        def __init__(self) -> None:
            self.flag = asyncio.Event()

        def __bool__(self) -> bool:
            return self.flag.is_set()

        async def wait(self) -> None:
            await self.flag.wait()

    async def scenario() -> None:
        stopped = Stopped()
        asyncio.get_running_loop().call_later(1.0, stopped.flag.set)
        body = w.cluster.get(Kind.POLICY, "ns", "main")
        await daemon.fn(  # type: ignore[misc]
            name="main", namespace="ns", stopped=stopped, memo=kopf.Memo(), body=body
        )

    asyncio.run(scenario())
    assert len(periodic.calls) >= 4
    assert periodic.calls[:4] == [True, False, False, True]


def test_kopf_runs_a_bounded_pool_of_workers() -> None:
    settings = kopf.OperatorSettings()
    operator_main.configure(settings, verbose=False)
    assert settings.queueing.worker_limit == operator_main.QUEUE_WORKERS
    assert settings.queueing.idle_timeout < 1


def test_kopf_bookkeeping_uses_the_project_prefix() -> None:
    settings = kopf.OperatorSettings()
    operator_main.configure(settings, verbose=False)
    assert settings.persistence.finalizer == "citusbackup.io/operator"


def test_a_deleted_object_does_not_wait_a_minute_for_its_timer() -> None:
    """kopf re-checks a deleted object's mid-call timer every 60 s by default:
    a policy deleted during a scheduler tick then kept its finalizer a minute."""
    settings = kopf.OperatorSettings()
    operator_main.configure(settings, verbose=False)
    assert settings.background.cancellation_polling <= 5
    assert settings.background.instant_exit_timeout is not None
    assert 0 < settings.background.instant_exit_timeout <= 5


# --------------------------------------------------------------------------- Kubernetes client


@pytest.mark.parametrize(
    ("status", "error", "reason"),
    [
        (404, NotFoundError, "NotFound"),
        (409, AlreadyExistsError, "Conflict"),
        (403, PermanentError, "Forbidden"),
        (422, PermanentError, "ApiError"),
        (429, TransientError, "ApiUnavailable"),
        (500, TransientError, "ApiUnavailable"),
        (503, TransientError, "ApiUnavailable"),
    ],
)
def test_api_errors_become_project_errors(status: int, error: type[Exception], reason: str) -> None:
    exc = ApiException(status=status, reason="Reason")
    exc.body = json.dumps({"message": f"the API says {status}"})
    converted = convert(exc, "create Job ns/x")
    assert type(converted) is error
    assert converted.reason == reason
    assert str(converted) == f"create Job ns/x: HTTP {status}: the API says {status}"


def test_retry_after_sets_the_delay() -> None:
    exc = ApiException(status=429)
    exc.headers = {"Retry-After": "7"}
    converted = convert(exc, "list")
    assert isinstance(converted, TransientError)
    assert converted.delay == 7


def pod(message: str | None, finished: datetime, phase: str = "Failed") -> V1Pod:
    terminated = V1ContainerStateTerminated(exit_code=1, message=message, finished_at=finished)
    return V1Pod(
        status=V1PodStatus(
            phase=phase,
            container_statuses=[
                V1ContainerStatus(
                    name="backup",
                    image="i",
                    image_id="",
                    ready=False,
                    restart_count=0,
                    state=V1ContainerState(terminated=terminated),
                )
            ],
        )
    )


def test_job_state_takes_the_latest_termination_message() -> None:
    job = V1Job(
        metadata=V1ObjectMeta(name="b-backup"),
        status=V1JobStatus(
            conditions=[
                V1JobCondition(type="FailureTarget", status="True"),
                V1JobCondition(
                    type="Failed", status="True", reason="BackoffLimitExceeded", message="limit"
                ),
            ]
        ),
    )
    state = job_state_of(
        job,
        [
            pod('{"status":"failed","error":"second"}', datetime(2026, 1, 1, 0, 2, tzinfo=UTC)),
            pod('{"status":"failed","error":"first"}', datetime(2026, 1, 1, 0, 1, tzinfo=UTC)),
        ],
    )
    assert (state.name, state.failed, state.complete, state.running) == (
        "b-backup",
        True,
        False,
        False,
    )
    assert state.failure_reason == "BackoffLimitExceeded"
    assert state.termination_message == '{"status":"failed","error":"second"}'


def test_a_running_pod_means_running() -> None:
    job = V1Job(metadata=V1ObjectMeta(name="j"), status=V1JobStatus(active=1))
    assert job_state_of(job, [V1Pod(status=V1PodStatus(phase="Running"))]).running
    assert not job_state_of(job, [V1Pod(status=V1PodStatus(phase="Pending"))]).running


def test_the_summary_is_found_in_a_log_tail() -> None:
    tail = 'INFO something\nERROR boom\n{"status":"failed","error":"boom","reason":"X"}\n'
    assert parse_summary(tail)["reason"] == "X"
    assert parse_summary("no json here") == {}
    assert parse_summary(None) == {}
    failed = outcome(
        JobState(
            name="j",
            failed=True,
            failure_reason="BackoffLimitExceeded",
            failure_message="limit",
            termination_message="Traceback: x",
        )
    )
    assert failed.progress is Progress.FAILED
    assert failed.reason == "BackoffLimitExceeded"
    assert failed.message == "limit; last output: Traceback: x"


# --------------------------------------------------------------------------- manifests


def test_manifest_crds_are_the_generated_crds() -> None:
    generated = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    copied = sorted(p.name for p in (MANIFESTS / "crds").glob("*.yaml"))
    assert copied == generated
    for name in generated:
        assert (MANIFESTS / "crds" / name).read_text() == (REPO / "crds" / name).read_text(), (
            f"manifests/crds/{name} is stale: run `citus-backup crds --output manifests/crds`"
        )


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    optional = ("samples", "components", "overlays")  # not part of `kubectl apply -k manifests/`
    present = {
        str(p.relative_to(MANIFESTS))
        for p in MANIFESTS.rglob("*.yaml")
        if p.name != "kustomization.yaml" and not set(optional) & set(p.parts)
    }
    assert listed == present
    component_dir = MANIFESTS / "components" / "prometheus"
    component = yaml.safe_load((component_dir / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    assert set(component["resources"]) == {
        p.name for p in component_dir.glob("*.yaml") if p.name != "kustomization.yaml"
    }


def test_rbac_is_least_privilege() -> None:
    docs = {d["kind"]: d for d in load_all(MANIFESTS / "rbac.yaml")}
    rules = docs["ClusterRole"]["rules"]
    granted = {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert not [g for g in granted if "*" in g]
    assert not [g for g in granted if g[2] in ("delete", "deletecollection", "update")]
    assert ("", "secrets", "get") in granted
    assert not [g for g in granted if g[1] == "secrets" and g[2] != "get"]
    assert ("citusbackup.io", "citusbackups", "create") in granted
    # Verifications are CitusRestores the operator creates (reconcile.verification).
    assert ("citusbackup.io", "citusrestores", "create") in granted
    assert ("citusbackup.io", "citusbackuppolicies", "create") not in granted
    assert ("batch", "jobs", "create") in granted
    subject = docs["ClusterRoleBinding"]["subjects"][0]
    assert (subject["name"], subject["namespace"]) == (
        docs["ServiceAccount"]["metadata"]["name"],
        docs["ServiceAccount"]["metadata"]["namespace"],
    )


def test_deployment_is_restricted_and_probed() -> None:
    (deployment,) = load_all(MANIFESTS / "deployment.yaml")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    # Rolling updates overlap two pods: peering lets one of them work.
    assert spec["strategy"]["type"] == "RollingUpdate"
    pod_spec = spec["template"]["spec"]
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = pod_spec["containers"]
    assert container["image"] == "citus-backup-operator:dev"
    assert container["args"][:3] == [
        "operator",
        "--all-namespaces",
        "--peering=citus-backup-operator",
    ]
    liveness = next(a for a in container["args"] if a.startswith("--liveness="))
    assert liveness.endswith(":8080" + container["livenessProbe"]["httpGet"]["path"])
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    args = parse(*container["args"][1:])  # the Deployment's arguments parse
    assert args.liveness == "http://0.0.0.0:8080/healthz"


def test_secret_reads_are_reused_for_a_while_and_a_missing_secret_is_not() -> None:
    from kubernetes.client import ApiClient, V1Secret  # noqa: PLC0415

    from citus_backup.clients.kube import KubeCluster  # noqa: PLC0415

    now = [0.0]
    cluster = KubeCluster(ApiClient(), secret_ttl=15.0, clock=lambda: now[0])

    class Core:
        def __init__(self) -> None:
            self.reads = 0
            self.exists = True

        def read_namespaced_secret(self, name: str, namespace: str, **_: Any) -> V1Secret:
            self.reads += 1
            if not self.exists:
                raise ApiException(status=404, reason="Not Found")
            return V1Secret(data={"password": "c2VjcmV0"})

    core = Core()
    cluster._core = core  # type: ignore[assignment]
    assert cluster.secret_data("ns", "pg") == {"password": b"secret"}
    now[0] = 14.0
    assert cluster.secret_data("ns", "pg") == {"password": b"secret"}
    assert core.reads == 1
    now[0] = 15.0
    core.exists = False
    assert cluster.secret_data("ns", "pg") is None
    assert cluster.secret_data("ns", "pg") is None
    assert core.reads == 3  # absence is asked again each time
    core.exists = True
    assert cluster.secret_data("ns", "pg") == {"password": b"secret"}
    assert core.reads == 4


def test_freed_memory_is_given_back_periodically() -> None:
    scheduled: list[tuple[float, Any]] = []

    class Loop:
        def call_later(self, seconds: float, callback: Any) -> None:
            scheduled.append((seconds, callback))

    operator_main._trim_memory_every(Loop(), 60.0)
    assert [s for s, _ in scheduled] == [60.0]
    scheduled[0][1]()  # the tick trims (glibc here) and schedules the next one
    assert [s for s, _ in scheduled] == [60.0, 60.0]
