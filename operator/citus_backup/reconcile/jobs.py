"""What a Job's state means for its CitusBackup / CitusRestore.

The runner reports its result as one line of JSON in the termination message
(:mod:`citus_backup.runner.summary`); Kubernetes keeps it in the pod's
``status.containerStatuses[].state.terminated.message``. The Job's own
conditions say whether it finished; the summary says what happened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from citus_backup.reconcile.ports import JobState

#: Job condition reason when activeDeadlineSeconds passed.
DEADLINE_EXCEEDED = "DeadlineExceeded"
#: Longest runner error kept in a status message.
MAX_ERROR = 2000


class Progress(StrEnum):
    WAITING = "waiting"  # Job created, pod not running yet
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class Outcome:
    progress: Progress
    #: The runner's summary (empty when there is none or it is not JSON).
    summary: dict[str, Any] = field(default_factory=dict)
    #: Why it failed: the runner's reason, or the Job's (e.g. DeadlineExceeded).
    reason: str | None = None
    message: str | None = None

    @property
    def finished(self) -> bool:
        return self.progress in (Progress.SUCCEEDED, Progress.FAILED)


def parse_summary(message: str | None) -> dict[str, Any]:
    """The runner's JSON summary, or ``{}`` (a log tail from FallbackToLogsOnError)."""
    if not message:
        return {}
    text = message.strip()
    # With FallbackToLogsOnError the message may be the log tail: the summary is its last line.
    for raw in reversed(text.splitlines()):
        line = raw.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                return data
    return {}


def outcome(state: JobState) -> Outcome:
    summary = parse_summary(state.termination_message)
    if state.complete:
        return Outcome(Progress.SUCCEEDED, summary)
    if state.failed:
        runner_error = summary.get("error")
        if runner_error:
            message = str(runner_error)[:MAX_ERROR]
            reason = str(summary.get("reason") or "RunnerFailed")
        else:
            reason = state.failure_reason or "JobFailed"
            message = state.failure_message or "the Job failed"
            tail = (state.termination_message or "").strip()
            if tail and not summary:
                message = f"{message}; last output: {tail[-MAX_ERROR:]}"
        return Outcome(Progress.FAILED, summary, reason, message)
    if state.running:
        return Outcome(Progress.RUNNING, summary)
    return Outcome(Progress.WAITING, summary)
