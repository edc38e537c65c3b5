"""PostgreSQL side of the runner: catalog queries and the pg_dump family.

Why this shape:

* In-process queries use psycopg with every name composed through
  :class:`psycopg.sql.Identifier` or passed as a bind parameter, so database
  names with quotes, spaces or non-ASCII characters are data, never SQL.
* pg_dump/pg_dumpall/pg_restore/psql run from argument lists (no shell); the
  database is given as a quoted conninfo string (``dbname='...'``), so a name
  containing ``=`` or starting with ``postgresql://`` or ``-`` is not
  reinterpreted; the password travels in the child's environment only.
* libpq's and the tools' error text is classified into the project's errors
  (wrong password: permanent; server unreachable: transient) and reduced to
  one line.
* Swapping and renaming databases on every node lives in :mod:`.cluster`,
  the one place that disconnects other sessions.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import re
import shutil
import struct
import subprocess
import termios
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, cast

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from citus_backup.errors import CitusBackupError, PermanentError, TransientError
from citus_backup.runner.config import PgConfig
from citus_backup.runner.selection import quote_name

if TYPE_CHECKING:
    # Imported where used: pydantic costs ~50 ms that a backup should not
    # spend before its first pg_dump has started.
    from citus_backup.runner.manifest import DatabaseProperties, Extension

log = logging.getLogger("citus_backup.runner")

#: Linux F_SETPIPE_SZ: bigger pipes mean fewer wake-ups per MiB streamed.
_F_SETPIPE_SZ = 1031
PIPE_SIZE = 1024 * 1024
STDERR_LINES = 40

Connection = psycopg.Connection[Any]

_UNREACHABLE = (
    "connection refused",
    "could not connect",
    "timeout expired",
    "could not translate host name",
    "no route to host",
    "network is unreachable",
    "server closed the connection unexpectedly",
    "connection timed out",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "terminating connection due to administrator command",
    "sorry, too many clients already",
    "remaining connection slots are reserved",
    "no such file or directory",
)
_AUTH = (
    "password authentication failed",
    "no password supplied",
    "fe_sendauth",
    "pg_hba.conf",
    "authentication failed",
    "peer authentication failed",
)


def one_line(text: str) -> str:
    return " ".join(text.split())


def libpq_detail(text: str) -> str:
    """The useful part of a libpq/tool error: ``FATAL:  password ...`` -> ``password ...``."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in lines:
        for marker in ("FATAL:", "ERROR:"):
            if marker in line:
                return one_line(line.split(marker, 1)[1])
    for line in lines:
        if " failed: " in line:  # connection to server at "h", port 1 failed: Connection refused
            return one_line(line.rsplit(" failed: ", 1)[1])
    for line in lines:
        if "error:" in line:
            return one_line(line.split("error:", 1)[1])
    return one_line(lines[-1]) if lines else "unknown error"


def _matches(lowered: str, markers: Sequence[str]) -> bool:
    return any(marker in lowered for marker in markers)


def classify(text: str, what: str) -> CitusBackupError:
    """A libpq or pg tool error message about ``what`` as the project's error."""
    lowered = text.lower()
    detail = libpq_detail(text)
    auth = _matches(lowered, _AUTH) or (
        re.search(r'role ".*" does not exist', lowered) is not None and "fatal" in lowered
    )
    rules: list[tuple[bool, type[CitusBackupError], str, str]] = [
        (auth, PermanentError, "AuthenticationFailed", "authentication failed: "),
        (
            re.search(r'database ".*" does not exist', lowered) is not None,
            PermanentError,
            "DatabaseNotFound",
            "",
        ),
        (
            _matches(lowered, ("server version mismatch", "aborting because of server version")),
            PermanentError,
            "VersionMismatch",
            "",
        ),
        (
            "ssl" in lowered and _matches(lowered, ("certificate", "ssl error")),
            PermanentError,
            "DatabaseTLSError",
            "TLS error: ",
        ),
        (
            _matches(lowered, _UNREACHABLE),
            TransientError,
            "DatabaseUnreachable",
            "PostgreSQL unreachable: ",
        ),
    ]
    for matched, cls, reason, label in rules:
        if matched:
            return cls(f"{what}: {label}{detail}", reason=reason)
    return PermanentError(f"{what}: {detail}", reason="DatabaseError")


