"""Shared pieces of the reconcilers: dependencies, parsing, Secret checks, status helpers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from citus_backup.api.common import (
    ANNOTATION_SCHEDULED_TIME,
    CertificateSource,
    Reason,
    SecretKeyRef,
    format_time,
)
from citus_backup.api.policy import PostgresConnection, StorageSpec
from citus_backup.errors import PermanentError
from citus_backup.reconcile.ports import Cluster, DatabaseProbe, EventSink, Kind
from citus_backup.reconcile.progress import ProgressSource

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

#: Default seconds between two looks at a running Job (the handlers' timer interval).
DEFAULT_POLL_SECONDS = 10.0
#: Event types.
NORMAL = "Normal"
WARNING = "Warning"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Deps:
    """Everything a reconciler touches besides its own object."""

    cluster: Cluster
    events: EventSink
    #: The operator's runner image (a jobTemplate.image overrides it).
    image: str
    probe: DatabaseProbe | None = None
    #: Where running backups' progress is read (None: not shown).
    progress: ProgressSource | None = None
    clock: Callable[[], datetime] = utcnow
    #: Seconds until a pending/running object is looked at again.
    poll_seconds: float = DEFAULT_POLL_SECONDS
    _locks: dict[tuple[str, str, str], threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def locked(self, kind: str, namespace: str, name: str) -> Iterator[None]:
        """One reconcile of an object at a time within this process (timers may overlap).

        One small lock per object ever seen is kept for the process's life.
        """
        key = (kind, namespace, name)
        with self._locks_guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield


def parse(model: type[M], body: Mapping[str, Any]) -> M:
    """The model of an object read from the API; PermanentError(InvalidSpec) if it does not fit.

    The CRD schema already enforces the shape; this catches what only the
    models check (cron expressions, time zones) with the models' messages.
    """
    try:
        return model.model_validate(dict(body))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise PermanentError(
            f"invalid {model.__name__}: {problems}", reason=Reason.INVALID_SPEC
        ) from None


def ref_body(obj: BaseModel) -> dict[str, Any]:
    """apiVersion/kind/metadata of a resource model, as Events need it."""
    data = obj.model_dump(mode="json", by_alias=True, include={"api_version", "kind", "metadata"})
    meta = data.get("metadata", {})
    return {
        "apiVersion": data.get("apiVersion"),
        "kind": data.get("kind"),
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid") if meta.get(k)},
    }


def time_str(value: datetime | None) -> str | None:
    return None if value is None else format_time(value)


def scheduled_time_of(annotations: Mapping[str, str]) -> datetime | None:
    value = annotations.get(ANNOTATION_SCHEDULED_TIME)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- Secret checks


def _secret_refs(
    connection: PostgresConnection | None, storage: StorageSpec | None, connection_field: str
) -> list[tuple[str, SecretKeyRef]]:
    refs: list[tuple[str, SecretKeyRef]] = []
    if connection is not None:
        refs.append((f"{connection_field}.passwordSecretRef", connection.password_secret_ref))
    if storage is not None:
        refs.append(("storage.accessKeyIdSecretRef", storage.access_key_id_secret_ref))
        refs.append(("storage.secretAccessKeySecretRef", storage.secret_access_key_secret_ref))
    return refs


def _ca_sources(
    connection: PostgresConnection | None, storage: StorageSpec | None, connection_field: str
) -> list[tuple[str, CertificateSource]]:
    sources: list[tuple[str, CertificateSource]] = []
    if connection is not None and connection.ssl_root_cert is not None:
        sources.append((f"{connection_field}.sslRootCert", connection.ssl_root_cert))
    if storage is not None and storage.ca is not None:
        sources.append(("storage.ca", storage.ca))
    return sources


def check_references(
    cluster: Cluster,
    namespace: str,
    *,
    connection: PostgresConnection | None,
    storage: StorageSpec | None,
    connection_field: str = "coordinator",
) -> None:
    """Every Secret key and ConfigMap key the Job will need exists, or PermanentError.

    Reasons: SecretNotFound, SecretKeyMissing, ConfigMapNotFound. Only names
    and keys appear in messages; values are read into memory and dropped.
    """
    secrets: dict[str, Mapping[str, bytes] | None] = {}

    def secret(name: str) -> Mapping[str, bytes] | None:
        if name not in secrets:
            secrets[name] = cluster.secret_data(namespace, name)
        return secrets[name]

    refs = _secret_refs(connection, storage, connection_field)
    for source_field, source in _ca_sources(connection, storage, connection_field):
        if source.secret_key_ref is not None:
            refs.append((source_field + ".secretKeyRef", source.secret_key_ref))
        elif source.config_map_key_ref is not None:
            cm = source.config_map_key_ref
            keys = cluster.config_map_keys(namespace, cm.name)
            if keys is None:
                raise PermanentError(
                    f"ConfigMap {cm.name} ({source_field}.configMapKeyRef) not found in "
                    f"namespace {namespace}",
                    reason=Reason.CONFIG_MAP_NOT_FOUND,
                )
            if cm.key not in keys:
                raise PermanentError(
                    f"ConfigMap {cm.name} ({source_field}.configMapKeyRef) has no key {cm.key}",
                    reason=Reason.CONFIG_MAP_NOT_FOUND,
                )
    for source_field, ref in refs:
        data = secret(ref.name)
        if data is None:
            raise PermanentError(
                f"Secret {ref.name} ({source_field}) not found in namespace {namespace}",
                reason=Reason.SECRET_NOT_FOUND,
            )
        if ref.key not in data:
            raise PermanentError(
                f"Secret {ref.name} ({source_field}) has no key {ref.key}",
                reason=Reason.SECRET_KEY_MISSING,
            )


def read_secret_value(cluster: Cluster, namespace: str, ref: SecretKeyRef) -> str:
    """One Secret value, in memory only (for the operator's own database probe)."""
    data = cluster.secret_data(namespace, ref.name)
    if data is None or ref.key not in data:
        raise PermanentError(
            f"Secret {ref.name} or its key {ref.key} not found", reason=Reason.SECRET_NOT_FOUND
        )
    return data[ref.key].decode()


def changes(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether patching ``wanted`` into ``current`` would change anything (skip no-op writes)."""
    return any(current.get(key) != value for key, value in wanted.items())


def fail_unparsable(deps: Deps, kind: Kind, body: Mapping[str, Any], err: PermanentError) -> None:
    """A CitusBackup/CitusRestore the models reject ends Failed (InvalidSpec), once."""
    meta = body.get("metadata", {})
    if body.get("status", {}).get("phase") in ("Succeeded", "Failed"):
        return
    now = format_time(deps.clock())
    status = {
        "phase": "Failed",
        "message": err.message,
        "completionTime": now,
        "conditions": [
            {
                "type": "Succeeded",
                "status": "False",
                "reason": str(Reason.INVALID_SPEC),
                "message": err.message,
                "lastTransitionTime": now,
            }
        ],
    }
    deps.cluster.patch_status(kind, meta.get("namespace", ""), meta.get("name", ""), status)
    deps.events.emit(body, WARNING, str(Reason.INVALID_SPEC), err.message)
