"""Benchmark of issue #3: the runner against the seed's method and the limit.

Measured side by side in one run, on ``--databases`` pgbench databases
(``pgbench -i -s <scale>``, cached between runs), against a local MinIO:

* ``seed``: for each database in turn ``pg_dump -Fc > file``,
  ``aws s3 cp file s3://...`` (aws-cli from PyPI), ``rm file``;
* ``runner``: ``citus-backup backup`` with default settings;
* ``limit``: the runner's pg_dump commands (and its pg_dumpall --globals-only)
  writing to /dev/null, as many at a time as the runner runs by default;
* ``limit-seed-z``: the same at pg_dump's default compression (informational:
  splits the seed's cost into dumping and the rest);
* restores of one database: ``citus-backup restore --database X
  --target-database X_copy`` against ``aws s3 cp`` + ``createdb`` +
  ``pg_restore``, with the bytes MinIO sent for each.

Each step runs ``--repeat`` times (methods interleaved, order rotated); the
table shows medians. See docs/benchmarks.md and :mod:`measure` for how each
number is obtained. Run through ``bench/run.sh`` (``make bench``).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from localenv import binaries
from localenv.minio import MinioInfo
from localenv.postgres import PostgresInfo, pg_bindir
from measure import (
    CpuSnapshot,
    Measurement,
    cpu_breakdown,
    loadavg,
    run_measured,
    wait_for_quiet,
)
from servers import CachedPostgres, MetricsMinio, S3Trace, data_cache_root, s3_traffic

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
#: pgbench scale of one database at ``--scale 1x``: ~0.75 GB per database.
BASE_PGBENCH_SCALE = 50
BUCKET = "citus-bench"
MiB = 1024 * 1024
#: Targets of issue #3.
TARGET_VS_SEED = 0.7
TARGET_VS_LIMIT = 1.15
TARGET_MEMORY = 150 * 1000 * 1000  # "150 MB"


# --------------------------------------------------------------- set-up


def pgbench_scale(text: str) -> int:
    """``2x`` -> 100 (multiple of the 1x set), ``7`` -> 7 (a pgbench scale)."""
    if text.endswith("x"):
        return max(1, round(float(text[:-1]) * BASE_PGBENCH_SCALE))
    return max(1, int(text))


def default_jobs(cpus: int, databases: int) -> int:
    """The runner's default --jobs (citus_backup.runner.selection.default_jobs)."""
    sys.path.insert(0, str(REPO / "operator"))
    from citus_backup.runner.cli import available_cpus  # noqa: PLC0415
    from citus_backup.runner.selection import default_jobs as runner_default  # noqa: PLC0415

    return runner_default(cpus or available_cpus(), databases)


def runner_command() -> list[str]:
    """The runner as installed (console script), else as a module of this tree."""
    script = REPO / ".venv" / "bin" / "citus-backup"
    if script.exists():
        return [str(script)]
    return [str(REPO / ".venv" / "bin" / "python"), "-m", "citus_backup.cli"]


@dataclass
class Context:
    pg: PostgresInfo
    minio: MinioInfo
    aws: Path
    work: Path
    bench_dbs: list[str]
    all_dbs: list[str]
    jobs: int
    runner_flags: list[str]
    server_pids: dict[str, int] = field(default_factory=dict)
    quiet_wait: float = 0.0
    pgbin: Path = field(default_factory=pg_bindir)

    def base_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PG", "S3_", "AWS_", "MC_HOST"))
        }
        env.update(self.pg.env())
        env.pop("PGDATABASE", None)
        env["PG_BINDIR"] = str(self.pgbin)
        env["PYTHONPATH"] = str(REPO / "operator")
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    def runner_env(self, prefix: str) -> dict[str, str]:
        env = self.base_env()
        env.update(
            {
                "S3_ENDPOINT": self.minio.url,
                "S3_BUCKET": BUCKET,
                "S3_PREFIX": prefix,
                "S3_ACCESS_KEY_ID": self.minio.access_key,
                "S3_SECRET_ACCESS_KEY": self.minio.secret_key,
            }
        )
        return env

    def aws_env(self) -> dict[str, str]:
        env = self.base_env()
        env.update(
            {
                "AWS_ACCESS_KEY_ID": self.minio.access_key,
                "AWS_SECRET_ACCESS_KEY": self.minio.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": "/dev/null",
                "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
                "AWS": str(self.aws),
                "EP": self.minio.url,
                "BUCKET": BUCKET,
                "PGBIN": str(self.pgbin),
                "DIR": str(self.work),
            }
        )
        return env

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = subprocess.run(
            [str(self.pgbin / "psql"), "-X", "-Atq", "-v", "ON_ERROR_STOP=1", "-d", database,
             "-c", sql],
            env=self.base_env(), capture_output=True, text=True, check=True,
        )  # fmt: skip
        return done.stdout.strip()


