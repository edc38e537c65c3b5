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

import dataclasses
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


@dataclass(frozen=True)
class RuleRequest:
    """One policy's wish for a bucket: exactly ``owned`` under its ID prefix."""

    owner_prefix: str
    owned: tuple[Rule, ...]
    #: ``status.lifecycle.rules`` when the status said inSync (drift vs spec change).
    last_synced: tuple[LifecycleRuleSummary, ...] | None = None
    #: Admission order under the rule limit: (creation time, namespace, name).
    order: tuple[str, str, str] = ("", "", "")


class RuleLimitError(PermanentError):
    """The bucket's configuration would exceed :data:`MAX_RULES` with this policy's rules."""


#: Rules one lifecycle configuration may hold (S3's documented limit; MinIO
#: enforces the same). A policy whose rules do not fit is refused (condition
#: LifecycleInSync=False, reason LifecycleRuleLimit); everyone else's rules,
#: and the rules the refused policy already had, stay as they are.
MAX_RULES = 1000


def policy_request(
    policy: CitusBackupPolicy,
    namespace: str | None = None,
    *,
    last_synced: Sequence[LifecycleRuleSummary] | None = None,
) -> RuleRequest:
    """The :class:`RuleRequest` of ``policy`` (pure)."""
    ns = namespace or policy.namespace or ""
    created = policy.metadata.creation_timestamp
    return RuleRequest(
        owner_prefix=owner_id_prefix(ns, policy.name),
        owned=tuple(build_rules(policy, ns)),
        last_synced=None if last_synced is None else tuple(last_synced),
        order=(created.isoformat() if created else "9999", ns, policy.name),
    )


def _plan(
    existing: Sequence[Rule],
    requests: Sequence[RuleRequest],
    max_rules: int,
) -> tuple[list[Rule] | None, dict[str, SyncResult | RuleLimitError]]:
    """The configuration to write for ``requests`` (None: nothing to write) and each
    request's outcome, as if written. Pure.

    Requests already in sync are left alone. The others are admitted oldest
    policy first while the configuration stays within ``max_rules``; a request
    that does not fit keeps whatever rules it had and gets a RuleLimitError.
    """
    outcomes: dict[str, SyncResult | RuleLimitError] = {}
    todo = []
    for req in requests:
        if rules_in_sync(existing, req.owned, req.owner_prefix):
            outcomes[req.owner_prefix] = SyncResult(
                req.owned, True, False, summary=summarize(req.owned)
            )
        else:
            todo.append(req)
    if not todo:
        return None, outcomes
    rules = [dict(r) for r in existing]
    admitted = []
    for req in sorted(todo, key=lambda r: r.order):
        candidate = merge(rules, req.owned, req.owner_prefix)
        if len(candidate) > max_rules:
            outcomes[req.owner_prefix] = RuleLimitError(
                f"the bucket's lifecycle configuration would hold {len(candidate)} rules with "
                f"this policy's {len(req.owned)}, more than the {max_rules} S3 allows: no rules "
                "were written for this policy (its earlier rules, if any, are unchanged); use "
                "another bucket, or remove policies or rules from this one",
                reason=Reason.LIFECYCLE_RULE_LIMIT,
            )
            continue
        rules = candidate
        admitted.append(req)
    for req in admitted:
        summary = summarize(req.owned)
        missing, modified, unexpected = _diff(existing, req.owned, req.owner_prefix)
        outcomes[req.owner_prefix] = SyncResult(
            req.owned,
            False,
            True,
            drift_repaired=req.last_synced is not None and req.last_synced == summary,
            missing=missing,
            modified=modified,
            unexpected=unexpected,
            summary=summary,
        )
    return (rules if admitted else None), outcomes


def _strip_abort(req: RuleRequest) -> RuleRequest:
    return RuleRequest(
        req.owner_prefix, tuple(_without_abort(req.owned)), req.last_synced, req.order
    )


def sync_many(
    store: RuleStore,
    requests: Sequence[RuleRequest],
    *,
    abort_multipart: bool = True,
    max_rules: int = MAX_RULES,
) -> dict[str, SyncResult | RuleLimitError]:
    """Make the bucket hold each request's rules next to everyone else's: one read
    and at most one write for all of them (one PUT per bucket, not per policy).

    ``abort_multipart=False`` leaves out the abort-incomplete-multipart-uploads
    rule: MinIO rejects that action (it aborts stale uploads itself, after 24 h
    by default). When a write including it is refused, the write is retried
    once without it and every result says ``abort_multipart_supported=False``
    (the caller remembers it for the endpoint so that later passes compare
    without it). Outcomes are keyed by ``owner_prefix``.
    """
    if not abort_multipart:
        requests = [_strip_abort(r) for r in requests]
    existing = store.get_rules()
    config, outcomes = _plan(existing, requests, max_rules)
    if config is None:
        return outcomes
    try:
        store.put_rules(config)
        return outcomes
    except PermanentError:
        stripped = [_strip_abort(r) for r in requests]
        if all(len(a.owned) == len(b.owned) for a, b in zip(requests, stripped, strict=True)):
            raise
    config, outcomes = _plan(existing, stripped, max_rules)
    if config is not None:
        store.put_rules(config)
    return {
        key: dataclasses.replace(value, abort_multipart_supported=False)
        if isinstance(value, SyncResult)
        else value
        for key, value in outcomes.items()
    }


def sync_rules(
    store: RuleStore,
    policy: CitusBackupPolicy,
    namespace: str | None = None,
    *,
    last_synced: Sequence[LifecycleRuleSummary] | None = None,
    abort_multipart: bool = True,
    max_rules: int = MAX_RULES,
) -> SyncResult:
    """:func:`sync_many` for one policy (raises its RuleLimitError)."""
    request = policy_request(policy, namespace, last_synced=last_synced)
    outcome = sync_many(store, [request], abort_multipart=abort_multipart, max_rules=max_rules)[
        request.owner_prefix
    ]
    if isinstance(outcome, RuleLimitError):
        raise outcome
    return outcome


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
