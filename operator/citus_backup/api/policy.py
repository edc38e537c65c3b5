"""CitusBackupPolicy: where and when to back up a Citus coordinator, and how long to keep it.

A policy names the coordinator to dump (connection + databases), the S3/MinIO
location (endpoint, bucket, prefix, credentials), the schedule (cron + IANA
time zone) and the retention. Every scheduled run creates a CitusBackup; the
bucket's lifecycle rules, derived from ``retention``, expire old backups.

Storage layout (written by the runner, expired by lifecycle rules)::

    <prefix>/<tier>/<backupId>/...     tier = daily | weekly | monthly | yearly

Retention: either a ``preset`` or explicit tiers, never both.

* ``standard``: daily kept 30 days, monthly kept 365 days.
* ``minimal``: daily kept 7 days, monthly kept 90 days.
* explicit: any of ``daily``/``weekly``/``monthly``/``yearly``, each with
  ``keepDays: N`` or ``forever: true`` (no expiration rule for that tier). A
  tier that is absent is not produced at all.

Which tiers a scheduled run goes to (see :mod:`citus_backup.specs.retention`):
every run goes to the most frequent enabled tier (the *base* tier, usually
``daily``); the first run of an ISO week / month / year, in the policy's time
zone, also goes to ``weekly`` / ``monthly`` / ``yearly`` when enabled.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import AwareDatetime, ConfigDict, Field, field_validator, model_validator
from pydantic.config import JsonDict

from citus_backup.api.common import (
    AGE_COLUMN,
    API_VERSION,
    DNS_LABEL_PATTERN,
    ApiModel,
    CertificateSource,
    Condition,
    ConditionType,
    DNSSubdomain,
    KindInfo,
    NonNegativeInt,
    ObjectMeta,
    PgIdentifier,
    Port,
    PrinterColumn,
    Quantity,
    Resource,
    SecretKeyRef,
    StatusModel,
    cel,
    check_unique,
    conditions_field,
    list_type_set,
)
from citus_backup.api.validation import CRON_PATTERN, TIME_ZONE_PATTERN, check_cron, check_time_zone

KIND: Final = "CitusBackupPolicy"

# --------------------------------------------------------------------------- enums


class Tier(StrEnum):
    """A retention tier; a backup is stored under ``<prefix>/<tier>/<backupId>/``."""

    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    YEARLY = "yearly"


#: Most frequent first; the first enabled tier is the policy's base tier.
TIER_ORDER: tuple[Tier, ...] = (Tier.DAILY, Tier.WEEKLY, Tier.MONTHLY, Tier.YEARLY)


class RetentionPreset(StrEnum):
    """A named retention: standard (daily 30 days + monthly 365 days) or minimal (7 + 90)."""

    STANDARD = "standard"
    MINIMAL = "minimal"


#: Days each tier of a preset is kept (``None`` would mean forever).
PRESET_DAYS: dict[RetentionPreset, dict[Tier, int | None]] = {
    RetentionPreset.STANDARD: {Tier.DAILY: 30, Tier.MONTHLY: 365},
    RetentionPreset.MINIMAL: {Tier.DAILY: 7, Tier.MONTHLY: 90},
}


class SSLMode(StrEnum):
    """libpq sslmode for the connection to PostgreSQL."""

    DISABLE = "disable"
    ALLOW = "allow"
    PREFER = "prefer"
    REQUIRE = "require"
    VERIFY_CA = "verify-ca"
    VERIFY_FULL = "verify-full"


# --------------------------------------------------------------------------- connection

HOST_PATTERN = r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?|\[?[0-9A-Fa-f:.]+\]?)$"


class PostgresConnection(ApiModel):
    """How a Job connects to PostgreSQL (a Citus coordinator)."""

    host: Annotated[str, Field(min_length=1, max_length=253, pattern=HOST_PATTERN)] = Field(
        description="Host name or IP address of the PostgreSQL server (the Citus coordinator), "
        "e.g. the coordinator's Service: citus-coordinator.citus.svc."
    )
    port: Port = Field(5432, description="TCP port of the PostgreSQL server.")
    user: PgIdentifier = Field(
        "postgres",
        description="Role to connect as. Backups need to read every database and the roles "
        "(pg_dumpall --globals-only); restores need to create databases: use a superuser.",
    )
    password_secret_ref: SecretKeyRef = Field(
        description="Secret key holding the role's password; passed to the Job only as an "
        "environment variable from the Secret (PGPASSWORD), never in arguments."
    )
    ssl_mode: SSLMode = Field(
        SSLMode.PREFER,
        description="libpq sslmode: disable, allow, prefer, require, verify-ca or verify-full.",
    )
    ssl_root_cert: CertificateSource | None = Field(
        None,
        description="CA bundle that signed the server's certificate, for sslMode verify-ca or "
        "verify-full; mounted into the Job and passed as PGSSLROOTCERT.",
    )


DATABASE_LIST_MAX = 256


class CoordinatorSpec(PostgresConnection):
    """The Citus coordinator to back up, and which of its databases."""

    include_databases: tuple[PgIdentifier, ...] = Field(
        (),
        max_length=DATABASE_LIST_MAX,
        description="Databases to back up. Empty: every database except templates "
        "(template0, template1).",
        json_schema_extra=list_type_set(),
    )
    exclude_databases: tuple[PgIdentifier, ...] = Field(
        (),
        max_length=DATABASE_LIST_MAX,
        description="Databases never to back up; applied after includeDatabases.",
        json_schema_extra=list_type_set(),
    )

    @field_validator("include_databases", "exclude_databases")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        check_unique(value, "databases")
        return value


# --------------------------------------------------------------------------- storage

ENDPOINT_PATTERN = r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$"
#: S3 bucket naming rules (lowercase, digits, '.', '-', 3-63 characters).
BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
PREFIX_PATTERN = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"
REGION_PATTERN = r"^[a-z0-9][a-z0-9-]*$"

ENDPOINT_SCHEME_MESSAGE = (
    "endpoint is host[:port] without a scheme; set secure: false for plain http"
)
BUCKET_DOTS_MESSAGE = "bucket names must not contain two adjacent periods"
CA_NEEDS_SECURE_MESSAGE = "ca requires secure: true"
SKIP_VERIFY_NEEDS_SECURE_MESSAGE = "insecureSkipVerify requires secure: true"
CA_AND_SKIP_VERIFY_MESSAGE = "ca and insecureSkipVerify are mutually exclusive"


class StorageSpec(ApiModel):
    """The S3-compatible object store (MinIO, AWS S3, ...) backups are written to."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!has(self.ca) || !has(self.secure) || self.secure", CA_NEEDS_SECURE_MESSAGE),
                cel(
                    "!has(self.insecureSkipVerify) || !self.insecureSkipVerify || "
                    "!has(self.secure) || self.secure",
                    SKIP_VERIFY_NEEDS_SECURE_MESSAGE,
                ),
                cel(
                    "!has(self.ca) || !has(self.insecureSkipVerify) || !self.insecureSkipVerify",
                    CA_AND_SKIP_VERIFY_MESSAGE,
                ),
            ]
        }
    )

    endpoint: Annotated[str, Field(min_length=1, max_length=261, pattern=ENDPOINT_PATTERN)] = Field(
        description="host[:port] of the S3 API, without a scheme, e.g. minio.minio.svc:9000 or "
        "s3.eu-west-1.amazonaws.com.",
        json_schema_extra={
            "x-kubernetes-validations": [cel("!self.contains('://')", ENDPOINT_SCHEME_MESSAGE)]
        },
    )
    secure: bool = Field(True, description="Use https (TLS) to talk to the endpoint.")
    region: Annotated[str, Field(max_length=64, pattern=REGION_PATTERN)] | None = Field(
        None, description="Region of the bucket; empty lets the client discover it."
    )
    ca: CertificateSource | None = Field(
        None,
        description="CA bundle that signed the endpoint's certificate (when it is not a public "
        "CA); mounted into the Job.",
    )
    insecure_skip_verify: bool = Field(
        False,
        description="Do not verify the endpoint's TLS certificate. For tests only: prefer ca.",
    )
    bucket: Annotated[str, Field(min_length=3, max_length=63, pattern=BUCKET_PATTERN)] = Field(
        description="Bucket backups are written to; it must exist. Its lifecycle rules are "
        "managed for this policy's prefix (rules of others are left alone).",
        json_schema_extra={
            "x-kubernetes-validations": [cel("!self.contains('..')", BUCKET_DOTS_MESSAGE)]
        },
    )
    prefix: Annotated[str, Field(min_length=1, max_length=200, pattern=PREFIX_PATTERN)] = Field(
        "citus",
        description="Key prefix of this policy's backups, without leading or trailing slash; "
        "backups go to <prefix>/<tier>/<backupId>/. Two policies must not share a bucket with "
        "overlapping prefixes.",
    )
    access_key_id_secret_ref: SecretKeyRef = Field(
        description="Secret key holding the S3 access key id (MinIO: the user name)."
    )
    secret_access_key_secret_ref: SecretKeyRef = Field(
        description="Secret key holding the S3 secret access key (MinIO: the password)."
    )

    @field_validator("endpoint", mode="before")
    @classmethod
    def _endpoint(cls, value: object) -> object:
        # Before the pattern check, to give the common mistake a clear message.
        if isinstance(value, str) and "://" in value:
            raise ValueError(ENDPOINT_SCHEME_MESSAGE)
        return value

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if ".." in value:
            raise ValueError(BUCKET_DOTS_MESSAGE)
        return value

    @model_validator(mode="after")
    def _tls(self) -> StorageSpec:
        if self.ca is not None and not self.secure:
            raise ValueError(CA_NEEDS_SECURE_MESSAGE)
        if self.insecure_skip_verify and not self.secure:
            raise ValueError(SKIP_VERIFY_NEEDS_SECURE_MESSAGE)
        if self.ca is not None and self.insecure_skip_verify:
            raise ValueError(CA_AND_SKIP_VERIFY_MESSAGE)
        return self

    @property
    def endpoint_url(self) -> str:
        """``https://host:port`` or ``http://host:port``."""
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"


