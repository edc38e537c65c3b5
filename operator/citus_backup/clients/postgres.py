"""Read-only PostgreSQL probes from the operator (a ``DatabaseProbe``).

Used by the restore guard "the target database exists and ``replace`` is not
set" (checking before creating the Job gives a clear status without running
anything) and to read a running restore's progress beacon. The password comes
from the Secret and lives only in this call's memory: it is passed to libpq as
a keyword, never put in a DSN string that could be logged, and errors are
reported by class and host only.

psycopg (and libpq) is imported on the first query, not with this module: an
operator without restores never needs it, and it is ~9 MB of the operator's
resident memory (issue #12 measures that memory).
"""

from __future__ import annotations

from collections.abc import Sequence

from citus_backup.api.policy import PostgresConnection
from citus_backup.errors import PermanentError, TransientError

#: Seconds to wait for the server: a guard must not hold a handler for long.
CONNECT_TIMEOUT = 5
#: Database to connect to for catalogue queries (exists on every server).
MAINTENANCE_DB = "postgres"


class PsycopgProbe:
    """Read-only catalogue questions: which databases exist, which sessions advertise."""

    def existing_databases(
        self, connection: PostgresConnection, password: str, names: Sequence[str]
    ) -> set[str]:
        rows = _query(
            connection,
            password,
            "SELECT datname FROM pg_database WHERE datname = ANY(%s)",
            (list(names),),
        )
        return {str(row[0]) for row in rows}

    def application_names(
        self, connection: PostgresConnection, password: str, prefix: str
    ) -> list[str]:
        """``application_name`` of the sessions whose name starts with ``prefix``
        (a restore's progress beacon, :mod:`citus_backup.runner.beacon`)."""
        rows = _query(
            connection,
            password,
            "SELECT application_name FROM pg_stat_activity WHERE starts_with(application_name, %s)",
            (prefix,),
        )
        return [str(row[0]) for row in rows]


def _query(
    connection: PostgresConnection, password: str, query: str, params: tuple[object, ...]
) -> list[tuple[object, ...]]:
    import psycopg  # noqa: PLC0415 - see the module docstring

    where = f"{connection.host}:{connection.port}"
    try:
        with (
            psycopg.connect(
                host=connection.host,
                port=connection.port,
                user=connection.user,
                password=password,
                dbname=MAINTENANCE_DB,
                sslmode=str(connection.ssl_mode),
                connect_timeout=CONNECT_TIMEOUT,
                application_name="citus-backup-operator",
            ) as conn,
            conn.cursor() as cur,
        ):
            cur.execute(query, params)
            return list(cur.fetchall())
    except psycopg.OperationalError as exc:
        text = str(exc)
        if "password authentication failed" in text or "authentication failed" in text:
            raise PermanentError(
                f"PostgreSQL at {where} rejected the credentials of role "
                f"{connection.user} (password authentication failed)",
                reason="AuthenticationFailed",
            ) from None
        raise TransientError(
            f"PostgreSQL at {where} unreachable ({type(exc).__name__})",
            reason="DatabaseUnreachable",
        ) from None
    except psycopg.Error as exc:
        raise TransientError(
            f"PostgreSQL at {where}: query failed ({type(exc).__name__})",
            reason="DatabaseUnreachable",
        ) from None
