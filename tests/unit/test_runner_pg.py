"""Classification of libpq / pg tool errors into one-line project errors."""

from __future__ import annotations

import pytest

from citus_backup.errors import PermanentError, TransientError
from citus_backup.runner.pg import classify, libpq_detail

WRONG_PASSWORD = (
    'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
    'FATAL:  password authentication failed for user "postgres"'
)
REFUSED = (
    'pg_dump: error: connection to server at "127.0.0.1", port 1 failed: Connection refused\n'
    "\tIs the server running on that host and accepting TCP/IP connections?"
)


@pytest.mark.parametrize(
    ("text", "cls", "reason"),
    [
        (WRONG_PASSWORD, PermanentError, "AuthenticationFailed"),
        ("fe_sendauth: no password supplied", PermanentError, "AuthenticationFailed"),
        (REFUSED, TransientError, "DatabaseUnreachable"),
        ("timeout expired", TransientError, "DatabaseUnreachable"),
        ('FATAL:  database "x" does not exist', PermanentError, "DatabaseNotFound"),
        (
            "pg_dump: error: aborting because of server version mismatch",
            PermanentError,
            "VersionMismatch",
        ),
        (
            'pg_restore: error: could not execute query: ERROR:  relation "t" already exists',
            PermanentError,
            "DatabaseError",
        ),
    ],
)
def test_classify(text: str, cls: type, reason: str) -> None:
    error = classify(text, "connect")
    assert isinstance(error, cls)
    assert error.reason == reason
    assert "\n" not in str(error)


def test_detail_is_the_server_message() -> None:
    assert libpq_detail(WRONG_PASSWORD) == 'password authentication failed for user "postgres"'
    assert libpq_detail(REFUSED).endswith("Connection refused")
    assert libpq_detail("") == "unknown error"
