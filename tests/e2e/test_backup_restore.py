"""The seed's story on a real cluster, through kubectl only.

Deploy the CRDs and the operator from ``manifests/`` (the project's image,
its ServiceAccount and RBAC); in a namespace that enforces the restricted Pod
Security Standard, apply a policy for a PostgreSQL hosting app1, app2 and
app3; run an on-demand and a scheduled backup; drop a table in app1; restore
app1 with ``kubectl create citusrestore``; the table is back and app2/app3
are untouched; the bucket's lifecycle rules match the policy; deleting the
policy removes its rules and keeps the backups.

The tests run in file order and build on each other (one story); each
waits with a deadline and fails with the object's status, not a timeout alone.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from providers import MANIFESTS, Cluster

from harness import polling

OPERATOR_NS = "citus-backup-system"
NS = "e2e-apps"
POLICY = "citus"
BUCKET = "citus-backups"
PREFIX = "citus"
DATABASES = ("app1", "app2", "app3")
# A rule the operator does not own: it must survive every sync and the policy's deletion.
FOREIGN_RULE_ID = "keep-me-not-ours"
# Seconds: the operator Deployment's first rollout (image already loaded);
# one backup or restore Job, pod start included; the next scheduled run
# (every minute, plus the scheduler's 10 s tick and a run).
ROLLOUT_TIMEOUT = 180.0
RUN_TIMEOUT = 240.0
SCHEDULED_TIMEOUT = 300.0
# The kubectl plugins (console scripts) live next to this interpreter.
PLUGIN_DIR = Path(sys.executable).parent


def eventually(probe: Callable[[], Any], what: str, timeout: float) -> Any:
    """Here a failed kubectl (AssertionError) is "not yet"; a real node acts in seconds."""
    return polling.eventually(probe, what, timeout, retry_on=(AssertionError,), interval=1.0)


def get(cluster: Cluster, kind: str, name: str = "", namespace: str = NS) -> Any:
    args = ["get", kind, "-n", namespace, "-o", "json"]
    if name:
        args.insert(2, name)
    return json.loads(cluster.kubectl(*args).stdout)


def wait_phase(cluster: Cluster, kind: str, name: str, timeout: float = RUN_TIMEOUT) -> Any:
    """The object once its phase is terminal; fails with its status if that is not Succeeded."""

    def terminal() -> Any:
        obj = get(cluster, kind, name)
        return obj if obj.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

    obj = eventually(terminal, f"{kind}/{name} to finish", timeout)
    assert obj["status"]["phase"] == "Succeeded", json.dumps(obj["status"], indent=2)
    return obj


def condition(obj: Any, kind: str) -> Any:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), None)


def checksum(cluster: Cluster, database: str, table: str) -> str:
    return cluster.sql(
        database,
        f"SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY id)) FROM {table} t",  # noqa: S608
    )


SEED = {
    "app1": (
        "customers",
        "CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);"
        "INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 5000) g;"
        "CREATE TABLE orders (id int PRIMARY KEY, customer int REFERENCES customers, "
        "total numeric);"
        "INSERT INTO orders SELECT g, 1 + g % 5000, g * 1.5 FROM generate_series(1, 20000) g;",
    ),
    "app2": (
        "items",
        "CREATE TABLE items (id int PRIMARY KEY, sku text);"
        "INSERT INTO items SELECT g, 'sku-' || g FROM generate_series(1, 3000) g;",
    ),
    "app3": (
        "events",
        "CREATE TABLE events (id bigint PRIMARY KEY, payload jsonb);"
        "INSERT INTO events SELECT g, jsonb_build_object('n', g) FROM generate_series(1, 3000) g;",
    ),
}


class Story:
    """What the steps hand each other."""

    def __init__(self) -> None:
        self.checksums: dict[str, str] = {}
        self.oids: dict[str, str] = {}
        self.backups: list[str] = []


@pytest.fixture(scope="module")
def story(cluster: Cluster, log_dir: Path) -> Iterator[Story]:
    yield Story()
    _collect_logs(cluster, log_dir)


def _collect_logs(cluster: Cluster, log_dir: Path) -> None:
    """The operator's and every Job pod's output, for whoever reads a failed run."""
    out = log_dir / "e2e"
    out.mkdir(parents=True, exist_ok=True)
    for namespace in (OPERATOR_NS, NS):
        pods = cluster.kubectl("get", "pods", "-n", namespace, "-o", "name", check=False)
        for pod in pods.stdout.split():
            logs = cluster.kubectl("logs", "-n", namespace, pod, "--all-containers", check=False)
            (out / f"{namespace}.{pod.split('/')[-1]}.log").write_text(logs.stdout + logs.stderr)
    events = cluster.kubectl("get", "events", "-A", "--sort-by=.lastTimestamp", check=False)
    (out / "events.txt").write_text(events.stdout)


def operator_log(cluster: Cluster) -> str:
    return cluster.kubectl(
        "logs", "-n", OPERATOR_NS, "deploy/citus-backup-operator", check=False
    ).stdout


# ------------------------------------------------------------------------ the story


def test_operator_runs_from_manifests(cluster: Cluster, story: Story) -> None:
    cluster.kubectl("apply", "-k", str(MANIFESTS))
    cluster.kubectl(
        "rollout",
        "status",
        "-n",
        OPERATOR_NS,
        "deploy/citus-backup-operator",
        f"--timeout={ROLLOUT_TIMEOUT:.0f}s",
        timeout=ROLLOUT_TIMEOUT + 30,
    )
    pod = get(cluster, "pods", namespace=OPERATOR_NS)["items"][0]
    assert pod["spec"]["serviceAccountName"] == "citus-backup-operator"
    assert pod["status"]["phase"] == "Running"
    # Restricted-compliant and not root: the image's user, no privilege escalation.
    container = pod["spec"]["containers"][0]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    name = pod["metadata"]["name"]
    uid = cluster.kubectl("exec", "-n", OPERATOR_NS, name, "--", "id", "-un")
    assert uid.stdout.strip() == "nonroot"  # 65532, with a passwd entry (kopf, libpq)
    eventually(
        # In-cluster configuration works: it authenticated through the
        # `kubernetes` Service with its ServiceAccount token.
        lambda: "Initial authentication has finished" in operator_log(cluster),
        "the operator to authenticate",
        60,
    )


def test_policy_in_a_restricted_namespace(cluster: Cluster, story: Story) -> None:
    for database, (table, ddl) in SEED.items():
        cluster.sql("postgres", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        cluster.sql("postgres", f"CREATE DATABASE {database}")
        cluster.sql(database, ddl)
        story.checksums[database] = checksum(cluster, database, table)
    story.checksums["app1.orders"] = checksum(cluster, "app1", "orders")
    story.oids = {
        db: cluster.sql("postgres", f"SELECT oid FROM pg_database WHERE datname = '{db}'")  # noqa: S608
        for db in DATABASES
    }
    s3 = cluster.s3()
    if not s3.bucket_exists(BUCKET):
        s3.make_bucket(BUCKET)
    from minio.commonconfig import ENABLED, Filter  # noqa: PLC0415
    from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule  # noqa: PLC0415

    s3.set_bucket_lifecycle(
        BUCKET,
        LifecycleConfig(
            [
                Rule(
                    ENABLED,
                    rule_filter=Filter(prefix="other/"),
                    rule_id=FOREIGN_RULE_ID,
                    expiration=Expiration(days=3),
                )
            ]
        ),
    )

    cluster.kubectl("create", "namespace", NS)
    cluster.kubectl(
        "label",
        "namespace",
        NS,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )
    db, store = cluster.database, cluster.object_store
    secrets = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "citus-postgres", "namespace": NS},
                "stringData": {"password": db.password},
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "citus-backup-minio", "namespace": NS},
                "stringData": {
                    "accessKeyId": store.access_key,
                    "secretAccessKey": store.secret_key,
                },
            },
        ],
    }
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(secrets))
    policy = {
        "apiVersion": "citusbackup.io/v1alpha1",
        "kind": "CitusBackupPolicy",
        "metadata": {"name": POLICY, "namespace": NS},
        "spec": {
            "schedule": "* * * * *",
            "timeZone": "UTC",
            "coordinator": {
                "host": db.host,
                "port": db.port,
                "user": db.user,
                "passwordSecretRef": {"name": "citus-postgres", "key": "password"},
                "sslMode": "prefer",
                "includeDatabases": list(DATABASES),
            },
            "storage": {
                "endpoint": store.endpoint,
                "secure": False,
                "bucket": BUCKET,
                "prefix": PREFIX,
                "accessKeyIdSecretRef": {"name": "citus-backup-minio", "key": "accessKeyId"},
                "secretAccessKeySecretRef": {
                    "name": "citus-backup-minio",
                    "key": "secretAccessKey",
                },
            },
            "retention": {"preset": "standard"},
        },
    }
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(policy))
    ready = eventually(
        lambda: (
            (c := condition(get(cluster, "citusbackuppolicy", POLICY), "Ready"))
            and c["status"] == "True"
            and c
        ),
        "the policy to be Ready",
        60,
    )
    assert ready["status"] == "True"


def test_on_demand_backup(cluster: Cluster, story: Story) -> None:
    cluster.kubectl(
        "create", "citusbackup", "now-1", "--policy", POLICY, "-n", NS, extra_path=[PLUGIN_DIR]
    )
    done = wait_phase(cluster, "citusbackup", "now-1")
    # Restorable with the same status patch as Succeeded (the runner stored the
    # manifest); the catalogue's timer keeps it true to the bucket afterwards.
    restorable = condition(done, "Restorable")
    assert restorable is not None
    assert restorable["status"] == "True", restorable
    # The Job ran in the restricted namespace, so its pod passed admission.
    jobs = [j for j in get(cluster, "jobs")["items"] if j["metadata"]["name"].startswith("now-1")]
    assert [j["status"].get("succeeded") for j in jobs] == [1]
    story.backups.append("now-1")
    catalogue = cluster.kubectl("get", "citusbackups", "-n", NS).stdout
    assert "now-1" in catalogue
    assert "Succeeded" in catalogue


def test_scheduled_backup(cluster: Cluster, story: Story) -> None:
    def scheduled() -> Any:
        items = get(cluster, "citusbackups")["items"]
        done = [
            b
            for b in items
            if b["metadata"].get("labels", {}).get("citusbackup.io/trigger") == "scheduled"
            and b.get("status", {}).get("phase") in ("Succeeded", "Failed")
        ]
        return done[0] if done else None

    backup = eventually(scheduled, "a scheduled backup to finish", SCHEDULED_TIMEOUT)
    assert backup["status"]["phase"] == "Succeeded", json.dumps(backup["status"], indent=2)
    story.backups.append(backup["metadata"]["name"])


def test_restore_app1_in_place(cluster: Cluster, story: Story) -> None:
    cluster.sql("app1", "DROP TABLE orders; DROP TABLE customers")
    cluster.kubectl(
        "create",
        "citusrestore",
        "restore-app1",
        "--policy",
        POLICY,
        "--database",
        "app1",
        "--replace",
        "-n",
        NS,
        extra_path=[PLUGIN_DIR],
    )
    wait_phase(cluster, "citusrestore", "restore-app1")
    assert checksum(cluster, "app1", "customers") == story.checksums["app1"]
    assert checksum(cluster, "app1", "orders") == story.checksums["app1.orders"]
    for database in ("app2", "app3"):
        table = SEED[database][0]
        assert checksum(cluster, database, table) == story.checksums[database]
        oid = cluster.sql("postgres", f"SELECT oid FROM pg_database WHERE datname = '{database}'")  # noqa: S608
        assert oid == story.oids[database], f"{database} was recreated"


METRICS_SERVICE = "citus-backup-operator-metrics"
#: Fetches the metrics from inside the operator's pod through the Service's ClusterIP
#: (kube-proxy's rules: the in-cluster path a Prometheus would take).
FETCH = (
    "import sys, urllib.request; "
    "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
)


def test_metrics_through_the_service(cluster: Cluster, story: Story) -> None:
    service = get(cluster, "service", METRICS_SERVICE, namespace=OPERATOR_NS)
    url = f"http://{service['spec']['clusterIP']}:8081/metrics"
    pod = get(cluster, "pods", namespace=OPERATOR_NS)["items"][0]["metadata"]["name"]

    def scrape() -> str | None:
        out = cluster.kubectl(
            "exec", "-n", OPERATOR_NS, pod, "--", "/opt/venv/bin/python", "-c", FETCH, url
        ).stdout
        wanted = (
            f'citus_backup_last_success_timestamp_seconds{{namespace="{NS}",policy="{POLICY}"}}'
        )
        return out if wanted in out else None

    text = eventually(scrape, "the metrics through the Service", 60)
    now_1 = get(cluster, "citusbackup", "now-1")
    assert f'citus_backup_restorable_backups{{namespace="{NS}",policy="{POLICY}"}}' in text
    for database in DATABASES:
        size = now_1["status"]["databases"][database]
        line = (  # prometheus_client writes labels sorted by name
            f'citus_backup_last_database_size_bytes{{database="{database}",namespace="{NS}",'
            f'policy="{POLICY}"}}'
        )
        assert line in text
        assert size > 0
    assert "process_resident_memory_bytes" in text


def _rules(cluster: Cluster) -> dict[str, Any]:
    config = cluster.s3().get_bucket_lifecycle(BUCKET)
    return {} if config is None else {r.rule_id: r for r in config.rules}


def test_lifecycle_rules_match_policy(cluster: Cluster, story: Story) -> None:
    owned = f"citusbackup.{NS}.{POLICY}."

    def synced() -> Any:
        rules = _rules(cluster)
        mine = {k: v for k, v in rules.items() if k.startswith(owned)}
        return rules if {f"{owned}daily", f"{owned}monthly"} <= mine.keys() else None

    rules = eventually(synced, "the policy's lifecycle rules", 90)
    expected = {"daily": 30, "monthly": 365}
    for tier, days in expected.items():
        rule = rules[f"{owned}{tier}"]
        assert rule.expiration.days == days
        assert rule.rule_filter.and_operator.prefix == f"{PREFIX}/{tier}/"
        assert rule.rule_filter.and_operator.tags == {"citusbackup.io/expirable": "true"}
    assert FOREIGN_RULE_ID in rules
    # The condition is written right after the rules: allow that moment.
    eventually(
        lambda: (
            (c := condition(get(cluster, "citusbackuppolicy", POLICY), "LifecycleInSync"))
            and c["status"] == "True"
        ),
        "LifecycleInSync=True",
        30,
    )


def test_delete_policy_keeps_backups(cluster: Cluster, story: Story) -> None:
    cluster.kubectl("delete", "citusbackuppolicy", POLICY, "-n", NS, "--timeout=120s", timeout=150)
    rules = _rules(cluster)
    assert not [r for r in rules if r.startswith(f"citusbackup.{NS}.{POLICY}.")], rules
    assert FOREIGN_RULE_ID in rules
    backups = {b["metadata"]["name"]: b for b in get(cluster, "citusbackups")["items"]}
    assert set(story.backups) <= backups.keys()
    s3 = cluster.s3()
    for name in story.backups:
        key_prefix = backups[name]["status"]["location"]["keyPrefix"]
        keys = {o.object_name for o in s3.list_objects(BUCKET, prefix=key_prefix, recursive=True)}
        assert f"{key_prefix}manifest.json" in keys, (name, keys)


def test_no_secret_leaked_and_no_rbac_denial(cluster: Cluster, story: Story) -> None:
    log = operator_log(cluster)
    assert "forbidden" not in log.lower(), "the operator lacked a permission: see its log"
    texts = [log]
    for kind in ("citusbackups", "citusrestores", "events", "jobs"):
        texts.append(cluster.kubectl("get", kind, "-n", NS, "-o", "json").stdout)
    for text in texts:
        assert cluster.database.password not in text
        assert cluster.object_store.secret_key not in text