def log(message: str) -> None:
    stamp = datetime.now(UTC).strftime("%H:%M:%S")
    print(f"[bench {stamp}] {message}", file=sys.stderr, flush=True)


def generate(pg: CachedPostgres, info: PostgresInfo, names: list[str], scale: int) -> None:
    env = dict(os.environ)
    env.update(info.env())
    bindir = pg_bindir()
    for name in names:
        log(f"generating database {name}: pgbench -i -s {scale}")
        subprocess.run([str(bindir / "createdb"), name], env=env, check=True)
        subprocess.run(
            [str(bindir / "pgbench"), "-i", "-q", "-s", str(scale), name],
            env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    subprocess.run([str(bindir / "psql"), "-X", "-q", "-c", "CHECKPOINT"], env=env, check=True)
    pg.mark_complete()


# --------------------------------------------------------------- methods


SEED_SCRIPT = r"""
set -euo pipefail
for db in $DBS; do
  "$PGBIN/pg_dump" -Fc -w -d "$db" > "$DIR/$db.dump"
  "$AWS" --endpoint-url "$EP" s3 cp --only-show-errors "$DIR/$db.dump" "s3://$BUCKET/$KEY/$db.dump"
  rm -f "$DIR/$db.dump"
done
"""

LIMIT_SCRIPT = r"""
set -euo pipefail
"$PGBIN/pg_dumpall" --globals-only -w > /dev/null
printf '%s\n' $DBS | xargs -P "$JOBS" -I{} \
  sh -c '"$PGBIN/pg_dump" -Fc $ZFLAG -w -d "$1" > /dev/null' _ {}
"""

SEED_RESTORE_SCRIPT = r"""
set -euo pipefail
"$AWS" --endpoint-url "$EP" s3 cp --only-show-errors "s3://$BUCKET/$KEY/$SRC.dump" "$DIR/$SRC.dump"
"$PGBIN/createdb" -w "$DST"
"$PGBIN/pg_restore" -w -d "$DST" "$DIR/$SRC.dump"
rm -f "$DIR/$SRC.dump"
"""


@dataclass
class Step:
    method: str
    rep: int
    measurement: Measurement
    load_before: tuple[float, float, float]
    minio_received: float = 0.0
    minio_sent: float = 0.0
    foreign_cpu: float = 0.0  # CPU s of processes outside the benchmark during the step
    total_cpu: float = 0.0  # CPU s of the whole machine during the step
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "rep": self.rep,
            "loadBefore": self.load_before,
            "minioReceivedBytes": self.minio_received,
            "minioSentBytes": self.minio_sent,
            "foreignCpuSeconds": round(self.foreign_cpu, 2),
            "machineCpuSeconds": round(self.total_cpu, 2),
            **self.extra,
            **self.measurement.as_dict(),
        }


