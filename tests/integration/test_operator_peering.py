"""Two operator processes against the real API server: kopf's peering elects one.

Both run with ``--peering`` (as the Deployment does), each with a random
priority; the one with the lower priority pauses. Killing the working one
(SIGKILL, as when its node dies) mid-run hands the work to the other once the
dead process's record is older than ``--peering-lifetime``: the running
backup is adopted (its Job is found by name, not created again) and a backup
created during the gap is run, each exactly once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from operator_support import (
    Fixture,
    Objects,
    OperatorProcess,
    install_operator_manifests,
    policy_body,
    rbac_denials,
)

from citus_backup.specs.names import backup_job_name
from harness.local_node import LocalNode
from harness.polling import eventually
from localenv.kube import KubeInfo

#: Seconds after which a silent peer counts as gone (short: the test waits for it).
LIFETIME = 8
RUN_TIMEOUT = 120.0


@pytest.fixture
def peers(
    kube: KubeInfo, tmp_path: Path, log_dir: Path
) -> Iterator[tuple[str, list[OperatorProcess]]]:
    kubeconfig = install_operator_manifests(kube, tmp_path / "operator.kubeconfig")
    name = f"peering-{uuid.uuid4().hex[:6]}"
    processes = []
    for i in (1, 2):
        home = tmp_path / f"home{i}"
        home.mkdir()
        processes.append(
            OperatorProcess(
                kubeconfig,
                log_dir / f"operator-peer{i}.log",
                home,
                peering=[f"--peering={name}", f"--peering-lifetime={LIFETIME}"],
            )
        )
    try:
        yield name, processes
    finally:
        for process in processes:
            process.stop()


def records(kube_api: Any, name: str) -> dict[str, dict[str, Any]]:
    custom = client.CustomObjectsApi(kube_api)
    body = custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", name)
    status: dict[str, dict[str, Any]] = body.get("status") or {}
    return status


def pid_of(identity: str) -> int:
    return int(identity.rsplit("@", 1)[1])


def test_one_replica_works_and_the_other_takes_over_when_it_dies(
    peers: tuple[str, list[OperatorProcess]],
    ns: Objects,
    data: Fixture,
    kube_api: Any,
    local_node: LocalNode,
) -> None:
    name, (first, second) = peers
    first.start()
    eventually(lambda: len(records(kube_api, name)) == 1, "the first peer's record")
    second.start()
    found = eventually(
        lambda: len(r := records(kube_api, name)) == 2 and r, "both peers' records", 60
    )
    by_pid = {p.proc.pid: p for p in (first, second) if p.proc is not None}
    ranked = sorted(found.items(), key=lambda item: item[1]["priority"])
    standby, leader = (by_pid[pid_of(identity)] for identity, _ in ranked)
    # (A process that starts after a higher-priority peer is paused from the
    # start, silently; one that is overtaken logs "Pausing operations".)
    assert "Pausing operations" not in leader.log()

    # --- a backup whose Job the leader creates; its pod does not run yet
    local_node.unserve(ns.namespace)
    ns.create(policy_body("ha", data))
    ns.backup("b1", "ha")
    eventually(lambda: backup_job_name("b1") in ns.jobs(), "the leader to create b1's Job")
    eventually(lambda: ns.status("CitusBackup", "b1").get("jobName"), "b1's status to name its Job")

    # --- the leader dies mid-run; a backup is created while nobody works
    resumed = standby.log().count("Resuming operations")
    leader.kill()
    # A manual backup's id is its creation time (seconds): not in b1's second.
    time.sleep(1.1)
    ns.backup("b2", "ha")
    local_node.serve(ns.namespace)
    eventually(
        lambda: standby.log().count("Resuming operations") > resumed, "the standby to resume", 60
    )
    for backup in ("b1", "b2"):
        status = ns.wait_phase("CitusBackup", backup, ("Succeeded", "Failed"), RUN_TIMEOUT)
        assert status["phase"] == "Succeeded", status
    # Exactly one Job per backup, each created once (one JobCreated Event each).
    jobs = ns.jobs()
    assert sorted(j for j in jobs if j.startswith(("b1-", "b2-"))) == [
        backup_job_name("b1"),
        backup_job_name("b2"),
    ]
    for backup in ("b1", "b2"):
        assert len(ns.has_event(backup, "JobCreated")) == 1, ns.events(backup)
    assert not rbac_denials(standby.log())
    # The dead peer's record is cleaned up by the survivor.
    eventually(lambda: len(records(kube_api, name)) == 1, "the dead peer's record to go", 60)
