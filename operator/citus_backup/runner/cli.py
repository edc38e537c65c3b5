"""Subcommands ``backup``, ``restore`` and ``list`` of ``citus-backup``.

This module only turns flags and environment into options and reports the
outcome the way a Job needs it: progress on stderr, one JSON summary line on
stdout, the same summary (shortened to fit) in the pod's termination message,
and exit code 0 on success, 1 on failure (2 for bad usage, from argparse).
SIGTERM (a deleted pod, ``activeDeadlineSeconds``) is turned into an error in
the main thread, so streams are stopped, multipart uploads aborted and
temporary databases dropped before the process exits.

Secrets are never flags: PGPASSWORD / PGPASSFILE and S3_ACCESS_KEY_ID /
S3_SECRET_ACCESS_KEY (or AWS_*) come from the environment only.

Only :mod:`.backup` is imported up front (it keeps the minio SDK and the
pydantic models out of its own imports, see there); ``restore``, ``list`` and
``protect`` import their modules when they run, so that a backup Job does not
pay for them before its first pg_dump.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from citus_backup.errors import CitusBackupError, PermanentError, TransientError
from citus_backup.runner import layout, split
from citus_backup.runner.backup import DEFAULT_COMPRESS, BackupOptions, run_backup
from citus_backup.runner.config import PgConfig, S3Config, pg_config, s3_config
from citus_backup.runner.layout import parse_location
from citus_backup.runner.partsize import MiB, PartSchedule
from citus_backup.runner.progress import DEFAULT_INTERVAL
from citus_backup.runner.selection import effective_cpus
from citus_backup.runner.summary import RunSummary, termination_message

log = logging.getLogger("citus_backup.runner")

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
#: Overrides the default path (test harnesses without a kubelet).
TERMINATION_LOG_ENV = "CITUS_BACKUP_TERMINATION_LOG"


class Interrupted(TransientError):
    reason = "Interrupted"


def available_cpus() -> int:
    """CPUs for this process: affinity mask, limited by the cgroup v2 quota."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        affinity = os.cpu_count() or 1
    try:
        cpu_max: str | None = Path("/sys/fs/cgroup/cpu.max").read_text()
    except OSError:
        cpu_max = None
    return effective_cpus(affinity, cpu_max)


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is not 0 or a positive integer")
    return number


def _part_size(value: str) -> int:
    size = int(float(value) * MiB)
    try:
        PartSchedule(size)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return size


def _bool_flag(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not true or false")


def _pg_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    pgopts = parent.add_argument_group(
        "PostgreSQL (libpq environment: PGHOST, PGPORT, PGUSER, PGPASSWORD, PGSSLMODE, ...)"
    )
    pgopts.add_argument("--pg-host", help="server host (default $PGHOST)")
    pgopts.add_argument("--pg-port", type=int, help="server port (default $PGPORT)")
    pgopts.add_argument("--pg-user", help="user (default $PGUSER); the password only from env")
    pgopts.add_argument("--pg-sslmode", help="libpq sslmode (default $PGSSLMODE)")
    pgopts.add_argument(
        "--maintenance-db",
        default="postgres",
        help="database to connect to for catalog queries (default postgres)",
    )
    return parent


def _s3_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    s3opts = parent.add_argument_group(
        "S3 (environment: S3_ENDPOINT, S3_BUCKET, S3_PREFIX, S3_REGION, S3_SECURE, "
        "S3_CA_FILE, S3_INSECURE, S3_ACCESS_KEY_ID/S3_SECRET_ACCESS_KEY or AWS_*)"
    )
    s3opts.add_argument("--s3-endpoint", help="host:port or http(s)://host:port")
    s3opts.add_argument("--bucket", help="bucket (default $S3_BUCKET)")
    s3opts.add_argument("--prefix", help="key prefix of all backup sets (default $S3_PREFIX)")
    s3opts.add_argument("--s3-region", help="region (default $S3_REGION, else auto)")
    s3opts.add_argument(
        "--s3-secure",
        type=_bool_flag,
        metavar="true|false",
        help="use TLS (default from the endpoint URL, else true)",
    )
    s3opts.add_argument("--s3-ca-file", help="CA bundle to verify the endpoint's certificate")
    s3opts.add_argument(
        "--s3-insecure-skip-verify",
        action="store_true",
        default=None,
        help="do not verify the endpoint's TLS certificate",
    )
    return parent


def _reporting_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--termination-log",
        metavar="PATH",
        help=f"also write the summary here (default ${TERMINATION_LOG_ENV}, else "
        f"{DEFAULT_TERMINATION_LOG} if it exists)",
    )
    parent.add_argument(
        "--progress-interval",
        type=float,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help=f"seconds between progress lines on stderr (default {DEFAULT_INTERVAL:g})",
    )
    parent.add_argument(
        "--jobs",
        "-j",
        type=_positive_int,
        help="databases processed in parallel (default: CPUs available, max 8)",
    )
    return parent


