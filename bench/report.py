"""One Markdown row per benchmark run in ``bench/results/``: medians and target ratios.

    .venv/bin/python bench/report.py [RESULT.json ...]
    .venv/bin/python bench/report.py --pool RESULT.json ...   # quiet runs pooled

Shows how stable the results are across runs (and across runner versions:
the ``runner sources`` column is a hash of the runner's code that was measured).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _wall(summary: dict[str, Any], method: str, key: str = "wallMedian") -> float | None:
    entry = summary.get(method)
    return None if entry is None else float(entry[key])


def _fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if value is None or value != value else f"{value:{spec}}{suffix}"  # noqa: PLR0124


def _quiet_median(data: dict[str, Any], method: str) -> float | None:
    """Median wall time of the runs in which others used < 5 % of the CPUs (bench.quiet)."""
    cores = data.get("machine", {}).get("nproc") or 1
    walls = [
        step["wall_seconds"]
        for step in data["steps"]
        if step["method"] == method
        and step.get("foreignCpuSeconds", 0.0) < max(0.2, 0.05 * cores * step["wall_seconds"])
    ]
    return statistics.median(walls) if walls else None


def row(path: Path) -> str | None:
    data = json.loads(path.read_text())
    s = data["summary"]
    runner, seed, limit = (_wall(s, m) for m in ("runner", "seed", "limit"))
    if runner is None:
        return None
    quiet = {m: _quiet_median(data, m) for m in ("runner", "seed", "limit")}

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    rss = s["runner"]["peakRssRootMax"] / 1e6
    tree = s["runner"]["peakRssTreeMax"] / 1e6
    source = data.get("runnerSource", {}).get("sourcesSha256", "")[:8] or "?"
    return (
        f"| {path.stem} | {source} | {_fmt(seed)} | {_fmt(runner)} | {_fmt(limit)} "
        f"| {_fmt(ratio(runner, seed))} ({_fmt(ratio(quiet['runner'], quiet['seed']))}) "
        f"| {_fmt(ratio(runner, limit))} ({_fmt(ratio(quiet['runner'], quiet['limit']))}) "
        f"| {rss:.1f} / {tree:.1f} | {data.get('foreignCpuTotal', float('nan')):.1f} s |"
    )


def pooled(paths: list[Path]) -> None:
    """Medians over the quiet runs of all given result files, per method."""
    walls: dict[str, list[float]] = {}
    for path in paths:
        data = json.loads(path.read_text())
        cores = data.get("machine", {}).get("nproc") or 1
        for step in data["steps"]:
            wall = step["wall_seconds"]
            if step.get("foreignCpuSeconds", 0.0) < max(0.2, 0.05 * cores * wall):
                walls.setdefault(step["method"], []).append(wall)
    print("| method | quiet runs | median wall s | runs |")
    print("|---|---|---|---|")
    for method, values in walls.items():
        shown = ", ".join(f"{v:.2f}" for v in sorted(values))
        print(f"| {method} | {len(values)} | {statistics.median(values):.2f} | {shown} |")
    median = {m: statistics.median(v) for m, v in walls.items()}
    for other in ("seed", "limit"):
        if "runner" in median and other in median:
            print(f"\nrunner / {other}: {median['runner'] / median[other]:.2f}x", end="")
    print()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--pool"]:
        pooled([Path(a) for a in argv[1:]])
        return 0
    paths = [Path(a) for a in argv] or sorted(RESULTS.glob("*.json"))
    print(
        "| run | runner sources | seed s | runner s | limit s | runner/seed (quiet runs) "
        "| runner/limit (quiet runs) | runner RSS / tree RSS MB | others' CPU |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        line = row(path)
        if line is not None:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