# --------------------------------------------------------------------------- retention

MAX_KEEP_DAYS = 36500
RETENTION_TIER_MESSAGE = "set exactly one of keepDays or forever: true"
RETENTION_EXCLUSIVE_MESSAGE = (
    "set either preset or one or more explicit tiers (daily, weekly, monthly, yearly), "
    "not both and not neither"
)


class RetentionTier(ApiModel):
    """How long the backups of one tier are kept: keepDays: N, or forever: true."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.keepDays) != (has(self.forever) && self.forever)",
                    RETENTION_TIER_MESSAGE,
                )
            ]
        }
    )

    keep_days: Annotated[int, Field(ge=1, le=MAX_KEEP_DAYS)] | None = Field(
        None,
        description="Days after which a backup of this tier is deleted by the bucket's lifecycle "
        "rule (the newest successful backup is never deleted).",
    )
    forever: bool = Field(
        False, description="Keep this tier's backups forever (no lifecycle rule for the tier)."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> RetentionTier:
        if (self.keep_days is not None) == self.forever:
            raise ValueError(RETENTION_TIER_MESSAGE)
        return self

    @property
    def days(self) -> int | None:
        """Days to keep; ``None`` for forever."""
        return None if self.forever else self.keep_days


class RetentionSpec(ApiModel):
    """Retention of backups: a preset, or explicit days per tier."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.preset) != (has(self.daily) || has(self.weekly) || "
                    "has(self.monthly) || has(self.yearly))",
                    RETENTION_EXCLUSIVE_MESSAGE,
                )
            ]
        }
    )

    preset: RetentionPreset | None = Field(
        None,
        description="Named retention: standard (daily tier kept 30 days, monthly tier kept 365 "
        "days) or minimal (daily 7 days, monthly 90 days). Exclusive with explicit tiers.",
    )
    daily: RetentionTier | None = Field(
        None, description="Retention of the daily tier; absent: no daily tier."
    )
    weekly: RetentionTier | None = Field(
        None,
        description="Retention of the weekly tier (first run of each ISO week); absent: no "
        "weekly tier.",
    )
    monthly: RetentionTier | None = Field(
        None,
        description="Retention of the monthly tier (first run of each month); absent: no "
        "monthly tier.",
    )
    yearly: RetentionTier | None = Field(
        None,
        description="Retention of the yearly tier (first run of each year); absent: no yearly "
        "tier.",
    )

    @model_validator(mode="after")
    def _exclusive(self) -> RetentionSpec:
        explicit = any(t is not None for t in (self.daily, self.weekly, self.monthly, self.yearly))
        if (self.preset is not None) == explicit:
            raise ValueError(RETENTION_EXCLUSIVE_MESSAGE)
        return self

    def tier_days(self) -> dict[Tier, int | None]:
        """Enabled tiers, most frequent first, with their days (``None`` = forever)."""
        if self.preset is not None:
            preset = PRESET_DAYS[self.preset]
            return {tier: preset[tier] for tier in TIER_ORDER if tier in preset}
        explicit = {
            Tier.DAILY: self.daily,
            Tier.WEEKLY: self.weekly,
            Tier.MONTHLY: self.monthly,
            Tier.YEARLY: self.yearly,
        }
        return {tier: spec.days for tier, spec in explicit.items() if spec is not None}

    def enabled_tiers(self) -> tuple[Tier, ...]:
        return tuple(self.tier_days())

    @property
    def base_tier(self) -> Tier:
        """The most frequent enabled tier: every run is stored there."""
        return self.enabled_tiers()[0]


