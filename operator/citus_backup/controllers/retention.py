"""kopf handlers for retention: a policy's bucket lifecycle rules and the backup catalogue.

Why a controller of its own (next to the scheduler in
:mod:`citus_backup.controllers`): lifecycle rules live outside Kubernetes, in
a bucket shared with others, and must be (a) written when a policy appears
or changes, (b) re-checked periodically because anyone with bucket access
can edit them, and (c) removed when the policy goes — which needs a
finalizer. This module touches only ``status.lifecycle`` and the
``LifecycleInSync`` condition of policies (the scheduler owns the rest), the
``Restorable`` condition of Succeeded CitusBackups, and creates imported
CitusBackups.

Handlers (registered by :func:`register` on the operator's registry):

* on policy create / update (spec) / resume: :meth:`RetentionController.sync`
  — overlap check, finalizer, rules read-merge-write (batched per bucket:
  :mod:`citus_backup.reconcile.groupcommit`), status, Events;
* every ``interval`` seconds (default 300, ``$CITUS_BACKUP_LIFECYCLE_INTERVAL``,
  jittered) the policy's scheduler daemon calls :meth:`RetentionController.periodic`:
  the same sync as a drift check, and on every ``CATALOGUE_EVERY``-th pass
  :meth:`RetentionController.sync_catalogue`. Not a kopf timer of its own: one
  periodic task per policy, not two, is what keeps 1,000 policies cheap;
* on policy deletion: :meth:`RetentionController.finalize` removes this
  policy's rules (never anyone else's), deletes the data only when
  ``spec.deleteDataOnPolicyDeletion`` is true, then drops our finalizer.

Finalizer ``citusbackup.io/lifecycle-rules``: added by this controller just
before it first writes rules for a policy (a refused, overlapping policy
never gets one), removed by it on deletion. It is separate from kopf's own
``citusbackup.io/operator`` so that nothing else ever has to know about it.
If the policy's Secrets are already gone (a namespace being deleted), the
client of the last pass, kept in memory, is used. If the bucket cannot be
reached, the handler retries (``FINALIZE_RETRIES``) and then lets the policy
go with a warning in the operator's log naming the rules left behind — a
namespace being deleted must not hang forever (and refuses new Events).

Concurrency: one lifecycle read-modify-write per bucket at a time in this
process (S3 offers no precondition on the configuration); policy status
patches carry the resourceVersion read, so a stale read never overwrites the
scheduler's conditions (409 → re-read, up to ``CONFLICT_ATTEMPTS``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import kopf
from kubernetes.client import ApiClient, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from citus_backup.api.backup import CitusBackup
from citus_backup.api.common import GROUP, VERSION, ConditionType, Reason, find_condition
from citus_backup.api.policy import CitusBackupPolicy
from citus_backup.clients.kube import convert
from citus_backup.clients.s3 import BucketClient, S3Location, client_identity
from citus_backup.errors import CitusBackupError, PermanentError, TransientError
from citus_backup.reconcile import catalogue
from citus_backup.reconcile.common import NORMAL, WARNING, Deps, parse, read_secret_value
from citus_backup.reconcile.groupcommit import GroupCommit
from citus_backup.reconcile.lifecycle import (
    RuleLimitError,
    RuleRequest,
    SyncResult,
    lifecycle_status,
    overlap_message,
    overlapping_policy,
    policy_request,
    remove_rules,
    sync_many,
)
from citus_backup.reconcile.ports import Kind
from citus_backup.runner.manifest import Manifest
from citus_backup.specs.lifecycle import policy_prefix, rules_in_sync, summarize

logger = logging.getLogger(__name__)

#: Our finalizer on policies (see module doc).
FINALIZER = f"{GROUP}/lifecycle-rules"
#: Seconds between two passes over a policy's rules and catalogue: drift and
#: expired backups show up at most this late. Changes of the policy are synced
#: at once (create/update handlers); this pass is the drift check, and its
#: requests (policy GET, the namespace's policies, bucket rules and listing,
#: backups, Secrets) are most of an idle operator's API traffic (bench/scale.py:
#: about 18 requests per policy per minute at 60 s).
DEFAULT_INTERVAL = 300.0
#: Seconds after which a pass that found everything in sync still rewrites
#: ``status.lifecycle.lastSyncTime`` (otherwise it writes nothing).
LAST_SYNC_REFRESH = 3600.0
INTERVAL_ENV = "CITUS_BACKUP_LIFECYCLE_INTERVAL"
#: A drift check reuses the bucket's rules read by another policy's drift check
#: less than interval / RULES_SEEN_SHARE ago (60 s at the default interval): one
#: read per bucket serves its policies; writes invalidate it.
RULES_SEEN_SHARE = 5
#: Every this many drift checks also read the policy's catalogue (expired
#: backups, sets to import): 30 min at the default interval. Expiry is
#: day-granular and imports are rare, and each catalogue pass lists the bucket
#: prefix and the namespace's backups.
CATALOGUE_EVERY = 6
#: Attempts to reach the bucket when a policy is deleted before giving up (about
#: FINALIZE_RETRIES x FINALIZE_DELAY seconds).
FINALIZE_RETRIES = 10
FINALIZE_DELAY = 15.0
#: Event reasons.
DRIFT_REPAIRED = "LifecycleDriftRepaired"
RULES_UPDATED = "LifecycleRulesUpdated"
RULES_REMOVED = "LifecycleRulesRemoved"
RULES_NOT_REMOVED = "LifecycleRulesNotRemoved"
DATA_DELETED = "BackupDataDeleted"
BACKUP_IMPORTED = "BackupImported"

#: Error reasons that are LifecycleInSync reasons as they are.
_KNOWN_REASONS = {
    Reason.SECRET_NOT_FOUND,
    Reason.SECRET_KEY_MISSING,
    Reason.BUCKET_NOT_FOUND,
    Reason.INVALID_SPEC,
    Reason.LIFECYCLE_RULE_LIMIT,
}

BucketFactory = Callable[[CitusBackupPolicy], BucketClient]


class Finalizers:
    """Add/remove one finalizer with JSON patches guarded by a ``test`` of the
    resourceVersion, so a concurrent change of the list (kopf's own finalizer)
    is never overwritten; a conflict is a TransientError (retried)."""

    def __init__(self, api_client: ApiClient) -> None:
        self._api = CustomObjectsApi(api_client)

    def _patch(self, namespace: str, name: str, ops: list[dict[str, Any]]) -> None:
        try:
            self._api.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                Kind.POLICY.value,
                name,
                ops,
                _content_type="application/json-patch+json",
            )
        except ApiException as exc:
            if exc.status == 404:
                return
            if exc.status == 422:  # the test op failed: the list changed meanwhile
                raise TransientError(
                    f"finalizers of {namespace}/{name} changed meanwhile", delay=1.0
                ) from None
            raise convert(exc, f"patch finalizers of {namespace}/{name}") from None

    @staticmethod
    def _guard(meta: Mapping[str, Any]) -> list[dict[str, Any]]:
        """A ``test`` of resourceVersion: the patch applies only to the object we read."""
        return [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]}
        ]

    def add(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata", {})
        current = list(meta.get("finalizers") or [])
        if FINALIZER in current:
            return
        ops = self._guard(meta)
        if current:
            ops.append({"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER})
        else:
            ops.append({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]})
        self._patch(meta["namespace"], meta["name"], ops)

    def remove(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata", {})
        current = list(meta.get("finalizers") or [])
        if FINALIZER not in current:
            return
        ops = self._guard(meta)
        ops.append({"op": "remove", "path": f"/metadata/finalizers/{current.index(FINALIZER)}"})
        self._patch(meta["namespace"], meta["name"], ops)


class StatusConflict(Exception):
    """The policy changed between our read and our status patch (HTTP 409)."""


#: Attempts of one pass when the policy keeps changing under us (each re-reads it).
CONFLICT_ATTEMPTS = 3


#: Bucket clients kept for reuse (one per bucket and credentials; least recently
#: used first out). Each holds a pool of kept-alive connections: one client per
#: policy meant one open connection per policy (1,000 policies: ~30 MB).
CLIENT_CACHE_SIZE = 256


def bucket_factory(deps: Deps) -> BucketFactory:
    """Clients built from a policy's storage spec and Secrets (values in memory only),
    shared by the policies that reach the same bucket with the same credentials."""
    clients: OrderedDict[str, BucketClient] = OrderedDict()
    lock = threading.Lock()

    def build(policy: CitusBackupPolicy) -> BucketClient:
        storage = policy.spec.storage
        namespace = policy.namespace or ""
        if storage.ca is not None:
            # The CA bundle would have to be written to a file for urllib3; not supported yet.
            raise PermanentError(
                "storage.ca is not supported by the operator's lifecycle management yet",
                reason=Reason.INVALID_SPEC,
            )
        location = S3Location(
            endpoint=storage.endpoint,
            bucket=storage.bucket,
            secure=storage.secure,
            region=storage.region,
            insecure_skip_verify=storage.insecure_skip_verify,
        )
        access = read_secret_value(deps.cluster, namespace, storage.access_key_id_secret_ref)
        secret = read_secret_value(deps.cluster, namespace, storage.secret_access_key_secret_ref)
        key = client_identity(location, access, secret)
        with lock:
            found = clients.get(key)
            if found is not None:
                clients.move_to_end(key)
                return found
        made = BucketClient(location, access, secret)
        with lock:
            found = clients.setdefault(key, made)
            clients.move_to_end(key)
            while len(clients) > CLIENT_CACHE_SIZE:
                clients.popitem(last=False)
        return found

    return build


#: What the overlap check reads of the other policies (see _slim).
_SLIM_METADATA = ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp")


def _slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a policy the index keeps: its identity, times and spec. Without
    status, managedFields and annotations a model is a third of the size
    (~5 KB instead of ~15 KB), which counts with a thousand policies."""
    meta = body.get("metadata", {})
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta[k] for k in _SLIM_METADATA if k in meta},
        "spec": body.get("spec", {}),
    }


