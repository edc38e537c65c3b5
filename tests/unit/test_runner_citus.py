"""The pure side of the Citus restore: the rebuild plan, the comparison with
the manifest, the TOC filter for servers without Citus, the status condition.
(The Citus tier runs the same code against a real cluster.)"""

from __future__ import annotations

from citus_backup.api.common import Reason
from citus_backup.reconcile.restore import citus_condition
from citus_backup.runner import citus
from citus_backup.runner.manifest import CitusMetadata, CitusSchema, CitusTable


def table(
    name: str, kind: str, column: str | None = None, group: int | None = None, shards: int = 4
) -> CitusTable:
    schema, _, rel = name.rpartition(".")
    return CitusTable(
        table_name=name,
        citus_table_type=kind,
        distribution_column=column,
        colocation_id=group,
        shard_count=shards if kind in ("distributed", "schema") else 1,
        schema_name=schema or "public",
        relation_name=rel,
    )


META = CitusMetadata(
    version="13.2-1",
    tables=(
        table("public.orders", "distributed", "customer_id", 2),
        table("public.countries", "reference", None, 1),
        table("public.customers", "distributed", "id", 2),
        table("public.events", "distributed", "id", 3, shards=6),
        table("public.audit", "local", None, 0),
        table("tenant1.items", "schema", None, 4, shards=1),
    ),
    schemas=(CitusSchema(schema_name="tenant1", colocation_id=4),),
)


def sql_of(steps: list[citus.Step]) -> list[str]:
    return [s.statement.as_string(None) for s in steps]


def test_the_rebuild_order_reference_groups_schemas_local() -> None:
    assert sql_of(citus.distribution_statements(META)) == [
        'SELECT create_reference_table(\'"public"."countries"\'::regclass)',
        "SELECT create_distributed_table('\"public\".\"customers\"'::regclass, 'id',"
        " shard_count => 4, colocate_with => 'none')",
        "SELECT create_distributed_table('\"public\".\"orders\"'::regclass, 'customer_id',"
        ' colocate_with => \'"public"."customers"\')',
        "SELECT create_distributed_table('\"public\".\"events\"'::regclass, 'id',"
        " shard_count => 6, colocate_with => 'none')",
        "SELECT citus_schema_distribute('\"tenant1\"')",
        'SELECT citus_add_local_table_to_metadata(\'"public"."audit"\'::regclass)',
    ]


def test_one_table_joins_the_group_it_was_in() -> None:
    steps = citus.distribution_statements(
        META, only={("public", "orders")}, colocate_with={2: '"public"."customers"'}
    )
    assert sql_of(steps) == [
        "SELECT create_distributed_table('\"public\".\"orders\"'::regclass, 'customer_id',"
        ' colocate_with => \'"public"."customers"\')'
    ]


def test_odd_names_are_quoted_exactly() -> None:
    odd = CitusMetadata(version="13", tables=(table('we"ird.My Table', "reference"),))
    assert sql_of(citus.distribution_statements(odd)) == [
        'SELECT create_reference_table(\'"we""ird"."My Table"\'::regclass)'
    ]


def test_compare_names_the_table_and_what_differs() -> None:
    rebuilt = [
        table("public.orders", "distributed", "customer_id", 7),  # lost its group
        table("public.countries", "reference", None, 1),
        table("public.customers", "distributed", "id", 2, shards=8),
        table("public.events", "distributed", "id", 3, shards=6),
        table("tenant1.items", "schema", None, 4, shards=1),
    ]
    problems = citus.compare(META, rebuilt, [])
    assert problems == [
        'table "public"."audit" is not a Citus table (local expected)',
        'table "public"."customers" has 8 shards, 4 expected',
        "schema 'tenant1' is not distributed",
        'tables "public"."customers" and "public"."orders" are not colocated '
        "(colocated at backup time)",
    ]
    assert citus.compare(META, list(META.tables), list(META.schemas)) == []


def test_compare_ignores_colocation_ids_only_groups_count() -> None:
    renumbered = [
        t.model_copy(update={"colocation_id": (t.colocation_id or 0) + 10}) for t in META.tables
    ]
    assert citus.compare(META, renumbered, list(META.schemas)) == []


def test_the_toc_filter_drops_only_the_citus_extensions() -> None:
    lines = [
        "2; 3079 16385 EXTENSION - citus \n",
        "3601; 0 0 COMMENT - EXTENSION citus \n",
        "3; 3079 16386 EXTENSION - citus_columnar \n",
        "4; 3079 16387 EXTENSION - pgcrypto \n",
        "267; 1259 17313 TABLE public citus postgres\n",
        "; Archive created at 2026-12-03\n",
    ]
    assert [line for line in lines if not citus.is_citus_toc_line(line)] == lines[3:]


def test_the_citus_distributed_condition() -> None:
    assert citus_condition({}) is None
    ok = citus_condition({"app1": {"mode": "distributed"}})
    assert ok == (
        True,
        Reason.DISTRIBUTION_RESTORED,
        "Citus distribution rebuilt and checked: app1",
    )
    local = citus_condition(
        {"app1": {"mode": "distributed"}, "x": {"mode": "local", "message": "no Citus here"}}
    )
    assert local == (False, Reason.CITUS_UNAVAILABLE, "no Citus here")
