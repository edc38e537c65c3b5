"""Pure builders of the backup and restore Jobs (``kubernetes.client`` model objects).

The Job runs the runner (:mod:`citus_backup.specs.contract` is the interface)
with:

* an owner reference to its CitusBackup / CitusRestore (controller, blocking
  deletion), so deleting the resource deletes the Job;
* labels ``app.kubernetes.io/{name,instance,component,managed-by}`` and
  ``citusbackup.io/{policy,backup,restore}`` on the Job and its pod;
* credentials only as ``env.valueFrom.secretKeyRef`` (PGPASSWORD, S3 keys);
  arguments carry names (databases, tiers, backup id), never secrets;
* the *restricted* Pod Security Standard: non-root uid/gid 65532, read-only
  root filesystem, no privilege escalation, all capabilities dropped,
  seccomp RuntimeDefault; an emptyDir on /tmp; the service account token
  not mounted unless the job template asks for it;
* ``restartPolicy: Never``; backoffLimit / activeDeadlineSeconds /
  ttlSecondsAfterFinished from the job template; ``podReplacementPolicy:
  Failed`` so that a retry never overlaps a still-terminating runner;
* the termination message at /dev/termination-log with
  ``FallbackToLogsOnError`` (the runner writes its one-line result there);
* CA bundles (S3 endpoint, PostgreSQL server) mounted read-only from their
  Secret or ConfigMap key when configured.
"""

from __future__ import annotations

from collections.abc import Sequence

from kubernetes.client import (
    V1Capabilities,
    V1ConfigMapVolumeSource,
    V1Container,
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1EnvVarSource,
    V1Job,
    V1JobSpec,
    V1KeyToPath,
    V1LocalObjectReference,
    V1ObjectMeta,
    V1OwnerReference,
    V1PodSecurityContext,
    V1PodSpec,
    V1PodTemplateSpec,
    V1ResourceRequirements,
    V1SeccompProfile,
    V1SecretKeySelector,
    V1SecretVolumeSource,
    V1SecurityContext,
    V1Toleration,
    V1Volume,
    V1VolumeMount,
)

from citus_backup.api.backup import KIND as BACKUP_KIND
from citus_backup.api.backup import CitusBackup
from citus_backup.api.common import (
    API_VERSION,
    APP_NAME,
    LABEL_BACKUP,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_POLICY,
    LABEL_RESTORE,
    MANAGER_NAME,
    CertificateSource,
    ObjectMeta,
    Phase,
    Reason,
    SecretKeyRef,
)
from citus_backup.api.policy import (
    CitusBackupPolicy,
    JobTemplate,
    PostgresConnection,
    StorageSpec,
)
from citus_backup.api.restore import KIND as RESTORE_KIND
from citus_backup.api.restore import CitusRestore, CitusRestoreSpec
from citus_backup.errors import PermanentError
from citus_backup.specs import contract as c
from citus_backup.specs.names import backup_job_name, label_value, progress_tag, restore_job_name
from citus_backup.specs.retention import backup_tiers

BACKUP_CONTAINER = "backup"
RESTORE_CONTAINER = "restore"
TMP_VOLUME = "tmp"
S3_CA_VOLUME = "s3-ca"
PG_CA_VOLUME = "pg-ca"
CHECKS_VOLUME = "checks"
#: Certificates are public: world-readable is fine and works without fsGroup support.
CA_FILE_MODE = 0o444


# --------------------------------------------------------------------------- public API


