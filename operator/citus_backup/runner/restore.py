"""``citus-backup restore``: from a backup set, safely, into a live server.

Every database is restored into a new temporary database
(``citus_backup_tmp_<random>``) and only then given its final name:

* **Streaming and verification.** pg_restore reading stdin can neither list
  nor run in parallel, and cannot seek, so the object is streamed once per
  section: ``pre-data`` and ``post-data`` only need the table of contents at
  the head of the archive (pg_restore exits after it and the download is cut
  short); ``data`` streams the whole object and its sha256 and size are
  compared with the manifest when the stream ends. A mismatch (or a failed
  pg_restore) drops the temporary database: the target was never touched.
  Later passes use ``If-Match`` on the first pass' ETag, so the object cannot
  change between passes unnoticed.
* **Sections and hooks.** Between sections :class:`RestoreHooks` is called
  with the temporary database. For a database backed up with Citus and
  restored into a Citus cluster, the temporary database is created on every
  node and the distribution is rebuilt after ``pre-data``, before data
  arrives (:mod:`.rebuild`); into PostgreSQL without Citus, the ``citus``
  extension is left out of the dump's table of contents and the tables come
  back local, which the summary says (``citus``).
* **Verification.** Before anything is swapped, the restored database is
  compared with the manifest: row counts, and the Citus distribution (types,
  distribution columns, shard counts, colocation). A difference fails the
  restore, naming the table (:func:`.rebuild.verify`).
* **Atomic swap, on every node.** An existing target is replaced only with
  ``--replace``: both databases are closed to connections on every node,
  their sessions (clients, the Citus maintenance daemon) terminated, and the
  renames done as one decision across the nodes (:mod:`.cluster`); the
  previous database is then dropped on every node, or kept as
  ``<name>_old_<backup id>`` with ``--keep-old``.
* **Tables and schemas** (``--table``/``--schema``) are copied out of the
  verified temporary database with ``pg_dump -t/-n`` (which brings indexes,
  constraints, triggers and owned sequences along) into the target with
  ``pg_restore --single-transaction``: all of it or nothing. Into a Citus
  database, the copy is one ``psql --single-transaction`` of the tables'
  pre-data, their distribution as recorded (joining the group of a table
  they were colocated with that is still there), data and post-data.
* **Everything** restores globals (roles, tablespaces) with psql, keeping the
  connecting role's current password, then every database; all targets are
  checked before anything is changed. Databases not named are never touched.
* **Split databases** (:mod:`.split`): the schema archive is downloaded
  (sha256 verified) into a local temporary file — it holds no rows, so no
  dump data is ever on local disk — and restored from there with
  ``--section=pre-data``; then the data parts stream from S3 into
  ``--split-jobs`` concurrent ``pg_restore`` processes, largest first, each
  verifying its object's size and sha256 as it streams; then
  ``pg_restore -j <split-jobs> --section=post-data`` from the file builds the
  indexes and constraints in parallel (``-j`` needs a seekable archive,
  which the schema file is). Every object is checked to exist with the
  manifest's size before the temporary database is created, and any failure
  (corrupted or missing part) drops the temporary database before the swap,
  naming the object. ``--table``/``--schema`` restore only the rest and the
  parts holding the selected tables.
* **Verification** (``--verify``, :mod:`.verify`): every database of the set
  is restored like above into a reserved scratch database, checked (row
  counts, distribution, the user's SQL checks) and dropped on every node; no
  globals, no real database touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Protocol

import psycopg
from psycopg import sql

from citus_backup.errors import CitusBackupError, PermanentError
from citus_backup.runner import citus, dbprops, faults, layout, listing, pg, rebuild, split
from citus_backup.runner import verify as verify_mod
from citus_backup.runner.beacon import Beacon
from citus_backup.runner.cluster import (
    Cluster,
    Node,
    Sessions,
    citus_available,
    has_citus,
    rename_all,
    topology,
)
from citus_backup.runner.cluster import closed as cluster_closed
from citus_backup.runner.config import PgConfig, S3Config
from citus_backup.runner.manifest import (
    MAX_FORMAT_VERSION,
    CitusMetadata,
    CitusTable,
    DatabaseEntry,
    DataPart,
    Manifest,
    ObjectInfo,
)
from citus_backup.runner.progress import DEFAULT_INTERVAL, Counter, Progress
from citus_backup.runner.s3 import RangedRead, S3Store
from citus_backup.runner.selection import default_jobs, quote_name
from citus_backup.runner.summary import RunSummary
from citus_backup.runner.upload import Cancelled

log = logging.getLogger("citus_backup.runner")

SECTIONS = ("pre-data", "data", "post-data")
#: After pg_restore failed, the rest of the object is still downloaded to tell
#: corruption (checksum mismatch) from other causes, if no more than this.
DRAIN_LIMIT = 256 * 1024 * 1024
GLOBALS_LIMIT = 64 * 1024 * 1024
TEMP_PREFIX = "citus_backup_tmp_"
#: psql errors in globals.sql that mean "already there", not failure.
_TOLERATED_GLOBALS_ERRORS = ("already exists",)


@dataclass(frozen=True)
class SectionEvent:
    """Passed to hooks after each pg_restore section."""

    section: str
    source: DatabaseEntry
    database: str  # the temporary database being restored into
    target: str  # the name it will get


class RestoreHooks(Protocol):
    def after_section(self, event: SectionEvent) -> None: ...


class NoHooks:
    def after_section(self, event: SectionEvent) -> None:
        """Nothing to do between sections for plain PostgreSQL."""


@dataclass
class RestoreOptions:
    backup_id: str | None = None
    tier: str = layout.DEFAULT_TIER
    location: str | None = None
    latest: bool = False
    databases: Sequence[str] = ()  # empty: every database of the set
    target_database: str | None = None
    tables: Sequence[tuple[str, str]] = ()
    schemas: Sequence[str] = ()
    replace: bool = False
    keep_old: bool = False
    globals: bool | None = None  # None: only when restoring everything
    no_owner: bool = False
    no_privileges: bool = False
    jobs: int | None = None
    cpus: int = 1
    progress_interval: float = DEFAULT_INTERVAL
    hooks: RestoreHooks = field(default_factory=NoHooks)
    #: Citus workers (host, port) to restore onto, instead of those the target
    #: database (or else the maintenance database, else the backup) names.
    citus_workers: Sequence[tuple[str, int]] = ()
    #: Verification (:mod:`.verify`): restore every database into a scratch
    #: database, check it, drop it; never a real database, never the globals.
    verify: bool = False
    checks: Sequence[verify_mod.Check] = ()
    #: Advertise progress in a session's application_name (:mod:`.beacon`).
    progress_tag: str | None = None
    #: Split databases: parts restored at once, and pg_restore -j of post-data
    #: (default: ``jobs``, else ``cpus``).
    split_jobs: int | None = None


#: Milliseconds a user check of a verification may run (statement_timeout).
CHECK_TIMEOUT_MS = 10 * 60 * 1000

#: How a database is restored (:meth:`_Restore.plan_database`).
PLAIN, DISTRIBUTED, LOCAL = "plain", "distributed", "local"


@dataclass
class DatabasePlan:
    """One database's restore: ``plain`` (no Citus in the backup), ``distributed``
    (rebuilt on the cluster's nodes) or ``local`` (a Citus backup into a server
    without Citus: the extension is left out and the tables come back local)."""

    mode: str
    cluster: Cluster
    list_file: str | None = None  # pg_restore -L, for ``local``


class _Feed:
    """Copies object chunks into pg_restore's stdin, hashing and counting them."""

    def __init__(
        self,
        child: pg.Child,
        expected_size: int,
        verify: bool,
        counter: Counter | None,
        cancelled: threading.Event,
    ) -> None:
        self.child = child
        self.expected_size = expected_size
        self.verify = verify
        self.counter = counter
        self.cancelled = cancelled
        self.hasher = hashlib.sha256()
        self.size = 0
        self._open = True

    def run(self, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            if self.cancelled.is_set():
                raise Cancelled("stopped: the run is being cancelled")
            self.hasher.update(chunk)
            self.size += len(chunk)
            if self.counter is not None:
                self.counter.add(len(chunk))
            if not self._open:
                continue
            try:
                self.child.write_all(chunk)
            except (BrokenPipeError, ConnectionResetError):
                # pg_restore is done (TOC-only sections) or failed.
                self._open = False
                code = self.child.wait()
                if code == 0 and not self.verify:
                    return
                if code != 0 and self.expected_size - self.size > DRAIN_LIMIT:
                    return
                # Otherwise read on: the checksum tells corruption from
                # other failures, and the data pass verifies the whole object.

    def finish(self) -> int:
        self.child.close_stdin()
        return self.child.wait()


def checksum_error(what: str, detail: str) -> PermanentError:
    return PermanentError(
        f"{what}: checksum mismatch, the stored object is corrupted or incomplete ({detail}); "
        "nothing was changed",
        reason="ChecksumMismatch",
    )


def _check_stream(
    feed: _Feed, code: int, child: pg.Child, expected: ObjectInfo, what: str, *, whole: bool
) -> None:
    """After pg_restore read an object: its sha256 (when all of it was read), its
    exit code, and with ``whole`` that all of it was read (sizes from the manifest)."""
    digest = feed.hasher.hexdigest()
    complete = feed.size == expected.size
    if complete and digest != expected.sha256:
        raise checksum_error(what, f"sha256 {digest} != {expected.sha256}")
    if code != 0:
        raise child.failure(what)
    if whole and not complete:
        raise checksum_error(what, f"{feed.size} bytes read, manifest says {expected.size}")


class _Restore:
    def __init__(
        self, pg_config: PgConfig, store: S3Store, options: RestoreOptions, summary: RunSummary
    ) -> None:
        self.pg_config = pg_config
        self.pg = pg.Pg(pg_config)
        self.env = pg_config.child_env()
        self.store = store
        self.options = options
        self.summary = summary
        self.children = pg.Children()
        self.progress = Progress("restore", options.progress_interval)
        self.version_num = 0
        self.location: layout.SetLocation | None = None
        self.manifest: Manifest | None = None
        self._temp_files: list[str] = []
        #: Rows counted per database by a split restore's part workers.
        self._counted: dict[str, dict[tuple[str, str], int]] = {}
        self._counted_lock = threading.Lock()

    # ---------------------------------------------------------- locating
    def resolve(self) -> tuple[layout.SetLocation, Manifest]:
        options = self.options
        prefix = self.store.config.prefix
        if options.location:
            bucket, location = layout.parse_location(options.location)
            if bucket and bucket != self.store.bucket:
                raise PermanentError(
                    f"--location names bucket {bucket!r} but the S3 bucket is "
                    f"{self.store.bucket!r} (set S3_BUCKET/--bucket to it)",
                    reason="InvalidArgument",
                )
        elif options.latest:
            location = listing.latest_complete(
                self.store, prefix, layout.validate_tier(options.tier)
            )
        elif options.backup_id:
            location = layout.make_location(prefix, options.tier, options.backup_id)
        else:
            raise PermanentError(
                "no backup set given: use --backup-id, --location or --latest",
                reason="InvalidArgument",
            )
        return location, listing.load_manifest(self.store, location)

    # --------------------------------------------------------- streaming
    def _maintenance_db(self, avoid: Sequence[str]) -> str:
        """The database to run CREATE/RENAME/DROP from; never one being swapped."""
        db = self.pg_config.maintenance_db
        return "template1" if db in avoid else db

    def _restore_args(self) -> list[str]:
        args = ["-w", "--exit-on-error"]
        if self.options.no_owner:
            args.append("--no-owner")
        if self.options.no_privileges:
            args.append("--no-privileges")
        return args

    def stream_section(
        self,
        *,
        entry: DatabaseEntry,
        key: str,
        database: str,
        section: str,
        etag: str | None,
        counter: Counter | None,
        plan: DatabasePlan | None = None,
    ) -> str:
        """One pg_restore pass fed from S3; returns the object's ETag.

        The ``data`` pass streams the whole object and verifies its size and
        sha256; the other passes read ranges until pg_restore has the table of
        contents it needs.
        """
        verify = section == "data"
        expected = entry.object
        what = f"restore ({section}) of database {quote_name(entry.name)}"
        argv = [pg.tool("pg_restore"), *self._restore_args(), f"--section={section}"]
        if plan is not None and plan.list_file is not None:
            argv += ["-L", plan.list_file]
        argv += ["-d", self.pg_config.conninfo(database)]
        env = self._section_env(plan)
        child = self.children.start(argv, env, stdin=subprocess.PIPE, label="pg_restore")
        feed = _Feed(child, expected.size, verify, counter, self.children.cancelled)
        try:
            if verify:
                with self.store.open_read(key, if_match=etag) as read:
                    feed.run(read.chunks)
                    etag = read.etag
            else:
                ranged = RangedRead(
                    self.store, key, expected.size, etag, before_next=child.wait_consumed
                )
                chunks = ranged.chunks()
                try:
                    feed.run(chunks)
                finally:
                    chunks.close()
                etag = ranged.etag
            code = feed.finish()
        except BaseException:
            child.terminate()
            raise
        finally:
            self.children.done(child)
        _check_stream(feed, code, child, expected, what, whole=verify)
        return etag

    def _section_env(self, plan: DatabasePlan | None) -> dict[str, str]:
        """pg_restore's environment; for a Citus rebuild with the session
        settings of :data:`.citus.RESTORE_SESSION_SETTINGS` added to PGOPTIONS."""
        if plan is None or plan.mode != DISTRIBUTED:
            return self.env
        extra = " ".join(f"-c {name}={value}" for name, value in citus.RESTORE_SESSION_SETTINGS)
        env = dict(self.env)
        env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} {extra}".strip()
        return env

    def restore_into(
        self,
        entry: DatabaseEntry,
        key: str,
        database: str,
        target: str,
        plan: DatabasePlan | None = None,
        *,
        parts: Sequence[DataPart] = (),
    ) -> None:
        """The three sections into ``database`` with the hooks in between
        (and, for a Citus rebuild, the distribution after ``pre-data``)."""
        if entry.split:
            self.restore_split_into(entry, database, target, plan, parts or entry.parts)
            return
        counter = self.progress.track(quote_name(entry.name))
        etag: str | None = None
        for section in SECTIONS:
            etag = self.stream_section(
                entry=entry,
                key=key,
                database=database,
                section=section,
                etag=etag,
                counter=counter if section == "data" else None,
                plan=plan,
            )
            self._after_section(section, entry, database, target, plan)
        self.progress.finish(counter, f"restored into {quote_name(database)}")

    def _after_section(
        self,
        section: str,
        entry: DatabaseEntry,
        database: str,
        target: str,
        plan: DatabasePlan | None,
    ) -> None:
        faults.point(section)
        if section == "pre-data" and plan is not None and plan.mode == DISTRIBUTED:
            assert entry.citus is not None
            with self.pg.session(database) as conn:
                rebuild.register_nodes(conn, plan.cluster)
                rebuild.distribute(conn, citus.distribution_statements(entry.citus))
            faults.point("distributed")
        self.options.hooks.after_section(SectionEvent(section, entry, database, target))

    # ---------------------------------------------------- split databases
    def _split_jobs(self) -> int:
        return max(1, self.options.split_jobs or self.options.jobs or self.options.cpus)

    def check_objects(self, entry: DatabaseEntry, parts: Sequence[DataPart]) -> None:
        """Every object a split restore reads exists with the manifest's size
        (before anything is created: a missing part fails the run up front)."""
        assert self.location is not None
        for obj in (entry.object, *(part.object for part in parts)):
            key = self.location.key(obj.name)
            found = self.store.stat(key)
            if found is None:
                raise PermanentError(
                    f"restore of database {quote_name(entry.name)}: object {obj.name} of the "
                    f"backup is missing (s3://{self.store.bucket}/{key}); nothing was changed",
                    reason="ObjectMissing",
                )
            if found.size != obj.size:
                raise checksum_error(
                    f"restore of database {quote_name(entry.name)} ({obj.name})",
                    f"{found.size} bytes stored, manifest says {obj.size}",
                )

    def _download(self, entry: DatabaseEntry, obj: ObjectInfo) -> str:
        """The schema archive into a local temporary file, size and sha256
        verified (it holds no rows: see the module docstring)."""
        assert self.location is not None
        what = f"restore of database {quote_name(entry.name)} ({obj.name})"
        handle, path = tempfile.mkstemp(prefix="citus-backup-schema-", suffix=".dump")
        self._temp_files.append(path)
        hasher = hashlib.sha256()
        size = 0
        with (
            os.fdopen(handle, "wb") as out,
            self.store.open_read(self.location.key(obj.name)) as read,
        ):
            for chunk in read.chunks:
                if self.children.cancelled.is_set():
                    raise Cancelled("stopped: the run is being cancelled")
                hasher.update(chunk)
                size += len(chunk)
                out.write(chunk)
        digest = hasher.hexdigest()
        if size != obj.size:
            raise checksum_error(what, f"{size} bytes read, manifest says {obj.size}")
        if digest != obj.sha256:
            raise checksum_error(what, f"sha256 {digest} != {obj.sha256}")
        return path

    def _restore_file(
        self, path: str, database: str, args: Sequence[str], plan: DatabasePlan | None, what: str
    ) -> None:
        argv = [pg.tool("pg_restore"), *self._restore_args(), *args]
        if plan is not None and plan.list_file is not None:
            argv += ["-L", plan.list_file]
        argv += ["-d", self.pg_config.conninfo(database), path]
        child = self.children.start(argv, self._section_env(plan), label="pg_restore")
        try:
            code = child.wait()
        except BaseException:
            child.terminate()
            raise
        finally:
            self.children.done(child)
        if code != 0:
            raise child.failure(what)

    def stream_part(
        self,
        entry: DatabaseEntry,
        part: DataPart,
        database: str,
        counter: Counter | None,
        plan: DatabasePlan | None,
    ) -> None:
        """One data part streamed into ``pg_restore`` (no ``--section``: a part
        holds only data, and large objects' creation, which PostgreSQL 15's
        pg_restore files under pre-data), size and sha256 verified."""
        assert self.location is not None
        expected = part.object
        what = f"restore of database {quote_name(entry.name)} ({expected.name})"
        argv = [pg.tool("pg_restore"), *self._restore_args()]
        argv += ["-d", self.pg_config.conninfo(database)]
        child = self.children.start(
            argv, self._section_env(plan), stdin=subprocess.PIPE, label="pg_restore"
        )
        feed = _Feed(child, expected.size, True, counter, self.children.cancelled)
        try:
            with self.store.open_read(self.location.key(expected.name)) as read:
                feed.run(read.chunks)
            code = feed.finish()
        except BaseException:
            child.terminate()
            raise
        finally:
            self.children.done(child)
        _check_stream(feed, code, child, expected, what, whole=True)
        self._count_part(entry, part, database)

    def _count_part(self, entry: DatabaseEntry, part: DataPart, database: str) -> None:
        """Row counts of the part's tables, now that their rows are in (each
        table's rows come from its part only): the verification's scans run
        in the part workers, in parallel, instead of one after another at the end."""
        recorded = {(c.schema_name, c.name) for c in entry.row_counts}
        tables = [(t.schema_name, t.name) for t in part.tables]
        tables = [t for t in tables if t in recorded]
        if not tables:
            return
        with self.pg.session(database) as conn, pg.errors_as("count the restored rows"):
            counts = pg.count_rows(conn, tables)
        with self._counted_lock:
            self._counted.setdefault(database, {}).update(counts)

    def restore_split_into(
        self,
        entry: DatabaseEntry,
        database: str,
        target: str,
        plan: DatabasePlan | None,
        parts: Sequence[DataPart],
    ) -> None:
        """A split database into ``database``: pre-data from the downloaded
        schema archive, the parts in parallel, post-data with ``-j``."""
        shown = quote_name(entry.name)
        jobs = self._split_jobs()
        self.summary.extra.setdefault("splitParts", {})[target] = f"{len(parts)}/{len(entry.parts)}"
        counter = self.progress.track(shown)
        path = self._download(entry, entry.object)
        try:
            self._restore_file(
                path,
                database,
                ["--section=pre-data"],
                plan,
                f"restore (pre-data) of database {shown}",
            )
            self._after_section("pre-data", entry, database, target, plan)
            ordered = sorted(parts, key=lambda p: -p.estimated_size)
            with ThreadPoolExecutor(min(jobs, max(1, len(ordered))), "part") as pool:
                futures = [
                    pool.submit(self.stream_part, entry, part, database, counter, plan)
                    for part in ordered
                ]
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in done:
                        error = future.exception()
                        if error is not None:
                            self.children.cancel()
                            wait(pending)
                            raise error
            self._after_section("data", entry, database, target, plan)
            self._restore_file(
                path,
                database,
                ["--section=post-data", f"--jobs={jobs}"],
                plan,
                f"restore (post-data) of database {shown}",
            )
            self._after_section("post-data", entry, database, target, plan)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.progress.finish(counter, f"restored into {quote_name(database)}")

    def read_toc(self, entry: DatabaseEntry, key: str) -> list[str]:
        """``pg_restore --list`` of the object (its head only, like ``pre-data``)."""
        argv = [pg.tool("pg_restore"), "--list"]
        child = self.children.start(
            argv, self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, label="pg_restore"
        )
        lines: list[str] = []
        reader = threading.Thread(
            target=lambda: lines.extend(
                raw.decode("utf-8", "replace") for raw in iter(child.stdout.readline, b"")
            ),
            daemon=True,
        )
        reader.start()
        feed = _Feed(child, entry.object.size, False, None, self.children.cancelled)
        try:
            ranged = RangedRead(
                self.store, key, entry.object.size, None, before_next=child.wait_consumed
            )
            chunks = ranged.chunks()
            try:
                feed.run(chunks)
            finally:
                chunks.close()
            code = feed.finish()
            reader.join(timeout=30)
        except BaseException:
            child.terminate()
            raise
        finally:
            self.children.done(child)
        if code != 0:
            raise child.failure(f"read the table of contents of {quote_name(entry.name)}")
        return lines

    def _local_list(self, entry: DatabaseEntry, key: str) -> str:
        """A pg_restore -L file of the dump without the Citus extension."""
        kept = [line for line in self.read_toc(entry, key) if not citus.is_citus_toc_line(line)]
        handle, path = tempfile.mkstemp(prefix="citus-backup-toc-", suffix=".list")
        with os.fdopen(handle, "w") as out:
            out.writelines(kept)
        self._temp_files.append(path)
        return path

    # ------------------------------------------------------ one database
    def _owner(self, conn: pg.Connection, entry: DatabaseEntry) -> str | None:
        if self.options.no_owner:
            return None
        owner = entry.properties.owner
        if not pg.role_exists(conn, owner):
            raise PermanentError(
                f"database {quote_name(entry.name)} is owned by role {quote_name(owner)}, "
                "which does not exist: restore the globals first (restore everything, or "
                "--globals) or pass --no-owner",
                reason="RoleNotFound",
            )
        return owner

    def _create_temp(self, conn: pg.Connection, entry: DatabaseEntry) -> str:
        temp = TEMP_PREFIX + secrets.token_hex(6)
        owner = self._owner(conn, entry)
        pg.execute(
            conn,
            dbprops.create_database(temp, entry.properties, owner),
            f"create temporary database {temp} for {quote_name(entry.name)}",
        )
        return temp

    def plan_database(self, conn: pg.Connection, entry: DatabaseEntry, target: str) -> DatabasePlan:
        """How ``entry`` is restored as ``target`` (see :class:`DatabasePlan`);
        ``conn`` is a maintenance session on the coordinator."""
        if entry.citus is None:
            return DatabasePlan(PLAIN, Cluster.single(self.pg_config))
        shown = quote_name(target)
        if not citus_available(conn):
            message = (
                f"database {shown}: the backup has Citus tables but this server has no Citus "
                "(not installed or not in shared_preload_libraries): restored as plain "
                "PostgreSQL, every table local"
            )
            log.warning("%s", message)
            self.summary.extra.setdefault("citusUnavailable", []).append(target)
            self.summary.extra.setdefault("citus", {})[target] = {"mode": LOCAL, "message": message}
            return DatabasePlan(LOCAL, Cluster.single(self.pg_config))
        workers, coordinator, source = self._topology(conn, entry, target)
        cluster = Cluster.with_workers(self.pg_config, workers, coordinator)
        self.summary.extra.setdefault("citus", {})[target] = {
            "mode": DISTRIBUTED,
            "nodes": [n.label for n in cluster.nodes],
            "nodesFrom": source,
        }
        log.info(
            "database %s: Citus restore onto %s (nodes from %s)", shown, cluster.describe(), source
        )
        return DatabasePlan(DISTRIBUTED, cluster)

    def _topology(
        self, conn: pg.Connection, entry: DatabaseEntry, target: str
    ) -> tuple[list[tuple[str, int]], tuple[str, int] | None, str]:
        """Workers and coordinator entry to restore onto, and where they came from:
        ``--citus-worker``, else the target database as it is now, else the
        maintenance database, else the backup's own node list."""
        assert entry.citus is not None
        recorded = entry.citus
        if self.options.citus_workers:
            host = self.pg_config.setting("PGHOST", "localhost")
            port = int(self.pg_config.setting("PGPORT", "5432"))
            coordinator = (host, port) if recorded.coordinator_in_metadata else None
            return list(self.options.citus_workers), coordinator, "--citus-worker"
        for database in (target, self.pg_config.maintenance_db):
            if database not in pg.all_database_names(conn):
                continue
            with self.pg.session(database) as db:
                if has_citus(db):
                    workers, coordinator = topology(db)
                    if workers or coordinator:
                        return workers, coordinator, f"database {database}"
        workers = [
            (n.node_name, n.node_port)
            for n in recorded.nodes
            if n.group_id != 0 and n.node_role == "primary" and n.is_active
        ]
        coordinator = next(
            ((n.node_name, n.node_port) for n in recorded.nodes if n.group_id == 0), None
        )
        return workers, coordinator, "the backup"

    def _maintenance(self, target: str) -> str:
        return self._maintenance_db([target])

    def restore_database(self, entry: DatabaseEntry, target: str) -> DatabasePlan:
        """Restore ``entry`` as ``target`` through a temporary database, on every node."""
        assert self.location is not None
        key = self.location.key(entry.object.name)
        shown = quote_name(target)
        with self.pg.session(self._maintenance(target)) as conn:
            plan = self.plan_database(conn, entry, target)
        if plan.mode == LOCAL:
            plan.list_file = self._local_list(entry, key)
        with Sessions(plan.cluster, lambda node: self._maintenance(target)) as sessions:
            coordinator = sessions.get(plan.cluster.coordinator)
            exists = target in pg.all_database_names(coordinator)
            if exists and not self.options.replace:
                raise target_exists(target)
            self._check_workers(sessions, target, exists)
            if entry.split:
                self.check_objects(entry, entry.parts)
            temp = self._create_temp(coordinator, entry)
            try:
                self._restore_temp(sessions, plan, entry, key=key, temp=temp, target=target)
                # Stopped (SIGTERM, another database failed) after the last child
                # ended: the swap must not happen behind the run's failure.
                if self.children.cancelled.is_set():
                    raise Cancelled("stopped before the swap: the run is being cancelled")
                if target in pg.all_database_names(coordinator):
                    if not self.options.replace:
                        raise target_exists(target)
                    old = self._old_name(target, pg.all_database_names(coordinator))
                    self._swap(sessions, target, temp, old)
                    self._dispose_old(sessions, old)
                else:
                    self._swap(sessions, target, temp, None)
            except BaseException:
                self._drop_everywhere(sessions, temp)
                raise
        log.info("restored database %s from %s", shown, entry.object.name)
        return plan

    def _restore_temp(
        self,
        sessions: Sessions,
        plan: DatabasePlan,
        entry: DatabaseEntry,
        *,
        key: str,
        temp: str,
        target: str,
    ) -> None:
        """Everything up to the swap: workers, sections, checks, properties."""
        owner = None if self.options.no_owner else entry.properties.owner
        if plan.cluster.workers:
            rebuild.create_on_workers(
                sessions, temp, dbprops.create_database(temp, entry.properties, owner), owner
            )
        faults.point("created")
        self.restore_into(entry, key, temp, target, plan)
        with self.pg.session(temp) as db:
            verification = rebuild.verify(
                db,
                entry,
                metadata=entry.citus if plan.mode == DISTRIBUTED else None,
                counted=self._counted.pop(temp, None),
            )
        self.summary.extra.setdefault("verified", {})[target] = verification.describe()
        faults.point("verified")
        for node in plan.cluster.nodes:
            for statement in dbprops.post_restore_statements(
                temp,
                entry.properties,
                owner=owner,
                privileges=not self.options.no_privileges,
            ):
                pg.execute(
                    sessions.get(node),
                    statement,
                    f"{node.label}: set properties of database {quote_name(target)}",
                )

    def _check_workers(self, sessions: Sessions, target: str, exists: bool) -> None:
        """A database missing on the coordinator must be missing on the workers too
        (a leftover there would be renamed over): refuse before changing anything."""
        if exists:
            return
        for node in sessions.cluster.workers:
            if target in pg.all_database_names(sessions.get(node)):
                raise PermanentError(
                    f"database {quote_name(target)} does not exist on the coordinator but "
                    f"does on {node.label}: drop it there (or choose another target) first",
                    reason="TargetExists",
                )

    def _swap(self, sessions: Sessions, target: str, temp: str, old: str | None) -> None:
        """``temp`` becomes ``target`` on every node (``target`` moving to ``old``)."""

        def renames(node: Node, conn: pg.Connection) -> list[tuple[str, str]]:
            here = pg.all_database_names(conn)
            pairs = [(target, old)] if old is not None and target in here else []
            return [*pairs, (temp, target)]

        names = (temp, target) if old is not None else (temp,)
        what = (
            f"swap database {quote_name(target)}" if old else f"name database {quote_name(target)}"
        )
        with cluster_closed(sessions, *names):
            rename_all(sessions, renames, what, before_decision=lambda: faults.point("prepared"))
        for node in sessions.cluster.nodes:
            pg.set_allow_connections(sessions.get(node), target, True)
        log.info("%s on %d node(s)", what, len(sessions.cluster.nodes))

    def _old_name(self, target: str, existing: set[str]) -> str:
        """Where the replaced database goes: ``<name>_old_<backup id>`` if kept
        (and that name is free and fits in 63 bytes), else a random name."""
        assert self.manifest is not None
        if self.options.keep_old:
            name = f"{target}_old_{self.manifest.backup_id}"
            if len(name.encode()) <= 63 and name not in existing:
                return name
        return "citus_backup_old_" + secrets.token_hex(6)

    def _dispose_old(self, sessions: Sessions, old: str) -> None:
        if self.options.keep_old:
            for node in sessions.cluster.nodes:
                conn = sessions.get(node)
                if old in pg.all_database_names(conn):
                    pg.set_allow_connections(conn, old, True)
            log.info("kept the previous database as %s", quote_name(old))
            self.summary.extra.setdefault("keptDatabases", []).append(old)
            return
        for node in sessions.cluster.nodes:
            try:
                pg.drop_database(sessions.get(node), old, self.version_num)
            except CitusBackupError as exc:
                # The restore itself succeeded; say what is left over, and where.
                log.warning(
                    "%s: could not drop the previous database %s: %s",
                    node.label,
                    quote_name(old),
                    exc,
                )
                self.summary.extra.setdefault("leftoverDatabases", []).append(
                    old if node.is_coordinator else f"{old} ({node.label})"
                )

    def _drop_everywhere(self, sessions: Sessions, name: str) -> None:
        """Drop a database we created, on every node (a fresh session where the
        old one broke); failures are logged, never raised over the first error."""
        for node in sessions.cluster.nodes:
            for attempt in range(2):
                try:
                    pg.drop_database(sessions.get(node), name, self.version_num)
                    break
                except CitusBackupError as exc:
                    sessions.forget(node)
                    if attempt:
                        log.warning(
                            "%s: could not drop database %s: %s", node.label, quote_name(name), exc
                        )

    def _drop_quietly(self, conn: pg.Connection, name: str) -> None:
        """Drop a database we created, on ``conn`` or else a fresh connection."""
        try:
            pg.drop_database(conn, name, self.version_num)
            return
        except CitusBackupError:
            pass
        try:
            with self.pg.session(self._maintenance_db([name])) as fresh:
                pg.drop_database(fresh, name, self.version_num)
        except CitusBackupError as exc:
            log.warning("could not drop database %s: %s", quote_name(name), exc)

    # ----------------------------------------------- tables and schemas
    def restore_objects(self, entry: DatabaseEntry, target: str) -> None:
        """``--table``/``--schema`` of one database into ``target``."""
        assert self.location is not None
        options = self.options
        shown = quote_name(target)
        self._check_objects_in_manifest(entry)
        with self.pg.session(self._maintenance_db([target])) as conn:
            created_target = False
            if target not in pg.all_database_names(conn):
                owner = self._owner(conn, entry)
                pg.execute(
                    conn,
                    dbprops.create_database(target, entry.properties, owner),
                    f"create database {shown}",
                )
                created_target = True
            try:
                if not created_target and not options.replace:
                    self._check_target_free(target)
                key = self.location.key(entry.object.name)
                # The temporary copy is coordinator-only (its tables local): only
                # the target's tables need their distribution.
                temp_plan = None
                if entry.citus is not None and not citus_available(conn):
                    temp_plan = DatabasePlan(LOCAL, Cluster.single(self.pg_config))
                    temp_plan.list_file = self._local_list(entry, key)
                parts = self._parts_for_selection(entry)
                if entry.split:
                    self.check_objects(entry, parts)
                temp = self._create_temp(conn, entry)
                try:
                    self.restore_into(entry, key, temp, target, temp_plan, parts=parts)
                    self._check_objects_in(temp, entry)
                    selected = self._selected_tables(temp)
                    with self.pg.session(temp) as db:
                        checked = rebuild.verify(
                            db,
                            entry,
                            metadata=None,
                            only=selected,
                            counted=self._counted.pop(temp, None),
                        )
                    self.summary.extra.setdefault("verified", {})[target] = checked.describe()
                    faults.point("verified")
                    self._transfer(temp, target, entry, selected)
                finally:
                    self._drop_quietly(conn, temp)
            except BaseException:
                if created_target:
                    self._drop_quietly(conn, target)
                raise
        what = ", ".join(quote_name(f"{s}.{t}") for s, t in options.tables) or ", ".join(
            quote_name(s) for s in options.schemas
        )
        log.info("restored %s into database %s", what, shown)

    def _parts_for_selection(self, entry: DatabaseEntry) -> list[DataPart]:
        """The parts of a split database a --table/--schema restore reads:
        :func:`.split.parts_for_tables` from the selection and the foreign keys
        recorded at backup time (a foreign key of a restored table, or of the
        rest's tables, needs the rows it references in the temporary copy, or
        its post-data fails); every part when the manifest has no foreign keys."""
        if not entry.parts:
            return []
        if entry.foreign_keys is None:
            return list(entry.parts)
        needed = split.parts_for_tables(
            [[(t.schema_name, t.name) for t in p.tables] for p in entry.parts],
            {(t.schema_name, t.name) for t in entry.toc.tables},
            list(self.options.tables),
            list(self.options.schemas),
            [
                ((k.table.schema_name, k.table.name), (k.references.schema_name, k.references.name))
                for k in entry.foreign_keys
            ],
        )
        return [entry.parts[i] for i in needed]

    def _check_objects_in_manifest(self, entry: DatabaseEntry) -> None:
        """Fail before restoring anything when a --table is surely not in the dump.

        The manifest lists tables only; ``pg_dump -t`` also takes views,
        sequences, ... so only a dump without such relations is conclusive
        (the exact check runs on the temporary database).
        """
        other_relations = {"VIEW", "MATERIALIZED VIEW", "SEQUENCE", "FOREIGN TABLE"}
        if other_relations & set(entry.toc.counts_by_type):
            return
        tables = {(t.schema_name, t.name) for t in entry.toc.tables}
        missing = [f"{s}.{t}" for s, t in self.options.tables if (s, t) not in tables]
        if missing:
            raise PermanentError(
                f"table(s) {', '.join(map(quote_name, missing))} not in the backup of "
                f"database {quote_name(entry.name)}",
                reason="TableNotInBackup",
            )

    def _check_objects_in(self, temp: str, entry: DatabaseEntry) -> None:
        with self.pg.session(temp) as conn:
            for schema, table in self.options.tables:
                if not pg.table_exists(conn, schema, table):
                    raise PermanentError(
                        f"table {quote_name(f'{schema}.{table}')} not in the backup of "
                        f"database {quote_name(entry.name)}",
                        reason="TableNotInBackup",
                    )
            for schema in self.options.schemas:
                if not pg.schema_exists(conn, schema):
                    raise PermanentError(
                        f"schema {quote_name(schema)} not in the backup of database "
                        f"{quote_name(entry.name)}",
                        reason="SchemaNotInBackup",
                    )

    def _check_target_free(self, target: str) -> None:
        with self.pg.session(target) as conn:
            for schema, table in self.options.tables:
                if pg.table_exists(conn, schema, table):
                    raise target_exists(target, detail=f"table {quote_name(f'{schema}.{table}')}")
            for schema in self.options.schemas:
                if pg.schema_exists(conn, schema):
                    raise target_exists(target, detail=f"schema {quote_name(schema)}")

    def _selected_tables(self, temp: str) -> set[tuple[str, str]]:
        """The (schema, table) pairs --table/--schema select in the temporary copy."""
        selected = set(self.options.tables)
        if self.options.schemas:
            with self.pg.session(temp) as conn, pg.errors_as("list the tables of the schemas"):
                rows = conn.execute(
                    "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n"
                    " ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p')"
                    " AND n.nspname = ANY(%s)",
                    (list(self.options.schemas),),
                ).fetchall()
            selected |= {(str(r[0]), str(r[1])) for r in rows}
        return selected

    def _transfer(
        self, temp: str, target: str, entry: DatabaseEntry, selected: set[tuple[str, str]]
    ) -> None:
        """Into ``target``: distributed as recorded where both it and the backup
        have Citus (:meth:`_transfer_distributed`), else as plain tables."""
        metadata = entry.citus
        if metadata is not None and any(t.names in selected for t in metadata.tables):
            with self.pg.session(target) as conn:
                target_citus = has_citus(conn)
                current = rebuild.read_distribution(conn)[0] if target_citus else []
            if target_citus:
                self._transfer_distributed(temp, target, metadata, selected, current)
                with self.pg.session(target) as conn:
                    problems = citus.compare(
                        metadata, rebuild.read_distribution(conn)[0], [], only=selected
                    )
                if problems:
                    raise PermanentError(
                        f"restored table(s) in database {quote_name(target)} are not "
                        f"distributed as in the backup: {'; '.join(problems)}",
                        reason="VerificationFailed",
                    )
                self.summary.extra.setdefault("citus", {})[target] = {
                    "mode": DISTRIBUTED,
                    "tables": sorted(citus.qualified(*n) for n in selected),
                }
                return
            message = f"database {quote_name(target)} has no Citus: the restored tables are local"
            log.warning("%s", message)
            self.summary.extra.setdefault("citusUnavailable", []).append(target)
            self.summary.extra.setdefault("citus", {})[target] = {"mode": LOCAL, "message": message}
        self._transfer_plain(temp, target)

    def _transfer_distributed(
        self,
        temp: str,
        target: str,
        metadata: CitusMetadata,
        selected: set[tuple[str, str]],
        current: Sequence[CitusTable],
    ) -> None:
        """One ``psql --single-transaction``: the tables' pre-data (with DROP
        first under --replace), their distribution, data, post-data; each
        distributed table joins the colocation group of a table it was
        colocated with at backup time that is distributed in the target now."""
        present = {t.names: t for t in current}
        joins: dict[int, str] = {}
        for table in metadata.tables:
            if table.names in selected or table.colocation_id is None:
                continue
            if table.colocation_id not in joins and table.names in present:
                joins[table.colocation_id] = citus.qualified(*table.names)
        steps = citus.distribution_statements(metadata, only=selected, colocate_with=joins)
        if self.options.schemas:
            steps += [
                s
                for s in citus.distribution_statements(metadata)
                if s.what.startswith("distribute schema")
                and any(f"{schema!r}" in s.what for schema in self.options.schemas)
            ]
        patterns: list[str] = []
        for schema, relation in self.options.tables:
            patterns += ["-t", exact_pattern(schema, relation)]
        for schema in self.options.schemas:
            patterns += ["-n", exact_pattern(schema)]  # -n: the schema itself too
        dump = [pg.tool("pg_dump"), "-Fp", "-w", *patterns]
        sections: list[list[str]] = [
            [
                *dump,
                "--section=pre-data",
                *(["--clean", "--if-exists"] if self.options.replace else []),
            ],
            [*dump, "--section=data"],
            [*dump, "--section=post-data"],
        ]
        psql = [
            pg.tool("psql"),
            "-X",
            "-q",
            "-w",
            "-v",
            "ON_ERROR_STOP=1",
            "--single-transaction",
            "-o",
            os.devnull,
            "-d",
            self.pg_config.conninfo(target),
            "-f",
            "-",
        ]
        consumer = self.children.start(psql, self.env, stdin=subprocess.PIPE, label="psql")
        what = f"copy into database {quote_name(target)}"
        try:
            try:
                for index, argv in enumerate(sections):
                    self._pipe_dump([*argv, "-d", self.pg_config.conninfo(temp)], consumer, what)
                    if index == 0:
                        distribution = "".join(
                            step.statement.as_string(None) + ";\n" for step in steps
                        )
                        consumer.write_all(distribution.encode())
            except BrokenPipeError:
                pass  # psql stopped at an error: its exit code and stderr say which
            consumer.close_stdin()
            code = consumer.wait()
        finally:
            consumer.terminate()
            self.children.done(consumer)
        if code != 0:
            raise consumer.failure(what)

    def _pipe_dump(self, argv: list[str], consumer: pg.Child, what: str) -> None:
        producer = self.children.start(argv, self.env, stdout=subprocess.PIPE, label="pg_dump")
        try:
            buffer = bytearray(1024 * 1024)
            view = memoryview(buffer)
            while n := producer.readinto(view):
                consumer.write_all(view[:n])
            code = producer.wait()
        finally:
            producer.terminate()
            self.children.done(producer)
        if code != 0:
            raise producer.failure(f"{what}: pg_dump of the temporary database")

    def _transfer_plain(self, temp: str, target: str) -> None:
        """pg_dump -t/-n from the verified temp database | pg_restore, one transaction."""
        dump = [pg.tool("pg_dump"), "-Fc", "--compress=0", "-w"]
        for schema, table in self.options.tables:
            dump += ["-t", exact_pattern(schema, table)]
        for schema in self.options.schemas:
            dump += ["-n", exact_pattern(schema)]
        dump += ["-d", self.pg_config.conninfo(temp)]
        restore = [pg.tool("pg_restore"), *self._restore_args(), "--single-transaction"]
        if self.options.replace:
            restore += ["--clean", "--if-exists"]
        restore += ["-d", self.pg_config.conninfo(target)]
        producer = self.children.start(dump, self.env, stdout=subprocess.PIPE, label="pg_dump")
        try:
            consumer = self.children.start(
                restore, self.env, stdin=producer.stdout, label="pg_restore"
            )
            producer.stdout.close()  # pg_restore holds the read end now
            try:
                restore_code = consumer.wait()
                dump_code = producer.wait()
            finally:
                self.children.done(consumer)
        finally:
            producer.terminate()
            self.children.done(producer)
        what = f"copy into database {quote_name(target)}"
        # pg_dump killed by SIGPIPE only means pg_restore stopped reading.
        if dump_code not in (0, -signal.SIGPIPE):
            raise producer.failure(f"{what}: pg_dump of the temporary database")
        if restore_code != 0:
            raise consumer.failure(what)
        if dump_code != 0:
            raise producer.failure(f"{what}: pg_dump of the temporary database")

    # ----------------------------------------------------------- globals
    def restore_globals(self, manifest: Manifest) -> None:
        assert self.location is not None
        info = manifest.globals
        if info is None:
            log.warning("backup %s has no globals; skipping roles", manifest.backup_id)
            return
        key = self.location.key(info.name)
        data = self.store.get_bytes(key, GLOBALS_LIMIT)
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != info.size or digest != info.sha256:
            raise checksum_error("restore of globals", f"sha256 {digest} != {info.sha256}")
        with self.pg.session(self.pg_config.maintenance_db) as conn:
            me = pg.current_user(conn)
            saved = self._password_hash(conn, me)
            argv = [
                pg.tool("psql"),
                "-X",
                "-q",
                "-w",
                "-v",
                "ON_ERROR_STOP=0",
                "-d",
                self.pg_config.conninfo(self.pg_config.maintenance_db),
                "-f",
                "-",
            ]
            child = self.children.start(
                argv, self.env, stdin=subprocess.PIPE, label="psql", stderr_lines=100_000
            )
            try:
                with contextlib.suppress(BrokenPipeError):
                    child.write_all(data)
                child.close_stdin()
                code = child.wait()
            finally:
                self.children.done(child)
            if saved is not None and self._password_hash(conn, me) != saved:
                # globals.sql set the backed-up password of the role we connect
                # as; keep the current one so this and later runs still connect.
                pg.execute(
                    conn,
                    sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        sql.Identifier(me), sql.Literal(saved)
                    ),
                    f"keep the password of role {quote_name(me)}",
                )
        errors = [
            line
            for line in child.stderr_text().splitlines()
            if "ERROR:" in line and not any(t in line for t in _TOLERATED_GLOBALS_ERRORS)
        ]
        if code != 0 or errors:
            detail = pg.libpq_detail(errors[0]) if errors else f"psql exited with code {code}"
            raise PermanentError(
                f"restore of globals (roles, tablespaces) failed: {detail}",
                reason="GlobalsFailed",
            )
        log.info("restored globals (roles, tablespaces)")

    @staticmethod
    def _password_hash(conn: pg.Connection, role: str) -> str | None:
        try:
            row = conn.execute(
                "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)
            ).fetchone()
        except psycopg.errors.InsufficientPrivilege:
            return None
        return None if row is None or row[0] is None else str(row[0])

    # ---------------------------------------------------------------- run
    def plan(self, manifest: Manifest) -> list[tuple[DatabaseEntry, str]]:
        """(database of the set, target name) pairs, after checking the options."""
        options = self.options
        names = list(dict.fromkeys(options.databases))
        if (options.tables or options.schemas or options.target_database) and len(names) != 1:
            raise PermanentError(
                "--target-database, --table and --schema need exactly one --database",
                reason="InvalidArgument",
            )
        if not names:
            return [(entry, entry.name) for entry in manifest.databases]
        plan = []
        for name in names:
            entry = manifest.database(name)
            if entry is None:
                have = ", ".join(quote_name(db.name) for db in manifest.databases)
                raise PermanentError(
                    f"database {quote_name(name)} is not in backup {manifest.backup_id} "
                    f"(it has: {have})",
                    reason="DatabaseNotInBackup",
                )
            plan.append((entry, options.target_database or entry.name))
        return plan

    def run(self) -> None:
        options = self.options
        self.store.check_bucket()
        location, manifest = self.resolve()
        if manifest.format_version > MAX_FORMAT_VERSION:
            raise PermanentError(
                f"backup {manifest.backup_id} has manifest format {manifest.format_version}; "
                f"this runner reads formats up to {MAX_FORMAT_VERSION}: use a newer runner",
                reason="InvalidManifest",
            )
        self.location, self.manifest = location, manifest
        self.summary.backup_id = manifest.backup_id
        self.summary.location = location.url(self.store.bucket)
        self.summary.tiers = [location.tier]

        plan = self.plan(manifest)
        with_globals = options.globals if options.globals is not None else not options.databases
        if options.verify:
            plan = [(entry, verify_mod.scratch_name(entry.name)) for entry, _ in plan]
            with_globals = False
            verify_mod.check_databases(list(options.checks), {e.name for e, _ in plan})

        with self.pg.session(self.pg_config.maintenance_db) as conn:
            server = pg.server_info(conn)
            self.version_num = server.version_num
            existing = pg.all_database_names(conn)
        archive_major = pg.major_of(manifest.pg_dump_version) or 0
        pg.choose_client(
            max(server.version_num // 10000, archive_major),
            f"a restore of backup {manifest.backup_id} (dumped by pg_dump {archive_major}) "
            f"into PostgreSQL {server.version}",
        )
        if not (options.tables or options.schemas or options.verify):
            clashes = [target for _, target in plan if target in existing]
            if clashes and not options.replace:
                raise target_exists(*clashes)
        for tool in ("pg_restore", "pg_dump", "psql"):
            pg.tool(tool)

        started = time.monotonic()
        beacon: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if options.progress_tag:
            total = 1 if (options.tables or options.schemas) else len(plan)
            beacon = Beacon(
                lambda: self.pg.connect(self.pg_config.maintenance_db),
                options.progress_tag,
                lambda: self._done(total),
                options.progress_interval,
            )
        try:
            with self.progress, beacon:
                if with_globals:
                    self.restore_globals(manifest)
                if options.verify:
                    self._verify_all(plan)
                elif options.tables or options.schemas:
                    entry, target = plan[0]
                    self.restore_objects(entry, target)
                else:
                    self._restore_all(plan)
        finally:
            for path in self._temp_files:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        self.summary.databases = {target: entry.size for entry, target in plan}
        self.summary.total_size = sum(self.summary.databases.values())
        self.summary.extra["restoreSeconds"] = round(time.monotonic() - started, 3)

    def _done(self, total: int) -> tuple[int, int, int]:
        """(databases restored, of total, bytes streamed) for the beacon."""
        finished, size = self.progress.totals()
        return min(finished, total), total, size

    # ------------------------------------------------------ verification
    def _verify_all(self, plan: list[tuple[DatabaseEntry, str]]) -> None:
        """Each database into its scratch database, checked, dropped (one at a
        time: a verification is background work and must not load the server
        like a restore would)."""
        self._drop_leftover_scratch(plan)
        report: dict[str, dict[str, object]] = {}
        self.summary.extra["verification"] = report
        for entry, scratch in plan:
            done: DatabasePlan | None = None
            try:
                done = self.restore_database(entry, scratch)
                faults.point("checks")
                passed = self._run_checks(entry, scratch)
                report[entry.name] = {
                    "restored": True,
                    "checks": passed,
                    "rows": self.summary.extra.get("verified", {}).get(scratch, ""),
                }
            finally:
                if done is not None:
                    chooser = _always(self._maintenance(scratch))
                    with Sessions(done.cluster, chooser) as sessions:
                        self._drop_everywhere(sessions, scratch)
        # The scratch names mean nothing to the reader: report by source name.
        verified = self.summary.extra.pop("verified", {})
        self.summary.extra["verified"] = {
            entry.name: verified.get(scratch, "") for entry, scratch in plan
        }
        citus_modes = self.summary.extra.pop("citus", None)
        if citus_modes is not None:
            self.summary.extra["citus"] = {
                entry.name: citus_modes[scratch]
                for entry, scratch in plan
                if scratch in citus_modes
            }
        self.summary.extra.pop("citusUnavailable", None)

    def _drop_leftover_scratch(self, plan: list[tuple[DatabaseEntry, str]]) -> None:
        """Scratch databases a killed verification left (the reserved prefix only),
        on the coordinator and on every worker the plan restores onto."""
        with self.pg.session(self.pg_config.maintenance_db) as conn:
            for name in sorted(n for n in pg.all_database_names(conn) if verify_mod.is_scratch(n)):
                log.info("dropping scratch database %s left by an earlier verification", name)
                pg.drop_database(conn, name, self.version_num)
            clusters = {
                tuple(n.label for n in p.cluster.nodes): p.cluster
                for p in (self.plan_database(conn, entry, scratch) for entry, scratch in plan)
            }
        for cluster in clusters.values():
            if not cluster.workers:
                continue
            with Sessions(cluster, _always(self.pg_config.maintenance_db)) as sessions:
                for node in cluster.workers:
                    conn = sessions.get(node)
                    for name in sorted(
                        n for n in pg.all_database_names(conn) if verify_mod.is_scratch(n)
                    ):
                        log.info("%s: dropping leftover scratch database %s", node.label, name)
                        pg.drop_database(conn, name, self.version_num)

    def _run_checks(self, entry: DatabaseEntry, scratch: str) -> list[str]:
        """The user's checks of ``entry`` in its scratch copy; PermanentError(CheckFailed)."""
        checks = [c for c in self.options.checks if c.database == entry.name]
        if not checks:
            return []
        failures: list[str] = []
        with self.pg.session(scratch, autocommit=False) as conn:
            for check in checks:
                try:
                    with conn.transaction():
                        conn.execute("SET LOCAL transaction_read_only = on")
                        conn.execute(f"SET LOCAL statement_timeout = {CHECK_TIMEOUT_MS}")
                        cur = conn.execute(check.query)
                        rows = list(cur.fetchall()) if cur.description else []
                except psycopg.Error as exc:
                    message = " ".join(str(exc).split())
                    failures.append(f"check {check.database}.{check.name} failed: {message}")
                    continue
                failure = verify_mod.check_result(check, rows)
                if failure is not None:
                    failures.append(failure)
                else:
                    log.info("check %s.%s passed", check.database, check.name)
        if failures:
            raise PermanentError(
                "; ".join(failures) + " (in a scratch copy; the backup is unchanged)",
                reason="CheckFailed",
            )
        return [c.name for c in checks]

    def _restore_all(self, plan: list[tuple[DatabaseEntry, str]]) -> None:
        """Databases in parallel; the maintenance database alone, last."""
        maintenance = self.pg_config.maintenance_db
        parallel = [item for item in plan if item[1] != maintenance]
        last = [item for item in plan if item[1] == maintenance]
        jobs = self.options.jobs or default_jobs(self.options.cpus, len(parallel))
        if parallel:
            with ThreadPoolExecutor(jobs, "restore") as pool:
                futures: list[Future[DatabasePlan]] = [
                    pool.submit(self.restore_database, entry, target) for entry, target in parallel
                ]
                try:
                    pending = set(futures)
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                        for future in done:
                            error = future.exception()
                            if error is not None:
                                self.children.cancel()
                                wait(pending)
                                raise error
                except BaseException:
                    self.children.cancel()
                    raise
        for entry, target in last:
            self.restore_database(entry, target)


def _always(database: str) -> Callable[[Node], str]:
    """A Sessions database chooser that picks ``database`` on every node."""
    return lambda _node: database


def target_exists(*targets: str, detail: str | None = None) -> PermanentError:
    names = ", ".join(quote_name(t) for t in targets)
    if detail:
        return PermanentError(
            f"{detail} already exists in database {names}; pass --replace to replace it",
            reason="TargetExists",
        )
    return PermanentError(
        f"database(s) {names} already exist; pass --replace to replace them "
        "(or --target-database to restore side by side)",
        reason="TargetExists",
    )


exact_pattern = split.exact_pattern


def parse_table(text: str) -> tuple[str, str]:
    """``schema.table`` (quote with "" to include dots) -> (schema, table).

    Names are exact (no case folding); a name without schema is in ``public``.
    """
    parts: list[str] = []
    current: list[str] = []
    i, quoted_part = 0, False
    while i < len(text):
        ch = text[i]
        if ch == '"' and not current and not quoted_part:
            end = i + 1
            while True:
                close = text.find('"', end)
                if close == -1:
                    raise PermanentError(
                        f"unbalanced quote in table {text!r}", reason="InvalidArgument"
                    )
                if text.startswith('""', close):
                    current.append(text[end:close] + '"')
                    end = close + 2
                    continue
                current.append(text[end:close])
                i = close + 1
                quoted_part = True
                break
            continue
        if ch == ".":
            parts.append("".join(current))
            current, quoted_part = [], False
        elif quoted_part:
            raise PermanentError(
                f"unexpected text after quote in table {text!r}", reason="InvalidArgument"
            )
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    if len(parts) == 1:
        parts.insert(0, "public")
    if len(parts) != 2 or not all(parts):
        raise PermanentError(
            f"invalid table {text!r}: use schema.table (quote names containing dots: "
            '"my.schema"."my.table")',
            reason="InvalidArgument",
        )
    return parts[0], parts[1]


def run_restore(
    pg_config: PgConfig,
    s3_config: S3Config,
    options: RestoreOptions,
    summary: RunSummary,
    store: S3Store | None = None,
) -> None:
    """Run one restore; raises :class:`~citus_backup.errors.CitusBackupError` on failure."""
    store = store or S3Store(s3_config)
    started = time.monotonic()
    try:
        _Restore(pg_config, store, options, summary).run()
    finally:
        summary.duration_seconds = time.monotonic() - started