def measured(
    ctx: Context,
    method: str,
    rep: int,
    argv: Sequence[str],
    env: dict[str, str],
    *,
    trace: bool = False,
) -> Step:
    """Run one step; with ``trace``, also record S3 requests per object (mc admin trace)."""
    waited, others_before = wait_for_quiet(ctx.server_pids, ctx.quiet_wait)
    tracer = S3Trace(ctx.minio, ctx.work.parent / "mc") if trace else None
    if tracer is not None:
        tracer.__enter__()
    try:
        load = loadavg()
        received0, sent0 = s3_traffic(ctx.minio)
        cpu0 = CpuSnapshot.take(ctx.server_pids)
        result = run_measured(argv, env, cwd=ctx.work)
        cpu1 = CpuSnapshot.take(ctx.server_pids)
        received1, sent1 = s3_traffic(ctx.minio)
    finally:
        if tracer is not None:
            tracer.__exit__()
    step = Step(method, rep, result, load, received1 - received0, sent1 - sent0)
    cpu = cpu_breakdown(cpu0, cpu1)
    step.foreign_cpu = cpu["others"]
    step.total_cpu = cpu["machine"]
    step.extra["cpuSeconds"] = {k: round(v, 2) for k, v in cpu.items()}
    step.extra["quietWaitSeconds"] = round(waited, 1)
    step.extra["othersCoresBefore"] = round(others_before, 2)
    if tracer is not None:
        step.extra["s3Objects"] = tracer.by_object(BUCKET)
    if result.returncode != 0:
        raise RuntimeError(
            f"{method} (rep {rep}) failed with code {result.returncode}:\n{result.stderr[-3000:]}"
        )
    log(
        f"{method:<14} rep {rep}: {result.wall_seconds:7.2f}s  "
        f"rss root {result.peak_rss_root_bytes / MiB:6.1f} MiB  "
        f"tree {result.peak_rss_tree_bytes / MiB:6.1f} MiB  "
        f"pss tree {result.peak_pss_tree_bytes / MiB:6.1f} MiB  "
        f"disk writes {result.write_bytes / MiB:8.1f} MiB  load {load[0]:.2f}  "
        f"others' CPU {step.foreign_cpu:.1f}s"
    )
    return step