def build_backup_job(
    policy: CitusBackupPolicy,
    backup: CitusBackup,
    *,
    image: str,
    backup_id: str,
) -> V1Job:
    """The Job that runs ``citus-backup backup`` for ``backup`` with ``policy``'s settings.

    ``image`` is the operator's default runner image (``jobTemplate.image``
    overrides it); ``backup_id`` names the backup in the bucket (see
    :func:`citus_backup.specs.names.backup_id`). Raises PermanentError
    (reason InvalidSpec) if the backup does not belong to the policy or asks
    for a tier the policy does not keep.
    """
    namespace = _same_namespace(backup.metadata, policy.metadata)
    if backup.spec.policy_name != policy.name:
        raise PermanentError(
            f"backup {backup.name} belongs to policy {backup.spec.policy_name}, not {policy.name}",
            reason=Reason.INVALID_SPEC,
        )
    spec = policy.spec
    tier, also_tiers = backup_tiers(spec, backup.spec)
    args: list[str] = [c.BACKUP_SUBCOMMAND, c.FLAG_BACKUP_ID, backup_id, c.FLAG_TIER, tier]
    for extra in also_tiers:
        args += [c.FLAG_ALSO_TIER, extra]
    for database in spec.coordinator.include_databases:
        args += [c.FLAG_INCLUDE_DATABASE, database]
    for database in spec.coordinator.exclude_databases:
        args += [c.FLAG_EXCLUDE_DATABASE, database]
    if spec.dump.jobs is not None:
        args += [c.FLAG_JOBS, str(spec.dump.jobs)]
    args += [c.FLAG_COMPRESSION, str(spec.dump.compression)]
    if spec.dump.consistency == "blockWrites":
        args += [c.FLAG_CONSISTENCY, "block-writes"]
    # Always explicit, like the compression: the policy decides, not the runner's default.
    args += [c.FLAG_SPLIT_THRESHOLD, str(spec.dump.parallel_dump.threshold_bytes)]
    if spec.dump.parallel_dump.jobs is not None:
        args += [c.FLAG_SPLIT_JOBS, str(spec.dump.parallel_dump.jobs)]

    labels = _labels(
        component=BACKUP_CONTAINER,
        instance=backup.name,
        policy=policy.name,
        backup=backup.name,
    )
    return _job(
        name=backup_job_name(backup.name),
        namespace=namespace,
        owner=_owner_reference(BACKUP_KIND, backup.metadata),
        labels=labels,
        container_name=BACKUP_CONTAINER,
        image=spec.job_template.image or image,
        args=args,
        connection=spec.coordinator,
        storage=spec.storage,
        template=spec.job_template,
    )


