"""The Kubernetes API for the reconcilers (:class:`citus_backup.reconcile.ports.Cluster`).

Built on the official ``kubernetes`` client (synchronous: kopf runs sync
handlers in its thread pool). ``ApiException`` never leaves this module:

* 404 on a read returns ``None``; on a write it is :class:`NotFoundError`;
* 409 on a create returns ``False`` (create-or-ignore: deterministic names
  make creates idempotent across operator restarts);
* 429 and 5xx (and connection errors) become :class:`TransientError`;
* anything else (403 from missing RBAC, 422 from validation) becomes
  :class:`PermanentError` naming the operation and the API's message.

Secret values are decoded in memory for the reconcilers' checks and never
logged; error messages name Secrets and keys, never values.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from kubernetes import config
from kubernetes.client import (
    ApiClient,
    Configuration,
    CustomObjectsApi,
    V1ConfigMap,
    V1Job,
    V1Pod,
    V1PodList,
    V1Secret,
)
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from citus_backup.api.common import GROUP, VERSION
from citus_backup.errors import PermanentError, TransientError
from citus_backup.reconcile.ports import JobState, Kind

T = TypeVar("T")

#: Seconds to wait before retrying after 429/5xx when the server gives no Retry-After.
DEFAULT_RETRY_DELAY = 5.0
# Seconds before re-reading an object whose status patch lost a race (409):
# short, the conflict is usually another controller's write just done.
CONFLICT_RETRY_DELAY = 1.0
#: Label the Job controller puts on a Job's pods.
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
#: Seconds a single API request may take.
REQUEST_TIMEOUT = 30
#: Kept-alive connections to the API server (see api_client()): at least the
#: worker threads that call it (operator_main.WORKER_THREADS plus asyncio's).
CONNECTION_POOL_SIZE = 24
#: Seconds a Secret read is reused. Every look at a policy (scheduler, lifecycle
#: rules, catalogue) checks its Secrets, and the policies of a namespace mostly
#: share them: with 1,000 policies this was most of an idle operator's API
#: requests. A changed or deleted Secret shows in the policy's status at most
#: this late; Job pods read Secrets themselves (secretKeyRef), never this cache.
SECRET_TTL = 15.0


class NotFoundError(PermanentError):
    """The object does not exist (HTTP 404)."""

    reason = "NotFound"


class AlreadyExistsError(PermanentError):
    """An object of that name exists (HTTP 409 on create)."""

    reason = "Conflict"


def convert(exc: ApiException, what: str) -> PermanentError | TransientError:
    """The project error for an ``ApiException`` raised while doing ``what``."""
    status = int(exc.status or 0)
    detail = _api_message(exc)
    message = f"{what}: HTTP {status}{': ' + detail if detail else ''}"
    if status == 404:
        return NotFoundError(message)
    if status == 409:
        return AlreadyExistsError(message)
    if status == 429 or status >= 500 or status == 0:
        delay = DEFAULT_RETRY_DELAY
        retry_after = (exc.headers or {}).get("Retry-After") if exc.headers else None
        if retry_after:
            with contextlib.suppress(ValueError):
                delay = max(float(retry_after), 1.0)
        return TransientError(message, reason="ApiUnavailable", delay=delay)
    if status in (401, 403):
        return PermanentError(message, reason="Forbidden")
    return PermanentError(message, reason="ApiError")


def _api_message(exc: ApiException) -> str:
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if isinstance(body, str) and body:
        with contextlib.suppress(ValueError, AttributeError):
            return str(json.loads(body).get("message", ""))[:1000]
    return str(exc.reason or "")


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    try:
        yield
    except ApiException as exc:
        raise convert(exc, what) from None
    except HTTPError as exc:
        raise TransientError(
            f"{what}: Kubernetes API unreachable ({type(exc).__name__})",
            reason="ApiUnavailable",
            delay=DEFAULT_RETRY_DELAY,
        ) from None


def _read(call: Callable[[], T], what: str) -> T | None:
    try:
        with _errors(what):
            return call()
    except NotFoundError:
        return None


class CoreCalls:
    """The five core/v1 and batch/v1 calls the operator makes, through the client's
    public request API (``param_serialize``, ``call_api``, ``response_deserialize``)
    instead of ``CoreV1Api``/``BatchV1Api``.

    Why: importing those two generated modules costs 23 MB of the operator's
    resident memory (measured: ``core_v1_api`` 14 MB, ``batch_v1_api`` 9 MB, for
    hundreds of endpoints we never call), about a sixth of what the operator
    needs with 1,000 policies (issue #12). Requests, responses (the same
    ``V1Secret``/``V1Job``/... models) and errors (``ApiException``) are the
    client's own.
    """

    def __init__(self, api_client: ApiClient) -> None:
        self._api = api_client

    def _call(
        self,
        method: str,
        path: str,
        response_type: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        _request_timeout: float | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(*request, _request_timeout=_request_timeout)
        response.read()  # type: ignore[no-untyped-call]
        types = {"200": response_type, "201": response_type, "202": response_type}
        return self._api.response_deserialize(response_data=response, response_types_map=types).data

    @staticmethod
    def _path(*parts: str) -> str:
        return "/".join(urllib.parse.quote(p, safe="") if i % 2 else p for i, p in enumerate(parts))

    def read_namespaced_secret(self, name: str, namespace: str, **kw: Any) -> V1Secret:
        path = self._path("/api/v1/namespaces", namespace, "secrets", name)
        result: V1Secret = self._call("GET", path, "V1Secret", **kw)
        return result

    def read_namespaced_config_map(self, name: str, namespace: str, **kw: Any) -> V1ConfigMap:
        path = self._path("/api/v1/namespaces", namespace, "configmaps", name)
        result: V1ConfigMap = self._call("GET", path, "V1ConfigMap", **kw)
        return result

    def list_namespaced_pod(self, namespace: str, *, label_selector: str, **kw: Any) -> V1PodList:
        path = self._path("/api/v1/namespaces", namespace, "pods")
        result: V1PodList = self._call(
            "GET", path, "V1PodList", query=[("labelSelector", label_selector)], **kw
        )
        return result

    def create_namespaced_job(self, namespace: str, body: V1Job, **kw: Any) -> V1Job:
        path = self._path("/apis/batch/v1/namespaces", namespace, "jobs")
        result: V1Job = self._call("POST", path, "V1Job", body=body, **kw)
        return result

    def read_namespaced_job(self, name: str, namespace: str, **kw: Any) -> V1Job:
        path = self._path("/apis/batch/v1/namespaces", namespace, "jobs", name)
        result: V1Job = self._call("GET", path, "V1Job", **kw)
        return result


class KubeCluster:
    """:class:`~citus_backup.reconcile.ports.Cluster` over a ``kubernetes.client.ApiClient``."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        secret_ttl: float = SECRET_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._custom = CustomObjectsApi(api_client)
        self._core = CoreCalls(api_client)
        self._batch = self._core
        self._secret_ttl = secret_ttl
        self._clock = clock
        #: (namespace, name) -> (read at, data): see SECRET_TTL. Values stay in memory only.
        self._secrets: dict[tuple[str, str], tuple[float, Mapping[str, bytes]]] = {}
        self._secrets_lock = threading.Lock()

    # ----------------------------------------------------------------- custom objects

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        result = _read(
            lambda: self._custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, kind.value, name, _request_timeout=REQUEST_TIMEOUT
            ),
            f"get {kind.value} {namespace}/{name}",
        )
        return result if isinstance(result, dict) else None

    def list(self, kind: Kind, namespace: str) -> list[dict[str, Any]]:
        with _errors(f"list {kind.value} in {namespace}"):
            answer = self._custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, kind.value, _request_timeout=REQUEST_TIMEOUT
            )
        items: list[dict[str, Any]] = answer.get("items", []) if isinstance(answer, dict) else []
        return items

    def create(self, kind: Kind, namespace: str, body: Mapping[str, Any]) -> bool:
        name = body.get("metadata", {}).get("name", "")
        try:
            with _errors(f"create {kind.value} {namespace}/{name}"):
                self._custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, kind.value, dict(body),
                    _request_timeout=REQUEST_TIMEOUT,
                )  # fmt: skip
        except AlreadyExistsError:
            return False
        return True

    def patch_status(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        *,
        resource_version: str | None = None,
    ) -> None:
        body: dict[str, Any] = {"status": dict(status)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        what = f"patch status of {kind.value} {namespace}/{name}"
        try:
            with _errors(what):
                self._custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, kind.value, name, body,
                    _request_timeout=REQUEST_TIMEOUT,
                )  # fmt: skip
        except AlreadyExistsError as err:  # 409 on a patch: changed since our read
            raise TransientError(
                f"{what}: changed meanwhile, will re-read",
                reason="Conflict",
                delay=CONFLICT_RETRY_DELAY,
            ) from err

    # ----------------------------------------------------------------- secrets, config maps

    def secret_data(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        """The Secret's data, read at most once per ``secret_ttl`` seconds (a missing
        Secret is not remembered: once created it is seen at the next look)."""
        key = (namespace, name)
        now = self._clock()
        with self._secrets_lock:
            cached = self._secrets.get(key)
            if cached is not None and now - cached[0] < self._secret_ttl:
                return cached[1]
        data = self._read_secret(namespace, name)
        with self._secrets_lock:
            if data is None:
                self._secrets.pop(key, None)
            else:
                self._secrets[key] = (now, data)
            # Forget entries past their time, so Secrets no longer asked for are not kept.
            for old in [k for k, (at, _) in self._secrets.items() if now - at >= self._secret_ttl]:
                del self._secrets[old]
        return data

    def _read_secret(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        secret = _read(
            lambda: self._core.read_namespaced_secret(
                name, namespace, _request_timeout=REQUEST_TIMEOUT
            ),
            f"get Secret {namespace}/{name}",
        )
        if secret is None:
            return None
        data = {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}
        for key, value in (secret.string_data or {}).items():
            data[key] = value.encode()
        return data

    def config_map_keys(self, namespace: str, name: str) -> Sequence[str] | None:
        config_map = _read(
            lambda: self._core.read_namespaced_config_map(
                name, namespace, _request_timeout=REQUEST_TIMEOUT
            ),
            f"get ConfigMap {namespace}/{name}",
        )
        if config_map is None:
            return None
        return [*(config_map.data or {}), *(config_map.binary_data or {})]

    # ----------------------------------------------------------------- jobs

    def create_job(self, job: V1Job) -> bool:
        if job.metadata is None or not job.metadata.namespace:
            raise ValueError("a Job to create needs metadata.namespace")
        namespace: str = job.metadata.namespace
        try:
            with _errors(f"create Job {namespace}/{job.metadata.name}"):
                self._batch.create_namespaced_job(namespace, job, _request_timeout=REQUEST_TIMEOUT)
        except AlreadyExistsError:
            return False
        return True

    def job_state(self, namespace: str, name: str) -> JobState | None:
        job = _read(
            lambda: self._batch.read_namespaced_job(
                name, namespace, _request_timeout=REQUEST_TIMEOUT
            ),
            f"get Job {namespace}/{name}",
        )
        if job is None:
            return None
        with _errors(f"list pods of Job {namespace}/{name}"):
            pods = self._core.list_namespaced_pod(
                namespace,
                label_selector=f"{JOB_NAME_LABEL}={name}",
                _request_timeout=REQUEST_TIMEOUT,
            ).items
        return job_state_of(job, pods)


def job_state_of(job: V1Job, pods: Sequence[V1Pod]) -> JobState:
    """A :class:`JobState` from a Job and its pods (pure; unit-tested)."""
    status = job.status
    complete = failed = False
    failure_reason = failure_message = None
    for condition in (status.conditions if status else None) or []:
        if condition.status != "True":
            continue
        if condition.type == "Complete":
            complete = True
        elif condition.type == "Failed":
            failed = True
            failure_reason, failure_message = condition.reason, condition.message
    running = bool(status and (status.ready or 0) > 0)
    latest: tuple[datetime, str] | None = None
    for pod in pods:
        if pod.status is None:
            continue
        running = running or pod.status.phase == "Running"
        for container in pod.status.container_statuses or []:
            terminated = container.state.terminated if container.state else None
            if terminated is None or not terminated.message:
                continue
            finished = terminated.finished_at or datetime.min
            key = (_naive_utc(finished), terminated.message)
            if latest is None or key[0] >= latest[0]:
                latest = key
    return JobState(
        name=job.metadata.name if job.metadata and job.metadata.name else "",
        complete=complete,
        failed=failed,
        failure_reason=failure_reason,
        failure_message=failure_message,
        running=running and not (complete or failed),
        start_time=status.start_time if status else None,
        completion_time=status.completion_time if status else None,
        termination_message=latest[1] if latest else None,
    )


def _naive_utc(value: datetime) -> datetime:
    """Naive UTC, so aware and naive times (fakes, older clients) compare."""
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def api_client() -> ApiClient:
    """A client from ``KUBECONFIG`` (or ~/.kube/config), else the in-cluster ServiceAccount."""
    configuration = Configuration()
    kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    if os.path.exists(kubeconfig.split(os.pathsep)[0]):
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    else:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    # One kept-alive connection per worker thread (kopf's and asyncio's): with the
    # default (5 per CPU) a busy operator discarded connections and paid a TLS
    # handshake for most requests.
    configuration.connection_pool_maxsize = CONNECTION_POOL_SIZE
    return ApiClient(configuration)


#: kopf's peering resources (manifests/peering.yaml).
PEERING_GROUP, PEERING_VERSION = "kopf.dev", "v1"


def ensure_peering(client: ApiClient, name: str, namespaces: Sequence[str] | None) -> None:
    """Create kopf's peering object ``name`` if it is missing (create-or-ignore-409):
    ``ClusterKopfPeering`` for a cluster-wide operator, else a ``KopfPeering`` in each
    namespace named literally (glob patterns are left to the administrator)."""
    custom = CustomObjectsApi(client)
    body = {"apiVersion": f"{PEERING_GROUP}/{PEERING_VERSION}", "metadata": {"name": name}}
    try:
        if not namespaces:
            with _errors(f"create clusterkopfpeering {name}"):
                custom.create_cluster_custom_object(
                    PEERING_GROUP, PEERING_VERSION, "clusterkopfpeerings",
                    {**body, "kind": "ClusterKopfPeering"}, _request_timeout=REQUEST_TIMEOUT,
                )  # fmt: skip
            return
    except AlreadyExistsError:
        return
    for namespace in namespaces:
        if any(c in namespace for c in "*?[]!"):
            continue
        try:
            with _errors(f"create kopfpeering {namespace}/{name}"):
                custom.create_namespaced_custom_object(
                    PEERING_GROUP, PEERING_VERSION, namespace, "kopfpeerings",
                    {**body, "kind": "KopfPeering"}, _request_timeout=REQUEST_TIMEOUT,
                )  # fmt: skip
        except AlreadyExistsError:
            continue