class RetentionController:
    """The retention reconciler; plain Python over ``deps``, a bucket factory and finalizers."""

    def __init__(
        self,
        deps: Deps,
        buckets: BucketFactory,
        finalizers: Finalizers | None = None,
    ) -> None:
        self.deps = deps
        self.buckets = buckets
        self.finalizers = finalizers
        #: Endpoints (host:port) that refused the abort-incomplete-multipart-uploads
        #: rule (MinIO): later passes leave it out instead of failing every time.
        self.no_abort_multipart: set[str] = set()
        #: policy uid -> the client of its last pass, for the finalizer (see
        #: _bucket_for_deletion); credentials stay in this process's memory only.
        self._clients: dict[str, BucketClient] = {}
        #: namespace -> name -> policy, fed by watch events (see _policies).
        self._index: dict[str, dict[str, CitusBackupPolicy]] = {}
        self._index_lock = threading.Lock()
        #: Seconds between two drift checks of a policy (set by :func:`register`).
        self.interval = DEFAULT_INTERVAL
        #: BucketClient.identity -> (monotonic time, rules) last read by a drift check.
        self._rules_seen: dict[str, tuple[float, list[Any]]] = {}
        #: Lifecycle writes batched per bucket and credentials (see _sync_rules).
        self._batches: GroupCommit[str, RuleRequest, SyncResult | RuleLimitError] = GroupCommit()

    # ------------------------------------------------------------------ helpers

    def _policies(self, namespace: str) -> list[CitusBackupPolicy]:
        """The namespace's policies: from the watch-fed index once it has seen the
        namespace (:meth:`observe`), else one LIST (which also seeds the index).

        Why: every pass checks its policy's prefix against all others; a LIST per
        pass made an idle operator's work grow with the square of the policies.
        """
        with self._index_lock:
            cached = self._index.get(namespace)
            if cached is not None:
                return list(cached.values())
        listed = {}
        for item in self.deps.cluster.list(Kind.POLICY, namespace):
            with contextlib.suppress(CitusBackupError):
                model = parse(CitusBackupPolicy, _slim(item))
                listed[model.name] = model
        with self._index_lock:
            self._index.setdefault(namespace, {}).update(listed)
            return list(self._index[namespace].values())

    def observe(self, body: Mapping[str, Any], *, deleted: bool) -> None:
        """A watch event of a policy: keep the index of :meth:`_policies` current."""
        meta = body.get("metadata", {})
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        model = None
        if not deleted:
            with contextlib.suppress(CitusBackupError):
                model = parse(CitusBackupPolicy, _slim(body))
        with self._index_lock:
            known = self._index.setdefault(namespace, {})
            if model is None:
                known.pop(name, None)
            else:
                known[name] = model

    def _patch(self, policy: CitusBackupPolicy, status: dict[str, Any]) -> None:
        """Patch guarded by the resourceVersion we read: a merge patch replaces the
        whole ``conditions`` list, which the scheduler writes too, so a patch
        computed from a stale read is refused (then :meth:`sync` re-reads)."""
        try:
            self.deps.cluster.patch_status(
                Kind.POLICY,
                policy.namespace or "",
                policy.name,
                status,
                resource_version=policy.metadata.resource_version,
            )
        except TransientError as err:
            if err.reason != "Conflict":
                raise
            raise StatusConflict(str(err)) from err
        except PermanentError as err:
            if err.reason != "NotFound":  # deleted meanwhile: nothing to report on
                raise

    def _fail(
        self, policy: CitusBackupPolicy, body: Mapping[str, Any], err: CitusBackupError
    ) -> None:
        if isinstance(err, TransientError):
            reason = Reason.STORAGE_UNREACHABLE
        elif err.reason in _KNOWN_REASONS:
            reason = Reason(err.reason)
        else:
            reason = Reason.LIFECYCLE_UPDATE_FAILED
        old = find_condition(policy.status.conditions, ConditionType.LIFECYCLE_IN_SYNC)
        summary = policy.status.lifecycle.rules if policy.status.lifecycle else ()
        self._patch(
            policy,
            lifecycle_status(
                policy,
                in_sync=False,
                summary=summary,
                reason=reason,
                message=err.message,
                now=self.deps.clock(),
            ),
        )
        if old is None or old.reason != str(reason):  # one Event per change, not a storm
            self.deps.events.emit(body, WARNING, str(reason), err.message)

    # ------------------------------------------------------------------ rules

    def sync(
        self,
        name: str,
        namespace: str,
        body: Mapping[str, Any] | None = None,
        *,
        drift_check: bool = False,
    ) -> None:
        """One pass over the policy's lifecycle rules (idempotent).

        ``body``: the policy as kopf's watch last saw it (saves a GET); a status
        conflict means it was stale, and the next attempt reads the policy.
        """
        with self.deps.locked("CitusBackupPolicy/lifecycle", namespace, name):
            for _ in range(CONFLICT_ATTEMPTS):
                try:
                    self._sync(name, namespace, body, drift_check=drift_check)
                    return
                except StatusConflict:
                    body = None
                    continue
            raise TransientError(
                f"policy {namespace}/{name} kept changing; lifecycle status not written",
                reason="Conflict",
                delay=1.0,
            )

    def _sync(
        self, name: str, namespace: str, seen: Mapping[str, Any] | None, *, drift_check: bool
    ) -> None:
        body = self.deps.cluster.get(Kind.POLICY, namespace, name) if seen is None else dict(seen)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            return
        try:
            policy = parse(CitusBackupPolicy, body)
        except PermanentError as err:
            logger.warning("policy %s/%s: %s", namespace, name, err.message)
            return
        other = overlapping_policy(policy, self._policies(namespace))
        if other is not None:
            message = overlap_message(policy, other)
            old = find_condition(policy.status.conditions, ConditionType.LIFECYCLE_IN_SYNC)
            self._patch(
                policy,
                lifecycle_status(
                    policy,
                    in_sync=False,
                    summary=(),
                    reason=Reason.PREFIX_OVERLAP,
                    message=message,
                    now=self.deps.clock(),
                ),
            )
            if old is None or old.reason != str(Reason.PREFIX_OVERLAP):
                self.deps.events.emit(body, WARNING, str(Reason.PREFIX_OVERLAP), message)
            return
        lifecycle = policy.status.lifecycle
        last = lifecycle.rules if lifecycle is not None and lifecycle.in_sync else None
        try:
            store = self.buckets(policy)
            self._clients[policy.metadata.uid or ""] = store
            if self.finalizers is not None:
                self.finalizers.add(body)
            endpoint = policy.spec.storage.endpoint.lower()
            request = policy_request(policy, namespace, last_synced=last)
            result = (drift_check and self._seen_in_sync(store, endpoint, request)) or (
                self._sync_rules(store, endpoint, request)
            )
            if result.abort_multipart_supported is False:
                self.no_abort_multipart.add(endpoint)
        except CitusBackupError as err:
            self._fail(policy, body, err)
            return
        where = f"s3://{policy.spec.storage.bucket}/{policy_prefix(policy.spec.storage.prefix)}"
        message = f"{len(result.owned)} lifecycle rule(s) for {where} in place"
        if endpoint in self.no_abort_multipart:
            message += (
                "; the endpoint refuses AbortIncompleteMultipartUpload rules (MinIO "
                "aborts stale multipart uploads itself, after 24 h by default)"
            )
        # Events first: a status conflict retries the pass, which then finds the bucket in sync.
        if result.drift_repaired:
            self.deps.events.emit(body, WARNING, DRIFT_REPAIRED, result.drift_message())
        elif result.written:
            self.deps.events.emit(body, NORMAL, RULES_UPDATED, message)
        if not result.written and self._recorded(policy, result.summary, message):
            return  # nothing to say: no status write, so no watch event for anyone
        self._patch(
            policy,
            lifecycle_status(
                policy,
                in_sync=True,
                summary=result.summary,
                reason=Reason.LIFECYCLE_IN_SYNC,
                message=message,
                now=self.deps.clock(),
            ),
        )

    def _seen_in_sync(
        self, store: BucketClient, endpoint: str, request: RuleRequest
    ) -> SyncResult | None:
        """For a drift check: the request is in sync with the bucket's rules as read
        less than interval / RULES_SEEN_SHARE ago by any policy of the bucket (one read serves
        them all); None when it is not, or nothing recent was read."""
        key, now = store.identity, time.monotonic()
        with self._index_lock:
            seen = self._rules_seen.get(key)
        if seen is None or now - seen[0] >= self.interval / RULES_SEEN_SHARE:
            rules = store.get_rules()
            with self._index_lock:
                self._rules_seen[key] = (now, rules)
        else:
            rules = seen[1]
        owned = request.owned
        if endpoint in self.no_abort_multipart:
            owned = tuple(r for r in owned if "AbortIncompleteMultipartUpload" not in r)
        if not rules_in_sync(rules, owned, request.owner_prefix):
            return None
        return SyncResult(
            owned,
            True,
            False,
            summary=summarize(owned),
            abort_multipart_supported=False if endpoint in self.no_abort_multipart else None,
        )

    def _sync_rules(self, store: BucketClient, endpoint: str, request: RuleRequest) -> SyncResult:
        """This policy's rules written together with those of every policy of the same
        bucket (and credentials) syncing at the same moment: one read and at most
        one write per batch (:mod:`citus_backup.reconcile.groupcommit`)."""

        def run(requests: Sequence[RuleRequest]) -> list[SyncResult | RuleLimitError]:
            with self.deps.locked("bucket-lifecycle", endpoint, store.bucket):
                try:
                    outcomes = sync_many(
                        store, requests, abort_multipart=endpoint not in self.no_abort_multipart
                    )
                finally:
                    with self._index_lock:  # the drift checks' copy is stale now
                        self._rules_seen.pop(store.identity, None)
            return [outcomes[r.owner_prefix] for r in requests]

        outcome = self._batches.submit(store.identity, request, run)
        if isinstance(outcome, RuleLimitError):
            raise outcome
        return outcome

    def _recorded(self, policy: CitusBackupPolicy, summary: Sequence[Any], message: str) -> bool:
        """The status already says "in sync" with these rules and this message, written
        less than LAST_SYNC_REFRESH ago (a drift check that finds nothing writes nothing)."""
        lifecycle = policy.status.lifecycle
        condition = find_condition(policy.status.conditions, ConditionType.LIFECYCLE_IN_SYNC)
        if lifecycle is None or not lifecycle.in_sync or lifecycle.last_sync_time is None:
            return False
        if condition is None or condition.status != "True" or condition.message != message:
            return False
        if condition.observed_generation != policy.metadata.generation:
            return False
        if tuple(lifecycle.rules) != tuple(summary):
            return False
        age = (self.deps.clock() - lifecycle.last_sync_time).total_seconds()
        return age < LAST_SYNC_REFRESH

    def _bucket_lock(self, policy: CitusBackupPolicy) -> contextlib.AbstractContextManager[None]:
        """One read-modify-write of a bucket's lifecycle configuration at a time in this
        process: S3 has no precondition on it, so two policies of one bucket writing at
        once would drop each other's rules (until the next pass)."""
        storage = policy.spec.storage
        return self.deps.locked("bucket-lifecycle", storage.endpoint.lower(), storage.bucket)

    def _bucket_for_deletion(self, policy: CitusBackupPolicy) -> BucketClient:
        """A client from the Secrets, else the one of the last pass (kept in memory).

        Deleting a namespace deletes its Secrets and policies together: the
        credentials may be gone by the time the finalizer runs.
        """
        try:
            return self.buckets(policy)
        except PermanentError as err:
            cached = self._clients.get(policy.metadata.uid or "")
            if cached is None or err.reason not in _KNOWN_REASONS:
                raise
            return cached

    def finalize(self, body: Mapping[str, Any], retry: int = 0) -> None:
        """Remove the policy's rules (and data if asked); then release our finalizer.

        Outcomes are logged, not posted as Events: a namespace being deleted
        refuses new Events, and that is the common way policies go.
        """
        meta = body.get("metadata", {})
        if FINALIZER not in (meta.get("finalizers") or []):
            return
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        try:
            policy = parse(CitusBackupPolicy, body)
            store = self._bucket_for_deletion(policy)
            with self._bucket_lock(policy):
                removed = remove_rules(store, namespace, name)
            if removed:
                logger.info("%s %s/%s: lifecycle rules removed", RULES_REMOVED, namespace, name)
            if policy.spec.delete_data_on_policy_deletion:
                prefix = policy_prefix(policy.spec.storage.prefix)
                count = store.remove_prefix(prefix)
                logger.info(
                    "%s %s/%s: deleteDataOnPolicyDeletion: %d object(s) under s3://%s/%s deleted",
                    DATA_DELETED,
                    namespace,
                    name,
                    count,
                    policy.spec.storage.bucket,
                    prefix,
                )
        except CitusBackupError as err:
            if isinstance(err, TransientError) and retry < FINALIZE_RETRIES:
                raise kopf.TemporaryError(err.message, delay=FINALIZE_DELAY) from None
            logger.warning(
                "%s %s/%s: policy deleted but its lifecycle rules (IDs citusbackup.%s.%s.*) "
                "could not be removed: %s",
                RULES_NOT_REMOVED,
                namespace,
                name,
                namespace,
                name,
                err.message,
            )
        self._clients.pop(meta.get("uid") or "", None)
        if self.finalizers is not None:
            fresh = self.deps.cluster.get(Kind.POLICY, namespace, name)  # current resourceVersion
            if fresh is not None:
                self.finalizers.remove(fresh)

    # ------------------------------------------------------------------ periodic pass

    def periodic(
        self, name: str, namespace: str, body: Mapping[str, Any], *, catalogue: bool
    ) -> None:
        """The drift check of one policy's rules (and, when ``catalogue``, its catalogue).

        Called by the policy's scheduler daemon every :attr:`interval` seconds
        (jittered, :mod:`citus_backup.controllers`): one periodic task per policy
        instead of two. Changes of the policy are synced at once by the
        create/update handlers; this pass only finds what changed in the bucket.
        """
        self.sync(name, namespace, body, drift_check=True)
        if catalogue:
            self.sync_catalogue(name, namespace, body)

    # ------------------------------------------------------------------ catalogue

    def sync_catalogue(
        self, name: str, namespace: str, body: Mapping[str, Any] | None = None
    ) -> None:
        """Mark expired CitusBackups, import unknown complete sets (see :mod:`.catalogue`).

        ``body``: the policy as kopf's watch last saw it (else it is read).
        """
        if body is None:
            body = self.deps.cluster.get(Kind.POLICY, namespace, name)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            return
        try:
            policy = parse(CitusBackupPolicy, body)
            if overlapping_policy(policy, self._policies(namespace)) is not None:
                return  # whose sets are they? not ours to judge
            store = self.buckets(policy)
            keys = list(store.list_keys(policy_prefix(policy.spec.storage.prefix)))
        except CitusBackupError as err:
            logger.info("catalogue of %s/%s skipped: %s", namespace, name, err.message)
            return
        backups = []
        for item in self.deps.cluster.list(Kind.BACKUP, namespace):
            if item.get("spec", {}).get("policyName") != name:
                continue
            with contextlib.suppress(CitusBackupError):
                backups.append(parse(CitusBackup, item))
        now = self.deps.clock()
        todo = catalogue.plan(
            policy, backups, catalogue.scan(keys, policy.spec.storage.prefix), now=now
        )
        by_name = {b.name: b for b in backups}
        for backup_name, patch in todo.status_patches:
            self.deps.cluster.patch_status(Kind.BACKUP, namespace, backup_name, patch)
            if backup_name in todo.expired:
                self.deps.events.emit(
                    by_name[backup_name].model_dump(mode="json", by_alias=True),
                    WARNING,
                    str(Reason.DATA_EXPIRED),
                    patch["conditions"][-1]["message"],
                )
        for entry in todo.imports:
            self._import(policy, store, entry)

    def _import(
        self, policy: CitusBackupPolicy, store: BucketClient, entry: catalogue.BucketSet
    ) -> None:
        namespace = policy.namespace or ""
        manifest: Manifest | None = None
        prefix = policy.spec.storage.prefix.strip("/")
        key = f"{prefix}/{entry.complete_tiers[0]}/{entry.backup_id}/manifest.json"
        with contextlib.suppress(CitusBackupError, ValueError):
            manifest = Manifest.from_json(store.read(key))
        body = catalogue.import_body(policy, entry)
        name = body["metadata"]["name"]
        # The backup controller's lock: its timer cannot look at the new object (and start a
        # Job for an empty status) before the status says Succeeded.
        with self.deps.locked("CitusBackup", namespace, name):
            if not self.deps.cluster.create(Kind.BACKUP, namespace, body):
                return  # exists (a previous pass, or a name clash): leave it alone
            status = catalogue.import_status(policy, entry, manifest, now=self.deps.clock())
            self.deps.cluster.patch_status(Kind.BACKUP, namespace, name, status)
        self.deps.events.emit(body, NORMAL, BACKUP_IMPORTED, status["message"])


