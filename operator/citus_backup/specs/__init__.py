"""Pure builders on top of :mod:`citus_backup.api`: names, schedules, Jobs, lifecycle rules.

Nothing here performs I/O or talks to the Kubernetes API; ``kubernetes.client``
is used only for its model classes (V1Job, ...). Modules are imported
explicitly (``from citus_backup.specs.jobs import build_backup_job``).
"""