def _split_arguments(backup: argparse.ArgumentParser) -> None:
    backup.add_argument(
        "--split-threshold",
        type=_non_negative_int,
        default=split.DEFAULT_THRESHOLD,
        metavar="BYTES",
        help="split a database of at least this many bytes (pg_total_relation_size of its "
        "tables) into a schema archive and data parts dumped in parallel; 0: never "
        f"(default {split.DEFAULT_THRESHOLD}: 1 GiB)",
    )
    backup.add_argument(
        "--split-jobs",
        type=_positive_int,
        metavar="N",
        help="parts of one split database dumped at once (default: --jobs)",
    )


def register(subparsers: Any) -> None:
    pgp, s3p, report = _pg_parent(), _s3_parent(), _reporting_parent()

    backup = subparsers.add_parser(
        "backup",
        parents=[pgp, s3p, report],
        help="dump every database (and roles) into a backup set in S3",
        description="Dump every database with pg_dump -Fc and the globals with pg_dumpall, "
        "streamed into <prefix>/<tier>/<backup-id>/ in S3; manifest.json is written last.",
    )
    backup.add_argument("--backup-id", help="id of the set (default: UTC time, 20261127T030000Z)")
    backup.add_argument("--tier", default=layout.DEFAULT_TIER, help="tier (default daily)")
    backup.add_argument(
        "--also-tier",
        action="append",
        default=[],
        metavar="TIER",
        help="also place the set under this tier (server-side copy); repeatable",
    )
    backup.add_argument(
        "--include-database",
        action="append",
        default=[],
        metavar="NAME",
        help="back up only these databases (exact names); repeatable",
    )
    backup.add_argument(
        "--exclude-database",
        action="append",
        default=[],
        metavar="NAME",
        help="skip these databases; repeatable",
    )
    backup.add_argument(
        "--compress",
        default=DEFAULT_COMPRESS,
        help=f"pg_dump --compress value (default {DEFAULT_COMPRESS}: fast gzip)",
    )
    backup.add_argument(
        "--part-size",
        type=_part_size,
        default=8 * MiB,
        metavar="MiB",
        help="initial multipart part size in MiB (default 8, min 5; grows after 1000 parts)",
    )
    backup.add_argument(
        "--max-inflight-parts",
        type=_positive_int,
        default=2,
        metavar="N",
        help="parts uploading at once per database (default 2)",
    )
    backup.add_argument(
        "--create-bucket", action="store_true", help="create the bucket if it does not exist"
    )
    backup.add_argument(
        "--no-globals",
        action="store_true",
        help="do not dump roles and tablespaces (pg_dumpall --globals-only)",
    )
    backup.add_argument(
        "--no-role-passwords",
        action="store_true",
        help="dump roles without passwords (needed without superuser)",
    )
    backup.add_argument(
        "--lock-wait-timeout", metavar="TIMEOUT", help="pg_dump --lock-wait-timeout (e.g. 5min)"
    )
    backup.add_argument(
        "--consistency",
        choices=("snapshot", "block-writes"),
        default="snapshot",
        help="Citus databases: snapshot (default; shards are read in their own worker "
        "transactions) or block-writes (writes to Citus tables wait while the database is "
        "dumped, so every table is from one moment); see docs/citus.md",
    )
    backup.add_argument(
        "--no-row-counts",
        action="store_true",
        help="do not count each table's rows after its dump (a restore then checks none)",
    )
    backup.add_argument(
        "--no-keep-newest",
        action="store_true",
        help="do not move expiry protection to this set after success (by default the set "
        "is untagged and the previously protected set of its tiers tagged expirable again)",
    )
    _split_arguments(backup)
    backup.set_defaults(func=_backup)

    protector = subparsers.add_parser(
        "protect",
        parents=[s3p],
        help="make a complete set the one that never expires in its tier(s)",
        description="Remove the expirable tag from every object of the set and put it back on "
        "the other complete sets of the tier(s). `backup` does this itself after success.",
    )
    protector.add_argument("--backup-id", required=True, help="id of the complete set")
    protector.add_argument(
        "--tier",
        action="append",
        default=[],
        metavar="TIER",
        help="tier(s) to protect it in (repeatable; default daily)",
    )
    protector.set_defaults(func=_protect)

    restore = subparsers.add_parser(
        "restore",
        parents=[pgp, s3p, report],
        help="restore a backup set (everything, one database, tables or schemas)",
        description="Restore through a temporary database that is verified (sha256) and then "
        "swapped in atomically; existing databases are replaced only with --replace.",
    )
    source = restore.add_mutually_exclusive_group(required=True)
    source.add_argument("--backup-id", help="id of the set (with --tier)")
    source.add_argument(
        "--location",
        metavar="KEY-PREFIX",
        help="the set's key prefix: [s3://bucket/]<prefix>/<tier>/<backup-id>",
    )
    source.add_argument(
        "--latest", action="store_true", help="the newest complete set in --tier under the prefix"
    )
    restore.add_argument("--tier", default=layout.DEFAULT_TIER, help="tier (default daily)")
    restore.add_argument(
        "--database",
        action="append",
        default=[],
        metavar="NAME",
        help="restore only this database of the set; repeatable (default: all + globals)",
    )
    restore.add_argument(
        "--target-database", metavar="NAME", help="restore --database under this name, side by side"
    )
    objects = restore.add_mutually_exclusive_group()
    objects.add_argument(
        "--table",
        action="append",
        default=[],
        metavar="SCHEMA.NAME",
        help="restore only this table of --database; repeatable",
    )
    objects.add_argument(
        "--schema",
        action="append",
        default=[],
        metavar="NAME",
        help="restore only this schema of --database; repeatable",
    )
    restore.add_argument(
        "--replace", action="store_true", help="replace existing databases/tables (atomically)"
    )
    restore.add_argument(
        "--keep-old", action="store_true", help="keep a replaced database as <name>_old_<backup-id>"
    )
    restore.add_argument(
        "--globals",
        dest="globals",
        action="store_true",
        default=None,
        help="restore roles/tablespaces (default only when restoring all)",
    )
    restore.add_argument(
        "--no-globals",
        dest="globals",
        action="store_false",
        help="do not restore roles/tablespaces",
    )
    restore.add_argument(
        "--citus-worker",
        action="append",
        default=[],
        type=_host_port,
        metavar="HOST:PORT",
        help="Citus: restore onto this worker (repeat for each); default: the workers of the "
        "target database, else of the maintenance database, else those in the backup",
    )
    restore.add_argument("--no-owner", action="store_true", help="pg_restore --no-owner")
    restore.add_argument(
        "--split-jobs",
        type=_positive_int,
        metavar="N",
        help="split databases: data parts restored at once and pg_restore -j of their "
        "post-data (default: --jobs, else the CPUs available)",
    )
    restore.add_argument(
        "--no-privileges",
        action="store_true",
        help="pg_restore --no-privileges (and no database ACL)",
    )
    restore.add_argument(
        "--verify",
        action="store_true",
        help="verification: restore each database into a scratch database "
        "(citus_backup_verify_*), check it, drop it; touches no other database",
    )
    restore.add_argument(
        "--progress-tag",
        metavar="HEX",
        help="advertise progress as application_name citus-backup:HEX:<done>/<total>:<bytes> "
        "of one session (the operator reads it)",
    )
    restore.add_argument(
        "--checks-dir",
        type=Path,
        metavar="DIR",
        help="with --verify: <database>.<check>.sql files, each a query that must return true",
    )
    restore.set_defaults(func=_restore)

    lister = subparsers.add_parser(
        "list",
        parents=[s3p],
        help="list the backup sets under the prefix",
        description="Backup sets under <prefix>: id, time, tiers, databases, size, status.",
    )
    lister.add_argument("--tier", help="only this tier")
    lister.add_argument("-o", "--output", choices=("text", "json"), default="text")
    lister.set_defaults(func=_list)