def interval_from_env() -> float:
    value = os.environ.get(INTERVAL_ENV)
    try:
        return float(value) if value else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


def register(
    registry: kopf.OperatorRegistry,
    deps: Deps,
    *,
    interval: float | None = None,
    controller: RetentionController | None = None,
    buckets: BucketFactory | None = None,
) -> RetentionController:
    """Register the retention handlers on ``registry``; returns the controller.

    ``buckets``: the operator's bucket clients (shared with the progress reader).
    """
    if controller is None:
        from citus_backup.clients.kube import api_client  # noqa: PLC0415

        client = api_client()
        controller = RetentionController(deps, buckets or bucket_factory(deps), Finalizers(client))
    every = interval or interval_from_env()
    ctl = controller
    plural = Kind.POLICY.value

    def transient(call: Callable[[], None]) -> None:
        try:
            call()
        except TransientError as err:
            raise kopf.TemporaryError(err.message, delay=err.delay) from None

    @kopf.on.resume(GROUP, VERSION, plural, registry=registry, id="lifecycle-resume")
    @kopf.on.create(GROUP, VERSION, plural, registry=registry, id="lifecycle-create")
    @kopf.on.update(GROUP, VERSION, plural, registry=registry, id="lifecycle-update", field="spec")
    def lifecycle_changed(name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
        seen = copy.deepcopy(dict(body))  # kopf's view of the event: no GET
        transient(lambda: ctl.sync(name, namespace or "", seen))

    @kopf.on.event(GROUP, VERSION, plural, registry=registry, id="lifecycle-index")
    def policy_seen(type: str, body: kopf.Body, **_: Any) -> None:
        ctl.observe(body, deleted=type == "DELETED")

    # Not optional: kopf keeps its own finalizer for this handler and so always runs it on
    # deletion. (Optional, it relied on kopf's finalizer being there for a periodic task;
    # once the daemon was the only one and exited on seeing the deletion, kopf dropped its
    # finalizer, never ran this handler, and ours kept the policy forever.)
    @kopf.on.delete(GROUP, VERSION, plural, registry=registry, id="lifecycle-delete")
    def lifecycle_deleted(body: kopf.Body, retry: int, **_: Any) -> None:
        transient(lambda: ctl.finalize(dict(body), retry))

    del lifecycle_changed, lifecycle_deleted, policy_seen
    ctl.interval = every
    return ctl
