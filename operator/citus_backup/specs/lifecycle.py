"""Bucket lifecycle rules derived from a policy's retention (the pure part of issue #5).

For each enabled tier with ``keepDays`` there is one expiration rule::

    {"ID": "citusbackup.<namespace>.<policy>.<tier>",
     "Status": "Enabled",
     "Filter": {"And": {"Prefix": "<prefix>/<tier>/",
                        "Tags": [{"Key": "citusbackup.io/expirable", "Value": "true"}]}},
     "Expiration": {"Days": <keepDays>}}

The tag is set on every object a backup writes and *removed* from the newest
successful backup, so the rules never expire the last good backup (an
``And`` filter needs both the prefix and the tag). A ``forever`` tier has no
rule; a tier that is absent has no rule and no data. One more rule aborts
incomplete multipart uploads under ``<prefix>/`` after one day (S3 does not
allow tag filters on that action).

Rules are returned in the JSON shape of the S3 API (PutBucketLifecycleConfiguration
/ ``aws s3api``): ``{"Rules": [...]}``.

A bucket has one lifecycle configuration shared by everything in it, so
:func:`merge` replaces only the rules this policy owns (IDs starting with
:func:`owner_id_prefix`) and keeps every other rule untouched. Policy names
are DNS labels and namespaces have no dots, so ``citusbackup.<ns>.<policy>.``
never is a prefix of another policy's IDs. An empty merged list means the
configuration must be deleted (S3 rejects an empty ``Rules``).

Versioned buckets: an expiration only adds a delete marker; noncurrent
versions are left to the bucket owner's own rules.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from citus_backup.api.common import GROUP
from citus_backup.api.policy import CitusBackupPolicy, LifecycleRuleSummary, Tier

#: Object tag that makes an object eligible for expiration.
EXPIRABLE_TAG_KEY = f"{GROUP}/expirable"
EXPIRABLE_TAG_VALUE = "true"
ABORT_MULTIPART_DAYS = 1
ABORT_MULTIPART_SUFFIX = "abort-incomplete-multipart-uploads"
RULE_ID_PREFIX = "citusbackup"
MAX_RULE_ID_LENGTH = 255

Rule = dict[str, Any]


def owner_id_prefix(namespace: str, policy_name: str) -> str:
    """``citusbackup.<namespace>.<policy>.``: every rule ID a policy owns starts with it."""
    if not namespace or not policy_name:
        raise ValueError("namespace and policy name are required for lifecycle rule IDs")
    return f"{RULE_ID_PREFIX}.{namespace}.{policy_name}."


def rule_id(namespace: str, policy_name: str, suffix: str) -> str:
    value = owner_id_prefix(namespace, policy_name) + suffix
    if len(value) > MAX_RULE_ID_LENGTH:  # 63 + 63 + fixed parts: cannot happen
        raise ValueError(f"lifecycle rule ID longer than {MAX_RULE_ID_LENGTH}: {value}")
    return value


def policy_prefix(prefix: str) -> str:
    """``<prefix>/``: everything of a policy lives below it."""
    return prefix.strip("/") + "/"


def tier_prefix(prefix: str, tier: Tier | str) -> str:
    """``<prefix>/<tier>/``: the backups of one tier."""
    return f"{policy_prefix(prefix)}{tier}/"


def build_rules(policy: CitusBackupPolicy, namespace: str | None = None) -> list[Rule]:
    """The rules ``policy`` owns, tiers first (most frequent first), then the multipart rule.

    ``namespace`` defaults to the policy's own (required for IDs).
    """
    ns = namespace or policy.namespace
    if not ns:
        raise ValueError("the policy has no namespace: pass namespace=")
    spec = policy.spec
    rules: list[Rule] = []
    for tier, days in spec.retention.tier_days().items():
        if days is None:  # forever: nothing expires
            continue
        rules.append(
            {
                "ID": rule_id(ns, policy.name, str(tier)),
                "Status": "Enabled",
                "Filter": {
                    "And": {
                        "Prefix": tier_prefix(spec.storage.prefix, tier),
                        "Tags": [{"Key": EXPIRABLE_TAG_KEY, "Value": EXPIRABLE_TAG_VALUE}],
                    }
                },
                "Expiration": {"Days": days},
            }
        )
    rules.append(
        {
            "ID": rule_id(ns, policy.name, ABORT_MULTIPART_SUFFIX),
            "Status": "Enabled",
            "Filter": {"Prefix": policy_prefix(spec.storage.prefix)},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_MULTIPART_DAYS},
        }
    )
    return rules


def lifecycle_configuration(rules: Sequence[Rule]) -> dict[str, list[Rule]]:
    """``{"Rules": [...]}``, the S3 API's LifecycleConfiguration."""
    return {"Rules": [dict(rule) for rule in rules]}


