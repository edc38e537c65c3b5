"""kopf handlers: a few lines each (name → reconciler, which reads the object fresh,
parses it into its model, acts and patches the status).

Handlers, registered explicitly on a registry by :func:`register`:

* every CitusBackupPolicy: a daemon that looks at the policy
  (``PolicyReconciler``) and then sleeps **until its next fire time** (or
  the verification schedule's), at most ``--schedule-interval`` seconds, or
  until its spec changes (a watch event with a new generation wakes it;
  status writes do not). An idle policy
  costs one look per ``--schedule-interval`` (default 300 s) instead of one
  every few seconds, and a run starts within milliseconds of its time;
* every CitusBackup / CitusRestore that has not finished: a timer, one look
  at its Job (:mod:`citus_backup.reconcile.backup`,
  :mod:`citus_backup.reconcile.restore`). The ``when`` filter stops the timer
  once the phase is terminal.

Daemons and timers survive operator restarts by construction (kopf starts
them for every existing object), which is what makes "resume after a restart"
free. kopf keeps a finalizer on an object while a daemon or timer runs for
it, so that it is stopped before the object goes; it is removed when it stops
(a finished CitusBackup/CitusRestore carries none; a policy carries one while
the operator serves it: uninstall the operator after deleting policies, or
remove the ``citusbackup.io/operator`` finalizer by hand). No handler of ours
needs cleanup: deleting a policy deletes no CitusBackup and no data.

Errors: a :class:`~citus_backup.errors.TransientError` becomes
``kopf.TemporaryError`` with its delay; permanent errors are turned into
status by the reconcilers themselves, so nothing is retried in a storm.
"""

from __future__ import annotations

import asyncio
import logging
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

#: Default longest sleep of a policy's daemon between two looks (runs start at
#: their fire time regardless; this bounds how late a changed Secret is noticed).
DEFAULT_SCHEDULE_INTERVAL = 300.0
#: Seconds added to a fire time before looking (the clock must be past it).
FIRE_SLACK = 0.05
#: Seconds a policy's daemon waits after an unexpected error before looking again.
ERROR_DELAY = 30.0
_FINISHED = ("Succeeded", "Failed")
logger = logging.getLogger(__name__)


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

    @kopf.daemon(
        GROUP, VERSION, Kind.POLICY.value, id="schedule", registry=registry,
        cancellation_timeout=DAEMON_CANCELLATION_SECONDS,
    )  # fmt: skip
    async def policy_loop(
        *,
        name: str,
        namespace: str | None,
        stopped: kopf.DaemonStopped,
        memo: kopf.Memo,
        **_: Any,
    ) -> None:
        wake = _wake_event(memo)
        while not stopped:
            wake.clear()  # before the look: a change during it wakes the next wait
            delay = await _look(policies, name, namespace or "")
            if delay is None:
                return
            await _sleep(min(delay + FIRE_SLACK, schedule_interval), wake, stopped)

    @kopf.on.event(GROUP, VERSION, Kind.POLICY.value, id="schedule-wake", registry=registry)
    async def policy_event(memo: kopf.Memo, meta: kopf.Meta, **_: Any) -> None:
        # Only a new spec (generation) changes what the scheduler decides; status
        # writes (ours, the retention controller's, a backup's summary) do not.
        generation = meta.get("generation")
        if memo.get("schedule_generation") != generation:
            memo["schedule_generation"] = generation
            _wake_event(memo).set()

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

    del policy_loop, policy_event, backup_tick, restore_tick  # registered; names unused


#: Seconds kopf waits for a policy's daemon to end its look when the policy goes.
DAEMON_CANCELLATION_SECONDS = 30.0


def _wake_event(memo: kopf.Memo) -> asyncio.Event:
    """The per-policy event that ends the daemon's sleep (kopf's per-object memo)."""
    event = memo.get("schedule_wake")
    if not isinstance(event, asyncio.Event):
        event = asyncio.Event()
        memo["schedule_wake"] = event
    return event


async def _look(policies: PolicyReconciler, name: str, namespace: str) -> float | None:
    """One reconcile in a worker thread; the seconds to sleep after it."""
    try:
        return await asyncio.to_thread(policies.reconcile, name, namespace)
    except TransientError as err:
        logger.info("policy %s/%s: [%s] %s", namespace, name, err.reason, err.message)
        return err.delay
    except Exception:
        logger.exception("policy %s/%s: unexpected error; looking again later", namespace, name)
        return ERROR_DELAY


async def _sleep(seconds: float, wake: asyncio.Event, stopped: kopf.DaemonStopped) -> None:
    """Until ``seconds`` passed, ``wake`` is set or the daemon is stopped."""
    waiters = [
        asyncio.ensure_future(wake.wait()),
        asyncio.ensure_future(stopped.wait()),
    ]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
