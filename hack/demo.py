"""``make demo``: the seed's story, end to end, on the local environment.

The old set-up was a cron container running pg_dump at 03:00, aws-cli into
MinIO, two lifecycle rules clicked in the console, and ``docker exec
pg_restore`` by hand. This script replays that story the Kubernetes way and
prints what a user would type and see:

1. the local environment comes up: PostgreSQL with app1/app2/app3, MinIO, the
   control plane and one real node (kubelet, containerd, runc, kube-proxy),
   with the project's image built from the Dockerfile and loaded into it;
2. ``kubectl apply -k manifests/``: CRDs, RBAC and the operator Deployment,
   whose pod talks to the API server in-cluster; backups and restores run as
   real Job pods;
3. ``kubectl apply`` a CitusBackupPolicy, ``kubectl create citusbackup`` for a
   backup now; the bucket holds the backup set;
4. a table is dropped in app1; ``kubectl create citusrestore`` brings it back
   and app2/app3 are untouched.

Everything stays up afterwards for exploring; ``make demo-down`` stops it.
Idempotent: a second run re-uses what is up and makes new backup/restore names.
"""

from __future__ import annotations

import base64
import datetime
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from kubernetes import client, config
from minio import Minio
from psycopg import sql

from localenv import env as localenv
from localenv.binaries import binary

REPO = Path(__file__).resolve().parent.parent
STATE_DIR = localenv.DEFAULT_STATE_DIR
NAMESPACE = "citus"
OPERATOR_NAMESPACE = "citus-backup-system"
BUCKET = "citus-backups"
# Seconds to wait for a backup or restore to finish; the demo data is small.
WAIT_SECONDS = 180


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def run(argv: list[str], env: dict[str, str], *, show: bool = True, check: bool = True) -> str:
    """Run a command as the user would, echoing it (credentials never appear in argv)."""
    if show:
        shown = [Path(argv[0]).name, *argv[1:]]
        print(f"$ {shlex.join(shown)}", flush=True)
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if show:
        print(result.stdout.rstrip() or result.stderr.rstrip(), flush=True)
    if check and result.returncode != 0:
        raise SystemExit(f"demo: `{shlex.join(argv)}` failed: {result.stderr.strip()}")
    return result.stdout


def seed_databases(state: localenv.DemoState) -> None:
    """app1 (customers, orders), app2 (products), app3 (events), as the seed's stack has."""
    pg = state.postgres
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        existing = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        for db in ("app1", "app2", "app3"):
            if db not in existing:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    statements = {
        "app1": [
            "CREATE TABLE IF NOT EXISTS customers (id int PRIMARY KEY, name text NOT NULL)",
            "CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY,"
            " customer_id int REFERENCES customers, total numeric(10,2), created timestamptz)",
            "INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 500) g"
            " ON CONFLICT DO NOTHING",
            "INSERT INTO orders SELECT g, 1 + g % 500, (g % 997) * 1.25, now()"
            " FROM generate_series(1, 20000) g ON CONFLICT DO NOTHING",
        ],
        "app2": [
            "CREATE TABLE IF NOT EXISTS products (sku text PRIMARY KEY, price numeric(10,2))",
            "INSERT INTO products SELECT 'sku-' || g, g * 0.5 FROM generate_series(1, 5000) g"
            " ON CONFLICT DO NOTHING",
        ],
        "app3": [
            "CREATE TABLE IF NOT EXISTS events (id bigint PRIMARY KEY, payload jsonb)",
            "INSERT INTO events SELECT g, jsonb_build_object('n', g)"
            " FROM generate_series(1, 10000) g ON CONFLICT DO NOTHING",
        ],
    }
    for db, stmts in statements.items():
        with psycopg.connect(pg.dsn(db), autocommit=True) as conn:
            for stmt in stmts:
                conn.execute(stmt.encode())