DEFAULT_RETENTION: JsonDict = {"preset": "standard"}


# --------------------------------------------------------------------------- dump options


#: Default of parallelDump.thresholdBytes (1 GiB): the runner's own default
#: (citus_backup.runner.split.DEFAULT_THRESHOLD), not imported here so the API
#: models do not depend on the runner.
DEFAULT_SPLIT_THRESHOLD: Final = 1024**3


class ParallelDump(ApiModel):
    """One large database dumped and restored in parallel parts (docs/split.md)."""

    threshold_bytes: Annotated[int, Field(ge=0)] = Field(
        DEFAULT_SPLIT_THRESHOLD,
        description="A database whose tables total at least this many bytes "
        "(pg_total_relation_size) is split into a schema archive and data parts (one per "
        "large table, and the rest), dumped from one snapshot and restored in parallel; "
        "smaller databases keep one archive. 0: never split. Databases with Citus are "
        "never split. Default 1073741824 (1 GiB).",
    )
    jobs: Annotated[int, Field(ge=1, le=32)] | None = Field(
        None,
        description="Parts of one split database dumped (and restored, and the pg_restore "
        "-j of its indexes and constraints) at once; default: dump.jobs, else the CPUs "
        "available to the Job.",
    )


class DumpOptions(ApiModel):
    """Options of the dump the backup Job runs (pg_dump per database, streamed to S3)."""

    jobs: Annotated[int, Field(ge=1, le=32)] | None = Field(
        None,
        description="Databases dumped (or restored) in parallel; default: the CPUs available "
        "to the Job, at most 8.",
    )
    compression: Annotated[int, Field(ge=0, le=9)] = Field(
        1,
        description="Compression level 0-9 of the dumps (pg_dump --compress; 0: none, "
        "1: fast, 9: smallest and slowest).",
    )
    consistency: Literal["snapshot", "blockWrites"] = Field(
        "snapshot",
        description="How consistent a Citus database's dump is under concurrent writes. "
        "snapshot: one coordinator snapshot; each distributed table's shards are read in "
        "their own worker transactions, so rows written during the dump may be in one "
        "table and not in another. blockWrites: writes to the database's Citus tables "
        "wait (reads go on) while it is dumped, so all its tables are from one moment "
        "and its row counts are exact. No effect on databases without Citus.",
    )
    parallel_dump: ParallelDump = Field(
        default_factory=ParallelDump,
        description="Splitting a large database into parts dumped and restored in parallel.",
        json_schema_extra={"default": {}},
    )


