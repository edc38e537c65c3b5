"""A throw-away PostgreSQL 15 server: initdb in a temporary directory, a free
loopback port, and password (SCRAM) authentication, so tests exercise the same
authentication path a real coordinator uses (a wrong password really fails).

PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` system user that Debian's package creates. That user must reach
its data directory: where ``base_dir`` lies below a directory it cannot
traverse (a checkout under ``/root``, mode 0700, or the demo's 0700 state
directory), the data directory and socket move to a root-owned 0711 directory
under the temp dir, named after ``base_dir`` so a later ``stop`` (or ``make
demo-down``, see :func:`server_dir`) finds it again. Nothing outside the temp
dir is ever chmod-ed.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from localenv.process import ManagedProcess, StartError, free_port

SUPERUSER = "postgres"


def pg_bindir() -> Path:
    """PostgreSQL server binaries: $PG_BINDIR, else Debian's PostgreSQL 15."""
    return Path(os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin"))


def _traversable_by_others(path: Path) -> bool:
    return bool(path.stat().st_mode & 0o001)


def relocated_dir(base_dir: Path) -> Path:
    """The temp-dir home of ``base_dir``'s data when the server user cannot reach it."""
    digest = hashlib.sha256(str(base_dir.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()).resolve() / f"localenv-postgres-{digest}"


def server_dir(base_dir: Path, user: str | None) -> Path:
    """Where pgdata and the socket go: ``base_dir`` if ``user`` (None: ourselves)
    can traverse every parent of it, possibly after opening up parents inside the
    temp dir (ours to open); else :func:`relocated_dir`."""
    if user is None:
        return base_dir
    tmp = Path(tempfile.gettempdir()).resolve()
    for parent in base_dir.resolve().parents:
        if parent.exists() and not _traversable_by_others(parent) and tmp not in parent.parents:
            return relocated_dir(base_dir)
    return base_dir


@dataclass
class PostgresInfo:
    """How to reach the server; ``env()`` gives the libpq environment."""

    host: str
    port: int
    user: str
    password: str
    log_path: Path

    def env(self, database: str = "postgres") -> dict[str, str]:
        return {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
            "PGDATABASE": database,
            "PGSSLMODE": "disable",
        }

    def dsn(self, database: str = "postgres") -> str:
        return (
            f"host={self.host} port={self.port} user={self.user} "
            f"password={self.password} dbname={database} sslmode=disable"
        )

    def redacted_dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:***@{self.host}:{self.port}/{database}"


@dataclass
class Postgres:
    base_dir: Path
    log_dir: Path
    die_with_parent: bool = True
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    # The address clients use. Another than loopback (a local node's bridge
    # address, so pods reach the server) is listened on besides loopback.
    host: str = "127.0.0.1"
    # Client networks allowed with a password besides loopback (pod CIDRs).
    allow_cidrs: tuple[str, ...] = ()
    # Server binaries (None: pg_bindir()); a Citus-enabled installation for the
    # Citus tier.
    bindir: Path | None = None
    # Extra ``-c name=value`` settings (shared_preload_libraries=citus, ...).
    settings: tuple[tuple[str, str], ...] = ()
    # The server process' environment additions: PGPASSFILE, so a Citus
    # coordinator authenticates to its workers like a real one does.
    server_env: tuple[tuple[str, str], ...] = ()
    process: ManagedProcess | None = field(default=None, init=False)

    @property
    def log_name(self) -> str:
        """``postgres.log``, or ``postgres-<dir name>.log`` beside other servers."""
        name = self.base_dir.name
        return "postgres.log" if name == "postgres" else f"postgres-{name}.log"

    @property
    def server_dir(self) -> Path:
        return server_dir(self.base_dir, self._user())

    @property
    def data_dir(self) -> Path:
        return self.server_dir / "server" / "pgdata"

    @property
    def info(self) -> PostgresInfo:
        return PostgresInfo(
            self.host, self.port, SUPERUSER, self.password, self.log_dir / self.log_name
        )

    def _user(self) -> str | None:
        return "postgres" if os.geteuid() == 0 else None

    def start(self) -> PostgresInfo:
        bindir = self.bindir or pg_bindir()
        initdb = bindir / "initdb"
        if not initdb.exists():
            raise StartError(
                f"postgres: {initdb} not found; install Debian's postgresql-15 "
                "(make deps does) or set PG_BINDIR"
            )
        user = self._user()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        home = self.server_dir
        if home != self.base_dir:
            # A previous run's data would make initdb fail; it is ours to remove.
            shutil.rmtree(home, ignore_errors=True)
            home.mkdir(mode=0o711)
            home.chmod(0o711)  # mkdir's mode is masked by the umask
        else:
            home.chmod(0o755)
        if user is not None:
            # The server user must traverse our (root-owned, 0700) temp parents;
            # server_dir() moved the data where any other parent would stop it.
            tmp = Path(tempfile.gettempdir()).resolve()
            for parent in home.resolve().parents:
                mode = parent.stat().st_mode
                if not mode & 0o001 and tmp in parent.parents:
                    parent.chmod(mode | 0o011)
        server = home / "server"
        server.mkdir(exist_ok=True)
        socket_dir = server / "socket"
        socket_dir.mkdir(exist_ok=True)
        pwfile = server / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if user is not None:
            ids = pwd.getpwnam(user)
            for path in (server, socket_dir, pwfile):
                os.chown(path, ids.pw_uid, ids.pw_gid)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        initdb_log = self.log_dir / self.log_name.replace("postgres", "postgres-initdb", 1)
        cmd = [
            str(initdb),
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--pwfile",
            str(pwfile),
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ]
        with initdb_log.open("wb") as log:
            done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, user=user, check=False)
        pwfile.unlink()
        if done.returncode != 0:
            raise StartError(
                f"postgres: `{' '.join(cmd)}` failed with code {done.returncode}; log {initdb_log}"
            )
        if self.allow_cidrs:
            with (self.data_dir / "pg_hba.conf").open("a") as hba:
                for cidr in self.allow_cidrs:
                    hba.write(f"host all all {cidr} scram-sha-256\n")
        listen = ",".join(dict.fromkeys(("127.0.0.1", self.host)))
        self.process = ManagedProcess(
            "postgres",
            [
                str(bindir / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(self.port),
                "-k",
                str(socket_dir),
                "-c",
                f"listen_addresses={listen}",
                # Test data is disposable: skip fsync for speed.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
                *(arg for name, value in self.settings for arg in ("-c", f"{name}={value}")),
            ],
            self.log_dir / self.log_name,
            env={**os.environ, **dict(self.server_env)} if self.server_env else None,
            user=user,
            die_with_parent=self.die_with_parent,
        )
        self.process.start()
        isready = bindir / "pg_isready"
        self.process.wait_ready(
            lambda: (
                subprocess.run(
                    [str(isready), "-q", "-h", "127.0.0.1", "-p", str(self.port)], check=False
                ).returncode
                == 0
            )
        )
        return self.info

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        home = self.server_dir
        shutil.rmtree(home / "server" if home == self.base_dir else home, ignore_errors=True)
