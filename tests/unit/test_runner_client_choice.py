"""Which PostgreSQL client the runner uses (pg.choose_client).

The installed clients are FAKES: executables named pg_dump in a temporary
directory laid out like Debian's /usr/lib/postgresql/<major>/bin that print a
version, since this machine has only the 15 client. The real 15 client is
exercised by every integration test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from citus_backup.errors import PermanentError
from citus_backup.runner import pg


def fake_clients(root: Path, *majors: int) -> None:
    for major in majors:
        bindir = root / str(major) / "bin"
        bindir.mkdir(parents=True)
        script = bindir / "pg_dump"
        script.write_text(f"#!/bin/sh\necho 'pg_dump (PostgreSQL) {major}.3 (Debian)'\n")
        script.chmod(0o755)


@pytest.fixture(autouse=True)
def _fresh_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PG_BINDIR", raising=False)
    monkeypatch.setattr(pg, "_chosen_bindir", None)


def test_the_oldest_client_that_is_new_enough_is_used(tmp_path: Path) -> None:
    fake_clients(tmp_path, 15, 17, 18)
    assert pg.installed_clients(str(tmp_path)) == {
        m: str(tmp_path / str(m) / "bin") for m in (15, 17, 18)
    }
    assert pg.choose_client(16, "a backup", str(tmp_path)) == 17
    assert pg.tool("pg_dump") == str(tmp_path / "17" / "bin" / "pg_dump")
    assert pg.choose_client(15, "a backup", str(tmp_path)) == 15


def test_a_too_old_client_is_refused_naming_what_is_needed(tmp_path: Path) -> None:
    fake_clients(tmp_path, 13)
    with pytest.raises(PermanentError) as caught:
        pg.choose_client(99, "a backup of PostgreSQL 99.1", str(tmp_path))
    assert caught.value.reason == "ClientTooOld"
    message = str(caught.value)
    assert (
        "a backup of PostgreSQL 99.1 needs PostgreSQL client tools of major version 99" in message
    )
    assert "postgresql-client-99" in message
    assert "nothing was done" in message


def test_pg_bindir_wins_over_the_installed_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_clients(tmp_path, 15, 17)
    monkeypatch.setenv("PG_BINDIR", str(tmp_path / "17" / "bin"))
    assert pg.choose_client(15, "a backup", str(tmp_path)) == 17


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)", 15),
        ("pg_dump (PostgreSQL) 17.12", 17),
        ("16.4", 16),
        ("garbage", None),
    ],
)
def test_major_of(text: str, major: int | None) -> None:
    assert pg.major_of(text) == major