# --------------------------------------------------------------------------- job template


class ResourceRequirements(ApiModel):
    """CPU/memory requests and limits of the Job's container."""

    limits: dict[str, Quantity] = Field(
        default_factory=dict, description="Maximum amount of each resource, e.g. memory: 1Gi."
    )
    requests: dict[str, Quantity] = Field(
        default_factory=dict, description="Amount of each resource the scheduler reserves."
    )


class Toleration(ApiModel):
    """A toleration of the Job's pod (core/v1 Toleration)."""

    key: Annotated[str, Field(max_length=317)] | None = Field(
        None, description="Taint key the toleration applies to; empty matches all keys."
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        None, description="Exists or Equal (default Equal)."
    )
    value: Annotated[str, Field(max_length=63)] | None = Field(
        None, description="Taint value the toleration matches (with operator Equal)."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        None, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace."""

    name: DNSSubdomain = Field(description="Name of the object.")


class JobTemplate(ApiModel):
    """Settings of the Jobs the operator creates for backups and restores."""

    image: Annotated[str, Field(min_length=1, max_length=1024)] | None = Field(
        None, description="Image of the runner; default: the operator's own image."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="Image pull policy: Always, IfNotPresent or Never."
    )
    image_pull_secrets: tuple[LocalObjectReference, ...] = Field(
        (), max_length=16, description="Secrets used to pull the image."
    )
    resources: ResourceRequirements | None = Field(
        None, description="CPU/memory requests and limits of the container."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the Job's pod must run on."
    )
    tolerations: tuple[Toleration, ...] = Field(
        (), max_length=64, description="Tolerations of the Job's pod."
    )
    service_account_name: DNSSubdomain | None = Field(
        None, description="Service account of the Job's pod; default: the namespace's default."
    )
    automount_service_account_token: bool = Field(
        False,
        description="Mount the service account token into the pod; the runner does not need "
        "the Kubernetes API.",
    )
    priority_class_name: DNSSubdomain | None = Field(
        None, description="PriorityClass of the Job's pod."
    )
    active_deadline_seconds: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Seconds after which a running Job is stopped and marked failed."
    )
    backoff_limit: Annotated[int, Field(ge=0, le=10)] = Field(
        1, description="Retries of a failed pod before the Job is marked failed."
    )
    ttl_seconds_after_finished: NonNegativeInt | None = Field(
        86400,
        description="Seconds after which a finished Job (and its pod and logs) is deleted.",
    )


# --------------------------------------------------------------------------- verification

VERIFICATION_WHEN_MESSAGE = "verification needs everyNthBackup or schedule (or both)"


class VerificationSpec(ApiModel):
    """Scheduled test restores that prove a backup restores (README: Verification)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.everyNthBackup) || has(self.schedule)", VERIFICATION_WHEN_MESSAGE)
            ]
        }
    )

    every_nth_backup: Annotated[int, Field(ge=1, le=1000)] | None = Field(
        None,
        description="Verify a backup when it succeeds if this many successful backups "
        "(itself included) completed since the newest verified one: 1 verifies every backup.",
    )
    schedule: Annotated[str, Field(min_length=1, max_length=256, pattern=CRON_PATTERN)] | None = (
        Field(
            None,
            description="Cron expression (in the policy's timeZone): verify the newest "
            "successful backup at these times, unless it is already verified.",
        )
    )
    server: PostgresConnection | None = Field(
        None,
        description="Server to restore the scratch databases into; default: the policy's "
        "coordinator. Roles are not restored: on another server the restore runs without "
        "owners and privileges (pg_restore --no-owner --no-privileges).",
    )
    checks_config_map: DNSSubdomain | None = Field(
        None,
        description="ConfigMap (same namespace) whose keys <database>.<check>.sql each hold "
        "a query run in the scratch copy of <database>; it must return one row with true.",
    )

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value)

    @model_validator(mode="after")
    def _when(self) -> VerificationSpec:
        if self.every_nth_backup is None and self.schedule is None:
            raise ValueError(VERIFICATION_WHEN_MESSAGE)
        return self


