"""Local environment for tests and the demo: real etcd, kube-apiserver,
kube-controller-manager, MinIO and PostgreSQL as plain loopback processes.

These machines have no container engine or registry, so instead of kind the
components are built from source (``hack/build-components.sh``) and started
here. Every component has ``start()`` (which waits for a health endpoint, not a
sleep) and ``stop()``; a failed start raises :class:`StartError` naming the
component, its command and its log, and stops whatever it started.
"""

from localenv.process import StartError

__all__ = ["StartError"]
