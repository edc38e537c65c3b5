"""In-memory fakes of the reconcilers' ports (tests/unit/test_reconcile_*.py).

:class:`FakeCluster` behaves like the API server as far as the reconcilers can
tell: objects get a uid, creationTimestamp and generation, creates of an
existing name return ``False`` (409), status patches are JSON merge patches.
Jobs are stored as built; their state is set by the test (:meth:`finish_job`).
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes.client import ApiClient, V1Job

from citus_backup.api.policy import PostgresConnection
from citus_backup.errors import TransientError
from citus_backup.reconcile.common import Deps
from citus_backup.reconcile.ports import JobState, Kind

T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
PASSWORD = "s3cr3t-pg-password"
SECRET_KEY = "s3cr3t-minio-key"


def merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@dataclass
class FakeCluster:
    clock: Clock
    objects: dict[tuple[Kind, str, str], dict[str, Any]] = field(default_factory=dict)
    secrets: dict[tuple[str, str], dict[str, bytes]] = field(default_factory=dict)
    config_maps: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    jobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    job_states: dict[tuple[str, str], JobState] = field(default_factory=dict)
    status_patches: int = 0
    fail_next: list[Exception] = field(default_factory=list)

    def _maybe_fail(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)

    # --- Cluster protocol

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        self._maybe_fail()
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, kind: Kind, namespace: str) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(o)
            for (k, ns, _), o in sorted(self.objects.items())
            if (k, ns) == (kind, namespace)
        ]

    def create(self, kind: Kind, namespace: str, body: Mapping[str, Any]) -> bool:
        self._maybe_fail()
        name = body["metadata"]["name"]
        if (kind, namespace, name) in self.objects:
            return False
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        meta.update(
            namespace=namespace,
            uid=str(uuid.uuid4()),
            generation=1,
            creationTimestamp=self.clock().strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        self.objects[(kind, namespace, name)] = obj
        return True

    def patch_status(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        *,
        resource_version: str | None = None,
    ) -> None:
        self._maybe_fail()
        obj = self.objects[(kind, namespace, name)]
        current = obj.get("metadata", {}).get("resourceVersion")
        if resource_version and current and resource_version != current:
            raise TransientError("changed meanwhile", reason="Conflict", delay=1.0)
        # What the API server does: JSON round trip (datetimes must already be strings).
        merge(obj.setdefault("status", {}), json.loads(json.dumps(dict(status))))
        self.status_patches += 1

    def secret_data(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        return self.secrets.get((namespace, name))

    def config_map_keys(self, namespace: str, name: str) -> Sequence[str] | None:
        return self.config_maps.get((namespace, name))

    def create_job(self, job: V1Job) -> bool:
        assert job.metadata is not None
        key = (str(job.metadata.namespace), str(job.metadata.name))
        if key in self.jobs:
            return False
        self.jobs[key] = ApiClient().sanitize_for_serialization(job)
        self.job_states[key] = JobState(name=key[1])
        return True

    def job_state(self, namespace: str, name: str) -> JobState | None:
        return self.job_states.get((namespace, name))

    # --- test helpers

    def add(self, kind: Kind, body: dict[str, Any], namespace: str = "ns") -> None:
        body.setdefault("metadata", {})["namespace"] = namespace
        assert self.create(kind, namespace, body)

    def obj(self, kind: Kind, name: str, namespace: str = "ns") -> dict[str, Any]:
        return self.objects[(kind, namespace, name)]

    def status(self, kind: Kind, name: str, namespace: str = "ns") -> dict[str, Any]:
        status: dict[str, Any] = self.obj(kind, name, namespace).get("status", {})
        return status

    def condition(self, kind: Kind, name: str, type_: str) -> dict[str, Any] | None:
        for condition in self.status(kind, name).get("conditions", []):
            if condition["type"] == type_:
                result: dict[str, Any] = condition
                return result
        return None

    def set_job(self, name: str, namespace: str = "ns", **state: Any) -> None:
        self.job_states[(namespace, name)] = JobState(name=name, **state)

    def finish_job(
        self, name: str, summary: dict[str, Any] | None, *, ok: bool = True, namespace: str = "ns"
    ) -> None:
        message = json.dumps(summary) if summary is not None else None
        self.set_job(
            name,
            namespace,
            complete=ok,
            failed=not ok,
            failure_reason=None if ok else "BackoffLimitExceeded",
            failure_message=None if ok else "Job has reached the specified backoff limit",
            start_time=self.clock() - timedelta(seconds=30),
            completion_time=self.clock(),
            termination_message=message,
        )

    def add_secrets(self, namespace: str = "ns") -> None:
        self.secrets[(namespace, "pg")] = {"password": PASSWORD.encode()}
        self.secrets[(namespace, "s3")] = {
            "accessKeyId": b"minio",
            "secretAccessKey": SECRET_KEY.encode(),
        }


@dataclass
class FakeEvents:
    events: list[tuple[str, str, str, str]] = field(default_factory=list)

    def emit(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((body["metadata"]["name"], type_, reason, message))

    def reasons(self, name: str | None = None) -> list[str]:
        return [r for n, _, r, _ in self.events if name is None or n == name]


@dataclass
class FakeProbe:
    existing: set[str] = field(default_factory=set)
    error: Exception | None = None
    calls: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    #: application_name of the server's sessions (progress beacons).
    sessions: list[str] = field(default_factory=list)

    def existing_databases(
        self, connection: PostgresConnection, password: str, names: Sequence[str]
    ) -> set[str]:
        self.calls.append((connection.host, password, tuple(names)))
        if self.error is not None:
            raise self.error
        return self.existing & set(names)

    def application_names(
        self, connection: PostgresConnection, password: str, prefix: str
    ) -> list[str]:
        return [name for name in self.sessions if name.startswith(prefix)]


@dataclass
class World:
    clock: Clock
    cluster: FakeCluster
    events: FakeEvents
    probe: FakeProbe
    deps: Deps


def world(now: datetime = T0) -> World:
    clock = Clock(now)
    cluster = FakeCluster(clock)
    events = FakeEvents()
    probe = FakeProbe()
    deps = Deps(cluster=cluster, events=events, image="img:test", probe=probe, clock=clock)
    deps.poll_seconds = 5.0
    return World(clock, cluster, events, probe, deps)


def policy(name: str = "main", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "citusbackup.io/v1alpha1",
        "kind": "CitusBackupPolicy",
        "metadata": {"name": name},
        "spec": {
            "schedule": "0 3 * * *",
            "timeZone": "UTC",
            "coordinator": {
                "host": "coordinator",
                "passwordSecretRef": {"name": "pg", "key": "password"},
                "includeDatabases": ["app1", "app2"],
            },
            "storage": {
                "endpoint": "minio:9000",
                "secure": False,
                "bucket": "backups",
                "prefix": name,
                "accessKeyIdSecretRef": {"name": "s3", "key": "accessKeyId"},
                "secretAccessKeySecretRef": {"name": "s3", "key": "secretAccessKey"},
            },
        },
    }
    body["spec"].update(spec)
    return body


def backup(name: str, policy_name: str = "main", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "citusbackup.io/v1alpha1",
        "kind": "CitusBackup",
        "metadata": {"name": name},
        "spec": {"policyName": policy_name, **spec},
    }


def restore(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "citusbackup.io/v1alpha1",
        "kind": "CitusRestore",
        "metadata": {"name": name},
        "spec": spec,
    }


def succeeded_summary(backup_id: str = "20261127T020000Z") -> dict[str, Any]:
    return {
        "status": "succeeded",
        "command": "backup",
        "backupId": backup_id,
        "location": f"s3://backups/main/daily/{backup_id}/",
        "tiers": ["daily"],
        "databases": {"app1": 2048, "app2": 1024},
        "totalSize": 3072,
        "error": None,
        "reason": None,
    }


def no_transient() -> TransientError:
    return TransientError("API down", reason="ApiUnavailable", delay=3)
