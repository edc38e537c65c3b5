"""CitusRestore: restore databases (or parts of one) from a CitusBackup.

Source: exactly one of ``backupName`` (a CitusBackup in the same namespace) or
``policyName`` (the latest successful backup of that policy; with ``before``,
the latest one completed before that time). The operator resolves the source
once and records it in ``status.backupName``.

What is restored:

* ``databases`` empty: every database of the backup; otherwise those.
* ``targetDatabase``: restore the single database of ``databases`` under
  another name (e.g. ``app1_restored``) to inspect it without touching the
  original.
* ``tables`` / ``schemas`` (one or the other): only those objects of the
  single database of ``databases``.
* ``replace``: drop and recreate the target database (or the listed tables /
  schemas) first. Without it the restore fails (reason ``TargetExists``) if
  the target database already exists (or, for a partial restore, if a listed
  table already exists).
* ``globals``: also restore roles (``pg_dumpall --globals-only``); existing
  roles are kept. Default: true for a full restore (no databases, tables,
  schemas nor targetDatabase), false otherwise. See
  :meth:`CitusRestoreSpec.effective_globals`.
* ``target``: the server to restore into; default the policy's coordinator.

The spec is immutable: create a new CitusRestore to restore again.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import AwareDatetime, ConfigDict, Field, field_validator, model_validator

from citus_backup.api.backup import BackupProgress
from citus_backup.api.common import (
    AGE_COLUMN,
    API_VERSION,
    ApiModel,
    Condition,
    DNSLabel,
    DNSSubdomain,
    KindInfo,
    NonNegativeInt,
    ObjectMeta,
    PgIdentifier,
    Phase,
    PrinterColumn,
    Resource,
    StatusModel,
    cel,
    check_unique,
    conditions_field,
    list_type_set,
)
from citus_backup.api.policy import DATABASE_LIST_MAX, JobTemplate, PostgresConnection

KIND: Final = "CitusRestore"

SOURCE_MESSAGE = "set exactly one of backupName or policyName"
BEFORE_MESSAGE = "before can only be used with policyName"
TARGET_DATABASE_MESSAGE = "targetDatabase requires exactly one entry in databases"
TABLES_MESSAGE = "tables requires exactly one entry in databases"
SCHEMAS_MESSAGE = "schemas requires exactly one entry in databases"
TABLES_OR_SCHEMAS_MESSAGE = (
    "tables and schemas are mutually exclusive (name tables as schema.table)"
)
SPEC_IMMUTABLE_MESSAGE = "spec is immutable"
KEEP_OLD_MESSAGE = "keepOld requires replace (only a replaced database can be kept)"
VERIFY_MESSAGE = (
    "verify restores into scratch databases only: it excludes targetDatabase, tables, "
    "schemas, replace and globals"
)
CHECKS_MESSAGE = "checksConfigMap requires verify"

#: ``schema.table`` or ``table``; quoted identifiers are not supported.
TableName = Annotated[str, Field(min_length=1, max_length=127)]
OBJECT_LIST_MAX = 1024


def _one_database(field: str) -> str:
    return (
        f"!has(self.{field}) || size(self.{field}) == 0 || "
        "(has(self.databases) && size(self.databases) == 1)"
    )


class CitusRestoreSpec(ApiModel):
    """Desired state of a CitusRestore."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.backupName) != has(self.policyName)", SOURCE_MESSAGE),
                cel("!has(self.before) || has(self.policyName)", BEFORE_MESSAGE),
                cel(
                    "!has(self.targetDatabase) || "
                    "(has(self.databases) && size(self.databases) == 1)",
                    TARGET_DATABASE_MESSAGE,
                ),
                cel(_one_database("tables"), TABLES_MESSAGE),
                cel(_one_database("schemas"), SCHEMAS_MESSAGE),
                cel(
                    "!has(self.tables) || size(self.tables) == 0 || "
                    "!has(self.schemas) || size(self.schemas) == 0",
                    TABLES_OR_SCHEMAS_MESSAGE,
                ),
                cel(
                    "!has(self.keepOld) || !self.keepOld || (has(self.replace) && self.replace)",
                    KEEP_OLD_MESSAGE,
                ),
                cel(
                    "!has(self.verify) || !self.verify || (!has(self.targetDatabase) && "
                    "(!has(self.tables) || size(self.tables) == 0) && "
                    "(!has(self.schemas) || size(self.schemas) == 0) && "
                    "(!has(self.replace) || !self.replace) && "
                    "(!has(self.globals) || !self.globals))",
                    VERIFY_MESSAGE,
                ),
                cel(
                    "!has(self.checksConfigMap) || (has(self.verify) && self.verify)",
                    CHECKS_MESSAGE,
                ),
            ]
        }
    )

    backup_name: DNSSubdomain | None = Field(
        None, description="Restore this CitusBackup (same namespace). Exclusive with policyName."
    )
    policy_name: DNSLabel | None = Field(
        None,
        description="Restore the latest successful backup of this CitusBackupPolicy (same "
        "namespace). Exclusive with backupName.",
    )
    before: AwareDatetime | None = Field(
        None,
        description="With policyName: use the latest successful backup completed before this "
        "time (RFC 3339).",
    )
    databases: tuple[PgIdentifier, ...] = Field(
        (),
        max_length=DATABASE_LIST_MAX,
        description="Databases to restore; empty: every database of the backup.",
        json_schema_extra=list_type_set(),
    )
    target_database: PgIdentifier | None = Field(
        None,
        description="Restore the single database of databases under this name instead "
        "(e.g. app1_restored).",
    )
    tables: tuple[TableName, ...] = Field(
        (),
        max_length=OBJECT_LIST_MAX,
        description="Restore only these tables (schema.table or table) of the single database "
        "of databases. Exclusive with schemas.",
        json_schema_extra=list_type_set(),
    )
    schemas: tuple[PgIdentifier, ...] = Field(
        (),
        max_length=OBJECT_LIST_MAX,
        description="Restore only these schemas of the single database of databases. "
        "Exclusive with tables.",
        json_schema_extra=list_type_set(),
    )
    replace: bool = Field(
        False,
        description="Drop and recreate the target database (or the listed tables/schemas) "
        "first. Without it the restore fails with TargetExists when the target exists.",
    )
    keep_old: bool = Field(
        False,
        description="With replace: keep the replaced database as <name>_old_<backup id> (on "
        "every node of a Citus cluster) instead of dropping it; listed in "
        "status.keptDatabases.",
    )
    globals: bool | None = Field(
        None,
        description="Also restore roles (existing roles are kept). Default: true for a full "
        "restore (no databases, tables, schemas nor targetDatabase), false otherwise.",
    )
    target: PostgresConnection | None = Field(
        None,
        description="Server to restore into; default: the policy's coordinator (host, port, "
        "user, password, sslMode).",
    )
    job_template: JobTemplate | None = Field(
        None,
        description="Settings of the restore Job, replacing the policy's jobTemplate as a whole "
        "(unset fields take their defaults, not the policy's values); default: the policy's "
        "jobTemplate.",
    )

    verify: bool = Field(
        False,
        description="Verification: restore each database (all, or those of databases) into "
        "a scratch database (citus_backup_verify_*), compare row counts and the Citus "
        "distribution with the backup, run the checks, drop it. Touches no other database "
        "and no role. Exclusive with targetDatabase, tables, schemas, replace, globals.",
    )
    checks_config_map: DNSSubdomain | None = Field(
        None,
        description="With verify: a ConfigMap (same namespace) whose keys "
        "<database>.<check>.sql each hold a query that must return one row with true.",
    )

    @field_validator("databases", "tables", "schemas")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        check_unique(value, "list")
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> CitusRestoreSpec:
        if (self.backup_name is None) == (self.policy_name is None):
            raise ValueError(SOURCE_MESSAGE)
        if self.before is not None and self.policy_name is None:
            raise ValueError(BEFORE_MESSAGE)
        single = len(self.databases) == 1
        if self.target_database is not None and not single:
            raise ValueError(TARGET_DATABASE_MESSAGE)
        if self.tables and not single:
            raise ValueError(TABLES_MESSAGE)
        if self.schemas and not single:
            raise ValueError(SCHEMAS_MESSAGE)
        if self.tables and self.schemas:
            raise ValueError(TABLES_OR_SCHEMAS_MESSAGE)
        if self.keep_old and not self.replace:
            raise ValueError(KEEP_OLD_MESSAGE)
        if self.verify and (
            self.target_database or self.tables or self.schemas or self.replace or self.globals
        ):
            raise ValueError(VERIFY_MESSAGE)
        if self.checks_config_map is not None and not self.verify:
            raise ValueError(CHECKS_MESSAGE)
        return self

    @property
    def is_full_restore(self) -> bool:
        """Everything in the backup, under the original names."""
        return not (self.databases or self.tables or self.schemas or self.target_database)

    @property
    def effective_globals(self) -> bool:
        """``globals`` if set; otherwise true exactly for a full restore (never for verify)."""
        if self.verify:
            return False
        return self.is_full_restore if self.globals is None else self.globals


