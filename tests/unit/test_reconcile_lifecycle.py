"""Lifecycle rule reconciliation, overlap, catalogue planning and the retention controller,
against in-memory fakes (the real-MinIO versions are tests/integration/test_retention_*.py)."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from reconcile_fakes import T0, backup, policy, world

from citus_backup.api.backup import CitusBackup
from citus_backup.api.policy import CitusBackupPolicy
from citus_backup.controllers.retention import (
    DRIFT_REPAIRED,
    FINALIZER,
    RULES_REMOVED,
    RULES_UPDATED,
    RetentionController,
    bucket_factory,
)
from citus_backup.errors import PermanentError, TransientError
from citus_backup.reconcile import catalogue
from citus_backup.reconcile.lifecycle import (
    MAX_RULES,
    RuleLimitError,
    RuleRequest,
    SyncResult,
    overlapping_policy,
    policy_request,
    remove_rules,
    sync_many,
    sync_rules,
)
from citus_backup.reconcile.ports import Kind
from citus_backup.runner import s3 as runner_s3
from citus_backup.specs import lifecycle

pytestmark = pytest.mark.unit

FOREIGN = {
    "ID": "someone-else",
    "Status": "Enabled",
    "Filter": {"Prefix": "logs/"},
    "Expiration": {"Days": 3},
}


@dataclass
class FakeBucket:
    """A RuleStore / catalogue store: rules and keys in memory, writes counted."""

    rules: list[dict[str, Any]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    writes: int = 0
    reads: int = 0
    deleted_config: bool = False
    error: Exception | None = None
    #: BucketClient.identity: which clients' writes may be batched together.
    identity: str = "fake-bucket"
    bucket: str = "fake-bucket"

    def get_rules(self) -> list[dict[str, Any]]:
        if self.error is not None:
            raise self.error
        self.reads += 1
        return copy.deepcopy(self.rules)

    def put_rules(self, rules: Sequence[Mapping[str, Any]]) -> None:
        self.writes += 1
        self.rules = [dict(r) for r in rules]
        self.deleted_config = not rules

    def list_keys(self, prefix: str) -> list[str]:
        return [k for k in self.keys if k.startswith(prefix)]

    def read(self, key: str) -> bytes:
        raise KeyError(key)

    def remove_prefix(self, prefix: str) -> int:
        before = len(self.keys)
        self.keys = [k for k in self.keys if not k.startswith(prefix)]
        return before - len(self.keys)


def model(name: str = "main", namespace: str = "ns", **spec: Any) -> CitusBackupPolicy:
    body = policy(name, **spec)
    body["metadata"].update(namespace=namespace)
    return CitusBackupPolicy.model_validate(body)


def days(rules: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return {
        r["ID"].rsplit(".", 1)[1]: r["Expiration"]["Days"]
        for r in rules
        if "Expiration" in r and r["ID"].startswith("citusbackup.")
    }


# ----------------------------------------------------------------------------- sync_rules


@pytest.mark.parametrize(
    ("preset", "expected"),
    [("standard", {"daily": 30, "monthly": 365}), ("minimal", {"daily": 7, "monthly": 90})],
)
def test_presets_give_exactly_their_days(preset: str, expected: dict[str, int]) -> None:
    bucket = FakeBucket()
    result = sync_rules(bucket, model(retention={"preset": preset}))
    assert result.written
    assert not result.was_in_sync
    assert days(bucket.rules) == expected
    abort = [r for r in bucket.rules if "AbortIncompleteMultipartUpload" in r]
    assert abort == [
        {
            "ID": "citusbackup.ns.main.abort-incomplete-multipart-uploads",
            "Status": "Enabled",
            "Filter": {"Prefix": "main/"},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        }
    ]
    for rule in bucket.rules:
        if "Expiration" in rule:
            tags = rule["Filter"]["And"]["Tags"]
            assert tags == [{"Key": "citusbackup.io/expirable", "Value": "true"}]


def test_forever_tier_has_no_rule() -> None:
    bucket = FakeBucket()
    sync_rules(bucket, model(retention={"daily": {"keepDays": 5}, "yearly": {"forever": True}}))
    assert days(bucket.rules) == {"daily": 5}


def test_foreign_rules_are_kept_and_second_pass_writes_nothing() -> None:
    bucket = FakeBucket(rules=[copy.deepcopy(FOREIGN)])
    sync_rules(bucket, model())
    assert bucket.rules[0] == FOREIGN
    assert len(bucket.rules) == 4
    again = sync_rules(bucket, model())
    assert again.was_in_sync
    assert not again.written
    assert bucket.writes == 1


def test_drift_is_repaired_and_reported() -> None:
    bucket = FakeBucket()
    first = sync_rules(bucket, model())
    daily = next(r for r in bucket.rules if r["ID"].endswith(".daily"))
    daily["Expiration"]["Days"] = 1  # edited by hand
    bucket.rules = [r for r in bucket.rules if not r["ID"].endswith(".monthly")]  # deleted
    result = sync_rules(bucket, model(), last_synced=first.summary)
    assert result.written
    assert result.drift_repaired
    assert result.modified == ("citusbackup.ns.main.daily",)
    assert result.missing == ("citusbackup.ns.main.monthly",)
    assert days(bucket.rules) == {"daily": 30, "monthly": 365}
    assert "edited: citusbackup.ns.main.daily" in result.drift_message()


def test_spec_change_is_not_drift() -> None:
    bucket = FakeBucket()
    first = sync_rules(bucket, model())
    result = sync_rules(bucket, model(retention={"preset": "minimal"}), last_synced=first.summary)
    assert result.written
    assert not result.drift_repaired
    assert days(bucket.rules) == {"daily": 7, "monthly": 90}


def test_remove_rules_keeps_others_and_deletes_empty_configuration() -> None:
    bucket = FakeBucket(rules=[copy.deepcopy(FOREIGN)])
    sync_rules(bucket, model("a", storage={**policy()["spec"]["storage"], "prefix": "a"}))
    sync_rules(bucket, model("b", storage={**policy()["spec"]["storage"], "prefix": "b"}))
    assert remove_rules(bucket, "ns", "a")
    assert [r["ID"] for r in bucket.rules if "citusbackup.ns.a." in r["ID"]] == []
    assert FOREIGN in bucket.rules
    assert any(r["ID"].startswith("citusbackup.ns.b.") for r in bucket.rules)
    assert not remove_rules(bucket, "ns", "a")  # nothing left: no write
    only_mine = FakeBucket()
    sync_rules(only_mine, model())
    assert remove_rules(only_mine, "ns", "main")
    assert only_mine.deleted_config
    assert only_mine.rules == []


def test_overlap_refuses_the_later_policy_only() -> None:
    storage = policy()["spec"]["storage"]
    older = policy("old", storage={**storage, "prefix": "citus"})
    older["metadata"].update(namespace="ns", creationTimestamp="2026-01-01T00:00:00Z")
    newer = policy("new", storage={**storage, "prefix": "citus/app"})
    newer["metadata"].update(namespace="ns", creationTimestamp="2026-02-01T00:00:00Z")
    other_bucket = policy("elsewhere", storage={**storage, "prefix": "citus", "bucket": "x-b"})
    other_bucket["metadata"].update(namespace="ns", creationTimestamp="2025-01-01T00:00:00Z")
    sibling = policy("sib", storage={**storage, "prefix": "citus2"})
    sibling["metadata"].update(namespace="ns", creationTimestamp="2025-01-01T00:00:00Z")
    models = [CitusBackupPolicy.model_validate(b) for b in (older, newer, other_bucket, sibling)]
    assert overlapping_policy(models[1], models) == models[0]
    assert overlapping_policy(models[0], models) is None


def test_runner_tag_matches_the_rules_filter() -> None:
    assert runner_s3.EXPIRABLE_TAG_KEY == lifecycle.EXPIRABLE_TAG_KEY
    assert runner_s3.EXPIRABLE_TAG_VALUE == lifecycle.EXPIRABLE_TAG_VALUE
    assert runner_s3.EXPIRABLE_TAGGING_HEADER == "citusbackup.io%2Fexpirable=true"


# ----------------------------------------------------------------------------- catalogue


def test_catalogue_marks_expired_and_imports_unknown_sets() -> None:
    pol = model()
    keys = [
        "main/daily/20261120T030000Z/started.json",
        "main/daily/20261120T030000Z/manifest.json",
        "main/daily/20261121T030000Z/started.json",  # incomplete: never imported
        "main/monthly/20261101T030000Z/manifest.json",
        "main/daily/20261101T030000Z/manifest.json",
    ]
    sets = catalogue.scan(keys, "main")
    assert sets["20261101T030000Z"].complete_tiers == ("daily", "monthly")
    gone = backup("gone")
    gone["metadata"].update(namespace="ns")
    gone["status"] = {
        "phase": "Succeeded",
        "backupId": "20261001T030000Z",
        "tiers": ["daily"],
        "location": {"bucket": "backups", "keyPrefix": "main/daily/20261001T030000Z/"},
    }
    here = copy.deepcopy(gone)
    here["metadata"]["name"] = "here"
    here["status"]["backupId"] = "20261120T030000Z"
    backups = [CitusBackup.model_validate(b) for b in (gone, here)]
    todo = catalogue.plan(pol, backups, sets, now=T0)
    patches = dict(todo.status_patches)
    assert todo.expired == ["gone"]
    cond = patches["gone"]["conditions"][-1]
    assert (cond["type"], cond["status"], cond["reason"]) == ("Restorable", "False", "DataExpired")
    assert patches["here"]["conditions"][-1]["status"] == "True"
    assert [s.backup_id for s in todo.imports] == ["20261101T030000Z"]
    body = catalogue.import_body(pol, todo.imports[0])
    assert body["metadata"]["name"] == "main-20261101t030000z"
    assert body["metadata"]["labels"]["citusbackup.io/imported"] == "true"
    assert body["spec"] == {"policyName": "main", "tier": "daily", "alsoTiers": ["monthly"]}
    status = catalogue.import_status(pol, todo.imports[0], None, now=T0)
    assert status["phase"] == "Succeeded"
    assert status["location"]["keyPrefix"] == "main/daily/20261101T030000Z/"


def test_imported_names_are_dns_labels() -> None:
    name = catalogue.imported_name("p" * 60, "Custom_ID.1")
    assert len(name) <= 63
    assert name == name.lower()
    assert "_" not in name


# ----------------------------------------------------------------------------- controller


class FakeFinalizers:
    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster

    def add(self, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        obj = self.cluster.obj(Kind.POLICY, meta["name"], meta["namespace"])
        finalizers = obj["metadata"].setdefault("finalizers", [])
        if FINALIZER not in finalizers:
            finalizers.append(FINALIZER)

    def remove(self, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        obj = self.cluster.obj(Kind.POLICY, meta["name"], meta["namespace"])
        obj["metadata"]["finalizers"] = [
            f for f in obj["metadata"].get("finalizers", []) if f != FINALIZER
        ]


def controller(bucket: FakeBucket) -> tuple[Any, RetentionController]:
    w = world()
    w.cluster.add_secrets()
    ctl = RetentionController(w.deps, lambda _p: bucket, FakeFinalizers(w.cluster))  # type: ignore[arg-type,return-value]
    return w, ctl


def test_controller_writes_rules_status_finalizer_and_repairs_drift() -> None:
    bucket = FakeBucket(rules=[copy.deepcopy(FOREIGN)])
    w, ctl = controller(bucket)
    w.cluster.add(Kind.POLICY, policy())
    ctl.sync("main", "ns")
    status = w.cluster.status(Kind.POLICY, "main")
    assert status["lifecycle"]["inSync"] is True
    assert {r["id"] for r in status["lifecycle"]["rules"]} == {
        "citusbackup.ns.main.daily",
        "citusbackup.ns.main.monthly",
        "citusbackup.ns.main.abort-incomplete-multipart-uploads",
    }
    assert w.cluster.condition(Kind.POLICY, "main", "LifecycleInSync")["status"] == "True"  # type: ignore[index]
    assert FINALIZER in w.cluster.obj(Kind.POLICY, "main")["metadata"]["finalizers"]
    assert w.events.reasons() == [RULES_UPDATED]
    ctl.sync("main", "ns")
    assert bucket.writes == 1
    assert w.events.reasons() == [RULES_UPDATED]
    bucket.rules = [r for r in bucket.rules if not r["ID"].endswith(".daily")]
    ctl.sync("main", "ns")
    assert w.events.reasons()[-1] == DRIFT_REPAIRED
    assert "deleted: citusbackup.ns.main.daily" in w.events.events[-1][3]
    assert days(bucket.rules) == {"daily": 30, "monthly": 365}


def test_controller_refuses_overlapping_policy() -> None:
    bucket = FakeBucket()
    w, ctl = controller(bucket)
    w.cluster.add(Kind.POLICY, policy("first", storage={**policy()["spec"]["storage"]}))
    w.clock.advance(minutes=1)
    w.cluster.add(Kind.POLICY, policy("second", storage={**policy()["spec"]["storage"]}))
    ctl.sync("first", "ns")
    ctl.sync("second", "ns")
    cond = w.cluster.condition(Kind.POLICY, "second", "LifecycleInSync")
    assert cond is not None
    assert (cond["status"], cond["reason"]) == ("False", "PrefixOverlap")
    assert "CitusBackupPolicy ns/first" in cond["message"]
    assert not any(".second." in r["ID"] for r in bucket.rules)
    assert "finalizers" not in w.cluster.obj(Kind.POLICY, "second")["metadata"]


def test_controller_reports_unreachable_storage() -> None:
    bucket = FakeBucket(error=TransientError("S3 down", reason="S3Unreachable"))
    w, ctl = controller(bucket)
    w.cluster.add(Kind.POLICY, policy())
    ctl.sync("main", "ns")
    ctl.sync("main", "ns")
    cond = w.cluster.condition(Kind.POLICY, "main", "LifecycleInSync")
    assert cond is not None
    assert (cond["status"], cond["reason"]) == ("False", "StorageUnreachable")
    assert w.events.reasons() == ["StorageUnreachable"]  # once, not per pass


@pytest.mark.parametrize("delete_data", [False, True])
def test_finalize_removes_only_own_rules_and_data_only_when_asked(delete_data: bool) -> None:
    bucket = FakeBucket(rules=[copy.deepcopy(FOREIGN)], keys=["main/daily/x/manifest.json"])
    w, ctl = controller(bucket)
    w.cluster.add(Kind.POLICY, policy(deleteDataOnPolicyDeletion=delete_data))
    ctl.sync("main", "ns")
    ctl.finalize(w.cluster.get(Kind.POLICY, "ns", "main") or {})
    assert bucket.rules == [FOREIGN]
    assert (bucket.keys == []) is delete_data
    assert RULES_REMOVED not in w.events.reasons()  # logged: a dying namespace refuses Events
    assert FINALIZER not in w.cluster.obj(Kind.POLICY, "main")["metadata"]["finalizers"]


# ----------------------------------------------------------------------------- S3 JSON shape


def test_lifecycle_rules_cli_prints_s3_api_json(capsys: pytest.CaptureFixture[str]) -> None:
    from citus_backup import cli  # noqa: PLC0415

    sample = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "policy.yaml"
    assert cli.main(["lifecycle-rules", "-f", str(sample)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"Rules"}
    for rule in printed["Rules"]:
        assert set(rule) <= {
            "ID",
            "Status",
            "Filter",
            "Expiration",
            "AbortIncompleteMultipartUpload",
        }
        assert rule["Status"] == "Enabled"


def test_sdk_conversion_round_trips_the_s3_json_shape() -> None:
    from citus_backup.clients.s3 import rule_from_json, rule_to_json  # noqa: PLC0415

    rules = [
        *lifecycle.build_rules(model()),
        FOREIGN,
        {
            "ID": "t",
            "Status": "Disabled",
            "Filter": {"Tag": {"Key": "k", "Value": "v"}},
            "Expiration": {"Date": "2026-12-01T00:00:00Z"},
        },
        {
            "ID": "nv",
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 5},
        },
    ]
    for rule in rules:
        assert rule_to_json(rule_from_json(rule)) == rule


def test_finalize_uses_the_last_client_when_the_secrets_are_gone() -> None:
    bucket = FakeBucket(rules=[copy.deepcopy(FOREIGN)])
    w = world()
    gone = False

    def factory(_policy: CitusBackupPolicy) -> FakeBucket:
        if gone:
            raise PermanentError("Secret s3 not found", reason="SecretNotFound")
        return bucket

    ctl = RetentionController(w.deps, factory, FakeFinalizers(w.cluster))  # type: ignore[arg-type]
    w.cluster.add(Kind.POLICY, policy())
    ctl.sync("main", "ns")
    assert len(bucket.rules) == 4  # foreign + daily, monthly, abort
    gone = True  # namespace deletion removed the Secrets first
    ctl.finalize(w.cluster.get(Kind.POLICY, "ns", "main") or {})
    assert bucket.rules == [FOREIGN]
    assert FINALIZER not in w.cluster.obj(Kind.POLICY, "main")["metadata"]["finalizers"]


class RefusesAbort(FakeBucket):
    """Like MinIO: a configuration with an AbortIncompleteMultipartUpload rule is refused."""

    def put_rules(self, rules: Sequence[Mapping[str, Any]]) -> None:
        if any("AbortIncompleteMultipartUpload" in r for r in rules):
            raise PermanentError("S3 put lifecycle: InvalidArgument: MalformedXML")
        super().put_rules(rules)


def test_endpoint_refusing_abort_rule_gets_the_others_without_false_drift() -> None:
    bucket = RefusesAbort()
    first = sync_rules(bucket, model())
    assert first.abort_multipart_supported is False
    assert days(bucket.rules) == {"daily": 30, "monthly": 365}
    # A restarted operator does not know yet: it tries again, and finds the bucket in sync.
    again = sync_rules(bucket, model(), last_synced=first.summary)
    assert again.was_in_sync
    assert not again.drift_repaired
    assert bucket.writes == 1


def test_a_drift_check_that_finds_nothing_writes_no_status_until_the_hourly_refresh() -> None:
    from citus_backup.controllers.retention import LAST_SYNC_REFRESH  # noqa: PLC0415

    bucket = FakeBucket(rules=[])
    w, ctl = controller(bucket)
    w.cluster.add(Kind.POLICY, policy())
    ctl.sync("main", "ns")
    written = w.cluster.status_patches
    for _ in range(3):
        w.clock.advance(seconds=300)
        ctl.sync("main", "ns")
    assert w.cluster.status_patches == written  # no status write: no watch event
    w.clock.advance(seconds=LAST_SYNC_REFRESH)
    ctl.sync("main", "ns")
    assert w.cluster.status_patches == written + 1  # lastSyncTime refreshed
    bucket.rules = []  # drift: repaired and recorded at once
    ctl.sync("main", "ns")
    assert w.cluster.status_patches == written + 2


def test_the_overlap_check_reads_the_watch_fed_index_not_a_list_per_pass() -> None:
    bucket = FakeBucket(rules=[])
    w, ctl = controller(bucket)
    w.cluster.add(Kind.POLICY, policy())
    lists = []
    original = w.cluster.list

    def counting(kind: Kind, namespace: str) -> list[dict[str, Any]]:
        lists.append(kind)
        return original(kind, namespace)

    w.cluster.list = counting  # type: ignore[method-assign]
    ctl.sync("main", "ns")
    ctl.sync("main", "ns")
    assert lists.count(Kind.POLICY) == 1  # the first pass seeds the index
    # A newer overlapping policy arrives through a watch event: refused from the index.
    w.clock.advance(minutes=1)  # creation times decide which policy keeps its rules
    w.cluster.add(Kind.POLICY, policy("late", storage={**policy()["spec"]["storage"]}))
    ctl.observe(w.cluster.obj(Kind.POLICY, "late"), deleted=False)
    ctl.sync("late", "ns")
    assert lists.count(Kind.POLICY) == 1
    late = w.cluster.condition(Kind.POLICY, "late", "LifecycleInSync")
    assert late is not None
    assert late["reason"] == "PrefixOverlap"
    ctl.observe(w.cluster.obj(Kind.POLICY, "late"), deleted=True)
    assert [p.name for p in ctl._policies("ns")] == ["main"]


# ----------------------------------------------------------------------------- batches


def requests_for(*names: str) -> list[RuleRequest]:
    return [policy_request(model(name)) for name in names]


def test_one_read_and_one_write_for_a_batch_of_policies() -> None:
    bucket = FakeBucket(rules=[copy.deepcopy(FOREIGN)])
    outcomes = sync_many(bucket, requests_for("a", "b", "c"))
    assert bucket.writes == 1
    assert all(isinstance(o, SyncResult) and o.written for o in outcomes.values())
    assert bucket.rules[0] == FOREIGN
    assert len(bucket.rules) == 1 + 3 * 3
    again = sync_many(bucket, requests_for("a", "b", "c"))
    assert bucket.writes == 1
    assert all(isinstance(o, SyncResult) and o.was_in_sync for o in again.values())


def test_a_policy_beyond_the_rule_limit_is_refused_and_the_others_keep_their_rules() -> None:
    bucket = FakeBucket(rules=[copy.deepcopy(FOREIGN)])
    sync_many(bucket, requests_for("old"), max_rules=7)
    before = copy.deepcopy(bucket.rules)
    outcomes = sync_many(bucket, requests_for("new1", "new2"), max_rules=7)
    first, second = outcomes["citusbackup.ns.new1."], outcomes["citusbackup.ns.new2."]
    assert isinstance(first, SyncResult)
    assert first.written
    assert isinstance(second, RuleLimitError)
    assert second.reason == "LifecycleRuleLimit"
    assert "more than the 7 S3 allows" in second.message
    assert all(rule in bucket.rules for rule in before)  # nobody lost a rule
    assert not any(r["ID"].startswith("citusbackup.ns.new2.") for r in bucket.rules)
    assert len(bucket.rules) == 7


def test_the_default_limit_is_s3s_thousand_rules() -> None:
    assert MAX_RULES == 1000


def test_a_refused_policy_keeps_the_rules_it_already_had() -> None:
    bucket = FakeBucket()
    sync_many(bucket, requests_for("a"), max_rules=3)
    mine = [r for r in bucket.rules if r["ID"].startswith("citusbackup.ns.a.")]
    bigger = policy_request(
        model(
            "a",
            retention={
                "daily": {"keepDays": 7},
                "weekly": {"keepDays": 30},
                "monthly": {"keepDays": 90},
            },
        )
    )
    outcome = sync_many(bucket, [bigger], max_rules=3)["citusbackup.ns.a."]
    assert isinstance(outcome, RuleLimitError)
    assert [r for r in bucket.rules if r["ID"].startswith("citusbackup.ns.a.")] == mine


def test_the_controller_reports_the_rule_limit_once(monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = FakeBucket()
    w, ctl = controller(bucket)
    monkeypatch.setattr(
        "citus_backup.controllers.retention.sync_many", functools.partial(sync_many, max_rules=2)
    )
    w.cluster.add(Kind.POLICY, policy())
    ctl.sync("main", "ns")
    ctl.sync("main", "ns")
    condition = w.cluster.condition(Kind.POLICY, "main", "LifecycleInSync")
    assert condition is not None
    assert (condition["status"], condition["reason"]) == ("False", "LifecycleRuleLimit")
    assert w.events.reasons() == ["LifecycleRuleLimit"]
    assert bucket.writes == 0


def test_drift_checks_of_one_bucket_share_a_recent_read_and_still_repair_drift() -> None:
    bucket = FakeBucket()
    w, ctl = controller(bucket)
    for name in ("a", "b", "c"):
        w.cluster.add(Kind.POLICY, policy(name))
        ctl.sync(name, "ns")
    reads = bucket.reads
    for name in ("a", "b", "c"):
        ctl.periodic(name, "ns", w.cluster.obj(Kind.POLICY, name), catalogue=False)
    assert bucket.reads == reads + 1  # one read served the three drift checks
    assert bucket.writes == 3
    bucket.rules = [r for r in bucket.rules if not r["ID"].startswith("citusbackup.ns.b.")]
    ctl._rules_seen.clear()  # the cached read expired
    ctl.periodic("b", "ns", w.cluster.obj(Kind.POLICY, "b"), catalogue=False)
    assert w.events.reasons()[-1] == DRIFT_REPAIRED
    assert any(r["ID"].startswith("citusbackup.ns.b.") for r in bucket.rules)


def test_policies_of_one_bucket_and_credentials_share_one_client() -> None:
    w = world()
    w.cluster.add_secrets()
    factory = bucket_factory(w.deps)
    one, two = factory(model("a")), factory(model("b"))
    assert one is two  # one connection pool for the bucket, not one per policy
    other_bucket = factory(model("c", storage={**policy("c")["spec"]["storage"], "bucket": "xyz"}))
    assert other_bucket is not one
    w.cluster.secrets[("ns", "s3")] = {"accessKeyId": b"rotated", "secretAccessKey": b"new"}
    assert factory(model("a")) is not one  # new credentials, new client
