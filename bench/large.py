"""Benchmark of issue #14: one large database against the stock parallel tools.

Measured side by side in one run, on a generated data set (cached between
runs like bench.py's): one database ``large`` of ``--size-gb`` GB over ten
tables of skewed sizes (``events`` about half the data; indexes, unique
constraints and foreign keys), plus two small databases:

* ``local-fd``: ``pg_dump -Fd -j N --compress=<level> large`` to local disk
  (what a DBA picks for a large database); the directory is kept for the
  restore and removed afterwards;
* ``runner``: ``citus-backup backup --include-database large`` (split: the
  database is above the 1 GiB default threshold), ``--jobs N``, same level;
* ``runner-nosplit``: the same with ``--split-threshold 0`` (one
  ``pg_dump -Fc`` stream, the layout before issue #14), for contrast;
* ``runner-all``: the whole set (``large`` and the small databases, globals);
* ``runner-no-counts``: ``runner`` without the per-table row counts (what the
  restore's row-count check costs the backup);
* restores of ``large`` side by side: ``pg_restore -j N`` from the local
  directory into a new database (``local-restore``) against ``citus-backup
  restore --database large --target-database large_copy`` from the split set
  (``runner-restore``) and from the unsplit one (``runner-restore-nosplit``);
  every copy's row counts are checked against the source;
* ``--compression``: the same local and runner backups at other levels, for
  time and size (the PostgreSQL 15 client supports gzip only: ``lz4``/``zstd``
  came with pg_dump 16, and are reported as not available).

The runner's memory and local disk writes are measured as in bench.py
(:mod:`measure`). Results: ``bench/results/<run>-large-<size>.json`` and
``.md``. Run as ``bench/run-large.sh`` (or with PYTHONPATH like bench/run.sh).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    BENCH_DIR,
    BUCKET,
    Context,
    Step,
    log,
    machine,
    measured,
    prime_runner,
    runner_command,
    runner_source,
    summarize,
)
from localenv import binaries
from localenv.postgres import pg_bindir
from measure import loadavg
from servers import CachedPostgres, MetricsMinio, data_cache_root

BIG = "large"
SMALL = ("small1", "small2")
#: Targets of issue #14.
TARGET_BACKUP = 1.05
TARGET_RESTORE = 1.1
TARGET_MEMORY = 150 * 1000 * 1000

#: The big database's tables: name -> (share of the data, approximate bytes
#: per row including its indexes), to turn --size-gb into row counts.
TABLES: dict[str, tuple[float, int]] = {
    "events": (0.50, 185),
    "orders": (0.14, 115),
    "order_items": (0.12, 85),
    "logs": (0.08, 100),
    "audit": (0.05, 90),
    "customers": (0.04, 125),
    "sessions": (0.03, 120),
    "products": (0.02, 200),
}

SCHEMA = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text NOT NULL,
                        created date NOT NULL);
CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2),
                       description text);
CREATE TABLE orders (id bigint PRIMARY KEY, customer int NOT NULL, ordered timestamptz,
                     status text, note text);
CREATE TABLE order_items (order_id bigint NOT NULL, line int NOT NULL, product int NOT NULL,
                          qty int, price numeric(10,2), PRIMARY KEY (order_id, line));
CREATE TABLE events (id bigint PRIMARY KEY, customer int NOT NULL, kind smallint,
                     at timestamptz, payload text);
CREATE TABLE logs (at timestamptz, level text, message text);
CREATE TABLE audit (id bigserial PRIMARY KEY, who int, what text, at timestamptz);
CREATE TABLE sessions (token text PRIMARY KEY, customer int NOT NULL, started timestamptz);
CREATE TABLE settings (key text PRIMARY KEY, value text);
CREATE TABLE nothing_yet (id int PRIMARY KEY, v text);
INSERT INTO settings SELECT 'key' || g, md5(g::text) FROM generate_series(1, 100) g;
"""