def to_json(rules: Sequence[Rule]) -> str:
    return json.dumps(lifecycle_configuration(rules), indent=2, sort_keys=False)


def is_owned(rule: Mapping[str, Any], owner_prefix: str) -> bool:
    return str(rule.get("ID") or "").startswith(owner_prefix)


def merge(
    existing_rules: Iterable[Mapping[str, Any]],
    owned_rules: Sequence[Mapping[str, Any]],
    owner_id_prefix: str,
) -> list[Rule]:
    """The bucket's rules with this owner's replaced by ``owned_rules``.

    Rules of others keep their content and order; this owner's stale rules
    (e.g. of a tier that was removed) disappear; ``owned_rules`` come last.
    Pass ``owned_rules=[]`` to remove everything the owner had (policy deleted).
    """
    for rule in owned_rules:
        if not is_owned(rule, owner_id_prefix):
            raise ValueError(f"rule {rule.get('ID')!r} does not start with {owner_id_prefix!r}")
    foreign = [dict(rule) for rule in existing_rules if not is_owned(rule, owner_id_prefix)]
    return foreign + [dict(rule) for rule in owned_rules]


def _normalize(value: Any) -> Any:
    """Canonical form for comparison: no empty values, tags sorted, Filter.Prefix '' dropped."""
    if isinstance(value, Mapping):
        result = {}
        for key, item in value.items():
            normalized = _normalize(item)
            if normalized in (None, "", [], {}):
                continue
            if key == "Tags" and isinstance(normalized, list):
                normalized = sorted(normalized, key=lambda t: (t.get("Key"), t.get("Value")))
            result[key] = normalized
        return result
    if isinstance(value, list):
        return [_normalize(item) for item in value]
    return value


def rules_in_sync(
    existing_rules: Iterable[Mapping[str, Any]],
    owned_rules: Sequence[Mapping[str, Any]],
    owner_id_prefix: str,
) -> bool:
    """Whether the bucket's rules of this owner are exactly ``owned_rules`` (order ignored)."""
    current = sorted(
        (_normalize(rule) for rule in existing_rules if is_owned(rule, owner_id_prefix)),
        key=lambda rule: str(rule.get("ID")),
    )
    desired = sorted((_normalize(rule) for rule in owned_rules), key=lambda r: str(r.get("ID")))
    return current == desired


def summarize(rules: Sequence[Mapping[str, Any]]) -> tuple[LifecycleRuleSummary, ...]:
    """``status.lifecycle.rules`` of a policy from its rules."""
    summaries = []
    for rule in rules:
        flt = rule.get("Filter", {})
        prefix = flt.get("And", {}).get("Prefix", flt.get("Prefix", ""))
        summaries.append(
            LifecycleRuleSummary(
                id=str(rule["ID"]),
                prefix=prefix,
                expiration_days=rule.get("Expiration", {}).get("Days"),
                abort_incomplete_multipart_upload_days=rule.get(
                    "AbortIncompleteMultipartUpload", {}
                ).get("DaysAfterInitiation"),
            )
        )
    return tuple(summaries)


def prefixes_overlap(a: str, b: str) -> bool:
    """Whether two policies' prefixes share keys: equal, or one is a folder of the other.

    ``citus`` and ``citus/app`` overlap; ``citus`` and ``citus2`` do not (keys
    are ``<prefix>/...``).
    """
    pa, pb = policy_prefix(a), policy_prefix(b)
    return pa.startswith(pb) or pb.startswith(pa)


def policies_overlap(a: CitusBackupPolicy, b: CitusBackupPolicy) -> bool:
    """Whether two policies write to overlapping prefixes of the same bucket of one endpoint."""
    sa, sb = a.spec.storage, b.spec.storage
    same_bucket = sa.endpoint.lower() == sb.endpoint.lower() and sa.bucket == sb.bucket
    return same_bucket and prefixes_overlap(sa.prefix, sb.prefix)
