"""Helpers shared by the runner's integration tests (this module has no tests).

* :class:`Runner` runs ``citus-backup`` in-process (cheap on a 2-core machine)
  or as a real subprocess (exit codes, signals), with the libpq and S3
  settings in the environment only, the way a Job pod gets them.
* :func:`checksums` fingerprints every table of a database (plus the
  database's OID), to prove that databases not being restored are untouched.
* :class:`CuttingProxy` is a TCP proxy in front of MinIO that can cut large
  transfers mid-stream, throttle them, or vanish, to test S3 failures.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from minio import Minio as S3Client
from psycopg import sql

from citus_backup import cli
from citus_backup.runner import layout
from localenv.minio import MinioInfo
from localenv.postgres import PostgresInfo

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict[str, Any]:
        lines = [line for line in self.stdout.splitlines() if line.startswith("{")]
        assert lines, f"no summary line on stdout: {self.stdout!r} / {self.stderr[-2000:]}"
        data: dict[str, Any] = json.loads(lines[-1])
        return data


@dataclass
class Runner:
    """``citus-backup`` against one PostgreSQL and one bucket/prefix."""

    postgres: PostgresInfo
    minio: MinioInfo
    bucket: str
    prefix: str
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            **self.postgres.env(),
            "S3_ENDPOINT": f"http://{self.minio.endpoint}",
            "S3_BUCKET": self.bucket,
            "S3_PREFIX": self.prefix,
            "S3_ACCESS_KEY_ID": self.minio.access_key,
            "S3_SECRET_ACCESS_KEY": self.minio.secret_key,
            **self.extra_env,
        }
        env.pop("PGDATABASE", None)
        env.update(overrides)
        return env

    def run(self, *argv: str, **env: str) -> Result:
        """In-process: ``citus_backup.cli.main(argv)`` with this environment."""
        out, err = io.StringIO(), io.StringIO()
        saved = dict(os.environ)
        try:
            for name in [n for n in os.environ if n.startswith(("PG", "S3_", "AWS_"))]:
                del os.environ[name]
            os.environ.update(self.env(**env))
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main(list(argv))
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return Result(code, out.getvalue(), err.getvalue())

    def popen(self, *argv: str, **env: str) -> subprocess.Popen[str]:
        """A real ``python -m citus_backup.cli`` process."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "S3_", "AWS_"))}
        base["PYTHONPATH"] = str(REPO / "operator")
        return subprocess.Popen(
            [sys.executable, "-m", "citus_backup.cli", *argv],
            env={**base, **self.env(**env)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run_process(self, *argv: str, timeout: float = 120, **env: str) -> Result:
        proc = self.popen(*argv, **env)
        out, err = proc.communicate(timeout=timeout)
        return Result(proc.returncode, out, err)

    def s3(self, endpoint: str | None = None) -> S3Client:
        return S3Client(
            endpoint or self.minio.endpoint,
            self.minio.access_key,
            self.minio.secret_key,
            secure=False,
        )

    def keys(self, under: str = "") -> dict[str, int]:
        prefix = f"{self.prefix}/{under}" if under else f"{self.prefix}/"
        return {
            str(o.object_name): int(o.size or 0)
            for o in self.s3().list_objects(self.bucket, prefix=prefix, recursive=True)
        }

    def read(self, key: str) -> bytes:
        response = self.s3().get_object(self.bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def manifest(self, backup_id: str, tier: str = "daily") -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            self.read(f"{self.prefix}/{tier}/{backup_id}/manifest.json")
        )
        return data

    def incomplete_uploads(self, under: str, database: str) -> list[str]:
        """Multipart uploads in progress of one database's dump in ``under``.

        MinIO lists the uploads of one exact key only (a shorter prefix finds
        none), so the test names the key it expects to be clean.
        """
        key = f"{self.prefix}/{under}{layout.dump_object_name(database)}"
        result = self.s3()._list_multipart_uploads(self.bucket, prefix=key)
        return [str(u.object_name) for u in result.uploads]


def new_bucket(minio: MinioInfo, stem: str) -> str:
    name = f"{stem}-{uuid.uuid4().hex[:8]}"
    S3Client(minio.endpoint, minio.access_key, minio.secret_key, secure=False).make_bucket(name)
    return name


# ------------------------------------------------------------- PostgreSQL


def admin(postgres: PostgresInfo, database: str = "postgres") -> psycopg.Connection[Any]:
    """A superuser connection; the name is passed as a parameter (any name works)."""
    return psycopg.connect(
        host=postgres.host,
        port=postgres.port,
        user=postgres.user,
        password=postgres.password,
        dbname=database,
        sslmode="disable",
        autocommit=True,
    )


def drop_databases(postgres: PostgresInfo, *names: str) -> None:
    with admin(postgres) as conn:
        for name in names:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def create_database(postgres: PostgresInfo, name: str, *statements: str) -> None:
    drop_databases(postgres, name)
    with admin(postgres) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with admin(postgres, name) as conn:
        for statement in statements:
            conn.execute(statement.encode())


def database_names(postgres: PostgresInfo) -> set[str]:
    with admin(postgres) as conn:
        return {str(r[0]) for r in conn.execute("SELECT datname FROM pg_database")}


def checksums(postgres: PostgresInfo, database: str) -> dict[str, str]:
    """md5 of every user table's rows (ordered), plus the database OID."""
    with admin(postgres) as conn:
        row = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (database,)).fetchone()
    assert row is not None, f"database {database!r} does not exist"
    result = {"<oid>": str(row[0])}
    with admin(postgres, database) as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p')"
            " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        for schema, table in tables:
            digest = conn.execute(
                sql.SQL(
                    "SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), ''))"
                    " FROM {}.{} t"
                ).format(sql.Identifier(schema), sql.Identifier(table))
            ).fetchone()
            assert digest is not None
            result[f"{schema}.{table}"] = str(digest[0])
    return result


def scalar(postgres: PostgresInfo, database: str, query: str, *params: object) -> Any:
    with admin(postgres, database) as conn:
        row = conn.execute(query.encode(), params or None).fetchone()
    return None if row is None else row[0]


# ------------------------------------------------------------------ proxy


class CuttingProxy:
    """TCP proxy to MinIO that misbehaves on request.

    * ``cut_after``: a connection that sends more than this many bytes
      upstream is reset (a part upload dies mid-stream; small requests such
      as AbortMultipartUpload still pass).
    * ``vanish_after``: once this many bytes went upstream in total, the proxy
      closes every connection and its listener (S3 is gone).
    * ``rate``: upstream bytes per second (slows uploads down).
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.cut_after: int | None = None
        self.vanish_after: int | None = None
        self.rate: float | None = None
        self.upstream_total = 0
        self.downstream_total = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._stopped:  # accepted while stop() ran: S3 is gone for it too
                    self._reset(client, upstream)
                    return
                self._sockets |= {client, upstream}
            state = {"sent": 0}
            threading.Thread(
                target=self._pump, args=(client, upstream, state, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, state, False), daemon=True
            ).start()

    def _reset(self, *socks: socket.socket) -> None:
        """Reset ``socks`` (RST, not FIN), waking any pump blocked on them.

        ``close()`` alone frees nothing while another thread is blocked in
        ``recv()`` on the socket (that call holds the kernel socket): the peer
        then saw neither FIN nor RST and waited out its read timeout. With
        SO_LINGER 0, ``shutdown`` wakes those calls, and the last close sends RST.
        """
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _pump(
        self, src: socket.socket, dst: socket.socket, state: dict[str, int], upstream: bool
    ) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upstream:
                    state["sent"] += len(data)
                    with self._lock:
                        self.upstream_total += len(data)
                        total = self.upstream_total
                    if self.cut_after is not None and state["sent"] > self.cut_after:
                        self.cuts += 1
                        self._reset(src, dst)
                        return
                    if self.vanish_after is not None and total > self.vanish_after:
                        self.stop()
                        return
                    if self.rate:
                        time.sleep(len(data) / self.rate)
                else:
                    with self._lock:
                        self.downstream_total += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        # shutdown wakes the thread blocked in accept() (close alone would not,
        # and the listener would go on accepting until that accept() returned).
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        self._reset(*sockets)


@contextlib.contextmanager
def proxy_to(minio: MinioInfo) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy((minio.host, minio.port))
    try:
        yield proxy
    finally:
        proxy.stop()


def only(mapping: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {key: mapping[key] for key in keys}