FILL = {
    "customers": "INSERT INTO customers SELECT g, 'customer ' || g, 'c' || g || '@example.com',"
    " date '2020-01-01' + g % 1500 FROM generate_series(1, {n}) g",
    "products": "INSERT INTO products SELECT g, 'product ' || g, (g % 1000) / 10.0,"
    " repeat(md5(g::text), 4) FROM generate_series(1, {n}) g",
    "orders": "INSERT INTO orders SELECT g, 1 + g % {customers},"
    " timestamptz '2024-01-01' + g * interval '1 second', (ARRAY['new','paid','sent'])[1 + g % 3],"
    " md5(g::text) FROM generate_series(1, {n}) g",
    "order_items": "INSERT INTO order_items SELECT 1 + g % {orders}, g, 1 + g % {products},"
    " 1 + g % 7, (g % 500) / 10.0 FROM generate_series(1, {n}) g",
    "events": "INSERT INTO events SELECT g, 1 + g % {customers}, g % 20,"
    " timestamptz '2024-01-01' + g * interval '100 ms', md5(g::text) || md5((g + 1)::text)"
    " FROM generate_series(1, {n}) g",
    "logs": "INSERT INTO logs SELECT timestamptz '2024-01-01' + g * interval '1 s',"
    " (ARRAY['info','warn','error'])[1 + g % 3], 'request ' || g || ' took ' || g % 997 ||"
    " ' ms ' || md5(g::text) FROM generate_series(1, {n}) g",
    "audit": "INSERT INTO audit (who, what, at) SELECT g % 1000, 'update ' || md5(g::text),"
    " timestamptz '2024-01-01' + g * interval '1 s' FROM generate_series(1, {n}) g",
    "sessions": "INSERT INTO sessions SELECT md5(g::text), 1 + g % {customers},"
    " timestamptz '2024-01-01' + g * interval '1 s' FROM generate_series(1, {n}) g",
}

POST = """
CREATE UNIQUE INDEX customers_email ON customers (email);
CREATE INDEX events_customer ON events (customer);
CREATE INDEX events_at ON events (at);
CREATE INDEX orders_customer ON orders (customer);
ALTER TABLE orders ADD FOREIGN KEY (customer) REFERENCES customers;
ALTER TABLE order_items ADD FOREIGN KEY (order_id) REFERENCES orders;
ALTER TABLE order_items ADD FOREIGN KEY (product) REFERENCES products;
ALTER TABLE events ADD FOREIGN KEY (customer) REFERENCES customers;
ALTER TABLE sessions ADD FOREIGN KEY (customer) REFERENCES customers;
VACUUM ANALYZE;
"""


def row_counts(size_gb: float) -> dict[str, int]:
    return {name: max(100, int(size_gb * 1e9 * share / per_row)) for name, (share, per_row)
            in TABLES.items()}  # fmt: skip


