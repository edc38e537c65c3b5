"""Named failure points of a restore, for the tests that prove "if any step
fails, the old database is intact and serving, on every node".

Why in the shipped code: the steps of a Citus restore run on several servers
(create on the workers, rebuild, data, verification, the two-phase swap), and
no external fault (killing a server, cutting a connection) lands reliably
between two given steps. ``CITUS_BACKUP_FAIL_AT=<step>`` in the runner's
environment makes the runner fail exactly there, as a permanent error with
reason ``InjectedFailure``; unset (always, outside tests) it does nothing.
The operator never sets it: Job pods get only the variables the Job builder
lists (:mod:`citus_backup.specs.jobs`).
"""

from __future__ import annotations

import os

from citus_backup.errors import PermanentError

ENV = "CITUS_BACKUP_FAIL_AT"
#: The steps, in the order a restore reaches them.
STEPS = (
    "created",  # temporary database created on every node
    "pre-data",  # schema restored on the coordinator
    "distributed",  # nodes registered, tables distributed
    "data",
    "post-data",
    "verified",  # metadata and row counts checked
    "prepared",  # workers' renames prepared (two-phase), the coordinator's not yet
)


def point(step: str) -> None:
    """Fail here if ``$CITUS_BACKUP_FAIL_AT`` names ``step``."""
    if os.environ.get(ENV) == step:
        raise PermanentError(f"injected failure at step {step!r} ({ENV})", reason="InjectedFailure")