def table_digest(state: localenv.DemoState, db: str, table: str) -> str:
    with psycopg.connect(state.postgres.dsn(db)) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT count(*) || ' rows, md5 ' || md5(string_agg(t::text, ',' ORDER BY t::text))"
                " FROM {} t"
            ).format(sql.Identifier(table))
        ).fetchone()
    return str(row[0]) if row else "?"


def apply_secrets(core: client.CoreV1Api, state: localenv.DemoState) -> None:
    """The Secrets the policy references, created through the API (not argv)."""
    secrets = {
        "citus-postgres": {"password": state.postgres.password},
        "citus-backup-minio": {
            "accessKeyId": state.minio.access_key,
            "secretAccessKey": state.minio.secret_key,
        },
    }
    for name, data in secrets.items():
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=name, namespace=NAMESPACE),
            data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        )
        try:
            core.create_namespaced_secret(NAMESPACE, body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            core.replace_namespaced_secret(name, NAMESPACE, body)


def policy_yaml(state: localenv.DemoState) -> str:
    """manifests/samples/policy.yaml, pointed at the local PostgreSQL and MinIO."""
    text = (REPO / "manifests/samples/policy.yaml").read_text()
    pg, minio = state.postgres, state.minio
    return (
        text.replace("citus-coordinator.citus.svc", pg.host)
        .replace("port: 5432", f"port: {pg.port}")
        .replace("sslMode: prefer", "sslMode: disable")
        .replace("minio.minio.svc:9000", minio.endpoint)
    )


def wait_phase(env: dict[str, str], kubectl: str, kind: str, name: str) -> str:
    deadline = time.monotonic() + WAIT_SECONDS
    phase = ""
    while time.monotonic() < deadline:
        phase = run(
            [kubectl, "-n", NAMESPACE, "get", kind, name, "-o", "jsonpath={.status.phase}"],
            env,
            show=False,
            check=False,
        )
        if phase in ("Succeeded", "Failed"):
            return phase
        time.sleep(1)
    return phase or "Unknown"


def up() -> int:
    say("Local environment: PostgreSQL 15, MinIO, the control plane and one real node")
    if localenv.up(STATE_DIR) != 0:
        return 1
    state = localenv.DemoState.load(STATE_DIR)
    assert state is not None
    kubectl = str(state.kube.kubectl)
    env = {
        **os.environ,
        **state.env(),
        "PATH": os.pathsep.join(
            [
                str(Path(sys.executable).parent),
                str(Path(kubectl).parent),
                str(binary("mc").parent),
                os.environ.get("PATH", ""),
            ]
        ),
    }
    env.pop("PGPASSWORD", None)  # the user's shell would not need it for kubectl

    say("PostgreSQL with the seed's databases app1, app2, app3")
    seed_databases(state)
    print(
        f"   {state.postgres.redacted_dsn()}: app1.orders {table_digest(state, 'app1', 'orders')}"
    )
    s3 = Minio(state.minio.endpoint, state.minio.access_key, state.minio.secret_key, secure=False)
    if not s3.bucket_exists(BUCKET):
        s3.make_bucket(BUCKET)

    say("Install: kubectl apply -k manifests/ (CRDs, RBAC, the operator Deployment)")
    run([kubectl, "apply", "-k", str(REPO / "manifests")], env)
    run(
        [
            kubectl,
            "rollout",
            "status",
            "-n",
            OPERATOR_NAMESPACE,
            "deploy/citus-backup-operator",
            f"--timeout={WAIT_SECONDS}s",
        ],
        env,
    )
    run([kubectl, "get", "pods", "-n", OPERATOR_NAMESPACE, "-o", "wide"], env)
    run([kubectl, "create", "namespace", NAMESPACE], env, check=False, show=False)
    config.load_kube_config(str(state.kube.kubeconfig))  # type: ignore[no-untyped-call]
    apply_secrets(client.CoreV1Api(), state)
    return story(state, env)


def story(state: localenv.DemoState, env: dict[str, str]) -> int:
    """Policy, on-demand backup, a dropped table, a restore of app1 only."""
    kubectl = str(state.kube.kubectl)

    say("kubectl apply -f policy.yaml: daily 03:00 UTC, standard retention (30 daily + 12 monthly)")
    policy_file = STATE_DIR / "policy.yaml"
    policy_file.write_text(policy_yaml(state))
    run([kubectl, "apply", "-f", str(policy_file)], env)

    stamp = datetime.datetime.now(datetime.UTC).strftime("%H%M%S")
    backup, restore = f"manual-{stamp}", f"restore-app1-{stamp}"
    say("An on-demand backup (the seed's 'manual run')")
    run([kubectl, "create", "citusbackup", backup, "-n", NAMESPACE, "--policy", "citus"], env)
    phase = wait_phase(env, kubectl, "citusbackup", backup)
    run([kubectl, "get", "citusbackuppolicies,citusbackups", "-n", NAMESPACE], env)
    if phase != "Succeeded":
        run([kubectl, "describe", "citusbackup", backup, "-n", NAMESPACE], env, check=False)
        return 1
    say("It ran as a Job pod on the node")
    run([kubectl, "get", "jobs,pods", "-n", NAMESPACE, "-o", "wide"], env)

    say("The backup set in the bucket (plain pg_dump archives + manifest)")
    run(["mc", "ls", "--recursive", f"local/{BUCKET}"], env)

    app1_before = table_digest(state, "app1", "orders")
    app2_before = table_digest(state, "app2", "products")
    app3_before = table_digest(state, "app3", "events")
    say("Oops: someone drops app1.orders")
    with psycopg.connect(state.postgres.dsn("app1"), autocommit=True) as conn:
        conn.execute("DROP TABLE orders")
    print("$ psql app1 -c 'DROP TABLE orders'\nDROP TABLE")

    say("kubectl create citusrestore: app1 only, in place")
    run(
        [
            kubectl,
            "create",
            "citusrestore",
            restore,
            "-n",
            NAMESPACE,
            "--backup",
            backup,
            "--database",
            "app1",
            "--replace",
        ],
        env,
    )
    phase = wait_phase(env, kubectl, "citusrestore", restore)
    run([kubectl, "get", "citusrestores", "-n", NAMESPACE], env)
    if phase != "Succeeded":
        run([kubectl, "describe", "citusrestore", restore, "-n", NAMESPACE], env, check=False)
        return 1

    verified = verification(env, kubectl, backup, stamp)
    show_metrics(env, kubectl)

    say("Result")
    app1_after = table_digest(state, "app1", "orders")
    app2_after = table_digest(state, "app2", "products")
    app3_after = table_digest(state, "app3", "events")
    checks = (
        ("app1.orders", app1_before, app1_after, "restored", "NOT RESTORED"),
        ("app2.products", app2_before, app2_after, "untouched", "CHANGED"),
        ("app3.events", app3_before, app3_after, "untouched", "CHANGED"),
    )
    for label, before, after, good, bad in checks:
        print(f"   {label + ':':<22}{after} ({good if after == before else bad})")
    print(f"   {'verification:':<22}{'passed' if verified else 'FAILED'} ({backup} restores)")
    hints = hint_commands()
    HINTS_FILE.write_text("\n".join(command for command, _ in hints) + "\n")
    width = max(len(command) for command, _ in hints)
    print("\nEverything is still running. Try, in any shell:")
    for command, why in hints:
        print(f"   {command:<{width}}  # {why}")
    print(f"   logs: {state.log_dir}")
    print(f"Stop it all with: make -C {shlex.quote(str(REPO))} demo-down")
    return 0 if verified and all(before == after for _, before, after, _, _ in checks) else 1


#: The metrics endpoint through the API server's Service proxy (works from any shell
#: with the demo's kubeconfig; a Prometheus would scrape the same Service).
METRICS_PATH = (
    f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/services/citus-backup-operator-metrics:metrics"
    "/proxy/metrics"
)
#: Which metrics the demo prints (all of them are in the README).
METRICS_SHOWN = (
    r"^citus_backup_(last_success_timestamp_seconds|last_size_bytes|backups_total"
    r"|last_verification_success|restorable_backups)"
)
#: User SQL checks of the demo's verification (ConfigMap keys <database>.<check>.sql).
DEMO_CHECKS = {
    "app1.orders-have-customers.sql": "SELECT count(*) > 0 FROM orders o "
    "JOIN customers c ON c.id = o.customer_id",
    "app2.products-not-empty.sql": "SELECT count(*) > 0 FROM products",
}


def show_metrics(env: dict[str, str], kubectl: str) -> None:
    say("The operator's metrics (Prometheus), through its Service")
    metrics = run([kubectl, "get", "--raw", METRICS_PATH], env, show=False)
    print(f"$ kubectl get --raw {METRICS_PATH} | grep -E '{METRICS_SHOWN}'")
    for line in metrics.splitlines():
        if re.match(METRICS_SHOWN, line) and f'namespace="{NAMESPACE}"' in line:
            print(line)


def verification(env: dict[str, str], kubectl: str, backup: str, stamp: str) -> bool:
    """A test restore of ``backup`` into scratch databases, with SQL checks."""
    say("Verification: does the backup restore? (scratch databases, row counts, SQL checks)")
    checks = ["--from-literal=" + f"{key}={query}" for key, query in DEMO_CHECKS.items()]
    run(
        [kubectl, "delete", "configmap", "demo-checks", "-n", NAMESPACE, "--ignore-not-found"],
        env,
        show=False,
    )
    run([kubectl, "create", "configmap", "demo-checks", "-n", NAMESPACE, *checks], env)
    name = f"verify-{stamp}"
    run(
        [
            kubectl,
            "create",
            "citusrestore",
            name,
            "-n",
            NAMESPACE,
            "--backup",
            backup,
            "--verify",
            "--checks-config-map",
            "demo-checks",
        ],
        env,
    )
    phase = wait_phase(env, kubectl, "citusrestore", name)
    run([kubectl, "get", "citusrestore", name, "-n", NAMESPACE], env)
    condition = "{.status.conditions[?(@.type=='Verified')]}"
    run(
        [kubectl, "get", "citusbackup", backup, "-n", NAMESPACE, "-o", f"jsonpath={condition}"],
        env,
    )
    print()
    if phase != "Succeeded":
        run([kubectl, "describe", "citusrestore", name, "-n", NAMESPACE], env, check=False)
    return phase == "Succeeded"


# Where ``up`` records the hint commands for hack/demo-check.sh, which runs
# them in a fresh shell (one command a line, the first one the eval).
HINTS_FILE = STATE_DIR / "hints.sh"


def hint_commands() -> list[tuple[str, str]]:
    """What the demo suggests next, as (command, why): each works pasted into a
    fresh shell in any directory, after the first, and can be run repeatedly."""
    repo = shlex.quote(str(REPO))
    return [
        (f'eval "$(make -s -C {repo} demo-env)"', "KUBECONFIG, PG*, mc alias 'local', PATH"),
        ("kubectl get citus-backup -A", "the three kinds (category)"),
        (
            f'kubectl create citusbackup "manual-$(date +%s)" -n {NAMESPACE} --policy citus',
            "one more on-demand backup",
        ),
        (f"kubectl get citusbackups -n {NAMESPACE} -o wide", "the catalogue"),
        (f"kubectl get citusrestores -n {NAMESPACE}", "restores and verifications"),
        (f"kubectl get --raw {METRICS_PATH} | grep ^citus_backup_", "the operator's metrics"),
        (f"mc ls --recursive local/{BUCKET}", "the backup sets in MinIO"),
        ("psql -d app1 -c 'SELECT count(*) FROM orders'", "the restored table"),
    ]


def down() -> int:
    return localenv.down(STATE_DIR)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "up"
    sys.exit(down() if command == "down" else up())
