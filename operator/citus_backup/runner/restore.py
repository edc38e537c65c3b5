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
  with the temporary database, the point where a Citus-aware step can
  redistribute tables (after ``pre-data``) before data arrives.
* **Atomic swap.** An existing target is replaced only with ``--replace``:
  connections to it are blocked, its sessions (clients and extension
  workers) terminated, and both renames happen in one transaction
  (:func:`.pg.swap_databases`); the previous database is then dropped, or kept
  as ``<name>_old_<backup id>`` with ``--keep-old``.
* **Tables and schemas** (``--table``/``--schema``) are copied out of the
  verified temporary database with ``pg_dump -t/-n`` (which brings indexes,
  constraints, triggers and owned sequences along) into the target with
  ``pg_restore --single-transaction``: all of it or nothing.
* **Everything** restores globals (roles, tablespaces) with psql, keeping the
  connecting role's current password, then every database; all targets are
  checked before anything is changed. Databases not named are never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Protocol

import psycopg
from psycopg import sql

from citus_backup.errors import CitusBackupError, PermanentError
from citus_backup.runner import dbprops, layout, listing, pg
from citus_backup.runner.config import PgConfig, S3Config
from citus_backup.runner.manifest import DatabaseEntry, Manifest
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
    ) -> str:
        """One pg_restore pass fed from S3; returns the object's ETag.

        The ``data`` pass streams the whole object and verifies its size and
        sha256; the other passes read ranges until pg_restore has the table of
        contents it needs.
        """
        verify = section == "data"
        expected = entry.object
        what = f"restore ({section}) of database {quote_name(entry.name)}"
        argv = [
            pg.tool("pg_restore"),
            *self._restore_args(),
            f"--section={section}",
            "-d",
            self.pg_config.conninfo(database),
        ]
        child = self.children.start(argv, self.env, stdin=subprocess.PIPE, label="pg_restore")
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
        digest = feed.hasher.hexdigest()
        complete = feed.size == expected.size
        if complete and digest != expected.sha256:
            raise checksum_error(what, f"sha256 {digest} != {expected.sha256}")
        if code != 0:
            raise child.failure(what)
        if verify and not complete:
            raise checksum_error(what, f"{feed.size} bytes read, manifest says {expected.size}")
        return etag

    def restore_into(self, entry: DatabaseEntry, key: str, database: str, target: str) -> None:
        """The three sections into ``database`` with the hooks in between."""
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
            )
            self.options.hooks.after_section(SectionEvent(section, entry, database, target))
        self.progress.finish(counter, f"restored into {quote_name(database)}")

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

    def restore_database(self, entry: DatabaseEntry, target: str) -> None:
        """Restore ``entry`` as ``target`` through a temporary database."""
        assert self.location is not None
        key = self.location.key(entry.object.name)
        shown = quote_name(target)
        with self.pg.session(self._maintenance_db([target])) as conn:
            exists = target in pg.all_database_names(conn)
            if exists and not self.options.replace:
                raise target_exists(target)
            temp = self._create_temp(conn, entry)
            try:
                self.restore_into(entry, key, temp, target)
                for statement in dbprops.post_restore_statements(
                    temp,
                    entry.properties,
                    owner=None if self.options.no_owner else entry.properties.owner,
                    privileges=not self.options.no_privileges,
                ):
                    pg.execute(conn, statement, f"set properties of database {shown}")
                if target in pg.all_database_names(conn):
                    if not self.options.replace:
                        raise target_exists(target)
                    old = self._old_name(target, pg.all_database_names(conn))
                    pg.swap_databases(conn, target, temp, old)
                    self._dispose_old(conn, old)
                else:
                    pg.rename_database(conn, temp, target)
            except BaseException:
                self._drop_quietly(conn, temp)
                raise
        log.info("restored database %s from %s", shown, entry.object.name)

    def _old_name(self, target: str, existing: set[str]) -> str:
        """Where the replaced database goes: ``<name>_old_<backup id>`` if kept
        (and that name is free and fits in 63 bytes), else a random name."""
        assert self.manifest is not None
        if self.options.keep_old:
            name = f"{target}_old_{self.manifest.backup_id}"
            if len(name.encode()) <= 63 and name not in existing:
                return name
        return "citus_backup_old_" + secrets.token_hex(6)

    def _dispose_old(self, conn: pg.Connection, old: str) -> None:
        if self.options.keep_old:
            pg.set_allow_connections(conn, old, True)
            log.info("kept the previous database as %s", quote_name(old))
            self.summary.extra.setdefault("keptDatabases", []).append(old)
        else:
            try:
                pg.drop_database(conn, old, self.version_num)
            except CitusBackupError as exc:
                # The restore itself succeeded; say what is left over.
                log.warning("could not drop the previous database %s: %s", quote_name(old), exc)
                self.summary.extra.setdefault("leftoverDatabases", []).append(old)

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
                temp = self._create_temp(conn, entry)
                try:
                    self.restore_into(entry, self.location.key(entry.object.name), temp, target)
                    self._check_objects_in(temp, entry)
                    self._transfer(temp, target)
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

    def _transfer(self, temp: str, target: str) -> None:
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
        self.location, self.manifest = location, manifest
        self.summary.backup_id = manifest.backup_id
        self.summary.location = location.url(self.store.bucket)
        self.summary.tiers = [location.tier]

        plan = self.plan(manifest)
        with_globals = options.globals if options.globals is not None else not options.databases

        with self.pg.session(self.pg_config.maintenance_db) as conn:
            self.version_num = pg.server_info(conn).version_num
            existing = pg.all_database_names(conn)
        if not (options.tables or options.schemas):
            clashes = [target for _, target in plan if target in existing]
            if clashes and not options.replace:
                raise target_exists(*clashes)
        for tool in ("pg_restore", "pg_dump", "psql"):
            pg.tool(tool)

        started = time.monotonic()
        with self.progress:
            if with_globals:
                self.restore_globals(manifest)
            if options.tables or options.schemas:
                entry, target = plan[0]
                self.restore_objects(entry, target)
            else:
                self._restore_all(plan)
        self.summary.databases = {target: entry.object.size for entry, target in plan}
        self.summary.total_size = sum(self.summary.databases.values())
        self.summary.extra["restoreSeconds"] = round(time.monotonic() - started, 3)

    def _restore_all(self, plan: list[tuple[DatabaseEntry, str]]) -> None:
        """Databases in parallel; the maintenance database alone, last."""
        maintenance = self.pg_config.maintenance_db
        parallel = [item for item in plan if item[1] != maintenance]
        last = [item for item in plan if item[1] == maintenance]
        jobs = self.options.jobs or default_jobs(self.options.cpus, len(parallel))
        if parallel:
            with ThreadPoolExecutor(jobs, "restore") as pool:
                futures: list[Future[None]] = [
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


def exact_pattern(*parts: str) -> str:
    """A pg_dump ``-t``/``-n`` pattern matching exactly these names.

    Inside double quotes pattern characters (``*``, ``?``, ``.``, regex
    characters) are literal and ``""`` is a quote.
    """
    return ".".join('"' + part.replace('"', '""') + '"' for part in parts)


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