# --------------------------------------------------------------------------- spec

POLICY_NAME_MESSAGE = (
    "the name of a CitusBackupPolicy must be a DNS label (at most 63 lowercase letters, "
    "digits and '-'): it is used in labels, Job names and lifecycle rule IDs"
)


class CitusBackupPolicySpec(ApiModel):
    """Desired state of a CitusBackupPolicy."""

    schedule: Annotated[str, Field(min_length=1, max_length=256, pattern=CRON_PATTERN)] = Field(
        "0 3 * * *",
        description="Cron expression (minute hour day-of-month month day-of-week, or a macro "
        "such as @daily) in timeZone. A local time skipped by a daylight-saving change runs "
        "once, shifted forward by the change (02:30 becomes 03:30); a local time repeated by a "
        "change runs once, at its first occurrence.",
    )
    time_zone: Annotated[str, Field(min_length=1, max_length=64, pattern=TIME_ZONE_PATTERN)] = (
        Field("UTC", description="IANA time zone of schedule, e.g. UTC, Europe/Madrid.")
    )
    suspend: bool = Field(
        False,
        description="Stop creating scheduled backups; running backups and manual CitusBackups "
        "are not affected.",
    )
    starting_deadline_seconds: NonNegativeInt | None = Field(
        None,
        description="Catch-up window: a scheduled run missed (e.g. operator down) is started "
        "late only if no more than this many seconds have passed since its scheduled time; "
        "only the most recent missed run is started. Absent: always catch up the most recent "
        "missed run.",
    )
    coordinator: CoordinatorSpec = Field(
        description="The Citus coordinator to back up and its databases."
    )
    storage: StorageSpec = Field(description="Where backups are written (S3/MinIO).")
    retention: RetentionSpec = Field(
        default_factory=lambda: RetentionSpec.model_validate(DEFAULT_RETENTION),
        # No CRD default: a defaulted preset would clash with explicit tiers added later by
        # `kubectl apply` (preset and tiers are exclusive). Absent means standard.
        description="How long backups are kept. Absent: preset standard.",
    )
    dump: DumpOptions = Field(
        default_factory=DumpOptions,
        description="Dump options: parallelism and compression.",
        json_schema_extra={"default": {}},
    )
    delete_data_on_policy_deletion: bool = Field(
        False,
        description="When the policy is deleted, also delete its backups from the bucket. "
        "Default false: deleting a policy never deletes backup data (its lifecycle rules are "
        "removed, so nothing expires any more either).",
    )
    job_template: JobTemplate = Field(
        default_factory=JobTemplate,
        description="Settings of the backup and restore Jobs (image, resources, scheduling, "
        "deadlines).",
        json_schema_extra={"default": {}},
    )
    verification: VerificationSpec | None = Field(
        None,
        description="Test restores of this policy's backups into scratch databases, with row "
        "counts and optional SQL checks compared; absent: no verification.",
    )

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        return check_cron(value)

    @field_validator("time_zone")
    @classmethod
    def _time_zone(cls, value: str) -> str:
        return check_time_zone(value)