def build_restore_job(
    restore: CitusRestore,
    backup: CitusBackup,
    policy: CitusBackupPolicy,
    *,
    image: str,
) -> V1Job:
    """The Job that runs ``citus-backup restore`` for ``restore`` from ``backup``.

    ``backup`` is the resolved source (``spec.backupName``, or the latest
    successful backup of ``spec.policyName``); it must have succeeded and
    have a backup id; it is read from its primary tier (``status.tiers[0]``,
    else the tier its spec resolves to). ``policy`` is the backup's policy: its
    storage is read, and its coordinator is the target unless ``spec.target``
    is set; the job template is ``spec.jobTemplate`` or the policy's. Raises
    PermanentError with reason BackupNotSucceeded / InvalidSpec otherwise
    (including several ``databases`` while the runner takes one ``--database``).
    """
    namespace = _same_namespace(restore.metadata, backup.metadata, policy.metadata)
    if backup.status.phase != Phase.SUCCEEDED or not backup.status.backup_id:
        raise PermanentError(
            f"backup {backup.name} has not succeeded (phase {backup.status.phase or 'unknown'})",
            reason=Reason.BACKUP_NOT_SUCCEEDED,
        )
    if backup.spec.policy_name != policy.name:
        raise PermanentError(
            f"backup {backup.name} belongs to policy {backup.spec.policy_name}, not {policy.name}",
            reason=Reason.INVALID_SPEC,
        )
    spec = restore.spec
    if len(spec.databases) > 1 and not c.RESTORE_TAKES_SEVERAL_DATABASES:
        raise PermanentError(
            "restoring several databases in one CitusRestore is not supported yet: "
            "create one CitusRestore per database",
            reason=Reason.INVALID_SPEC,
        )
    # The backup is found under <prefix>/<tier>/<backupId>/ of its primary tier.
    tier = (
        backup.status.tiers[0] if backup.status.tiers else backup_tiers(policy.spec, backup.spec)[0]
    )
    args: list[str] = [
        c.RESTORE_SUBCOMMAND,
        c.FLAG_BACKUP_ID,
        backup.status.backup_id,
        c.FLAG_TIER,
        tier,
    ]
    for database in spec.databases:
        args += [c.FLAG_DATABASE, database]
    if spec.target_database is not None:
        args += [c.FLAG_TARGET_DATABASE, spec.target_database]
    for table in spec.tables:
        args += [c.FLAG_TABLE, table]
    for schema in spec.schemas:
        args += [c.FLAG_SCHEMA, schema]
    if spec.replace:
        args.append(c.FLAG_REPLACE)
    if spec.keep_old:
        args.append(c.FLAG_KEEP_OLD)
    # Always explicit: the runner's own default must not decide whether roles are restored.
    args.append(c.FLAG_GLOBALS if spec.effective_globals else c.FLAG_NO_GLOBALS)
    if policy.spec.dump.jobs is not None:
        args += [c.FLAG_JOBS, str(policy.spec.dump.jobs)]
    if policy.spec.dump.parallel_dump.jobs is not None:
        args += [c.FLAG_SPLIT_JOBS, str(policy.spec.dump.parallel_dump.jobs)]
    args += [c.FLAG_PROGRESS_TAG, progress_tag(namespace, restore.name)]
    extra_volumes: list[V1Volume] = []
    extra_mounts: list[V1VolumeMount] = []
    if spec.verify:
        args += _verify_args(spec, extra_volumes, extra_mounts)

    template = spec.job_template or policy.spec.job_template
    labels = _labels(
        component=RESTORE_CONTAINER,
        instance=restore.name,
        policy=policy.name,
        backup=backup.name,
        restore=restore.name,
    )
    return _job(
        name=restore_job_name(restore.name),
        namespace=namespace,
        owner=_owner_reference(RESTORE_KIND, restore.metadata),
        labels=labels,
        container_name=RESTORE_CONTAINER,
        image=template.image or image,
        args=args,
        connection=spec.target or policy.spec.coordinator,
        storage=policy.spec.storage,
        template=template,
        extra_volumes=extra_volumes,
        extra_mounts=extra_mounts,
    )


# --------------------------------------------------------------------------- pieces


def _verify_args(
    spec: CitusRestoreSpec, volumes: list[V1Volume], mounts: list[V1VolumeMount]
) -> list[str]:
    """Flags of a verification (and the checks ConfigMap's volume and mount)."""
    args = [c.FLAG_VERIFY]
    if spec.target is not None:
        # Another server has none of the source's roles (they are never restored).
        args += [c.FLAG_NO_OWNER, c.FLAG_NO_PRIVILEGES]
    if spec.checks_config_map is not None:
        args += [c.FLAG_CHECKS_DIR, c.CHECKS_DIR]
        volumes.append(
            V1Volume(
                name=CHECKS_VOLUME,
                config_map=V1ConfigMapVolumeSource(
                    name=spec.checks_config_map, default_mode=CA_FILE_MODE, optional=False
                ),
            )
        )
        mounts.append(V1VolumeMount(name=CHECKS_VOLUME, mount_path=c.CHECKS_DIR, read_only=True))
    return args


def _same_namespace(*metas: ObjectMeta) -> str:
    namespaces = {meta.namespace for meta in metas}
    if len(namespaces) != 1 or None in namespaces or "" in namespaces:
        raise ValueError(f"objects must be in one namespace, got {sorted(map(str, namespaces))}")
    (namespace,) = namespaces
    assert namespace is not None
    return namespace


