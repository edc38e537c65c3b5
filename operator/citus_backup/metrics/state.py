"""What the metrics say, computed from the objects the operator watches (pure).

Why derived from objects, not counted in the reconcilers: the CitusBackup
catalogue already holds every fact a dashboard needs (completion times,
sizes, results, verification), it survives operator restarts, and it is the
same whichever replica reads it. So the gauges are a function of the latest
state of each watched object, like kube-state-metrics, and a restart of the
operator changes no gauge.

The two counters (backups and restores by result) count what *finished while
this process ran*: an object counts once, when it is first seen terminal with
a completion time at or after the process started. Counting the whole
catalogue at start-up would make every restart look like a burst of
backups to ``increase()``; counting nothing would lose the runs that end
while the operator is down (their gauges still move).

Memory is bounded by the number of objects, and each keeps only a few
fields (no bodies). Labels are namespace, policy and, for sizes, database:
no per-backup label, so cardinality is that of the policies.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from citus_backup.specs.schedule import next_fire_time

#: Prefix of every metric name (Prometheus: one namespace per exporter).
PREFIX = "citus_backup"
#: Results a counter is labelled with (the terminal phases, lower case).
RESULTS = ("succeeded", "failed")


def parse_time(value: Any) -> float | None:
    """Seconds since the epoch of an RFC 3339 string, or ``None``."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for condition in status.get("conditions") or ():
        if isinstance(condition, Mapping) and condition.get("type") == type_:
            return condition
    return None


def _true(condition: Mapping[str, Any] | None) -> bool | None:
    if condition is None or condition.get("status") not in ("True", "False"):
        return None
    return condition.get("status") == "True"


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class PolicyFacts:
    namespace: str
    name: str
    created: float | None
    suspended: bool
    ready: bool | None
    lifecycle_in_sync: bool | None
    next_run: float | None
    #: Seconds between two scheduled runs (from the cron and time zone), if known.
    interval: float | None
    #: Seconds between two verifications, if the policy verifies (its schedule, or
    #: N schedule intervals for everyNthBackup: N).
    verification_interval: float | None


@dataclass(frozen=True)
class BackupFacts:
    namespace: str
    name: str
    policy: str
    phase: str | None
    started: float | None
    completed: float | None
    size: int | None
    databases: tuple[tuple[str, int], ...]
    restorable: bool | None
    #: Verified condition: True/False when a verification ended, None otherwise.
    verified: bool | None
    verified_time: float | None


@dataclass(frozen=True)
class RestoreFacts:
    namespace: str
    name: str
    backup: str | None
    phase: str | None
    completed: float | None
    verification: bool


