"""The summary line and the termination message (< 4 KiB, always valid JSON)."""

from __future__ import annotations

import json

from citus_backup.runner.summary import TERMINATION_LIMIT, RunSummary, termination_message


def test_summary_line_is_one_json_line() -> None:
    summary = RunSummary(
        "backup",
        status="succeeded",
        backup_id="20261127T030000Z",
        location="s3://b/p/daily/20261127T030000Z/",
        tiers=["daily", "monthly"],
        databases={"app1": 10, "Ünï": 20},
        total_size=30,
        duration_seconds=1.23456,
    )
    line = summary.to_line()
    assert "\n" not in line
    data = json.loads(line)
    assert data == {
        "status": "succeeded",
        "command": "backup",
        "backupId": "20261127T030000Z",
        "location": "s3://b/p/daily/20261127T030000Z/",
        "tiers": ["daily", "monthly"],
        "databases": {"app1": 10, "Ünï": 20},
        "totalSize": 30,
        "durationSeconds": 1.235,
        "error": None,
        "reason": None,
    }
    assert json.loads(termination_message(summary)) == data


def test_termination_message_drops_details_to_fit() -> None:
    summary = RunSummary(
        "backup",
        backup_id="x",
        databases={f"database_{i:04d}_ü": i for i in range(500)},
        error="boom " * 2000,
        reason="S3ConnectionLost",
    )
    message = termination_message(summary)
    assert len(message) <= TERMINATION_LIMIT
    data = json.loads(message)
    assert data["truncated"] is True
    assert data["databaseCount"] == 500
    assert data["reason"] == "S3ConnectionLost"
    assert data["error"].startswith("boom boom")
    assert data["error"].endswith("...")


def test_termination_message_with_non_ascii_error_fits() -> None:
    summary = RunSummary("restore", error="ошибка " * 3000)
    message = termination_message(summary, limit=500)
    assert len(message) <= 500
    json.loads(message)