def translate(exc: BaseException, what: str) -> CitusBackupError:
    if isinstance(exc, CitusBackupError):
        return exc
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return PermanentError(f"{what}: {one_line(str(exc))}", reason="InsufficientPrivilege")
    if isinstance(exc, psycopg.errors.ObjectInUse):
        return TransientError(f"{what}: {one_line(str(exc))}", reason="DatabaseInUse")
    if isinstance(exc, psycopg.OperationalError):
        return classify(str(exc), what)
    if isinstance(exc, psycopg.Error):
        return PermanentError(f"{what}: {libpq_detail(str(exc))}", reason="DatabaseError")
    return PermanentError(f"{what}: {type(exc).__name__}: {one_line(str(exc))}")


class Pg:
    """Connections to one server, with errors translated."""

    def __init__(self, config: PgConfig) -> None:
        self.config = config

    @property
    def where(self) -> str:
        return f"PostgreSQL {self.config.describe()}"

    def connect(self, database: str, autocommit: bool = True) -> Connection:
        try:
            conninfo = make_conninfo("", **self.config.connect_kwargs(database))
            return psycopg.connect(conninfo, autocommit=autocommit)
        except Exception as exc:
            raise translate(
                exc, f"cannot connect to {self.where} database {quote_name(database)}"
            ) from exc

    @contextlib.contextmanager
    def session(self, database: str, autocommit: bool = True) -> Iterator[Connection]:
        conn = self.connect(database, autocommit)
        try:
            yield conn
        finally:
            conn.close()


@contextlib.contextmanager
def errors_as(what: str) -> Iterator[None]:
    """Translate psycopg errors raised in the block, naming ``what``."""
    try:
        yield
    except CitusBackupError:
        raise
    except psycopg.Error as exc:
        raise translate(exc, what) from exc


# ---------------------------------------------------------------- catalog


@dataclass(frozen=True)
class ServerInfo:
    version: str
    version_num: int


def server_info(conn: Connection) -> ServerInfo:
    with errors_as("read server version"):
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int"
        ).fetchone()
    assert row is not None
    return ServerInfo(str(row[0]), int(row[1]))


def list_databases(conn: Connection) -> list[str]:
    """Databases worth backing up: not templates, accepting connections."""
    with errors_as("list databases"):
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn "
            "ORDER BY datname"
        ).fetchall()
    return [str(row[0]) for row in rows]


def all_database_names(conn: Connection) -> set[str]:
    with errors_as("list databases"):
        rows = conn.execute("SELECT datname FROM pg_database").fetchall()
    return {str(row[0]) for row in rows}


def _props_query(version_num: int) -> sql.Composed:
    if version_num >= 170000:
        locale = sql.SQL("d.datlocprovider::text AS provider, d.datlocale AS icu_locale")
    elif version_num >= 150000:
        locale = sql.SQL("d.datlocprovider::text AS provider, d.daticulocale AS icu_locale")
    else:
        locale = sql.SQL("'c'::text AS provider, NULL::text AS icu_locale")
    return sql.SQL(
        "SELECT pg_get_userbyid(d.datdba) AS owner, pg_encoding_to_char(d.encoding) AS encoding,"
        " d.datcollate AS collate, d.datctype AS ctype, {}, d.datconnlimit AS connlimit,"
        " t.spcname AS tablespace, shobj_description(d.oid, 'pg_database') AS comment,"
        " d.datacl IS NULL AS default_acl"
        " FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace"
        " WHERE d.datname = %s"
    ).format(locale)


_PROVIDERS = {"c": "libc", "i": "icu", "b": "builtin"}


