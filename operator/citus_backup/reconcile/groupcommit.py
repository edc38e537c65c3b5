"""Group commit: concurrent requests for one key served by one batch.

Why: a bucket's lifecycle configuration is one document that S3 lets us
replace only as a whole, with no precondition. Writing it once per policy
means a read-modify-write per policy, one after the other (the bucket lock),
each parsing and sending every rule of the bucket: with a hundred policies on
a bucket, applying them all costs a hundred reads and writes of a growing
document (quadratic). With group commit the first caller for a key becomes the
*leader*: it takes every request queued for that key so far and runs them as
one batch (one read, at most one write); callers arriving meanwhile queue up
and the next leader takes them all. Each caller still gets its own outcome,
and nothing waits for a timer: a lone request runs at once.

Plain threads (kopf runs sync handlers in a thread pool): the leader is always
one of the waiting callers, so progress never depends on a free worker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")
T = TypeVar("T")

#: A batch runner: the requests in arrival order -> one outcome per request, same order.
Batch = Callable[[Sequence[R]], Sequence[T]]


@dataclass
class _Ticket(Generic[R, T]):
    request: R
    done: bool = False
    outcome: T | None = None
    error: BaseException | None = None


class GroupCommit(Generic[K, R, T]):
    """Runs batches of requests per key, one batch per key at a time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queues: dict[K, list[_Ticket[R, T]]] = {}
        self._busy: set[K] = set()
        #: Batches run so far (tests and benchmarks look at it).
        self.batches = 0

    def submit(self, key: K, request: R, run: Batch[R, T]) -> T:
        """``request``'s outcome, from a batch run by this caller or another.

        An exception of the batch is raised to every caller of that batch.
        """
        ticket: _Ticket[R, T] = _Ticket(request)
        with self._cond:
            self._queues.setdefault(key, []).append(ticket)
            # Wait while another batch of this key runs; ours may be in the next one.
            while not ticket.done and key in self._busy:
                self._cond.wait()
            if not ticket.done:  # nobody took it: lead, with everything queued so far
                batch = self._queues.pop(key)
                self._busy.add(key)
                self.batches += 1
        if not ticket.done:
            self._run(key, batch, run)
        if ticket.error is not None:
            raise ticket.error
        return ticket.outcome  # type: ignore[return-value]  # set together with done

    def _run(self, key: K, batch: list[_Ticket[R, T]], run: Batch[R, T]) -> None:
        outcomes: Sequence[T] = ()
        error: BaseException | None = None
        try:
            outcomes = run([t.request for t in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} returned {len(outcomes)} outcomes")
        except BaseException as exc:  # every caller of the batch sees its failure
            error = exc
        with self._cond:
            for i, ticket in enumerate(batch):
                if error is None:
                    ticket.outcome = outcomes[i]
                ticket.error = error
                ticket.done = True
            self._busy.discard(key)
            self._cond.notify_all()
