"""Lifecycle rules on a real MinIO: the reconciler's read-merge-write, drift repair,
removal, and one real expiry by MinIO's scanner (tag-filtered, the newest set survives)."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from minio import Minio as S3Client
from minio.commonconfig import ENABLED, AndOperator, Filter, Tags
from minio.error import S3Error
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule
from test_runner_support import new_bucket

from citus_backup.api.policy import CitusBackupPolicy
from citus_backup.clients.s3 import BucketClient, S3Location
from citus_backup.reconcile.lifecycle import (
    MAX_RULES,
    RuleLimitError,
    SyncResult,
    policy_request,
    remove_rules,
    sync_many,
    sync_rules,
)
from citus_backup.specs.lifecycle import EXPIRABLE_TAG_KEY, EXPIRABLE_TAG_VALUE, build_rules
from localenv.minio import MinioInfo

pytestmark = pytest.mark.integration

#: Upper bound for MinIO's scanner to apply an already-due expiration
#: (MINIO_SCANNER_SPEED=fastest in the local environment).
EXPIRY_WAIT_SECONDS = 90


def s3(minio: MinioInfo) -> S3Client:
    return S3Client(minio.endpoint, minio.access_key, minio.secret_key, secure=False)


def bucket_client(minio: MinioInfo, bucket: str) -> BucketClient:
    location = S3Location(endpoint=minio.endpoint, bucket=bucket, secure=False)
    return BucketClient(location, minio.access_key, minio.secret_key)


def make_policy(bucket: str, name: str, prefix: str, **retention: Any) -> CitusBackupPolicy:
    return CitusBackupPolicy.model_validate(
        {
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {
                "coordinator": {"host": "c", "passwordSecretRef": {"name": "pg", "key": "p"}},
                "storage": {
                    "endpoint": "minio:9000",
                    "secure": False,
                    "bucket": bucket,
                    "prefix": prefix,
                    "accessKeyIdSecretRef": {"name": "s3", "key": "a"},
                    "secretAccessKeySecretRef": {"name": "s3", "key": "s"},
                },
                "retention": retention or {"preset": "standard"},
            },
        }
    )


def foreign_rule() -> Rule:
    return Rule(ENABLED, Filter(prefix="logs/"), "logs-7d", expiration=Expiration(days=7))


def owned_days(client: S3Client, bucket: str, owner: str) -> dict[str, int | None]:
    config = client.get_bucket_lifecycle(bucket)
    assert config is not None
    return {
        str(r.rule_id): r.expiration.days if r.expiration else None
        for r in config.rules
        if str(r.rule_id).startswith(owner)
    }


def test_rules_merge_drift_and_removal_on_minio(minio: MinioInfo) -> None:
    client = s3(minio)
    bucket = new_bucket(minio, "lc")
    client.set_bucket_lifecycle(bucket, LifecycleConfig([foreign_rule()]))
    store = bucket_client(minio, bucket)
    standard = make_policy(bucket, "std", "clusters/std")
    minimal = make_policy(bucket, "min", "clusters/min", preset="minimal")

    first = sync_rules(store, standard)
    # MinIO refuses AbortIncompleteMultipartUpload (it aborts stale uploads itself after
    # 24 h): the reconciler retried without that rule and says so.
    assert first.written
    assert first.abort_multipart_supported is False
    sync_rules(store, minimal, abort_multipart=False)
    assert owned_days(client, bucket, "citusbackup.ns.std.") == {
        "citusbackup.ns.std.daily": 30,
        "citusbackup.ns.std.monthly": 365,
    }
    assert owned_days(client, bucket, "citusbackup.ns.min.") == {
        "citusbackup.ns.min.daily": 7,
        "citusbackup.ns.min.monthly": 90,
    }
    config = client.get_bucket_lifecycle(bucket)
    assert config is not None
    by_id = {r.rule_id: r for r in config.rules}
    # The foreign rule survived both writes, unchanged.
    assert by_id["logs-7d"].rule_filter.prefix == "logs/"
    assert by_id["logs-7d"].expiration.days == 7
    # The expiration rules filter on prefix AND tag.
    daily = by_id["citusbackup.ns.std.daily"]
    assert daily.rule_filter.and_operator.prefix == "clusters/std/daily/"
    assert dict(daily.rule_filter.and_operator.tags) == {EXPIRABLE_TAG_KEY: EXPIRABLE_TAG_VALUE}
    # Read back, the bucket equals what the policy wants: a second pass writes nothing.
    again = sync_rules(store, standard, abort_multipart=False)
    assert again.was_in_sync

    # Drift: edit one rule and delete another by hand with the SDK.
    rules = [r for r in config.rules if r.rule_id != "citusbackup.ns.std.monthly"]
    rules = [
        Rule(
            ENABLED,
            r.rule_filter,
            r.rule_id,
            expiration=Expiration(days=1),
        )
        if r.rule_id == "citusbackup.ns.std.daily"
        else r
        for r in rules
    ]
    client.set_bucket_lifecycle(bucket, LifecycleConfig(rules))
    repaired = sync_rules(store, standard, last_synced=first.summary, abort_multipart=False)
    assert repaired.drift_repaired
    assert repaired.modified == ("citusbackup.ns.std.daily",)
    assert repaired.missing == ("citusbackup.ns.std.monthly",)
    assert owned_days(client, bucket, "citusbackup.ns.std.")["citusbackup.ns.std.daily"] == 30
    assert "citusbackup.ns.std.monthly" in owned_days(client, bucket, "citusbackup.ns.std.")

    # Removing one policy's rules leaves the other policy's and the foreign rule.
    assert remove_rules(store, "ns", "std")
    ids = {r.rule_id for r in (client.get_bucket_lifecycle(bucket) or LifecycleConfig([])).rules}
    assert not any(i.startswith("citusbackup.ns.std.") for i in ids)
    assert "logs-7d" in ids
    assert "citusbackup.ns.min.daily" in ids

    # When nothing but our rules were there, the configuration is deleted, not emptied.
    client.set_bucket_lifecycle(bucket, LifecycleConfig([foreign_rule()]))
    client.delete_bucket_lifecycle(bucket)
    sync_rules(store, standard, abort_multipart=False)
    assert remove_rules(store, "ns", "std")
    assert client.get_bucket_lifecycle(bucket) is None


def _put(client: S3Client, bucket: str, key: str, tagged: bool) -> None:
    tags = None
    if tagged:
        tags = Tags.new_object_tags()
        tags[EXPIRABLE_TAG_KEY] = EXPIRABLE_TAG_VALUE
    client.put_object(bucket, key, io.BytesIO(b"x" * 64), 64, tags=tags)


def _exists(client: S3Client, bucket: str, key: str) -> bool:
    try:
        client.stat_object(bucket, key)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject"):
            return False
        raise
    return True


def test_real_expiry_spares_the_untagged_newest_set(minio: MinioInfo, state_dir: Path) -> None:
    """MinIO's scanner deletes tagged objects a due rule matches, and nothing else.

    ``Days`` counts from the object's creation, so a fresh object cannot be made
    due by ``Days``; the rule here is the policy's own daily rule (same ID, same
    ``And`` filter on prefix and tag) with ``Expiration.Date`` set to today,
    00:00 UTC — already past, so every matching object is due now.
    """
    client = s3(minio)
    bucket = new_bucket(minio, "expiry")
    policy = make_policy(bucket, "exp", "c", daily={"keepDays": 1})
    old = "c/daily/20261101T030000Z"
    newest = "c/daily/20261127T030000Z"
    for name in ("started.json", "app.dump", "manifest.json"):
        _put(client, bucket, f"{old}/{name}", tagged=True)
        _put(client, bucket, f"{newest}/{name}", tagged=False)
    _put(client, bucket, "c/monthly/20261101T030000Z/manifest.json", tagged=True)  # other tier
    _put(client, bucket, "elsewhere/daily/x/manifest.json", tagged=True)  # outside prefix

    daily = build_rules(policy)[0]
    assert daily["ID"] == "citusbackup.ns.exp.daily"
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    and_filter = AndOperator(daily["Filter"]["And"]["Prefix"], _tags())
    client.set_bucket_lifecycle(
        bucket,
        LifecycleConfig(
            [Rule(ENABLED, Filter(and_operator=and_filter), daily["ID"], Expiration(date=today))]
        ),
    )
    # Watch the drive, not the API: a GET/HEAD/LIST of a due object makes MinIO expire it
    # on access; polling the disk shows the background scanner doing it by itself.
    drive = state_dir / "minio" / "minio-data" / bucket
    old_files = [drive / old / name / "xl.meta" for name in ("started.json", "app.dump")]
    old_files.append(drive / old / "manifest.json" / "xl.meta")
    assert all(f.exists() for f in old_files), "unexpected MinIO drive layout"
    started = time.monotonic()
    deadline = started + EXPIRY_WAIT_SECONDS
    while time.monotonic() < deadline and any(f.exists() for f in old_files):
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    print(f"MinIO's scanner expired the tagged set after {elapsed:.1f} s")  # shown with -s
    assert not any(f.exists() for f in old_files), (
        f"MinIO's scanner did not expire due, tagged objects within {EXPIRY_WAIT_SECONDS} s"
    )
    assert not _exists(client, bucket, f"{old}/manifest.json")
    for name in ("started.json", "app.dump", "manifest.json"):
        assert _exists(client, bucket, f"{newest}/{name}"), f"the newest set lost {name}"
    assert _exists(client, bucket, "c/monthly/20261101T030000Z/manifest.json")
    assert _exists(client, bucket, "elsewhere/daily/x/manifest.json")


def _tags() -> Tags:
    tags = Tags()
    tags[EXPIRABLE_TAG_KEY] = EXPIRABLE_TAG_VALUE
    return tags


class CountingStore:
    """The real BucketClient, with its reads and writes counted."""

    def __init__(self, inner: BucketClient) -> None:
        self.inner, self.reads, self.writes = inner, 0, 0

    def get_rules(self) -> list[dict[str, Any]]:
        self.reads += 1
        return self.inner.get_rules()

    def put_rules(self, rules: Any) -> None:
        self.writes += 1
        self.inner.put_rules(rules)


def test_a_batch_of_policies_is_one_read_and_one_write_on_minio(minio: MinioInfo) -> None:
    client = s3(minio)
    bucket = new_bucket(minio, "lcbatch")
    client.set_bucket_lifecycle(bucket, LifecycleConfig([foreign_rule()]))
    store = CountingStore(bucket_client(minio, bucket))
    policies = [make_policy(bucket, f"p{i}", f"clusters/p{i}") for i in range(20)]
    outcomes = sync_many(store, [policy_request(p) for p in policies], abort_multipart=False)
    assert (store.reads, store.writes) == (1, 1)
    assert all(isinstance(o, SyncResult) and o.written for o in outcomes.values())
    ids = {str(r.rule_id) for r in client.get_bucket_lifecycle(bucket).rules}  # type: ignore[union-attr]
    assert "logs-7d" in ids
    assert {f"citusbackup.ns.p{i}.daily" for i in range(20)} <= ids
    again = sync_many(store, [policy_request(p) for p in policies], abort_multipart=False)
    assert (store.reads, store.writes) == (2, 1)
    assert all(isinstance(o, SyncResult) and o.was_in_sync for o in again.values())


def test_the_thousand_rule_limit_refuses_the_newcomer_and_keeps_everyone_on_minio(
    minio: MinioInfo,
) -> None:
    """999 foreign rules (MinIO holds them): a policy needing 2 more is refused with
    LifecycleRuleLimit and nothing in the bucket changes."""
    client = s3(minio)
    bucket = new_bucket(minio, "lclimit")
    foreign = [
        Rule(ENABLED, Filter(prefix=f"logs/{i}/"), f"logs-{i}", expiration=Expiration(days=7))
        for i in range(MAX_RULES - 1)
    ]
    client.set_bucket_lifecycle(bucket, LifecycleConfig(foreign))
    store = bucket_client(minio, bucket)
    policy = make_policy(bucket, "late", "clusters/late")
    with pytest.raises(RuleLimitError, match="more than the 1000 S3 allows"):
        sync_rules(store, policy, abort_multipart=False)
    rules = client.get_bucket_lifecycle(bucket).rules  # type: ignore[union-attr]
    assert len(rules) == MAX_RULES - 1
    assert not any(str(r.rule_id).startswith("citusbackup.") for r in rules)