def database_properties(conn: Connection, name: str, version_num: int) -> DatabaseProperties:
    from citus_backup.runner.manifest import (  # noqa: PLC0415 (lazy: see the imports)
        AclItem,
        DatabaseProperties,
        RoleSetting,
    )

    with errors_as(f"read properties of database {quote_name(name)}"):
        cur = conn.cursor(row_factory=dict_row)
        row = cur.execute(_props_query(version_num), (name,)).fetchone()
        if row is None:
            raise PermanentError(
                f"database {quote_name(name)} does not exist", reason="DatabaseNotFound"
            )
        acl: tuple[AclItem, ...] | None = None
        if not row["default_acl"]:
            acl_rows = cur.execute(
                "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END"
                " AS grantee, a.privilege_type, a.is_grantable"
                " FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s"
                " ORDER BY 1 NULLS FIRST, 2",
                (name,),
            ).fetchall()
            acl = tuple(
                AclItem(
                    grantee=r["grantee"], privilege=r["privilege_type"], grantable=r["is_grantable"]
                )
                for r in acl_rows
            )
        setting_rows = cur.execute(
            "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END AS role,"
            " s.setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase"
            " WHERE d.datname = %s ORDER BY 1 NULLS FIRST",
            (name,),
        ).fetchall()
    settings: tuple[str, ...] = ()
    role_settings: list[RoleSetting] = []
    for r in setting_rows:
        values = tuple(r["setconfig"] or ())
        if r["role"] is None:
            settings = values
        else:
            role_settings.append(RoleSetting(role=r["role"], settings=values))
    return DatabaseProperties(
        owner=row["owner"],
        encoding=row["encoding"],
        collate=row["collate"],
        ctype=row["ctype"],
        locale_provider=_PROVIDERS.get(row["provider"], "libc"),
        icu_locale=row["icu_locale"],
        connection_limit=row["connlimit"],
        tablespace=row["tablespace"],
        comment=row["comment"],
        acl=acl,
        settings=settings,
        role_settings=tuple(role_settings),
    )


def extensions(conn: Connection) -> list[Extension]:
    from citus_backup.runner.manifest import Extension  # noqa: PLC0415 (lazy: see the imports)

    with errors_as("list extensions"):
        rows = conn.execute(
            "SELECT e.extname, e.extversion, n.nspname FROM pg_extension e"
            " JOIN pg_namespace n ON n.oid = e.extnamespace ORDER BY 1"
        ).fetchall()
    return [Extension(name=r[0], version=r[1], schema=r[2]) for r in rows]


def schemas_and_roles(conn: Connection) -> tuple[list[str], list[str]]:
    """Names that disambiguate ``pg_restore --list`` lines (see :mod:`.toc`)."""
    with errors_as("list schemas and roles"):
        schemas = [str(r[0]) for r in conn.execute("SELECT nspname FROM pg_namespace")]
        roles = [str(r[0]) for r in conn.execute("SELECT rolname FROM pg_roles")]
    return schemas, roles


def rows_as_dicts(conn: Connection, query: str) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    return list(cur.execute(query).fetchall())


def count_rows(
    conn: Connection, tables: Sequence[tuple[str, str]]
) -> list[tuple[tuple[str, str], int]]:
    """``count(*)`` of each (schema, table), in one statement (one round trip)."""
    if not tables:
        return []
    parts = [
        sql.SQL("SELECT {}::int AS i, count(*) FROM {}").format(
            sql.Literal(i), sql.Identifier(schema, table)
        )
        for i, (schema, table) in enumerate(tables)
    ]
    rows = conn.execute(sql.SQL(" UNION ALL ").join(parts)).fetchall()
    found = {int(row[0]): int(row[1]) for row in rows}
    return [(tables[i], found[i]) for i in range(len(tables))]


def role_exists(conn: Connection, role: str) -> bool:
    with errors_as(f"look up role {quote_name(role)}"):
        return (
            conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            is not None
        )


def current_user(conn: Connection) -> str:
    row = conn.execute("SELECT current_user").fetchone()
    assert row is not None
    return str(row[0])


def table_exists(conn: Connection, schema: str, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s",
        (schema, name),
    ).fetchone()
    return row is not None


def schema_exists(conn: Connection, schema: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
        is not None
    )


# ------------------------------------------------------ database lifecycle


def execute(conn: Connection, statement: sql.Composed | sql.SQL, what: str) -> None:
    with errors_as(what):
        conn.execute(statement)