class CitusRestoreStatus(StatusModel):
    """Observed state of a CitusRestore."""

    phase: Phase | None = Field(None, description="Pending, Running, Succeeded or Failed.")
    start_time: AwareDatetime | None = Field(None, description="When the restore Job started.")
    completion_time: AwareDatetime | None = Field(
        None, description="When the restore finished (successfully or not)."
    )
    backup_name: str | None = Field(
        None, description="The CitusBackup restored from (resolved from the source)."
    )
    backup_id: str | None = Field(None, description="Identifier of that backup in the bucket.")
    job_name: str | None = Field(None, description="Name of the restore Job.")
    progress: BackupProgress | None = Field(
        None,
        description="Databases restored/total and bytes read so far, updated while the "
        "restore runs (at most every 10 s; from the runner's session on the target server).",
    )
    restored_databases: tuple[str, ...] = Field(
        (), description="Databases restored (target names)."
    )
    kept_databases: tuple[str, ...] = Field(
        (),
        description="Replaced databases kept (keepOld) under <name>_old_<backup id>, on every "
        "node of a Citus cluster; drop them when no longer needed.",
    )
    verification: tuple[str, ...] = Field(
        (),
        description="What the restore checked before making each database live, one line "
        "per database: row counts against those recorded at backup time, and for Citus the "
        "distribution (types, distribution columns, shard counts, colocation).",
    )
    message: Annotated[str, Field(max_length=32768)] | None = Field(
        None, description="Human-readable result or failure cause; never contains credentials."
    )
    observed_generation: NonNegativeInt | None = Field(
        None, description="metadata.generation the status was computed for."
    )
    conditions: tuple[Condition, ...] = conditions_field(
        "Succeeded: Unknown while pending or running, then True or False. CitusDistributed "
        "(backups with Citus only): True when the distribution was rebuilt, False when the "
        "target has no Citus and the tables came back local."
    )


