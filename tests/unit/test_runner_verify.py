"""Pure parts of verification (citus_backup.runner.verify): names, check files, results."""

from __future__ import annotations

from pathlib import Path

import pytest

from citus_backup.errors import PermanentError
from citus_backup.runner.verify import (
    SCRATCH_PREFIX,
    Check,
    check_databases,
    check_result,
    is_scratch,
    load_checks,
    scratch_name,
)


def test_scratch_names_are_reserved_unique_and_fit() -> None:
    names = {scratch_name(db) for db in ("app1", "app2", "x" * 63, "x" * 62 + "y", "Ä ü")}
    assert len(names) == 5
    for name in names:
        assert is_scratch(name)
        assert len(name.encode()) <= 63
    assert scratch_name("app1") == scratch_name("app1")
    assert scratch_name("app1").endswith("_app1")
    assert not is_scratch("app1")
    assert not is_scratch("citus_backup_tmp_abc")
    assert SCRATCH_PREFIX == "citus_backup_verify_"


def test_checks_are_loaded_from_a_configmap_volume(tmp_path: Path) -> None:
    (tmp_path / "app1.orders.sql").write_text("SELECT true\n")
    (tmp_path / "app2.sum-ok.sql").write_text("SELECT 1 = 1")
    (tmp_path / "..data").mkdir()  # ConfigMap volume internals are skipped
    (tmp_path / "..2026_12_01").mkdir()
    assert load_checks(tmp_path) == [
        Check("app1", "orders", "SELECT true"),
        Check("app2", "sum-ok", "SELECT 1 = 1"),
    ]
    assert load_checks(None) == []


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("orders.sql", "SELECT true", "must be <database>.<check>.sql"),
        ("app1.orders.txt", "SELECT true", "must be <database>.<check>.sql"),
        ("app1.empty.sql", "  \n", "is empty"),
        ("app1.big.sql", "x" * 70000, "larger than"),
    ],
)
def test_bad_check_files_are_refused_naming_the_file(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(PermanentError, match=message) as info:
        load_checks(tmp_path)
    assert info.value.reason == "InvalidCheck"
    assert name in info.value.message


def test_a_missing_checks_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="does not exist"):
        load_checks(tmp_path / "nope")


def test_checks_must_name_databases_of_the_backup() -> None:
    check_databases([Check("app1", "a", "SELECT true")], {"app1", "app2"})
    with pytest.raises(PermanentError, match="not in the backup: app9") as info:
        check_databases([Check("app9", "a", "SELECT true")], {"app1"})
    assert info.value.reason == "InvalidCheck"


@pytest.mark.parametrize(
    ("rows", "failure"),
    [
        ([(True,)], None),
        ([(False,)], "returned False"),
        ([(None,)], "returned None"),
        ([(1,)], "returned 1"),
        ([], "returned 0 rows"),
        ([(True,), (True,)], "returned 2 rows"),
    ],
)
def test_a_check_passes_only_with_one_row_of_true(
    rows: list[tuple[object, ...]], failure: str | None
) -> None:
    result = check_result(Check("app1", "c", "q"), rows)
    if failure is None:
        assert result is None
    else:
        assert result is not None
        assert failure in result
        assert "check app1.c" in result