def drop_database(conn: Connection, name: str, version_num: int) -> None:
    """Drop ``name``, disconnecting its sessions (``WITH (FORCE)`` on PG13+)."""
    if version_num >= 130000:
        statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    else:  # pragma: no cover - PG13+ is what Citus 11+ runs on
        terminate_backends(conn, name)
        statement = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
    execute(conn, statement, f"drop database {quote_name(name)}")


def terminate_backends(conn: Connection, name: str) -> int:
    """Terminate every other session on ``name`` (clients and background workers)."""
    with errors_as(f"terminate sessions on database {quote_name(name)}"):
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return len(rows)


def sessions(conn: Connection, name: str) -> int:
    """Other sessions on database ``name``."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    ).fetchone()
    return int(row[0]) if row else 0


def set_allow_connections(conn: Connection, name: str, allow: bool) -> None:
    execute(
        conn,
        sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
            sql.Identifier(name), sql.SQL("true" if allow else "false")
        ),
        f"{'allow' if allow else 'block'} connections to database {quote_name(name)}",
    )


def rename_database(conn: Connection, old: str, new: str) -> None:
    execute(
        conn,
        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)),
        f"rename database {quote_name(old)} to {quote_name(new)}",
    )


# ------------------------------------------------------------ subprocesses


#: Debian installs each PostgreSQL major's client tools side by side here
#: (``/usr/lib/postgresql/<major>/bin``); :func:`choose_client` picks one.
DEBIAN_CLIENTS = "/usr/lib/postgresql"
#: The bin directory :func:`choose_client` picked (None: $PG_BINDIR or PATH).
_chosen_bindir: str | None = None
_VERSION = re.compile(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?")


def tool(name: str) -> str:
    """Absolute path of a PostgreSQL client tool: $PG_BINDIR, else the client
    :func:`choose_client` picked, else PATH."""
    for bindir in (os.environ.get("PG_BINDIR"), _chosen_bindir):
        if bindir:
            candidate = os.path.join(bindir, name)
            if os.access(candidate, os.X_OK):
                return candidate
    found = shutil.which(name)
    if not found:
        raise PermanentError(
            f"{name} not found in PATH (install the PostgreSQL client or set PG_BINDIR)",
            reason="ToolNotFound",
        )
    return found


def major_of(version_text: str) -> int | None:
    """``pg_dump (PostgreSQL) 15.20 (Debian ...)`` or ``15.20`` -> 15."""
    match = _VERSION.search(version_text) or re.match(r"(\d+)", version_text.strip())
    return int(match.group(1)) if match else None


def installed_clients(root: str = DEBIAN_CLIENTS) -> dict[int, str]:
    """major -> bin directory of each client installed in Debian's layout."""
    found: dict[int, str] = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir(root):
            bindir = os.path.join(root, entry, "bin")
            if entry.isdigit() and os.access(os.path.join(bindir, "pg_dump"), os.X_OK):
                found[int(entry)] = bindir
    return found


def choose_client(needed_major: int, what: str, root: str = DEBIAN_CLIENTS) -> int:
    """Use the oldest installed client of major ``needed_major`` or newer (unless
    $PG_BINDIR names one), and refuse, before anything is done, a client older
    than that: pg_dump cannot dump a newer server, and pg_restore cannot read
    a newer pg_dump's archive. Returns the client's major."""
    global _chosen_bindir  # noqa: PLW0603 - one choice per run, read by tool()
    if not os.environ.get("PG_BINDIR"):
        usable = {m: d for m, d in installed_clients(root).items() if m >= needed_major}
        _chosen_bindir = usable[min(usable)] if usable else None
    version = tool_version("pg_dump")
    major = major_of(version)
    if major is None or major < needed_major:
        raise PermanentError(
            f"{what} needs PostgreSQL client tools of major version {needed_major} or newer, "
            f"but the newest here is {version or 'unknown'} ({tool('pg_dump')}); use an image "
            f"with postgresql-client-{needed_major} (README: Server versions) or set PG_BINDIR; "
            "nothing was done",
            reason="ClientTooOld",
        )
    return major