def schedule_interval(schedule: Any, time_zone: Any, now: float) -> float | None:
    """Seconds between the next two fire times of a cron (None if it does not parse)."""
    if not isinstance(schedule, str) or not schedule:
        return None
    return _interval(schedule, str(time_zone or "UTC"), int(now // _DAY))


#: Seconds in a day: the interval of a schedule is cached per day (DST shifts it).
_DAY = 86400


@functools.lru_cache(maxsize=1024)
def _interval(schedule: str, time_zone: str, day: int) -> float | None:
    try:
        start = datetime.fromtimestamp(day * _DAY, UTC)
        first = next_fire_time(schedule, time_zone, start)
        second = next_fire_time(schedule, time_zone, first)
    except (ValueError, KeyError):
        return None
    return (second - first).total_seconds()


def policy_facts(body: Mapping[str, Any], now: float) -> PolicyFacts:
    meta, spec, status = _parts(body)
    verification = spec.get("verification") or {}
    interval = schedule_interval(spec.get("schedule"), spec.get("timeZone"), now)
    verification_interval = schedule_interval(
        verification.get("schedule"), spec.get("timeZone"), now
    )
    nth = verification.get("everyNthBackup")
    if verification_interval is None and isinstance(nth, int) and interval is not None:
        # Verified after every Nth backup: one verification per N schedule intervals.
        verification_interval = interval * nth
    in_sync = _true(_condition(status, "LifecycleInSync"))
    return PolicyFacts(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        created=parse_time(meta.get("creationTimestamp")),
        suspended=bool(spec.get("suspend")),
        ready=_true(_condition(status, "Ready")),
        lifecycle_in_sync=in_sync,
        next_run=parse_time(status.get("nextScheduleTime")),
        interval=interval,
        verification_interval=verification_interval,
    )


def backup_facts(body: Mapping[str, Any]) -> BackupFacts:
    meta, spec, status = _parts(body)
    databases = status.get("databases") or {}
    size = status.get("totalSizeBytes")
    verified = _condition(status, "Verified")
    return BackupFacts(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        policy=str(spec.get("policyName") or ""),
        phase=status.get("phase"),
        started=parse_time(status.get("startTime")),
        completed=parse_time(status.get("completionTime")),
        size=int(size) if isinstance(size, int) else None,
        databases=tuple(
            sorted((str(k), int(v)) for k, v in databases.items() if isinstance(v, int))
        ),
        restorable=_true(_condition(status, "Restorable")),
        verified=_true(verified),
        verified_time=parse_time(verified.get("lastTransitionTime")) if verified else None,
    )


def restore_facts(body: Mapping[str, Any]) -> RestoreFacts:
    meta, spec, status = _parts(body)
    return RestoreFacts(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        backup=status.get("backupName") or spec.get("backupName"),
        phase=status.get("phase"),
        completed=parse_time(status.get("completionTime")),
        verification=bool(spec.get("verify")),
    )


def _parts(
    body: Mapping[str, Any],
) -> tuple[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]]:
    return body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}


# --------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class Family:
    """One metric family: name (without prefix), type, help, label names, samples."""

    name: str
    type: str  # "gauge" | "counter"
    help: str
    labels: tuple[str, ...]
    samples: tuple[tuple[tuple[str, ...], float], ...]

    @property
    def full_name(self) -> str:
        return f"{PREFIX}_{self.name}"


Key = tuple[str, str]


@dataclass
class State:
    """The latest facts of every watched object, and the two counters.

    Not thread-safe by itself: the exporter holds a lock around
    :meth:`observe`/:meth:`forget` and :meth:`families`.
    """

    #: When this process started (counters count what finished from then on).
    started: float
    policies: dict[Key, PolicyFacts] = field(default_factory=dict)
    backups: dict[Key, BackupFacts] = field(default_factory=dict)
    restores: dict[Key, RestoreFacts] = field(default_factory=dict)
    backup_results: dict[tuple[str, str, str], int] = field(default_factory=dict)
    restore_results: dict[tuple[str, str], int] = field(default_factory=dict)
    _counted: set[tuple[str, str, str]] = field(default_factory=set)

    def observe(self, facts: PolicyFacts | BackupFacts | RestoreFacts) -> None:
        key = (facts.namespace, facts.name)
        if isinstance(facts, PolicyFacts):
            self.policies[key] = facts
        elif isinstance(facts, BackupFacts):
            self.backups[key] = facts
            if self._finished_now("b", facts.namespace, facts.name, facts.phase, facts.completed):
                key3 = (facts.namespace, facts.policy, str(facts.phase).lower())
                self.backup_results[key3] = self.backup_results.get(key3, 0) + 1
        else:
            self.restores[key] = facts
            if self._finished_now("r", facts.namespace, facts.name, facts.phase, facts.completed):
                result = (facts.namespace, str(facts.phase).lower())
                self.restore_results[result] = self.restore_results.get(result, 0) + 1

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """An object was deleted: its gauges go; counters keep what they counted."""
        if kind == "policy":
            self.policies.pop((namespace, name), None)
        elif kind == "backup":
            self.backups.pop((namespace, name), None)
        else:
            self.restores.pop((namespace, name), None)
        self._counted.discard(({"backup": "b", "restore": "r"}.get(kind, "p"), namespace, name))

    def _finished_now(
        self, kind: str, namespace: str, name: str, phase: str | None, completed: float | None
    ) -> bool:
        if phase not in ("Succeeded", "Failed") or completed is None:
            return False
        key = (kind, namespace, name)
        if key in self._counted:
            return False
        self._counted.add(key)
        # One second of slack: completionTime has second precision.
        return completed >= self.started - 1

    # ----------------------------------------------------------------- families

    def families(self) -> list[Family]:
        per_policy = _PerPolicy()
        for backup in self.backups.values():
            per_policy.add_backup(backup)
        for facts in self.policies.values():
            per_policy.add_policy(facts)
        families = per_policy.families()
        families.append(
            Family(
                "backups_total",
                "counter",
                "Backups that finished while this operator process ran, by result.",
                ("namespace", "policy", "result"),
                tuple(
                    ((ns, p, r), float(n)) for (ns, p, r), n in sorted(self.backup_results.items())
                ),
            )
        )
        families.append(
            Family(
                "restores_total",
                "counter",
                "Restores (verification restores included) that finished while this operator "
                "process ran, by result.",
                ("namespace", "result"),
                tuple(((ns, r), float(n)) for (ns, r), n in sorted(self.restore_results.items())),
            )
        )
        running = sum(1 for r in self.restores.values() if r.phase not in ("Succeeded", "Failed"))
        families.append(
            Family(
                "restores_active",
                "gauge",
                "Restores not finished yet.",
                (),
                (((), float(running)),),
            )
        )
        return families


