"""A thin layer over the ``minio`` SDK: errors the project understands, and
streaming multipart uploads with bounded memory.

Why not ``put_object(length=-1)``: it needs one fixed part size for the whole
object, so it either wastes memory on small dumps or cannot hold large ones
within S3's 10,000 parts. :class:`StreamUploader` fills parts of growing size
(:mod:`.partsize`) straight from a pipe into recycled buffers, keeps at most
``max_inflight`` parts uploading while the next one fills, and takes its
buffers from a budget shared by all uploads of a run — so memory is bounded by
``budget x part size`` whatever the size or number of dumps. It completes the
upload only after every part succeeded (and the producer exited 0), and aborts
it otherwise so no invisible half-object is left behind. A stream that ends
inside its first part is sent with one PUT.

The multipart calls (``_create_multipart_upload`` and friends) are the SDK's
own, non-public methods; minio is pinned exactly in pyproject.toml, and the
unit tests exercise this module against a fake with the same signatures.

Every SDK/urllib3 exception is turned into :class:`PermanentError` (bad
credentials, missing bucket: a human must act) or :class:`TransientError`
(endpoint down, connection lost, 5xx: retry later), with a one-line message
naming the endpoint, bucket and key — never the credentials.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol, cast

import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource, CopySource, Tags
from minio.credentials.providers import StaticProvider
from minio.datatypes import Part
from minio.error import InvalidResponseError, S3Error, ServerError
from urllib3.exceptions import (
    HTTPError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from citus_backup.errors import CitusBackupError, PermanentError, TransientError
from citus_backup.runner.config import S3Config
from citus_backup.runner.partsize import MAX_PART_SIZE, PartLimitExceeded, PartSchedule

log = logging.getLogger("citus_backup.runner")

#: Object tag set on everything a backup writes: the bucket's lifecycle rules
#: (one per tier, owned by the operator) expire only objects carrying it, and
#: :mod:`.protect` removes it from the newest successful set of each tier. The
#: same key/value as :data:`citus_backup.specs.lifecycle.EXPIRABLE_TAG_KEY`
#: (a unit test checks); not imported from there to keep the runner light.
EXPIRABLE_TAG_KEY = "citusbackup.io/expirable"
EXPIRABLE_TAG_VALUE = "true"
#: The ``x-amz-tagging`` header value (URL-query encoded) for uploads.
EXPIRABLE_TAGGING_HEADER = "citusbackup.io%2Fexpirable=true"

#: Bytes per read when streaming an object down.
READ_CHUNK = 1024 * 1024
#: First and largest request of a :class:`RangedRead`.
FIRST_RANGE = 256 * 1024
LARGEST_RANGE = 64 * 1024 * 1024
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0
#: urllib3 retries per request (connection errors, 500/502/503/504).
RETRIES = 5
RETRY_BACKOFF = 0.5

_AUTH_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "InvalidSecurity",
        "AuthorizationHeaderMalformed",
        "InvalidClientTokenId",
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "XMinioServerNotInitialized",
        "XMinioStorageFull",
        "OperationAborted",
        "RequestTimeTooSkewed",
    }
)


class Cancelled(TransientError):
    """The run is being stopped (another stream failed, or SIGTERM)."""

    reason = "Cancelled"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _s3_error(exc: S3Error, what: str, endpoint: str) -> CitusBackupError:
    code = exc.code or "Error"
    detail = _one_line(exc.message or code)
    if code == "NoSuchBucket":
        return PermanentError(
            f"S3 {what}: bucket does not exist at {endpoint} "
            "(create it, or pass --create-bucket to backup)",
            reason="BucketNotFound",
        )
    if code in _AUTH_CODES:
        return PermanentError(
            f"S3 {what}: the S3 credentials were rejected by {endpoint} ({code}: {detail})",
            reason="S3AuthenticationFailed",
        )
    known: dict[str, tuple[type[CitusBackupError], str, str]] = {
        "AccessDenied": (PermanentError, "S3AccessDenied", f"access denied by {endpoint}"),
        "NoSuchKey": (PermanentError, "ObjectNotFound", "object does not exist"),
        "NoSuchObject": (PermanentError, "ObjectNotFound", "object does not exist"),
        "PreconditionFailed": (
            PermanentError,
            "ObjectChanged",
            "the object changed while it was being read",
        ),
    }
    if code in known:
        cls, reason, text = known[code]
        return cls(f"S3 {what}: {text}", reason=reason)
    if code in _TRANSIENT_CODES:
        return TransientError(f"S3 {what}: {code}: {detail}", reason="S3Unavailable")
    return PermanentError(f"S3 {what}: {code}: {detail}", reason="S3Error")


def translate(exc: BaseException, what: str, endpoint: str) -> CitusBackupError:
    """Turn an SDK/urllib3 exception about ``what`` into the project's error."""
    if isinstance(exc, CitusBackupError):
        return exc
    if isinstance(exc, S3Error):
        return _s3_error(exc, what, endpoint)
    if isinstance(exc, (ServerError, InvalidResponseError)):
        return TransientError(
            f"S3 {what}: unexpected response from {endpoint}: {_one_line(str(exc))[:300]}",
            reason="S3Unavailable",
        )
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    if isinstance(exc, (HTTPError, OSError)):
        return _network_error(exc, what, endpoint)
    if isinstance(exc, ValueError):
        return PermanentError(f"S3 {what}: {_one_line(str(exc))}", reason="InvalidConfiguration")
    return TransientError(
        f"S3 {what}: {type(exc).__name__}: {_one_line(str(exc))}", reason="S3Error"
    )


