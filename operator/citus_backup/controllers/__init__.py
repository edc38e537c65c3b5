"""kopf handlers: a few lines each (name → reconciler, which reads the object fresh,
parses it into its model, acts and patches the status).

All handlers are timers, registered explicitly on a registry by
:func:`register` with the intervals chosen on the command line:

* every CitusBackupPolicy: the scheduler tick (``PolicyReconciler``);
* every CitusBackup / CitusRestore that has not finished: one look at its
  Job (:mod:`citus_backup.reconcile.backup`, :mod:`citus_backup.reconcile.restore`).
  The ``when`` filter stops the timer once the phase is terminal.

Timers survive operator restarts by construction (kopf starts them for every
existing object), which is what makes "resume after a restart" free. kopf
keeps a finalizer on an object while a timer runs for it, so that the timer
is stopped before the object goes; it is removed when the timer stops
(a finished CitusBackup/CitusRestore carries none; a policy carries one while
the operator serves it: uninstall the operator after deleting policies, or
remove the ``citusbackup.io/operator`` finalizer by hand). No handler of ours
needs cleanup: deleting a policy deletes no CitusBackup and no data.

Errors: a :class:`~citus_backup.errors.TransientError` becomes
``kopf.TemporaryError`` with its delay; permanent errors are turned into
status by the reconcilers themselves, so nothing is retried in a storm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import kopf

from citus_backup.api.common import GROUP, VERSION
from citus_backup.errors import TransientError
from citus_backup.reconcile.backup import BackupReconciler
from citus_backup.reconcile.catalogue import LABEL_IMPORTED
from citus_backup.reconcile.common import Deps
from citus_backup.reconcile.policy import PolicyReconciler
from citus_backup.reconcile.ports import Kind
from citus_backup.reconcile.restore import RestoreReconciler

#: Default seconds between scheduler ticks of a policy (a run starts at most this late).
DEFAULT_SCHEDULE_INTERVAL = 10.0
_FINISHED = ("Succeeded", "Failed")


def unfinished(status: dict[str, Any], **_: Any) -> bool:
    """kopf ``when`` filter: the object's phase is not terminal."""
    return status.get("phase") not in _FINISHED


@contextmanager
def _retry_transient() -> Iterator[None]:
    try:
        yield
    except TransientError as err:
        raise kopf.TemporaryError(f"[{err.reason}] {err.message}", delay=err.delay) from None


def register(
    registry: kopf.OperatorRegistry,
    deps: Deps,
    *,
    schedule_interval: float = DEFAULT_SCHEDULE_INTERVAL,
) -> None:
    """Register the handlers on ``registry`` with ``deps`` (clients, image, intervals)."""
    policies = PolicyReconciler(deps)
    backups = BackupReconciler(deps)
    restores = RestoreReconciler(deps)
    poll = deps.poll_seconds

    def timer(plural: str, interval: float, **kwargs: Any) -> Callable[[Any], Any]:
        return kopf.timer(
            GROUP,
            VERSION,
            plural,
            interval=interval,
            backoff=interval,
            registry=registry,
            **kwargs,
        )

    @timer(Kind.POLICY.value, schedule_interval, id="schedule")
    def policy_tick(name: str, namespace: str, **_: Any) -> None:
        with _retry_transient():
            policies.reconcile(name, namespace)

    # Imported catalogue entries (reconcile.catalogue) never get a Job, even
    # in the instant between their creation and their Succeeded status.
    @timer(
        Kind.BACKUP.value,
        poll,
        id="backup",
        when=unfinished,
        labels={LABEL_IMPORTED: kopf.ABSENT},
    )
    def backup_tick(name: str, namespace: str, **_: Any) -> None:
        with _retry_transient():
            backups.reconcile(name, namespace)

    @timer(Kind.RESTORE.value, poll, id="restore", when=unfinished)
    def restore_tick(name: str, namespace: str, **_: Any) -> None:
        with _retry_transient():
            restores.reconcile(name, namespace)

    del policy_tick, backup_tick, restore_tick  # registered; the names are not needed
