"""Thin I/O modules: the Kubernetes API, Events, PostgreSQL probes.

Each converts its library's exceptions into :mod:`citus_backup.errors` so the
reconcilers (:mod:`citus_backup.reconcile`) decide from the error class alone.
"""