def _owner_reference(kind: str, meta: ObjectMeta) -> V1OwnerReference:
    if not meta.name or not meta.uid:
        raise ValueError(f"{kind} needs metadata.name and metadata.uid to own a Job")
    return V1OwnerReference(
        api_version=API_VERSION,
        kind=kind,
        name=meta.name,
        uid=meta.uid,
        controller=True,
        block_owner_deletion=True,
    )


def _labels(
    *,
    component: str,
    instance: str,
    policy: str,
    backup: str,
    restore: str | None = None,
) -> dict[str, str]:
    labels = {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: label_value(instance),
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGER_NAME,
        LABEL_POLICY: label_value(policy),
        LABEL_BACKUP: label_value(backup),
    }
    if restore is not None:
        labels[LABEL_RESTORE] = label_value(restore)
    return labels


def _secret_env(name: str, ref: SecretKeyRef) -> V1EnvVar:
    return V1EnvVar(
        name=name,
        value_from=V1EnvVarSource(
            secret_key_ref=V1SecretKeySelector(name=ref.name, key=ref.key, optional=False)
        ),
    )


def _ca_volume(name: str, source: CertificateSource) -> V1Volume:
    if source.secret_key_ref is not None:
        ref = source.secret_key_ref
        return V1Volume(
            name=name,
            secret=V1SecretVolumeSource(
                secret_name=ref.name,
                items=[V1KeyToPath(key=ref.key, path=c.CA_FILE_NAME)],
                default_mode=CA_FILE_MODE,
                optional=False,
            ),
        )
    assert source.config_map_key_ref is not None
    cm = source.config_map_key_ref
    return V1Volume(
        name=name,
        config_map=V1ConfigMapVolumeSource(
            name=cm.name,
            items=[V1KeyToPath(key=cm.key, path=c.CA_FILE_NAME)],
            default_mode=CA_FILE_MODE,
            optional=False,
        ),
    )


def _env_and_volumes(
    connection: PostgresConnection, storage: StorageSpec
) -> tuple[list[V1EnvVar], list[V1Volume], list[V1VolumeMount]]:
    env = [
        V1EnvVar(name=c.ENV_PGHOST, value=connection.host),
        V1EnvVar(name=c.ENV_PGPORT, value=str(connection.port)),
        V1EnvVar(name=c.ENV_PGUSER, value=connection.user),
        _secret_env(c.ENV_PGPASSWORD, connection.password_secret_ref),
        V1EnvVar(name=c.ENV_PGSSLMODE, value=str(connection.ssl_mode)),
        V1EnvVar(name=c.ENV_S3_ENDPOINT, value=storage.endpoint_url),
        V1EnvVar(name=c.ENV_S3_BUCKET, value=storage.bucket),
        V1EnvVar(name=c.ENV_S3_PREFIX, value=storage.prefix),
        _secret_env(c.ENV_S3_ACCESS_KEY_ID, storage.access_key_id_secret_ref),
        _secret_env(c.ENV_S3_SECRET_ACCESS_KEY, storage.secret_access_key_secret_ref),
        V1EnvVar(name=c.ENV_S3_INSECURE, value="true" if storage.insecure_skip_verify else "false"),
        V1EnvVar(name=c.ENV_HOME, value=c.TMP_DIR),
    ]
    volumes = [V1Volume(name=TMP_VOLUME, empty_dir=V1EmptyDirVolumeSource())]
    mounts = [V1VolumeMount(name=TMP_VOLUME, mount_path=c.TMP_DIR)]
    if storage.region is not None:
        env.append(V1EnvVar(name=c.ENV_S3_REGION, value=storage.region))
    if storage.ca is not None:
        env.append(V1EnvVar(name=c.ENV_S3_CA_FILE, value=f"{c.S3_CA_DIR}/{c.CA_FILE_NAME}"))
        volumes.append(_ca_volume(S3_CA_VOLUME, storage.ca))
        mounts.append(V1VolumeMount(name=S3_CA_VOLUME, mount_path=c.S3_CA_DIR, read_only=True))
    if connection.ssl_root_cert is not None:
        env.append(V1EnvVar(name=c.ENV_PGSSLROOTCERT, value=f"{c.PG_CA_DIR}/{c.CA_FILE_NAME}"))
        volumes.append(_ca_volume(PG_CA_VOLUME, connection.ssl_root_cert))
        mounts.append(V1VolumeMount(name=PG_CA_VOLUME, mount_path=c.PG_CA_DIR, read_only=True))
    return env, volumes, mounts


