"""``citus-backup backup``: every database, streamed into one backup set.

Compared with ``pg_dump > file; aws s3 cp; rm`` this:

* never touches local disk: pg_dump's stdout is read in part-size chunks and
  each part is uploaded while the next one fills (see :mod:`.s3`); all
  databases share ``2 x jobs + 1`` part buffers, so memory is bounded by the
  part size and ``--jobs``, not by the size of the databases;
* dumps ``--jobs`` databases at a time (CPU-bound pg_dump compression is the
  bottleneck, so one per CPU). A job's slot is handed on when its pg_dump's
  output ends, not when the upload completes, and the next database is
  already connected (one worker more than ``--jobs``), so the next pg_dump
  starts within milliseconds while the previous dump's last part is sent;
* takes each database's metadata (extensions, Citus distribution, roles and
  schemas for TOC parsing) in the same snapshot pg_dump uses
  (``pg_export_snapshot`` + ``pg_dump --snapshot``), so the manifest describes
  exactly what was dumped;
* tees the head of every dump into ``pg_restore --list``: the archive is
  proven readable by stock pg_restore before the object is completed, and the
  manifest gets its table-of-contents summary;
* completes an object only if pg_dump exited 0 (otherwise the multipart
  upload is aborted), stops everything at the first failure, and writes
  ``manifest.json`` last, so a set is complete exactly when it has one;
* places the finished set under further tiers by server-side copy;
* splits a large database (:mod:`.split`): a schema-only archive and one
  data part per large table plus the rest, every pg_dump in the database's
  exported snapshot, the parts dumped largest first over ``--split-jobs``
  workers that share the run's ``--jobs`` slots (so a split database next to
  small ones never runs more pg_dumps than ``--jobs``).

Start-up order: the pg_dumps are the long pole, so the only work before the
first one starts is the catalog query that says which databases to dump (and
each database's snapshot). The S3 side — importing the S3 client, the bucket
check, the check that no complete set of this id exists, the ``started.json``
PUT — runs while the dumps are already producing; each database's metadata
is read when its dump is over (still in its snapshot). Uploads wait for the
S3 side (:class:`_S3Gate`): nothing is written to S3 before those checks
succeeded, and if one fails the dumps are killed and the run fails with the
check's error, exactly as if it had come first. Heavy modules (the S3 client,
the pydantic manifest models) are therefore imported where they are first
needed, not at the top: the models only once the first dump is over, when
the CPUs have room (they cost ~0.1 CPU-s, as much as psycopg).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from citus_backup import __version__
from citus_backup.errors import CitusBackupError, PermanentError
from citus_backup.runner import layout, pg, split
from citus_backup.runner.config import PgConfig, S3Config
from citus_backup.runner.partsize import DEFAULT_INITIAL_PART_SIZE, PartSchedule
from citus_backup.runner.progress import DEFAULT_INTERVAL, Progress
from citus_backup.runner.selection import default_jobs, quote_name, select_databases
from citus_backup.runner.summary import RunSummary
from citus_backup.runner.upload import Cancelled, MultipartTarget, StreamUploader

if TYPE_CHECKING:
    # Imported where used (see the module docstring): minio ~0.1 s, pydantic
    # ~50 ms, which the first pg_dump should not wait for.
    from citus_backup.runner.manifest import (
        CitusMetadata,
        DatabaseEntry,
        DataPart,
        Manifest,
        ObjectInfo,
        RowCount,
        TableRef,
    )
    from citus_backup.runner.s3 import S3Store

log = logging.getLogger("citus_backup.runner")

#: pg_dump's gzip level. 1 costs ~1/3 of the CPU of 6 for output a few
#: percent larger, and pg_dump's compression is what limits throughput.
DEFAULT_COMPRESS = "1"


@dataclass
class BackupOptions:
    backup_id: str | None = None
    tier: str = layout.DEFAULT_TIER
    also_tiers: Sequence[str] = ()
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    jobs: int | None = None
    cpus: int = 1
    compress: str = DEFAULT_COMPRESS
    part_size: int = DEFAULT_INITIAL_PART_SIZE
    max_inflight: int = 2
    create_bucket: bool = False
    globals: bool = True
    role_passwords: bool = True
    lock_wait_timeout: str | None = None
    #: ``snapshot`` or ``block-writes`` (:data:`BLOCK_WRITES`): see :meth:`_Backup._block_writes`.
    consistency: str = "snapshot"
    #: Count every table's rows after its dump, for the restore to check against.
    row_counts: bool = True
    progress_interval: float = DEFAULT_INTERVAL
    #: After success, untag this set and re-tag the previously protected one
    #: (:mod:`.protect`): the newest successful set of each tier never expires.
    keep_newest: bool = True
    #: A database of at least this many bytes is split (:mod:`.split`); 0: never.
    split_threshold: int = split.DEFAULT_THRESHOLD
    #: Parts of one split database dumped at once (default: ``jobs``).
    split_jobs: int | None = None
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


#: ``--consistency block-writes``: writes to a Citus database's Citus tables
#: wait while it is dumped.
BLOCK_WRITES = "block-writes"
CONSISTENCY_CHOICES = ("snapshot", BLOCK_WRITES)
#: How long ``block-writes`` waits for its locks when --lock-wait-timeout is
#: not given: long-running writes are waited for, a stuck one fails the run.
DEFAULT_BLOCK_WRITES_WAIT = "60s"

#: How long the table-size query of a database waits for a locked table
#: (when --lock-wait-timeout is not given) before the database is dumped
#: unsplit: a split only pays off for large databases, a lock held that long
#: is rare, and the one pg_dump then waits for it as it always did.
SIZE_LOCK_WAIT = "5s"

#: How long the S3 set-up waits for the first pg_dumps to start (see
#: :meth:`_Backup.run`); past it, it goes ahead anyway.
FIRST_DUMPS_WAIT = 0.5


def _now() -> datetime:
    return datetime.now(UTC)


class _Countdown:
    """An event that is set after ``count`` calls of :meth:`tick`."""

    def __init__(self, count: int) -> None:
        self._left = count
        self._lock = threading.Lock()
        self._done = threading.Event()
        if count <= 0:
            self._done.set()

    def tick(self) -> None:
        with self._lock:
            self._left -= 1
            if self._left <= 0:
                self._done.set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)


class _Slot:
    """One of the ``--jobs`` pg_dump slots, given back once (at the dump's EOF)."""

    def __init__(self, slots: threading.Semaphore) -> None:
        self._slots = slots
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots.release()


class TocReader:
    """Feeds the head of a dump to ``pg_restore --list`` and keeps its listing."""

    def __init__(self, children: pg.Children, env: dict[str, str]) -> None:
        self._lines: list[str] = []
        self._child = children.start(
            [pg.tool("pg_restore"), "--list"],
            env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            label="pg_restore --list",
        )
        self._children = children
        self._open = True
        self._thread = threading.Thread(target=self._read, daemon=True, name="toc")
        self._thread.start()

    def _read(self) -> None:
        for raw in self._child.stdout:
            self._lines.append(raw.decode("utf-8", "replace"))

    def feed(self, data: memoryview) -> None:
        if self._open:
            try:
                self._child.write_all(data)
            except (BrokenPipeError, ConnectionResetError):
                # pg_restore has read the table of contents and exited.
                self._open = False

    def finish(self, what: str) -> list[str]:
        self._child.close_stdin()
        code = self._child.wait()
        self._thread.join()
        self._children.done(self._child)
        if code != 0:
            error = self._child.failure(f"{what}: the dump is not readable by pg_restore --list")
            raise PermanentError(str(error), reason="DumpUnreadable")
        return self._lines

    def stop(self) -> None:
        self._child.terminate()
        self._children.done(self._child)


@dataclass(frozen=True)
class _Uploaded:
    """An object written by the run; becomes the manifest's ObjectInfo at the end
    (the pydantic models are imported only once the first dump is over)."""

    name: str
    size: int
    sha256: str

    def model(self) -> ObjectInfo:
        from citus_backup.runner.manifest import ObjectInfo  # noqa: PLC0415 (lazy: module doc)

        return ObjectInfo(name=self.name, size=self.size, sha256=self.sha256)


class _S3Gate:
    """The run's S3 store, handed out once the S3 side is known to be ready.

    The dumps start before the bucket has been checked; their uploads ask
    here for the store and wait until :meth:`open` (bucket reachable, no
    complete set with this id, ``started.json`` written). If the run is
    cancelled first (a check failed, SIGTERM), waiters raise
    :class:`~citus_backup.runner.upload.Cancelled` instead, so nothing is
    written to S3 by a run whose checks did not pass.
    """

    def __init__(self, cancelled: threading.Event) -> None:
        self._ready = threading.Event()
        self._cancelled = cancelled
        self._store: S3Store | None = None

    def open(self, store: S3Store) -> None:
        self._store = store
        self._ready.set()

    def store(self) -> S3Store:
        while not self._ready.wait(0.05):
            if self._cancelled.is_set():
                raise Cancelled("stopped: the run is being cancelled")
        assert self._store is not None
        return self._store


class _GatedTarget(MultipartTarget):
    """The upload target of the dumps: the store, once the gate is open."""

    def __init__(self, gate: _S3Gate) -> None:
        self._gate = gate

    def put_bytes(
        self, key: str, data: bytes | bytearray, content_type: str = "application/octet-stream"
    ) -> str:
        return self._gate.store().put_bytes(key, data, content_type)

    def create_multipart(self, key: str, content_type: str) -> str:
        return self._gate.store().create_multipart(key, content_type)

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytearray) -> str:
        return self._gate.store().upload_part(key, upload_id, part_number, data)

    def complete_multipart(self, key: str, upload_id: str, etags: list[tuple[int, str]]) -> None:
        self._gate.store().complete_multipart(key, upload_id, etags)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self._gate.store().abort_multipart(key, upload_id)


