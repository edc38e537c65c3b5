"""The interface between the Jobs the operator builds and the runner in them.

The runner is the same image's ``citus-backup backup`` / ``citus-backup restore``
(:mod:`citus_backup.runner`). Everything both sides must agree on is here, in
one place: the command, the flags, the environment variable names, the files
the Job mounts, and the user id. Credentials reach the runner only as
environment variables from Secrets (``valueFrom.secretKeyRef``), never as
arguments or annotations.

Environment (set on every backup and restore Job):

=====================  ====================================================
PGHOST, PGPORT         coordinator (restore: ``spec.target`` if set)
PGUSER                 role
PGPASSWORD             from the Secret (``passwordSecretRef``)
PGSSLMODE              libpq sslmode
PGSSLROOTCERT          only with ``sslRootCert``: path of the mounted CA file
S3_ENDPOINT            URL: ``https://host:port`` or ``http://host:port``
S3_BUCKET, S3_PREFIX   bucket and key prefix (no trailing slash)
S3_REGION              only when ``storage.region`` is set
S3_ACCESS_KEY_ID       from the Secret (``accessKeyIdSecretRef``)
S3_SECRET_ACCESS_KEY   from the Secret (``secretAccessKeySecretRef``)
S3_CA_FILE             only with ``storage.ca``: path of the mounted CA file
S3_INSECURE            ``true`` to skip TLS verification, else ``false``
HOME                   ``/tmp`` (the root filesystem is read-only)
=====================  ====================================================

Objects of a backup are written under ``<S3_PREFIX>/<tier>/<backup-id>/`` for
``--tier`` and each ``--also-tier``; the runner reports its result in the
termination message (``/dev/termination-log``).
"""

from __future__ import annotations

from typing import Final

#: The runner's console script (``command`` of the container).
COMMAND: Final = "citus-backup"
BACKUP_SUBCOMMAND: Final = "backup"
RESTORE_SUBCOMMAND: Final = "restore"

# --- environment variable names
ENV_PGHOST: Final = "PGHOST"
ENV_PGPORT: Final = "PGPORT"
ENV_PGUSER: Final = "PGUSER"
ENV_PGPASSWORD: Final = "PGPASSWORD"
ENV_PGSSLMODE: Final = "PGSSLMODE"
ENV_PGSSLROOTCERT: Final = "PGSSLROOTCERT"
ENV_S3_ENDPOINT: Final = "S3_ENDPOINT"
ENV_S3_BUCKET: Final = "S3_BUCKET"
ENV_S3_PREFIX: Final = "S3_PREFIX"
ENV_S3_REGION: Final = "S3_REGION"
ENV_S3_ACCESS_KEY_ID: Final = "S3_ACCESS_KEY_ID"
ENV_S3_SECRET_ACCESS_KEY: Final = "S3_SECRET_ACCESS_KEY"  # noqa: S105 (a variable name)
ENV_S3_CA_FILE: Final = "S3_CA_FILE"
ENV_S3_INSECURE: Final = "S3_INSECURE"
ENV_HOME: Final = "HOME"

#: Variables whose value comes from a Secret; they must never carry a literal ``value``.
SECRET_ENV: Final = frozenset({ENV_PGPASSWORD, ENV_S3_ACCESS_KEY_ID, ENV_S3_SECRET_ACCESS_KEY})

# --- flags of ``citus-backup backup``
FLAG_BACKUP_ID: Final = "--backup-id"
FLAG_TIER: Final = "--tier"
FLAG_ALSO_TIER: Final = "--also-tier"  # repeated
FLAG_INCLUDE_DATABASE: Final = "--include-database"  # repeated
FLAG_EXCLUDE_DATABASE: Final = "--exclude-database"  # repeated
FLAG_JOBS: Final = "--jobs"  # databases in parallel (backup and restore); absent: runner's default
FLAG_COMPRESSION: Final = "--compress"  # pg_dump --compress level
FLAG_CONSISTENCY: Final = "--consistency"  # snapshot | block-writes; absent: snapshot
FLAG_SPLIT_THRESHOLD: Final = "--split-threshold"  # bytes; 0: never split (docs/split.md)
FLAG_SPLIT_JOBS: Final = "--split-jobs"  # parts of one database at once (backup and restore)

# --- flags of ``citus-backup restore`` (also FLAG_BACKUP_ID, FLAG_TIER, FLAG_JOBS)
FLAG_LATEST: Final = "--latest"  # not used by the operator: it resolves the backup itself
FLAG_DATABASE: Final = "--database"  # none: every database of the backup
#: Whether the runner's restore takes ``--database`` more than once. It takes one today,
#: so :func:`citus_backup.specs.jobs.build_restore_job` refuses several databases rather
#: than letting the last flag silently win.
RESTORE_TAKES_SEVERAL_DATABASES: Final = False
FLAG_TARGET_DATABASE: Final = "--target-database"
FLAG_TABLE: Final = "--table"  # repeated
FLAG_SCHEMA: Final = "--schema"  # repeated
FLAG_REPLACE: Final = "--replace"
FLAG_KEEP_OLD: Final = "--keep-old"
FLAG_GLOBALS: Final = "--globals"
FLAG_NO_GLOBALS: Final = "--no-globals"  # one of the two is always passed: no runner default
FLAG_VERIFY: Final = "--verify"  # verification: scratch databases only
FLAG_CHECKS_DIR: Final = "--checks-dir"  # with --verify: the checks ConfigMap's mount
FLAG_NO_OWNER: Final = "--no-owner"
FLAG_PROGRESS_TAG: Final = "--progress-tag"  # restore: progress in a session's application_name
FLAG_NO_PRIVILEGES: Final = "--no-privileges"

# --- files and the user
TMP_DIR: Final = "/tmp"  # noqa: S108 (an emptyDir volume, private to the pod)
S3_CA_DIR: Final = "/etc/citus-backup/s3-ca"
PG_CA_DIR: Final = "/etc/citus-backup/pg-ca"
CHECKS_DIR: Final = "/etc/citus-backup/checks"
CA_FILE_NAME: Final = "ca.crt"
TERMINATION_MESSAGE_PATH: Final = "/dev/termination-log"
#: The non-root user (and group) the runner runs as ("nonroot" of distroless images).
RUNNER_UID: Final = 65532
