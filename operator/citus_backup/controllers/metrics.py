"""kopf event handlers that feed the metrics state (:mod:`citus_backup.metrics`).

Watch events are the cheapest source there is: kopf already watches the three
kinds, so the metrics cost no API request of their own, and every change
(phase, conditions, sizes) is seen as it happens.
"""

from __future__ import annotations

from typing import Any

import kopf

from citus_backup.api.common import GROUP, VERSION
from citus_backup.metrics.exporter import Metrics
from citus_backup.reconcile.ports import Kind

_KINDS = {Kind.POLICY: "policy", Kind.BACKUP: "backup", Kind.RESTORE: "restore"}


def register(registry: kopf.OperatorRegistry, metrics: Metrics) -> None:
    """One event handler per kind: observe on every event, forget on deletion."""
    for plural, kind in _KINDS.items():

        def handler(
            *,
            type: str,
            body: kopf.Body,
            name: str,
            namespace: str | None,
            _kind: str = kind,
            **_: Any,
        ) -> None:
            if type == "DELETED":
                metrics.forget(_kind, namespace or "", name)
            else:
                metrics.observe(_kind, body)

        kopf.on.event(GROUP, VERSION, plural.value, id=f"metrics-{kind}", registry=registry)(
            handler
        )