# --------------------------------------------------------------------------- status


class BackupRef(StatusModel):
    """A backup of this policy."""

    name: str = Field(description="Name of the CitusBackup.")
    time: AwareDatetime | None = Field(None, description="When the backup completed.")


class LifecycleRuleSummary(StatusModel):
    """One lifecycle rule the operator manages for this policy."""

    id: str = Field(description="Rule ID in the bucket's lifecycle configuration.")
    prefix: str = Field(description="Key prefix the rule applies to.")
    expiration_days: int | None = Field(
        None, description="Days after which objects expire; absent for non-expiration rules."
    )
    abort_incomplete_multipart_upload_days: int | None = Field(
        None, description="Days after which incomplete multipart uploads are aborted."
    )


class LifecycleStatus(StatusModel):
    """State of the bucket lifecycle rules derived from retention."""

    rules: tuple[LifecycleRuleSummary, ...] = Field(
        (), description="Rules the operator manages for this policy."
    )
    in_sync: bool | None = Field(
        None, description="Whether the bucket's rules matched the desired ones at lastSyncTime."
    )
    last_sync_time: AwareDatetime | None = Field(
        None,
        description="When the rules were last written or found changed; a check that finds "
        "them in sync refreshes it at most hourly (it writes nothing otherwise).",
    )


class VerificationRef(StatusModel):
    """The newest verification of one of this policy's backups."""

    backup_name: str = Field(description="The CitusBackup verified.")
    restore_name: str = Field(description="The verification CitusRestore.")
    time: AwareDatetime | None = Field(None, description="When the verification ended.")
    succeeded: bool = Field(description="Whether the backup restored and every check passed.")
    reason: str | None = Field(None, description="CamelCase reason of the result.")
    message: Annotated[str, Field(max_length=32768)] | None = Field(
        None, description="What was checked, or why it failed."
    )