class _Backup:
    def __init__(
        self,
        pg_config: PgConfig,
        s3_config: S3Config,
        make_store: Callable[[], S3Store],
        options: BackupOptions,
        summary: RunSummary,
    ) -> None:
        self.pg_config = pg_config
        self.pg = pg.Pg(pg_config)
        self.env = pg_config.child_env()
        self.s3_config = s3_config
        self.make_store = make_store
        self.options = options
        self.summary = summary
        self.children = pg.Children()
        self.gate = _S3Gate(self.children.cancelled)
        #: Ticked by each dump worker once its pg_dump started (or it failed
        #: before); :meth:`run` sets the count to the first wave of dumps.
        self.dumps_started = _Countdown(0)
        #: ``--jobs`` pg_dumps run at once. A slot is freed when a pg_dump's
        #: output ends, not when its upload completes: the next database's
        #: pg_dump starts while the last part of the previous one is uploaded.
        self.slots = threading.Semaphore(1)
        self.jobs = 1
        self.progress = Progress("backup", options.progress_interval)
        self.schedule = PartSchedule(options.part_size)

    # ---------------------------------------------------------- streaming
    def _start(self, argv: list[str]) -> pg.Child:
        return self.children.start(
            argv, self.env, stdout=subprocess.PIPE, label=argv[0].rsplit("/", 1)[-1]
        )

    def _stream(
        self,
        *,
        child: pg.Child,
        uploader: StreamUploader,
        key: str,
        label: str,
        what: str,
        toc: TocReader | None,
        content_type: str = "application/octet-stream",
        on_eof: Callable[[], None] | None = None,
    ) -> tuple[_Uploaded, list[str] | None]:
        """Upload ``child``'s stdout to ``key``; the child is stopped if anything fails.

        ``on_eof`` runs when the child's output ends (it has exited, or is
        about to), before the last part is uploaded.
        """
        hasher = hashlib.sha256()
        listing: list[list[str]] = []
        try:
            counter = self.progress.track(label)

            def on_data(chunk: memoryview) -> None:
                hasher.update(chunk)
                counter.add(len(chunk))
                if toc is not None:
                    toc.feed(chunk)

            def before_complete() -> None:
                if self.children.cancelled.is_set():
                    raise Cancelled("stopped: the run is being cancelled")
                if child.wait() != 0:
                    raise child.failure(what)
                if toc is not None:
                    listing.append(toc.finish(what))

            def readinto(view: memoryview) -> int:
                count = child.readinto(view)
                if count == 0 and on_eof is not None:
                    on_eof()
                return count

            result = uploader.upload(
                key, readinto, on_data, content_type, before_complete=before_complete
            )
        except BaseException:
            child.terminate()
            if toc is not None:
                toc.stop()
            raise
        finally:
            self.children.done(child)
        self.progress.finish(counter)
        uploaded = _Uploaded(key.rsplit("/", 1)[-1], result.size, hasher.hexdigest())
        return uploaded, (listing[0] if listing else None)

    def dump_globals(self, uploader: StreamUploader, location: layout.SetLocation) -> _Uploaded:
        argv = [
            pg.tool("pg_dumpall"),
            "--globals-only",
            "-w",
            "-d",
            self.pg_config.conninfo(self.pg_config.maintenance_db),
        ]
        if not self.options.role_passwords:
            argv.append("--no-role-passwords")
        info, _ = self._stream(
            child=self._start(argv),
            uploader=uploader,
            key=location.key(layout.GLOBALS_NAME),
            label="globals",
            what="pg_dumpall --globals-only",
            toc=None,
            content_type="application/sql",
        )
        return info

    def dump_database(
        self,
        uploader: StreamUploader,
        location: layout.SetLocation,
        name: str,
        server: pg.ServerInfo,
        first_wave: bool = True,
    ) -> DatabaseEntry:
        ticked = False

        def pg_dump_started() -> None:
            nonlocal ticked
            if not ticked:
                ticked = True
                self.dumps_started.tick()

        if not first_wave:
            # On deck: connect only once the first pg_dumps are running.
            self.dumps_started.wait(FIRST_DUMPS_WAIT)
        try:
            return self._dump_database(uploader, location, name, server, pg_dump_started)
        finally:
            pg_dump_started()  # also when it failed before

    def _dump_database(
        self,
        uploader: StreamUploader,
        location: layout.SetLocation,
        name: str,
        server: pg.ServerInfo,
        pg_dump_started: Callable[[], None],
    ) -> DatabaseEntry:
        if self.children.cancelled.is_set():  # queued behind the first dumps
            raise Cancelled("stopped: the run is being cancelled")
        shown = quote_name(name)
        with self.pg.session(name, autocommit=False) as conn:
            # Connected ahead; the snapshot and pg_dump wait for a free slot.
            slot = self._take_slot()
            try:
                return self._dump_in_slot(
                    conn, uploader, location, name, shown, server, pg_dump_started, slot
                )
            finally:
                slot.release()

    def _take_slot(self) -> _Slot:
        while not self.slots.acquire(timeout=0.05):
            if self.children.cancelled.is_set():
                raise Cancelled("stopped: the run is being cancelled")
        if self.children.cancelled.is_set():
            self.slots.release()
            raise Cancelled("stopped: the run is being cancelled")
        return _Slot(self.slots)

    def _dump_in_slot(  # noqa: PLR0917 - one step of _dump_database
        self,
        conn: pg.Connection,
        uploader: StreamUploader,
        location: layout.SetLocation,
        name: str,
        shown: str,
        server: pg.ServerInfo,
        pg_dump_started: Callable[[], None],
        slot: _Slot,
    ) -> DatabaseEntry:
        started = _now()
        with self._writes_blocked(name, shown) as exact:
            snapshot = self._export_snapshot(conn, shown)
            plan = self._split_plan(conn, shown) if snapshot else None
            if plan is not None and snapshot:
                slot.release()  # the parts take slots of their own
                pg_dump_started()
                return self._dump_split(conn, uploader, location, name, server, plan, snapshot)
            child = self._start(self._pg_dump_argv(name, snapshot))
            pg_dump_started()
            try:
                toc = TocReader(self.children, self.env)
            except BaseException:
                child.terminate()
                self.children.done(child)
                raise
            info, listing = self._stream(
                child=child,
                uploader=uploader,
                key=location.key(layout.dump_object_name(name)),
                label=shown,
                what=f"pg_dump of database {shown}",
                toc=toc,
                on_eof=slot.release,
            )
            # The metadata, read now in the snapshot pg_dump used (this session's
            # transaction is still open; pg_database is read in it too). Reading
            # it after the dump rather than while it runs moves these queries and
            # the first import of the manifest models (~0.1 CPU-s) out of the
            # opening phase, when the first pg_dumps saturate the CPUs, to when a
            # dump ends and the slot has already passed to the next database.
            props = pg.database_properties(conn, name, server.version_num)
            exts = pg.extensions(conn)
            schemas, roles = pg.schemas_and_roles(conn)
            citus = self._citus(conn, shown, {e.name: e.version for e in exts})
            assert listing is not None
            from citus_backup.runner.manifest import DatabaseEntry  # noqa: PLC0415 (lazy: module doc)
            from citus_backup.runner.toc import TocParser  # noqa: PLC0415 (lazy: module doc)

            toc_summary = TocParser(schemas, roles).feed_all(listing).summary()
            counts = self._row_counts(conn, shown, toc_summary.tables, citus, exact=exact)
            conn.rollback()
            return DatabaseEntry(
                name=name,
                object=info.model(),
                properties=props,
                toc=toc_summary,
                extensions=tuple(exts),
                citus=citus,
                row_counts=counts,
                started_at=started,
                finished_at=_now(),
            )

    def _pg_dump_argv(
        self, name: str, snapshot: str | None, extra: Sequence[str] = ()
    ) -> list[str]:
        argv = [pg.tool("pg_dump"), "-Fc", f"--compress={self.options.compress}", "-w", *extra]
        if snapshot:
            argv += ["--snapshot", snapshot]
        if self.options.lock_wait_timeout:
            argv += ["--lock-wait-timeout", self.options.lock_wait_timeout]
        return [*argv, "-d", self.pg_config.conninfo(name)]

    # ------------------------------------------------------------ splitting
    def _table_sizes(self, conn: pg.Connection, shown: str) -> list[split.TableSize] | None:
        """:data:`.split.TABLES_QUERY`, None if a table is locked against it.

        ``pg_total_relation_size`` takes an ACCESS SHARE lock, as pg_dump will:
        the query waits at most ``--lock-wait-timeout`` (else
        :data:`SIZE_LOCK_WAIT`) in a savepoint; past it the database is not
        split and its one pg_dump meets the lock as it always did.
        """
        wait = self.options.lock_wait_timeout or SIZE_LOCK_WAIT
        try:
            with conn.transaction():
                row = conn.execute(
                    "SELECT current_setting('lock_timeout'), set_config('lock_timeout', %s, true)",
                    (wait,),
                ).fetchone()
                rows = conn.execute(split.TABLES_QUERY).fetchall()
                if row is not None:
                    conn.execute("SELECT set_config('lock_timeout', %s, true)", (str(row[0]),))
        except psycopg.errors.LockNotAvailable:
            log.warning(
                "database %s: a table is locked, its size unknown within %s: dumped as one "
                "archive (not split)",
                shown,
                wait,
            )
            return None
        return [split.TableSize(str(r[0]), str(r[1]), int(r[3]), str(r[2])) for r in rows]

    def _split_plan(self, conn: pg.Connection, shown: str) -> split.SplitPlan | None:
        """In the snapshot session: the database's tables and sizes, and whether
        it is split (:func:`.split.plan_split`); if so, every table is locked
        ``ACCESS SHARE`` until the session ends (no DDL between the parts)."""
        threshold = self.options.split_threshold
        if threshold <= 0:
            return None
        with pg.errors_as(f"list the tables of database {shown}"):
            # One round trip decides for most databases (this runs between the
            # slot and the pg_dump): pg_database_size (no locks: it sizes the
            # files; catalogs included, so never below the tables' sum) under
            # the threshold, or Citus (never split: see .split), keeps one archive.
            row = conn.execute(
                "SELECT pg_database_size(current_database()),"
                " EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"
            ).fetchone()
            if row is None or int(row[0]) < threshold or row[1]:
                return None
            tables = self._table_sizes(conn, shown)
        if tables is None:
            return None
        plan = split.plan_split(tables, threshold)
        if plan is None:
            return None
        with pg.errors_as(f"lock the tables of database {shown} for its split dump"):
            if self.options.lock_wait_timeout:
                conn.execute(
                    "SELECT set_config('lock_timeout', %s, true)", (self.options.lock_wait_timeout,)
                )
            names = sql.SQL(", ").join(sql.Identifier(t.schema, t.name) for t in tables)
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(names))
        log.info(
            "database %s: %d MiB in %d table(s), split into %d data part(s)",
            shown,
            plan.total_size // 2**20,
            len(tables),
            len(plan.parts),
        )
        return plan

    def _dump_piece(
        self,
        *,
        uploader: StreamUploader,
        location: layout.SetLocation,
        name: str,
        snapshot: str,
        extra: Sequence[str],
        object_name: str,
    ) -> tuple[_Uploaded, list[str]]:
        """One pg_dump of a split database in one of the run's slots."""
        slot = self._take_slot()
        try:
            shown = quote_name(name)
            child = self._start(self._pg_dump_argv(name, snapshot, extra))
            try:
                toc = TocReader(self.children, self.env)
            except BaseException:
                child.terminate()
                self.children.done(child)
                raise
            info, listing = self._stream(
                child=child,
                uploader=uploader,
                key=location.key(object_name),
                label=f"{shown} {object_name}",
                what=f"pg_dump of database {shown} ({object_name})",
                toc=toc,
                on_eof=slot.release,
            )
            assert listing is not None
            return info, listing
        finally:
            slot.release()

    def _dump_split(  # noqa: PLR0917 - one step of _dump_in_slot
        self,
        conn: pg.Connection,
        uploader: StreamUploader,
        location: layout.SetLocation,
        name: str,
        server: pg.ServerInfo,
        plan: split.SplitPlan,
        snapshot: str,
    ) -> DatabaseEntry:
        """The schema archive and the data parts, in parallel; this session keeps
        the snapshot (and the locks) until the last pg_dump has ended."""
        started = _now()
        shown = quote_name(name)
        schema_name = layout.dump_object_name(name)
        pieces: list[tuple[list[str], str]] = [
            (split.part_args(part, plan), layout.part_object_name(name, part.index))
            for part in plan.parts
        ]
        # The schema archive last: it is quick, and runs in the tail of the
        # largest-first schedule where workers are idle.
        pieces.append((split.schema_args(), schema_name))
        workers = max(1, min(self.options.split_jobs or self.jobs, len(pieces)))
        results: dict[str, tuple[_Uploaded, list[str]]] = {}
        with ThreadPoolExecutor(workers, "part") as pool:
            futures = {
                pool.submit(
                    self._dump_piece,
                    uploader=uploader,
                    location=location,
                    name=name,
                    snapshot=snapshot,
                    extra=extra,
                    object_name=object_name,
                ): object_name
                for extra, object_name in pieces
            }
            self._wait(futures)
            for future, object_name in futures.items():
                results[object_name] = future.result()
        props = pg.database_properties(conn, name, server.version_num)
        exts = pg.extensions(conn)
        schemas, roles = pg.schemas_and_roles(conn)
        from citus_backup.runner.manifest import (  # noqa: PLC0415 (lazy: module doc)
            DatabaseEntry,
            DataPart,
            ForeignKey,
            TableRef,
        )
        from citus_backup.runner.toc import TocParser  # noqa: PLC0415 (lazy: module doc)

        parser = TocParser(schemas, roles)
        for _, object_name in reversed(pieces):  # the schema archive's header first
            parser.feed_all(results[object_name][1])
        toc_summary = parser.summary()
        counts = self._row_counts(conn, shown, toc_summary.tables, None, exact=True)
        with pg.errors_as(f"read the foreign keys of database {shown}"):
            keys = [
                ForeignKey(
                    table=TableRef(schema=str(r[0]), name=str(r[1])),
                    references=TableRef(schema=str(r[2]), name=str(r[3])),
                )
                for r in conn.execute(split.FOREIGN_KEYS_QUERY)
            ]
        conn.rollback()
        parts: list[DataPart] = [
            DataPart(
                object=results[layout.part_object_name(name, part.index)][0].model(),
                tables=tuple(TableRef(schema=t.schema, name=t.name) for t in part.tables),
                estimated_size=part.estimated_size,
            )
            for part in plan.parts
        ]
        return DatabaseEntry(
            name=name,
            object=results[schema_name][0].model(),
            properties=props,
            toc=toc_summary,
            extensions=tuple(exts),
            citus=None,
            row_counts=counts,
            started_at=started,
            finished_at=_now(),
            parts=tuple(parts),
            foreign_keys=tuple(keys),
        )

    def _row_counts(
        self,
        conn: pg.Connection,
        shown: str,
        tables: Sequence[TableRef],
        citus: CitusMetadata | None,
        *,
        exact: bool,
    ) -> tuple[RowCount, ...]:
        """``count(*)`` of every dumped table, in the dump's session after it.

        One scan per table, cheaper than the dump's own read; exact for plain
        tables (same snapshot as pg_dump), and for Citus tables only when their
        writes were blocked (their rows come from the shards, read in worker
        transactions by the dump and again by this count). A count that cannot
        be taken (no privilege, say) leaves the database without counts: the
        restore then checks none, and says so.
        """
        if not self.options.row_counts or not tables:
            return ()
        from citus_backup.runner.manifest import RowCount  # noqa: PLC0415 (lazy: module doc)

        citus_names = {t.names for t in citus.tables} if citus is not None else set()
        try:
            with conn.transaction():  # a savepoint: a failure leaves the snapshot usable
                counts = pg.count_rows(conn, [(t.schema_name, t.name) for t in tables])
        except (psycopg.Error, CitusBackupError) as exc:
            log.warning(
                "database %s: no row counts (%s); a restore will not check them",
                shown,
                pg.one_line(str(exc)),
            )
            return ()
        return tuple(
            RowCount(
                schema=schema,
                name=table,
                rows=rows,
                exact=exact or (schema, table) not in citus_names,
            )
            for (schema, table), rows in counts
        )

    @contextlib.contextmanager
    def _writes_blocked(self, name: str, shown: str) -> Iterator[bool]:
        """:meth:`_block_writes` for the block; yields whether writes are blocked."""
        blocker = self._block_writes(name, shown)
        try:
            yield blocker is not None
        finally:
            if blocker is not None:
                blocker.close()  # rolls back: the locks go, writers resume

    def _block_writes(self, name: str, shown: str) -> pg.Connection | None:
        """``--consistency block-writes``: a session holding EXCLUSIVE locks on
        every Citus table of ``name`` (Citus takes them on the shards too), so
        writes wait and reads go on; the caller closes it when the dump and the
        counts are done. None when not asked for or the database has no Citus."""
        if self.options.consistency != BLOCK_WRITES:
            return None
        conn = self.pg.connect(name, autocommit=False)
        try:
            with pg.errors_as(f"block writes to the Citus tables of database {shown}"):
                has_citus = conn.execute(
                    "SELECT 1 FROM pg_extension WHERE extname = 'citus'"
                ).fetchone()
                if not has_citus:
                    conn.close()
                    return None
                names = [
                    str(row[0])
                    for row in conn.execute(
                        "SELECT format('%I.%I', n.nspname, c.relname) FROM citus_tables t"
                        " JOIN pg_class c ON c.oid = t.table_name"
                        " JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY 1"
                    )
                ]
                wait = self.options.lock_wait_timeout or DEFAULT_BLOCK_WRITES_WAIT
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (wait,))
                if names:
                    conn.execute(f"LOCK TABLE {', '.join(names)} IN EXCLUSIVE MODE".encode())
        except BaseException:
            conn.close()
            raise
        log.info("database %s: writes to %d Citus table(s) blocked for the dump", shown, len(names))
        return conn

    def _export_snapshot(self, conn: pg.Connection, shown: str) -> str | None:
        """A snapshot for pg_dump, so metadata and dump agree (None: not possible)."""
        try:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        except psycopg.Error as exc:
            log.warning(
                "database %s: cannot export a snapshot (%s); metadata is read "
                "separately from the dump",
                shown,
                pg.one_line(str(exc)),
            )
            conn.rollback()
            return None
        return str(row[0]) if row else None

    def _citus(
        self, conn: pg.Connection, shown: str, extensions: dict[str, str]
    ) -> CitusMetadata | None:
        if "citus" not in extensions:
            return None
        from citus_backup.runner import citus  # noqa: PLC0415 (lazy: module doc)

        with pg.errors_as(f"read Citus metadata of database {shown}"):
            tables = pg.rows_as_dicts(conn, citus.CITUS_TABLES_QUERY)
            nodes = pg.rows_as_dicts(conn, citus.DIST_NODE_QUERY)
            schemas = pg.rows_as_dicts(conn, citus.CITUS_SCHEMAS_QUERY)
            settings = {
                str(row[0]): str(row[1])
                for row in conn.execute(citus.SETTINGS_QUERY, (list(citus.SETTINGS),))
            }
            build_row = conn.execute("SELECT citus_version()").fetchone()
        return citus.citus_metadata(
            extensions["citus"],
            tables,
            nodes,
            schemas=schemas,
            settings=settings,
            build=str(build_row[0]) if build_row else None,
        )

    # ---------------------------------------------------------------- run
    def run(self) -> Manifest:
        options = self.options
        started = options.now()
        backup_id = layout.validate_backup_id(options.backup_id or layout.new_backup_id(started))
        tier = layout.validate_tier(options.tier)
        split.validate_threshold(options.split_threshold)
        also = [layout.validate_tier(t) for t in dict.fromkeys(options.also_tiers) if t != tier]
        tiers = [tier, *also]
        bucket = self.s3_config.bucket
        location = layout.make_location(self.s3_config.prefix, tier, backup_id)
        self.summary.backup_id = backup_id
        self.summary.location = location.url(bucket)
        self.summary.tiers = tiers

        with self.pg.session(self.pg_config.maintenance_db) as conn:
            server = pg.server_info(conn)
            names = select_databases(pg.list_databases(conn), options.include, options.exclude)
        pg.choose_client(server.version_num // 10000, f"a backup of PostgreSQL {server.version}")
        for tool in ("pg_dump", "pg_dumpall", "pg_restore"):
            pg.tool(tool)
        jobs = options.jobs or default_jobs(options.cpus, len(names))
        self.jobs = jobs
        log.info(
            "backup %s: %d database(s) from %s with %d job(s) to %s",
            backup_id,
            len(names),
            self.pg.where,
            jobs,
            location.url(bucket),
        )
        started_doc = {
            "backupId": backup_id,
            "tier": tier,
            "tiers": tiers,
            "startedAt": started.isoformat().replace("+00:00", "Z"),
            "toolVersion": __version__,
            "databases": names,
        }

        entries: dict[str, DatabaseEntry] = {}
        globals_info: _Uploaded | None = None
        with (
            ThreadPoolExecutor(jobs * options.max_inflight, "upload") as upload_pool,
            # One thread more than --jobs: the next database connects while
            # the running ones dump (see self.slots).
            ThreadPoolExecutor(jobs + 1, "dump") as dump_pool,
            self.progress,
        ):
            uploader = StreamUploader(
                _GatedTarget(self.gate),
                upload_pool,
                self.schedule,
                options.max_inflight,
                cancel=self.children.cancelled,
                # Part buffers of all databases together: memory stays at most
                # (2 x jobs + 1) x part size (one filling + one uploading each,
                # and one spare), whatever the size or number of databases.
                budget=threading.BoundedSemaphore(2 * jobs + 1),
            )
            try:
                # The databases first: they are the long pole. Their uploads
                # wait for the gate, which opens once the S3 side is ready.
                self.dumps_started = _Countdown(min(jobs, len(names)))
                self.slots = threading.Semaphore(jobs)
                futures: dict[Future[DatabaseEntry], str] = {
                    dump_pool.submit(
                        self.dump_database, uploader, location, name, server, index < jobs
                    ): name
                    for index, name in enumerate(names)
                }
                # The S3 set-up (~0.1 s of CPU, mostly importing the SDK) would
                # slow the first dumps' connections down (the GIL): let them
                # start their pg_dumps first.
                self.dumps_started.wait(FIRST_DUMPS_WAIT)
                store = self._prepare_store(location, tiers, started_doc)
                self.gate.open(store)
                pg_dump_version = pg.tool_version("pg_dump")
                # The small globals dump runs meanwhile on this thread (it
                # takes the budget's spare buffer).
                if options.globals:
                    globals_info = self.dump_globals(uploader, location)
                self._wait(futures)
                for future, name in futures.items():
                    entries[name] = future.result()
            except BaseException:
                self.children.cancel()
                raise

        manifest = self._manifest(
            backup_id=backup_id,
            tiers=tiers,
            started=started,
            server=server,
            pg_dump_version=pg_dump_version,
            globals_info=globals_info,
            databases=tuple(entries[name] for name in names),
        )
        self._summarize(manifest)
        store.put_bytes(location.key(layout.MANIFEST_NAME), manifest.to_json(), "application/json")
        log.info("backup %s complete: %s", backup_id, location.url(bucket))
        for t in also:
            self.copy_to_tier(store, location, manifest, t)
        if options.keep_newest:
            self._protect(store, backup_id, tiers)
        return manifest

    def _summarize(self, manifest: Manifest) -> None:
        self.summary.databases = {e.name: e.size for e in manifest.databases}
        split_dbs = {e.name: len(e.parts) for e in manifest.databases if e.split}
        if split_dbs:
            self.summary.extra["splitDatabases"] = split_dbs
        self.summary.total_size = manifest.total_size
        if manifest.globals is not None:
            self.summary.extra["globalsSize"] = manifest.globals.size

    def _manifest(
        self,
        *,
        backup_id: str,
        tiers: list[str],
        started: datetime,
        server: pg.ServerInfo,
        pg_dump_version: str,
        globals_info: _Uploaded | None,
        databases: tuple[DatabaseEntry, ...],
    ) -> Manifest:
        from citus_backup.runner.manifest import (  # noqa: PLC0415 (lazy: module doc)
            FORMAT_VERSION,
            SPLIT_FORMAT_VERSION,
            Manifest,
        )

        options = self.options
        return Manifest(
            format_version=(
                SPLIT_FORMAT_VERSION if any(e.split for e in databases) else FORMAT_VERSION
            ),
            backup_id=backup_id,
            tier=tiers[0],
            tiers=tuple(tiers),
            started_at=started,
            finished_at=options.now(),
            tool_version=__version__,
            server_version=server.version,
            server_version_num=server.version_num,
            pg_dump_version=pg_dump_version,
            compression=options.compress,
            consistency="blockWrites" if options.consistency == BLOCK_WRITES else "snapshot",
            globals=globals_info.model() if globals_info is not None else None,
            databases=databases,
        )

    def _prepare_store(
        self, location: layout.SetLocation, tiers: list[str], started_doc: Mapping[str, object]
    ) -> S3Store:
        """The S3 side, while the first dumps run: the store (importing the SDK),
        the bucket check, no complete set of this id in any tier, ``started.json``."""
        store = self.make_store()
        store.check_bucket(create=self.options.create_bucket)
        for t in tiers:
            if store.stat(location.in_tier(t).key(layout.MANIFEST_NAME)) is not None:
                raise PermanentError(
                    f"backup set {location.in_tier(t).url(store.bucket)} already exists "
                    "and is complete; choose another --backup-id",
                    reason="BackupExists",
                )
        store.put_bytes(
            location.key(layout.STARTED_NAME),
            json.dumps(started_doc, ensure_ascii=False).encode(),
            "application/json",
        )
        return store

    def _protect(self, store: S3Store, backup_id: str, tiers: list[str]) -> None:
        """Move protection to this set. The set is complete and restorable whatever
        happens here, so an S3 error is a warning (``summary.extra``), not a failure:
        the previously protected set stays untagged until a later run succeeds."""
        from citus_backup.runner.protect import protect  # noqa: PLC0415 (lazy: module doc)

        try:
            protect(store, store.config.prefix, backup_id, tiers)
            self.summary.extra["protected"] = True
        except CitusBackupError as exc:
            self.summary.extra["protected"] = False
            log.warning("backup %s: could not move expiry protection to it: %s", backup_id, exc)

    def _wait(self, futures: Mapping[Future[Any], str]) -> None:
        """Wait for all dumps; at the first failure stop the others, raise it."""
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                error = future.exception()
                if error is not None:
                    self.children.cancel()
                    wait(pending)
                    raise error

    def copy_to_tier(
        self, store: S3Store, location: layout.SetLocation, manifest: Manifest, tier: str
    ) -> None:
        """Server-side copy of the set to ``tier``; its manifest is copied last."""
        target = location.in_tier(tier)
        objects: list[tuple[str, int]] = [(layout.STARTED_NAME, 0)]
        if manifest.globals is not None:
            objects.append((manifest.globals.name, manifest.globals.size))
        objects += [(o.name, o.size) for e in manifest.databases for o in e.objects]
        for name, size in objects:
            store.copy(location.key(name), target.key(name), size)
        store.copy(location.key(layout.MANIFEST_NAME), target.key(layout.MANIFEST_NAME), 0)
        log.info(
            "backup %s copied to tier %s: %s",
            manifest.backup_id,
            tier,
            target.url(store.bucket),
        )


def run_backup(
    pg_config: PgConfig,
    s3_config: S3Config,
    options: BackupOptions,
    summary: RunSummary,
    store: S3Store | None = None,
) -> Manifest:
    """Run one backup; raises :class:`~citus_backup.errors.CitusBackupError` on failure."""
    jobs = options.jobs or options.cpus

    def make_store() -> S3Store:
        if store is not None:
            return store
        from citus_backup.runner import s3  # noqa: PLC0415 (lazy: module doc)

        return s3.S3Store(s3_config, max_connections=jobs * options.max_inflight + 4)

    started = time.monotonic()
    try:
        return _Backup(pg_config, s3_config, make_store, options, summary).run()
    finally:
        summary.duration_seconds = time.monotonic() - started