# ---------------------------------------------------------------- helpers


def _pg_config(args: argparse.Namespace) -> PgConfig:
    return pg_config(
        os.environ,
        host=args.pg_host,
        port=args.pg_port,
        user=args.pg_user,
        sslmode=args.pg_sslmode,
        maintenance_db=args.maintenance_db,
    )


def _s3_config(args: argparse.Namespace) -> S3Config:
    return s3_config(
        os.environ,
        endpoint=args.s3_endpoint,
        bucket=args.bucket,
        prefix=args.prefix,
        region=args.s3_region,
        secure=args.s3_secure,
        ca_file=args.s3_ca_file,
        insecure_skip_verify=args.s3_insecure_skip_verify,
    )


def _setup_logging() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"interrupted by signal {signal.Signals(signum).name}")


def _write_termination_log(path: str | None, summary: RunSummary) -> None:
    """--termination-log, else $CITUS_BACKUP_TERMINATION_LOG, else the pod's file."""
    path = path or os.environ.get(TERMINATION_LOG_ENV) or None
    if path is None:
        if not os.path.exists(DEFAULT_TERMINATION_LOG):
            return
        path = DEFAULT_TERMINATION_LOG
    try:
        with open(path, "wb") as handle:
            handle.write(termination_message(summary))
    except OSError as exc:
        log.warning("cannot write the termination log %s: %s", path, exc)


