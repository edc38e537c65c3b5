"""``citus-backup operator``: run the kopf operator.

Scope: ``--all-namespaces`` (the shipped Deployment) or one or more
``--namespace``.

Replicas: ``--peering NAME`` (the Deployment) uses kopf's peering as leader
election. Each process records itself in the peering object
``ClusterKopfPeering NAME`` (``KopfPeering`` in namespaced mode; created here
if missing) with a random priority; kopf pauses every process that sees a
live peer with a higher priority, so exactly one works while a rolling
update overlaps two pods, or with ``replicas: 2``. A SIGKILLed leader's
record stops being refreshed; after ``--peering-lifetime`` seconds the other
process resumes (kopf re-evaluates at the record's deadline) and adopts what
was running: Jobs are found by their deterministic names. ``--standalone``
skips peering (the tests' single processes). Why random priorities: kopf
pauses *every* process when two have the same priority, which is the
opposite of an election. ``--liveness`` serves kopf's health endpoint for the liveness probe;
``--metrics-port`` the Prometheus metrics (:mod:`citus_backup.metrics`) on a
port of their own.

Kubernetes access: in a pod, the ServiceAccount; elsewhere ``KUBECONFIG``
(the tests use a kubeconfig minted for the operator's ServiceAccount, so the
RBAC in ``manifests/`` is exactly what is exercised). kopf and the
``kubernetes`` client both read the same configuration.

kopf's own bookkeeping goes to annotations and a finalizer under the
``citusbackup.io`` prefix (the CRDs' structural schemas would prune
``status.kopf``), and only warnings from logs become Events: the operator
posts its own Events (BackupSucceeded, BackupFailed, ...) explicitly.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging
import os
import secrets
import socket
from typing import Any

#: Default runner image for Jobs (a policy's jobTemplate.image overrides it).
DEFAULT_IMAGE = "citus-backup-operator:dev"
#: Environment variable the Deployment sets to the operator's own image.
IMAGE_ENV = "CITUS_BACKUP_RUNNER_IMAGE"
#: Prefix of kopf's annotations and finalizer on our objects.
KOPF_PREFIX = "citusbackup.io"
FINALIZER = f"{KOPF_PREFIX}/operator"
#: Seconds kopf waits, when an object is deleted, for its running timer to end
#: (a tick is a few API calls; kopf's default is a few zero-time loop cycles).
INSTANT_EXIT_SECONDS = 1.0
#: Seconds between kopf's later checks that a deleted object's timer ended (kopf: 60).
CANCELLATION_POLL_SECONDS = 2.0
#: kopf workers processing objects' events at once (kopf: unlimited) and posting
#: Events at once; see configure(). 16 made the Jobs of 50 backups due at one
#: instant wait for a slot (bench/scale.py: Job p50 4.6 s after the instant).
QUEUE_WORKERS = 32
#: Seconds an idle kopf worker waits for more events of its object before it
#: frees its slot (kopf: 5). Events of one object seconds apart are rare.
QUEUE_IDLE_SECONDS = 0.2
POSTING_WORKERS = 4
#: Threads for kopf's sync handlers: they mostly wait for the API server or a
#: bucket, so more than the CPUs (kopf's default) keeps a burst moving.
WORKER_THREADS = 16
#: Seconds between two malloc_trim calls (see _trim_memory_every).
TRIM_INTERVAL_SECONDS = 60.0
#: Seconds after which a peer that stopped refreshing its record counts as gone:
#: how long a standby waits after the leader's node died (kopf: 60). kopf
#: refreshes its own record well within it.
DEFAULT_PEERING_LIFETIME = 30
#: Peering priorities are drawn from [1, this]: two replicas colliding is a
#: one-in-two-billion event (and then both pause and log it, see kopf).
MAX_PRIORITY = 2**31 - 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "operator",
        help="run the operator (schedules backups, runs backup and restore Jobs)",
        description="Run the citus-backup operator (kopf).",
    )
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="serve this namespace (repeatable; kopf glob patterns allowed)",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="serve every namespace")
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument(
        "--standalone", action="store_true", help="no peering with other operator instances"
    )
    peering.add_argument(
        "--peering",
        metavar="NAME",
        help="leader election among replicas through kopf's peering object NAME "
        "(created if missing)",
    )
    parser.add_argument(
        "--peering-lifetime",
        type=int,
        default=DEFAULT_PEERING_LIFETIME,
        metavar="SECONDS",
        help="seconds after which a silent peer counts as gone "
        f"(default {DEFAULT_PEERING_LIFETIME})",
    )
    parser.add_argument(
        "--liveness",
        metavar="URL",
        help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=8081,
        metavar="PORT",
        help="serve Prometheus metrics on this port at /metrics (default 8081; 0: off)",
    )
    parser.add_argument(
        "--metrics-address",
        default="0.0.0.0",  # noqa: S104 - a pod's own address
        metavar="ADDR",
        help="address of the metrics endpoint (default 0.0.0.0)",
    )
    parser.add_argument(
        "--image",
        default=os.environ.get(IMAGE_ENV, DEFAULT_IMAGE),
        help=f"runner image of the Jobs (default ${IMAGE_ENV} or {DEFAULT_IMAGE})",
    )
    parser.add_argument(
        "--schedule-interval",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="longest sleep of a policy's scheduler between two looks; runs start at their "
        "fire time regardless (default 300)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds between looks at a running backup or restore Job (default 10)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(func=run)


def configure(settings: Any, *, verbose: bool, peering_lifetime: int | None = None) -> None:
    """kopf settings: our prefix for its bookkeeping, quiet Events, no status.kopf."""
    import kopf  # noqa: PLC0415

    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    # kopf runs one worker per object with pending events, each with its own API
    # calls on one aiohttp session without a connection limit: applying 1,000
    # policies at once opened hundreds of TLS connections, each with a 256 KiB
    # buffer (~0.14 MB of RSS per policy, measured with tracemalloc, and kept as
    # fragmentation afterwards). A bounded pool of workers does the same work at
    # the same speed (the operator is CPU-bound) in bounded memory.
    settings.queueing.worker_limit = QUEUE_WORKERS
    # An idle worker keeps its slot until it exits (kopf: 5 s after its object's
    # last event): with a bounded pool that capped the burst at ~3 objects/s.
    settings.queueing.idle_timeout = QUEUE_IDLE_SECONDS
    settings.posting.worker_limit = POSTING_WORKERS
    settings.execution.max_workers = WORKER_THREADS
    settings.watching.server_timeout = 300
    settings.networking.error_backoffs = (1, 2, 5, 10)
    # An object deleted while one of its timers is mid-call (a policy's
    # scheduler tick, a Job look) keeps kopf's finalizer until kopf sees the
    # timer ended. kopf waits this long for that at once, then re-checks every
    # ``cancellation_polling`` seconds: its default of 60 s made
    # `kubectl delete citusbackuppolicy` hang for a minute whenever the
    # deletion met a tick. Our ticks are a few API calls (well under a second).
    settings.background.instant_exit_timeout = INSTANT_EXIT_SECONDS
    settings.background.cancellation_polling = CANCELLATION_POLL_SECONDS
    if peering_lifetime is not None:
        settings.peering.lifetime = peering_lifetime
    if verbose:
        settings.posting.level = logging.INFO
    else:
        # "Timer 'backup' succeeded." every few seconds per object is noise; errors still show.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def _trim_memory_every(loop: Any, seconds: float) -> None:
    """Give freed heap pages back to the system every ``seconds`` (glibc's
    ``malloc_trim``), from the event loop, while it runs.

    Why: a burst (a thousand policies applied at once, a fire time shared by many)
    allocates and frees a lot in many threads; glibc keeps the freed pages, so the
    resident size stayed at the burst's peak. Trimming costs milliseconds. Not
    glibc (musl, macOS): nothing to do.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return

    def tick() -> None:
        trim(0)
        loop.call_later(seconds, tick)

    loop.call_later(seconds, tick)


