"""The PostgreSQL of the local environment is real: password auth, pg_dump/pg_restore."""

from __future__ import annotations

import os
import subprocess

import psycopg
import pytest

from localenv.postgres import PostgresInfo


def test_wrong_password_is_rejected(postgres: PostgresInfo) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres.dsn().replace(postgres.password, "wrong"), connect_timeout=5)


def test_pg_dump_and_pg_restore_round_trip(postgres: PostgresInfo) -> None:
    env = {**os.environ, **postgres.env()}
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS envcheck")
        conn.execute("DROP DATABASE IF EXISTS envcheck_copy")
        conn.execute("CREATE DATABASE envcheck")
        conn.execute("CREATE DATABASE envcheck_copy")
    with psycopg.connect(postgres.dsn("envcheck"), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 100) g")
    dump = subprocess.run(
        ["pg_dump", "-Fc", "-d", "envcheck"], env=env, capture_output=True, check=True
    ).stdout
    subprocess.run(
        ["pg_restore", "-d", "envcheck_copy"], input=dump, env=env, capture_output=True, check=True
    )
    with psycopg.connect(postgres.dsn("envcheck_copy")) as conn:
        row = conn.execute("SELECT count(*), sum(id) FROM t").fetchone()
    assert row == (100, 5050)
