"""A throw-away PostgreSQL 15 server: initdb in a temporary directory, a free
loopback port, and password (SCRAM) authentication, so tests exercise the same
authentication path a real coordinator uses (a wrong password really fails).

PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` system user that Debian's package creates.
"""

from __future__ import annotations

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
    process: ManagedProcess | None = field(default=None, init=False)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "pgdata"

    @property
    def info(self) -> PostgresInfo:
        return PostgresInfo(
            self.host, self.port, SUPERUSER, self.password, self.log_dir / "postgres.log"
        )

    def _user(self) -> str | None:
        return "postgres" if os.geteuid() == 0 else None

    def start(self) -> PostgresInfo:
        bindir = pg_bindir()
        initdb = bindir / "initdb"
        if not initdb.exists():
            raise StartError(
                f"postgres: {initdb} not found; install Debian's postgresql-15 "
                "(make deps does) or set PG_BINDIR"
            )
        user = self._user()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)
        if user is not None:
            # The server user must traverse our (root-owned, 0700) temp parents;
            # directories outside the temp dir are not ours to open up.
            tmp = Path(tempfile.gettempdir()).resolve()
            for parent in self.base_dir.resolve().parents:
                mode = parent.stat().st_mode
                if mode & 0o001:
                    continue
                if tmp not in parent.parents:
                    raise StartError(
                        f"postgres: user {user} cannot traverse {parent} (mode {mode & 0o777:o}); "
                        "put the state directory elsewhere"
                    )
                parent.chmod(mode | 0o011)
        socket_dir = self.base_dir / "socket"
        socket_dir.mkdir(exist_ok=True)
        pwfile = self.base_dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if user is not None:
            ids = pwd.getpwnam(user)
            for path in (self.base_dir, socket_dir, pwfile):
                os.chown(path, ids.pw_uid, ids.pw_gid)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        initdb_log = self.log_dir / "postgres-initdb.log"
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
            ],
            self.log_dir / "postgres.log",
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
        shutil.rmtree(self.data_dir, ignore_errors=True)