def tool_version(name: str) -> str:
    done = subprocess.run([tool(name), "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or done.stderr.strip()


def _enlarge_pipe(stream: IO[bytes] | None) -> None:
    if stream is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(stream.fileno(), _F_SETPIPE_SZ, PIPE_SIZE)


class Child:
    """A child process with argv (no shell), its stderr tail kept by a thread."""

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        *,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
        stdout: int | None = subprocess.DEVNULL,
        label: str,
        stderr_lines: int = STDERR_LINES,
    ) -> None:
        self.label = label
        self.argv = list(argv)
        self._stderr: deque[str] = deque(maxlen=stderr_lines)
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=stdin,
                stdout=stdout,
                stderr=subprocess.PIPE,
                env=env,
                bufsize=0,
                close_fds=True,
            )
        except OSError as exc:
            raise PermanentError(
                f"{label}: cannot start {argv[0]}: {exc}", reason="ToolFailed"
            ) from exc
        _enlarge_pipe(self.proc.stdout)
        _enlarge_pipe(self.proc.stdin)
        self._reader = threading.Thread(
            target=self._read_stderr, daemon=True, name=f"{label}-stderr"
        )
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._stderr.append(line)

    @property
    def stdout(self) -> IO[bytes]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def readinto(self, buffer: memoryview) -> int:
        # bufsize=0: stdout is a raw FileIO, one read(2) per call.
        return cast(io.FileIO, self.stdout).readinto(buffer) or 0

    def write_all(self, data: bytes | memoryview) -> None:
        """Write everything to stdin; BrokenPipeError when the child has closed it."""
        assert self.proc.stdin is not None
        fd = self.proc.stdin.fileno()
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def wait_consumed(self) -> bool:
        """Wait until the child has read everything written to its stdin;
        False if it exited instead (FIONREAD works on either end of a pipe)."""
        assert self.proc.stdin is not None
        while self.proc.poll() is None:
            try:
                pending = struct.unpack(
                    "i", fcntl.ioctl(self.proc.stdin.fileno(), termios.FIONREAD, b"\0\0\0\0")
                )[0]
            except OSError:
                return self.proc.poll() is None
            if not pending:
                return True
            time.sleep(0.01)
        return False

    def close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def wait(self) -> int:
        code = self.proc.wait()
        self._reader.join(timeout=5)
        return code

    def terminate(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.close_stdin()
        if self.proc.stdout is not None:
            with contextlib.suppress(OSError):
                self.proc.stdout.close()

    def close(self) -> None:
        """Close our ends of its pipes (stderr once its reader is done)."""
        self.close_stdin()
        pipes = [self.proc.stdout]
        if not self._reader.is_alive():
            pipes.append(self.proc.stderr)
        for pipe in pipes:
            if pipe is not None and not pipe.closed:
                with contextlib.suppress(OSError):
                    pipe.close()

    def stderr_text(self) -> str:
        self._reader.join(timeout=5)
        return "\n".join(self._stderr)

    def failure(self, what: str) -> CitusBackupError:
        """The child's error (it exited non-zero) as a one-line project error."""
        code = self.proc.returncode
        text = self.stderr_text()
        error = (
            classify(text, what)
            if text
            else PermanentError(
                f"{what}: {self.label} exited with code {code}", reason="ToolFailed"
            )
        )
        if error.reason == "DatabaseError":
            error = PermanentError(
                f"{what}: {self.label} exited with code {code}: {libpq_detail(text)}",
                reason="ToolFailed",
            )
        return error


class Children:
    """Every child of a run, so a cancel can stop them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._children: set[Child] = set()
        self.cancelled = threading.Event()

    def start(self, argv: Sequence[str], env: dict[str, str], **kwargs: Any) -> Child:
        if self.cancelled.is_set():
            raise TransientError("stopped: the run is being cancelled", reason="Cancelled")
        child = Child(argv, env, **kwargs)
        with self._lock:
            self._children.add(child)
        return child

    def done(self, child: Child) -> None:
        """The caller is finished with ``child`` (exited or stopped): forget it
        and close its pipes, so a long run does not keep descriptors open."""
        with self._lock:
            self._children.discard(child)
        child.close()

    def cancel(self) -> None:
        self.cancelled.set()
        with self._lock:
            children = list(self._children)
        for child in children:
            child.terminate()
