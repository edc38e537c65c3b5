"""Reconcilers: plain, injectable Python behind the kopf handlers.

Each reconciler takes a parsed model and :class:`~citus_backup.reconcile.common.Deps`
(the cluster, an event sink, a clock, a database probe), decides, acts through
those ports and writes the status. They are idempotent: running one twice, or
after an operator restart, converges on the same objects (deterministic names
and create-or-ignore-409) and never starts a second Job.
"""
