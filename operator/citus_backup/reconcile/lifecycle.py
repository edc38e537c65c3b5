"""Keep a bucket's lifecycle rules equal to what each policy's retention asks for.

Why here and not in the runner: lifecycle rules are bucket-wide state shared
by every policy (and by whatever else uses the bucket); the operator is the
one long-lived actor that can own them, repair hand edits, and remove them
when a policy goes. The rules themselves are computed purely by
:mod:`citus_backup.specs.lifecycle`; this module does the read-merge-write
against a :class:`RuleStore` (the real one is
:class:`citus_backup.clients.s3.BucketClient`, tests pass a fake or real MinIO):

1. compute the rules the policy owns (IDs ``citusbackup.<ns>.<policy>.*``);
2. read the bucket's configuration; if this owner's rules already equal the
   desired ones, write nothing (``inSync``);
3. otherwise merge — foreign rules kept as they are, this owner's replaced —
   and write; an empty result deletes the configuration (S3 rejects an empty
   ``Rules``). Lifecycle configuration writes are read-modify-write on a
   shared document with no precondition in S3: two writers racing can lose an
   update, which the next periodic pass repairs (it re-reads every time).

*Drift* is reported when what we wrote last time (``status.lifecycle.rules``)
still is what the policy wants, yet the bucket differs: someone edited or
deleted a rule by hand. The controller turns that into an Event.

Overlap: two policies whose prefixes overlap in one bucket of one endpoint
would fight over the same keys; the policy created later gets no rules (and
the controller sets LifecycleInSync=False, reason PrefixOverlap).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from citus_backup.api.common import ConditionType, Reason, make_condition, set_condition
from citus_backup.api.policy import CitusBackupPolicy, LifecycleRuleSummary
from citus_backup.errors import PermanentError
from citus_backup.specs.lifecycle import (
    Rule,
    build_rules,
    is_owned,
    merge,
    owner_id_prefix,
    policies_overlap,
    rules_in_sync,
    summarize,
)


class RuleStore(Protocol):
    """A bucket's lifecycle configuration in the S3 API's JSON shape."""

    def get_rules(self) -> list[Rule]:
        """The rules (``[]`` when the bucket has no configuration)."""

    def put_rules(self, rules: Sequence[Mapping[str, Any]]) -> None:
        """Replace the configuration; ``[]`` deletes it."""


@dataclass(frozen=True)
class SyncResult:
    """The outcome of one :func:`sync_rules`."""

    #: The rules the policy owns (now in the bucket).
    owned: tuple[Rule, ...]
    #: Whether the bucket already matched (nothing written).
    was_in_sync: bool
    #: Whether the configuration was written (or deleted).
    written: bool
    #: A hand edit/deletion of this policy's rules was undone.
    drift_repaired: bool = False
    #: IDs of owned rules that were missing / different / unwanted before the write.
    missing: tuple[str, ...] = ()
    modified: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    summary: tuple[LifecycleRuleSummary, ...] = field(default=())
    #: False when the store refused the abort-incomplete-multipart-uploads rule
    #: (MinIO) and the rules were written without it; None when not tried.
    abort_multipart_supported: bool | None = None

    def drift_message(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"deleted: {', '.join(self.missing)}")
        if self.modified:
            parts.append(f"edited: {', '.join(self.modified)}")
        if self.unexpected:
            parts.append(f"unexpected: {', '.join(self.unexpected)}")
        return "lifecycle rules changed outside the operator were restored (" + (
            "; ".join(parts) + ")"
        )


def _by_id(rules: Iterable[Mapping[str, Any]], prefix: str) -> dict[str, Mapping[str, Any]]:
    return {str(r.get("ID")): r for r in rules if is_owned(r, prefix)}


def _diff(
    existing: Sequence[Mapping[str, Any]], owned: Sequence[Mapping[str, Any]], prefix: str
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    current, desired = _by_id(existing, prefix), _by_id(owned, prefix)
    missing = tuple(sorted(set(desired) - set(current)))
    unexpected = tuple(sorted(set(current) - set(desired)))
    modified = tuple(
        sorted(
            rule_id
            for rule_id in set(current) & set(desired)
            if not rules_in_sync([current[rule_id]], [desired[rule_id]], prefix)
        )
    )
    return missing, modified, unexpected


def _without_abort(rules: Sequence[Rule]) -> list[Rule]:
    return [r for r in rules if "AbortIncompleteMultipartUpload" not in r]


def sync_rules(
    store: RuleStore,
    policy: CitusBackupPolicy,
    namespace: str | None = None,
    *,
    last_synced: Sequence[LifecycleRuleSummary] | None = None,
    abort_multipart: bool = True,
) -> SyncResult:
    """Make the bucket hold exactly ``policy``'s rules next to everyone else's.

    ``last_synced``: ``status.lifecycle.rules`` when the status said inSync
    (used only to tell drift from a spec change). ``abort_multipart=False``
    leaves out the abort-incomplete-multipart-uploads rule: MinIO rejects that
    action (it aborts stale uploads itself, after 24 h by default). When a
    write including it is refused, the write is retried once without it and
    the result says ``abort_multipart_supported=False`` (the caller remembers
    it for the endpoint so that later passes compare without it).
    """
    ns = namespace or policy.namespace or ""
    prefix = owner_id_prefix(ns, policy.name)
    owned = build_rules(policy, ns)
    if not abort_multipart:
        owned = _without_abort(owned)
    existing = store.get_rules()
    if rules_in_sync(existing, owned, prefix):
        return SyncResult(
            tuple(owned), True, False, summary=summarize(owned), abort_multipart_supported=None
        )
    supported: bool | None = None
    try:
        store.put_rules(merge(existing, owned, prefix))
    except PermanentError:
        if len(_without_abort(owned)) == len(owned):
            raise
        owned = _without_abort(owned)
        supported = False
        if rules_in_sync(existing, owned, prefix):  # e.g. first pass after an operator restart
            return SyncResult(
                tuple(owned), True, False, summary=summarize(owned), abort_multipart_supported=False
            )
        store.put_rules(merge(existing, owned, prefix))
    summary = summarize(owned)
    missing, modified, unexpected = _diff(existing, owned, prefix)
    drift = last_synced is not None and tuple(last_synced) == summary
    return SyncResult(
        tuple(owned),
        False,
        True,
        drift_repaired=drift,
        missing=missing,
        modified=modified,
        unexpected=unexpected,
        summary=summary,
        abort_multipart_supported=supported,
    )


def remove_rules(store: RuleStore, namespace: str, policy_name: str) -> bool:
    """Remove every rule the policy owns, nothing else; whether anything was written."""
    prefix = owner_id_prefix(namespace, policy_name)
    existing = store.get_rules()
    if not any(is_owned(rule, prefix) for rule in existing):
        return False
    store.put_rules(merge(existing, [], prefix))
    return True


def overlapping_policy(
    policy: CitusBackupPolicy, others: Iterable[CitusBackupPolicy]
) -> CitusBackupPolicy | None:
    """An older policy (creation time, then namespace/name) whose prefix overlaps ``policy``'s.

    The older one keeps its rules; the newer one is refused, so adding a
    conflicting policy never changes what an existing one expires.
    """

    def key(p: CitusBackupPolicy) -> tuple[str, str, str]:
        created = p.metadata.creation_timestamp
        return (created.isoformat() if created else "9999", p.namespace or "", p.name)

    mine = key(policy)
    for other in sorted(others, key=key):
        if (other.namespace, other.name) == (policy.namespace, policy.name):
            continue
        if other.metadata.deletion_timestamp is not None:
            continue
        if key(other) < mine and policies_overlap(policy, other):
            return other
    return None


def overlap_message(policy: CitusBackupPolicy, other: CitusBackupPolicy) -> str:
    storage = policy.spec.storage
    return (
        f"prefix {storage.prefix!r} in bucket {storage.bucket} overlaps prefix "
        f"{other.spec.storage.prefix!r} of CitusBackupPolicy {other.namespace}/{other.name} "
        "(created earlier): no lifecycle rules are written for this policy; use a prefix that "
        "is not a folder of the other (e.g. citus/a and citus/b)"
    )


def lifecycle_status(
    policy: CitusBackupPolicy,
    *,
    in_sync: bool,
    summary: Sequence[LifecycleRuleSummary],
    reason: Reason,
    message: str,
    now: datetime,
) -> dict[str, Any]:
    """The status patch this controller owns: ``lifecycle`` and the LifecycleInSync condition."""
    condition = make_condition(
        ConditionType.LIFECYCLE_IN_SYNC,
        in_sync,
        reason,
        message,
        now=now,
        observed_generation=policy.metadata.generation,
    )
    conditions = set_condition(policy.status.conditions, condition)
    return {
        "lifecycle": {
            "rules": [s.to_dict() for s in summary],
            "inSync": in_sync,
            "lastSyncTime": now.isoformat().replace("+00:00", "Z"),
        },
        "conditions": [c.to_dict() for c in conditions],
    }
