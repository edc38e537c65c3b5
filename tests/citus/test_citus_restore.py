"""Backup and restore on a real Citus cluster: a restored database is a working
Citus database again, tables distributed as they were, on every node.

Each test builds app1/app2/app3 the way the seed's team would on Citus:
app1 has a distributed table and a colocated one with a foreign key between
them, a reference table, a Citus-local table, a plain local table, a
sequence, a view and a distributed schema; app2 and app3 a distributed table
each. The cluster's maintenance daemons run on every database throughout
(the reason a naive rename fails), and nothing here works around them.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from cluster import CitusCluster
from psycopg import sql
from test_runner_support import Runner

from citus_backup.runner import faults
from localenv.postgres import PostgresInfo

APPS = ("app1", "app2", "app3")
USER_SCHEMAS = ("public", "tenant1")
APP1 = [
    "CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL)",
    "CREATE TABLE orders (id bigserial, customer_id bigint NOT NULL, total numeric(10,2),"
    " PRIMARY KEY (customer_id, id))",
    "CREATE TABLE countries (code text PRIMARY KEY, name text)",
    "CREATE TABLE audit (id int PRIMARY KEY, country text REFERENCES countries)",
    "CREATE TABLE notes (id int PRIMARY KEY, body text)",
    "CREATE TABLE events (id bigint, kind text)",
    "SELECT create_reference_table('countries')",
    "SELECT create_distributed_table('customers', 'id', shard_count => 4)",
    "SELECT create_distributed_table('orders', 'customer_id', colocate_with => 'customers')",
    "SELECT create_distributed_table('events', 'id', shard_count => 6, colocate_with => 'none')",
    "SELECT citus_add_local_table_to_metadata('audit')",
    "ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id)"
    " REFERENCES customers (id)",
    "INSERT INTO countries VALUES ('es', 'Spain'), ('fr', 'France'), ('pt', 'Portugal')",
    "INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 300) g",
    "INSERT INTO orders (customer_id, total) SELECT 1 + g % 300, g * 0.5"
    " FROM generate_series(1, 3000) g",
    "INSERT INTO events SELECT g, 'k' || (g % 7) FROM generate_series(1, 500) g",
    "INSERT INTO audit SELECT g, 'es' FROM generate_series(1, 20) g",
    "INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 50) g",
    "CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 1000",
    "SET citus.enable_schema_based_sharding TO on",
    "CREATE SCHEMA tenant1",
    "CREATE TABLE tenant1.items (id int PRIMARY KEY, v text)",
    "INSERT INTO tenant1.items SELECT g, 'item ' || g FROM generate_series(1, 40) g",
]
OTHER_APP = [
    "CREATE TABLE products (sku text PRIMARY KEY, price numeric(10,2))",
    "SELECT create_distributed_table('products', 'sku', shard_count => 4)",
    "INSERT INTO products SELECT 'sku-' || g, g FROM generate_series(1, 400) g",
]


@pytest.fixture
def apps(citus_cluster: CitusCluster) -> Iterator[CitusCluster]:
    for name in APPS:
        citus_cluster.create_database(name)
        citus_cluster.run(name, APP1 if name == "app1" else OTHER_APP)
    yield citus_cluster
    leftovers = {
        db
        for node in citus_cluster.nodes
        for db in citus_cluster.databases(node)
        if db != "postgres"
    }
    citus_cluster.drop_database(*leftovers)


# ----------------------------------------------------------------- helpers


def distribution(cluster: CitusCluster, db: str) -> dict[str, tuple[Any, ...]]:
    """table -> (type, distribution column, shard count, colocation group members)."""
    with psycopg.connect(cluster.coordinator.dsn(db)) as conn:
        rows = conn.execute(
            "SELECT table_name::text, citus_table_type, distribution_column, shard_count,"
            " colocation_id FROM citus_tables"
        ).fetchall()
    groups: dict[int, list[str]] = {}
    for row in rows:
        groups.setdefault(row[4], []).append(row[0])
    return {r[0]: (r[1], r[2], r[3], tuple(sorted(groups[r[4]]))) for r in rows}


def fingerprint(cluster: CitusCluster, db: str) -> dict[str, str]:
    """Row digests of the user tables (read through the coordinator) and the OID."""
    with psycopg.connect(cluster.coordinator.dsn()) as conn:
        oid = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (db,)).fetchone()
    assert oid is not None, f"{db} missing on the coordinator"
    result = {"<oid>": str(oid[0])}
    with psycopg.connect(cluster.coordinator.dsn(db)) as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%s)"
            " AND NOT c.relispartition",
            (list(USER_SCHEMAS),),
        ).fetchall()
        for schema, table in tables:
            row = conn.execute(
                sql.SQL(
                    "SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, ','"
                    " ORDER BY t::text), '')) FROM {} t"
                ).format(sql.Identifier(schema, table))
            ).fetchone()
            assert row is not None
            result[f"{schema}.{table}"] = str(row[0])
    return result


def without_oid(print_: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in print_.items() if k != "<oid>"}


def worker_state(cluster: CitusCluster) -> list[dict[str, bool]]:
    return [cluster.databases(w) for w in cluster.worker_infos]


def shard_tables(cluster: CitusCluster, db: str) -> list[set[str]]:
    """Per worker, the shard relations (name_<shardid>) in database ``db``."""
    found = []
    for worker in cluster.worker_infos:
        with psycopg.connect(worker.dsn(db)) as conn:
            conn.execute("SET citus.override_table_visibility TO off")  # shards are hidden
            rows = conn.execute(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n"
                " ON n.oid = c.relnamespace WHERE c.relkind = 'r'"
                " AND c.relname ~ '_[0-9]+$' AND n.nspname = ANY(%s)",
                (list(USER_SCHEMAS),),
            ).fetchall()
        found.append({str(r[0]) for r in rows})
    return found


def backup(runner: Runner, *extra: str) -> str:
    backup_id = f"20261203T{int(time.time() * 1000) % 1000000:06d}Z"
    result = runner.run("backup", "--backup-id", backup_id, *extra)
    assert result.code == 0, result.stderr[-3000:]
    return backup_id


def restore(runner: Runner, backup_id: str, *extra: str, **env: str) -> Any:
    return runner.run("restore", "--backup-id", backup_id, *extra, **env)


def assert_working(cluster: CitusCluster, db: str) -> None:
    """Distributed reads and writes work through the coordinator."""
    with psycopg.connect(cluster.coordinator.dsn(db), autocommit=True) as conn:
        conn.execute("INSERT INTO customers VALUES (100000, 'new')")
        conn.execute("INSERT INTO orders (customer_id, total) VALUES (100000, 1)")
        joined = conn.execute(
            "SELECT count(*) FROM orders o JOIN customers c ON c.id = o.customer_id"
            " WHERE c.id = 100000"
        ).fetchone()
        assert joined == (1,)
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO orders (customer_id, total) VALUES (999999, 1)")
        conn.execute("DELETE FROM orders WHERE customer_id = 100000")
        conn.execute("DELETE FROM customers WHERE id = 100000")


# ------------------------------------------------------------------- tests


def test_backup_records_the_distribution_and_row_counts(
    apps: CitusCluster, citus_runner: Runner
) -> None:
    backup_id = backup(citus_runner)
    entry = next(d for d in citus_runner.manifest(backup_id)["databases"] if d["name"] == "app1")
    citus = entry["citus"]
    tables = {(t["schemaName"], t["relationName"]): t for t in citus["tables"]}
    assert tables[("public", "customers")]["citusTableType"] == "distributed"
    assert tables[("public", "customers")]["distributionColumn"] == "id"
    assert tables[("public", "customers")]["shardCount"] == 4
    assert (
        tables[("public", "orders")]["colocationId"]
        == tables[("public", "customers")]["colocationId"]
        != tables[("public", "events")]["colocationId"]
    )
    assert tables[("public", "countries")]["citusTableType"] == "reference"
    assert tables[("public", "audit")]["citusTableType"] == "local"
    assert tables[("tenant1", "items")]["citusTableType"] == "schema"
    assert ("public", "notes") not in tables
    assert [s["schemaName"] for s in citus["schemas"]] == ["tenant1"]
    assert len([n for n in citus["nodes"] if n["groupId"] != 0]) == 2
    assert citus["settings"]["citus.enable_create_database_propagation"] == "off"
    assert citus["build"].startswith("Citus ")
    counts = {(c["schema"], c["name"]): c for c in entry["rowCounts"]}
    assert counts[("public", "orders")]["rows"] == 3000
    assert counts[("public", "notes")] == {
        "schema": "public",
        "name": "notes",
        "rows": 50,
        "exact": True,
    }
    # Distributed tables are read from the shards outside the snapshot.
    assert counts[("public", "orders")]["exact"] is False
    assert citus_runner.manifest(backup_id)["consistency"] == "snapshot"


def test_in_place_replace_rebuilds_the_distribution_on_every_node(
    apps: CitusCluster, citus_runner: Runner
) -> None:
    before = distribution(apps, "app1")
    data_before = fingerprint(apps, "app1")
    others = {db: fingerprint(apps, db) for db in ("app2", "app3")}
    backup_id = backup(citus_runner)
    apps.run("app1", ["DROP TABLE orders CASCADE", "DELETE FROM customers WHERE id > 10"])
    old_shards = shard_tables(apps, "app1")

    result = restore(citus_runner, backup_id, "--database", "app1", "--replace")

    assert result.code == 0, result.stderr[-3000:]
    assert distribution(apps, "app1") == before
    after = fingerprint(apps, "app1")
    assert without_oid(after) == without_oid(data_before)
    assert after["<oid>"] != data_before["<oid>"]  # a new database took the name
    assert {db: fingerprint(apps, db) for db in ("app2", "app3")} == others
    assert_working(apps, "app1")
    # Every node has exactly app1..app3 (no temporary or old database), open.
    for state in [apps.databases(apps.coordinator), *worker_state(apps)]:
        assert state == {"postgres": True, "app1": True, "app2": True, "app3": True}
    # The workers hold the new database's shards (the old database, and so its
    # shards, is gone from every node: see above). Shard ids restart in a new
    # database, so the names may repeat; the count is that of the backup.
    new_shards = shard_tables(apps, "app1")
    assert sum(map(len, new_shards)) == sum(map(len, old_shards)) + 4  # orders' 4 were dropped
    summary = result.summary
    assert summary["citus"]["app1"]["mode"] == "distributed"
    assert summary["citus"]["app1"]["nodesFrom"] == "database app1"
    assert (
        "distribution of 6 Citus table(s) and 1 distributed schema(s)"
        in summary["verified"]["app1"]
    )


def test_side_by_side_is_a_working_citus_database(apps: CitusCluster, citus_runner: Runner) -> None:
    before = fingerprint(apps, "app1")
    backup_id = backup(citus_runner)

    result = restore(
        citus_runner, backup_id, "--database", "app1", "--target-database", "app1_restored"
    )

    assert result.code == 0, result.stderr[-3000:]
    assert fingerprint(apps, "app1") == before
    assert distribution(apps, "app1_restored") == distribution(apps, "app1")
    assert without_oid(fingerprint(apps, "app1_restored")) == without_oid(before)
    assert all("app1_restored" in state for state in worker_state(apps))
    assert_working(apps, "app1_restored")
    # No Citus in the maintenance database here: the nodes came from the backup.
    assert result.summary["citus"]["app1_restored"]["nodesFrom"] == "the backup"


def test_citus_worker_names_the_nodes_to_restore_onto(
    apps: CitusCluster, citus_runner: Runner
) -> None:
    backup_id = backup(citus_runner)
    only = apps.worker_infos[0]

    result = restore(
        citus_runner,
        backup_id,
        "--database",
        "app1",
        "--target-database",
        "app1_one_worker",
        "--citus-worker",
        f"127.0.0.1:{only.port}",
    )

    assert result.code == 0, result.stderr[-3000:]
    assert result.summary["citus"]["app1_one_worker"]["nodesFrom"] == "--citus-worker"
    assert [("app1_one_worker" in state) for state in worker_state(apps)] == [True, False]
    assert distribution(apps, "app1_one_worker") == distribution(apps, "app1")
    with psycopg.connect(apps.coordinator.dsn("app1_one_worker")) as conn:
        ports = {r[0] for r in conn.execute("SELECT DISTINCT nodeport FROM citus_shards")}
    assert only.port in ports
    assert apps.worker_infos[1].port not in ports
    assert_working(apps, "app1_one_worker")


def test_one_distributed_table_comes_back_colocated(
    apps: CitusCluster, citus_runner: Runner
) -> None:
    before = distribution(apps, "app1")
    data_before = fingerprint(apps, "app1")
    backup_id = backup(citus_runner)
    apps.run("app1", ["DROP TABLE orders CASCADE"])

    result = restore(citus_runner, backup_id, "--database", "app1", "--table", "public.orders")

    assert result.code == 0, result.stderr[-3000:]
    assert distribution(apps, "app1") == before  # orders colocated with customers again
    assert fingerprint(apps, "app1") == data_before  # same database (OID), same rows
    assert_working(apps, "app1")  # the foreign key to customers is back
    assert result.summary["citus"]["app1"]["tables"] == ['"public"."orders"']


def test_a_distributed_schema_comes_back_distributed(
    apps: CitusCluster, citus_runner: Runner
) -> None:
    before = distribution(apps, "app1")
    backup_id = backup(citus_runner)
    apps.run("app1", ["DROP SCHEMA tenant1 CASCADE"])

    result = restore(citus_runner, backup_id, "--database", "app1", "--schema", "tenant1")

    assert result.code == 0, result.stderr[-3000:]
    assert distribution(apps, "app1") == before


def test_everything_restores_every_database(apps: CitusCluster, citus_runner: Runner) -> None:
    before = {db: (distribution(apps, db), without_oid(fingerprint(apps, db))) for db in APPS}
    backup_id = backup(citus_runner)
    apps.run("app2", ["DELETE FROM products"])

    result = restore(citus_runner, backup_id, "--replace")

    assert result.code == 0, result.stderr[-3000:]
    assert {db: (distribution(apps, db), without_oid(fingerprint(apps, db))) for db in APPS} == (
        before
    )


@pytest.mark.parametrize("step", faults.STEPS)
def test_a_failure_at_any_step_leaves_the_old_database_serving(
    apps: CitusCluster, citus_runner: Runner, step: str
) -> None:
    backup_id = backup(citus_runner)
    apps.run("app1", ["INSERT INTO notes VALUES (9999, 'written after the backup')"])
    before = fingerprint(apps, "app1")
    nodes_before = [apps.databases(apps.coordinator), *worker_state(apps)]

    result = restore(
        citus_runner, backup_id, "--database", "app1", "--replace", CITUS_BACKUP_FAIL_AT=step
    )

    assert result.code != 0
    assert result.summary["reason"] == "InjectedFailure"
    assert fingerprint(apps, "app1") == before  # same OID, same rows
    assert [apps.databases(apps.coordinator), *worker_state(apps)] == nodes_before
    assert_working(apps, "app1")


def test_keep_old_keeps_it_on_every_node(apps: CitusCluster, citus_runner: Runner) -> None:
    before = fingerprint(apps, "app1")
    backup_id = backup(citus_runner)

    result = restore(citus_runner, backup_id, "--database", "app1", "--replace", "--keep-old")

    assert result.code == 0, result.stderr[-3000:]
    kept = f"app1_old_{backup_id}"
    assert result.summary["keptDatabases"] == [kept]
    for state in [apps.databases(apps.coordinator), *worker_state(apps)]:
        assert state[kept] is True
    assert fingerprint(apps, kept)["<oid>"] == before["<oid>"]
    assert_working(apps, kept)  # still a working Citus database, shards and all


def test_restore_into_postgres_without_citus_says_so(
    apps: CitusCluster, citus_runner: Runner, postgres: PostgresInfo
) -> None:
    backup_id = backup(citus_runner)
    target = "citus_app1_local"
    plain = Runner(postgres, citus_runner.minio, citus_runner.bucket, citus_runner.prefix)

    result = restore(plain, backup_id, "--database", "app1", "--target-database", target)

    try:
        assert result.code == 0, result.stderr[-3000:]
        assert result.summary["citusUnavailable"] == [target]
        assert "every table local" in result.summary["citus"][target]["message"]
        with psycopg.connect(postgres.dsn(target)) as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3000,)
            assert conn.execute("SELECT count(*) FROM tenant1.items").fetchone() == (40,)
            assert conn.execute(
                "SELECT count(*) FROM pg_extension WHERE extname = 'citus'"
            ).fetchone() == (0,)
    finally:
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target))
            )


def test_block_writes_makes_counts_exact_and_writers_wait(
    apps: CitusCluster, citus_runner: Runner
) -> None:
    written: list[float] = []

    def writer() -> None:
        with psycopg.connect(apps.coordinator.dsn("app1"), autocommit=True) as conn:
            for i in range(40):
                conn.execute("INSERT INTO events VALUES (%s, 'during')", (10_000 + i,))
                written.append(time.monotonic())
                time.sleep(0.02)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        backup_id = backup(citus_runner, "--consistency", "block-writes")
    finally:
        thread.join()
    manifest = citus_runner.manifest(backup_id)
    assert manifest["consistency"] == "blockWrites"
    entry = next(d for d in manifest["databases"] if d["name"] == "app1")
    assert all(c["exact"] for c in entry["rowCounts"])
    # The counts are those of the dump: a restore checks them exactly.
    result = restore(
        citus_runner, backup_id, "--database", "app1", "--target-database", "app1_blocked"
    )
    assert result.code == 0, result.stderr[-3000:]
    assert "counts taken during concurrent writes" not in result.summary["verified"]["app1_blocked"]


def test_a_row_count_mismatch_fails_before_the_swap(
    apps: CitusCluster, citus_runner: Runner
) -> None:
    backup_id = backup(citus_runner)
    before = fingerprint(apps, "app1")
    key = f"{citus_runner.prefix}/daily/{backup_id}/manifest.json"
    manifest = citus_runner.manifest(backup_id)
    for entry in manifest["databases"]:
        for count in entry["rowCounts"]:
            if count["name"] == "notes":
                count["rows"] += 1
    data = json.dumps(manifest).encode()
    citus_runner.s3().put_object(citus_runner.bucket, key, io.BytesIO(data), len(data))

    result = restore(citus_runner, backup_id, "--database", "app1", "--replace")

    assert result.code != 0
    assert result.summary["reason"] == "VerificationFailed"
    assert '"public"."notes" has 50 rows, the backup recorded 51' in result.summary["error"]
    assert fingerprint(apps, "app1") == before


def test_verification_rebuilds_on_scratch_databases_and_drops_them_everywhere(
    apps: CitusCluster, citus_runner: Runner, tmp_path: Any
) -> None:
    """``restore --verify`` on Citus: the scratch copies are distributed over the
    workers (the distribution is checked like a restore's), the checks run
    there, and afterwards no scratch database is left on any node; the real
    databases keep their OID, data and shards."""
    from citus_backup.runner.verify import SCRATCH_PREFIX  # noqa: PLC0415

    before = {db: fingerprint(apps, db) for db in APPS}
    shards_before = shard_tables(apps, "app1")
    backup_id = backup(citus_runner)
    checks = tmp_path / "checks"
    checks.mkdir()
    # Runs in the scratch copy of app1: a distributed join through its own workers.
    (checks / "app1.orders-join.sql").write_text(
        "SELECT count(*) = 3000 FROM orders o JOIN customers c ON c.id = o.customer_id"
    )
    (checks / "app1.distributed.sql").write_text(
        "SELECT count(*) = 3 FROM citus_tables WHERE citus_table_type = 'distributed'"
    )
    # A leftover of a killed verification, on a worker only.
    leftover = SCRATCH_PREFIX + "00000000_left"
    with psycopg.connect(apps.worker_infos[0].dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(leftover)))

    result = restore(citus_runner, backup_id, "--verify", "--checks-dir", str(checks))

    assert result.code == 0, result.stderr[-3000:]
    summary = result.summary
    assert set(APPS) <= set(summary["verified"])  # and the maintenance database
    assert "distribution of 6 Citus table(s)" in summary["verified"]["app1"]
    assert {db: summary["citus"][db]["mode"] for db in APPS} == dict.fromkeys(APPS, "distributed")
    assert summary["verification"]["app1"]["checks"] == ["distributed", "orders-join"]
    for node in apps.nodes:
        names = apps.databases(node)
        assert not [n for n in names if n.startswith((SCRATCH_PREFIX, "citus_backup_tmp_"))], (
            node,
            names,
        )
    assert {db: fingerprint(apps, db) for db in APPS} == before
    assert shard_tables(apps, "app1") == shards_before