def _resources(template: JobTemplate) -> V1ResourceRequirements | None:
    if template.resources is None:
        return None
    return V1ResourceRequirements(
        limits={k: str(v) for k, v in template.resources.limits.items()} or None,
        requests={k: str(v) for k, v in template.resources.requests.items()} or None,
    )


def _tolerations(template: JobTemplate) -> list[V1Toleration] | None:
    return [
        V1Toleration(
            key=t.key,
            operator=t.operator,
            value=t.value,
            effect=t.effect,
            toleration_seconds=t.toleration_seconds,
        )
        for t in template.tolerations
    ] or None


def _pod_security_context() -> V1PodSecurityContext:
    return V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=c.RUNNER_UID,
        run_as_group=c.RUNNER_UID,
        fs_group=c.RUNNER_UID,
        seccomp_profile=V1SeccompProfile(type="RuntimeDefault"),
    )


def _container_security_context() -> V1SecurityContext:
    return V1SecurityContext(
        run_as_non_root=True,
        run_as_user=c.RUNNER_UID,
        run_as_group=c.RUNNER_UID,
        read_only_root_filesystem=True,
        allow_privilege_escalation=False,
        privileged=False,
        capabilities=V1Capabilities(drop=["ALL"]),
        seccomp_profile=V1SeccompProfile(type="RuntimeDefault"),
    )


def _job(
    *,
    name: str,
    namespace: str,
    owner: V1OwnerReference,
    labels: dict[str, str],
    container_name: str,
    image: str,
    args: Sequence[str],
    connection: PostgresConnection,
    storage: StorageSpec,
    template: JobTemplate,
    extra_volumes: Sequence[V1Volume] = (),
    extra_mounts: Sequence[V1VolumeMount] = (),
) -> V1Job:
    env, volumes, mounts = _env_and_volumes(connection, storage)
    volumes += extra_volumes
    mounts += extra_mounts
    container = V1Container(
        name=container_name,
        image=image,
        image_pull_policy=template.image_pull_policy,
        command=[c.COMMAND],
        args=list(args),
        env=env,
        resources=_resources(template),
        security_context=_container_security_context(),
        volume_mounts=mounts,
        termination_message_path=c.TERMINATION_MESSAGE_PATH,
        termination_message_policy="FallbackToLogsOnError",
    )
    pod = V1PodSpec(
        restart_policy="Never",
        containers=[container],
        volumes=volumes,
        security_context=_pod_security_context(),
        service_account_name=template.service_account_name,
        automount_service_account_token=template.automount_service_account_token,
        enable_service_links=False,
        node_selector=dict(template.node_selector) or None,
        tolerations=_tolerations(template),
        image_pull_secrets=[
            V1LocalObjectReference(name=s.name) for s in template.image_pull_secrets
        ]
        or None,
        priority_class_name=template.priority_class_name,
    )
    return V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=V1ObjectMeta(
            name=name,
            namespace=namespace,
            labels=dict(labels),
            owner_references=[owner],
        ),
        spec=V1JobSpec(
            backoff_limit=template.backoff_limit,
            active_deadline_seconds=template.active_deadline_seconds,
            ttl_seconds_after_finished=template.ttl_seconds_after_finished,
            pod_replacement_policy="Failed",
            template=V1PodTemplateSpec(metadata=V1ObjectMeta(labels=dict(labels)), spec=pod),
        ),
    )