def operator_identity() -> str:
    """``<hostname>@<pid>``, without the passwd lookup kopf's default does."""
    return f"{socket.gethostname()}@{os.getpid()}"


def run(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    import kopf  # noqa: PLC0415
    from kopf._core.engines.peering import Identity  # noqa: PLC0415 - typed, not re-exported

    from citus_backup.clients.events import KopfEvents  # noqa: PLC0415
    from citus_backup.clients.kube import KubeCluster, api_client, ensure_peering  # noqa: PLC0415
    from citus_backup.clients.postgres import PsycopgProbe  # noqa: PLC0415
    from citus_backup.clients.progress import BucketProgress  # noqa: PLC0415
    from citus_backup.controllers import register as register_handlers  # noqa: PLC0415
    from citus_backup.controllers.metrics import register as register_metrics  # noqa: PLC0415
    from citus_backup.controllers.retention import CATALOGUE_EVERY, bucket_factory  # noqa: PLC0415
    from citus_backup.controllers.retention import register as register_retention  # noqa: PLC0415
    from citus_backup.metrics.exporter import Metrics, serve  # noqa: PLC0415
    from citus_backup.reconcile.common import Deps  # noqa: PLC0415

    kube = api_client()
    deps = Deps(
        cluster=KubeCluster(kube),
        events=KopfEvents(),
        image=args.image,
        probe=PsycopgProbe(),
        poll_seconds=args.poll_interval,
    )
    # Running backups' progress from the bucket (reconcile.progress).
    buckets = bucket_factory(deps)  # one client per bucket and credentials, shared
    deps.progress = BucketProgress(buckets)
    registry = kopf.OperatorRegistry()
    retention = register_retention(registry, deps, buckets=buckets)  # lifecycle + catalogue
    register_handlers(
        registry,
        deps,
        schedule_interval=args.schedule_interval,
        periodic=retention,
        catalogue_every=CATALOGUE_EVERY,
    )
    if args.metrics_port:
        metrics = Metrics()
        register_metrics(registry, metrics)
        serve(metrics, args.metrics_port, args.metrics_address)

    @kopf.on.startup(registry=registry)
    async def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings, verbose=args.verbose, peering_lifetime=args.peering_lifetime)
        # The policies' daemons run their looks with asyncio.to_thread (the loop's
        # default executor, CPUs + 4 threads): at a fire time shared by many
        # policies the looks queued behind each other. One pool for both.
        asyncio.get_running_loop().set_default_executor(settings.execution.executor)
        _trim_memory_every(asyncio.get_running_loop(), TRIM_INTERVAL_SECONDS)

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # Same source as the kubernetes client above: KUBECONFIG, else in-cluster.
        return kopf.login_via_client(**kwargs)

    priority = None
    if args.peering:
        ensure_peering(kube, args.peering, args.namespaces)
        priority = secrets.SystemRandom().randint(1, MAX_PRIORITY)
        logging.getLogger(__name__).info(
            "peering %s with priority %d (the highest live priority works)", args.peering, priority
        )
    kopf.configure(verbose=args.verbose)
    kopf.run(
        registry=registry,
        # kopf's default identity calls getpass.getuser(), which raises when the
        # UID has no passwd entry (any runAsUser an admin picks); the pod's
        # hostname (its name) is what peering needs anyway.
        identity=Identity(operator_identity()),
        standalone=args.standalone or not args.peering,
        peering_name=args.peering,
        priority=priority,
        clusterwide=bool(args.all_namespaces),
        namespaces=args.namespaces or (),
        liveness_endpoint=args.liveness,
    )
    return 0
