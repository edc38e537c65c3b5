"""kopf handlers: a few lines each (name → reconciler, which reads the object fresh,
parses it into its model, acts and patches the status).

Handlers, registered explicitly on a registry by :func:`register`:

* every CitusBackupPolicy: a daemon that looks at the policy
  (``PolicyReconciler``) and then sleeps **until its next fire time** (or
  the verification schedule's), at most ``--schedule-interval`` seconds, or
  until its spec changes (a watch event with a new generation wakes it;
  status writes do not). An idle policy
  costs one look per ``--schedule-interval`` (default 300 s, jittered) instead
  of one every few seconds, and a run starts within milliseconds of its time.
  The look reads the policy from kopf's watch (``body``), not with a GET. The
  same daemon runs the retention controller's periodic pass (drift check,
  catalogue) every ``periodic.interval`` seconds, jittered: one periodic task
  per policy, not two;
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
import copy
import logging
import math
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

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
#: Periodic sleeps last between this share of their interval and all of it.
JITTER_LOW = 0.8
#: Seconds early a wake may come and still run the periodic pass (timer slack).
PASS_TOLERANCE = 1.0
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


class PeriodicPass(Protocol):
    """Work a policy's daemon does every ``interval`` seconds besides scheduling
    (the retention controller's drift check and catalogue)."""

    interval: float

    def periodic(
        self, name: str, namespace: str, body: Mapping[str, Any], *, catalogue: bool
    ) -> None: ...


def register(
    registry: kopf.OperatorRegistry,
    deps: Deps,
    *,
    schedule_interval: float = DEFAULT_SCHEDULE_INTERVAL,
    periodic: PeriodicPass | None = None,
    catalogue_every: int = 6,
) -> None:
    """Register the handlers on ``registry`` with ``deps`` (clients, image, intervals).

    ``periodic``: called from each policy's daemon every ``periodic.interval``
    seconds (jittered), with ``catalogue=True`` on every ``catalogue_every``-th call.
    """
    backups = BackupReconciler(deps)
    policies = PolicyReconciler(deps, start_backup=backups.reconcile)
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
        body: kopf.Body,
        **_: Any,
    ) -> None:
        wake = _wake_event(memo)
        loop = asyncio.get_running_loop()
        # The create/resume handlers did the first sync: the first periodic pass is
        # due within one interval, spread so that policies applied together (or
        # resumed together at start-up) do not all pass at the same moment.
        passes = 0
        next_pass = loop.time() + _jittered(periodic.interval, low=0.5) if periodic else math.inf
        while not stopped:
            wake.clear()  # before the look: a change during it wakes the next wait
            # kopf keeps ``body`` current from its watch: the look reads no policy.
            delay = await _look(policies, name, namespace or "", _snapshot(body))
            if delay is None:
                return
            if periodic is not None and loop.time() >= next_pass - PASS_TOLERANCE:
                retry = await _pass(
                    periodic, name, namespace or "", _snapshot(body), passes % catalogue_every == 0
                )
                passes += 1
                next_pass = loop.time() + (retry or _jittered(periodic.interval))
            # One wake serves both the look and the pass: with equal intervals (the
            # default) the pass's jittered time comes first and the look rides along.
            sleep = min(delay + FIRE_SLACK, schedule_interval, next_pass - loop.time())
            await _sleep(max(sleep, 0.0), wake, stopped)

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


def _snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of kopf's live view (it changes under a worker thread otherwise)."""
    return copy.deepcopy(dict(body))


async def _look(
    policies: PolicyReconciler, name: str, namespace: str, body: dict[str, Any] | None = None
) -> float | None:
    """One reconcile in a worker thread; the seconds to sleep after it."""
    try:
        return await asyncio.to_thread(policies.reconcile, name, namespace, body)
    except TransientError as err:
        logger.info("policy %s/%s: [%s] %s", namespace, name, err.reason, err.message)
        return err.delay
    except Exception:
        logger.exception("policy %s/%s: unexpected error; looking again later", namespace, name)
        return ERROR_DELAY


def _jittered(seconds: float, low: float = JITTER_LOW) -> float:
    """``seconds`` times a random factor in [low, 1]: periodic work of many policies
    spreads over time instead of arriving in bursts."""
    return seconds * random.uniform(low, 1.0)  # noqa: S311 - not for cryptography


async def _pass(
    periodic: PeriodicPass, name: str, namespace: str, body: dict[str, Any], catalogue: bool
) -> float | None:
    """One periodic pass in a worker thread; a delay to retry after, or None."""
    try:
        await asyncio.to_thread(periodic.periodic, name, namespace, body, catalogue=catalogue)
    except TransientError as err:
        logger.info("policy %s/%s: retention: [%s] %s", namespace, name, err.reason, err.message)
        return err.delay
    except Exception:
        logger.exception("policy %s/%s: retention pass failed; trying again later", namespace, name)
        return ERROR_DELAY
    return None


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