def prime_runner(ctx: Context) -> None:
    """Compile and import the runner once, unmeasured.

    The runner's bytecode is brought up to date first, as in an installed
    image: the runner itself runs with PYTHONDONTWRITEBYTECODE, so a source
    edited since its last import would otherwise be compiled again in every
    measured run (tens of ms of CPU), and reading it would charge an atime
    update to the run (the relatime caveat in measure.py).
    """
    subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-m", "compileall", "-q",
         str(REPO / "operator" / "citus_backup")],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    subprocess.run(
        [*runner_command(), "backup", "--help"], env=ctx.base_env(), check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def run_seed(ctx: Context, rep: int, run_id: str) -> Step:
    env = ctx.aws_env()
    env.update({"DBS": " ".join(ctx.all_dbs), "KEY": f"seed/{run_id}-{rep}"})
    return measured(ctx, "seed", rep, ["bash", "-c", SEED_SCRIPT], env)


def run_runner(ctx: Context, rep: int, run_id: str, method: str = "runner") -> Step:
    backup_id = f"{method}-{run_id}-{rep}"
    argv = [*runner_command(), "backup", "--backup-id", backup_id, *ctx.runner_flags]
    if method != "runner":  # a variant with flags appended by --variant
        argv += VARIANTS[method]
    prime_runner(ctx)
    step = measured(ctx, method, rep, argv, ctx.runner_env("runner"))
    summary = json.loads(step.measurement.stdout.strip().splitlines()[-1])
    step.extra["backupId"] = backup_id
    step.extra["setBytes"] = summary.get("totalSize", 0) + summary.get("globalsSize", 0)
    step.extra["databaseBytes"] = summary.get("databases", {})
    return step


def run_baseline(ctx: Context, rep: int, run_id: str, source: Path) -> Step:
    """``runner-base``: the runner of another revision (``--baseline REV``, its
    ``operator/`` extracted with ``git archive``) in the same run, so a change
    is compared with what it changes under the same machine conditions."""
    backup_id = f"runner-base-{run_id}-{rep}"
    argv = [str(REPO / ".venv" / "bin" / "python"), "-m", "citus_backup.cli", "backup",
            "--backup-id", backup_id, *ctx.runner_flags]  # fmt: skip
    env = ctx.runner_env("runner")
    env["PYTHONPATH"] = str(source / "operator")
    subprocess.run([*argv[:3], "backup", "--help"], env=env, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return measured(ctx, "runner-base", rep, argv, env)


def extract_baseline(revision: str, into: Path) -> Path:
    """``operator/`` of ``revision`` (``git archive``), compiled, in ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "operator"],
                             check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "compileall", "-q",
                    str(into / "operator")], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return into


def run_variant(ctx: Context, run_id: str, variant: str, rep: int) -> Step:
    return run_runner(ctx, rep, run_id, variant)


def run_limit(
    ctx: Context, rep: int, compress: str | None, method: str, jobs: int | None = None
) -> Step:
    env = ctx.base_env()
    env.update(
        {
            "DBS": " ".join(ctx.all_dbs),
            "JOBS": str(jobs or ctx.jobs),
            "PGBIN": str(ctx.pgbin),
            "ZFLAG": f"--compress={compress}" if compress is not None else "",
        }
    )
    return measured(ctx, method, rep, ["bash", "-c", LIMIT_SCRIPT], env)


def drop(ctx: Context, name: str) -> None:
    ctx.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def check_copy(ctx: Context, source: str, copy: str) -> None:
    query = "SELECT count(*), sum(abalance) FROM pgbench_accounts"
    if ctx.psql(query, source) != ctx.psql(query, copy):
        raise RuntimeError(f"restored {copy} differs from {source}")


def run_runner_restore(ctx: Context, rep: int, backup_id: str, source: str) -> Step:
    target = f"{source}_copy"
    drop(ctx, target)
    argv = [*runner_command(), "restore", "--backup-id", backup_id,
            "--database", source, "--target-database", target]  # fmt: skip
    prime_runner(ctx)
    step = measured(ctx, "runner-restore", rep, argv, ctx.runner_env("runner"), trace=True)
    check_copy(ctx, source, target)
    drop(ctx, target)
    return step


def run_seed_restore(ctx: Context, rep: int, key: str, source: str) -> Step:
    target = f"{source}_copy"
    drop(ctx, target)
    env = ctx.aws_env()
    env.update({"KEY": key, "SRC": source, "DST": target})
    step = measured(ctx, "seed-restore", rep, ["bash", "-c", SEED_RESTORE_SCRIPT], env, trace=True)
    check_copy(ctx, source, target)
    drop(ctx, target)
    return step


#: Runner variants selectable with --variant (flags appended to `backup`).
VARIANTS: dict[str, list[str]] = {
    "runner-jobs1": ["--jobs", "1"],
    "runner-jobs4": ["--jobs", "4"],
    "runner-z0": ["--compress", "0"],
    "runner-inflight1": ["--max-inflight-parts", "1"],
    "runner-part32": ["--part-size", "32"],
    # What the per-table row counts (issue #16) cost: the runner without them.
    "runner-no-counts": ["--no-row-counts"],
}


# --------------------------------------------------------------- report


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


#: A run is "quiet" if processes outside the benchmark used less than this
#: share of the machine's CPU capacity (cores x wall time) while it ran.
QUIET_SHARE = 0.05


def quiet(step: Step) -> bool:
    cores = os.cpu_count() or 1
    # (with a floor of 0.2 CPU s: /proc/stat counts in 10 ms ticks)
    return step.foreign_cpu < max(0.2, QUIET_SHARE * cores * step.measurement.wall_seconds)


def summarize(steps: list[Step]) -> dict[str, dict[str, Any]]:
    by_method: dict[str, list[Step]] = {}
    for step in steps:
        by_method.setdefault(step.method, []).append(step)
    out: dict[str, dict[str, Any]] = {}
    for method, items in by_method.items():
        ms = [s.measurement for s in items]
        out[method] = {
            "runs": len(items),
            "wallSeconds": [round(m.wall_seconds, 3) for m in ms],
            "wallMedian": median([m.wall_seconds for m in ms]),
            # The same over the quiet runs only (NaN if none was quiet).
            "wallMedianQuiet": median([s.measurement.wall_seconds for s in items if quiet(s)]),
            "quietRuns": sum(1 for s in items if quiet(s)),
            "peakRssRootMedian": median([m.peak_rss_root_bytes for m in ms]),
            "peakRssRootMax": max(m.peak_rss_root_bytes for m in ms),
            "peakRssTreeMedian": median([m.peak_rss_tree_bytes for m in ms]),
            "peakRssTreeMax": max(m.peak_rss_tree_bytes for m in ms),
            "peakPssTreeMedian": median([m.peak_pss_tree_bytes for m in ms]),
            "peakPssTreeMax": max(m.peak_pss_tree_bytes for m in ms),
            "writeBytesMedian": median([m.write_bytes for m in ms]),
            "writeBytesMax": max(m.write_bytes for m in ms),
            "cpuSecondsMedian": median([m.cpu_user_seconds + m.cpu_system_seconds for m in ms]),
            "cpuRootMedian": median([m.cpu_root_seconds for m in ms]),
            "preludeMedian": median([s.as_dict().get("prelude_seconds", 0.0) for s in items]),
            "epilogueMedian": median([s.as_dict().get("epilogue_seconds", 0.0) for s in items]),
            "minioReceivedMedian": median([s.minio_received for s in items]),
            "minioSentMedian": median([s.minio_sent for s in items]),
            "loadBefore": [s.load_before[0] for s in items],
            "foreignCpuSeconds": [round(s.foreign_cpu, 1) for s in items],
            "machineCpuMedian": median([s.total_cpu for s in items]),
            "serverCpuMedian": {
                name: median([s.extra["cpuSeconds"].get(name, 0.0) for s in items])
                for name in ("postgres", "minio")
            },
        }
    return out


def mb(value: float) -> str:
    return f"{value / 1e6:,.1f} MB"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def render(results: dict[str, Any]) -> str:
    s = results["summary"]
    lines = [
        f"### Scale {results['scale']} (pgbench -s {results['pgbenchScale']} x "
        f"{len(results['benchDatabases'])} databases, {mb(results['dataBytes'])} in PostgreSQL, "
        f"runner jobs {results['jobs']}, {results['repeat']} runs each, medians)",
        "",
        "| method | wall s: median (runs) | peak RSS of the main process (max) "
        "| peak RSS of the process tree (max) "
        "| local disk writes | CPU s: main process / tree / PostgreSQL / MinIO / machine "
        "| MinIO received "
        "| MinIO sent "
        "| others' CPU s (runs) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, m in s.items():
        runs = ", ".join(f"{w:.1f}" for w in m["wallSeconds"])
        lines.append(
            f"| {method} | {m['wallMedian']:.2f} ({runs}) | {mb(m['peakRssRootMax'])} "
            f"| {mb(m['peakRssTreeMax'])} | {mb(m['writeBytesMedian'])} "
            f"| {m['cpuRootMedian']:.1f} / {m['cpuSecondsMedian']:.1f} / "
            f"{m['serverCpuMedian']['postgres']:.1f} / "
            f"{m['serverCpuMedian']['minio']:.1f} / {m['machineCpuMedian']:.1f} "
            f"| {mb(m['minioReceivedMedian'])} | {mb(m['minioSentMedian'])} "
            f"| {', '.join(f'{x:.1f}' for x in m['foreignCpuSeconds'])} |"
        )
    lines += [
        "",
        "Start-up and wind-down (sampled every 50 ms, medians): seconds from start to the "
        "first pg_dump/pg_dumpall, and from the last pg_dump to exit: "
        + "; ".join(
            f"{method} {m['preludeMedian']:.2f} s / {m['epilogueMedian']:.2f} s"
            for method, m in s.items()
            if m["preludeMedian"] or m["epilogueMedian"]
        )
        + ".",
    ]
    lines += ["", "| target | value | verdict |", "|---|---|---|"]
    for row in results["targets"]:
        shown = row.get("verdict") or verdict(row["ok"])
        lines.append(f"| {row['target']} | {row['value']} | {shown} |")
    lines.append("")
    lines.append(
        f"Load average (1/5/15 min) before the run: "
        f"{'/'.join(f'{x:.2f}' for x in results['loadAtStart'])}; 1-min load before each "
        f"step {results['loadRange'][0]:.2f} .. {results['loadRange'][1]:.2f} (includes the "
        f"benchmark itself); CPU used by other processes during all steps: "
        f"{results['foreignCpuTotal']:.1f} s of {results['machineCpuTotal']:.1f} s."
    )
    return "\n".join(lines)


def paired_ratio(steps: list[dict[str, Any]], method: str, other: str) -> float:
    """Median over repetitions of method's wall time / other's in the same repetition.

    Every repetition runs each method once, back to back, so a ratio within
    one repetition cancels the slow drifts of a shared, virtualized machine
    (seen here: both methods 10 % slower for a few minutes). Informational:
    the verdict stays the ratio of the medians.
    """
    walls: dict[int, dict[str, float]] = {}
    for step in steps:
        walls.setdefault(step["rep"], {})[step["method"]] = step["wall_seconds"]
    ratios = [w[method] / w[other] for w in walls.values() if method in w and other in w]
    return median(ratios) if ratios else float("nan")


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    s = results["summary"]
    rows: list[dict[str, Any]] = []
    if "runner" not in s:
        return rows
    runner = s["runner"]
    for other, bound in (("seed", TARGET_VS_SEED), ("limit", TARGET_VS_LIMIT)):
        if other not in s:
            continue
        ratio = runner["wallMedian"] / s[other]["wallMedian"]
        quiet_ratio = runner["wallMedianQuiet"] / s[other]["wallMedianQuiet"]
        paired = paired_ratio(results.get("steps", []), "runner", other)
        rows.append({
            "target": f"runner wall <= {bound}x {other}", "ratio": ratio,
            "quietRatio": quiet_ratio, "pairedRatio": paired,
            "value": f"{ratio:.2f}x (quiet runs only: {quiet_ratio:.2f}x, "
                     f"{runner['quietRuns']}+{s[other]['quietRuns']} runs; "
                     f"paired by repetition: {paired:.2f}x)",
            "ok": ratio <= bound,
        })  # fmt: skip
    if "runner-base" in s and "limit" in s:
        base = s["runner-base"]
        rows.append({
            "target": f"runner vs the baseline runner ({results.get('baseline')}), same run",
            "value": f"runner/limit {runner['wallMedian'] / s['limit']['wallMedian']:.2f}x, "
                     f"baseline/limit {base['wallMedian'] / s['limit']['wallMedian']:.2f}x; "
                     f"runner/baseline {runner['wallMedian'] / base['wallMedian']:.3f}x "
                     f"(paired by repetition: "
                     f"{paired_ratio(results.get('steps', []), 'runner', 'runner-base'):.3f}x)",
            "ok": runner["wallMedian"] <= base["wallMedian"] * 1.03,
            "verdict": "not slower" if runner["wallMedian"] <= base["wallMedian"] * 1.03
            else "slower",
        })  # fmt: skip
    rss = runner["peakRssRootMax"]
    rows.append({"target": "runner process peak RSS < 150 MB (max of runs)",
                 "value": mb(rss), "ok": rss < TARGET_MEMORY})  # fmt: skip
    tree = runner["peakRssTreeMax"]
    rows.append({"target": "runner tree (incl. pg_dump) peak RSS < 150 MB (max of runs)",
                 "value": f"{mb(tree)} (summed PSS: {mb(runner['peakPssTreeMax'])})",
                 "ok": tree < TARGET_MEMORY})  # fmt: skip
    written = runner["writeBytesMax"]
    rows.append({"target": "runner local disk writes = 0 (max of runs)",
                 "value": f"{written:,.0f} bytes", "ok": written == 0})  # fmt: skip
    restore = results.get("restore")
    if restore:
        sent = restore["runnerSentMedian"]
        obj = restore["objectBytes"]
        own = f"{restore['database']}.dump"
        read = {k: v for k, v in restore["runnerObjects"].items() if v["sentBytes"] > 0}
        others = [k for k in read if k.endswith((".dump", "globals.sql"))
                  and not k.endswith("/" + own)]  # fmt: skip
        shown = "; ".join(
            f"{k.rsplit('/', 1)[-1]}: {v['sentBytes']:,} B in {v['requests']} req"
            for k, v in sorted(read.items())
        )
        rows.append({
            "target": f"single-database restore reads only {restore['database']}'s objects",
            "value": f"objects read: {shown} (MinIO sent {sent:,.0f} B in all; "
                     f"{own} is {obj:,.0f} B, the whole set {restore['setBytes']:,.0f} B)",
            "ok": not others,
        })  # fmt: skip
        if "runner-restore" in s and "seed-restore" in s:
            r, b = s["runner-restore"]["wallMedian"], s["seed-restore"]["wallMedian"]
            rows.append({"target": "restore time of one database: runner vs aws s3 cp + "
                                   "createdb + pg_restore (comparison, no target)",
                         "value": f"{r:.2f}s vs {b:.2f}s ({r / b:.2f}x)", "ok": r <= b,
                         "verdict": "runner faster" if r <= b else "runner slower"})  # fmt: skip
    return rows


def runner_source() -> dict[str, Any]:
    """Which runner was measured: git HEAD, local changes, and a hash of its sources."""
    digest = hashlib.sha256()
    package = REPO / "operator" / "citus_backup"
    for path in sorted([package / "cli.py", *(package / "runner").glob("*.py")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "operator/citus_backup"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return {"gitHead": head, "locallyModified": bool(dirty), "sourcesSha256": digest.hexdigest()}


def aws_version(aws: Path) -> str:
    done = subprocess.run([str(aws), "--version"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip()


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    pg_version = subprocess.run(
        [str(pg_bindir() / "postgres"), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "memoryGiB": round(mem_kb / 1024 / 1024, 1),
        "cpu": cpu,
        "kernel": platform.release(),
        "postgres": pg_version,
        "python": platform.python_version(),
    }


# --------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0915
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", default="1x",
                        help="data set size: Nx (multiple of 3 x pgbench -s 50) or a pgbench "
                             "scale per database (default 1x)")  # fmt: skip
    parser.add_argument("--databases", type=int, default=3, help="pgbench databases (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each step (default 3)")
    parser.add_argument("--methods", default="seed,runner,limit,limit-seed-z",
                        help="comma-separated backup methods to measure")  # fmt: skip
    parser.add_argument("--variant", action="append", default=[], choices=sorted(VARIANTS),
                        help="also measure the runner with these flags")  # fmt: skip
    parser.add_argument("--no-restore", action="store_true", help="skip the restore steps")
    parser.add_argument("--baseline", metavar="REV",
                        help="also measure the runner of this git revision (method "
                             "runner-base), e.g. main")  # fmt: skip
    parser.add_argument("--runner-flag", action="append", default=[],
                        help="extra flag for every `citus-backup backup` "
                             "(e.g. --runner-flag=--jobs=4)")  # fmt: skip
    parser.add_argument("--quiet-wait", type=float, default=120.0, metavar="SECONDS",
                        help="before each step wait up to this long for other processes to "
                             "use < 0.15 cores (default 120; 0: do not wait)")  # fmt: skip
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--aws", type=Path, default=BENCH_DIR / ".venv-awscli" / "bin" / "aws")
    args = parser.parse_args(argv)

    scale = pgbench_scale(args.scale)
    load_at_start = loadavg()
    names = [f"bench{i}" for i in range(1, args.databases + 1)]
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    tmp = Path(tempfile.mkdtemp(prefix="citus-bench-"))
    logs = tmp / "logs"
    cache = data_cache_root() / f"bench-pgdata-{scale}-{args.databases}db"
    postgres = CachedPostgres(cache, logs)
    minio = MetricsMinio(tmp / "minio", logs)
    try:
        log(f"PostgreSQL data set: {cache}")
        pg_info = postgres.start()
        if not postgres.reused:
            generate(postgres, pg_info, names, scale)
        else:
            log("reusing the generated data set")
        minio_info = minio.start()
        work = tmp / "work"
        work.mkdir()
        ctx = Context(pg_info, minio_info, args.aws, work, names, [], 0, args.runner_flag)
        ctx.quiet_wait = args.quiet_wait
        for server_name, proc in (("postgres", postgres.process), ("minio", minio.process)):
            if proc is not None and proc.pid is not None:
                ctx.server_pids[server_name] = proc.pid
        ctx.all_dbs = ctx.psql(
            "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn "
            "ORDER BY datname"
        ).split()
        sizes = {n: int(ctx.psql(f"SELECT pg_database_size('{n}')")) for n in ctx.all_dbs}
        ctx.jobs = default_jobs(0, len(ctx.all_dbs))
        log(f"databases {sizes}; runner default jobs {ctx.jobs}")
        subprocess.run([str(args.aws), "--endpoint-url", minio_info.url, "s3", "mb",
                        f"s3://{BUCKET}"], env=ctx.aws_env(), check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip

        methods: dict[str, Callable[[int], Step]] = {
            "seed": lambda rep: run_seed(ctx, rep, run_id),
            "runner": lambda rep: run_runner(ctx, rep, run_id),
            "limit": lambda rep: run_limit(ctx, rep, "1", "limit"),
            "limit-seed-z": lambda rep: run_limit(ctx, rep, None, "limit-seed-z"),
            "limit-jobs4": lambda rep: run_limit(ctx, rep, "1", "limit-jobs4", 4),
        }
        for variant in args.variant:
            methods[variant] = functools.partial(run_variant, ctx, run_id, variant)
        chosen = [m for m in args.methods.split(",") if m] + args.variant
        if args.baseline:
            base = extract_baseline(args.baseline, tmp / "baseline")
            methods["runner-base"] = lambda rep: run_baseline(ctx, rep, run_id, base)
            chosen.append("runner-base")
        log("warm-up (unmeasured): the limit once, so every method finds the data cached")
        run_limit(ctx, 0, "1", "warm-up")

        steps: list[Step] = []
        for rep in range(1, args.repeat + 1):
            shift = (rep - 1) % len(chosen)
            for method in chosen[shift:] + chosen[:shift]:
                steps.append(methods[method](rep))

        restore_info: dict[str, Any] | None = None
        source = names[0]
        runner_steps = [s for s in steps if s.method == "runner"]
        seed_steps = [s for s in steps if s.method == "seed"]
        if not args.no_restore and runner_steps and seed_steps:
            backup_id = runner_steps[-1].extra["backupId"]
            seed_key = f"seed/{run_id}-{seed_steps[-1].rep}"
            restore_steps: list[Step] = []
            for rep in range(1, args.repeat + 1):
                order: list[Callable[[], Step]] = [
                    functools.partial(run_runner_restore, ctx, rep, backup_id, source),
                    functools.partial(run_seed_restore, ctx, rep, seed_key, source),
                ]
                for run in order if rep % 2 else order[::-1]:
                    restore_steps.append(run())
            steps += restore_steps
            runner_restores = [s for s in restore_steps if s.method == "runner-restore"]
            restore_info = {
                "database": source,
                "backupId": backup_id,
                "objectBytes": runner_steps[-1].extra["databaseBytes"][source],
                "setBytes": runner_steps[-1].extra["setBytes"],
                "runnerSentMedian": median([s.minio_sent for s in runner_restores]),
                "runnerObjects": runner_restores[-1].extra["s3Objects"],
            }

        loads = [s.load_before[0] for s in steps]
        results: dict[str, Any] = {
            "runId": run_id,
            "scale": args.scale,
            "pgbenchScale": scale,
            "benchDatabases": names,
            "databases": ctx.all_dbs,
            "databaseBytes": sizes,
            "dataBytes": sum(sizes[n] for n in names),
            "jobs": ctx.jobs,
            "repeat": args.repeat,
            "runnerCommand": runner_command(),
            "runnerFlags": args.runner_flag,
            "runnerSource": runner_source(),
            "baseline": args.baseline,
            "minioPinned": str(binaries.component_dir("minio").name),
            "awsCli": aws_version(args.aws),
            "minio": minio.version(),
            "machine": machine(),
            "loadAtStart": load_at_start,
            "loadRange": [min(loads), max(loads)],
            "foreignCpuTotal": sum(s.foreign_cpu for s in steps),
            "machineCpuTotal": sum(s.total_cpu for s in steps),
            "steps": [s.as_dict() for s in steps],
            "summary": summarize(steps),
            "restore": restore_info,
        }
        results["targets"] = targets(results)
        table = render(results)
        args.results_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{run_id}-scale-{args.scale}"
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