def run_command(command: str, args: argparse.Namespace, body: Callable[[RunSummary], None]) -> int:
    """Run ``body``; print the summary; exit code 0/1."""
    handler = _setup_logging()
    summary = RunSummary(command)
    started = time.monotonic()
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        previous = None
    code = 1
    try:
        body(summary)
        summary.status = "succeeded"
        code = 0
    except CitusBackupError as exc:
        summary.error, summary.reason = str(exc), exc.reason
        log.error("%s failed: %s", command, exc)
    except KeyboardInterrupt:
        summary.error, summary.reason = "interrupted", "Interrupted"
        log.error("%s interrupted", command)
    except Exception as exc:
        summary.error = f"unexpected error: {type(exc).__name__}: {' '.join(str(exc).split())}"
        summary.reason = "InternalError"
        log.exception("%s failed unexpectedly", command)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if not summary.duration_seconds:
            summary.duration_seconds = time.monotonic() - started
        print(summary.to_line(), flush=True)
        _write_termination_log(args.termination_log, summary)
        log.removeHandler(handler)
    return code


def _backup(args: argparse.Namespace) -> int:
    def body(summary: RunSummary) -> None:
        pg, s3 = _pg_config(args), _s3_config(args)
        options = BackupOptions(
            backup_id=args.backup_id,
            tier=args.tier,
            also_tiers=args.also_tier,
            include=args.include_database,
            exclude=args.exclude_database,
            jobs=args.jobs,
            cpus=available_cpus(),
            compress=args.compress,
            part_size=args.part_size,
            max_inflight=args.max_inflight_parts,
            create_bucket=args.create_bucket,
            globals=not args.no_globals,
            role_passwords=not args.no_role_passwords,
            lock_wait_timeout=args.lock_wait_timeout,
            consistency=args.consistency,
            row_counts=not args.no_row_counts,
            progress_interval=args.progress_interval,
            keep_newest=not args.no_keep_newest,
            split_threshold=args.split_threshold,
            split_jobs=args.split_jobs,
        )
        run_backup(pg, s3, options, summary)

    return run_command("backup", args, body)