@dataclass
class _Latest:
    success: BackupFacts | None = None
    failure: BackupFacts | None = None
    oldest_restorable: float | None = None
    restorable: int = 0
    running: int = 0
    verified: BackupFacts | None = None


class _PerPolicy:
    """Accumulates per-(namespace, policy) values from the backups, then the families."""

    def __init__(self) -> None:
        self.latest: dict[Key, _Latest] = {}
        self.policies: list[PolicyFacts] = []

    def add_backup(self, b: BackupFacts) -> None:
        latest = self.latest.setdefault((b.namespace, b.policy), _Latest())
        if b.phase in (None, "Pending", "Running"):
            latest.running += 1
            return
        if b.completed is None:
            return
        if b.phase == "Succeeded":
            if latest.success is None or b.completed > (latest.success.completed or 0):
                latest.success = b
            if b.restorable is not False:
                latest.restorable += 1
                if latest.oldest_restorable is None or b.completed < latest.oldest_restorable:
                    latest.oldest_restorable = b.completed
        elif b.phase == "Failed" and (
            latest.failure is None or b.completed > (latest.failure.completed or 0)
        ):
            latest.failure = b
        newer = latest.verified is None or (b.verified_time or 0) > (
            latest.verified.verified_time or 0
        )
        if b.verified is not None and b.verified_time is not None and newer:
            latest.verified = b

    def add_policy(self, p: PolicyFacts) -> None:
        self.policies.append(p)
        self.latest.setdefault((p.namespace, p.name), _Latest())

    def families(self) -> list[Family]:  # noqa: PLR0912 - one branch per optional gauge
        out: dict[str, list[tuple[tuple[str, ...], float]]] = {
            name: [] for name in _POLICY_FAMILIES
        }
        for p in sorted(self.policies, key=lambda f: (f.namespace, f.name)):
            labels = (p.namespace, p.name)
            out["policy_info_suspended"].append((labels, float(p.suspended)))
            if p.created is not None:
                out["policy_created_timestamp_seconds"].append((labels, p.created))
            if p.ready is not None:
                out["policy_ready"].append((labels, float(p.ready)))
            if p.lifecycle_in_sync is not None:
                out["lifecycle_in_sync"].append((labels, float(p.lifecycle_in_sync)))
            if p.next_run is not None:
                out["next_run_timestamp_seconds"].append((labels, p.next_run))
            if p.interval is not None:
                out["schedule_interval_seconds"].append((labels, p.interval))
            if p.verification_interval is not None:
                out["verification_interval_seconds"].append((labels, p.verification_interval))
        for (namespace, policy), latest in sorted(self.latest.items()):
            labels = (namespace, policy)
            out["backups_running"].append((labels, float(latest.running)))
            out["restorable_backups"].append((labels, float(latest.restorable)))
            if latest.oldest_restorable is not None:
                out["oldest_restorable_timestamp_seconds"].append(
                    (labels, latest.oldest_restorable)
                )
            success = latest.success
            if success is not None and success.completed is not None:
                out["last_success_timestamp_seconds"].append((labels, success.completed))
                if success.started is not None:
                    duration = max(0.0, success.completed - success.started)
                    out["last_duration_seconds"].append((labels, duration))
                if success.size is not None:
                    out["last_size_bytes"].append((labels, float(success.size)))
                for database, size in success.databases:
                    out["last_database_size_bytes"].append(((*labels, database), float(size)))
            failure = latest.failure
            if failure is not None and failure.completed is not None:
                out["last_failure_timestamp_seconds"].append((labels, failure.completed))
            verified = latest.verified
            if verified is not None and verified.verified_time is not None:
                out["last_verification_timestamp_seconds"].append((labels, verified.verified_time))
                out["last_verification_success"].append((labels, float(bool(verified.verified))))
        return [
            Family(name, "gauge", help_, labels, tuple(out[name]))
            for name, (help_, labels) in _POLICY_FAMILIES.items()
        ]


