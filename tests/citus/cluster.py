"""A real Citus cluster on loopback for the Citus tier: one coordinator and two
workers, three PostgreSQL servers from ``$CITUS_PG_BINDIR`` (a PostgreSQL
installation whose ``lib`` has ``citus.so``), each with
``shared_preload_libraries=citus``.

Authentication is SCRAM on every node, as in production; the coordinator
reaches its workers with a passfile in its server environment (Citus opens
those connections from the server process, whose libpq reads PGPASSFILE).
The runner reaches workers with the same credentials as the coordinator,
which is what it documents as a requirement.

This module builds nothing: where the variable is unset, the tier is skipped
(see ``conftest.py``).
"""

from __future__ import annotations

import os
import pwd
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from localenv.postgres import Postgres, PostgresInfo

#: The environment variable naming the Citus-enabled PostgreSQL's bin directory.
CITUS_ENV = "CITUS_PG_BINDIR"
# Two-phase commit is how Citus commits multi-node writes, and how the runner
# swaps databases on the workers; Citus' docs ask for it on every node.
MAX_PREPARED = "100"


def citus_bindir() -> Path | None:
    value = os.environ.get(CITUS_ENV)
    return Path(value) if value else None


@dataclass
class CitusCluster:
    """Coordinator + workers; ``start()`` returns self, ``stop()`` removes the data."""

    base_dir: Path
    log_dir: Path
    bindir: Path
    workers: int = 2
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    servers: list[Postgres] = field(default_factory=list, init=False)

    def start(self) -> CitusCluster:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        passfile = self.base_dir / "server.pgpass"
        names = ["coordinator", *(f"worker{i + 1}" for i in range(self.workers))]
        self.servers = [
            Postgres(
                self.base_dir / name,
                self.log_dir,
                password=self.password,
                bindir=self.bindir,
                settings=(
                    ("shared_preload_libraries", "citus"),
                    ("max_prepared_transactions", MAX_PREPARED),
                    # The maintenance daemon recovers 2PC transactions every
                    # few seconds by default; keep its default (it is what makes
                    # the daemon connect to every Citus database).
                ),
                # HOME: libpq in the server would look for client certificates
                # under root's home, which the server user cannot read.
                server_env=(("PGPASSFILE", str(passfile)), ("HOME", str(self.base_dir))),
            )
            for name in names
        ]
        # The passfile names every node's port: write it before any starts.
        passfile.write_text(
            "".join(f"127.0.0.1:{s.port}:*:postgres:{self.password}\n" for s in self.servers)
        )
        passfile.chmod(0o600)
        if os.geteuid() == 0:
            ids = pwd.getpwnam("postgres")
            os.chown(passfile, ids.pw_uid, ids.pw_gid)
            self.base_dir.chmod(0o755)
        try:
            for server in self.servers:
                server.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()

    @property
    def coordinator(self) -> PostgresInfo:
        return self.servers[0].info

    @property
    def worker_infos(self) -> list[PostgresInfo]:
        return [s.info for s in self.servers[1:]]

    @property
    def nodes(self) -> list[PostgresInfo]:
        return [s.info for s in self.servers]

    # ------------------------------------------------------------ helpers
    def create_database(self, name: str, *, add_coordinator: bool = True) -> None:
        """A Citus database as an admin makes one: on every node, the extension
        everywhere, the coordinator and the workers registered."""
        for node in self.nodes:
            with psycopg.connect(node.dsn(), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            with psycopg.connect(node.dsn(name), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION citus")
        with psycopg.connect(self.coordinator.dsn(name), autocommit=True) as conn:
            if add_coordinator:
                conn.execute(
                    "SELECT citus_set_coordinator_host('127.0.0.1', %s)", (self.coordinator.port,)
                )
            for worker in self.worker_infos:
                conn.execute("SELECT citus_add_node('127.0.0.1', %s)", (worker.port,))

    def drop_database(self, *names: str) -> None:
        for node in self.nodes:
            with psycopg.connect(node.dsn(), autocommit=True) as conn:
                for name in names:
                    conn.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                            sql.Identifier(name)
                        )
                    )

    def databases(self, node: PostgresInfo) -> dict[str, bool]:
        """Every non-template database of ``node`` -> whether it accepts connections."""
        with psycopg.connect(node.dsn(), autocommit=True) as conn:
            return {
                str(r[0]): bool(r[1])
                for r in conn.execute(
                    "SELECT datname, datallowconn FROM pg_database WHERE NOT datistemplate"
                )
            }

    def run(self, database: str, statements: Iterable[str]) -> None:
        with psycopg.connect(self.coordinator.dsn(database), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement.encode())