def _network_error(exc: BaseException, what: str, endpoint: str) -> CitusBackupError:
    if isinstance(exc, SSLError):
        return PermanentError(
            f"S3 {what}: TLS error talking to {endpoint}: {_one_line(str(exc))[:300]} "
            "(check S3_CA_FILE / --s3-ca-file)",
            reason="S3TLSError",
        )
    if isinstance(exc, (NewConnectionError, ConnectionRefusedError)):
        return TransientError(
            f"S3 {what}: cannot connect to {endpoint} (connection refused or unreachable)",
            reason="S3Unreachable",
        )
    if isinstance(exc, ReadTimeoutError):
        return TransientError(f"S3 {what}: {endpoint} timed out", reason="S3Timeout")
    if isinstance(exc, ProtocolError):
        return TransientError(
            f"S3 {what}: connection to {endpoint} lost ({_one_line(str(exc))[:200]})",
            reason="S3ConnectionLost",
        )
    return TransientError(
        f"S3 {what}: network error talking to {endpoint}: {_one_line(str(exc))[:300]}",
        reason="S3Unreachable",
    )


def make_client(config: S3Config, max_connections: int = 10) -> Minio:
    """A Minio client with our timeouts, retries and TLS settings."""
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
        maxsize=max(max_connections, 4),
        cert_reqs="CERT_NONE" if config.insecure_skip_verify else "CERT_REQUIRED",
        ca_certs=config.ca_file or None,
        retries=urllib3.Retry(
            total=RETRIES,
            backoff_factor=RETRY_BACKOFF,
            backoff_max=10,
            status_forcelist=[500, 502, 503, 504],
        ),
    )
    if config.insecure_skip_verify:
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    credentials = None
    if config.access_key and config.secret_key:
        credentials = StaticProvider(config.access_key, config.secret_key, config.session_token)
    return Minio(
        config.endpoint,
        secure=config.secure,
        region=config.region,
        http_client=http,
        credentials=credentials,
    )


@dataclass(frozen=True)
class ObjectStat:
    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class ObjectRead:
    """An open object download: iterate ``chunks``; ``etag``/``size`` from headers."""

    chunks: Iterator[bytes]
    etag: str
    size: int