class CitusBackupPolicyStatus(StatusModel):
    """Observed state of a CitusBackupPolicy."""

    conditions: tuple[Condition, ...] = conditions_field(
        "Ready: spec valid, Secrets present, storage reachable. LastBackupSucceeded: result of "
        "the most recent backup. LifecycleInSync: bucket lifecycle rules match retention."
    )
    observed_generation: NonNegativeInt | None = Field(
        None, description="metadata.generation the status was computed for."
    )
    last_schedule_time: AwareDatetime | None = Field(
        None, description="Scheduled time of the most recent run started (or skipped)."
    )
    next_schedule_time: AwareDatetime | None = Field(
        None, description="Next scheduled run; absent while suspended."
    )
    last_successful_backup: BackupRef | None = Field(
        None, description="The most recent successful backup."
    )
    last_failure_message: Annotated[str, Field(max_length=32768)] | None = Field(
        None, description="Message of the most recent failed backup."
    )
    lifecycle: LifecycleStatus | None = Field(
        None, description="Bucket lifecycle rules derived from retention."
    )
    last_verification: VerificationRef | None = Field(
        None, description="The newest verification of this policy's backups."
    )
    last_verification_schedule_time: AwareDatetime | None = Field(
        None, description="Scheduled time of the newest verification started by schedule."
    )


# --------------------------------------------------------------------------- resource


def check_policy_name(name: str) -> str:
    """Policy names are DNS labels (the API server checks the same with a CEL rule)."""
    if name and (len(name) > 63 or not re.match(DNS_LABEL_PATTERN, name)):
        raise ValueError(POLICY_NAME_MESSAGE)
    return name


class CitusBackupPolicy(Resource):
    """A CitusBackupPolicy resource (apiVersion, kind, metadata, spec, status)."""

    api_version: Literal["citusbackup.io/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["CitusBackupPolicy"] = KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: CitusBackupPolicySpec
    status: CitusBackupPolicyStatus = Field(default_factory=CitusBackupPolicyStatus)

    @field_validator("metadata")
    @classmethod
    def _name(cls, value: ObjectMeta) -> ObjectMeta:
        check_policy_name(value.name)
        return value


KIND_INFO = KindInfo(
    kind=KIND,
    plural="citusbackuppolicies",
    singular="citusbackuppolicy",
    short_names=("cbp",),
    description="CitusBackupPolicy schedules backups of a Citus (PostgreSQL) coordinator into "
    "an S3/MinIO bucket and keeps them according to its retention.",
    spec_model=CitusBackupPolicySpec,
    status_model=CitusBackupPolicyStatus,
    printer_columns=(
        PrinterColumn("Schedule", ".spec.schedule", "string", "Cron schedule."),
        PrinterColumn("Suspended", ".spec.suspend", "boolean", "Whether scheduling is suspended."),
        PrinterColumn(
            "Last Backup",
            ".status.lastSuccessfulBackup.time",
            "date",
            "Time since the most recent successful backup.",
        ),
        PrinterColumn(
            "Last Result",
            f'.status.conditions[?(@.type=="{ConditionType.LAST_BACKUP_SUCCEEDED}")].reason',
            "string",
            "Result of the most recent backup.",
        ),
        # A future time in a "date" column prints as <invalid>: show the timestamp.
        PrinterColumn("Next Run", ".status.nextScheduleTime", "string", "Next scheduled run."),
        AGE_COLUMN,
        PrinterColumn("Time Zone", ".spec.timeZone", "string", "Time zone of schedule.", 1),
        PrinterColumn("Bucket", ".spec.storage.bucket", "string", "Bucket of the backups.", 1),
        PrinterColumn("Prefix", ".spec.storage.prefix", "string", "Key prefix of the backups.", 1),
    ),
    root_validations=(
        cel(
            "size(self.metadata.name) <= 63 && "
            "self.metadata.name.matches('" + DNS_LABEL_PATTERN + "')",
            POLICY_NAME_MESSAGE,
        ),
    ),
)
