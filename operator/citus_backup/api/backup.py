"""CitusBackup: one backup of the databases of a policy's coordinator.

The operator creates one per scheduled run (named ``<policy>-<YYYYMMDDHHMM>``,
see :mod:`citus_backup.specs.names`); a user creates one to back up now. The
spec is immutable. The backup's data lives in the policy's bucket under
``<prefix>/<tier>/<backupId>/`` for its tier and each of ``alsoTiers``.
Deleting a CitusBackup does not delete its data; the lifecycle rules do.

``tier`` defaults to the policy's base tier (its most frequent enabled tier,
``daily`` for the presets).
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import AwareDatetime, ConfigDict, Field, field_validator, model_validator

from citus_backup.api.common import (
    AGE_COLUMN,
    API_VERSION,
    ApiModel,
    Condition,
    DNSLabel,
    KindInfo,
    NonNegativeInt,
    ObjectMeta,
    Phase,
    PrinterColumn,
    Resource,
    StatusModel,
    cel,
    check_unique,
    conditions_field,
    list_type_set,
)
from citus_backup.api.policy import TIER_ORDER, Tier

KIND: Final = "CitusBackup"

ALSO_TIERS_REPEAT_MESSAGE = "alsoTiers must not contain tier"
SPEC_IMMUTABLE_MESSAGE = "spec is immutable"


class CitusBackupSpec(ApiModel):
    """Desired state of a CitusBackup."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.tier) || !has(self.alsoTiers) || !(self.tier in self.alsoTiers)",
                    ALSO_TIERS_REPEAT_MESSAGE,
                )
            ]
        }
    )

    policy_name: DNSLabel = Field(
        description="Name of the CitusBackupPolicy (same namespace) whose coordinator, "
        "databases and storage are used."
    )
    tier: Tier | None = Field(
        None,
        description="Retention tier the backup is stored in: daily, weekly, monthly or yearly. "
        "Default: the policy's most frequent enabled tier.",
    )
    also_tiers: tuple[Tier, ...] = Field(
        (),
        max_length=len(TIER_ORDER),
        description="Further tiers the backup is also stored in (e.g. monthly for the first "
        "run of a month).",
        json_schema_extra=list_type_set(),
    )

    @field_validator("also_tiers")
    @classmethod
    def _unique(cls, value: tuple[Tier, ...]) -> tuple[Tier, ...]:
        check_unique(value, "alsoTiers")
        return value

    @model_validator(mode="after")
    def _no_repeat(self) -> CitusBackupSpec:
        if self.tier is not None and self.tier in self.also_tiers:
            raise ValueError(ALSO_TIERS_REPEAT_MESSAGE)
        return self


class BackupLocation(StatusModel):
    """Where the backup's objects are."""

    bucket: str = Field(description="Bucket holding the backup.")
    key_prefix: str = Field(
        description="Key prefix of the backup's objects in its primary tier: "
        "<prefix>/<tier>/<backupId>/."
    )


class BackupProgress(StatusModel):
    """How far a running backup (read from the bucket) or restore (read from the runner's
    session on the target server) is."""

    databases_done: NonNegativeInt = Field(
        description="Databases whose dump is stored (backup) or that are restored (restore)."
    )
    databases_total: NonNegativeInt | None = Field(
        None, description="Databases of the run (from its started.json)."
    )
    bytes: NonNegativeInt = Field(
        0, description="Bytes stored (backup) or read from the bucket (restore) so far."
    )


class CitusBackupStatus(StatusModel):
    """Observed state of a CitusBackup."""

    phase: Phase | None = Field(None, description="Pending, Running, Succeeded or Failed.")
    start_time: AwareDatetime | None = Field(None, description="When the backup Job started.")
    completion_time: AwareDatetime | None = Field(
        None, description="When the backup finished (successfully or not)."
    )
    backup_id: Annotated[str, Field(max_length=128)] | None = Field(
        None,
        description="Identifier of the backup in the bucket (UTC time, e.g. 20261127T030000Z).",
    )
    location: BackupLocation | None = Field(None, description="Where the backup is stored.")
    tiers: tuple[Tier, ...] = Field(
        (), description="Tiers the backup was stored in, primary tier first."
    )
    databases: dict[str, NonNegativeInt] = Field(
        default_factory=dict, description="Databases in the backup, with their size in bytes."
    )
    total_size_bytes: NonNegativeInt | None = Field(
        None, description="Total size of the backup's objects in bytes."
    )
    total_size: Annotated[str, Field(max_length=32)] | None = Field(
        None, description="Total size, human readable (e.g. 1.5 GiB)."
    )
    job_name: str | None = Field(None, description="Name of the backup Job.")
    progress: BackupProgress | None = Field(
        None,
        description="Databases done/total and bytes stored so far, updated while the backup "
        "runs (at most every 10 s).",
    )
    message: Annotated[str, Field(max_length=32768)] | None = Field(
        None, description="Human-readable result or failure cause; never contains credentials."
    )
    observed_generation: NonNegativeInt | None = Field(
        None, description="metadata.generation the status was computed for."
    )
    conditions: tuple[Condition, ...] = conditions_field(
        "Succeeded: Unknown while pending or running, then True or False. Restorable: whether "
        "the backup's data is still in the bucket (False, reason DataExpired, once expired)."
    )


class CitusBackup(Resource):
    """A CitusBackup resource (apiVersion, kind, metadata, spec, status)."""

    api_version: Literal["citusbackup.io/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["CitusBackup"] = KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: CitusBackupSpec
    status: CitusBackupStatus = Field(default_factory=CitusBackupStatus)


_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_size(size_bytes: int) -> str:
    """Human-readable size for ``status.totalSize``: ``0 B``, ``512 B``, ``1.5 GiB``."""
    if size_bytes < 0:
        raise ValueError("negative size")
    value = float(size_bytes)
    unit = _BINARY_UNITS[0]
    for unit in _BINARY_UNITS:
        if value < 1024 or unit == _BINARY_UNITS[-1]:
            break
        value /= 1024
    if unit == "B":
        return f"{size_bytes} B"
    return f"{value:.1f} {unit}"


KIND_INFO = KindInfo(
    kind=KIND,
    plural="citusbackups",
    singular="citusbackup",
    short_names=("cbk",),
    description="CitusBackup is one backup of the databases of a CitusBackupPolicy's Citus "
    "coordinator, created by the policy's schedule or by hand to back up now.",
    spec_model=CitusBackupSpec,
    status_model=CitusBackupStatus,
    printer_columns=(
        PrinterColumn("Policy", ".spec.policyName", "string", "CitusBackupPolicy of the backup."),
        PrinterColumn("Phase", ".status.phase", "string", "Pending, Running, Succeeded, Failed."),
        PrinterColumn("Size", ".status.totalSize", "string", "Total size of the backup."),
        PrinterColumn(
            "Restorable",
            '.status.conditions[?(@.type=="Restorable")].status',
            "string",
            "False once the backup's data expired from the bucket.",
            1,  # -o wide: the default columns stay as they are
        ),
        PrinterColumn(
            "Verified",
            '.status.conditions[?(@.type=="Verified")].status',
            "string",
            "Result of the newest verification (a test restore); empty: never verified.",
            1,
        ),
        AGE_COLUMN,
        PrinterColumn("Tiers", ".status.tiers", "string", "Tiers the backup is stored in.", 1),
        PrinterColumn("Backup ID", ".status.backupId", "string", "Identifier in the bucket.", 1),
    ),
    spec_transition_validations=(cel("self == oldSelf", SPEC_IMMUTABLE_MESSAGE),),
)