class S3Store:
    """One bucket on one endpoint, with errors translated."""

    def __init__(self, config: S3Config, client: Minio | None = None, max_connections: int = 10):
        self.config = config
        self.bucket = config.bucket
        self.client = client or make_client(config, max_connections)
        #: Extra upload headers: every object written is tagged expirable (see
        #: EXPIRABLE_TAG_KEY); copies keep the source's tags (S3's default COPY directive).
        self._tagging: dict[str, str] = {"x-amz-tagging": EXPIRABLE_TAGGING_HEADER}

    def _what(self, action: str, key: str | None = None) -> str:
        target = f"s3://{self.bucket}/{key}" if key is not None else f"s3://{self.bucket}"
        return f"{action} {target}"

    def _error(self, exc: BaseException, action: str, key: str | None = None) -> CitusBackupError:
        return translate(exc, self._what(action, key), self.config.url)

    def check_bucket(self, create: bool = False) -> bool:
        """Fail unless the bucket is reachable with our credentials.

        A listing (not HEAD) is used because its XML errors tell a wrong key
        from a missing bucket. Returns True if the bucket was created.
        """
        try:
            next(iter(self.client.list_objects(self.bucket, prefix=".citus-backup-probe/")), None)
            return False
        except Exception as exc:
            error = self._error(exc, "check bucket")
            if error.reason != "BucketNotFound" or not create:
                raise error from exc
        try:
            self.client.make_bucket(self.bucket)
        except Exception as exc:
            raise self._error(exc, "create bucket") from exc
        log.info("created bucket %s", self.bucket)
        return True

    def put_bytes(
        self, key: str, data: bytes | bytearray, content_type: str = "application/octet-stream"
    ) -> str:
        try:
            result = self.client._put_object(
                # bytearray works as a body (no copy); the SDK annotates bytes.
                self.bucket,
                key,
                cast(bytes, data),
                headers={"Content-Type": content_type, **self._tagging},
            )
        except Exception as exc:
            raise self._error(exc, "upload", key) from exc
        return str(result.etag)

    def get_bytes(self, key: str, limit: int) -> bytes:
        """A small object (manifest, globals) read whole; larger than ``limit`` fails."""
        with self.open_read(key) as read:
            if read.size > limit:
                raise PermanentError(
                    f"S3 object s3://{self.bucket}/{key} is {read.size} bytes, "
                    f"more than the {limit} expected",
                    reason="ObjectTooLarge",
                )
            return b"".join(read.chunks)

    def stat(self, key: str) -> ObjectStat | None:
        try:
            result = self.client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                return None
            raise self._error(exc, "stat", key) from exc
        except Exception as exc:
            raise self._error(exc, "stat", key) from exc
        return ObjectStat(key, int(result.size or 0), str(result.etag or ""))

    @contextlib.contextmanager
    def open_read(
        self, key: str, if_match: str | None = None, offset: int = 0, length: int = 0
    ) -> Iterator[ObjectRead]:
        """Stream an object (or ``length`` bytes from ``offset``); ``if_match``
        (an ETag) makes S3 refuse if the object was replaced meanwhile."""
        headers: dict[str, str | list[str] | tuple[str]] | None = (
            {"If-Match": f'"{if_match}"'} if if_match else None
        )
        try:
            response = self.client.get_object(
                self.bucket, key, offset=offset, length=length, request_headers=headers
            )
        except Exception as exc:
            raise self._error(exc, "download", key) from exc
        try:
            etag = str(response.headers.get("ETag", "")).strip('"')
            size = int(response.headers.get("Content-Length", "-1"))

            def chunks() -> Iterator[bytes]:
                try:
                    yield from response.stream(READ_CHUNK)
                except Exception as exc:
                    raise self._error(exc, "download", key) from exc

            yield ObjectRead(chunks(), etag, size)
        finally:
            response.close()
            response.release_conn()

    def list_objects(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under ``prefix``, recursively."""
        try:
            for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
                if obj.object_name is not None and not obj.is_dir:
                    yield obj.object_name, int(obj.size or 0)
        except Exception as exc:
            raise self._error(exc, "list", prefix) from exc

    def copy(self, source_key: str, dest_key: str, size: int) -> None:
        """Server-side copy; above 5 GiB (the CopyObject limit) a multipart copy."""
        try:
            if size > MAX_PART_SIZE:
                self.client.compose_object(
                    self.bucket, dest_key, [ComposeSource(self.bucket, source_key)]
                )
            else:
                self.client.copy_object(self.bucket, dest_key, CopySource(self.bucket, source_key))
        except Exception as exc:
            raise self._error(exc, "copy to", dest_key) from exc

    def remove(self, key: str) -> None:
        try:
            self.client.remove_object(self.bucket, key)
        except Exception as exc:
            raise self._error(exc, "delete", key) from exc

    def expirable(self, key: str) -> bool:
        """Whether the object carries the expirable tag."""
        try:
            tags = self.client.get_object_tags(self.bucket, key)
        except Exception as exc:
            raise self._error(exc, "read tags of", key) from exc
        return tags is not None and tags.get(EXPIRABLE_TAG_KEY) == EXPIRABLE_TAG_VALUE

    def set_expirable(self, key: str, expirable: bool) -> None:
        """Put the expirable tag on the object, or remove every tag from it.

        Our objects carry no other tag (we write them), so removing all tags is
        removing the expirable one, in one request.
        """
        try:
            if expirable:
                tags = Tags.new_object_tags()
                tags[EXPIRABLE_TAG_KEY] = EXPIRABLE_TAG_VALUE
                self.client.set_object_tags(self.bucket, key, tags)
            else:
                self.client.delete_object_tags(self.bucket, key)
        except Exception as exc:
            raise self._error(exc, "tag" if expirable else "untag", key) from exc

    # Multipart upload primitives (see module docstring).
    def create_multipart(self, key: str, content_type: str) -> str:
        try:
            return self.client._create_multipart_upload(
                self.bucket, key, {"Content-Type": content_type, **self._tagging}
            )
        except Exception as exc:
            raise self._error(exc, "start multipart upload", key) from exc

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytearray) -> str:
        try:
            return self.client._upload_part(self.bucket, key, data, None, upload_id, part_number)  # type: ignore[arg-type]
        except Exception as exc:
            raise self._error(exc, f"upload part {part_number} of", key) from exc

    def complete_multipart(self, key: str, upload_id: str, etags: list[tuple[int, str]]) -> None:
        try:
            self.client._complete_multipart_upload(
                self.bucket, key, upload_id, [Part(number, etag) for number, etag in etags]
            )
        except Exception as exc:
            raise self._error(exc, "complete multipart upload", key) from exc

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            self.client._abort_multipart_upload(self.bucket, key, upload_id)
        except Exception as exc:
            raise self._error(exc, "abort multipart upload", key) from exc

    def incomplete_uploads(self, prefix: str) -> list[tuple[str, str]]:
        """(key, upload id) of multipart uploads in progress under ``prefix``."""
        try:
            result = self.client._list_multipart_uploads(self.bucket, prefix=prefix)
        except Exception as exc:
            raise self._error(exc, "list multipart uploads", prefix) from exc
        return [(str(u.object_name), str(u.upload_id)) for u in result.uploads]


class RangedRead:
    """Reads an object with ranged GETs of growing size (256 KiB, 1 MiB, ...).

    For a reader that needs only the head of an object — pg_restore reading
    a dump's table of contents — a plain GET would make S3 push far more than
    is read (socket buffers fill before the reader stops); growing ranges
    bound the waste while still reading a long head efficiently.
    """

    def __init__(
        self,
        store: S3Store,
        key: str,
        size: int,
        if_match: str | None = None,
        *,
        first: int = FIRST_RANGE,
        largest: int = LARGEST_RANGE,
        before_next: Callable[[], bool] | None = None,
    ) -> None:
        """``before_next`` runs before each further range; False stops reading
        (the reader has consumed what it got and needs no more)."""
        self.before_next = before_next
        self.store = store
        self.key = key
        self.size = size
        self.etag = if_match or ""
        self.first = first
        self.largest = largest

    def chunks(self) -> Generator[bytes, None, None]:
        offset, length = 0, self.first
        while offset < self.size:
            with self.store.open_read(
                self.key, self.etag or None, offset, min(length, self.size - offset)
            ) as read:
                self.etag = self.etag or read.etag
                got = 0
                for chunk in read.chunks:
                    got += len(chunk)
                    yield chunk
            if not got or (self.before_next is not None and not self.before_next()):
                return
            offset += got
            length = min(length * 4, self.largest)


class MultipartTarget(Protocol):
    """What :class:`StreamUploader` needs (S3Store, or a fake in tests)."""

    def put_bytes(self, key: str, data: bytes | bytearray, content_type: str = ...) -> str: ...
    def create_multipart(self, key: str, content_type: str) -> str: ...
    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytearray) -> str: ...
    def complete_multipart(
        self, key: str, upload_id: str, etags: list[tuple[int, str]]
    ) -> None: ...
    def abort_multipart(self, key: str, upload_id: str) -> None: ...


@dataclass(frozen=True)
class UploadResult:
    key: str
    size: int
    parts: int  # 0 for a single PUT


class _Buffers:
    """The part buffers of one upload.

    Buffers are recycled (filling a part reuses the memory of an uploaded
    one: no allocator churn, which would keep freed multi-MiB blocks and
    inflate the resident size), and each buffer holds one slot of the run's
    ``budget`` from allocation until the upload ends, so the memory of all
    uploads together is at most ``budget x part size``.
    """

    def __init__(
        self, budget: threading.BoundedSemaphore | None, waiting: Callable[[], None]
    ) -> None:
        self._budget = budget
        self._waiting = waiting
        self._free: list[bytearray] = []
        self._owned = 0
        self._lock = threading.Lock()
        self._returned = threading.Event()

    def get(self, size: int) -> bytearray:
        while True:
            self._returned.clear()
            with self._lock:
                while self._free:
                    buf = self._free.pop()
                    if len(buf) == size:
                        return buf
                    self._release_one()  # parts grew: drop the smaller buffer
                if self._budget is None or self._budget.acquire(blocking=False):
                    self._owned += 1
                    break
            # Wait for one of our parts to come back, or for another upload
            # to give slots back.
            self._returned.wait(0.05)
            self._waiting()
        return bytearray(size)

    def put(self, buf: bytearray) -> None:
        with self._lock:
            self._free.append(buf)
        self._returned.set()

    def _release_one(self) -> None:
        self._owned -= 1
        if self._budget is not None:
            self._budget.release()

    def close(self) -> None:
        """The upload is over: give every slot back."""
        with self._lock:
            self._free.clear()
            while self._owned:
                self._release_one()


ReadInto = Callable[[memoryview], int]
OnData = Callable[[memoryview], None]


class StreamUploader:
    """Uploads a byte stream of unknown length; see the module docstring."""

    def __init__(
        self,
        target: MultipartTarget,
        pool: ThreadPoolExecutor,
        schedule: PartSchedule | None = None,
        max_inflight: int = 2,
        *,
        cancel: threading.Event | None = None,
        budget: threading.BoundedSemaphore | None = None,
    ) -> None:
        """``budget`` caps the part buffers of all uploads sharing it; it must
        allow at least one buffer per concurrent upload."""
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self.target = target
        self.pool = pool
        self.schedule = schedule or PartSchedule()
        self.max_inflight = max_inflight
        self.cancel = cancel or threading.Event()
        self.budget = budget

    def _fill(self, buf: bytearray, readinto: ReadInto, on_data: OnData) -> int:
        pos = 0
        with memoryview(buf) as view:
            while pos < len(buf):
                self._check_cancel()
                with view[pos:] as free:
                    count = readinto(free)
                if not count:
                    break
                with view[pos : pos + count] as chunk:
                    on_data(chunk)
                pos += count
        return pos

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("stopped: the run is being cancelled")

    def _next_buffer(self, part_number: int, key: str, buffers: _Buffers) -> bytearray:
        try:
            size = self.schedule.size(part_number)
        except PartLimitExceeded as exc:
            raise PermanentError(
                f"{key}: the stream is larger than S3's 10,000 parts can hold "
                f"({self.schedule.capacity()} bytes)",
                reason="ObjectTooLarge",
            ) from exc
        return buffers.get(size)

    def upload(
        self,
        key: str,
        readinto: ReadInto,
        on_data: OnData,
        content_type: str = "application/octet-stream",
        before_complete: Callable[[], None] | None = None,
    ) -> UploadResult:
        """Upload until ``readinto`` returns 0.

        ``before_complete`` runs after the end of the stream and before the
        object becomes visible; if it raises (the producer exited non-zero),
        the upload is aborted instead of completed.
        """
        futures: list[Future[tuple[int, str]]] = []
        failed = threading.Event()

        def waiting() -> None:
            self._check(futures, failed)
            self._check_cancel()

        buffers = _Buffers(self.budget, waiting)
        try:
            return self._upload(
                key, readinto, on_data, content_type, before_complete, buffers, futures, failed
            )
        finally:
            buffers.close()

    def _upload(  # noqa: PLR0917 - internal, called once
        self,
        key: str,
        readinto: ReadInto,
        on_data: OnData,
        content_type: str,
        before_complete: Callable[[], None] | None,
        buffers: _Buffers,
        futures: list[Future[tuple[int, str]]],
        failed: threading.Event,
    ) -> UploadResult:
        buf = self._next_buffer(1, key, buffers)
        filled = self._fill(buf, readinto, on_data)
        if filled < len(buf):
            del buf[filled:]
            if before_complete is not None:
                before_complete()
            self.target.put_bytes(key, buf, content_type)
            return UploadResult(key, filled, 0)
        upload_id = self.target.create_multipart(key, content_type)
        slots = threading.BoundedSemaphore(self.max_inflight)
        try:
            part_number, total = 1, 0
            while True:
                while not slots.acquire(timeout=0.2):
                    self._check(futures, failed)
                try:
                    self._check(futures, failed)
                    futures.append(
                        self.pool.submit(
                            self._send,
                            key=key,
                            upload_id=upload_id,
                            part_number=part_number,
                            data=buf,
                            slots=slots,
                            failed=failed,
                            buffers=buffers,
                        )
                    )
                except BaseException:
                    slots.release()
                    raise
                total += filled
                if filled < len(buf):
                    break
                part_number += 1
                buf = self._next_buffer(part_number, key, buffers)
                filled = self._fill(buf, readinto, on_data)
                if filled == 0:
                    break
                if filled < len(buf):
                    del buf[filled:]
            etags = [future.result() for future in futures]
            if before_complete is not None:
                before_complete()
            self.target.complete_multipart(key, upload_id, etags)
            return UploadResult(key, total, len(etags))
        except BaseException:
            for future in futures:
                future.cancel()
            for future in futures:
                with contextlib.suppress(BaseException):
                    future.result()
            self._abort(key, upload_id)
            raise

    @staticmethod
    def _check(futures: list[Future[tuple[int, str]]], failed: threading.Event) -> None:
        """Raise the error of a failed part, if any (``failed`` is set first)."""
        if failed.is_set():
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                if future.done() and future.exception() is not None:
                    future.result()

    def _send(
        self,
        *,
        key: str,
        upload_id: str,
        part_number: int,
        data: bytearray,
        slots: threading.BoundedSemaphore,
        failed: threading.Event,
        buffers: _Buffers,
    ) -> tuple[int, str]:
        try:
            etag = self.target.upload_part(key, upload_id, part_number, data)
        except BaseException:
            failed.set()
            raise
        finally:
            slots.release()
        buffers.put(data)
        return part_number, etag

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.target.abort_multipart(key, upload_id)
            log.info("aborted the incomplete multipart upload of %s", key)
        except CitusBackupError as exc:
            log.warning(
                "could not abort the multipart upload %s of %s: %s; an "
                "AbortIncompleteMultipartUpload lifecycle rule removes it later",
                upload_id,
                key,
                exc,
            )
