"""The Prometheus endpoint: :class:`~citus_backup.metrics.state.State` through prometheus_client.

prometheus_client (a kept library) does the exposition format and the HTTP
server; this module only adapts our families to its ``Collector`` protocol,
on a registry of our own (the default registry's process/platform collectors
are added explicitly, so the endpoint also shows the operator's own RSS and
CPU, which the scale benchmark reads).

The endpoint listens on its own port (default 8081), apart from kopf's
liveness probe (8080): scraping must never make a probe time out, and a
NetworkPolicy can open one without the other.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from citus_backup.metrics.state import (
    State,
    backup_facts,
    policy_facts,
    restore_facts,
)

#: Default port of the metrics endpoint (the liveness probe has 8080).
DEFAULT_PORT = 8081


class Metrics(Collector):
    """Thread-safe holder of the state; a prometheus_client collector of its families."""

    def __init__(self, *, started: float | None = None) -> None:
        self._state = State(started=time.time() if started is None else started)
        self._lock = threading.Lock()

    # kopf event handlers call these with the object's body.
    def observe(self, kind: str, body: Mapping[str, Any]) -> None:
        now = time.time()
        if kind == "policy":
            facts: Any = policy_facts(body, now)
        elif kind == "backup":
            facts = backup_facts(body)
        else:
            facts = restore_facts(body)
        with self._lock:
            self._state.observe(facts)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self._state.forget(kind, namespace, name)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            families = self._state.families()
        for family in families:
            metric: GaugeMetricFamily | CounterMetricFamily
            if family.type == "counter":
                # prometheus_client appends _total itself.
                base = family.full_name.removesuffix("_total")
                metric = CounterMetricFamily(base, family.help, labels=family.labels)
            else:
                metric = GaugeMetricFamily(family.full_name, family.help, labels=family.labels)
            for labels, value in family.samples:
                metric.add_metric(list(labels), value)
            yield metric


def registry_for(metrics: Metrics) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


def serve(metrics: Metrics, port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - in a pod
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread (prometheus_client's server)."""
    start_http_server(port, addr=addr, registry=registry_for(metrics))