class CitusRestore(Resource):
    """A CitusRestore resource (apiVersion, kind, metadata, spec, status)."""

    api_version: Literal["citusbackup.io/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["CitusRestore"] = KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: CitusRestoreSpec
    status: CitusRestoreStatus = Field(default_factory=CitusRestoreStatus)


KIND_INFO = KindInfo(
    kind=KIND,
    plural="citusrestores",
    singular="citusrestore",
    short_names=("crs",),
    description="CitusRestore restores databases, or tables and schemas of one database, from "
    "a CitusBackup (or the latest successful backup of a CitusBackupPolicy).",
    spec_model=CitusRestoreSpec,
    status_model=CitusRestoreStatus,
    printer_columns=(
        PrinterColumn("Backup", ".status.backupName", "string", "CitusBackup restored from."),
        PrinterColumn("Databases", ".spec.databases", "string", "Databases restored; empty: all."),
        PrinterColumn("Phase", ".status.phase", "string", "Pending, Running, Succeeded, Failed."),
        AGE_COLUMN,
        PrinterColumn("Target", ".spec.targetDatabase", "string", "Database restored into.", 1),
        PrinterColumn("Verify", ".spec.verify", "boolean", "A verification (scratch databases)", 1),
    ),
    spec_transition_validations=(cel("self == oldSelf", SPEC_IMMUTABLE_MESSAGE),),
)
