"""Database selection, parallelism and --table parsing."""

from __future__ import annotations

import pytest

from citus_backup.errors import PermanentError
from citus_backup.runner.restore import exact_pattern, parse_table
from citus_backup.runner.selection import (
    JOBS_CAP,
    default_jobs,
    effective_cpus,
    quote_name,
    select_databases,
)

AVAILABLE = ["app1", "app2", "App 3", "postgres"]


def test_all_databases_by_default() -> None:
    assert select_databases(AVAILABLE) == AVAILABLE


def test_include_and_exclude_are_exact() -> None:
    assert select_databases(AVAILABLE, include=["app2", "app1"]) == ["app1", "app2"]
    assert select_databases(AVAILABLE, exclude=["postgres", "nope"]) == ["app1", "app2", "App 3"]
    assert select_databases(AVAILABLE, include=["App 3"], exclude=[]) == ["App 3"]
    assert select_databases(["a*", "ab"], include=["a*"]) == ["a*"]


def test_unknown_included_database_is_an_error() -> None:
    with pytest.raises(PermanentError) as err:
        select_databases(AVAILABLE, include=["app1", "app 3"])
    assert err.value.reason == "DatabaseNotFound"
    assert '"app 3"' in str(err.value)


def test_nothing_left_is_an_error() -> None:
    with pytest.raises(PermanentError) as err:
        select_databases(AVAILABLE, include=["app1"], exclude=["app1"])
    assert err.value.reason == "NothingToBackUp"


def test_effective_cpus_honours_the_cgroup_quota() -> None:
    assert effective_cpus(16, None) == 16
    assert effective_cpus(16, "max 100000\n") == 16
    assert effective_cpus(16, "200000 100000\n") == 2
    assert effective_cpus(16, "150000 100000") == 2
    assert effective_cpus(16, "50000 100000") == 1
    assert effective_cpus(2, "800000 100000") == 2
    assert effective_cpus(4, "garbage") == 4
    assert effective_cpus(0, None) == 1


def test_default_jobs() -> None:
    assert default_jobs(2, 10) == 2
    assert default_jobs(64, 100) == JOBS_CAP
    assert default_jobs(8, 3) == 3
    assert default_jobs(8, 0) == 1


def test_quote_name_escapes_quotes() -> None:
    assert quote_name('we"ird') == '"we\\"ird"'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("public.orders", ("public", "orders")),
        ("orders", ("public", "orders")),
        ("S2.Items", ("S2", "Items")),
        ('"my.schema"."my.table"', ("my.schema", "my.table")),
        ('"we""ird".t', ('we"ird', "t")),
        ('s."t x"', ("s", "t x")),
        ("Ünï.tëst", ("Ünï", "tëst")),
    ],
)
def test_parse_table(text: str, expected: tuple[str, str]) -> None:
    assert parse_table(text) == expected


@pytest.mark.parametrize("text", ["a.b.c", ".t", "s.", '"open', '"a"x.t'])
def test_parse_table_rejects_ambiguous_input(text: str) -> None:
    with pytest.raises(PermanentError):
        parse_table(text)


def test_exact_pattern_quotes_everything() -> None:
    assert exact_pattern("public", "orders") == '"public"."orders"'
    assert exact_pattern('we"ird', "a*b?.c") == '"we""ird"."a*b?.c"'