def _host_port(text: str) -> tuple[str, int]:
    """``worker-1:5432`` -> ("worker-1", 5432) (argparse type)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def _check_verify_args(args: argparse.Namespace) -> None:
    """--verify restores into scratch databases only: no option that names a target."""
    if args.checks_dir is not None and not args.verify:
        raise PermanentError("--checks-dir needs --verify", reason="InvalidArgument")
    if not args.verify:
        return
    given = [
        flag
        for flag, value in (
            ("--target-database", args.target_database),
            ("--table", args.table),
            ("--schema", args.schema),
            ("--replace", args.replace),
            ("--keep-old", args.keep_old),
            ("--globals", args.globals),
        )
        if value
    ]
    if given:
        raise PermanentError(
            f"--verify restores into scratch databases only: drop {', '.join(given)}",
            reason="InvalidArgument",
        )


def _restore(args: argparse.Namespace) -> int:
    def body(summary: RunSummary) -> None:
        from citus_backup.runner.restore import (  # noqa: PLC0415 (lazy: module doc)
            RestoreOptions,
            parse_table,
            run_restore,
        )

        if args.location and args.location.startswith("s3://"):
            # An s3://bucket/... location names its bucket.
            args.bucket = parse_location(args.location)[0]
        from citus_backup.runner.verify import load_checks  # noqa: PLC0415

        _check_verify_args(args)
        pg, s3 = _pg_config(args), _s3_config(args)
        options = RestoreOptions(
            backup_id=args.backup_id,
            tier=args.tier,
            location=args.location,
            latest=args.latest,
            databases=args.database,
            target_database=args.target_database,
            tables=[parse_table(t) for t in args.table],
            schemas=args.schema,
            replace=args.replace,
            keep_old=args.keep_old,
            globals=args.globals,
            no_owner=args.no_owner,
            no_privileges=args.no_privileges,
            jobs=args.jobs,
            cpus=available_cpus(),
            progress_interval=args.progress_interval,
            citus_workers=args.citus_worker,
            verify=args.verify,
            checks=load_checks(args.checks_dir) if args.verify else (),
            progress_tag=args.progress_tag,
            split_jobs=args.split_jobs,
        )
        run_restore(pg, s3, options, summary)

    return run_command("restore", args, body)


def _protect(args: argparse.Namespace) -> int:
    from citus_backup.runner.protect import protect  # noqa: PLC0415 (lazy: module doc)
    from citus_backup.runner.s3 import S3Store  # noqa: PLC0415

    handler = _setup_logging()
    try:
        s3 = _s3_config(args)
        store = S3Store(s3)
        store.check_bucket()
        backup_id = layout.validate_backup_id(args.backup_id)
        tiers = [layout.validate_tier(t) for t in args.tier or [layout.DEFAULT_TIER]]
        protect(store, s3.prefix, backup_id, tiers)
    except CitusBackupError as exc:
        log.error("protect failed: %s", exc)
        return 1
    finally:
        log.removeHandler(handler)
    return 0


def _list(args: argparse.Namespace) -> int:
    from citus_backup.runner.listing import (  # noqa: PLC0415 (lazy: module doc)
        list_sets,
        render_json,
        render_table,
    )
    from citus_backup.runner.s3 import S3Store  # noqa: PLC0415

    handler = _setup_logging()
    try:
        s3 = _s3_config(args)
        store = S3Store(s3)
        store.check_bucket()
        sets = list_sets(store, s3.prefix, args.tier)
    except CitusBackupError as exc:
        log.error("list failed: %s", exc)
        return 1
    finally:
        log.removeHandler(handler)
    print(render_json(sets) if args.output == "json" else render_table(sets), flush=True)
    return 0
