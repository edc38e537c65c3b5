"""Types shared by the three kinds: base models, references, conditions, phases, reasons.

Conventions (``kubectl explain`` shows every ``description``):

* Spec models are frozen, camelCase on the wire (``alias_generator``) and
  accept snake_case field names in Python (``populate_by_name``); unknown spec
  fields are rejected (``extra="forbid"``) so that a typo in a manifest read
  by the CLI fails loudly, as the API server's structural schema would prune
  it. Status models ignore unknown fields so that an older operator can read a
  status written by a newer one.
* Constraints live in the types (``Annotated[int, Field(ge=1)]``, ``Literal``,
  regex patterns) so that :mod:`citus_backup.api.crdgen` derives the same
  constraints for the CRD's OpenAPI schema.
* Cross-field rules are written twice, on purpose: once as a CEL rule in
  ``x-kubernetes-validations`` (enforced by the API server) and once as a
  pydantic validator with the *same message* (enforced when the models parse a
  manifest outside a cluster). :func:`cel` builds the CEL entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

GROUP: Final = "citusbackup.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = "citusbackup.io/v1alpha1"
#: ``kubectl get citus-backup`` lists the three kinds. Not ``citusbackup``: kubectl expands a
#: category before a kind's singular name, so ``kubectl get citusbackup NAME`` would break.
CATEGORY: Final = "citus-backup"

# --------------------------------------------------------------------------- base models


class ApiModel(BaseModel):
    """Base of every spec model: frozen, camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="forbid",
    )

    def to_dict(self) -> dict[str, Any]:
        """The camelCase JSON form, without unset optional fields (as sent to the API)."""
        result: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return result


class StatusModel(ApiModel):
    """Base of status models: unknown fields (written by a newer operator) are ignored."""

    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------- constrained types

#: RFC 1123 label: lowercase alphanumerics and '-', at most 63 characters.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: RFC 1123 subdomain: dot-separated labels, at most 253 characters.
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: Keys of Secrets and ConfigMaps.
CONFIG_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
#: Kubernetes resource quantities (``500m``, ``1Gi``, ``2``).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

DNSLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
DNSSubdomain = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
ConfigKey = Annotated[str, Field(min_length=1, max_length=253, pattern=CONFIG_KEY_PATTERN)]
#: A PostgreSQL identifier (database, role, schema): at most 63 bytes (NAMEDATALEN - 1).
PgIdentifier = Annotated[str, Field(min_length=1, max_length=63)]
Port = Annotated[int, Field(ge=1, le=65535)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Quantity = int | Annotated[str, Field(pattern=QUANTITY_PATTERN)]


def cel(rule: str, message: str) -> JsonDict:
    """One ``x-kubernetes-validations`` entry."""
    return {"rule": rule, "message": message}


def list_type_set() -> JsonDict:
    """``json_schema_extra`` for a list of unique scalars (the API server rejects duplicates)."""
    return {"x-kubernetes-list-type": "set"}


def check_unique(values: Sequence[object], field_name: str) -> None:
    """Pydantic-side twin of ``x-kubernetes-list-type: set``."""
    seen: set[object] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{field_name}: duplicate entry {value!r}")
        seen.add(value)


# --------------------------------------------------------------------------- references


class SecretKeyRef(ApiModel):
    """A key of a Secret in the namespace of the resource."""

    name: DNSSubdomain = Field(description="Name of the Secret, in the resource's namespace.")
    key: ConfigKey = Field(description="Key inside the Secret whose value is used.")


class ConfigMapKeyRef(ApiModel):
    """A key of a ConfigMap in the namespace of the resource."""

    name: DNSSubdomain = Field(description="Name of the ConfigMap, in the resource's namespace.")
    key: ConfigKey = Field(description="Key inside the ConfigMap whose value is used.")


CERTIFICATE_SOURCE_MESSAGE = "set exactly one of secretKeyRef or configMapKeyRef"


class CertificateSource(ApiModel):
    """A PEM certificate bundle read from a key of a Secret or of a ConfigMap."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.secretKeyRef) != has(self.configMapKeyRef)",
                    CERTIFICATE_SOURCE_MESSAGE,
                )
            ]
        }
    )

    secret_key_ref: SecretKeyRef | None = Field(
        None, description="Read the PEM bundle from this Secret key."
    )
    config_map_key_ref: ConfigMapKeyRef | None = Field(
        None, description="Read the PEM bundle from this ConfigMap key."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> CertificateSource:
        if (self.secret_key_ref is None) == (self.config_map_key_ref is None):
            raise ValueError(CERTIFICATE_SOURCE_MESSAGE)
        return self


# --------------------------------------------------------------------------- phases, conditions


class Phase(StrEnum):
    """Lifecycle phase of a CitusBackup or CitusRestore."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def finished(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class ConditionType(StrEnum):
    """Condition types the operator sets."""

    #: CitusBackupPolicy: spec valid, Secrets present, storage reachable, schedule active.
    READY = "Ready"
    #: CitusBackupPolicy: whether the most recent backup of the policy succeeded.
    LAST_BACKUP_SUCCEEDED = "LastBackupSucceeded"
    #: CitusBackupPolicy: whether the bucket's lifecycle rules match the retention.
    LIFECYCLE_IN_SYNC = "LifecycleInSync"
    #: CitusBackup / CitusRestore: terminal result (Unknown while running).
    SUCCEEDED = "Succeeded"
    #: CitusBackup: whether its data is still in the bucket (False once expired).
    RESTORABLE = "Restorable"
    #: CitusRestore of a Citus backup: True when the distribution was rebuilt
    #: (and checked against the backup), False when the target has no Citus and
    #: the tables came back local. Absent for backups without Citus.
    CITUS_DISTRIBUTED = "CitusDistributed"
    #: CitusBackup: result of the newest verification (a test restore into a
    #: scratch database) of this backup; absent until one ran.
    VERIFIED = "Verified"


class Reason(StrEnum):
    """CamelCase reasons used in conditions and Events (and by :mod:`citus_backup.errors`)."""

    # generic
    RECONCILED = "Reconciled"
    INVALID_SPEC = "InvalidSpec"
    SECRET_NOT_FOUND = "SecretNotFound"  # noqa: S105 (a reason, not a secret)
    SECRET_KEY_MISSING = "SecretKeyMissing"  # noqa: S105
    CONFIG_MAP_NOT_FOUND = "ConfigMapNotFound"
    POLICY_NOT_FOUND = "PolicyNotFound"
    CONFLICT = "Conflict"
    STORAGE_UNREACHABLE = "StorageUnreachable"
    BUCKET_NOT_FOUND = "BucketNotFound"
    PREFIX_OVERLAP = "PrefixOverlap"
    SUSPENDED = "Suspended"
    # jobs
    PENDING = "Pending"
    JOB_CREATED = "JobCreated"
    JOB_RUNNING = "JobRunning"
    JOB_FAILED = "JobFailed"
    JOB_DEADLINE_EXCEEDED = "JobDeadlineExceeded"
    JOB_NOT_FOUND = "JobNotFound"
    # backups
    NO_BACKUP_YET = "NoBackupYet"
    BACKUP_RUNNING = "BackupRunning"
    BACKUP_SUCCEEDED = "BackupSucceeded"
    BACKUP_FAILED = "BackupFailed"
    MISSED_SCHEDULE = "MissedSchedule"
    # restores
    BACKUP_NOT_FOUND = "BackupNotFound"
    BACKUP_NOT_SUCCEEDED = "BackupNotSucceeded"
    TARGET_EXISTS = "TargetExists"
    RESTORE_RUNNING = "RestoreRunning"
    RESTORE_SUCCEEDED = "RestoreSucceeded"
    RESTORE_FAILED = "RestoreFailed"
    # lifecycle rules
    LIFECYCLE_IN_SYNC = "LifecycleInSync"
    LIFECYCLE_OUT_OF_SYNC = "LifecycleOutOfSync"
    LIFECYCLE_UPDATE_FAILED = "LifecycleUpdateFailed"
    LIFECYCLE_RULE_LIMIT = "LifecycleRuleLimit"
    # catalogue (is a backup's data still in the bucket)
    DATA_PRESENT = "DataPresent"
    DATA_EXPIRED = "DataExpired"
    # Citus distribution of a restore
    DISTRIBUTION_RESTORED = "DistributionRestored"
    CITUS_UNAVAILABLE = "CitusUnavailable"
    # verification (a test restore into scratch databases)
    VERIFICATION_SUCCEEDED = "VerificationSucceeded"
    #: Row counts or the Citus distribution differ from the backup's manifest.
    VERIFICATION_FAILED = "VerificationFailed"
    #: A stored object's sha256 or size does not match the manifest.
    CHECKSUM_MISMATCH = "ChecksumMismatch"
    #: A user SQL check returned something else than true, or an error.
    CHECK_FAILED = "CheckFailed"
    #: A file of the checks ConfigMap is unusable (name, size, unknown database).
    INVALID_CHECK = "InvalidCheck"


#: Reasons each condition type may carry (documentation, and checked by tests).
REASONS_BY_CONDITION: dict[ConditionType, frozenset[Reason]] = {
    ConditionType.READY: frozenset(
        {
            Reason.RECONCILED,
            Reason.SUSPENDED,
            Reason.INVALID_SPEC,
            Reason.SECRET_NOT_FOUND,
            Reason.SECRET_KEY_MISSING,
            Reason.CONFIG_MAP_NOT_FOUND,
            Reason.STORAGE_UNREACHABLE,
            Reason.BUCKET_NOT_FOUND,
            Reason.PREFIX_OVERLAP,
        }
    ),
    ConditionType.LAST_BACKUP_SUCCEEDED: frozenset(
        {
            Reason.NO_BACKUP_YET,
            Reason.BACKUP_RUNNING,
            Reason.BACKUP_SUCCEEDED,
            Reason.BACKUP_FAILED,
            Reason.MISSED_SCHEDULE,
        }
    ),
    ConditionType.LIFECYCLE_IN_SYNC: frozenset(
        {
            Reason.LIFECYCLE_IN_SYNC,
            Reason.LIFECYCLE_OUT_OF_SYNC,
            Reason.LIFECYCLE_UPDATE_FAILED,
            Reason.LIFECYCLE_RULE_LIMIT,
            Reason.PREFIX_OVERLAP,
            Reason.INVALID_SPEC,
            Reason.STORAGE_UNREACHABLE,
            Reason.BUCKET_NOT_FOUND,
            Reason.SECRET_NOT_FOUND,
            Reason.SECRET_KEY_MISSING,
        }
    ),
    ConditionType.SUCCEEDED: frozenset(
        {
            Reason.PENDING,
            Reason.JOB_CREATED,
            Reason.JOB_RUNNING,
            Reason.JOB_FAILED,
            Reason.JOB_DEADLINE_EXCEEDED,
            Reason.JOB_NOT_FOUND,
            Reason.INVALID_SPEC,
            Reason.POLICY_NOT_FOUND,
            Reason.SECRET_NOT_FOUND,
            Reason.SECRET_KEY_MISSING,
            Reason.CONFIG_MAP_NOT_FOUND,
            Reason.CONFLICT,
            Reason.BACKUP_RUNNING,
            Reason.BACKUP_SUCCEEDED,
            Reason.BACKUP_FAILED,
            Reason.BACKUP_NOT_FOUND,
            Reason.BACKUP_NOT_SUCCEEDED,
            Reason.TARGET_EXISTS,
            Reason.RESTORE_RUNNING,
            Reason.RESTORE_SUCCEEDED,
            Reason.RESTORE_FAILED,
            # a restore (or verification) that failed for a typed reason of the runner
            Reason.VERIFICATION_FAILED,
            Reason.CHECKSUM_MISMATCH,
            Reason.CHECK_FAILED,
            Reason.INVALID_CHECK,
        }
    ),
    ConditionType.RESTORABLE: frozenset({Reason.DATA_PRESENT, Reason.DATA_EXPIRED}),
    ConditionType.CITUS_DISTRIBUTED: frozenset(
        {Reason.DISTRIBUTION_RESTORED, Reason.CITUS_UNAVAILABLE}
    ),
    ConditionType.VERIFIED: frozenset(
        {
            Reason.VERIFICATION_SUCCEEDED,
            Reason.VERIFICATION_FAILED,
            Reason.CHECKSUM_MISMATCH,
            Reason.CHECK_FAILED,
            Reason.INVALID_CHECK,
            Reason.BACKUP_NOT_FOUND,
            Reason.RESTORE_FAILED,
            Reason.JOB_DEADLINE_EXCEEDED,
        }
    ),
}

ConditionStatus = Literal["True", "False", "Unknown"]

CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class Condition(StatusModel):
    """One observation of the resource's state (the shape of metav1.Condition)."""

    type: str = Field(
        max_length=316,
        pattern=CONDITION_TYPE_PATTERN,
        description="Type of condition in CamelCase, e.g. Ready, LastBackupSucceeded, Succeeded.",
    )
    status: ConditionStatus = Field(description="Status of the condition: True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=CONDITION_REASON_PATTERN,
        description="CamelCase token naming the cause of the last transition, e.g. "
        "BackupSucceeded, SecretNotFound.",
    )
    message: str = Field(
        "",
        max_length=32768,
        description="Human-readable details about the last transition; never contains credentials.",
    )
    last_transition_time: AwareDatetime = Field(
        description="When the condition last changed from one status to another."
    )
    observed_generation: NonNegativeInt | None = Field(
        None, description="metadata.generation of the resource the condition was set for."
    )

    @property
    def is_true(self) -> bool:
        return self.status == "True"


def condition_status(value: bool | None) -> ConditionStatus:
    """``True``/``False``/``Unknown`` from a tri-state boolean."""
    if value is None:
        return "Unknown"
    return "True" if value else "False"


def make_condition(
    type_: ConditionType,
    status: bool | None,
    reason: Reason,
    message: str,
    *,
    now: datetime,
    observed_generation: int | None = None,
) -> Condition:
    """A condition with a typed type and reason (``now`` becomes lastTransitionTime)."""
    return Condition(
        type=str(type_),
        status=condition_status(status),
        reason=str(reason),
        message=message,
        last_transition_time=now,
        observed_generation=observed_generation,
    )


def find_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    for condition in conditions:
        if condition.type == type_:
            return condition
    return None


def set_condition(conditions: Sequence[Condition], new: Condition) -> tuple[Condition, ...]:
    """Replace (or append) the condition of ``new.type``.

    ``lastTransitionTime`` is kept from the existing condition when the status
    did not change, as the Kubernetes API conventions require.
    """
    result: list[Condition] = []
    replaced = False
    for condition in conditions:
        if condition.type != new.type:
            result.append(condition)
            continue
        replaced = True
        if condition.status == new.status:
            new = new.model_copy(update={"last_transition_time": condition.last_transition_time})
        result.append(new)
    if not replaced:
        result.append(new)
    return tuple(result)


def conditions_field(description: str) -> Any:
    """A ``conditions`` list field: a list-map keyed by ``type``."""
    return Field(
        (),
        description=description,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes metav1.Time."""
    if value.tzinfo is None:
        raise ValueError("naive datetime: pass a timezone-aware datetime")
    return value.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- object metadata


class ObjectMeta(ApiModel):
    """The part of metav1.ObjectMeta the operator reads; everything else is ignored."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field("", description="Name of the resource.")
    namespace: str | None = Field(None, description="Namespace of the resource.")
    uid: str | None = Field(None, description="UID assigned by the API server.")
    generation: int | None = Field(None, description="Generation of the spec.")
    resource_version: str | None = Field(None, description="Resource version.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations.")
    creation_timestamp: AwareDatetime | None = Field(None, description="Creation time.")
    deletion_timestamp: AwareDatetime | None = Field(None, description="Deletion time.")


class Resource(BaseModel):
    """What the three kinds share: model settings and ``name``/``namespace``.

    The fields (apiVersion, kind, metadata, spec, status) stay on each kind, in
    that order, so the generated CRD schemas keep Kubernetes' usual order.
    """

    model_config = ConfigDict(
        frozen=True, populate_by_name=True, serialize_by_alias=True, extra="ignore"
    )

    if TYPE_CHECKING:
        metadata: ObjectMeta

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str | None:
        return self.metadata.namespace


# --------------------------------------------------------------------------- CRD metadata


@dataclass(frozen=True)
class PrinterColumn:
    """One ``additionalPrinterColumns`` entry."""

    name: str
    json_path: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    description: str
    priority: int = 0

    def to_dict(self) -> dict[str, Any]:
        column: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "jsonPath": self.json_path,
            "description": self.description,
        }
        if self.priority:
            column["priority"] = self.priority
        return column


AGE_COLUMN = PrinterColumn(
    "Age", ".metadata.creationTimestamp", "date", "Time since the resource was created."
)


@dataclass(frozen=True)
class KindInfo:
    """What :mod:`citus_backup.api.crdgen` needs to know about one kind."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    description: str
    spec_model: type[BaseModel]
    status_model: type[BaseModel]
    printer_columns: tuple[PrinterColumn, ...]
    #: CEL rules on the root object (the only place ``self.metadata.name`` is visible).
    root_validations: tuple[JsonDict, ...] = field(default=())
    #: CEL rules on ``spec`` that compare with the old object (transition rules).
    spec_transition_validations: tuple[JsonDict, ...] = field(default=())

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"


# --------------------------------------------------------------------------- labels

#: Labels the operator puts on the objects it creates (Jobs, their pods, CitusBackups).
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_POLICY = f"{GROUP}/policy"
LABEL_BACKUP = f"{GROUP}/backup"
LABEL_RESTORE = f"{GROUP}/restore"
#: On a CitusBackup created by the schedule: ``scheduled`` (else ``manual``, or absent).
LABEL_TRIGGER = f"{GROUP}/trigger"
APP_NAME = "citus-backup"
MANAGER_NAME = "citus-backup-operator"
#: Annotation on a scheduled CitusBackup: its scheduled time (RFC 3339, UTC).
ANNOTATION_SCHEDULED_TIME = f"{GROUP}/scheduled-time"