def generate(pg: CachedPostgres, ctx: Context, size_gb: float) -> None:
    env = ctx.base_env()
    psql = [str(ctx.pgbin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    counts = row_counts(size_gb)
    log(f"generating database {BIG} ({size_gb} GB): {counts}")
    subprocess.run([str(ctx.pgbin / "createdb"), BIG], env=env, check=True)
    subprocess.run([*psql, "-d", BIG, "-c", SCHEMA], env=env, check=True)
    # Two tables at a time (two cores), the largest first.
    order = sorted(FILL, key=lambda name: -counts[name])
    procs: list[subprocess.Popen[bytes]] = []
    for name in order:
        statement = FILL[name].format(n=counts[name], **counts)
        procs.append(subprocess.Popen([*psql, "-d", BIG, "-c", statement], env=env))
        if len(procs) == 2:
            for proc in procs:
                if proc.wait() != 0:
                    raise RuntimeError(f"generating {BIG} failed")
            procs = []
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError(f"generating {BIG} failed")
    log("indexes, foreign keys, VACUUM ANALYZE")
    # -f - (not -c): VACUUM cannot run in the one transaction of a -c string.
    subprocess.run([*psql, "-d", BIG, "-f", "-"], env=env, check=True, input=POST.encode())
    for name in SMALL:
        subprocess.run([str(ctx.pgbin / "createdb"), name], env=env, check=True)
        subprocess.run(
            [*psql, "-d", name, "-c",
             "CREATE TABLE t (id int PRIMARY KEY, v text);"
             "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 100000) g"],
            env=env, check=True,
        )  # fmt: skip
    subprocess.run([*psql, "-c", "CHECKPOINT"], env=env, check=True)
    pg.mark_complete()


LOCAL_FD = r"""
set -euo pipefail
rm -rf "$OUT"
"$PGBIN/pg_dump" -Fd -j "$JOBS" --compress="$Z" -w -f "$OUT" -d "$DB"
"""

LOCAL_RESTORE = r"""
set -euo pipefail
"$PGBIN/createdb" -w "$DST"
"$PGBIN/pg_restore" -j "$JOBS" -w -d "$DST" "$OUT"
"""


def table_counts(ctx: Context, database: str) -> str:
    return ctx.psql(
        "SELECT string_agg(relname || '=' || (xpath('/row/c/text()', query_to_xml("
        "format('SELECT count(*) AS c FROM %I', relname), false, true, '')))[1]::text, ',' "
        "ORDER BY relname) FROM pg_class WHERE relkind = 'r' AND relnamespace = "
        "'public'::regnamespace",
        database,
    )


def drop(ctx: Context, name: str) -> None:
    ctx.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def local_backup(ctx: Context, rep: int, level: str, out: Path, method: str) -> Step:
    env = ctx.base_env()
    env.update({"PGBIN": str(ctx.pgbin), "JOBS": str(ctx.jobs), "Z": level, "OUT": str(out),
                "DB": BIG})  # fmt: skip
    step = measured(ctx, method, rep, ["bash", "-c", LOCAL_FD], env)
    step.extra["setBytes"] = du(out)
    return step


def runner_backup(ctx: Context, rep: int, method: str, run_id: str, flags: Sequence[str]) -> Step:
    backup_id = f"{method}-{run_id}-{rep}"
    argv = [*runner_command(), "backup", "--backup-id", backup_id, "--jobs", str(ctx.jobs),
            *flags]  # fmt: skip
    prime_runner(ctx)
    step = measured(ctx, method, rep, argv, ctx.runner_env("runner"))
    summary = json.loads(step.measurement.stdout.strip().splitlines()[-1])
    step.extra["backupId"] = backup_id
    step.extra["setBytes"] = summary.get("totalSize", 0)
    step.extra["split"] = summary.get("splitDatabases", {})
    return step


def local_restore(ctx: Context, rep: int, out: Path, source: str) -> Step:
    target = f"{BIG}_copy"
    drop(ctx, target)
    env = ctx.base_env()
    env.update({"PGBIN": str(ctx.pgbin), "JOBS": str(ctx.jobs), "OUT": str(out), "DST": target})
    step = measured(ctx, "local-restore", rep, ["bash", "-c", LOCAL_RESTORE], env)
    if table_counts(ctx, target) != source:
        raise RuntimeError(f"{target} differs from {BIG}")
    drop(ctx, target)
    return step


def runner_restore(ctx: Context, rep: int, method: str, backup_id: str, source: str) -> Step:
    target = f"{BIG}_copy"
    drop(ctx, target)
    argv = [*runner_command(), "restore", "--backup-id", backup_id, "--database", BIG,
            "--target-database", target, "--jobs", str(ctx.jobs)]  # fmt: skip
    prime_runner(ctx)
    step = measured(ctx, method, rep, argv, ctx.runner_env("runner"))
    if table_counts(ctx, target) != source:
        raise RuntimeError(f"{target} differs from {BIG}")
    drop(ctx, target)
    return step


def ratio_row(
    s: dict[str, Any], method: str, other: str, bound: float, what: str
) -> dict[str, Any]:
    a, b = s[method]["wallMedian"], s[other]["wallMedian"]
    return {"target": f"{what}: {method} <= {bound}x {other}",
            "value": f"{a:.2f}s vs {b:.2f}s = {a / b:.3f}x", "ok": a / b <= bound}  # fmt: skip


def targets(s: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [ratio_row(s, "runner", "local-fd", TARGET_BACKUP, "backup of the large database")]
    if "runner-restore" in s and "local-restore" in s:
        rows.append(ratio_row(s, "runner-restore", "local-restore", TARGET_RESTORE,
                              "restore of the large database"))  # fmt: skip
    for method in ("runner", "runner-all"):
        if method not in s:
            continue
        m = s[method]
        rows.append({"target": f"{method}: process peak RSS < 150 MB (max of runs)",
                     "value": f"{m['peakRssRootMax'] / 1e6:.1f} MB "
                              f"(tree with pg_dumps {m['peakRssTreeMax'] / 1e6:.1f} MB)",
                     "ok": m["peakRssRootMax"] < TARGET_MEMORY})  # fmt: skip
        rows.append({"target": f"{method}: bytes written to local disk = 0",
                     "value": f"{m['writeBytesMax']:,.0f}",
                     "ok": m["writeBytesMax"] == 0})  # fmt: skip
    if "runner-restore" in s:
        m = s["runner-restore"]
        rows.append({"target": "runner-restore: local disk writes (the schema archive only, "
                               "no rows)",
                     "value": f"{m['writeBytesMax']:,.0f} bytes",
                     "ok": m["writeBytesMax"] < 64 * 1024 * 1024})  # fmt: skip
    return rows


def render(results: dict[str, Any]) -> str:
    s = results["summary"]
    lines = [
        f"### Large database: {results['sizeGb']} GB requested, "
        f"{results['databaseBytes'][BIG] / 1e9:.2f} GB in PostgreSQL ({BIG}) + 2 small "
        f"databases; N = {results['jobs']}, --compress {results['compress']}, "
        f"{results['repeat']} run(s) each, medians",
        "",
        "| method | wall s (runs) | set/dump size | peak RSS main / tree | local disk writes "
        "| CPU s tree / PostgreSQL / MinIO |",
        "|---|---|---|---|---|---|",
    ]
    sizes = results["setBytes"]
    for method, m in s.items():
        runs = ", ".join(f"{w:.1f}" for w in m["wallSeconds"])
        size = f"{sizes[method] / 1e6:,.0f} MB" if method in sizes else ""
        lines.append(
            f"| {method} | {m['wallMedian']:.2f} ({runs}) | {size} "
            f"| {m['peakRssRootMax'] / 1e6:.0f} / {m['peakRssTreeMax'] / 1e6:.0f} MB "
            f"| {m['writeBytesMax'] / 1e6:,.1f} MB "
            f"| {m['cpuSecondsMedian']:.1f} / {m['serverCpuMedian']['postgres']:.1f} / "
            f"{m['serverCpuMedian']['minio']:.1f} |"
        )
    lines += ["", "| target | value | verdict |", "|---|---|---|"]
    for row in results["targets"]:
        lines.append(
            f"| {row['target']} | {row['value']} | {'met' if row['ok'] else '**missed**'} |"
        )
    if results.get("compressionNote"):
        lines += ["", results["compressionNote"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0915
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gb", type=float, default=3.0,
                        help="size of the large database to generate (default 3)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=2, help="N (default 2: the cores)")
    parser.add_argument("--compress", default="1", help="gzip level of both sides (default 1)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each step (default 1)")
    parser.add_argument("--compression", default="",
                        help="also back up at these levels (e.g. 0,6)")  # fmt: skip
    parser.add_argument("--no-restore", action="store_true")
    parser.add_argument("--quiet-wait", type=float, default=30.0)
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)

    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    tmp = Path(tempfile.mkdtemp(prefix="citus-bench-large-"))
    logs = tmp / "logs"
    cache = data_cache_root() / f"bench-pgdata-large-{args.size_gb:g}gb"
    postgres = CachedPostgres(cache, logs)
    minio = MetricsMinio(tmp / "minio", logs)
    out = tmp / "work" / "large.d"
    try:
        log(f"PostgreSQL data set: {cache}")
        pg_info = postgres.start()
        minio_info = minio.start()
        work = tmp / "work"
        work.mkdir()
        ctx = Context(pg_info, minio_info, Path("/nonexistent-aws"), work, [BIG], [],
                      args.jobs, [])  # fmt: skip
        ctx.quiet_wait = args.quiet_wait
        for name, proc in (("postgres", postgres.process), ("minio", minio.process)):
            if proc is not None and proc.pid is not None:
                ctx.server_pids[name] = proc.pid
        if not postgres.reused:
            generate(postgres, ctx, args.size_gb)
        else:
            log("reusing the generated data set")
        names = [BIG, *SMALL]
        sizes = {n: int(ctx.psql(f"SELECT pg_database_size('{n}')")) for n in names}
        log(f"databases {sizes}")
        from citus_backup.runner.config import S3Config  # noqa: PLC0415
        from citus_backup.runner.s3 import S3Store  # noqa: PLC0415

        S3Store(S3Config(endpoint=minio_info.endpoint, secure=False, bucket=BUCKET,
                         access_key=minio_info.access_key,
                         secret_key=minio_info.secret_key)).check_bucket(create=True)  # fmt: skip
        source = table_counts(ctx, BIG)
        z = ["--compress", args.compress]
        log("warm-up (unmeasured): one local dump, so every method finds the data cached")
        local_backup(ctx, 0, args.compress, out, "warm-up")
        steps: list[Step] = []
        set_bytes: dict[str, int] = {}
        for rep in range(1, args.repeat + 1):
            plan = [
                ("local-fd", lambda r: local_backup(ctx, r, args.compress, out, "local-fd")),
                ("runner", lambda r: runner_backup(ctx, r, "runner", run_id,
                                                   [*z, "--include-database", BIG])),
                ("runner-nosplit", lambda r: runner_backup(
                    ctx, r, "runner-nosplit", run_id,
                    [*z, "--include-database", BIG, "--split-threshold", "0"])),
                ("runner-all", lambda r: runner_backup(ctx, r, "runner-all", run_id, z)),
                # What the manifest's row counts (a scan of every table in the
                # snapshot, the restore's check) cost on a CPU-bound machine.
                ("runner-no-counts", lambda r: runner_backup(
                    ctx, r, "runner-no-counts", run_id,
                    [*z, "--include-database", BIG, "--no-row-counts"])),
            ]  # fmt: skip
            shift = (rep - 1) % len(plan)
            for method, run in plan[shift:] + plan[:shift]:
                step = run(rep)
                steps.append(step)
                set_bytes[method] = int(step.extra.get("setBytes", 0))
        for level in [lv for lv in args.compression.split(",") if lv]:
            step = local_backup(ctx, 1, level, out, f"local-fd-z{level}")
            steps.append(step)
            set_bytes[step.method] = int(step.extra["setBytes"])
            step = runner_backup(ctx, 1, f"runner-z{level}", run_id,
                                 ["--compress", level, "--include-database", BIG])  # fmt: skip
            steps.append(step)
            set_bytes[step.method] = int(step.extra["setBytes"])
        if not args.no_restore:
            split_id = next(s.extra["backupId"] for s in steps if s.method == "runner")
            plain_id = next(s.extra["backupId"] for s in steps if s.method == "runner-nosplit")
            local_backup(ctx, 0, args.compress, out, "local-fd-for-restore")
            for rep in range(1, args.repeat + 1):
                order = [
                    lambda r: local_restore(ctx, r, out, source),
                    lambda r: runner_restore(ctx, r, "runner-restore", split_id, source),
                    lambda r: runner_restore(ctx, r, "runner-restore-nosplit", plain_id, source),
                ]
                for run in order if rep % 2 else order[::-1]:
                    steps.append(run(rep))
        shutil.rmtree(out, ignore_errors=True)
        summary = summarize(steps)
        pg_dump = subprocess.run(
            [str(pg_bindir() / "pg_dump"), "--version"], capture_output=True, text=True,
            check=False,
        ).stdout.strip()  # fmt: skip
        results: dict[str, Any] = {
            "runId": run_id,
            "sizeGb": args.size_gb,
            "databaseBytes": sizes,
            "rowCounts": source,
            "jobs": args.jobs,
            "compress": args.compress,
            "repeat": args.repeat,
            "runnerCommand": runner_command(),
            "runnerSource": runner_source(),
            "minioPinned": str(binaries.component_dir("minio").name),
            "machine": machine(),
            "loadAtStart": loadavg(),
            "setBytes": set_bytes,
            "steps": [s.as_dict() for s in steps],
            "summary": summary,
            "compressionNote": f"Compression methods: {pg_dump} supports gzip levels only "
            "(lz4 and zstd need pg_dump 16 or later).",
        }
        results["targets"] = targets(summary)
        table = render(results)
        args.results_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{run_id}-large-{args.size_gb:g}gb"
        (args.results_dir / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.results_dir / f"{stem}.md").write_text(table + "\n")
        print(table)
        log(f"results: {args.results_dir / stem}.json")
        return 0
    finally:
        minio.stop()
        postgres.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    log(f"done in {time.monotonic() - started:.0f}s")
    sys.exit(code)
