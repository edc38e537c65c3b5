"""Named failure points of a restore, for the tests that prove "if any step
fails, the old database is intact and serving, on every node".

Why in the shipped code: the steps of a Citus restore run on several servers
(create on the workers, rebuild, data, verification, the two-phase swap), and
no external fault (killing a server, cutting a connection) lands reliably
between two given steps. ``CITUS_BACKUP_FAIL_AT=<step>`` in the runner's
environment makes the runner fail exactly there, as a permanent error with
reason ``InjectedFailure``; unset (always, outside tests) it does nothing.
``CITUS_BACKUP_PAUSE_AT=<step>`` waits there instead (60 s, or
``$CITUS_BACKUP_PAUSE_SECONDS``), so a test can look at, or stop (SIGTERM),
the runner at a known step.
The operator never sets it: Job pods get only the variables the Job builder
lists (:mod:`citus_backup.specs.jobs`).
"""

from __future__ import annotations

import os
import time

from citus_backup.errors import PermanentError

ENV = "CITUS_BACKUP_FAIL_AT"
PAUSE_ENV = "CITUS_BACKUP_PAUSE_AT"
PAUSE_SECONDS_ENV = "CITUS_BACKUP_PAUSE_SECONDS"
#: Seconds a pause lasts (long enough for a test to act; a SIGTERM ends it).
PAUSE_SECONDS = 60.0
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
#: Steps of a verification only (``restore --verify``), after the restore's own.
VERIFY_STEPS = ("checks",)  # the scratch database restored, the user's checks next


def point(step: str) -> None:
    """Fail here if ``$CITUS_BACKUP_FAIL_AT`` names ``step``."""
    if os.environ.get(PAUSE_ENV) == step:
        time.sleep(float(os.environ.get(PAUSE_SECONDS_ENV) or PAUSE_SECONDS))
    if os.environ.get(ENV) == step:
        raise PermanentError(f"injected failure at step {step!r} ({ENV})", reason="InjectedFailure")