_NP = ("namespace", "policy")
#: name -> (help, label names); the README's metrics table lists the same.
_POLICY_FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "last_success_timestamp_seconds": ("Completion time of the newest successful backup.", _NP),
    "last_failure_timestamp_seconds": ("Completion time of the newest failed backup.", _NP),
    "last_duration_seconds": (
        "Duration (start to completion) of the newest successful backup.",
        _NP,
    ),
    "last_size_bytes": ("Stored size of the newest successful backup.", _NP),
    "last_database_size_bytes": (
        "Stored size of one database in the newest successful backup.",
        (*_NP, "database"),
    ),
    "oldest_restorable_timestamp_seconds": (
        "Completion time of the oldest successful backup still restorable.",
        _NP,
    ),
    "restorable_backups": ("Successful backups whose data is still in the bucket.", _NP),
    "backups_running": ("Backups of the policy not finished yet (0 or 1).", _NP),
    "last_verification_timestamp_seconds": ("When the newest verification ended.", _NP),
    "last_verification_success": ("1 if the newest verification passed, 0 if it failed.", _NP),
    "lifecycle_in_sync": ("1 if the bucket's lifecycle rules match the retention, else 0.", _NP),
    "policy_ready": ("1 if the policy is Ready (spec, Secrets, storage), else 0.", _NP),
    "policy_info_suspended": ("1 if the policy's schedule is suspended, else 0.", _NP),
    "policy_created_timestamp_seconds": ("When the policy was created.", _NP),
    "next_run_timestamp_seconds": (
        "Next scheduled run of the policy (absent when suspended).",
        _NP,
    ),
    "schedule_interval_seconds": (
        "Seconds between two scheduled runs of the policy (from its cron and time zone).",
        _NP,
    ),
    "verification_interval_seconds": (
        "Seconds between two verifications of the policy's backups (verification.schedule, "
        "or everyNthBackup times the schedule interval); absent without verification.",
        _NP,
    ),
}


def family_names() -> Iterator[str]:
    """Every metric name the operator exports (documentation and tests)."""
    for name in _POLICY_FAMILIES:
        yield f"{PREFIX}_{name}"
    yield f"{PREFIX}_backups_total"
    yield f"{PREFIX}_restores_total"
    yield f"{PREFIX}_restores_active"
