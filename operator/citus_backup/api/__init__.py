"""The ``citusbackup.io/v1alpha1`` API: pydantic models of the three kinds.

One module per kind (:mod:`.policy`, :mod:`.backup`, :mod:`.restore`), shared
types in :mod:`.common`; :mod:`.crdgen` derives the CRDs from these models.
Pure code: no I/O, no Kubernetes client, no kopf.

The names below are imported lazily (PEP 562), so that importing a submodule
such as :mod:`.crdgen` to register a CLI subcommand stays cheap for the runner.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from citus_backup.api.backup import (
        BackupLocation,
        CitusBackup,
        CitusBackupSpec,
        CitusBackupStatus,
    )
    from citus_backup.api.common import (
        API_VERSION,
        CATEGORY,
        GROUP,
        VERSION,
        CertificateSource,
        Condition,
        ConditionType,
        ConfigMapKeyRef,
        ObjectMeta,
        Phase,
        Reason,
        SecretKeyRef,
    )
    from citus_backup.api.policy import (
        CitusBackupPolicy,
        CitusBackupPolicySpec,
        CitusBackupPolicyStatus,
        CoordinatorSpec,
        DumpOptions,
        JobTemplate,
        PostgresConnection,
        RetentionPreset,
        RetentionSpec,
        RetentionTier,
        SSLMode,
        StorageSpec,
        Tier,
    )
    from citus_backup.api.restore import CitusRestore, CitusRestoreSpec, CitusRestoreStatus

_EXPORTS = {
    "citus_backup.api.backup": (
        "BackupLocation",
        "CitusBackup",
        "CitusBackupSpec",
        "CitusBackupStatus",
    ),
    "citus_backup.api.common": (
        "API_VERSION",
        "CATEGORY",
        "GROUP",
        "VERSION",
        "CertificateSource",
        "Condition",
        "ConditionType",
        "ConfigMapKeyRef",
        "ObjectMeta",
        "Phase",
        "Reason",
        "SecretKeyRef",
    ),
    "citus_backup.api.policy": (
        "CitusBackupPolicy",
        "CitusBackupPolicySpec",
        "CitusBackupPolicyStatus",
        "CoordinatorSpec",
        "DumpOptions",
        "JobTemplate",
        "PostgresConnection",
        "RetentionPreset",
        "RetentionSpec",
        "RetentionTier",
        "SSLMode",
        "StorageSpec",
        "Tier",
    ),
    "citus_backup.api.restore": ("CitusRestore", "CitusRestoreSpec", "CitusRestoreStatus"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "API_VERSION",
    "CATEGORY",
    "GROUP",
    "VERSION",
    "BackupLocation",
    "CertificateSource",
    "CitusBackup",
    "CitusBackupPolicy",
    "CitusBackupPolicySpec",
    "CitusBackupPolicyStatus",
    "CitusBackupSpec",
    "CitusBackupStatus",
    "CitusRestore",
    "CitusRestoreSpec",
    "CitusRestoreStatus",
    "Condition",
    "ConditionType",
    "ConfigMapKeyRef",
    "CoordinatorSpec",
    "DumpOptions",
    "JobTemplate",
    "ObjectMeta",
    "Phase",
    "PostgresConnection",
    "Reason",
    "RetentionPreset",
    "RetentionSpec",
    "RetentionTier",
    "SSLMode",
    "SecretKeyRef",
    "StorageSpec",
    "Tier",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
